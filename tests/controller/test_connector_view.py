"""The loop reads a connector in one piece while the safety core's thread steps it.

The core writes a step's fields one after the other (the pilot state, then the contactor
opens, then the status is derived and published). `evsed status` read them one by one from
the loop, so a step paused between two writes showed "Charging" with the pilot at B, a
state the connector is never in. `Charger.view` (`Connector.view`) reads them on the core,
between its steps. Here the core's step is held, deterministically, inside the relay's
driver call (the pin's change callback runs in the thread that drives it: the core's).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.controller import status
from evsed.controller.run import Stack
from tests.support.realtime import realtime_stack

#: How long the held step lasts at most: the loop's read must wait for it, inside the core's
#: 2 s command timeout. The meter is polled far less often: a poll's command would hold the
#: loop behind the held core too, and its read would come only after the step.
HOLD_S = 1.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with realtime_stack(tmp_path, meter_poll_s=30.0) as s:
        yield s


async def status_note(stack: Stack, wanted: str, timeout: float = 5.0) -> None:
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    if str(connector.status.status) == wanted:
        return
    seen = asyncio.get_running_loop().create_future()

    def listener(kind: str, fields: dict[str, object]) -> None:
        if kind == "status" and fields.get("status") == wanted and not seen.done():
            seen.set_result(None)

    connector.add_listener(listener)
    await asyncio.wait_for(seen, timeout)


async def test_status_never_shows_half_a_core_step(stack: Stack) -> None:
    charger = stack.charger
    assert charger is not None and charger.core.threaded
    sim = stack.bench.sim(1)
    await stack.bench.plug(1)
    await status_note(stack, "Charging")
    assert sim.pins.relay_energized

    reached, release = threading.Event(), threading.Event()
    relay = sim.pins.relay
    previous = relay.on_change

    def hold_the_core() -> None:
        # The contactor opening, inside the core's step for C -> B: pilot_state is B
        # already, the status is not derived yet.
        if previous is not None:
            previous()
        if not reached.is_set() and threading.current_thread() is not threading.main_thread():
            reached.set()
            release.wait(HOLD_S)

    relay.on_change = hold_the_core
    try:
        sim.ev.configure(paused=True)  # the EV stops asking: C -> B, the core opens
        assert await asyncio.to_thread(reached.wait, 5.0)
        snap = status.snapshot(stack, status.LinkTracker(stack.config, stack.clock))
        release.set()
    finally:
        release.set()
        relay.on_change = previous
    one = snap["connectors"][0]
    assert one["pilot"] == "B"  # the step had begun (the view waited for its end) ...
    assert one["status"] == "SuspendedEV", one  # ... never "Charging" with the pilot at B
    await status_note(stack, "SuspendedEV")
