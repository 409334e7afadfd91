"""The safety core on its own thread, in real time: nothing the loop does delays a cut.

These run the whole stack on the world's clock (`SystemClock`), so the core has its
thread; a watcher on the relay pin (called in whatever thread drives the relay) stamps
every edge with `perf_counter`, so reaction times are measured at the GPIO, not assumed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.config import parse
from evsed.controller.connector.status import StopReason
from evsed.controller.run import Stack
from tests.support.realtime import RelayWatch, realtime_stack

REACTION_S = 0.100  # IEC 61851-1: contactor open within 100 ms of C -> B


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with realtime_stack(tmp_path) as s:
        yield s


def relay_of(stack: Stack) -> tuple[Any, RelayWatch]:
    sim = stack.bench.sim(1)
    return sim, RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))


async def test_the_core_has_its_own_thread_and_a_fresh_tick(stack: Stack) -> None:
    assert stack.charger is not None
    assert stack.charger.core.threaded
    # The first tick runs after start returns (commands first): on a busy machine it may
    # not have happened yet, when the age is still inf.
    assert await asyncio.to_thread(stack.charger.core.wait_ticking, 5.0)
    assert stack.charger.safety_tick_age() < 1.0
    _sim, watch = relay_of(stack)
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        assert watch.edges[-1][2] != threading.get_ident()  # driven off the loop's thread
    finally:
        watch.close()


async def test_a_blocked_loop_does_not_delay_the_contactor(stack: Stack) -> None:
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    sim, watch = relay_of(stack)
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        await asyncio.sleep(0.3)  # charging, settled (not a wait for an outcome)
        loop = asyncio.get_running_loop()
        marks: dict[str, float] = {}

        def blocking_callback() -> None:
            # A bad callback on the loop: the EV leaves C, then the loop stalls for 2 s.
            marks["ev_left_c"] = time.perf_counter()
            sim.ev.configure(paused=True)
            time.sleep(2.0)
            marks["loop_back"] = time.perf_counter()

        loop.call_soon(blocking_callback)
        opened_at = await watch.wait(False, timeout=5.0)
        assert marks, "the blocking callback did not run"
        reaction = opened_at - marks["ev_left_c"]
        assert opened_at < marks["loop_back"]  # during the block, not after it
        assert reaction <= REACTION_S, f"contactor opened {reaction * 1000:.1f} ms after C -> B"
        await asyncio.sleep(0)
        assert str(connector.status.status) == "SuspendedEV"  # told to the loop afterwards
        sim.ev.configure(paused=False)
        await watch.wait(True)
        await stack.bench.unplug(1)
        await watch.wait(False)
        stopped = stack.hooks.stopped  # type: ignore[attr-defined]
        for _ in range(100):  # the stop is recorded by the loop once the core told it
            if stopped:
                break
            await asyncio.sleep(0.01)
        assert stopped and stopped[-1].reason == StopReason.EV_DISCONNECTED
        assert sim.pins.pilot_duty == 1.0
    finally:
        watch.close()


async def test_a_listener_raising_after_energise_on_the_thread(stack: Stack) -> None:
    """The reported bug, on the thread: the listener raises on the note after the contactor
    closed; the EV unplugs; the relay still opens at once."""
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    raised: list[bool] = []

    def listener(kind: str, fields: dict[str, object]) -> None:
        if kind == "contactor" and fields["closed"] is True and not raised:
            raised.append(True)
            raise RuntimeError("a bad listener")

    connector.add_listener(listener)
    _sim, watch = relay_of(stack)
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        await asyncio.sleep(0.2)
        assert raised
        t0 = time.perf_counter()
        await stack.bench.unplug(1)
        opened_at = await watch.wait(False, timeout=2.0)
        assert opened_at - t0 <= REACTION_S
        assert connector.callback_errors == 1
        assert connector.internal_errors == 0
    finally:
        watch.close()


async def test_an_rcd_trip_during_a_blocked_loop_opens_the_contactor(stack: Stack) -> None:
    """The RCD driver hands its trip to the loop; the core also reads the input itself."""
    assert stack.charger is not None
    sim, watch = relay_of(stack)
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        marks: dict[str, float] = {}

        def blocking_callback() -> None:
            marks["tripped"] = time.perf_counter()
            sim.pins.rcd_trip(True)
            time.sleep(1.0)
            marks["loop_back"] = time.perf_counter()

        asyncio.get_running_loop().call_soon(blocking_callback)
        opened_at = await watch.wait(False, timeout=5.0)
        assert opened_at < marks["loop_back"]
        assert opened_at - marks["tripped"] <= REACTION_S
        assert stack.charger.connector(1).status.error_code == "GroundFailure"
    finally:
        watch.close()


async def test_a_motor_lock_works_from_the_core_thread(tmp_path: Path) -> None:
    config = parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": 0.1},
            "connectors": [{"meter": {"port": 0}, "lock": {"enabled": True}}],
            "authorization": {"free_vend": True},
            "state_dir": str(tmp_path),
        }
    )
    async with Stack(config, control=False) as stack:
        assert stack.charger is not None
        connector = stack.charger.connector(1)
        sim, watch = relay_of(stack)
        try:
            await stack.bench.plug(1)
            await watch.wait(True)  # energy flows only once the lock confirmed
            assert sim.pins.locked
            assert connector.internal_errors == 0
            # The relay's edge comes inside the core's step, before the status is derived:
            # read in one piece, after the step (`status` alone may still say SuspendedEV).
            assert str(connector.view().status.status) == "Charging"
        finally:
            watch.close()


async def test_a_system_exit_from_a_driver_does_not_end_the_core(stack: Stack) -> None:
    """A driver raising a BaseException inside a tick: the outputs are cut, the connector
    reports InternalError, and the thread lives on, sampling (the watchdog's tick stays
    fresh); the connector recovers by its clearing rule."""
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    sampler = stack.charger._slots[1].sampler
    sim, watch = relay_of(stack)
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        real = sampler.sensor.read
        raised = threading.Event()

        def read(samples: int) -> Any:
            if not raised.is_set():
                raised.set()
                raise SystemExit("a driver calling sys.exit")
            return real(samples)

        sampler.sensor.read = read  # type: ignore[method-assign]
        await watch.wait(False, timeout=2.0)
        assert await asyncio.to_thread(raised.wait, 2.0)
        assert stack.charger.core.running  # the thread lives
        assert await asyncio.to_thread(stack.charger.core.wait_ticking, 2.0)
        assert stack.charger.safety_tick_age() < 1.0
        assert connector.internal_errors >= 1
        await stack.bench.unplug(1)
        for _ in range(200):  # the status reaches the loop through the outbox
            if str(connector.status.status) == "Available":
                break
            await asyncio.sleep(0.01)
        assert str(connector.status.status) == "Available"  # cleared by the unplug
        assert not sim.pins.relay_energized
    finally:
        watch.close()


async def test_a_command_given_up_on_never_runs_later(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core is stuck past the caller's patience: the caller answers with its default
    (the Central System hears Rejected), so the command must not run once the core is
    back (a RemoteStop refused, then carried out behind the Central System's back)."""
    from evsed.controller.connector import core as core_module

    monkeypatch.setattr(core_module, "CALL_TIMEOUT_S", 0.3)
    assert stack.charger is not None
    core = stack.charger.core
    release, stuck = threading.Event(), threading.Event()

    def freeze() -> None:
        stuck.set()
        release.wait(5)

    frozen = asyncio.create_task(asyncio.to_thread(core.call, freeze))
    ran: list[bool] = []
    try:
        assert await asyncio.to_thread(stuck.wait, 2.0)
        answer = await asyncio.to_thread(core.call, lambda: ran.append(True) or True, False)
        assert answer is False  # the default: nobody took it in time
    finally:
        release.set()
        await frozen
    assert await asyncio.to_thread(core.call, lambda: "back") == "back"  # the core is back
    assert ran == []  # and the abandoned command was dropped, not run late


async def test_a_stuck_core_costs_the_loop_one_wait_not_one_per_command(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands come from the loop and wait for the core's answer. Once one of them has
    waited CALL_TIMEOUT_S in vain, the next ones are answered with their default at once
    until the core steps again: three commands in a row (a limiter pass) used to block the
    loop 3 x 2 s, so the watchdog's pinger saw the frozen core only seconds late."""
    from evsed.controller.connector import core as core_module

    monkeypatch.setattr(core_module, "CALL_TIMEOUT_S", 0.5)
    assert stack.charger is not None
    core = stack.charger.core
    assert await asyncio.to_thread(core.wait_ticking, 5.0)
    release, stuck = threading.Event(), threading.Event()

    def freeze() -> None:
        stuck.set()
        release.wait(10)

    frozen = asyncio.create_task(asyncio.to_thread(core.call, freeze))
    try:
        assert await asyncio.to_thread(stuck.wait, 5.0)
        started = time.monotonic()
        answers = [core.call(lambda: True, False) for _ in range(4)]
        took = time.monotonic() - started
        assert answers == [False] * 4  # nobody took them: each answered with its default
        assert took < 0.5 + 0.4  # one wait of CALL_TIMEOUT_S at most, not 4 x 0.5 s
    finally:
        release.set()
        await frozen
    # Back at once: the frozen command's end clears the mark before its answer.
    assert await asyncio.to_thread(core.call, lambda: "back") == "back"
