"""Offline operation end to end: the whole stack against the embedded Central System.

Bench, drivers, charger, OcppApp and OcppSession run in this process; the charger's timers
run on a FakeClock, the websocket and the meter's Modbus socket in real time. The CS is
taken away (`set_offline`: the link is cut, handshakes get 503) and brought back; what
was queued meanwhile must reach it in order, once, with the right transactionId.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_stack import (
    CARD,
    CP_ID,
    OTHER,
    OcppRig,
    calls,
    charge_for,
    cut_link,
    delivered,
    ocpp_rig,
    payload_of,
    restore_link,
    results,
)
from tests.support.stopping import call_advancing

BLOCKED = "B10CKED000"
STRANGER = "5712A46E70"  # unknown to the CS: its StartTransaction is answered Invalid
SAMPLE_S = 5
KEYS = {"AuthorizeRemoteTxRequests": "false", "MeterValueSampleInterval": str(SAMPLE_S)}


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(
        tags={CARD: "Accepted", OTHER: "Accepted", BLOCKED: "Blocked"}
    ) as central:
        yield central


def _tx_frames(cs: CentralSystem, since: int) -> list[Frame]:
    """The CP's transaction CALLs from `since` on, in wire order."""
    actions = {"StartTransaction", "MeterValues", "StopTransaction"}
    return [f for f in cs.frames_of(CP_ID, since=since) if _cp_call(f) and f.action in actions]


def _cp_call(f: Frame) -> bool:
    return f.is_call and f.direction is Direction.CP_TO_CS


def _connector_statuses(cs: CentralSystem, since: int, connector_id: int = 1) -> list[str]:
    return [
        str(payload_of(f)["status"])
        for f in calls(cs, "StatusNotification", since)
        if payload_of(f)["connectorId"] == connector_id
    ]


def _assert_once_each(frames: list[Frame]) -> None:
    ids = [f.unique_id for f in frames]
    assert len(set(ids)) == len(ids), "a CALL went out twice"
    raws = [f.raw.split(",", 2)[2] for f in frames]  # action + payload, without the id
    assert len(set(raws)) == len(raws), "the same message was delivered twice"


async def _unplug(rig: OcppRig) -> None:
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.status == "Available", within_s=5)
    assert rig.connector.transaction is None


async def _present(rig: OcppRig, tag: str) -> dict[str, object]:
    """A card at the reader; waits (real time, the CS may be asked) for the decision."""
    assert rig.stack.charger is not None
    waiting = asyncio.ensure_future(rig.note("authorized", lambda f: f["id_tag"] == tag, timeout=5))
    rig.stack.charger.present_tag(tag)
    return await waiting


async def _status_notified(cs: CentralSystem, status: str, since: int) -> Frame:
    return await cs.wait_for(
        lambda f: (
            _cp_call(f)
            and f.action == "StatusNotification"
            and payload_of(f)["connectorId"] == 1
            and payload_of(f)["status"] == status
        ),
        since=since,
    )


# ---------------------------------------------------------------- link cut mid-transaction


async def test_link_cut_during_a_transaction_loses_nothing(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        tx_id = await rig.start_transaction()
        online_values = asyncio.ensure_future(delivered(rig, "MeterValues"))
        await charge_for(rig, SAMPLE_S + 1)  # one MeterValues while online
        await online_values
        assert len(rig.ocpp.txqueue) == 0
        await cut_link(rig)
        offline_mark = cs.mark()

        await charge_for(rig, 6 * SAMPLE_S)
        queued = [row.action for row in rig.ocpp.store.queue_rows()]
        assert queued.count("MeterValues") >= 5
        await _unplug(rig)
        queued = [row.action for row in rig.ocpp.store.queue_rows()]
        assert queued[-1] == "StopTransaction"
        assert queued.count("StopTransaction") == 1
        assert cs.mark() == offline_mark, "nothing crosses a cut link"

        confirmed = asyncio.ensure_future(delivered(rig, "StopTransaction"))
        await restore_link(rig)
        stop = await cs.wait_for_call("StopTransaction", CP_ID, since=offline_mark)
        await confirmed
        await _status_notified(cs, "Available", offline_mark)
        assert len(rig.ocpp.txqueue) == 0

        sent = _tx_frames(cs, offline_mark)
        assert [f.action for f in sent] == queued, "delivered in the order they were queued"
        assert all(payload_of(f)["transactionId"] == tx_id for f in sent)
        _assert_once_each(sent)
        assert payload_of(stop)["reason"] == "EVDisconnected"
        stamps = [payload_of(f)["meterValue"][0]["timestamp"] for f in sent[:-1]]
        assert stamps == sorted(stamps)
        # After the reconnection the CS hears the present, not the history.
        assert _connector_statuses(cs, offline_mark) == ["Available"]
        assert cs.transactions[tx_id].stopped


# ---------------------------------------------------------------- a transaction wholly offline


async def test_transaction_entirely_offline_is_replayed_with_the_cs_transaction_id(
    cs: CentralSystem, tmp_path: Path
) -> None:
    cs.set_offline(True)
    async with ocpp_rig(cs, tmp_path, keys=KEYS, online=False) as rig:
        # Accepted before, in the Authorization Cache: valid offline (LocalAuthorizeOffline).
        rig.ocpp.store.cache_put(CARD, {"status": "Accepted"}, None)
        await rig.plug()
        assert (await _present(rig, CARD))["status"] == "Accepted"
        await rig.charging()
        await charge_for(rig, 4 * SAMPLE_S + 1)
        await _unplug(rig)
        meter_wh = rig.sim.meter.energy_wh
        queued = [row.action for row in rig.ocpp.store.queue_rows()]
        assert queued[0] == "StartTransaction" and queued[-1] == "StopTransaction"
        assert queued.count("MeterValues") >= 4
        assert cs.frames == []

        confirmed = asyncio.ensure_future(delivered(rig, "StopTransaction"))
        await restore_link(rig)
        stop = await cs.wait_for_call("StopTransaction", CP_ID)
        await confirmed
        assert len(rig.ocpp.txqueue) == 0

        sent = _tx_frames(cs, 0)
        assert [f.action for f in sent] == queued
        _assert_once_each(sent)
        (start_reply,) = results(cs, "StartTransaction")
        assert start_reply.seq < sent[1].seq, "nothing follows before the id is known"
        tx_id = start_reply.payload["transactionId"]
        assert isinstance(tx_id, int) and tx_id > 0
        assert all(payload_of(f)["transactionId"] == tx_id for f in sent[1:])
        start, stop_payload = payload_of(sent[0]), payload_of(stop)
        assert start["idTag"] == CARD
        # Wh, not kWh: a minute and a half at ~22 kW is hundreds of Wh, as the meter says.
        assert stop_payload["meterStop"] > start["meterStart"] + 100
        assert stop_payload["meterStop"] == pytest.approx(meter_wh, abs=30)
        assert start["meterStart"] <= 30
        assert stop_payload["reason"] == "EVDisconnected"
        assert cs.transactions[tx_id].meter_stop == stop_payload["meterStop"]


# ---------------------------------------------------------------- StopTransactionOnInvalidId


async def _offline_unknown_tag_charging(rig: OcppRig) -> None:
    await cut_link(rig)
    await rig.plug()
    assert (await _present(rig, STRANGER))["status"] == "Accepted"
    await rig.charging()
    await charge_for(rig, 3)


async def test_invalid_id_in_start_result_stops_the_offline_transaction(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {**KEYS, "AllowOfflineTxForUnknownId": "true"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await _offline_unknown_tag_charging(rig)
        mark = cs.mark()
        await restore_link(rig)
        start = await cs.wait_for_call("StartTransaction", CP_ID, since=mark)
        reply = await rig.answered(start)
        assert reply.payload["idTagInfo"]["status"] == "Invalid"
        await rig.until(lambda: rig.connector.transaction is None, within_s=5)
        stop = await call_advancing(rig, "StopTransaction", since=mark)
        assert payload_of(stop)["reason"] == "DeAuthorized"
        assert payload_of(stop)["transactionId"] == reply.payload["transactionId"]
        # The EV is still plugged: the charge ends, the contactor opens, Finishing.
        await rig.until(lambda: not rig.connector.energized, within_s=5)
        assert rig.status == "Finishing"


async def test_invalid_id_with_the_key_false_suspends_instead(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {**KEYS, "AllowOfflineTxForUnknownId": "true", "StopTransactionOnInvalidId": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await _offline_unknown_tag_charging(rig)
        mark = cs.mark()
        await restore_link(rig)
        start = await cs.wait_for_call("StartTransaction", CP_ID, since=mark)
        reply = await rig.answered(start)
        assert reply.payload["idTagInfo"]["status"] == "Invalid"
        await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=5)
        await rig.run(2 * SAMPLE_S)
        assert rig.connector.transaction is not None, "suspended, not stopped"
        assert any(event == "suspended" for event, _ in rig.events)
        assert calls(cs, "StopTransaction", mark) == []
        await _status_notified(cs, "SuspendedEVSE", mark)


# ---------------------------------------------------------------- the authorisation modes


async def test_online_authorize_accepted_then_cache_hit_offline(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        mark = cs.mark()
        await rig.plug()
        assert (await _present(rig, CARD))["status"] == "Accepted"
        (authorize,) = calls(cs, "Authorize", mark)
        assert payload_of(authorize) == {"idTag": CARD}
        await rig.charging()
        start = await cs.wait_for_call("StartTransaction", CP_ID, since=mark)
        assert payload_of(start)["idTag"] == CARD
        await _unplug(rig)
        await cs.wait_for_call("StopTransaction", CP_ID, since=mark)

        # The Authorize.conf went into the cache: offline, the same card charges.
        cached = rig.ocpp.store.cache_get(CARD)
        assert cached is not None and cached.id_tag_info["status"] == "Accepted"
        await cut_link(rig)
        await rig.plug()
        assert (await _present(rig, CARD))["status"] == "Accepted"
        await rig.charging()
        assert rig.connector.transaction is not None
        assert rig.connector.transaction.id_tag == CARD


async def test_online_blocked_tag_does_not_charge(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        mark = cs.mark()
        await rig.plug()
        assert (await _present(rig, BLOCKED))["status"] == "Blocked"
        (authorize,) = calls(cs, "Authorize", mark)
        assert (await rig.answered(authorize)).payload["idTagInfo"]["status"] == "Blocked"
        await rig.run(3)
        assert rig.status == "Preparing"
        assert rig.connector.transaction is None
        assert rig.connector.energized is False
        assert calls(cs, "StartTransaction", mark) == []


async def test_local_pre_authorize_starts_without_an_authorize(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {**KEYS, "LocalPreAuthorize": "true"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        rig.ocpp.store.cache_put(OTHER, {"status": "Accepted"}, None)
        mark = cs.mark()
        await rig.plug()
        assert (await _present(rig, OTHER))["status"] == "Accepted"
        assert rig.connector.transaction is not None, "started at once, no round trip"
        await rig.charging()
        start = await cs.wait_for_call("StartTransaction", CP_ID, since=mark)
        assert payload_of(start)["idTag"] == OTHER
        assert calls(cs, "Authorize", mark) == []


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " refused (" in r.getMessage()]


async def test_unknown_tag_offline_is_refused_without_allow_offline_tx(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {**KEYS, "AllowOfflineTxForUnknownId": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await cut_link(rig)
        await rig.plug()
        with caplog.at_level("INFO", logger="evsed.controller.ocpp16.bridge"):
            assert (await _present(rig, STRANGER))["status"] == "Invalid"
        await rig.run(3)
        assert rig.connector.transaction is None
        assert rig.status == "Preparing"
        assert len(rig.ocpp.txqueue) == 0
    # A new user read a bare "refused (Invalid)" offline as the Central System's verdict.
    (line,) = _refusals(caplog)
    assert line.endswith(
        "refused (Invalid): no answer from the Central System, and the card is in neither "
        "the local list nor the authorisation cache (AllowOfflineTxForUnknownId is false)"
    )


async def test_a_card_the_central_system_blocks_is_logged_as_its_refusal(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        await rig.plug()
        with caplog.at_level("INFO", logger="evsed.controller.ocpp16.bridge"):
            assert (await _present(rig, BLOCKED))["status"] == "Blocked"
        (line,) = _refusals(caplog)
        assert line.endswith("refused (Blocked): by the Central System")
        # Asked again offline, the answer now comes from the cache, and the line says so.
        await cut_link(rig)
        caplog.clear()
        with caplog.at_level("INFO", logger="evsed.controller.ocpp16.bridge"):
            assert (await _present(rig, BLOCKED))["status"] == "Blocked"
        (line,) = _refusals(caplog)
        assert line.endswith("refused (Blocked): by the authorisation cache")


async def test_sampled_meter_values_carry_the_socket_temperature(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(
        cs,
        tmp_path,
        keys={**KEYS, "MeterValuesSampledData": "Temperature"},
    ) as rig:
        await rig.start_transaction(CARD)
        mark = cs.mark()
        await charge_for(rig, 6)
        frame = await cs.wait_for_call("MeterValues", CP_ID, timeout=10, since=mark)
        (value,) = frame.payload["meterValue"][0]["sampledValue"]
        assert value["measurand"] == "Temperature"
        assert value["unit"] == "Celsius"
        assert float(value["value"]) == pytest.approx(25.0, abs=0.5)  # the bench's socket
