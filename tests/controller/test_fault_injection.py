"""Faults injected into what surrounds the safety core, and into the core itself.

A listener, a hook or an observer that raises at any point of a session is logged and
counted, and the session goes on: on unplug the relay opens, the PWM stops, the status is
right and the transaction is recorded. A driver call that raises inside the core cuts the
outputs, shows Faulted/InternalError and clears by the fault's rule (unplug).

Driven by a FakeClock (the core runs inline, stepped by the clock), so every step is exact.
The same guarantees with the core on its own thread, in real time, are in
`test_safety_thread.py`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from evsed.controller.connector.hooks import LocalHooks, Transaction
from evsed.controller.connector.status import StopReason
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock
from tests.support.stopping import stop_note

MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    stacks: list[Stack] = []

    async def make(hooks: LocalHooks | None = None, **sections: Any) -> Rig:
        clock = FakeClock()
        sections.setdefault("authorization", {"free_vend": True})
        config = bench_config(**sections)
        stack = Stack(config, clock=clock, control=False, hooks=hooks)
        await stack.start()
        stacks.append(stack)
        rig = Rig(stack, clock)
        rig.connector.add_listener(lambda kind, fields: rig.notes.append((kind, fields)))
        return rig

    yield make
    for stack in stacks:
        await stack.stop()


async def charging(rig: Rig) -> None:
    await rig.until(lambda: rig.status == "Charging", within_s=3)


async def unplug_is_safe_and_recorded(rig: Rig) -> None:
    """The end of every session, whatever raised during it."""
    await rig.bench.unplug(1)
    took = await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=1)
    assert took <= 0.1  # the usual reaction: one charging tick
    await rig.until(lambda: rig.status == "Available", within_s=1)
    assert rig.sim.pins.pilot_duty == 1.0  # no PWM on an empty socket
    assert len(rig.stack.hooks.stopped) == 1
    assert rig.stack.hooks.stopped[0].reason == StopReason.EV_DISCONNECTED
    assert rig.stack.hooks.stopped[0].transaction.local_id == rig.stack.hooks.started[0].local_id
    assert rig.connector.internal_errors == 0  # nothing of this reached the core


class Boom(RuntimeError):
    pass


def raising_once(kind: str, pred: Callable[[dict[str, object]], bool]) -> Callable[..., None]:
    fired: list[bool] = []

    def listener(k: str, fields: dict[str, object]) -> None:
        if k == kind and pred(fields) and not fired:
            fired.append(True)
            raise Boom(f"listener on {kind}")

    listener.fired = fired  # type: ignore[attr-defined]
    return listener


POINTS: dict[str, tuple[str, Callable[[dict[str, object]], bool]]] = {
    "after energise": ("contactor", lambda f: f["closed"] is True),
    "on C->B": ("pilot", lambda f: f["state"] == "B" and f["previous"] == "C"),
    "on a meter sample": ("meter", lambda f: True),
    "on a status change": ("status", lambda f: f["status"] == "Charging"),
}


@pytest.mark.parametrize("point", list(POINTS))
async def test_a_listener_raising_at_any_point_leaves_the_session_safe(
    make_rig: MakeRig, point: str, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    kind, pred = POINTS[point]
    listener = raising_once(kind, pred)
    rig.connector.add_listener(listener)
    await rig.bench.plug(1)
    await charging(rig)
    await rig.meter_sample()
    # C -> B and back: the EV pauses, the contactor opens, the EV resumes.
    await rig.bench.set_ev(1, paused=True)
    await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=0.1)
    assert rig.status == "SuspendedEV"
    await rig.bench.set_ev(1, paused=False)
    await charging(rig)
    assert listener.fired  # type: ignore[attr-defined]
    assert rig.connector.callback_errors == 1
    assert "Boom" in caplog.text  # logged, with its traceback
    await unplug_is_safe_and_recorded(rig)


class FlakyHooks(LocalHooks):
    """LocalHooks whose status hook raises once, on `status`; authorize may raise too."""

    def __init__(self, status: str | None = None, *, authorize_raises: int = 0) -> None:
        super().__init__(tags=["AABBCCDDEE"])
        self.fail_on = status
        self.failed = False
        self.authorize_raises = authorize_raises

    def status_changed(self, connector_id: int, status: Any) -> None:
        super().status_changed(connector_id, status)
        if status.status == self.fail_on and not self.failed:
            self.failed = True
            raise Boom(f"status hook on {status.status}")

    async def authorize(self, connector_id: int, id_tag: str) -> Any:
        if self.authorize_raises:
            self.authorize_raises -= 1
            raise Boom("authorize hook")
        return await super().authorize(connector_id, id_tag)


@pytest.mark.parametrize("status", ["Preparing", "SuspendedEV", "Charging"])
async def test_a_status_hook_raising_is_contained(make_rig: MakeRig, status: str) -> None:
    hooks = FlakyHooks(status)
    rig = await make_rig(hooks=hooks)
    await rig.bench.plug(1)
    await charging(rig)
    assert hooks.failed
    assert rig.connector.callback_errors == 1
    await rig.run(2)
    assert rig.sim.pins.relay_energized  # charging goes on
    await unplug_is_safe_and_recorded(rig)


async def test_an_authorize_hook_raising_refuses_that_card_only(make_rig: MakeRig) -> None:
    hooks = FlakyHooks(authorize_raises=1)
    rig = await make_rig(hooks=hooks, authorization={"free_vend": False})
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Preparing")
    assert rig.stack.charger is not None
    rig.stack.charger.present_tag("AABBCCDDEE")
    refused = await rig.note("authorized")
    assert refused["status"] == "Invalid"  # the hook raised: no energy on a doubt
    assert rig.connector.callback_errors == 1
    rig.stack.charger.present_tag("AABBCCDDEE")
    accepted = await rig.note("authorized")
    assert accepted["status"] == "Accepted"
    await charging(rig)
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.status == "Available", within_s=1)
    assert not rig.sim.pins.relay_energized
    assert rig.stack.hooks.stopped[-1].reason == StopReason.EV_DISCONNECTED


async def test_a_charger_observer_raising_is_contained(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert rig.stack.charger is not None

    def bad_observer(_id_tag: str) -> None:
        raise Boom("tag observer")

    rig.stack.charger.events.tag.append(bad_observer)
    from evsed.hal.types import TagPresented

    rig.stack.charger._on_reader(TagPresented(id_tag="FREEVEND", reader="test"))
    await rig.bench.plug(1)
    await charging(rig)
    await unplug_is_safe_and_recorded(rig)


# ---------------------------------------------------------------- the start record and the lock


class RecordingHooks(LocalHooks):
    """Sees what the lock does while the start is recorded; may fail the record."""

    def __init__(self, locked: Callable[[], bool], fail: bool = False) -> None:
        super().__init__()
        self.locked = locked
        self.fail = fail
        self.locked_while_recording: list[bool] = []

    def transaction_started(self, tx: Transaction) -> Transaction:
        self.locked_while_recording.append(self.locked())
        if self.fail:
            raise OSError("disk I/O error")
        return super().transaction_started(tx)


async def test_the_lock_engages_only_after_the_start_is_recorded(make_rig: MakeRig) -> None:
    holder: list[Rig] = []
    hooks = RecordingHooks(lambda: bool(holder[0].sim.pins.locked))
    rig = await make_rig(
        hooks=hooks, connectors=[{"meter": {"port": 0}, "lock": {"enabled": True}}]
    )
    holder.append(rig)
    await rig.bench.plug(1)
    await charging(rig)
    assert hooks.locked_while_recording == [False]
    assert rig.sim.pins.locked


async def test_a_start_that_is_not_recorded_gives_no_energy_and_no_lock(
    make_rig: MakeRig,
) -> None:
    holder: list[Rig] = []
    hooks = RecordingHooks(lambda: bool(holder[0].sim.pins.locked), fail=True)
    rig = await make_rig(
        hooks=hooks, connectors=[{"meter": {"port": 0}, "lock": {"enabled": True}}]
    )
    holder.append(rig)
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Faulted", within_s=1)
    assert rig.connector.status.error_code == "InternalError"
    await rig.run(3)
    assert not rig.sim.pins.relay_energized
    assert not rig.sim.pins.locked
    assert rig.sim.pins.pilot_duty in (0.0, 1.0)  # state F, then +12 V: nothing offered
    assert rig.connector.transaction is None
    assert hooks.stopped == []  # no stop for a start that was never recorded
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.status == "Available", within_s=1)


# ---------------------------------------------------------------- a driver that raises


def break_pwm(rig: Rig, *, times: int) -> list[float]:
    """The pilot driver raises on its next `times` duty writes (a sysfs write failing)."""
    pilot = rig.connector._pilot
    real = pilot.set_duty
    attempts: list[float] = []

    def set_duty(duty: float) -> None:
        attempts.append(duty)
        if len(attempts) <= times:
            raise OSError(5, "Input/output error")
        real(duty)

    pilot.set_duty = set_duty  # type: ignore[method-assign]
    return attempts


async def test_a_pwm_write_raising_cuts_faults_and_recovers(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    await rig.bench.plug(1)
    await charging(rig)
    assert rig.stack.charger is not None
    attempts = break_pwm(rig, times=1)
    caplog.set_level(logging.ERROR)
    rig.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(16.0))  # a new duty
    assert attempts  # the write was tried, and raised
    assert not rig.sim.pins.relay_energized  # cut at once, not on the next tick
    assert rig.status == "Faulted"
    assert rig.connector.status.error_code == "InternalError"
    await stop_note(rig)  # recorded once the meter was read after the cut
    assert rig.stack.hooks.stopped[-1].reason == StopReason.OTHER
    assert caplog.text.count("internal error, outputs cut") == 1
    await rig.run(5)
    assert rig.status == "Faulted"  # it clears by its rule, not by itself
    assert not rig.sim.pins.relay_energized
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.status == "Available", within_s=1)
    await rig.bench.plug(1)
    await charging(rig)  # recovered: the next EV charges
    assert len(rig.stack.hooks.started) == 2


async def test_a_pwm_that_stays_broken_still_opens_the_contactor(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    await rig.bench.plug(1)
    await charging(rig)
    assert rig.stack.charger is not None
    break_pwm(rig, times=10**9)
    caplog.set_level(logging.ERROR)
    # Below 6 A: the PWM must go (and cannot); the contactor logic after it still runs.
    rig.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(0.0))
    assert not rig.sim.pins.relay_energized
    assert rig.connector.status.error_code == "InternalError"
    await rig.run(3)  # the core keeps sampling and keeps the outputs cut
    assert not rig.sim.pins.relay_energized
    assert rig.connector.internal_errors > 1
    assert caplog.text.count("internal error, outputs cut") == 1  # the traceback once
    await rig.bench.unplug(1)
    await rig.run(1)
    assert not rig.sim.pins.relay_energized


async def test_a_pwm_write_failing_at_the_start_never_closes_the_contactor(
    make_rig: MakeRig,
) -> None:
    """The duty that would offer current cannot be written: no close (and open 2 ms later,
    a click on the EV), only the cut and InternalError."""
    rig = await make_rig()
    contactor = rig.connector._contactor
    real = contactor.energize
    closes: list[bool] = []

    def energize() -> None:
        closes.append(True)
        real()

    contactor.energize = energize  # type: ignore[method-assign]
    # An EV that closes S2 at once (state C before any PWM): the step that writes the first
    # duty is also the one that would close the contactor.
    rig.sim.ev.configure(waits_for_pwm=False)
    break_pwm(rig, times=1)
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Faulted", within_s=3)
    assert rig.connector.status.error_code == "InternalError"
    assert closes == []
    assert not rig.sim.pins.relay_energized


async def test_a_pilot_sensor_that_keeps_raising_reads_as_state_f(make_rig: MakeRig) -> None:
    """Whatever the sensor driver does about its own failures, a pilot the core cannot read
    is no EV it may charge: after a few failed reads the contactor opens."""
    rig = await make_rig()
    await rig.bench.plug(1)
    await charging(rig)
    assert rig.stack.charger is not None
    sampler = rig.stack.charger._slots[1].sampler

    def read(_samples: int) -> Any:
        raise OSError(5, "SPI transfer failed")

    real, sampler.sensor.read = sampler.sensor.read, read  # type: ignore[method-assign]
    took = await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=1)
    assert took <= 0.5  # three failed ticks at the charging rate, not a timeout
    assert rig.connector.pilot_state == "F"
    sampler.sensor.read = real  # type: ignore[method-assign]
    await rig.until(lambda: rig.connector.pilot_state == "C", within_s=1)


async def test_a_listener_calling_sys_exit_is_isolated_too(make_rig: MakeRig) -> None:
    rig = await make_rig()

    def listener(kind: str, fields: dict[str, object]) -> None:
        if kind == "contactor" and fields["closed"] is True:
            raise SystemExit("a listener calling sys.exit")

    rig.connector.add_listener(listener)
    await rig.bench.plug(1)
    await charging(rig)
    assert rig.connector.callback_errors == 1
    await rig.bench.unplug(1)
    await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=0.1)
    await rig.until(lambda: rig.status == "Available", within_s=1)


# ---------------------------------------------------------------- supervised tasks


async def test_a_meter_poller_that_dies_is_restarted(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    assert rig.stack.charger is not None
    charger = rig.stack.charger
    poller = charger._slots[1].poller
    assert poller is not None
    real = poller.next_delay
    calls = [0]

    def next_delay() -> float:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug in the poller's own loop")
        return real()

    poller.next_delay = next_delay  # type: ignore[method-assign]
    await rig.bench.plug(1)
    await charging(rig)
    await rig.until_note("meter")  # the first poll, then the poller's loop raises
    await rig.until(lambda: charger.restarts.get("meter-poller-1") == 1, within_s=5)
    assert "meter-poller-1 failed; restarting it" in caplog.text
    await rig.meter_sample()  # polling again
    await unplug_is_safe_and_recorded(rig)
