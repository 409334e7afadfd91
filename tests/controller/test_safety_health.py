"""The watchdog's view of the safety core: how long since every connector was last looked after."""

from __future__ import annotations

import math

from evsed.controller.run import Stack
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock


async def test_tick_age_is_infinite_until_the_core_runs_and_after_it_stops() -> None:
    clock = FakeClock()
    stack = Stack(bench_config(), clock=clock, control=False)
    await stack.start()
    try:
        assert stack.charger is not None
        charger = stack.charger
        await clock.advance(0.5)  # the sampler ticks (in real time, too: it records both)
        age = charger.safety_tick_age()
        assert 0.0 <= age < 1.0
    finally:
        await stack.stop()
    assert charger.safety_tick_age() == math.inf


async def test_wait_ticking_answers_once_every_connector_has_ticked() -> None:
    clock = FakeClock()
    stack = Stack(bench_config(), clock=clock, control=False)
    assert stack.charger is None or not stack.charger.core.wait_ticking(0.0)
    await stack.start()
    try:
        assert stack.charger is not None
        core = stack.charger.core
        await clock.advance(0.5)
        assert core.wait_ticking(0.0)
    finally:
        await stack.stop()
    assert not core.wait_ticking(0.0)  # cleared by stop
