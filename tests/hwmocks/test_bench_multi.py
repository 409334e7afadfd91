"""Two connectors on one simulated bench: own pins, EVs and meters, one ADC, one grid meter.

Driven by a FakeClock like tests/controller/test_connector.py; what moves in real time (a
meter's socket or pty) is awaited on the connector's own notes, never slept for.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.config import Config, parse
from evsed.controller.connector.machine import Connector
from evsed.controller.run import Stack
from tests.support.clock import FakeClock

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "sim-two-connectors.toml"
TICK_S = 0.01


def two_connectors(state_dir: Path, *, grid: bool, **per_connector: dict[str, Any]) -> Config:
    """The shipped two-connector example, on ephemeral ports, free vend; `c1=`/`c2=` merge
    extra keys into connector 1/2 (one level deep)."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["state_dir"] = str(state_dir)
    data["authorization"] = {"free_vend": True}
    data["bench"].update(control_port=0, ev_delay_s=0.5, **per_connector.get("bench", {}))
    data["grid"]["enabled"] = grid
    data["grid"]["meter"]["port"] = 0
    for index, connector in enumerate(data["connectors"]):
        connector["meter"]["port"] = 0
        for key, value in per_connector.get(f"c{index + 1}", {}).items():
            if isinstance(value, dict):
                connector[key] = {**connector.get(key, {}), **value}
            else:
                connector[key] = value
    return parse(data)


class Two:
    def __init__(self, stack: Stack, clock: FakeClock) -> None:
        self.stack, self.clock = stack, clock

    @property
    def bench(self) -> Any:
        return self.stack.bench

    def connector(self, cid: int) -> Connector:
        assert self.stack.charger is not None
        return self.stack.charger.connector(cid)

    def status(self, cid: int) -> str:
        return str(self.connector(cid).status.status)

    def pins(self, cid: int) -> Any:
        return self.bench.sim(cid).pins

    async def until(self, pred: Callable[[], bool], within_s: float = 5.0) -> None:
        start = self.clock.monotonic()
        while not pred():
            if self.clock.monotonic() - start > within_s:
                raise AssertionError(f"not within {within_s} s of simulated time")
            await self.clock.advance(TICK_S)

    async def meter_note(self, cid: int, timeout_s: float = 15.0) -> dict[str, object]:
        """Advance a poll interval at a time until connector `cid` reports a meter sample."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, object]] = loop.create_future()

        def listener(kind: str, fields: dict[str, object]) -> None:
            if kind == "meter" and not fut.done():
                fut.set_result(fields)

        self.connector(cid).add_listener(listener)
        deadline = loop.time() + timeout_s
        while not fut.done():
            assert loop.time() < deadline, f"no meter sample from connector {cid}"
            await self.clock.advance(1.0)
            await asyncio.wait([fut], timeout=0.05)
        return fut.result()

    async def grid_step(self) -> None:
        """One grid-meter poll interval of simulated time, and the sample it brings."""
        assert self.stack.charger is not None
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_grid(_: object) -> None:
            if not got.done():
                got.set_result(None)

        self.stack.charger.events.grid.append(on_grid)
        try:
            await self.clock.advance(1.0)
            await asyncio.wait_for(got, 3)
        finally:
            self.stack.charger.events.grid.remove(on_grid)

    async def offers_become(self, want: tuple[float, float], within_s: float = 15.0) -> None:
        start = self.clock.monotonic()
        while self.offers() != pytest.approx(want, abs=0.01):
            if self.clock.monotonic() - start > within_s:
                raise AssertionError(f"offers {self.offers()} after {within_s} s, want {want}")
            await self.grid_step()

    def offers(self) -> tuple[float, float]:
        return (self.connector(1).offered_a, self.connector(2).offered_a)


MakeTwo = Callable[..., Awaitable[Two]]


@pytest.fixture
async def make_two(tmp_path: Path) -> AsyncIterator[MakeTwo]:
    stacks: list[Stack] = []

    async def make(*, grid: bool = False, **per_connector: dict[str, Any]) -> Two:
        clock = FakeClock()
        config = two_connectors(tmp_path, grid=grid, **per_connector)
        stack = Stack(config, clock=clock, control=False)
        await stack.start()
        stacks.append(stack)
        return Two(stack, clock)

    yield make
    for stack in stacks:
        await stack.stop()


async def both_charging(two: Two, *, grid: bool = False) -> None:
    await two.bench.plug(1)
    await two.bench.plug(2)
    if not grid:
        await two.until(lambda: two.status(1) == two.status(2) == "Charging", within_s=5)
        return
    # With a grid meter, time must pass in poll intervals that bring their samples: a
    # balancer without a fresh grid sample suspends everyone (fail safe). The second to
    # start is suspended for a moment at its start and then waits out the limiter's resume
    # delay, hence the long wait.
    for _ in range(60):
        if two.status(1) == two.status(2) == "Charging":
            return
        await two.grid_step()
    raise AssertionError(f"statuses {two.status(1)}, {two.status(2)} after 60 s")


# ---------------------------------------------------------------- (a) two connectors, own parts


async def test_two_connectors_charge_each_on_its_own_pins_and_meter(make_two: MakeTwo) -> None:
    two = await make_two(c2={"max_current_a": 16})
    assert two.bench.connector_ids == [1, 2]
    # One ADC chip for both, each connector on its own channels.
    assert two.pins(1).adc is two.pins(2).adc
    assert two.status(1) == two.status(2) == "Available"
    await both_charging(two)
    assert two.pins(1).relay_energized and two.pins(2).relay_energized
    assert two.pins(1).pilot_duty == pytest.approx(0.533)  # 32 A
    assert two.pins(2).pilot_duty == pytest.approx(0.266)  # its own 16 A limit, floored
    await two.clock.advance(5)
    one = await two.meter_note(1)
    other = await two.meter_note(2)
    assert float(one["power_w"]) > 20_000  # type: ignore[arg-type]
    assert 9_000 < float(other["power_w"]) < 12_000  # type: ignore[arg-type]

    await two.bench.inject_fault("rcd_trip", 2, True)
    await two.until(lambda: two.status(2) == "Faulted", within_s=1)
    assert not two.pins(2).relay_energized
    assert two.pins(1).relay_energized
    assert two.status(1) == "Charging"
    await two.clock.advance(3)
    assert float((await two.meter_note(2))["power_w"]) == 0.0  # type: ignore[arg-type]
    assert float((await two.meter_note(1))["power_w"]) > 20_000  # type: ignore[arg-type]
    assert two.bench.sim(1).ev.state == "C"


async def test_unplugging_one_leaves_the_other_charging(make_two: MakeTwo) -> None:
    two = await make_two()
    await both_charging(two)
    await two.bench.unplug(1)
    await two.until(lambda: two.status(1) == "Available", within_s=3)
    assert not two.pins(1).relay_energized
    assert two.pins(1).pilot_duty == 1.0
    assert two.status(2) == "Charging"
    assert two.pins(2).relay_energized


# ---------------------------------------------------------------- (b) load balancing across two


def grid_currents(two: Two) -> list[float]:
    values = two.bench.grid_meter.values()
    return [values[f"current_l{n}"] for n in (1, 2, 3)]


async def test_the_fuse_is_shared_fairly_between_the_two(make_two: MakeTwo) -> None:
    two = await make_two(grid=True)
    assert two.stack.config.grid.main_fuse_a == 32 and two.stack.config.grid.margin_a == 2
    for _ in range(3):
        await two.grid_step()  # the grid meter has reported before the EVs arrive
    await both_charging(two, grid=True)
    # 32 A fuse - 2 A margin - no house load = 30 A: 15 A each.
    await two.offers_become((15.0, 15.0))
    two.bench.set_house(house_a=(10.0, 10.0, 10.0))
    await two.offers_become((10.0, 10.0), within_s=3)

    # A simulated minute at this house load: house + both EVs stay within the fuse, each
    # EV's draw within its share.
    worst = 0.0
    for _ in range(60):
        await two.grid_step()
        worst = max(worst, *grid_currents(two))
        for cid in (1, 2):
            assert max(two.bench.sim(cid).ev.phase_currents_a()) <= 10.0 + 0.01
    assert worst <= 32.0
    assert worst > 25.0  # the budget is used, not wasted
    assert two.status(1) == two.status(2) == "Charging"


async def test_a_paused_evs_share_goes_to_the_other(make_two: MakeTwo) -> None:
    two = await make_two(grid=True)
    for _ in range(3):
        await two.grid_step()
    two.bench.set_house(house_a=(10.0, 10.0, 10.0))
    await both_charging(two, grid=True)
    await two.offers_become((10.0, 10.0))
    await two.bench.set_ev(1, paused=True)
    for _ in range(5):
        await two.grid_step()
    assert two.status(1) == "SuspendedEV"
    # Connector 1 draws nothing now: it keeps the 6 A minimum (the PWM stays on, so the
    # EV can resume), and connector 2 takes the rest of the 20 A.
    await two.offers_become((6.0, 14.0), within_s=10)
    worst = 0.0
    for _ in range(10):
        await two.grid_step()
        worst = max(worst, *grid_currents(two))
    assert worst <= 32.0
    assert max(two.bench.sim(2).ev.phase_currents_a()) > 13.0
    await two.bench.set_ev(1, paused=False)  # and it does resume
    await two.offers_become((10.0, 10.0), within_s=10)


# ---------------------------------------------------------------- (c) Modbus RTU over a pty


async def test_rtu_meter_over_the_benchs_pty_reports_growing_energy(make_two: MakeTwo) -> None:
    # An RS-485 meter is a real charger's part: the bench simulates it only when forced.
    two = await make_two(c2={"meter": {"transport": "rtu", "parity": "E"}}, bench={"force": True})
    sim = two.bench.sim(2)
    assert sim.serial is not None and sim.meter.serial_port == sim.serial.port_a
    wired = two.stack._wired.connectors[1].meter
    assert (wired.transport, wired.serial_port, wired.parity) == ("rtu", sim.serial.port_b, "N")
    await both_charging(two)
    first = await two.meter_note(2)
    await two.clock.advance(10)
    later = await two.meter_note(2)
    assert float(later["power_w"]) > 20_000  # type: ignore[arg-type]
    assert float(later["energy_wh"]) > float(first["energy_wh"])  # type: ignore[arg-type]
    assert sim.meter.requests > 0
