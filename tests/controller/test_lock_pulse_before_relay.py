"""The relay does not close while a motor lock is still travelling to locked.

With a position switch, `_apply` offers nothing until the lock reads locked. Without one
(`feedback_pin = false`, `locked()` None) it offered at once: the lock's 0.5 s motor pulse
had only begun when the PWM went on, and an EV that answers the PWM quickly got its
contactor closed with the plug not yet held (IEC 61851-1: the latch engages before the
contactor closes). The driver says while its pulse runs (`GpioLock.busy`); until it ends
nothing is offered.

The real lock driver on gpiozero's mock pins; its pulse ends on the FakeClock.
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.lock import GpioLock
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot, Relay

LOCK, UNLOCK = 24, 25
C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


async def test_no_offer_until_a_motor_lock_without_feedback_has_had_its_pulse(
    mock_factory: MockFactory,
) -> None:
    clock = FakeClock()
    lock = GpioLock(LOCK, UNLOCK, pulse_s=0.5, clock=clock, pin_factory=mock_factory)
    relay, pilot = Relay(), Pilot()
    connector = Connector(
        Settings(free_vend=True),
        pilot=pilot,
        contactor=relay,
        hooks=LocalHooks(),
        clock=clock,
        lock=lock,
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(C)  # the EV is in C at once (it closed S2 before the PWM came)
    assert connector.transaction is not None
    assert mock_factory.pin(LOCK).state  # the lock's motor runs
    assert not relay.energized, "relay closed with the lock still travelling"
    assert pilot.duty == 1.0
    await clock.advance(0.3)
    connector.supervise()
    assert not relay.energized
    await clock.advance(0.25)  # the pulse has ended: the lock is where it goes
    assert not mock_factory.pin(LOCK).state
    connector.supervise()
    assert relay.energized and 0.0 < pilot.duty < 1.0


# With a position switch the first reading of "locked" was taken as the lock holding the
# plug, while the motor's pulse still ran: a switch that makes early in the travel offered
# current (the relay closed on an EV in C) before the latch had settled, and one that then
# opened again for more than LOCK_LOST_S in the rest of the travel (overtravel, bounce)
# ended the session with ConnectorLockFailure. The pulse has to be over first, switch or not.

FEEDBACK = 26


async def test_a_switch_that_makes_early_in_the_travel_is_no_lock_yet(
    mock_factory: MockFactory,
) -> None:
    clock = FakeClock()
    lock = GpioLock(LOCK, UNLOCK, FEEDBACK, pulse_s=0.5, clock=clock, pin_factory=mock_factory)
    relay, pilot = Relay(), Pilot()
    connector = Connector(
        Settings(free_vend=True),
        pilot=pilot,
        contactor=relay,
        hooks=LocalHooks(),
        clock=clock,
        lock=lock,
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(C)
    assert connector.transaction is not None and mock_factory.pin(LOCK).state
    switch = mock_factory.pin(FEEDBACK)
    await clock.advance(0.1)
    switch.drive_high()  # made early in the travel ...
    connector.supervise()
    assert not relay.energized, "relay closed with the lock's motor still running"
    await clock.advance(0.1)
    switch.drive_low()  # ... open again for 150 ms while the latch travels on
    for _ in range(5):
        await clock.advance(0.03)
        connector.supervise()
    switch.drive_high()
    await clock.advance(0.2)  # the pulse has ended, the switch reads locked
    assert not mock_factory.pin(LOCK).state
    connector.supervise()
    assert not connector.faults
    assert relay.energized and 0.0 < pilot.duty < 1.0
