"""The freeze guard's task never ends while evsed runs, and a guard that died anyway does
not abort the stop (safety review).

FreezeGuard._run_cut started its thread outside the try: a thread that could not be started
(RuntimeError: can't start new thread; a memory or pids limit) ended `guard.run()` for good,
with nothing to supervise it, and Stack._stop_freeze_guard then re-raised that error,
skipping the rest of the stop (the session, the store, a Reset's start).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from evsed.controller.config import Config
from evsed.controller.connector.status import StopReason
from evsed.controller.run import Stack
from evsed.controller.watchdog import FreezeGuard


async def test_a_cut_thread_that_cannot_start_does_not_end_the_guard(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    enough = asyncio.Event()
    cuts: list[str] = []

    def cut(detail: str) -> list[str]:
        cuts.append(detail)
        if len(cuts) >= 2:
            loop.call_soon_threadsafe(enough.set)
        return []

    guard = FreezeGuard(lambda: 5.0, cut, interval_s=0.01, redrive_s=0.0)
    real_start = threading.Thread.start
    starts = 0

    def start(self: threading.Thread) -> None:
        nonlocal starts
        if self.name == "freeze-cut":
            starts += 1
            if starts == 2:  # the episode's first re-drive
                raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    task = asyncio.create_task(guard.run())
    try:
        with caplog.at_level(logging.CRITICAL, logger="evsed.controller.watchdog"):
            await asyncio.wait_for(enough.wait(), 5)
        assert not task.done(), "the freeze guard's task died"
        assert starts >= 3  # the thread that could not start was tried again
        assert "could not start" in caplog.text  # reported as not safe
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_check_that_raises_is_logged_and_the_guard_looks_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = FreezeGuard(lambda: 0.1, lambda d: [], interval_s=0.0)
    checked = asyncio.Event()
    calls = 0
    real_check = guard.check

    async def check() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ValueError("a bug in a check")
        checked.set()
        return await real_check()

    guard.check = check  # type: ignore[method-assign]
    task = asyncio.create_task(guard.run())
    try:
        with caplog.at_level(logging.DEBUG, logger="evsed.controller.watchdog"):
            await asyncio.wait_for(checked.wait(), 5)
        assert not task.done()
        failures = [r for r in caplog.records if "check" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info  # one traceback, not three
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class _Charger:
    async def stop(self, reason: StopReason) -> None:
        pass


class _Session:
    online = False


class _Ocpp:
    def __init__(self) -> None:
        self.session = _Session()
        self.txqueue: list[Any] = []
        self.stopped = self.closed = False

    async def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


async def test_a_guard_that_died_does_not_abort_the_stop(caplog: pytest.LogCaptureFixture) -> None:
    async def dies() -> None:
        raise RuntimeError("can't start new thread")

    stack = Stack(Config())
    ocpp = _Ocpp()
    stack.charger, stack.ocpp = _Charger(), ocpp  # type: ignore[assignment]
    stack._freeze_task = asyncio.create_task(dies())
    await asyncio.sleep(0)  # the task ends with its error
    with caplog.at_level(logging.ERROR, logger="evsed.controller.run"):
        await stack._stop_controller(StopReason.SOFT_RESET)
    assert ocpp.stopped and ocpp.closed, "the stop ended at the guard's error"
    assert stack.charger is None and stack.ocpp is None
    assert "freeze guard had ended with an error" in caplog.text
