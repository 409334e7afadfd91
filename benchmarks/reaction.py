"""Contactor reaction time: the EV opens S2 (C -> B), how long until the relay drops?

Bench and controller run in this process in real time with the real sampler (no FakeClock).
Each measurement starts just before the bench changes the EV (perf_counter) and ends in
the relay pin's on_change callback (perf_counter), i.e. at the GPIO, not at a log line.
Between measurements the EV closes S2 again and the benchmark waits until the contactor
is closed and has settled (`--settle-ms`, plus a random 0-10 ms so the change lands at
every phase of the sampler's tick).

Scenarios:
- idle: nothing else runs (the meter poller, the bench meter and the limits tick are on,
  as in production).
- loaded: plus a synthetic OCPP load of `--rate` messages/s spread evenly on the event loop:
  each one JSON-encodes, decodes and schema-validates a MeterValues.req with the `ocpp`
  library's validator.

Targets: p99 <= 25 ms, max <= 60 ms (IEC 61851-1 allows 100 ms).

    python benchmarks/reaction.py [--n 1000] [--scenarios idle,loaded]

The last line of the output is one JSON object: {"idle": {"p50_ms", "p99_ms", "max_ms", "n"},
"loaded": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evsed.controller.config import Config, parse
from evsed.controller.demo import ReactionProbe
from evsed.controller.run import Stack

STEP_TIMEOUT_S = 2.0


def bench_config(state_dir: Path) -> Config:
    return parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": 0.1},
            "connectors": [{"meter": {"port": 0}}],
            "authorization": {"free_vend": True},
            "state_dir": str(state_dir),
            "logging": {"level": "WARNING"},
        }
    )


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


# ---------------------------------------------------------------------- measurement


class RelayWatch:
    """Awaitable relay edges, fed by the probe's listener (called in the loop thread)."""

    def __init__(self, probe: ReactionProbe) -> None:
        self._want: bool | None = None
        self._event = asyncio.Event()
        probe.listeners.append(self._on_relay)

    def _on_relay(self, energized: bool) -> None:
        if self._want is not None and energized == self._want:
            self._event.set()

    async def until(
        self,
        energized: bool,
        now: Callable[[], bool],
        action: Callable[[], object],
        timeout: float = STEP_TIMEOUT_S,
    ) -> None:
        self._want = energized
        self._event.clear()
        action()
        if now() != energized:
            await asyncio.wait_for(self._event.wait(), timeout)
        self._want = None


async def measure(
    n: int,
    *,
    settle_s: float,
    load_rate: float,
    inline: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="evsed-bench-") as state_dir:
        async with Stack(bench_config(Path(state_dir))) as stack:
            # As `evsed run` does once started: the start-up objects leave the GC's scans.
            gc.collect()
            gc.freeze()
            sim = stack.bench.sim(1)
            energized = lambda: bool(sim.pins.relay_energized)  # noqa: E731
            probe = ReactionProbe(sim.pins.relay, energized)
            watch = RelayWatch(probe)
            counter = [0]
            load = asyncio.create_task(ocpp_load(load_rate, counter, inline)) if load_rate else None
            timeouts = 0
            started = time.perf_counter()
            try:
                await stack.bench.plug(1)  # with a 32 A cable (PP)
                await watch.until(True, energized, lambda: None, timeout=5.0)
                while len(probe.samples_ms) < n:
                    await asyncio.sleep(settle_s + random.uniform(0.0, 0.010))
                    try:
                        await watch.until(
                            False, energized, lambda: (probe.arm(), sim.ev.configure(paused=True))
                        )
                    except TimeoutError:
                        timeouts += 1
                    await watch.until(True, energized, lambda: sim.ev.configure(paused=False))
                    done = len(probe.samples_ms)
                    if done % 100 == 0:
                        s = sorted(probe.samples_ms)
                        progress(
                            f"  {done}/{n}: p50 {percentile(s, 50):.1f} ms, max {s[-1]:.1f} ms"
                        )
            finally:
                if load is not None:
                    load.cancel()
                    try:
                        await load
                    except asyncio.CancelledError:
                        pass
                probe.close()
            elapsed = time.perf_counter() - started
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
    if load_rate:
        result["load_msgs_per_s"] = round(counter[0] / elapsed, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="measurements per scenario")
    p.add_argument("--scenarios", default="idle,loaded", help="comma-separated: idle, loaded")
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
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def progress(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {}
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        if name not in ("idle", "loaded"):
            p.error(f"unknown scenario {name!r}")
        progress(f"{name}: {args.n} C -> B changes")
        results[name] = asyncio.run(
            measure(
                args.n,
                settle_s=args.settle_ms / 1000.0,
                load_rate=args.rate if name == "loaded" else 0.0,
                inline=args.inline_validation,
                progress=progress,
            )
        )
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
