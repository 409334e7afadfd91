"""Offline replay and disk wear of the transaction queue, through the real OCPP session.

1. Replay: 5,000 transaction messages are queued while offline (StartTransaction, 4,998
   MeterValues, StopTransaction), then the session connects to the embedded Central System
   on loopback. Measured: seconds from ``session.start()`` until the last message is
   confirmed; checked: the CS received every one, in order, with the real transactionId.
2. Disk: one hour of charging at MeterValueSampleInterval 10 s on a FakeClock: every 10 s of
   simulated time a MeterValues is queued, delivered over the socket and acknowledged
   (heartbeats run too). Bytes written are the growth of /proc/self/io ``wchar`` measured
   around each synchronous queue call (enqueue, next_due, resolve, ack): those calls are
   where SQLite writes (WAL frames and checkpoints), and no socket write can happen inside
   them because the event loop is not running then. So the figure is what SQLite handed
   to write(2) for the queue; the kernel may write less (merging) or more (ext4 metadata).

   Also reported: ``durable_syncs_per_hour``, the WAL fdatasyncs of that hour (MeterValues
   and their acknowledgements are light commits: 0 expected while a transaction runs).

Last line of output: one JSON object with delivered, in_order, seconds, disk_bytes_per_hour.
Run from the repository root: ``python -m benchmarks.offline_replay`` (its manual clock is the
tests' `tests.support.clock.FakeClock`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evsed.controller.clock import Clock, SystemClock
from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.config import Config
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.protocol import StrictChargePoint
from evsed.controller.ocpp16.session import Backoff, OcppSession
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem, Direction
from tests.support.clock import FakeClock

CP = "CP-BENCH"
MESSAGES = 5000
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SAMPLE_S = 10
HOUR_S = 3600


def meter_value(i: int, at: datetime) -> list[dict[str, Any]]:
    """A realistic sample: energy register, power, and current/voltage per phase."""
    sampled: list[dict[str, Any]] = [
        {"value": str(1000 + i * 3), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"},
    ]
    for phase in ("L1", "L2", "L3"):
        sampled.append(
            {"value": "16.0", "measurand": "Current.Import", "unit": "A", "phase": phase}
        )
        sampled.append({"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": phase})
    stamp = at.isoformat().replace("+00:00", "Z")
    return [{"timestamp": stamp, "sampledValue": sampled}]


def factory(cp_id: str, connection: Any) -> StrictChargePoint:
    return StrictChargePoint(cp_id, connection, response_timeout=30)


def context(directory: Path, url: str, clock: Clock) -> OcppContext:
    store = Store(directory / "evsed.db", monotonic=clock.monotonic)
    keys = ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"])
    return OcppContext(
        config=Config(central_system=CentralSystemConfig(url=url, charge_point_id=CP)),
        clock=clock,
        store=store,
        keys=keys,
        txqueue=TxQueue.from_keys(store, keys),
    )


class Confirmed:
    """Observer counting confirmed transaction messages; awaitable."""

    def __init__(self) -> None:
        self.count = 0
        self.errors: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        if name != "tx_message":
            return
        if fields["outcome"] == "confirmed":
            self.count += 1
        else:
            self.errors.append(fields)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


async def replay(directory: Path) -> dict[str, Any]:
    async with CentralSystem() as cs:
        ctx = context(directory, cs.url, SystemClock())
        txq = ctx.txqueue
        local = txq.start_transaction(1, "AABBCCDD", 1000, T0)
        for i in range(MESSAGES - 2):
            txq.meter_values(1, meter_value(i, T0 + timedelta(seconds=10 * i)), local)
        txq.stop_transaction(local, 1000 + 3 * MESSAGES, T0 + timedelta(hours=14), "Local")
        assert len(txq) == MESSAGES
        confirmed = Confirmed()
        ctx.observers.append(confirmed)
        session = OcppSession(ctx, factory, backoff=Backoff(initial_s=0.05))
        started = time.perf_counter()
        session.start()
        try:
            await confirmed.wait_for(MESSAGES, timeout=120)
            seconds = time.perf_counter() - started
        finally:
            await session.stop()
            ctx.store.close()
        tx_calls = [
            f
            for f in cs.frames
            if f.is_call
            and f.direction is Direction.CP_TO_CS
            and f.action in ("StartTransaction", "MeterValues", "StopTransaction")
        ]
        energies = [
            int(f.payload["meterValue"][0]["sampledValue"][0]["value"])
            for f in tx_calls
            if f.action == "MeterValues"
        ]
        cs_ids = {f.payload.get("transactionId") for f in tx_calls[1:]}
        in_order = (
            len(tx_calls) == MESSAGES
            and tx_calls[0].action == "StartTransaction"
            and tx_calls[-1].action == "StopTransaction"
            and energies == sorted(energies)
            and len(set(energies)) == MESSAGES - 2
            and len(cs_ids) == 1
            and None not in cs_ids
        )
        return {
            "delivered": confirmed.count,
            "received_by_cs": len(tx_calls),
            "in_order": in_order,
            "seconds": round(seconds, 3),
            "messages_per_second": round(MESSAGES / seconds),
            "failures": len(confirmed.errors),
        }


def _wchar() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


class WriteMeter:
    """Wraps a TxQueue's methods: sums wchar growth inside each (synchronous) call."""

    def __init__(self, queue: TxQueue) -> None:
        self.bytes = 0
        for name in ("meter_values", "next_due", "due_in", "resolve_payload", "ack"):
            setattr(queue, name, self._wrap(getattr(queue, name)))
        setattr(queue, "mark_attempt", self._wrap(queue.mark_attempt))  # noqa: B010

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any, **kwargs: Any) -> Any:
            before = _wchar()
            try:
                return fn(*args, **kwargs)
            finally:
                self.bytes += _wchar() - before

        return measured


async def disk_hour(directory: Path) -> dict[str, Any]:
    clock = FakeClock(start=T0)
    async with CentralSystem() as cs:
        ctx = context(directory, cs.url, clock)
        txq = ctx.txqueue
        local = txq.start_transaction(1, "AABBCCDD", 1000, T0)
        confirmed = Confirmed()
        ctx.observers.append(confirmed)
        session = OcppSession(ctx, factory)
        session.start()
        try:
            await session.wait_online(10)
            await confirmed.wait_for(1, timeout=10)  # the StartTransaction
            meter = WriteMeter(txq)
            syncs = ctx.store.syncs
            samples = HOUR_S // SAMPLE_S
            for i in range(samples):
                await clock.advance(SAMPLE_S)
                # As the bridge does: the register goes into the store with the values.
                at = clock.now()
                txq.meter_values(1, meter_value(i, at), local, energy_wh=1000 + i * 3, at=at)
                session.wake_delivery()
                await confirmed.wait_for(2 + i, timeout=10)
            written = meter.bytes
            syncs = ctx.store.syncs - syncs
        finally:
            await session.stop()
            ctx.store.close()
        heartbeats = sum(1 for f in cs.frames if f.is_call and f.action == "Heartbeat")
        return {
            "disk_bytes_per_hour": written,
            "samples": samples,
            "bytes_per_sample": round(written / samples),
            "heartbeats": heartbeats,
            "durable_syncs_per_hour": syncs,
            "disk_method": "wchar growth inside queue calls (SQLite write(2) bytes, WAL)",
        }


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        result = await replay(Path(a))
        result.update(await disk_hour(Path(b)))
    return result


if __name__ == "__main__":
    outcome = asyncio.run(main())
    for key, value in outcome.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(outcome))
