"""Load balancing and solar mode through the bench: a grid meter sees house + EV - PV."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock

MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    stacks: list[Stack] = []

    async def make(**grid: Any) -> Rig:
        clock = FakeClock()
        config = bench_config(
            authorization={"free_vend": True},
            bench={"control_port": 0, "ev_delay_s": 0.5},
            grid={
                "enabled": True,
                "main_fuse_a": 25.0,
                "margin_a": 2.0,
                "meter": {"port": 0, "poll_interval_s": 1.0},
                **grid,
            },
        )
        stack = Stack(config, clock=clock, control=False)
        await stack.start()
        stacks.append(stack)
        rig = Rig(stack, clock)
        await settle(rig, 3.0)  # the grid meter has reported before the first EV arrives
        return rig

    yield make
    for stack in stacks:
        await stack.stop()


async def grid_step(rig: Rig) -> None:
    """One grid-meter poll interval of simulated time, and the sample it brings."""
    assert rig.stack.charger is not None
    got: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_grid(_: object) -> None:
        if not got.done():
            got.set_result(None)

    rig.stack.charger.events.grid.append(on_grid)
    try:
        await rig.clock.advance(1.0)
        await asyncio.wait_for(got, 3)
    finally:
        rig.stack.charger.events.grid.remove(on_grid)


async def settle(rig: Rig, seconds: float) -> None:
    for _ in range(int(seconds)):
        await grid_step(rig)


async def offered_becomes(rig: Rig, pred: Callable[[float], bool], within_s: float) -> float:
    """Simulated seconds (whole poll intervals) until the connector's offer satisfies `pred`."""
    start = rig.clock.monotonic()
    while not pred(rig.connector.offered_a):
        if rig.clock.monotonic() - start > within_s:
            raise AssertionError(f"offer {rig.connector.offered_a} A after {within_s} s")
        await grid_step(rig)
    return rig.clock.monotonic() - start


async def test_budget_follows_the_house_load_within_2_s(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.bench.set_house(house_a=(5.0, 5.0, 5.0))
    await settle(rig, 2.0)
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=3)
    # 25 A fuse - 2 A margin - 5 A house = 18 A for the EV.
    await offered_becomes(rig, lambda a: a == pytest.approx(18.0), within_s=10)
    await settle(rig, 4.0)
    assert max(rig.sim.ev.phase_currents_a()) <= 18.0 + 0.01
    rig.bench.set_house(house_a=(12.0, 5.0, 5.0))  # the oven goes on, on L1
    took = await offered_becomes(rig, lambda a: a <= 11.0 + 0.01, within_s=3)
    assert took <= 2.0
    assert rig.status == "Charging"


async def test_house_takes_everything_suspends_and_keeps_the_session(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.bench.set_house(house_a=(5.0, 5.0, 5.0))
    await settle(rig, 2.0)
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=3)
    rig.bench.set_house(house_a=(20.0, 20.0, 20.0))
    await offered_becomes(rig, lambda a: a == 0.0, within_s=3)
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=7)
    assert rig.connector.transaction is not None


async def test_solar_charges_only_from_surplus(make_rig: MakeRig) -> None:
    rig = await make_rig(solar=True)
    rig.bench.set_house(house_a=(2.0, 2.0, 2.0), pv_a=(4.0, 4.0, 4.0))  # 2 A/phase export
    await rig.bench.plug(1)
    await settle(rig, 80.0)  # well past the start delay
    assert rig.connector.offered_a == 0.0  # 6 A surplus per phase is the minimum
    assert not rig.sim.pins.relay_energized
    rig.bench.set_house(pv_a=(12.0, 12.0, 12.0))  # 10 A/phase export
    took = await offered_becomes(rig, lambda a: a >= 6.0, within_s=120)
    assert took >= 59.0  # the start delay
    await rig.until(lambda: rig.status == "Charging", within_s=5)
