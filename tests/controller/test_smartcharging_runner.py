"""The smart-charging runner: the limit in force handed to the charger, a timer for the next
change on the injected clock (no polling), re-evaluation on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.smartcharging.runner import Evaluation, SmartChargingRunner
from tests.support.clock import FakeClock

A = SmartChargingLimit


@dataclass
class Sink:
    calls: list[tuple[float, int, SmartChargingLimit | None]] = field(default_factory=list)
    clock: FakeClock | None = None

    def set_smart_charging_limit(self, connector_id: int, value: SmartChargingLimit | None) -> None:
        assert self.clock is not None
        self.calls.append((self.clock.monotonic(), connector_id, value))


@dataclass
class Steps:
    """A schedule as (seconds from `origin`, limit) steps, per connector."""

    origin: datetime
    steps: dict[int, list[tuple[float, SmartChargingLimit | None]]]

    def __call__(self, cid: int, now: datetime) -> Evaluation:
        elapsed = (now - self.origin).total_seconds()
        current: SmartChargingLimit | None = None
        upcoming: datetime | None = None
        for at, value in self.steps.get(cid, []):
            if at <= elapsed + 1e-9:
                current = value
            elif upcoming is None:
                upcoming = self.origin + timedelta(seconds=at)
        return Evaluation(current, upcoming)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    yield FakeClock()


async def test_each_boundary_reaches_the_charger_on_time(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    t0 = clock.monotonic()
    schedule = Steps(clock.now(), {1: [(0, A(16)), (600, A(0)), (1800, A(10)), (3600, None)]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    await clock.advance(2 * 3600)
    assert [(round(t - t0, 3), v) for t, _, v in sink.calls] == [
        (0.0, A(16)),
        (600.0, A(0)),
        (1800.0, A(10)),
        (3600.0, None),
    ]
    # No polling: one evaluation at the start, one per boundary.
    assert runner.evaluations == 4
    assert runner.next_change is None
    await runner.stop()


async def test_connectors_have_their_own_boundaries(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    t0 = clock.monotonic()
    schedule = Steps(clock.now(), {1: [(0, A(16)), (100, A(8))], 2: [(0, A(20)), (50, A(6))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1, 2])
    runner.start()
    await clock.advance(200)
    assert [(round(t - t0), c, v) for t, c, v in sink.calls] == [
        (0, 1, A(16)),
        (0, 2, A(20)),
        (50, 2, A(6)),
        (100, 1, A(8)),
    ]
    await runner.stop()


async def test_reevaluate_applies_a_change_at_once_and_rearms(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    schedule = Steps(clock.now(), {1: [(0, A(16)), (600, A(8))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    await clock.advance(10)
    # A profile cleared (the schedule now says nothing): applied in the same call.
    schedule.steps[1] = []
    runner.reevaluate(1)
    assert sink.calls[-1][1:] == (1, None)
    assert runner.next_change is None
    await clock.advance(1000)
    assert len(sink.calls) == 2  # the old boundary at 600 s is gone with its profile
    # Installed again, with a boundary 30 s from now.
    origin = clock.now()
    runner._evaluate = Steps(origin, {1: [(0, A(12)), (30, A(6))]})
    runner.reevaluate()
    await clock.advance(30)
    assert [v for _, _, v in sink.calls[-2:]] == [A(12), A(6)]
    await runner.stop()


async def test_unchanged_answers_are_not_repeated(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    schedule = Steps(clock.now(), {1: [(0, A(16)), (60, A(16)), (120, A(16))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    await clock.advance(200)
    assert [v for _, _, v in sink.calls] == [A(16)]
    await runner.stop()


async def test_a_failing_evaluation_pauses_the_connector(clock: FakeClock) -> None:
    sink = Sink(clock=clock)

    def broken(cid: int, now: datetime) -> Evaluation:
        raise RuntimeError("bad schedule")

    runner = SmartChargingRunner(sink, clock, broken, connector_ids=[1])
    runner.start()
    assert sink.calls[-1][1:] == (1, A(0.0))
    await runner.stop()


async def test_a_wall_clock_set_back_wakes_early_and_waits_again(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    origin = clock.now()
    schedule = Steps(origin, {1: [(0, A(16)), (100, A(8))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    clock.offset_s = -50.0  # the CS's time is 50 s behind ours
    await clock.advance(100)  # the timer wakes at our 100 s = the CS's 50 s: not yet
    assert [v for _, _, v in sink.calls] == [A(16)]
    await clock.advance(50)
    assert [v for _, _, v in sink.calls] == [A(16), A(8)]
    await runner.stop()


async def test_on_the_bench_the_ev_follows_each_period_on_time() -> None:
    from evsed.controller.run import Stack
    from tests.support.bench_rig import Rig, bench_config

    clock = FakeClock()
    stack = Stack(bench_config(authorization={"free_vend": True}), clock=clock, control=False)
    await stack.start()
    try:
        rig = Rig(stack, clock)
        assert stack.charger is not None
        await rig.bench.plug(1)
        await rig.until(lambda: rig.status == "Charging", within_s=5)
        origin = clock.now() + timedelta(seconds=10)
        schedule = Steps(origin, {1: [(0, A(16)), (30, A(0)), (60, A(10))]})
        runner = SmartChargingRunner(stack.charger, clock, schedule, connector_ids=[1])
        runner.start()
        assert rig.connector.offered_a == 32.0  # before the schedule's start: no profile
        await rig.run(10.0)
        assert rig.connector.offered_a == 16.0
        assert rig.sim.pins.pilot_duty == pytest.approx(0.266)
        await rig.run(29.9)
        assert rig.connector.offered_a == 16.0
        await rig.run(0.1)
        assert rig.connector.offered_a == 0.0  # the pause, on the boundary
        assert rig.sim.pins.pilot_duty == 1.0
        await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
        await rig.run(59.9 - (clock.now() - origin).total_seconds())  # 0.1 s before 60 s
        assert rig.connector.offered_a == 0.0
        took = await rig.until(lambda: rig.connector.offered_a == 10.0, within_s=1.0)
        assert took <= 0.1 + 0.02  # on the boundary, to the simulated tick
        await rig.until(lambda: rig.status == "Charging", within_s=5)
        assert rig.connector.transaction is not None
        await runner.stop()
    finally:
        await stack.stop()


async def test_a_periods_number_phases_reaches_the_phase_switch(clock: FakeClock) -> None:
    sink = Sink(clock=clock)
    switched: list[tuple[int, int]] = []
    origin = clock.now()

    def schedule(cid: int, now: datetime) -> Evaluation:
        late = (now - origin).total_seconds() >= 60
        return Evaluation(A(16), None if late else origin + timedelta(seconds=60), 1 if late else 3)

    runner = SmartChargingRunner(
        sink,
        clock,
        schedule,
        connector_ids=[1],
        set_phases=lambda cid, n: switched.append((cid, n)) is None,
    )
    runner.start()
    await clock.advance(120)
    runner.reevaluate()  # the same answer again: no second switch
    assert switched == [(1, 3), (1, 1)]
    await runner.stop()


async def test_a_forward_clock_step_does_not_delay_the_next_boundary(clock: FakeClock) -> None:
    """The BootNotification sets the wall clock 1 h forward, then reevaluate(): the boundary
    1 h 30 min ahead by the old clock is 30 min ahead by the new one, and fires then (the old
    timer, asleep for the old delay, would have fired 1 h late; safety review of issue 11)."""
    sink = Sink(clock=clock)
    t0 = clock.monotonic()
    schedule = Steps(clock.now() + timedelta(hours=1), {1: [(-3600, A(16)), (1800, A(6))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    await clock.advance(1)
    clock.offset_s = 3600.0
    runner.reevaluate()
    await clock.advance(1800)
    assert [(round(t - t0), v) for t, _, v in sink.calls] == [(0, A(16)), (1800, A(6))]
    await runner.stop()


async def test_an_unreported_clock_step_delays_a_boundary_by_one_nap_at_most(
    clock: FakeClock,
) -> None:
    sink = Sink(clock=clock)
    t0 = clock.monotonic()
    schedule = Steps(clock.now(), {1: [(0, A(16)), (7200, A(6))]})
    runner = SmartChargingRunner(sink, clock, schedule, connector_ids=[1])
    runner.start()
    await clock.advance(1)
    clock.offset_s = 3600.0  # nobody calls reevaluate()
    await clock.advance(3600 + 30)
    assert sink.calls[-1][2] == A(6)
    assert sink.calls[-1][0] - t0 <= 3600 + 30
    await runner.stop()


async def test_phases_go_back_to_three_when_no_profile_says_one(clock: FakeClock) -> None:
    """A numberPhases 1 TxProfile ends with its transaction: no profile says anything, which
    means three (OCPP 1.6 §7.12), so the relay goes back for the next session."""
    sink = Sink(clock=clock)
    answer = {"now": Evaluation(A(16), None, 1)}
    switched: list[tuple[int, int]] = []
    runner = SmartChargingRunner(
        sink,
        clock,
        lambda cid, now: answer["now"],
        connector_ids=[1],
        set_phases=lambda cid, n: switched.append((cid, n)) is None,
    )
    runner.start()
    answer["now"] = Evaluation(None, None, None)
    runner.reevaluate()
    assert switched == [(1, 1), (1, 3)]
    answer["now"] = Evaluation(A(10), None, None)  # a profile without numberPhases: three
    runner.reevaluate()
    assert switched == [(1, 1), (1, 3)]
    await runner.stop()
