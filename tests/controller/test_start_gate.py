"""Every way a session can start, against every rule that may forbid it (issue 14 #9).

The start paths: a card then the plug, the plug then a card, free vend on plug-in, and a
remote start (the Central System's idTag, with its parent). The card arrives through the
real RDM6300 driver; how it was authorised (Authorize online, the local list, the cache,
offline) is decided by the hooks before the connector hears `authorized`, so the rules
below hold for each of them alike: the connector's one gate decides. The rules:
Inoperative, a fault, a reservation for another idTag (refused), and a reservation for
this idTag or for its parent (allowed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.connector.faults import Fault
from evsed.hwmocks.central_system import CentralSystem
from tests.support.bench_rig import MakeRig, Rig
from tests.support.ocpp_rig import ocpp_rig

CARD = "AABBCCDDEE"
PARENT = "GROUP-1"
OTHER = "0102030405"


def _reserve(rig: Rig, tag: str, parent: str | None) -> None:
    expiry = rig.clock.now().timestamp() + 3600
    assert rig.connector.reserve(7, tag, parent, expiry) == "Accepted"


RULES: dict[str, tuple[Callable[[Rig, str], None], bool]] = {
    # name: (apply it, given the tag the path starts with; may a transaction start?)
    "no rule": (lambda rig, tag: None, True),
    "inoperative": (lambda rig, tag: _accepted(rig.connector.change_availability(False)), False),
    "faulted": (lambda rig, tag: rig.connector.raise_fault(Fault.WELDED, "test"), False),
    "reserved for another tag": (lambda rig, tag: _reserve(rig, OTHER, None), False),
    "reserved for this tag": (lambda rig, tag: _reserve(rig, tag, None), True),
}


def _accepted(answer: str) -> None:
    assert answer == "Accepted"


async def _card(rig: Rig) -> None:
    seen = rig.note("authorized", lambda f: f["id_tag"] == CARD)
    await rig.bench.present_card(CARD)
    await seen
    await rig.run(0.5)


async def path_card_then_plug(rig: Rig) -> None:
    await _card(rig)
    await rig.bench.plug(1)


async def path_plug_then_card(rig: Rig) -> None:
    await rig.bench.plug(1)
    await rig.run(1.0)
    await _card(rig)


async def path_free_vend(rig: Rig) -> None:
    await rig.bench.plug(1)


async def path_remote(rig: Rig) -> None:
    rig.connector.authorize_remote(CARD, PARENT)
    await rig.bench.plug(1)


PATHS: dict[str, tuple[Callable[[Rig], Awaitable[None]], dict[str, Any]]] = {
    "card then plug": (path_card_then_plug, {}),
    "plug then card": (path_plug_then_card, {}),
    "free vend": (path_free_vend, {"authorization": {"free_vend": True}}),
    "remote start": (path_remote, {}),
}


def _tag_of(path: str, rig: Rig) -> str:
    return rig.connector.settings.free_vend_id_tag if path == "free vend" else CARD


async def _outcome(rig: Rig) -> bool:
    await rig.run(3.0)
    started = rig.connector.transaction is not None
    if not started:
        assert not rig.sim.pins.relay_energized
        assert rig.status != "Charging"
    return started


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("path", list(PATHS))
async def test_every_start_path_obeys_every_rule(make_rig: MakeRig, path: str, rule: str) -> None:
    start, sections = PATHS[path]
    apply, allowed = RULES[rule]
    rig = await make_rig(**sections)
    apply(rig, _tag_of(path, rig))
    await start(rig)
    started = await _outcome(rig)
    assert started is allowed, f"{path} with {rule}: started={started}"
    if not allowed:
        assert rig.kinds("start_refused"), "a refusal is noted (and logged)"


async def test_a_remote_start_for_the_reserved_parent_starts(make_rig: MakeRig) -> None:
    rig = await make_rig()
    _reserve(rig, OTHER, PARENT)
    await path_remote(rig)  # CARD, of group PARENT
    assert await _outcome(rig)
    tx = rig.connector.transaction
    assert tx is not None and tx.reservation_id == 7
    assert rig.connector.reservation is None  # the start used it up


# (A reservation cannot arrive then: an authorised connector answers ReserveNow Occupied.)
@pytest.mark.parametrize("rule", ["inoperative", "faulted"], ids=lambda r: f"then {r}")
async def test_a_rule_that_arrives_between_card_and_plug_still_holds(
    make_rig: MakeRig, rule: str
) -> None:
    rig = await make_rig()
    await _card(rig)  # authorised while nothing forbade it
    RULES[rule][0](rig, CARD)
    await rig.bench.plug(1)
    assert not await _outcome(rig)
    assert rig.kinds("start_refused")


# ---------------------------------------------------------------- through OCPP


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def test_a_card_on_an_inoperative_connector_starts_no_transaction(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The prober's case: ChangeAvailability(1, Inoperative), then plug and card."""
    async with ocpp_rig(cs, tmp_path) as rig:
        answer = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert answer.status == "Accepted"
        mark = cs.mark()
        await rig.bench.plug(1)
        refused = rig.note("start_refused")
        await rig.bench.present_card(CARD)
        assert (await refused)["reason"] == "unavailable"
        await rig.run(5)
        assert rig.calls("StartTransaction", since=mark) == []
        assert not rig.sim.pins.relay_energized
        assert rig.status == "Unavailable"
