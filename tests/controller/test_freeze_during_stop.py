"""A safety core that freezes while evsed stops is still cut by the loop (safety review).

Stack._stop_controller used to stop the freeze guard before `charger.stop()`: a core frozen
then (the stop's commands dropped: "cut the outputs" never ran) kept its relay closed until
the core's own stop timed out and the devices were closed. The guard now watches the whole
stop and ends once the core has stopped (tick age inf: no freeze). Real threaded core on
the bench; the freeze is a command that blocks the core thread until released.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from evsed.controller.connector import core as core_module
from evsed.controller.connector.hooks import LocalHooks
from tests.support.realtime import RelayWatch, realtime_stack


async def test_a_core_that_freezes_as_the_stop_begins_has_its_relay_opened_by_the_guard(
    tmp_path: Path,
) -> None:
    release, frozen = threading.Event(), threading.Event()
    opened_while_frozen: list[bool] = []

    def freeze() -> None:
        frozen.set()
        release.wait(30)

    async with realtime_stack(tmp_path) as stack:
        charger = stack.charger
        assert charger is not None and charger.core.threaded
        assert isinstance(stack.hooks, LocalHooks)
        guard = stack.freeze_guard
        assert guard is not None
        sim = stack.bench.sim(1)
        watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
        await stack.bench.plug(1)
        await watch.wait(True)

        def lets_go() -> None:
            """A thread (the loop blocks in the core's join during the stop): looks for
            the relay opening while the core is still frozen, then lets the core go, well
            before the core's own stop bound (5 s)."""
            try:
                asyncio.run(watch.wait(False, timeout=4.0))
                opened_while_frozen.append(not release.is_set())
            except TimeoutError:
                opened_while_frozen.append(False)
            finally:
                release.set()

        hang = asyncio.create_task(asyncio.to_thread(charger.core.call, freeze))
        assert await asyncio.to_thread(frozen.wait, 5)
        watcher = threading.Thread(target=lets_go, daemon=True)
        watcher.start()
        # The stop begins with the core frozen: its commands go unanswered.
    await asyncio.to_thread(watcher.join, 10)
    await hang
    watch.close()
    assert opened_while_frozen == [True], "the relay stayed closed while the core was frozen"
    assert guard.cuts == 1
    assert stack.charger is None and stack._freeze_task is None


async def test_a_reset_stops_the_old_guard_and_starts_one_for_the_new_charger(
    tmp_path: Path,
) -> None:
    async with realtime_stack(tmp_path) as stack:
        old_charger, old_guard, old_task = stack.charger, stack.freeze_guard, stack._freeze_task
        assert old_guard is not None and old_task is not None
        await stack.restart("Soft")
        assert old_task.done()  # nothing of the old guard acts on the charger gone
        assert stack.charger is not None and stack.charger is not old_charger
        assert stack.freeze_guard is not None and stack.freeze_guard is not old_guard
        new_task = stack._freeze_task
        assert new_task is not None and not new_task.done()
        assert stack.restarts == 1
        # The new guard reads the new core: it ticks, so no freeze.
        assert await asyncio.to_thread(stack.charger.core.wait_ticking, 5.0)
        assert stack.freeze_guard.safety_tick_age() < 1.0
        assert not await stack.freeze_guard.check()
    assert new_task.done()


async def test_a_core_that_will_not_stop_has_its_outputs_cut_by_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core freezes as its own stop begins: the loop waits in the join, where the
    freeze guard cannot look. The relay stayed closed until the devices were closed
    after it; now the stop cuts the outputs itself once the join runs out."""
    monkeypatch.setattr(core_module, "STOP_JOIN_S", 0.5)
    release, frozen = threading.Event(), threading.Event()

    def freeze() -> None:
        frozen.set()
        release.wait(30)

    try:
        async with realtime_stack(tmp_path) as stack:
            charger = stack.charger
            assert charger is not None and charger.core.threaded
            sim = stack.bench.sim(1)
            watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
            await stack.bench.plug(1)
            await watch.wait(True)
            hang = asyncio.create_task(asyncio.to_thread(charger.core.call, freeze))
            assert await asyncio.to_thread(frozen.wait, 5)
            await charger.core.stop()  # blocks the loop in the join: no guard meanwhile
            assert not sim.pins.relay_energized, "the relay stayed closed after the stop"
            assert sim.pins.pilot_duty == 0.0  # state F
            assert not release.is_set()  # still frozen: the stop itself opened it
            release.set()
            await hang
            watch.close()
    finally:
        release.set()


async def test_a_frozen_core_with_its_queue_full_does_not_hang_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop put its stop command with no bound: a frozen core whose command queue was
    full hung the stop (and the loop with it) before the cut, the relay closed (safety
    review, round 2)."""
    monkeypatch.setattr(core_module, "STOP_JOIN_S", 0.5)
    release, frozen = threading.Event(), threading.Event()

    def freeze() -> None:
        frozen.set()
        release.wait(30)

    try:
        async with realtime_stack(tmp_path) as stack:
            charger = stack.charger
            assert charger is not None and charger.core.threaded
            sim = stack.bench.sim(1)
            watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
            await stack.bench.plug(1)
            await watch.wait(True)
            hang = asyncio.create_task(asyncio.to_thread(charger.core.call, freeze))
            assert await asyncio.to_thread(frozen.wait, 5)
            commands, thread = charger.core._queue, charger.core._thread
            assert thread is not None
            while not commands.full():  # harmless commands, run once the core wakes
                commands.put_nowait(core_module._Command(lambda: None, Future()))
            stopping = asyncio.create_task(asyncio.to_thread(asyncio.run, charger.core.stop()))
            done, _ = await asyncio.wait({stopping}, timeout=5.0)
            assert done, "the stop hung on the full queue"
            assert not sim.pins.relay_energized, "the relay stayed closed after the stop"
            release.set()
            await hang
            # The core the stop gave up on, awake again: its stop command now, so that it
            # does not tick on after the test.
            await asyncio.to_thread(commands.put, core_module._STOP, True, 5.0)
            await asyncio.to_thread(thread.join, 5.0)
            assert not thread.is_alive()
            watch.close()
    finally:
        release.set()
