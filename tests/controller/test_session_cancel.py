"""A session's stop() always ends it (issue 9: the suite hung under load).

On Python 3.11 `asyncio.wait_for` returns the inner result when the inner awaitable completes
in the same loop turn as a cancel of the caller, and the cancel is lost. The session closed its
websocket through wait_for; a stop() landing in that turn left the session sleeping on its
reconnect back-off (a FakeClock sleep nobody advances in tests; a minute of back-off on a
charger), and stop() waited for it forever."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from evsed.controller.ocpp16.link import close_connection
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.session_rig import rig


class _ClosesAsTheCancelArrives:
    """A websocket whose close() completes in the very turn its caller is cancelled."""

    def __init__(self) -> None:
        self.victim: asyncio.Task[Any] | None = None
        self.transport = self

    async def close(self) -> None:
        assert self.victim is not None
        self.victim.cancel()

    def abort(self) -> None:
        pass


async def test_a_cancel_arriving_as_the_close_completes_is_not_lost() -> None:
    ws = _ClosesAsTheCancelArrives()
    went_on = asyncio.Event()

    async def closer() -> None:
        await close_connection(ws, 1.0)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the next await must see the cancel
        went_on.set()

    task = asyncio.ensure_future(closer())
    ws.victim = task
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
    assert not went_on.is_set()


async def test_stop_ends_the_session_even_when_a_library_swallowed_the_cancel(
    tmp_path: Path,
) -> None:
    clock = FakeClock()  # the back-off sleep never ends by itself
    async with CentralSystem() as cs:
        async with rig(tmp_path, cs, clock=clock, start=False) as r:
            attempts = 0
            attempting = asyncio.Event()

            async def swallowing_attempt() -> None:
                nonlocal attempts
                attempts += 1
                attempting.set()
                try:
                    await asyncio.Event().wait()  # a connection attempt in progress
                except asyncio.CancelledError:
                    pass  # as a library's wait_for does in the 3.11 race

            r.session._connect_once = swallowing_attempt  # type: ignore[method-assign]
            r.session.start()
            await asyncio.wait_for(attempting.wait(), 2)
            stopping = asyncio.ensure_future(r.session.stop())
            done, _ = await asyncio.wait({stopping}, timeout=2)
            assert stopping in done, "stop() did not end the session"
            assert attempts == 1
