"""Timers that fire at a wall-clock time on the injected clock: a reservation's expiryDate.

One asyncio task per key sleeps (on `Clock.sleep`, so a test's manual clock drives it) until
the clock's `now()` reaches the time, then calls ``on_expiry(key)``. The sleep is cut into
naps of at most ``max_nap_s`` and the time checked again after each: the wall clock may step
while a timer waits (a Pi without a clock battery learns the date from NTP, the clock takes
the Central System's time at each BootNotification), and an expiryDate is a wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from evsed.controller.clock import Clock

log = logging.getLogger(__name__)

#: A step of the wall clock is noticed within this; costs one wake-up per timer and nap.
MAX_NAP_S = 30.0


class ExpiryTimers:
    """Keyed timers; event-loop thread only. Arming a key again replaces its timer."""

    def __init__(
        self,
        clock: Clock,
        on_expiry: Callable[[int], None],
        *,
        max_nap_s: float = MAX_NAP_S,
        name: str = "expiry",
    ) -> None:
        self._clock = clock
        self._on_expiry = on_expiry
        self._max_nap_s = max_nap_s
        self._name = name
        self._tasks: dict[int, tuple[datetime, asyncio.Task[None]]] = {}

    def arm(self, key: int, at: datetime) -> None:
        """Call ``on_expiry(key)`` once ``now() >= at`` (soon, if it already is)."""
        self.cancel(key)
        task = asyncio.get_running_loop().create_task(
            self._wait(key, at), name=f"{self._name}-{key}"
        )
        self._tasks[key] = (at, task)

    def cancel(self, key: int) -> bool:
        """False if no timer was armed for ``key``."""
        entry = self._tasks.pop(key, None)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def armed(self) -> dict[int, datetime]:
        """Key -> the time its timer fires."""
        return {key: at for key, (at, _) in self._tasks.items()}

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait(self, key: int, at: datetime) -> None:
        while (left := (at - self._clock.now()).total_seconds()) > 0:
            await self._clock.sleep(min(left, self._max_nap_s))
        entry = self._tasks.get(key)
        if entry is not None and entry[1] is asyncio.current_task():
            del self._tasks[key]  # before the callback, which may arm the key again
        try:
            self._on_expiry(key)
        except Exception:
            # A timer's failure must not go unseen, nor end the others.
            log.exception("%s timer %s failed", self._name, key)
