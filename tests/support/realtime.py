"""Waiting on what happens in real time (the threaded safety core, a GPIO edge) without
sleeping: an edge or a change is stamped as it happens and the waiter woken."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from evsed.controller.config import parse
from evsed.controller.run import Stack


@asynccontextmanager
async def realtime_stack(tmp_path: Path, *, meter_poll_s: float = 0.2) -> AsyncIterator[Stack]:
    """The whole stack on the world's clock (the core on its own thread), free vend, one
    connector with the bench's meter polled every `meter_poll_s`."""
    config = parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": 0.1},
            "connectors": [{"meter": {"port": 0, "poll_interval_s": meter_poll_s}}],
            "authorization": {"free_vend": True},
            "state_dir": str(tmp_path),
        }
    )
    async with Stack(config, control=False) as stack:
        yield stack


class RelayWatch:
    """Every edge of the relay pin, with the thread and the real time it happened at."""

    def __init__(self, pin: Any, energized: Callable[[], bool]) -> None:
        self._pin = pin
        self._energized = energized
        self._previous = pin.on_change
        self.edges: list[tuple[float, bool, int]] = []
        self._changed = threading.Condition()
        pin.on_change = self._on_change

    def _on_change(self) -> None:
        now = time.perf_counter()
        if self._previous is not None:
            self._previous()
        with self._changed:
            self.edges.append((now, bool(self._energized()), threading.get_ident()))
            self._changed.notify_all()

    async def wait(self, energized: bool, timeout: float = 5.0) -> float:
        """Real time of the first edge to `energized` from now on (or now, if already so)."""
        if bool(self._energized()) == energized:
            return time.perf_counter()
        start = len(self.edges)

        def seen() -> float | None:
            for at, state, _ in self.edges[start:]:
                if state == energized:
                    return at
            return None

        def block() -> float:
            with self._changed:
                if not self._changed.wait_for(lambda: seen() is not None, timeout):
                    raise TimeoutError(f"relay never became energized={energized}")
                at = seen()
                assert at is not None
                return at

        return await asyncio.to_thread(block)

    def close(self) -> None:
        self._pin.on_change = self._previous


class Changes:
    """An asyncio.Event poked by whatever may change a condition (a listener on the loop,
    or `from_thread` in another thread); `until` re-checks on every poke."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def poke(self, *_: object) -> None:
        self.event.set()

    def from_thread(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.event.clear()
                await self.event.wait()
