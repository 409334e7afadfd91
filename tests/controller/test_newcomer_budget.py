"""A connector that joins a running load-balanced charge gets its share at once (issue 11).

The balancer gives every connector that cannot run yet (idle, or held below 6 A by its own
limit) the budget it would get on joining, so a newcomer's first allowance is its share: it
never sees a placeholder 0 A, which its limiter took for a budget dip and answered with the
30 s resume hold, and never starts above what the fuse leaves.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from evsed.controller.config import Config, parse
from evsed.controller.connector.machine import Connector
from evsed.controller.limiter import Budget, CurrentLimiter, LimiterConfig, LimitInputs, Reason
from evsed.controller.loadbalance import ConnectorDemand, LoadBalanceConfig, LoadBalancer
from evsed.controller.run import Stack
from evsed.hal.types import MeterSample
from tests.support.clock import FakeClock

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "sim-two-connectors.toml"
TICK_S = 0.01

FUSE = LoadBalanceConfig(fuse_a=32.0, margin_a=2.0)  # 30 A usable per phase


def drawing(amps: float) -> MeterSample:
    return MeterSample(voltage_v=(230.0,) * 3, current_a=(amps,) * 3, power_w=(230.0 * amps,) * 3)


def grid(amps: float) -> MeterSample:
    return drawing(amps)


# --- the balancer and the limiter alone, on an injected clock --------------------------------


def test_an_idle_connector_is_given_the_share_it_would_get_on_joining() -> None:
    lb = LoadBalancer(FUSE)
    one = ConnectorDemand(1, started_at=0.0, max_a=32.0, meter=drawing(30.0))
    out = lb.update(10.0, [one], grid(30.0), prospective=[ConnectorDemand(2, 0.0, 32.0)])
    assert out[1] == Budget(30.0, Reason.LOAD_BALANCING)  # its own share is untouched
    assert out[2] == Budget(15.0, Reason.LOAD_BALANCING)  # half, as the newest starter


def test_a_newcomer_that_would_crowd_the_phase_is_the_one_that_waits() -> None:
    lb = LoadBalancer(FUSE)
    one = ConnectorDemand(1, started_at=0.0, max_a=32.0, meter=drawing(20.0))
    # The house takes 20 A: 30 - 20 = 10 A for us, not 2 x 6 A. The newcomer yields.
    out = lb.update(10.0, [one], grid(40.0), prospective=[ConnectorDemand(2, 99.0, 32.0)])
    assert out[1].amps == 10.0
    assert out[2].amps == 0.0


def test_a_connector_paused_by_its_own_limit_keeps_its_joining_share() -> None:
    lb = LoadBalancer(FUSE)
    paused = ConnectorDemand(1, started_at=0.0, max_a=0.0)  # limit 0 from the CS
    two = ConnectorDemand(2, started_at=5.0, max_a=32.0, meter=drawing(30.0))
    out = lb.update(10.0, [paused, two], grid(30.0))
    assert out[2].amps == 30.0  # 1 draws nothing, 2 takes all
    assert out[1].amps == 15.0  # what 1 gets back the moment its limit rises


def test_the_newcomers_limiter_never_sees_zero_and_runs_at_once() -> None:
    """Connector 1 holds the whole 30 A; connector 2 starts: its first allowance, before
    any re-share, is already its 15 A, not 0 A followed by a 30 s hold."""
    lb = LoadBalancer(FUSE)
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    one = ConnectorDemand(1, started_at=0.0, max_a=32.0, meter=drawing(30.0))
    idle = ConnectorDemand(2, started_at=0.0, max_a=32.0)

    def allowance(budget: Budget, now: float) -> tuple[float, bool]:
        got = limiter.update(LimitInputs(32.0, 32.0, 32.0, budget=budget), now)
        return got.amps, got.suspended

    budgets = lb.update(100.0, [one], grid(30.0), prospective=[idle])
    # The core opened the transaction before the charger re-shared: the budget it has is
    # the one computed while it was idle.
    assert allowance(budgets[2], 100.0) == (15.0, False)
    started = ConnectorDemand(2, started_at=100.0, max_a=32.0)
    budgets = lb.update(100.0, [one, started], grid(30.0))
    assert allowance(budgets[2], 100.0) == (15.0, False)
    assert budgets[1].amps == 15.0


# --- on the bench: two connectors, a grid meter, the FakeClock ---------------------------------


def two_connectors(state_dir: Path) -> Config:
    """The shipped two-connector example with its grid meter, ephemeral ports, free vend."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["state_dir"] = str(state_dir)
    data["authorization"] = {"free_vend": True}
    data["bench"].update(control_port=0, ev_delay_s=0.5)
    data["grid"]["meter"]["port"] = 0
    for connector in data["connectors"]:
        connector["meter"]["port"] = 0
    return parse(data)


class Two:
    def __init__(self, stack: Stack, clock: FakeClock) -> None:
        self.stack, self.clock = stack, clock
        self.bench = stack.bench

    def connector(self, cid: int) -> Connector:
        assert self.stack.charger is not None
        return self.stack.charger.connector(cid)

    def status(self, cid: int) -> str:
        return str(self.connector(cid).status.status)

    def offers(self) -> tuple[float, float]:
        return (self.connector(1).offered_a, self.connector(2).offered_a)

    async def until(self, pred: Callable[[], bool], within_s: float) -> None:
        start = self.clock.monotonic()
        while not pred():
            if self.clock.monotonic() - start > within_s:
                raise AssertionError(f"not within {within_s} s of simulated time")
            await self.clock.advance(TICK_S)

    async def grid_step(self) -> None:
        """One grid-meter poll interval of simulated time, and the sample it brings (its
        socket answers in real time: waited for, never slept for)."""
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

    async def offers_become(self, want: tuple[float, float], within_s: float) -> None:
        start = self.clock.monotonic()
        while self.offers() != pytest.approx(want, abs=0.01):
            if self.clock.monotonic() - start > within_s:
                raise AssertionError(f"offers {self.offers()} after {within_s} s, want {want}")
            await self.grid_step()


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    clock = FakeClock()
    stack = Stack(two_connectors(tmp_path), clock=clock, control=False)
    await stack.start()
    rig = Two(stack, clock)
    for _ in range(3):
        await rig.grid_step()  # the grid meter has reported before the EVs arrive
    yield rig
    await stack.stop()


async def test_the_second_connector_gets_its_share_at_once(two: Two) -> None:
    await two.bench.plug(1)
    await two.offers_become((30.0, 0.0), within_s=10)  # connector 1 holds the whole 30 A
    assert two.status(1) == "Charging"
    notes: list[tuple[str, dict[str, object]]] = []
    assert two.stack.charger is not None
    charger = two.stack.charger

    def note(kind: str, fields: dict[str, object]) -> None:
        # With the allowance of that moment and the sim time: a failure says which limit
        # bound, and when, without a rerun.
        at = round(two.clock.monotonic(), 3)
        notes.append((kind, {**fields, "at": at, "allowance": charger.allowance(2)}))

    two.connector(2).add_listener(note)

    start = two.clock.monotonic()
    await two.bench.plug(2)
    await two.until(lambda: two.status(2) == "Charging", within_s=5)
    took = two.clock.monotonic() - start
    assert took < 3.0  # the EV's own delay, no 30 s hold, no wait for a grid poll
    await two.offers_become((15.0, 15.0), within_s=3)

    statuses = [f["status"] for k, f in notes if k == "status"]
    assert "SuspendedEVSE" not in statuses, notes  # never held at 0 A at its start
    duties = [f for k, f in notes if k == "duty"]
    assert duties, "connector 2 never offered"
    # Its first offer is a real one (6 A while its EV is in B, then its share).
    assert 6.0 <= float(duties[0]["amps"]) <= 15.0  # type: ignore[arg-type]


async def test_the_first_connector_never_offers_more_than_the_fuse_leaves(two: Two) -> None:
    two.bench.set_house(house_a=(27.0, 27.0, 27.0))  # 32 - 2 - 27 = 3 A: not enough for 6 A
    for _ in range(3):
        await two.grid_step()
    notes: list[tuple[str, dict[str, object]]] = []
    two.connector(1).add_listener(lambda kind, fields: notes.append((kind, fields)))
    await two.bench.plug(1)
    for _ in range(10):
        await two.grid_step()
    assert two.status(1) == "SuspendedEVSE"
    assert two.connector(1).transaction is not None
    offered = [float(f["amps"]) for k, f in notes if k == "duty"]  # type: ignore[arg-type]
    assert all(a == 0.0 for a in offered), offered  # not 32 A for a moment before the share
    assert not two.bench.sim(1).pins.relay_energized
