"""Contactor reaction time: the EV opens S2 (C -> B), how long until the relay drops?

Bench and controller run in this process in real time with the real sampler (no FakeClock).
Each measurement starts just before the bench changes the EV (perf_counter) and ends in
the relay pin's on_change callback (perf_counter), i.e. at the GPIO, not at a log line.
Between measurements the EV closes S2 again and the benchmark waits until the contactor
is closed and has settled (`--settle-ms`, plus a random 0-10 ms so the change lands at
every phase of the sampler's tick).

The EV is driven from a thread of its own (as a real EV is not on our event loop), so
that a blocked loop cannot hold the change back either: what is measured is only the
safety core's reaction.

Scenarios:
- idle: nothing else runs (the meter poller, the bench meter and the limits tick are on,
  as in production).
- loaded: plus a synthetic OCPP load of `--rate` messages/s spread evenly on the event loop:
  each one JSON-encodes, decodes and schema-validates a MeterValues.req with the `ocpp`
  library's validator.
- stalled_loop: the event loop is blocked 2 s at a time (a callback calling time.sleep),
  with 0.1 s between blocks, while the EV changes state.
- big_frames: the OCPP stack runs against an embedded Central System
  (`evsed.hwmocks.central_system`) that sends Full SendLocalList.req frames of 10,000
  entries (about 1.4 MiB each, applied and stored each time) back to back while the EV
  changes state.

Targets: p99 <= 25 ms, max <= 60 ms (IEC 61851-1 allows 100 ms).

    python benchmarks/reaction.py [--n 1000] [--scenarios idle,loaded,stalled_loop,big_frames]

The last line of the output is one JSON object: {"idle": {"p50_ms", "p99_ms", "max_ms", "n",
...}, "loaded": {...}, "stalled_loop": {...}, "big_frames": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evsed.controller.config import Config, parse
from evsed.controller.demo import ReactionProbe
from evsed.controller.run import Stack

STEP_TIMEOUT_S = 2.0


SCENARIOS = ("idle", "loaded", "stalled_loop", "big_frames")
CP_ID = "CP-BENCH"
LIST_ENTRIES = 10_000
STALL_S = 2.0
STALL_GAP_S = 0.1


def bench_config(state_dir: Path, central_url: str | None = None) -> Config:
    data: dict[str, Any] = {
        "bench": {"control_port": 0, "ev_delay_s": 0.1},
        "connectors": [{"meter": {"port": 0}}],
        "authorization": {"free_vend": True},
        "state_dir": str(state_dir),
        "logging": {"level": "WARNING"},
    }
    if central_url is not None:
        data["central_system"] = {
            "url": central_url,
            "charge_point_id": CP_ID,
            "max_frame_bytes": 4 * 1024 * 1024,
        }
    return parse(data)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------- synthetic load


def meter_values_payload(i: int) -> dict[str, Any]:
    """A MeterValues.req as a busy charge point sends it (three phases, five measurands)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sampled = [
        {"value": f"{1234.5 + i:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "22080", "measurand": "Power.Active.Import", "unit": "W"},
    ]
    for phase in ("L1", "L2", "L3"):
        sampled.append(
            {"value": "32.0", "measurand": "Current.Import", "phase": phase, "unit": "A"}
        )
        sampled.append(
            {"value": "230.0", "measurand": "Voltage", "phase": f"{phase}-N", "unit": "V"}
        )
    return {
        "connectorId": 1,
        "transactionId": 1,
        "meterValue": [{"timestamp": stamp, "sampledValue": sampled}],
    }


async def ocpp_load(rate_hz: float, counter: list[int], inline: bool = False) -> None:
    """`rate_hz` validated MeterValues per second, spread evenly on the event loop.

    The library validates in its thread pool by default (ASYNC_VALIDATION); `inline`
    validates on the event loop itself, the worst case for the sampler."""
    import ocpp.messages
    from ocpp.messages import Call, validate_payload

    ocpp.messages.ASYNC_VALIDATION = not inline

    period = 1.0 / rate_hz
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    while True:
        i += 1
        await asyncio.sleep(max(0.0, start + i * period - loop.time()))
        frame = json.dumps([2, str(i), "MeterValues", meter_values_payload(i)])
        _, unique_id, action, payload = json.loads(frame)
        await validate_payload(Call(unique_id, action, payload), "1.6")
        counter[0] += 1


# ---------------------------------------------------------------------- more load


def stall_loop(loop: asyncio.AbstractEventLoop, stalls: list[int]) -> _Cancel:
    """Block the loop for STALL_S, again and again, STALL_GAP_S apart (a bad callback)."""

    def block() -> None:
        time.sleep(STALL_S)
        stalls[0] += 1
        handles[0] = loop.call_later(STALL_GAP_S, block)

    handles = [loop.call_later(STALL_GAP_S, block)]
    return _Cancel(handles)


class _Cancel:
    def __init__(self, handles: list[asyncio.TimerHandle]) -> None:
        self._handles = handles

    def cancel(self) -> None:
        self._handles[0].cancel()


def local_list_frame(unique_id: str, version: int) -> str:
    """A Full SendLocalList of LIST_ENTRIES entries (about 1.4 MiB)."""
    listed = [
        {
            "idTag": f"TAG-{i:016d}",
            "idTagInfo": {
                "status": "Accepted",
                "expiryDate": "2027-01-01T00:00:00Z",
                "parentIdTag": "PARENT-GROUP-000001",
            },
        }
        for i in range(LIST_ENTRIES)
    ]
    payload = {"listVersion": version, "updateType": "Full", "localAuthorizationList": listed}
    return json.dumps([2, unique_id, "SendLocalList", payload])


async def big_frames(cs: Any, counter: list[int]) -> None:
    """Full SendLocalList frames of 10,000 entries from the CS, each sent once the last was
    answered (Accepted: the list is really applied and stored each time). Encoded once; each
    frame only gets its own uniqueId, so the benchmark's own work stays small.

    Sent on the CS's websocket past its recorder: the embedded CS parses every frame it
    records (json.loads of 1.4 MiB, holding this process's GIL for as long as the charger's
    own parse) and keeps it, so that every full collection of the collector got slower as
    the run went on; both were counted against the safety core. A real Central System is
    another machine. The charger's answers are recorded as before."""
    template = await asyncio.to_thread(local_list_frame, "list-000000", 1)
    while True:
        unique_id = f"list-{counter[0]:06d}"
        mark = cs.mark()
        await cs._session(CP_ID).ws.send(template.replace("list-000000", unique_id, 1))
        reply = await cs.wait_for_reply(unique_id, timeout=30.0, since=mark)
        if reply.payload != {"status": "Accepted"}:
            raise RuntimeError(f"SendLocalList answered {reply.raw[:200]}")
        counter[0] += 1


# ---------------------------------------------------------------------- measurement


class RelayWatch:
    """Relay edges for the EV driver thread (the probe calls it in the relay's thread)."""

    def __init__(self, probe: ReactionProbe, energized: Callable[[], bool]) -> None:
        self._energized = energized
        self._changed = threading.Condition()
        probe.listeners.append(self._on_relay)

    def _on_relay(self, _energized: bool) -> None:
        with self._changed:
            self._changed.notify_all()

    def until(self, energized: bool, timeout: float = STEP_TIMEOUT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._energized() == energized, timeout)


def drive_ev(
    sim: Any,
    probe: ReactionProbe,
    watch: RelayWatch,
    n: int,
    settle_s: float,
    stop: threading.Event,
    progress: Callable[[str], None],
) -> int:
    """The EV: pause (C -> B) and resume, n times; returns how many drops timed out."""
    timeouts = 0
    while len(probe.samples_ms) < n and not stop.is_set():
        time.sleep(settle_s + random.uniform(0.0, 0.010))
        probe.arm()
        sim.ev.configure(paused=True)
        if not watch.until(False):
            timeouts += 1
        sim.ev.configure(paused=False)
        if not watch.until(True, timeout=10.0):
            raise TimeoutError("the contactor did not close again")
        done = len(probe.samples_ms)
        if done % 100 == 0:
            s = sorted(probe.samples_ms)
            progress(f"  {done}/{n}: p50 {percentile(s, 50):.1f} ms, max {s[-1]:.1f} ms")
    return timeouts


async def measure(
    n: int,
    *,
    scenario: str,
    settle_s: float,
    load_rate: float,
    inline: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from evsed.hwmocks.central_system import CentralSystem

    cs = None
    if scenario == "big_frames":
        cs = CentralSystem(
            max_size=8 * 1024 * 1024, response_timeout=30.0, tags={"FREEVEND": "Accepted"}
        )
        await cs.start()
    counter = [0]
    try:
        with tempfile.TemporaryDirectory(prefix="evsed-bench-") as state_dir:
            config = bench_config(Path(state_dir), cs.url if cs is not None else None)
            async with Stack(config, ocpp=cs is not None) as stack:
                # As `evsed run` does once started: the start-up objects leave the GC's scans.
                gc.collect()
                gc.freeze()
                sim = stack.bench.sim(1)
                energized = lambda: bool(sim.pins.relay_energized)  # noqa: E731
                probe = ReactionProbe(sim.pins.relay, energized)
                watch = RelayWatch(probe, energized)
                load: asyncio.Task[None] | None = None
                stall: Any = None
                if scenario == "loaded":
                    load = asyncio.create_task(ocpp_load(load_rate, counter, inline))
                elif scenario == "big_frames":
                    assert cs is not None
                    await cs.wait_connected(CP_ID, timeout=10.0)
                    load = asyncio.create_task(big_frames(cs, counter))
                started = time.perf_counter()
                stop = threading.Event()
                try:
                    await stack.bench.plug(1)  # with a 32 A cable (PP)
                    if not await asyncio.to_thread(watch.until, True, 30.0):
                        raise TimeoutError("the contactor never closed")
                    if scenario == "stalled_loop":
                        stall = stall_loop(asyncio.get_running_loop(), counter)
                    timeouts = await asyncio.to_thread(
                        drive_ev, sim, probe, watch, n, settle_s, stop, progress
                    )
                finally:
                    stop.set()
                    if stall is not None:
                        stall.cancel()
                    if load is not None:
                        load.cancel()
                        try:
                            await load
                        except (asyncio.CancelledError, Exception):
                            pass
                    probe.close()
                elapsed = time.perf_counter() - started
    finally:
        if cs is not None:
            await cs.stop()
    samples = sorted(probe.samples_ms)
    result: dict[str, Any] = {
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "max_ms": round(samples[-1], 3),
        "n": len(samples),
        "mean_ms": round(sum(samples) / len(samples), 3),
        "over_25_ms": sum(1 for s in samples if s > 25.0),
        "timeouts": timeouts,
        "seconds": round(elapsed, 1),
    }
    if scenario == "loaded":
        result["load_msgs_per_s"] = round(counter[0] / elapsed, 1)
    elif scenario == "stalled_loop":
        result["stalls_2s"] = counter[0]
    elif scenario == "big_frames":
        result["big_frames"] = counter[0]
        result["big_frames_per_s"] = round(counter[0] / elapsed, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="measurements per scenario")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--rate", type=float, default=200.0, help="loaded: OCPP messages per second")
    p.add_argument(
        "--settle-ms", type=float, default=60.0, help="wait after the contactor closed again"
    )
    p.add_argument(
        "--inline-validation",
        action="store_true",
        help="loaded: validate on the event loop (ocpp.messages.ASYNC_VALIDATION = False)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BENCH_LOG", "WARNING"), stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)

    def progress(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {}
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
        progress(f"{name}: {args.n} C -> B changes")
        results[name] = asyncio.run(
            measure(
                args.n,
                scenario=name,
                settle_s=args.settle_ms / 1000.0,
                load_rate=args.rate,
                inline=args.inline_validation,
                progress=progress,
            )
        )
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
