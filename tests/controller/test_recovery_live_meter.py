"""Recovery after a kill -9 or a power cut reads the live meter first (safety review of
issue 14): through the production start order (`Stack.start`: bench, charger, then
`OcppApp.start`), with no rig waiting for the meters before the app starts.

Before, recovery ran while `Charger.start` had only started the meter pollers: the stop was
billed with the stored reading (up to one record interval old, 0 Wh with sampling off) and
stamped with its time, the start's own when killed before the first MeterValues."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller import simbench
from evsed.controller.ocpp16.app import RECOVERY_METER_WAIT_S
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.run import Stack
from evsed.controller.store import DB_FILENAME, Store, secure_state_dir
from evsed.hwmocks.central_system import CentralSystem
from evsed.hwmocks.meter import MeterFault
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, CP_ID


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def _meter_holds(monkeypatch: pytest.MonkeyPatch, energy_wh: float) -> None:
    """The bench's meter of connector 1 holds `energy_wh` from its first register image on
    (a real meter keeps its register across the controller's kill)."""
    real = simbench.build_bench

    def build(*args: Any, **kwargs: Any) -> Any:
        bench = real(*args, **kwargs)
        bench.sim(1).meter.energy_wh = energy_wh
        return bench

    monkeypatch.setattr(simbench, "build_bench", build)


def _left_open(tmp_path: Path, start_at: Any, meter_start: int, last: float | None) -> None:
    with Store(secure_state_dir(tmp_path) / DB_FILENAME) as store:
        TxQueue(store).start_transaction(1, CARD, meter_start, start_at)
        if last is not None:
            store.record_meter(1, last, start_at + timedelta(minutes=5), force=True)


async def test_recovery_bills_what_the_live_meter_holds(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    start_at = clock.now() - timedelta(minutes=10)
    _left_open(tmp_path, start_at, 1000, 1200.0)  # the last stored reading: 1200 Wh
    _meter_holds(monkeypatch, 3000.0)  # the meter kept counting until the kill
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    try:
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        assert stop.payload["meterStop"] == 3000
        assert stop.payload["reason"] == "PowerLoss"
        assert stop.payload["timestamp"] > start_at.isoformat()
    finally:
        await stack.stop()


async def test_killed_before_the_first_meter_values_is_stamped_after_the_start(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed 40 s into a session, before any MeterValues: the only stored reading is the
    start's; the meter still reads the start's energy. The stop carries it with the time
    it was read at this start, not the start's own timestamp."""
    clock = FakeClock()
    start_at = clock.now() - timedelta(seconds=40)
    _left_open(tmp_path, start_at, 1000, None)
    _meter_holds(monkeypatch, 1000.0)
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    try:
        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=10)
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        assert stop.payload["meterStop"] == 1000
        assert stop.payload["timestamp"] > start.payload["timestamp"]
    finally:
        await stack.stop()


async def test_a_stop_while_the_cs_has_not_answered_ends_in_real_time(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop gives the CS a bounded moment to confirm the StopTransactions it has just
    been sent. That bound is real time: on a charger's clock nobody moves (here a
    FakeClock) the stop waited for ever (two loop runs hung until pytest-timeout). Nothing
    is lost by giving up: the StopTransaction stays queued on disk for the next start."""
    clock = FakeClock()
    start_at = clock.now() - timedelta(minutes=10)
    _left_open(tmp_path, start_at, 1000, 1200.0)
    _meter_holds(monkeypatch, 3000.0)
    cs.silent_actions.add("StopTransaction")
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    stopped = False
    try:
        await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        await asyncio.wait_for(stack.stop(), 10)  # the bound is 3 s
        stopped = True
        with Store(secure_state_dir(tmp_path) / DB_FILENAME) as store:
            queued = [m.action for m in TxQueue(store).pending()]
        assert queued == ["StopTransaction"]
    finally:
        if not stopped:
            await _stop(stack, clock)


async def _stop(stack: Stack, clock: FakeClock) -> None:
    """Stop with the charger's clock moving (the cleanup of a failed run above)."""
    stopping = asyncio.ensure_future(stack.stop())
    while not stopping.done():
        await clock.advance(0.05)
        await asyncio.wait([stopping], timeout=0.01)
    await stopping


async def test_a_silent_meter_delays_recovery_by_the_bound_only(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A meter that never answers: recovery waits `RECOVERY_METER_WAIT_S` of the charger's
    clock, then stops with the stored reading (and its time)."""
    clock = FakeClock()
    start_at = clock.now() - timedelta(minutes=10)
    _left_open(tmp_path, start_at, 1000, 1200.0)
    real = simbench.build_bench

    def build(*args: Any, **kwargs: Any) -> Any:
        bench = real(*args, **kwargs)
        bench.sim(1).meter.fault = MeterFault.SILENT
        return bench

    monkeypatch.setattr(simbench, "build_bench", build)
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    starting = asyncio.ensure_future(stack.start())
    try:
        for _ in range(20):  # the app waits: nothing stopped yet
            await asyncio.sleep(0.01)
        assert not starting.done()
        with Store(secure_state_dir(tmp_path) / DB_FILENAME) as store:
            assert store.open_transactions()
        await clock.advance(RECOVERY_METER_WAIT_S)
        await asyncio.wait_for(starting, 10)
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        assert stop.payload["meterStop"] == 1200
        assert stop.payload["timestamp"] == "2025-12-31T23:55:00Z"
    finally:
        if not starting.done():
            starting.cancel()
        await stack.stop()


def _two_connectors() -> list[dict[str, Any]]:
    example = Path(__file__).parents[2] / "config" / "sim-two-connectors.toml"
    connectors: list[dict[str, Any]] = tomllib.loads(example.read_text(encoding="utf-8"))[
        "connectors"
    ]
    for connector in connectors:
        connector["meter"]["port"] = 0
    return connectors


async def test_a_session_started_during_the_wait_is_not_recovered(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connectors run while recovery waits for a silent meter (connector 2's, with the
    transaction left open): a card starts a session on connector 1 meanwhile. Recovery
    stops only the last run's transaction, not the one just started."""
    clock = FakeClock()
    start_at = clock.now() - timedelta(minutes=10)
    with Store(secure_state_dir(tmp_path) / DB_FILENAME) as store:
        TxQueue(store).start_transaction(2, CARD, 1000, start_at)
    real = simbench.build_bench

    def build(*args: Any, **kwargs: Any) -> Any:
        bench = real(*args, **kwargs)
        bench.sim(2).meter.fault = MeterFault.SILENT
        return bench

    monkeypatch.setattr(simbench, "build_bench", build)
    config = bench_config(
        central_system={"url": cs.url, "charge_point_id": CP_ID}, connectors=_two_connectors()
    )
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    starting = asyncio.ensure_future(stack.start())
    try:
        while stack.charger is None or stack.charger.connectors[1].last_energy_wh is None:
            await asyncio.wait_for(asyncio.shield(asyncio.sleep(0.01)), 5)
        assert stack.bench is not None
        await stack.bench.plug(1)
        await stack.bench.present_card(CARD)
        connector = stack.charger.connectors[1]
        for _ in range(80):  # 4 s of the 10 s wait: the EV answers, the card starts it
            await clock.advance(0.05)
            await asyncio.sleep(0.005)
            if connector.transaction is not None:
                break
        assert not starting.done()
        new = connector.transaction
        assert new is not None and new.local_id == 2
        await clock.advance(RECOVERY_METER_WAIT_S)
        await asyncio.wait_for(starting, 10)
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        assert stop.payload["reason"] == "PowerLoss"
        assert stack.ocpp is not None
        assert [t.local_id for t in stack.ocpp.store.open_transactions()] == [2]
        assert connector.transaction is not None
    finally:
        if not starting.done():
            starting.cancel()
        await stack.stop()


async def test_a_live_meter_that_reads_the_stored_reading_keeps_its_time(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing flowed after the last stored reading (the EV had finished): the stop keeps
    that reading's time, not the restart's, which may come hours later."""
    clock = FakeClock()
    start_at = clock.now() - timedelta(hours=3)
    _left_open(tmp_path, start_at, 1000, 1200.0)  # stored 5 minutes after the start
    _meter_holds(monkeypatch, 1200.0)
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    try:
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=10)
        assert stop.payload["meterStop"] == 1200
        assert stop.payload["timestamp"] == "2025-12-31T21:05:00Z"
    finally:
        await stack.stop()
