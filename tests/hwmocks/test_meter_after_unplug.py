"""The bench meter's register stops at the unplug: the moments after it are not counted at
the power drawn before it (the demo's energy kept creeping up after the unplug)."""

from __future__ import annotations

from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock


async def test_energy_stops_at_the_unplug() -> None:
    clock = FakeClock()
    config = bench_config(connectors=[{"meter": {"port": 0}}], authorization={"free_vend": True})
    rig = Rig(Stack(config, clock=clock, control=False), clock)
    await rig.stack.start()
    try:
        await rig.bench.plug(1)
        await rig.until(lambda: rig.sim.meter.power_total_w > 1000, within_s=20)
        await rig.run(30)
        meter = rig.sim.meter
        await meter.update()
        at_unplug, power_w = meter.energy_wh, meter.power_total_w
        assert power_w > 1000
        await rig.bench.unplug(1)
        await rig.run(1.0)
        await meter.update()
        # Without the fix: one more second at the old power, ~3 Wh at 11 kW.
        assert abs(meter.energy_wh - at_unplug) < 0.01, (meter.energy_wh, at_unplug)
        await rig.run(60)
        await meter.update()
        assert abs(meter.energy_wh - at_unplug) < 0.01, "nothing counted once the EV is gone"
    finally:
        await rig.stack.stop()
