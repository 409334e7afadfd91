"""The CS's clock from BootNotification.conf: a time in whole seconds is not taken as the
start of its second (that put every timestamp about 0.5 s behind)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.ocpp16.boot import learn_time
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
