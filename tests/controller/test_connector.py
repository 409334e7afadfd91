"""The connector on the simulated bench: transitions, safety rules, faults and their clearing.

Driven by a FakeClock: the sampler, limiter and EV follow simulated time, so a minute of
charging takes milliseconds and every timing assertion is exact.
"""

from __future__ import annotations

import pytest

from controller.clock import FakeClock
from controller.run import Stack
from tests.controller.bench_rig import Rig, bench_config


@pytest.fixture
async def rig():
    clock = FakeClock()
    stack = Stack(bench_config(authorization={"free_vend": True}), clock=clock, control=False)
    await stack.start()
    r = Rig(stack, clock)
    r.connector.add_listener(lambda kind, fields: r.notes.append((kind, fields)))
    yield r
    await stack.stop()


async def test_free_vend_charges_a_plugged_ev(rig: Rig) -> None:
    assert rig.status == "Available"
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=3)
    assert rig.sim.pins.relay_energized
    assert rig.sim.pins.pilot_duty == pytest.approx(0.533)
    await rig.meter_sample()
