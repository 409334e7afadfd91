"""A frozen core's cut is driven again while the freeze lasts (safety review).

Once tripped, the guard used to return at once on every check: a cut that left a line
unsafe, or that did not answer, was never tried again, and nothing re-asserted the safe
levels for as long as the core stayed frozen. The guard's clock is injected; the cut is a
plain callable (the real one, SafetyCore.cut_frozen, is tested on the bench at the end).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.watchdog import FREEZE_REDRIVE_S, FreezeGuard
from tests.support.realtime import RelayWatch, realtime_stack


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard_for(cut: Any, clock: Clock, told: list[bool], **kw: Any) -> FreezeGuard:
    return FreezeGuard(
        lambda: 5.0,  # frozen throughout
        cut,
        on_cut=lambda: told.append(True),
        max_tick_age_s=1.0,
        monotonic=clock,
        **kw,
    )


async def test_a_cut_that_left_a_line_unsafe_is_driven_again_at_the_next_check() -> None:
    answers = [["connector 1 relay: OSError"], ["connector 1 relay: OSError"], []]
    calls: list[str] = []

    def cut(detail: str) -> list[str]:
        calls.append(detail)
        return answers.pop(0) if answers else []

    told: list[bool] = []
    # No clock needed: an unsafe line is driven again at the very next check.
    guard = FreezeGuard(lambda: 5.0, cut, on_cut=lambda: told.append(True), max_tick_age_s=1.0)
    assert await guard.check()  # the episode's cut: relay not safe
    assert not await guard.check()  # same episode: no new cut, no second report...
    assert len(calls) == 2  # ...but the relay driven again at once
    assert not await guard.check()
    assert len(calls) == 3  # safe now
    assert not await guard.check()
    assert len(calls) == 3  # safe and not due: left alone
    assert guard.cuts == 1 and guard.redrives == 2 and told == [True]
    assert calls == [calls[0]] * 3  # one episode, one detail (the status shows it)


async def test_a_safe_cut_is_re_asserted_every_few_seconds_while_the_core_stays_frozen() -> None:
    calls: list[str] = []
    clock, told = Clock(), []
    guard = guard_for(lambda d: calls.append(d) or [], clock, told)
    assert await guard.check()
    clock.now += FREEZE_REDRIVE_S / 2
    assert not await guard.check()
    assert len(calls) == 1
    clock.now += FREEZE_REDRIVE_S / 2
    assert not await guard.check()
    assert len(calls) == 2
    clock.now += FREEZE_REDRIVE_S
    assert not await guard.check()
    assert len(calls) == 3 and guard.cuts == 1 and told == [True]


async def test_a_cut_that_did_not_answer_is_tried_again_once_it_returns_never_two_at_once() -> None:
    release = threading.Event()
    calls: list[str] = []

    def cut(detail: str) -> list[str]:
        calls.append(detail)
        if len(calls) == 1:
            release.wait(10)  # a driver that blocks, then fails
            return ["connector 1 pilot: TimeoutError"]
        return []

    clock, told = Clock(), []
    guard = guard_for(cut, clock, told, cut_wait_s=0.05)
    try:
        assert await guard.check()  # timed out: not confirmed
        pending = guard.cut_in_flight
        assert pending is not None and not pending.done()
        clock.now += 3 * FREEZE_REDRIVE_S
        assert not await guard.check()
        assert len(calls) == 1  # no second thread behind the blocked one
    finally:
        release.set()
    assert await asyncio.wait_for(asyncio.shield(pending), 5) == ["connector 1 pilot: TimeoutError"]
    assert not await guard.check()
    assert len(calls) == 2  # driven again as soon as the blocked one returned
    assert guard.cuts == 1 and told == [True]


async def test_re_drives_that_keep_failing_log_critical_seldom(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def cut(detail: str) -> list[str]:
        calls.append(detail)
        return ["connector 1 relay: OSError"]

    clock, told = Clock(), []
    guard = guard_for(cut, clock, told, log_every_s=10.0)
    with caplog.at_level(logging.CRITICAL, logger="evsed.controller.watchdog"):
        assert await guard.check()
        for _ in range(50):  # 5 s of checks every 0.1 s
            clock.now += 0.1
            await guard.check()
        early = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        clock.now += 5.5  # 10 s since the cut's CRITICAL
        await guard.check()
    assert len(calls) == 52  # driven again at every check: it is still unsafe
    # The cut's two lines (froze; NOT SAFE: relay), no re-drive's within 10 s...
    assert len(early) == 2
    # ...then one that says it is still unsafe and how often it was tried.
    late = [r for r in caplog.records if r.levelno == logging.CRITICAL][2:]
    assert len(late) == 1
    assert "still frozen" in late[0].getMessage() and "51" in late[0].getMessage()


async def test_a_relay_the_cut_could_not_open_is_opened_by_a_re_drive_on_the_bench(
    tmp_path: Path,
) -> None:
    """The real cut (SafetyCore.cut_frozen through the latches) on the threaded core: the
    relay driver fails the cut's first open; while the core stays frozen the guard opens
    it on a later check."""
    async with realtime_stack(tmp_path) as stack:
        charger = stack.charger
        assert charger is not None and isinstance(stack.hooks, LocalHooks)
        guard = stack.freeze_guard
        assert guard is not None
        sim = stack.bench.sim(1)
        watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
        device = charger.parts.connectors[0].contactor.device  # under the latch
        real_open = device.deenergize
        refused = threading.Event()

        def deenergize() -> None:
            if threading.current_thread().name == "trip-relay" and not refused.is_set():
                refused.set()
                raise OSError("relay driver: write failed")
            real_open()

        device.deenergize = deenergize
        release, frozen = threading.Event(), threading.Event()

        def freeze() -> None:
            frozen.set()
            release.wait(20)

        try:
            await stack.bench.plug(1)
            await watch.wait(True)
            hang = asyncio.create_task(asyncio.to_thread(charger.core.call, freeze))
            assert await asyncio.to_thread(frozen.wait, 5)
            await watch.wait(False, timeout=6.0)
            assert refused.is_set(), "the cut's first open of the relay failed"
            assert guard.cuts == 1 and guard.redrives >= 1
            assert not sim.pins.relay_energized and sim.pins.pilot_duty == 0.0
        finally:
            release.set()
            device.deenergize = real_open
            watch.close()
        await hang
