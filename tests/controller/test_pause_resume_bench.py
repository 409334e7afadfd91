"""Limit 0 pauses, a Central System's higher limit resumes within 1 s: on the bench, with an
injected clock. The anti-chatter hold stays for load balancing (and solar) only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from evsed.controller.limiter import Reason, SmartChargingLimit
from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock

MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    stacks: list[Stack] = []

    async def make(**sections: Any) -> Rig:
        clock = FakeClock()
        config = bench_config(authorization={"free_vend": True}, **sections)
        stack = Stack(config, clock=clock, control=False)
        await stack.start()
        stacks.append(stack)
        return Rig(stack, clock)

    yield make
    for stack in stacks:
        await stack.stop()


async def grid_seconds(rig: Rig, seconds: int) -> None:
    """Simulated seconds, each with the grid sample its poll brings (real socket I/O)."""
    assert rig.stack.charger is not None
    for _ in range(seconds):
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_grid(_: object, got: asyncio.Future[None] = got) -> None:
            if not got.done():
                got.set_result(None)

        rig.stack.charger.events.grid.append(on_grid)
        try:
            await rig.clock.advance(1.0)
            await asyncio.wait_for(got, 3)
        finally:
            rig.stack.charger.events.grid.remove(on_grid)


def set_limit(rig: Rig, amps: float | None) -> None:
    assert rig.stack.charger is not None
    rig.stack.charger.set_smart_charging_limit(
        1, None if amps is None else SmartChargingLimit(amps)
    )


async def charging(rig: Rig) -> None:
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    await rig.until(lambda: rig.sim.ev.phase_currents_a()[0] > 15.0, within_s=10)


async def paused(rig: Rig) -> None:
    tx = rig.connector.transaction
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=2)
    assert rig.sim.pins.pilot_duty == 1.0  # no PWM: steady +12 V high level
    await rig.until(lambda: not rig.sim.pins.contactor_closed, within_s=10)
    assert rig.sim.ev.phase_currents_a() == (0.0, 0.0, 0.0)
    assert rig.connector.transaction == tx and tx is not None  # kept


@pytest.mark.parametrize("below", [0.0, 5.9])
async def test_limit_below_six_amps_pauses_and_keeps_the_transaction(
    make_rig: MakeRig, below: float
) -> None:
    rig = await make_rig()
    await charging(rig)
    set_limit(rig, below)
    await paused(rig)
    assert rig.stack.charger is not None
    allowance = rig.stack.charger.allowance(1)
    assert allowance.suspended and allowance.reason is Reason.SMART_CHARGING
    await rig.run(120.0)  # a long pause ends nothing
    assert rig.status == "SuspendedEVSE" and rig.connector.transaction is not None


@pytest.mark.parametrize("grid", [False, True], ids=["alone", "with-grid-meter"])
@pytest.mark.parametrize("how", ["raised", "cleared"])
async def test_a_higher_limit_resumes_within_one_second(
    make_rig: MakeRig, grid: bool, how: str
) -> None:
    sections: dict[str, Any] = {}
    if grid:
        sections["grid"] = {
            "enabled": True,
            "main_fuse_a": 63.0,
            "meter": {"port": 0, "poll_interval_s": 1.0},
        }
    rig = await make_rig(**sections)
    if grid:
        await grid_seconds(rig, 3)  # the grid meter has reported before the EV arrives
    await charging(rig)
    set_limit(rig, 0.0)
    await paused(rig)
    if grid:
        await grid_seconds(rig, 5)  # the balancer shares anew while the EV is paused
    set_limit(rig, 16.0 if how == "raised" else None)
    took = await rig.until(lambda: rig.connector.offered_a >= 6.0, within_s=1.0)
    assert took <= 1.0
    assert rig.sim.pins.pilot_duty < 1.0  # PWM back on
    await rig.until(lambda: rig.status == "Charging", within_s=5)


async def test_the_budgets_hold_still_applies(make_rig: MakeRig) -> None:
    rig = await make_rig(
        grid={"enabled": True, "main_fuse_a": 25.0, "meter": {"port": 0, "poll_interval_s": 1.0}}
    )
    rig.bench.set_house(house_a=(5.0, 5.0, 5.0))
    await grid_seconds(rig, 3)
    await charging(rig)
    rig.bench.set_house(house_a=(22.0, 22.0, 22.0))
    await grid_seconds(rig, 2)
    assert rig.connector.offered_a == 0.0
    rig.bench.set_house(house_a=(5.0, 5.0, 5.0))
    await grid_seconds(rig, 10)
    assert rig.connector.offered_a == 0.0  # the household load may come back: wait
    waited = 10
    while rig.connector.offered_a < 6.0:
        await grid_seconds(rig, 1)
        waited += 1
        assert waited <= 40
    assert waited >= 28
