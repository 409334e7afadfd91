"""Every way a transaction starts x every rule that may forbid it (issue 14 #9), through OCPP.

test_start_gate.py holds the connector's gate to the rules with local hooks; here the whole
stack runs on the bench against the embedded Central System, with the real authoriser
deciding each card and the rules set as the Central System sets them. Each start path (a card
authorised online, a card from the local list or the cache offline, an unknown card
offline, RemoteStartTransaction, free vend) meets each rule (Inoperative, a scheduled
Inoperative, connector 0 Inoperative, reserved for another idTag, for this one, for one of
its group, a fault). Where refused no StartTransaction is sent or queued and the contactor
stays open; where allowed the transaction starts (and names the reservation it used).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.phases import Phase
from evsed.hwmocks.central_system import CentralSystem, TagInfo
from tests.support.ocpp_stack import CARD, OTHER, OcppRig, calls, cut_link, ocpp_rig, payload_of
from tests.support.stopping import advancing

GROUP = "GROUP00001"
STRANGER = "5712A46E70"  # unknown everywhere: only AllowOfflineTxForUnknownId lets it in
FREE_TAG = "FREEVEND"
RESERVATION_ID = 41

PATHS = ("card", "local_list", "cache", "offline_unknown", "remote", "free_vend")
RULES = (
    "inoperative",
    "scheduled_inoperative",
    "connector0_inoperative",
    "reserved_other",
    "reserved_this",
    "reserved_parent",
    "faulted",
)
ALLOWED = {"reserved_this", "reserved_parent"}
OFFLINE = {"local_list", "cache", "offline_unknown"}
TAG = {
    "card": CARD,
    "local_list": CARD,
    "cache": CARD,
    "offline_unknown": STRANGER,
    "remote": CARD,
    "free_vend": FREE_TAG,
}
# The free-vend idTag and an unknown offline card belong to no group.
NO_GROUP = {"free_vend", "offline_unknown"}

KEYS = {
    "AuthorizeRemoteTxRequests": "true",
    "LocalAuthorizeOffline": "true",
    "AuthorizationCacheEnabled": "true",
    "AllowOfflineTxForUnknownId": "true",
}


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(
        tags={
            CARD: TagInfo("Accepted", GROUP),
            OTHER: TagInfo("Accepted", GROUP),
            FREE_TAG: "Accepted",
        }
    ) as central:
        yield central


def _combinations() -> list[Any]:
    cases = []
    for path in PATHS:
        for rule in RULES:
            if rule == "reserved_parent" and path in NO_GROUP:
                continue
            cases.append(pytest.param(path, rule, id=f"{path}-{rule}"))
    return cases


async def _plug(rig: OcppRig) -> None:
    await rig.bench.plug(1)
    await rig.until(lambda: rig.connector.phase != Phase.IDLE, within_s=3)


async def _unplug(rig: OcppRig) -> None:
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.connector.phase == Phase.IDLE, within_s=5)


async def _availability(rig: OcppRig, connector_id: int) -> str:
    result = await rig.command(call.ChangeAvailability(connector_id, "Inoperative"))
    return str(result.status)


async def _scheduled_inoperative(rig: OcppRig, path: str) -> None:
    """A transaction runs when Inoperative is asked (Scheduled); then it ends."""
    await _plug(rig)
    if path != "free_vend":
        assert await rig.remote_start(OTHER, connector_id=1) == "Accepted"
    await rig.until(lambda: rig.connector.transaction is not None and rig.connector.energized)
    assert await _availability(rig, 1) == "Scheduled"
    tx = await rig.answered(await rig.call_of("StartTransaction"))
    stop = await rig.command(call.RemoteStopTransaction(int(tx.payload["transactionId"])))
    assert stop.status == "Accepted"
    await rig.until(lambda: rig.connector.transaction is None)
    # Recorded once the contactor opened and the meter was read after it.
    await advancing(rig, lambda: not rig.connector.stop_pending)
    await _unplug(rig)
    assert rig.status == "Unavailable"


def _reserve(rig: OcppRig, tag: str, parent: str | None = None) -> None:
    expiry = (rig.clock.now() + timedelta(hours=1)).timestamp()
    assert rig.connector.reserve(RESERVATION_ID, tag, parent, expiry) == "Accepted"


async def _arrange(rig: OcppRig, path: str, rule: str) -> None:
    match rule:
        case "inoperative":
            assert await _availability(rig, 1) == "Accepted"
        case "scheduled_inoperative":
            await _scheduled_inoperative(rig, path)
        case "connector0_inoperative":
            assert await _availability(rig, 0) == "Accepted"
        case "reserved_other":
            _reserve(rig, OTHER)
        case "reserved_this":
            _reserve(rig, TAG[path])
        case "reserved_parent":
            _reserve(rig, OTHER, GROUP)
        case "faulted":
            rig.connector.raise_fault(Fault.LOCK, "injected")
    if path == "local_list":
        rig.ocpp.store.local_list_update(
            1, {CARD: {"status": "Accepted", "parentIdTag": GROUP}}, full=True
        )
    elif path == "cache":
        assert rig.ocpp.ctx.authorizer is not None
        rig.ocpp.ctx.authorizer.update_from(CARD, {"status": "Accepted", "parentIdTag": GROUP})


async def _present(rig: OcppRig, tag: str) -> dict[str, object]:
    assert rig.stack.charger is not None
    decided = asyncio.ensure_future(rig.note("authorized", lambda f: f["id_tag"] == tag, timeout=5))
    rig.stack.charger.present_tag(tag)
    return await decided


async def _try_start(rig: OcppRig, path: str, allowed: bool) -> None:
    await _plug(rig)
    if path == "free_vend":
        return  # the plug was the start
    if path == "remote":
        answer = await rig.remote_start(CARD, connector_id=1)
        assert answer == ("Accepted" if allowed else "Rejected")
        if allowed:
            await rig.event("remote_start", lambda f: f["status"] != "Rejected")
        return
    decision = await _present(rig, TAG[path])
    assert decision["status"] == "Accepted"


def _starts_queued(rig: OcppRig) -> list[Any]:
    return [row for row in rig.ocpp.store.queue_rows() if row.action == "StartTransaction"]


@pytest.mark.parametrize(("path", "rule"), _combinations())
async def test_every_start_path_respects_every_rule(
    cs: CentralSystem, tmp_path: Path, path: str, rule: str
) -> None:
    sections: dict[str, Any] = {}
    if path == "free_vend":
        sections["authorization"] = {"free_vend": True, "free_vend_id_tag": FREE_TAG}
    async with ocpp_rig(cs, tmp_path, keys=KEYS, **sections) as rig:
        if path == "local_list" and not rig.ocpp.keys.is_supported("LocalAuthListEnabled"):
            pytest.skip("the Local Auth List Management profile is not supported yet")
        await _arrange(rig, path, rule)
        if path in OFFLINE:
            await cut_link(rig)
        mark = cs.mark()
        queued_before = len(_starts_queued(rig))
        allowed = rule in ALLOWED
        await _try_start(rig, path, allowed)

        if allowed:
            await rig.until(
                lambda: rig.connector.transaction is not None and rig.connector.energized
            )
            if path in OFFLINE:
                starts = [row.payload for row in _starts_queued(rig)[queued_before:]]
            else:
                starts = [payload_of(await rig.call_of("StartTransaction", since=mark))]
            assert len(starts) == 1
            assert starts[0]["idTag"] == TAG[path]
            assert starts[0]["reservationId"] == RESERVATION_ID
            assert rig.connector.reservation is None, "the reservation was used"
        else:
            await rig.run(3)  # the EV waits, a start would have happened by now
            assert rig.connector.transaction is None
            assert not rig.connector.energized, "the relay closed"
            assert calls(cs, "StartTransaction", mark) == []
            assert len(_starts_queued(rig)) == queued_before


async def test_a_card_accepted_before_the_plug_does_not_start_once_inoperative(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The gate is asked again when the EV arrives: Inoperative came in between."""
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        await _present(rig, CARD)
        assert rig.connector.phase == Phase.AUTHORIZED
        assert await _availability(rig, 1) == "Accepted"
        mark = cs.mark()
        await _plug(rig)
        await rig.run(3)
        assert rig.connector.transaction is None
        assert not rig.connector.energized
        assert calls(cs, "StartTransaction", mark) == []
        assert rig.status == "Unavailable"
