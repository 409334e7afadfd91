"""A manual clock for tests and the offline benchmark: hours of protocol time in ms.

It satisfies `evsed.controller.clock.Clock` (and the hal's `Sleeper`/`Monotonic` needs).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime


class FakeClock:
    """Manual clock for tests: `await clock.advance(s)` wakes sleepers in time order."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono = 1000.0
        self._wall0 = (start or datetime(2026, 1, 1, tzinfo=UTC)).timestamp() - self._mono
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall0 + self._mono + self.offset_s, UTC)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its deadline and letting it run."""
        target = self._mono + seconds
        while True:
            await _settle()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            when, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, when)
            if not fut.done():
                fut.set_result(None)
        self._mono = target
        await _settle()


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
