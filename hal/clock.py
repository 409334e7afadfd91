"""Injected time, at the bottom of the layers: everything that waits or timestamps takes a
clock, so tests run hours in ms (their manual clock is `tests.support.clock.FakeClock`).

It lives in hal, the lowest layer, because drivers wait too (lock pulses, the gap between
Modbus requests, the meter poller); `evsed.controller.clock` re-exports it for the layers
above. A driver asks only for what it uses: `Sleeper` or the whole `Clock`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Sleeper(Protocol):
    async def sleep(self, seconds: float) -> None: ...


class Clock(Sleeper, Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Wall-clock time, UTC, timezone-aware."""
        ...


class SystemClock:
    def __init__(self) -> None:
        self.offset_s = 0.0  # CS time minus local time, learned from BootNotification

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset_s, UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
