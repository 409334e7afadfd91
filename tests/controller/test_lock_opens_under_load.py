"""A lock that reads open during a session cuts the contactor at once, as a fault.

`_apply` offers only while the lock does not read unlocked; a lock confirmed locked that
later read open (the latch forced, a motor that moved back, a broken position switch)
merely withdrew the offer: the PWM went, and the contactor stayed closed through the soft
stop, up to `power_off_under_load_s` (6 s) with the plug no longer held, under load, while
the connector showed SuspendedEVSE and resumed by itself if the switch came back. Now it
is Fault.LOCK (ConnectorLockFailure) once it has read open for `LOCK_LOST_S` (a switch's
bounce is shorter): the relay opens in that step, the session ends.

The real lock (motor with position switch) and relay drivers on gpiozero's mock pins.
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.contactor import RelayContactor
from evsed.hal.lock import GpioLock
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot

RELAY, LOCK, UNLOCK, LOCK_SWITCH = 17, 24, 25, 5
C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


async def test_a_lock_that_reads_open_while_charging_opens_the_relay_at_once(
    mock_factory: MockFactory,
) -> None:
    clock = FakeClock()
    contactor = RelayContactor(RELAY, pin_factory=mock_factory, monotonic=clock.monotonic)
    lock = GpioLock(LOCK, UNLOCK, LOCK_SWITCH, clock=clock, pin_factory=mock_factory)
    connector = Connector(
        Settings(free_vend=True),
        pilot=Pilot(),
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
        lock=lock,
    )
    connector.on_rcd_self_test(True)
    switch = mock_factory.pin(LOCK_SWITCH)
    connector.on_pilot(C)
    assert connector.transaction is not None
    assert not contactor.energized  # the lock has not confirmed yet
    switch.drive_high()  # the position switch: locked
    await clock.advance(0.5)
    connector.supervise()
    assert contactor.energized and connector.status.status == "Charging"
    await clock.advance(60)
    switch.drive_low()  # a bounce of the position switch: not a lock failure
    connector.supervise()
    await clock.advance(0.02)
    switch.drive_high()
    connector.supervise()
    await clock.advance(1)
    connector.supervise()
    assert contactor.energized and not connector.faults
    switch.drive_low()  # the plug is no longer held
    connector.supervise()  # the next sampler ticks
    await clock.advance(0.06)
    connector.supervise()
    assert not contactor.energized, "relay closed under load with the lock open"
    assert Fault.LOCK in connector.faults
    assert connector.status.error_code == "ConnectorLockFailure"
    switch.drive_high()  # the switch reads locked again: no resume by itself
    await clock.advance(1)
    connector.supervise()
    assert not contactor.energized
