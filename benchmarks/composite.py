"""GetCompositeSchedule's cost: 10 installed profiles of 48 periods, a 24 h window.

The profiles mix every purpose and kind, so each measurement walks all of them: a Daily
ChargePointMaxProfile, TxDefaultProfiles on connector 0 (Absolute, Daily, Weekly) and on
connector 1, and Relative TxProfiles of the running transaction; each schedule has 48
half-hour periods. One measurement is one `composite(...)` call (what the
GetCompositeSchedule handler does besides the wire), timed with perf_counter; the figure is
the median of `--runs` (after a few warm-up calls).

Measurements (one function each; the last line of the output is one JSON object with all):
- `median_ms`: connector 1 in A (target <= 2 ms, issue 11); `p99_ms`, `max_ms` beside it;
- `connector0_median_ms`: connector 0 (both connectors summed, then capped), in W;
- `limit_at_median_ms`: the runner's question "the limit now, and when it next changes";
- `min_rate_median_ms`: `median_ms` again with a minChargingRate on every Tx/TxDefault
  profile (the composite then also finds the highest one prevailing in the window);
- `boundary_to_pwm_ms`: a period boundary to the PWM duty on the real-time bench
  (benchmarks/boundary_to_pwm.py; target <= 100 ms). `--no-pwm` leaves it out.

    python benchmarks/composite.py [--runs 500] [--no-pwm]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evsed.controller.smartcharging.composite import (
    ElectricalContext,
    TxContext,
    composite,
    limit_at,
)
from evsed.controller.smartcharging.model import (
    ChargingProfile,
    Kind,
    Period,
    Purpose,
    RateUnit,
    Recurrency,
    Schedule,
)
from evsed.controller.smartcharging.profileset import ProfileSet

NOW = datetime(2026, 12, 3, 17, 23, 11, tzinfo=UTC)
PERIODS = 48
ELECTRICAL = ElectricalContext(phases=3, voltage_v=230.0, max_current_a=32.0)
TRANSACTION = TxContext(transaction_id=1, started=NOW - timedelta(hours=2))
CONNECTORS = (1, 2)


def _profile(
    id: int,
    purpose: Purpose,
    stack: int,
    connector_id: int,
    kind: Kind,
    *,
    recurrency: Recurrency | None = None,
    start: datetime | None = None,
    unit: RateUnit = RateUnit.A,
    min_rate: bool = False,
) -> ChargingProfile:
    scale = 690.0 if unit is RateUnit.W else 1.0
    rate = (6.0 + id % 3) * scale if min_rate and purpose is not Purpose.CHARGE_POINT_MAX else None
    periods = tuple(
        Period(i * 1800, (6 + (i * 7 + id) % 26) * scale, 3 if i % 5 else 1) for i in range(PERIODS)
    )
    return ChargingProfile(
        id=id,
        connector_id=connector_id,
        stack_level=stack,
        purpose=purpose,
        kind=kind,
        recurrency=recurrency,
        valid_from=NOW - timedelta(days=3),
        valid_to=NOW + timedelta(days=30),
        transaction_id=1 if purpose is Purpose.TX else None,
        schedule=Schedule(unit, periods, 20 * 3600, start, rate),
    )


def installed(min_rate: bool = False) -> ProfileSet:
    day = Recurrency.DAILY
    week = Recurrency.WEEKLY
    anchor = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    ps = ProfileSet(max_stack_level=8, max_periods=PERIODS, max_installed=10)
    for p in (
        _profile(1, Purpose.CHARGE_POINT_MAX, 0, 0, Kind.RECURRING, recurrency=day, start=anchor),
        _profile(2, Purpose.CHARGE_POINT_MAX, 1, 0, Kind.ABSOLUTE, start=NOW, unit=RateUnit.W),
        _profile(3, Purpose.TX_DEFAULT, 0, 0, Kind.ABSOLUTE, start=NOW - timedelta(hours=5)),
        _profile(4, Purpose.TX_DEFAULT, 1, 0, Kind.RECURRING, recurrency=day, start=anchor),
        _profile(5, Purpose.TX_DEFAULT, 2, 0, Kind.RECURRING, recurrency=week, start=anchor),
        _profile(6, Purpose.TX_DEFAULT, 3, 0, Kind.RELATIVE, unit=RateUnit.W),
        _profile(7, Purpose.TX_DEFAULT, 2, 1, Kind.RECURRING, recurrency=day, start=anchor),
        _profile(8, Purpose.TX_DEFAULT, 4, 1, Kind.ABSOLUTE, start=NOW + timedelta(hours=3)),
        _profile(9, Purpose.TX, 0, 1, Kind.RELATIVE),
        _profile(10, Purpose.TX, 1, 1, Kind.RELATIVE, unit=RateUnit.W),
    ):
        if min_rate:
            p = _profile(
                p.id,
                p.purpose,
                p.stack_level,
                p.connector_id,
                p.kind,
                recurrency=p.recurrency,
                start=p.schedule.start,
                unit=p.schedule.unit,
                min_rate=True,
            )
        ps.install(p)
    return ps


def _timed(call: Callable[[], object], runs: int) -> list[float]:
    for _ in range(5):
        call()
    samples = []
    gc.collect()
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return sorted(samples)


def composite_ms(runs: int) -> dict[str, Any]:
    ps = installed()

    def call() -> object:
        return composite(
            ps,
            1,
            NOW,
            86_400,
            RateUnit.A,
            transaction=TRANSACTION,
            electrical=ELECTRICAL,
            connector_ids=CONNECTORS,
        )

    periods = len(call().periods)  # type: ignore[attr-defined]
    samples = _timed(call, runs)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
        "max_ms": round(samples[-1], 3),
        "runs": runs,
        "profiles": len(ps),
        "composite_periods": periods,
    }


def min_rate_ms(runs: int) -> dict[str, Any]:
    ps = installed(min_rate=True)

    def call() -> object:
        return composite(
            ps,
            1,
            NOW,
            86_400,
            RateUnit.A,
            transaction=TRANSACTION,
            electrical=ELECTRICAL,
            connector_ids=CONNECTORS,
        )

    rate = call().min_rate  # type: ignore[attr-defined]
    assert rate is not None
    return {"min_rate_median_ms": round(statistics.median(_timed(call, runs)), 3)}


def connector0_ms(runs: int) -> dict[str, Any]:
    ps = installed()

    def call() -> object:
        return composite(
            ps,
            0,
            NOW,
            86_400,
            RateUnit.W,
            transaction=None,
            electrical=ELECTRICAL,
            connector_ids=CONNECTORS,
            transactions={1: TRANSACTION},
        )

    return {"connector0_median_ms": round(statistics.median(_timed(call, runs)), 3)}


def limit_at_ms(runs: int) -> dict[str, Any]:
    ps = installed()

    def call() -> object:
        return limit_at(ps, 1, NOW, transaction=TRANSACTION, electrical=ELECTRICAL)

    return {"limit_at_median_ms": round(statistics.median(_timed(call, runs)), 3)}


def boundary_to_pwm(n: int) -> dict[str, Any]:
    # The sibling script is not a package module: load it by its path.
    path = Path(__file__).with_name("boundary_to_pwm.py")
    spec = importlib.util.spec_from_file_location("boundary_to_pwm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.boundary_to_pwm_ms(n)
    return {
        "boundary_to_pwm_ms": result["boundary_to_pwm_ms"],
        "boundary_to_pwm_p99_ms": result["p99_ms"],
        "boundary_to_pwm_max_ms": result["max_ms"],
        "boundary_to_pwm_n": result["n"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--pwm-n", type=int, default=50)
    parser.add_argument("--no-pwm", action="store_true", help="skip boundary_to_pwm_ms")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    result.update(composite_ms(args.runs))
    result.update(connector0_ms(args.runs))
    result.update(limit_at_ms(args.runs))
    result.update(min_rate_ms(args.runs))
    if not args.no_pwm:
        result.update(boundary_to_pwm(args.pwm_n))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
