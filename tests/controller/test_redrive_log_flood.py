"""An output that keeps failing its trip does not flood the journal (safety review).

While a core stays frozen and a line unsafe, the freeze guard drives the cut again at every
check (0.1 s), and every failed trip logged a full traceback: 50 in 5 s, while the guard's
own CRITICAL says it at most every 10 s. Now the traceback comes once per episode, later
failures a line at most every CUT_LOG_EVERY_S (the guard's bound too). Clocks injected.
"""

from __future__ import annotations

import logging

import pytest

from evsed.controller.clock import SystemClock
from evsed.controller.connector.core import OutputLatch, SafetyCore
from evsed.controller.watchdog import FreezeGuard


class Relay:
    energized = True

    def deenergize(self) -> None:
        raise OSError(5, "relay driver I/O error")

    def energize(self) -> None:
        pass

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass


class Pilot:
    duty = 0.5

    def set_duty(self, duty: float) -> None:
        self.duty = duty

    def shutdown(self) -> None:
        pass


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "evsed.controller.connector.core"]


async def test_five_seconds_of_re_drives_log_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reviewer's case (real time for the latch: 50 checks take far less than 10 s)."""
    clock = Clock()
    core = SafetyCore(SystemClock(), threaded=True)
    core.latch_outputs([OutputLatch.around(Relay(), Pilot())])
    guard = FreezeGuard(lambda: 5.0, core.cut_frozen, monotonic=clock)
    caplog.set_level(logging.DEBUG)
    assert await guard.check()
    for _ in range(50):  # 5 s of checks every 0.1 s, each one re-driving the relay
        clock.now += 0.1
        await guard.check()
    assert guard.redrives == 50
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, f"{len(tracebacks)} tracebacks in 5 s of a frozen core"


async def test_later_failures_say_so_in_a_line_every_ten_seconds_and_a_new_episode_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from evsed.controller.connector.core import CUT_LOG_EVERY_S
    from evsed.controller.watchdog import FREEZE_LOG_EVERY_S

    clock = Clock()
    core = SafetyCore(SystemClock(), threaded=True)
    core.latch_outputs([OutputLatch.around(Relay(), Pilot(), monotonic=clock)])
    guard = FreezeGuard(lambda: 5.0, core.cut_frozen, monotonic=clock)
    assert CUT_LOG_EVERY_S == FREEZE_LOG_EVERY_S  # one bound for the cut's lines
    caplog.set_level(logging.DEBUG)
    assert await guard.check()
    for _ in range(50):
        clock.now += 0.1
        await guard.check()
    assert [bool(r.exc_info) for r in records(caplog)] == [True]
    clock.now += 5.5  # past 10 s since the first
    await guard.check()
    later = records(caplog)[1:]
    assert len(later) == 1 and not later[0].exc_info
    assert "still cannot be driven safe" in later[0].getMessage()
    assert "52 failed trips" in later[0].getMessage()

    # The core woke (the episode is over); the next freeze's first failure says it all.
    core._acknowledge_freeze()
    caplog.clear()
    assert core.cut_frozen("froze again") == ["connector 1 relay: [Errno 5] relay driver I/O error"]
    assert [bool(r.exc_info) for r in records(caplog)] == [True]
