"""A frozen safety core: the loop cuts the outputs itself, well before systemd's watchdog.

The freeze is injected into the code the core runs (the pilot sensor's read blocks on an
Event the test holds), on the real threaded core over the bench; the relay pin's edges are
stamped as they happen (RelayWatch), so the bound is measured at the GPIO.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.connector.core import LatchedContactor, LatchedPilot, OutputsLatched
from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.run import Stack
from evsed.controller.watchdog import FREEZE_CHECK_S, FREEZE_CUT_AGE_S, FreezeGuard
from tests.support.realtime import Changes, RelayWatch, realtime_stack

#: Beyond the age bound and one check: a thread start and a GIL hand-over on a busy runner.
SLACK_S = 0.4


class Freezer:
    """Wraps the pilot sensor's read: armed, the core thread blocks in it until released."""

    def __init__(self, sensor: Any, on_read: Callable[[], None]) -> None:
        self._read = sensor.read
        self._on_read = on_read
        self.armed = False
        self.slow_s: float | None = None  # a healthy but slow read, when set
        self.entered = threading.Event()
        self.entered_at = math.nan
        self.release = threading.Event()
        self.slow_reads = 0
        sensor.read = self.read

    def read(self, samples: int) -> Any:
        if self.armed:
            self.entered_at = time.perf_counter()
            self.entered.set()
            self.release.wait(30)
        elif self.slow_s is not None:
            threading.Event().wait(self.slow_s)  # the driver takes this long, then answers
            self.slow_reads += 1
            self._on_read()
        return self._read(samples)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with realtime_stack(tmp_path) as s:
        yield s


async def charging(stack: Stack) -> tuple[Any, RelayWatch, Freezer, Changes]:
    """Charging on connector 1; `Changes` is poked by every connector note, hook call and
    slow read."""
    charger = stack.charger
    assert charger is not None and charger.core.threaded
    assert isinstance(stack.hooks, LocalHooks)
    changes = Changes()
    charger.connector(1).add_listener(changes.poke)
    stack.hooks.listeners.append(changes.poke)
    sim = stack.bench.sim(1)
    watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
    freezer = Freezer(charger.parts.connectors[0].sensor, changes.from_thread)
    await stack.bench.plug(1)
    await watch.wait(True)
    return sim, watch, freezer, changes


async def test_a_frozen_core_has_its_relay_opened_by_the_loop_within_the_bound(
    stack: Stack,
) -> None:
    charger = stack.charger
    assert charger is not None
    hooks = stack.hooks
    assert isinstance(hooks, LocalHooks)
    sim, watch, freezer, changes = await charging(stack)
    turns = 0

    async def loop_turns() -> None:  # the application loop, turning meanwhile
        nonlocal turns
        while True:
            turns += 1
            changes.poke()
            await asyncio.sleep(0.01)

    spinner = asyncio.create_task(loop_turns())
    try:
        freezer.armed = True
        assert await asyncio.to_thread(freezer.entered.wait, 5)
        turns_at_freeze = turns
        opened_at = await watch.wait(False, timeout=5.0)
        took = opened_at - freezer.entered_at
        assert took <= FREEZE_CUT_AGE_S + FREEZE_CHECK_S + SLACK_S, f"opened after {took:.2f} s"
        # The loop turns on with the core still stuck in its read (a command of the loop's
        # waits for a frozen core only until the bound: core.FROZEN_AFTER_S).
        turns_at_cut = turns
        await changes.until(lambda: turns > turns_at_cut + 10, timeout=2.0)
        assert charger.core.frozen is not None and not freezer.release.is_set()
        assert turns > turns_at_freeze
        assert sim.pins.pilot_duty == 0.0  # state F: EVSE not available
        status = charger.status(1)
        assert (str(status.status), str(status.error_code)) == ("Faulted", "InternalError")
        assert "froze" in status.info
        # The StatusNotification's source, told while the core is still frozen.
        await changes.until(lambda: str(hooks.statuses[1].status) == "Faulted", timeout=1.0)
        assert not freezer.release.is_set()
        assert stack.safety_tick_age() > FREEZE_CUT_AGE_S  # so the watchdog withholds too

        # The core wakes mid-step: it must not close the relay again behind the cut, and it
        # records the fault itself (the transaction stops; Faulted until unplug or reset).
        edges = len(watch.edges)
        freezer.armed = False
        freezer.release.set()
        connector = charger.connector(1)
        # The core's own fault note and the stop it records poke `changes`.
        await changes.until(lambda: charger.core.frozen is None and bool(hooks.stopped))
        assert Fault.INTERNAL in connector.faults
        assert str(charger.status(1).status) == "Faulted"
        assert not any(closed for _, closed, _ in watch.edges[edges:])
        assert not sim.pins.relay_energized
        assert stack.freeze_guard is not None and stack.freeze_guard.cuts == 1
    finally:
        spinner.cancel()
        freezer.release.set()
        watch.close()


async def test_a_slow_but_healthy_tick_does_not_trip_it(stack: Stack) -> None:
    charger = stack.charger
    assert charger is not None
    _sim, watch, freezer, changes = await charging(stack)
    try:
        edges = len(watch.edges)
        freezer.slow_s = 0.6  # each tick 0.6 s: slow, well below the bound
        await changes.until(lambda: freezer.slow_reads >= 4, timeout=10.0)
        freezer.slow_s = None
        assert stack.freeze_guard is not None and stack.freeze_guard.cuts == 0
        assert charger.core.frozen is None
        assert watch.edges[edges:] == []  # the relay never moved
        assert str(charger.status(1).status) == "Charging"
    finally:
        freezer.slow_s = None
        watch.close()


async def test_the_guard_cuts_once_per_episode_and_never_for_a_core_not_running() -> None:
    age = math.inf
    cuts: list[str] = []
    told: list[bool] = []
    guard = FreezeGuard(
        lambda: age,
        lambda detail: cuts.append(detail) or [],
        on_cut=lambda: told.append(True),
        max_tick_age_s=1.0,
    )
    assert not await guard.check()  # inf: start-up, a Reset, a stop
    age = 0.2
    assert not await guard.check()
    age = 1.2
    assert await guard.check()
    assert not await guard.check()  # still frozen: one cut, one report
    assert len(cuts) == 1 and "1.2 s" in cuts[0] and told == [True]
    age = 0.1  # ticking again: re-armed
    assert not await guard.check()
    age = 3.0
    assert await guard.check()
    assert guard.cuts == 2


async def test_a_cut_that_blocks_does_not_hold_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    stuck = threading.Event()

    def cut(detail: str) -> list[str]:
        stuck.wait(10)
        return []

    guard = FreezeGuard(lambda: 5.0, cut, cut_wait_s=0.2)
    t0 = time.monotonic()
    with caplog.at_level(logging.CRITICAL):
        assert await guard.check()
    stuck.set()
    assert time.monotonic() - t0 < 2.0
    assert "did not return" in caplog.text


class Relay:
    def __init__(self) -> None:
        self.energized = False

    def energize(self) -> None:
        self.energized = True

    def deenergize(self) -> None:
        self.energized = False


class Pilot:
    def __init__(self) -> None:
        self.duty = 1.0
        self.resolution = 0.01

    def set_duty(self, duty: float) -> None:
        self.duty = duty


def test_a_tripped_latch_refuses_only_what_could_offer_energy() -> None:
    relay, pilot = LatchedContactor(Relay()), LatchedPilot(Pilot())
    relay.energize()
    pilot.set_duty(0.5)
    assert relay.energized and pilot.duty == 0.5 and pilot.resolution == 0.01
    relay.trip(relay.device.deenergize)
    pilot.trip(lambda: pilot.device.set_duty(0.0))
    assert not relay.energized and pilot.duty == 0.0
    with pytest.raises(OutputsLatched):
        relay.energize()
    with pytest.raises(OutputsLatched):
        pilot.set_duty(0.5)
    relay.deenergize()
    pilot.set_duty(1.0)  # +12 V and -12 V offer nothing: always allowed
    assert not relay.energized and pilot.duty == 1.0
    relay.release()
    pilot.release()
    relay.energize()
    pilot.set_duty(0.5)
    assert relay.energized and pilot.duty == 0.5


class _DriverThatHangs:
    """A relay and pilot driver whose unsafe write blocks inside the driver until released,
    as a core frozen inside the very driver the loop's cut must then drive without the
    latch's lock (safety review: the write used to land after the cut)."""

    def __init__(self) -> None:
        self.energized = False
        self.duty = 1.0
        self.inside = threading.Event()
        self.go = threading.Event()

    def energize(self) -> None:
        self.inside.set()
        self.go.wait(10)
        self.energized = True

    def deenergize(self) -> None:
        self.energized = False

    def set_duty(self, duty: float) -> None:
        if duty not in (0.0, 1.0):
            self.inside.set()
            self.go.wait(10)
        self.duty = duty

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("output", ["relay", "pilot"])
def test_a_move_in_flight_inside_the_driver_does_not_land_after_the_cut(output: str) -> None:
    driver = _DriverThatHangs()
    if output == "relay":
        latched: Any = LatchedContactor(driver)
        move: Callable[[], None] = latched.energize

        def cut() -> None:
            latched.trip(driver.deenergize)

        def safe() -> bool:
            return not driver.energized
    else:
        latched = LatchedPilot(driver)

        def move() -> None:
            latched.set_duty(0.27)  # 16 A

        def cut() -> None:
            latched.trip(lambda: driver.set_duty(0.0))

        def safe() -> bool:
            return driver.duty == 0.0

    raised: list[BaseException] = []

    def core() -> None:
        try:
            move()
        except OutputsLatched as exc:
            raised.append(exc)

    thread = threading.Thread(target=core, daemon=True)
    thread.start()
    assert driver.inside.wait(5)  # the core is inside the driver, holding the latch's lock
    cut()  # the loop's cut: the lock not had within LATCH_WAIT_S, driven without it
    assert safe()
    driver.go.set()  # the core wakes and its write lands
    thread.join(5)
    assert not thread.is_alive()
    assert safe(), f"the {output} offered energy again after the freeze cut"
    assert raised, "the late move must be refused to its caller"
