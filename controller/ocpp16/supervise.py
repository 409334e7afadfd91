"""Long-running tasks of the session that must not die quietly.

`keep_running` restarts a loop that ended or raised (logged with its traceback, counted),
after a pause that doubles with each failure in a row so that a loop failing at once does
not spin. `failures` counts per task name, for tests and diagnostics.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from evsed.controller.clock import Clock

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
RESTART_PAUSE_MAX_S = 60.0


async def keep_running(
    name: str,
    run: Callable[[], Awaitable[object]],
    *,
    clock: Clock,
    failures: Counter[str],
    pause_s: float = RESTART_PAUSE_S,
) -> None:
    """Run ``run()`` for ever: each end or exception is logged, counted and restarted."""
    in_a_row = 0
    while True:
        try:
            await run()
            log.error("%s ended unexpectedly; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it", name)
        failures[name] += 1
        in_a_row += 1
        await clock.sleep(min(RESTART_PAUSE_MAX_S, pause_s * 2 ** (in_a_row - 1)))


def watch(
    task: asyncio.Task[object],
    name: str,
    on_death: Callable[[], None],
    failures: Counter[str],
    *,
    expected: Callable[[], bool] = lambda: False,
) -> None:
    """Call ``on_death`` (after logging and counting) when ``task`` ends other than by a
    cancel, unless ``expected()`` says the end was due (e.g. its link is gone): for a loop
    that cannot be restarted in place, such as the delivery loop."""

    def done(t: asyncio.Task[object]) -> None:
        if t.cancelled():
            return
        if t.exception() is None and expected():
            return
        error = t.exception()
        if error is not None:
            log.error("%s failed", name, exc_info=error)
        else:
            log.error("%s ended unexpectedly", name)
        failures[name] += 1
        on_death()

    task.add_done_callback(done)
