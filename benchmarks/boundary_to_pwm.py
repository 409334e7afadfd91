"""Period boundary -> PWM duty: how long from the moment a charging schedule's period begins
until the pilot's duty cycle on the bench says the new current?

Real time: the bench and the controller run in this process with the world's clock and the
safety core on its own thread, as `evsed run` does. The smart-charging runner (a timer on
the clock, no polling) is fed a schedule whose periods alternate 16 A / 10 A every
`--period-ms`; each sample runs from the boundary's scheduled wall time (`time.time()`
scale) to the connector's "duty" note, written right after the PWM output took the new
duty (in the safety thread). It therefore includes the loop's timer lateness, the
evaluation, the limiter, the command queue and the PWM write.

Target: <= 100 ms (issue 11).

    python benchmarks/boundary_to_pwm.py [--n 50] [--period-ms 300]

`boundary_to_pwm_ms(n, period_ms)` is what benchmarks/composite.py reports; run alone, the
last line is one JSON object {"boundary_to_pwm_ms": median, "p99_ms", "max_ms", "n"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evsed.controller.config import parse
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.run import Stack
from evsed.controller.smartcharging.runner import Evaluation, SmartChargingRunner

LIMITS = (SmartChargingLimit(16.0), SmartChargingLimit(10.0))


class Alternating:
    """Periods of `period_s` from `origin`, alternating between the two LIMITS."""

    def __init__(self, origin: datetime, period_s: float) -> None:
        self.origin = origin
        self.period_s = period_s

    def index(self, now: datetime) -> int:
        return int((now - self.origin).total_seconds() // self.period_s)

    def __call__(self, cid: int, now: datetime) -> Evaluation:
        k = max(0, self.index(now))
        nxt = self.origin + timedelta(seconds=(k + 1) * self.period_s)
        return Evaluation(LIMITS[k % 2], nxt)

    def boundary(self, k: int) -> float:
        return (self.origin + timedelta(seconds=k * self.period_s)).timestamp()


async def measure(n: int, period_ms: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = parse(
            {
                "bench": {"control_port": 0, "ev_delay_s": 0.1},
                "connectors": [{"meter": {"port": 0}}],
                "authorization": {"free_vend": True},
                "state_dir": str(Path(tmp) / "state"),
                "logging": {"level": "WARNING"},
            }
        )
        async with Stack(config) as stack:
            assert stack.charger is not None
            await stack.bench.plug(1)
            connector = stack.charger.connector(1)
            for _ in range(300):
                if str(connector.status.status) == "Charging":
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the bench EV never started charging")
            samples: list[float] = []
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            lock = threading.Lock()
            schedule = Alternating(datetime.now(UTC) + timedelta(seconds=0.5), period_ms / 1000)

            def on_note(kind: str, fields: dict[str, object]) -> None:
                if kind != "duty":
                    return
                at = time.time()
                k = schedule.index(datetime.fromtimestamp(at, UTC))
                with lock:
                    samples.append((at - schedule.boundary(k)) * 1000.0)
                    if len(samples) >= n:
                        loop.call_soon_threadsafe(done.set)

            connector.add_listener(on_note)
            runner = SmartChargingRunner(
                stack.charger, stack.clock, schedule, connector_ids=stack.charger.connector_ids
            )
            runner.start()
            try:
                await asyncio.wait_for(done.wait(), timeout=n * period_ms / 1000 * 3 + 10)
            finally:
                await runner.stop()
            # The first change is the runner's start (before the first boundary): not a sample.
            return samples[1:n]


def boundary_to_pwm_ms(n: int = 50, period_ms: float = 300.0) -> dict[str, Any]:
    samples = sorted(asyncio.run(measure(n + 1, period_ms)))
    return {
        "boundary_to_pwm_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
        "max_ms": round(samples[-1], 3),
        "n": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--period-ms", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = boundary_to_pwm_ms(args.n, args.period_ms)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
