"""The connector <-> OCPP bridge end to end: meter values, StopTransactionOnInvalidId,
power-loss recovery and charging with no Central System, on the bench charger."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.limiter import Reason, SmartChargingLimit
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem, Frame
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OTHER, OcppRig, ocpp_rig
from tests.support.stopping import advancing, call_advancing

START = datetime(2026, 1, 1, tzinfo=UTC)  # FakeClock's default start


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted", OTHER: "Accepted"}) as central:
        yield central


def measurands(frame: Frame) -> set[str]:
    return {sv["measurand"] for mv in frame.payload["meterValue"] for sv in mv["sampledValue"]}


def contexts(meter_values: list[dict[str, Any]]) -> list[str]:
    return [mv["sampledValue"][0]["context"] for mv in meter_values]


async def n_calls(rig: OcppRig, action: str, n: int, since: int) -> list[Frame]:
    """Wait (real time) until the CS has received `n` CALLs of `action` since `since`."""
    await rig.central.wait_for(lambda _f: len(rig.calls(action, since)) >= n, since=since)
    return rig.calls(action, since)


# ---------------------------------------------------------------- StopTransactionOnInvalidId


async def test_invalid_id_in_start_conf_stops_the_transaction(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false", "StopTransactionOnInvalidId": "true"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start("DEADBEEF", connector_id=1) == "Accepted"
        start = await rig.answered(await rig.call_of("StartTransaction", since=mark))
        assert start.payload["idTagInfo"]["status"] == "Invalid"
        stop = await rig.call_of("StopTransaction", since=mark)
        assert stop.payload["reason"] == "DeAuthorized"
        assert stop.payload["transactionId"] == start.payload["transactionId"]
        assert rig.connector.transaction is None


async def test_invalid_id_without_stop_suspends_energy(cs: CentralSystem, tmp_path: Path) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false", "StopTransactionOnInvalidId": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start("DEADBEEF", connector_id=1) == "Accepted"
        await rig.answered(await rig.call_of("StartTransaction", since=mark))
        await rig.until(lambda: rig.status == "SuspendedEVSE")
        assert rig.connector.transaction is not None
        assert rig.connector.offered_a == 0
        charger = rig.stack.charger
        assert charger is not None
        # The binding limit says why, to the OCPP layer (port) and in the timeline.
        assert charger.allowance(1).reason is Reason.INVALID_ID
        suspended = await rig.event("suspended")
        assert suspended["reason"] == "invalid_id"
        await rig.run(10)
        assert not rig.sim.pins.relay_energized
        assert rig.connector.transaction is not None
        await rig.command(call.GetConfiguration(key=["HeartbeatInterval"]))  # round trip
        assert rig.calls("StopTransaction", since=mark) == []
        # The suspension ends with the transaction.
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.connector.transaction is None)
        await rig.call_of("StopTransaction", since=mark)
        assert charger.allowance(1).reason is not Reason.INVALID_ID
        assert rig.stack.charger._slots[1].smart is None
        assert rig.stack.charger._slots[1].invalid_id is False


async def test_invalid_id_suspension_keeps_the_tx_profile_limit(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The suspension used to be a 0 A smart-charging limit that overwrote the TxProfile's."""
    keys = {"AuthorizeRemoteTxRequests": "false", "StopTransactionOnInvalidId": "false"}
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
        },
    }
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        mark = cs.mark()
        await rig.plug()
        result = await rig.remote_start("DEADBEEF", connector_id=1, charging_profile=profile)
        assert result == "Accepted"
        await rig.answered(await rig.call_of("StartTransaction", since=mark))
        await rig.event("suspended")
        charger = rig.stack.charger
        assert charger is not None
        assert charger.allowance(1).reason is Reason.INVALID_ID
        assert charger._slots[1].smart == SmartChargingLimit(10.0)


# ---------------------------------------------------------------- sampled meter values


async def test_sampled_meter_values_at_the_interval_with_the_configured_measurands(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {
        "AuthorizeRemoteTxRequests": "false",
        "MeterValueSampleInterval": "10",
        "MeterValuesSampledData": "Energy.Active.Import.Register,Voltage,Current.Offered",
    }
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        tx_id = await rig.start_transaction()
        await rig.meter_sample()
        mark = cs.mark()
        await rig.run(30)
        frames = await n_calls(rig, "MeterValues", 3, mark)
        assert len(frames) == 3
        stamps = []
        for frame in frames:
            assert frame.payload["transactionId"] == tx_id
            assert frame.payload["connectorId"] == 1
            assert measurands(frame) == {
                "Energy.Active.Import.Register",
                "Voltage",
                "Current.Offered",
            }
            assert contexts(frame.payload["meterValue"]) == ["Sample.Periodic"]
            stamp = frame.payload["meterValue"][0]["timestamp"]
            stamps.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
        assert [b - a for a, b in itertools.pairwise(stamps)] == [timedelta(seconds=10)] * 2


async def test_sample_interval_zero_sends_no_sampled_values(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false", "MeterValueSampleInterval": "0"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await rig.start_transaction()
        await rig.meter_sample()
        mark = cs.mark()
        await rig.run(60)
        # Something after the window must arrive for "nothing in it" to mean anything.
        await rig.command(call.GetConfiguration(key=["MeterValueSampleInterval"]))
        assert rig.calls("MeterValues", since=mark) == []


# ---------------------------------------------------------------- clock-aligned meter values


async def test_clock_aligned_values_exactly_on_the_boundaries_when_idle(
    tmp_path: Path,
) -> None:
    keys = {
        "ClockAlignedDataInterval": "60",
        "MeterValuesAlignedData": "Energy.Active.Import.Register",
    }
    clock = FakeClock()
    # The CS tells the simulated time at boot, so the charger keeps its clock.
    async with (
        CentralSystem(now=clock.now) as central,
        ocpp_rig(central, tmp_path, keys=keys, clock=clock) as rig,
    ):
        await rig.meter_sample()
        mark = central.mark()
        await rig.run(125)
        frames = await n_calls(rig, "MeterValues", 2, mark)
        stamps = [f.payload["meterValue"][0]["timestamp"] for f in frames]
        assert stamps == ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]
        for frame in frames:
            assert "transactionId" not in frame.payload  # no transaction: plain MeterValues
            assert contexts(frame.payload["meterValue"]) == ["Sample.Clock"]
            assert measurands(frame) == {"Energy.Active.Import.Register"}


async def test_clock_aligned_values_in_a_transaction_and_stop_txn_data(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {
        "AuthorizeRemoteTxRequests": "false",
        "ClockAlignedDataInterval": "30",
        "MeterValueSampleInterval": "0",
        "StopTxnAlignedData": "Energy.Active.Import.Register",
        "StopTxnSampledData": "Energy.Active.Import.Register",
    }
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await rig.meter_sample()
        before = cs.mark()
        tx_id = await rig.start_transaction()
        await rig.run(60)
        await n_calls(rig, "MeterValues", 2, before)
        assert (await rig.command(call.RemoteStopTransaction(transaction_id=tx_id))).status
        stop = await call_advancing(rig, "StopTransaction", since=before)
        start = await rig.call_of("StartTransaction", since=before)
        in_tx = [f for f in rig.calls("MeterValues", start.seq) if f.seq < stop.seq]
        assert len(in_tx) >= 2
        assert all(f.payload["transactionId"] == tx_id for f in in_tx)
        stamps = [f.payload["meterValue"][0]["timestamp"] for f in in_tx]
        assert all(s.endswith(("00Z", "30Z")) for s in stamps)
        # Begin, one entry per aligned reading of the transaction, End.
        data = stop.payload["transactionData"]
        assert contexts(data) == [
            "Transaction.Begin",
            *["Sample.Clock"] * len(in_tx),
            "Transaction.End",
        ]
        assert [mv["timestamp"] for mv in data[1:-1]] == stamps


async def test_changing_the_aligned_interval_takes_effect(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.meter_sample()
        mark = cs.mark()
        await rig.run(120)
        await rig.command(call.GetConfiguration(key=["ClockAlignedDataInterval"]))
        assert rig.calls("MeterValues", since=mark) == []  # 0: off by default
        change = call.ChangeConfiguration(key="ClockAlignedDataInterval", value="30")
        assert (await rig.command(change)).status == "Accepted"
        mark = cs.mark()
        await rig.run(31)
        frames = await n_calls(rig, "MeterValues", 1, mark)
        assert frames[0].payload["meterValue"][0]["timestamp"].endswith(("00Z", "30Z"))


# ---------------------------------------------------------------- power-loss recovery


def _left_open(state_dir: Path, *, reason: str | None = None) -> datetime:
    """The database as a run cut by a power loss leaves it: a transaction open, its
    StartTransaction queued, the last meter register recorded. Returns that reading's time."""
    with Store(state_dir / "evsed.db") as store:
        keys = ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"])
        queue = TxQueue.from_keys(store, keys)
        started = START - timedelta(hours=2)
        queue.start_transaction(1, CARD, 1000, started)
        last = START - timedelta(hours=1)
        store.record_meter(1, 1750.4, last, force=True)
        if reason is not None:
            store.set_pending_stop_reason(reason)
    return last


async def test_power_loss_stop_is_sent_exactly_once(cs: CentralSystem, tmp_path: Path) -> None:
    last = _left_open(tmp_path)
    async with ocpp_rig(cs, tmp_path) as rig:
        start = await rig.answered(await rig.call_of("StartTransaction"))
        stop = await rig.call_of("StopTransaction")
        assert stop.payload["transactionId"] == start.payload["transactionId"]
        assert stop.payload["reason"] == "PowerLoss"
        assert stop.payload["meterStop"] == 1750
        stamp = datetime.fromisoformat(stop.payload["timestamp"].replace("Z", "+00:00"))
        assert stamp == last
        await rig.answered(stop)
        await rig.until(lambda: rig.ocpp.txqueue.pending() == [])  # acknowledged
        assert rig.connector.transaction is None
    async with ocpp_rig(cs, tmp_path, clock=FakeClock()) as rig:
        assert rig.ocpp.txqueue.open_transactions() == []
        assert rig.ocpp.txqueue.pending() == []
        # A round trip after the second boot: anything it queued has been sent by now.
        await rig.command(call.GetConfiguration(key=["HeartbeatInterval"]))
        assert len(rig.calls("StopTransaction")) == 1


async def test_planned_restart_stops_with_the_stored_reason(
    cs: CentralSystem, tmp_path: Path
) -> None:
    _left_open(tmp_path, reason="HardReset")
    async with ocpp_rig(cs, tmp_path) as rig:
        stop = await rig.call_of("StopTransaction")
        assert stop.payload["reason"] == "HardReset"
        assert rig.ocpp.store.take_pending_stop_reason() is None  # consumed


# ---------------------------------------------------------------- no Central System


async def test_without_a_central_system_local_tags_charge_and_nothing_is_lost(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(
        cs, tmp_path, online=False, central_system={"url": cs.url, "enabled": False}
    ) as rig:
        assert rig.ocpp.session is None
        await rig.plug()
        assert rig.stack.charger is not None
        rig.stack.charger.present_tag("0000000000")  # not a local tag
        await rig.run(2)
        assert rig.connector.transaction is None
        rig.stack.charger.present_tag(CARD)
        await rig.charging()
        assert [m.action for m in rig.ocpp.txqueue.pending()] == ["StartTransaction"]
        await rig.bench.unplug(1)
        await advancing(rig, lambda: len(rig.ocpp.txqueue.pending()) == 2)
        assert [m.action for m in rig.ocpp.txqueue.pending()] == [
            "StartTransaction",
            "StopTransaction",
        ]
        assert cs.frames == []
