"""C -> B opens the contactor within 100 ms during the soft stop too.

When the PWM is withdrawn (a limit below 6 A, a stop) the contactor stays closed for up
to `power_off_under_load_s` so that the EV can stop drawing and open S2 first (IEC 61851-1
C2 -> C1). The sampler planned its rate from the duty alone: at 100 % (no PWM) it took the
idle rate, one tick every 200 ms, with the relay still closed under load, so the EV's
C -> B at the end of that window was seen up to 200 ms late, twice the 100 ms allowed. The
rate now follows the relay: closed, the pilot is read at the charging rate, PWM or not.

On the simulated bench with a FakeClock; the EV opens S2 right after a tick of the sampler
(the worst moment for any rate).
"""

from __future__ import annotations

import pytest

from evsed.controller.connector.status import StopReason
from evsed.controller.limiter import SmartChargingLimit
from tests.support.bench_rig import MakeRig, Rig

REACTION_S = 0.100


@pytest.fixture
async def free(make_rig: MakeRig) -> Rig:
    return await make_rig(authorization={"free_vend": True})


async def charging(rig: Rig) -> None:
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=3)
    await rig.run(3)  # drawing, settled


def pause_right_after_a_tick(rig: Rig) -> dict[str, float]:
    """The EV opens S2 just after the sampler has looked: the worst moment, on any rate."""
    assert rig.stack.charger is not None
    sampler = rig.stack.charger.core._units[0].sampler
    tick = sampler.tick
    paused: dict[str, float] = {}

    def tick_then_pause() -> float:
        interval = tick()
        if not paused:
            rig.sim.ev.pause()
            paused["at"] = rig.clock.monotonic()
        return interval

    sampler.tick = tick_then_pause  # type: ignore[method-assign]
    return paused


@pytest.mark.parametrize("how", ["limit 0 A", "remote stop"])
async def test_the_contactor_opens_within_100_ms_of_c_to_b_in_the_soft_stop(
    free: Rig, how: str
) -> None:
    await charging(free)
    assert free.stack.charger is not None
    if how == "limit 0 A":
        free.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(0.0))
    else:
        assert free.connector.request_stop(StopReason.REMOTE)
    assert free.sim.pins.pilot_duty == 1.0  # PWM withdrawn at once
    await free.run(1)  # closed through the soft stop while the EV ramps down
    assert free.sim.pins.relay_energized
    paused = pause_right_after_a_tick(free)
    await free.until(lambda: bool(paused), within_s=1)
    assert free.sim.ev.state == "B"
    await free.until(lambda: not free.sim.pins.relay_energized, within_s=1)
    took = free.clock.monotonic() - paused["at"]
    assert took <= REACTION_S, f"contactor opened {took * 1000:.0f} ms after C -> B"


async def test_the_contactor_opens_within_100_ms_of_c_to_b_while_charging(free: Rig) -> None:
    await charging(free)
    paused = pause_right_after_a_tick(free)
    await free.until(lambda: bool(paused), within_s=1)
    await free.until(lambda: not free.sim.pins.relay_energized, within_s=1)
    assert free.clock.monotonic() - paused["at"] <= REACTION_S
