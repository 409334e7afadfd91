"""The CS's clock from BootNotification.conf and Heartbeat.conf: a time in whole seconds is
not taken as the start of its second (that put every timestamp about 0.5 s behind), and a
time read during the round trip is not taken for a clock error (the answer's latency)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.ocpp16.boot import HeartbeatReporter, learn_time
from tests.support.clock import FakeClock
from tests.support.session_rig import make_context


def _ctx(tmp_path: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    return make_context(tmp_path, CentralSystemConfig(), clock=clock)


def _at(clock: FakeClock, fraction: float) -> datetime:
    """Move the fake clock so that its wall time is `fraction` into a second."""
    now = clock.now().timestamp()
    clock.offset_s += (int(now) + 1 + fraction) - now
    return clock.now()


def test_whole_seconds_from_a_cs_that_agrees_leave_the_clock_alone(tmp_path: Path) -> None:
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    local = _at(clock, 0.9)
    before = clock.offset_s
    whole = local.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    learn_time(ctx, whole)
    assert abs(clock.offset_s - before) < 1e-6
    assert abs(clock.now().timestamp() - local.timestamp()) < 1e-6


def test_whole_seconds_far_off_are_taken_mid_second(tmp_path: Path) -> None:
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    local = _at(clock, 0.2)
    cs = datetime.fromtimestamp(int(local.timestamp()) + 100, UTC)
    learn_time(ctx, cs.isoformat())
    assert abs(clock.now().timestamp() - (cs.timestamp() + 0.5)) < 1e-6


def test_a_time_with_fractions_is_taken_as_it_is(tmp_path: Path) -> None:
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    cs = datetime.fromtimestamp(clock.now().timestamp() + 42.25, UTC)
    learn_time(ctx, cs.isoformat())
    assert abs(clock.now().timestamp() - cs.timestamp()) < 1e-3


def test_a_cs_time_inside_the_round_trip_leaves_the_clock_alone(tmp_path: Path) -> None:
    """The CS read its clock while the Heartbeat was on its way: 2 s behind the answer's
    arrival after a 3 s round trip. Taken as of the arrival, it stepped our clock back 2 s
    (the schedules' boundaries with it: test_the_ev_follows_the_periods_on_time failed 1
    run in 9 under load, its Heartbeat due at the very boundary it waited for)."""
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    shown = clock.now().timestamp()
    for cs in (shown - 2.0, shown - 2.75, shown - 3.0, shown):
        learn_time(ctx, datetime.fromtimestamp(cs, UTC).isoformat(), shown - 3.0)
        assert clock.offset_s == 0.0, cs
    whole = datetime.fromtimestamp(int(shown - 3.5), UTC)  # its second overlaps the trip
    learn_time(ctx, whole.isoformat(), shown - 3.0)
    assert clock.offset_s == 0.0


def test_a_cs_time_outside_the_round_trip_is_taken_as_of_its_middle(tmp_path: Path) -> None:
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    shown = clock.now().timestamp()
    cs = datetime.fromtimestamp(shown + 100.25, UTC)
    learn_time(ctx, cs.isoformat(), shown - 2.0)  # read 1 s before the answer arrived
    assert abs(clock.now().timestamp() - (cs.timestamp() + 1.0)) < 1e-3
    behind = datetime.fromtimestamp(int(clock.now().timestamp()) - 60, UTC)  # whole seconds
    sent = clock.now().timestamp() - 4.0
    learn_time(ctx, behind.isoformat(), sent)
    assert abs(clock.now().timestamp() - (behind.timestamp() + 0.5 + 2.0)) < 1e-3


class SlowChannel:
    """A Channel whose CS answers a Heartbeat with the time it read on receiving it, while
    the answer takes `trip_s` of (simulated) time to arrive."""

    def __init__(self, clock: FakeClock, trip_s: float) -> None:
        self.clock = clock
        self.trip_s = trip_s
        self.link = object()

    async def send_quietly(self, link: object, payload: object, *, on_sent: Any = None) -> Any:
        if on_sent is not None:
            on_sent()
        await self.clock.advance(self.trip_s / 2)
        read = self.clock.now().isoformat()
        await self.clock.advance(self.trip_s / 2)
        return SimpleNamespace(current_time=read)


async def test_a_late_heartbeat_answer_does_not_step_the_clock_back(tmp_path: Path) -> None:
    clock = FakeClock()
    ctx = _ctx(tmp_path, clock)
    reporter = HeartbeatReporter(ctx, SlowChannel(clock, trip_s=4.0))  # type: ignore[arg-type]
    assert await reporter.send_now()
    assert clock.offset_s == 0.0, "the answer's latency was taken for a clock error"
