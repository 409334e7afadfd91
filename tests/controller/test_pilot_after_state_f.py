"""The contactor closes only on a pilot read since the connector last drove state F.

While evsed drives state F (-12 V, at least 300 ms after any fault) the CP shows its own
level, not the EV's: `on_pilot` ignores those readings. A fault that suspends the session
(a hot socket, a meter that stopped answering) and clears within that time left the
connector with the state it read *before* the F, and the step that ended the F turned the
PWM on and closed the relay at once, before any reading: an EV that had opened S2 meanwhile
(state B: many do on seeing -12 V) or even left got its contactor closed.

The real relay driver on gpiozero's mock pins; the pilot output and sensor are plain values.
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import DUTY_F, Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.contactor import RelayContactor
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot

RELAY = 17

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
B = PilotReading(state=PilotState.B, high_v=9.0, low_v=-12.0)
OWN_F = PilotReading(state=PilotState.F, high_v=-12.0, low_v=-12.0)  # our own -12 V


def charging(factory: MockFactory) -> tuple[Connector, RelayContactor, Pilot, FakeClock]:
    clock = FakeClock()
    contactor = RelayContactor(RELAY, pin_factory=factory, monotonic=clock.monotonic)
    pilot = Pilot()
    connector = Connector(
        Settings(free_vend=True),
        pilot=pilot,
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(C)
    assert connector.transaction is not None
    assert contactor.energized and 0.0 < pilot.duty < 1.0
    return connector, contactor, pilot, clock


async def test_after_state_f_the_relay_waits_for_a_fresh_state_c(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, pilot, clock = charging(mock_factory)
    connector.raise_fault(Fault.OVER_TEMPERATURE, "81 C")
    assert not contactor.energized and pilot.duty == DUTY_F
    # During the F the sensor sees evsed's -12 V; the EV opens S2 (B), unseen.
    connector.on_pilot(OWN_F)
    connector.recover(Fault.OVER_TEMPERATURE)  # cooled down within the 300 ms
    assert not contactor.energized, "relay closed under evsed's own -12 V"
    assert pilot.duty == DUTY_F  # the F lasts its 300 ms all the same
    await clock.advance(connector.settings.fault_state_f_s)
    connector.supervise()  # the step that ends state F, before any new reading
    assert not contactor.energized, "relay closed on a pilot state read before the F"
    assert not mock_factory.pin(RELAY).state
    # The PWM may come back (the EV needs it to ask again), nothing more.
    connector.on_pilot(B)
    connector.supervise()
    assert not contactor.energized
    connector.on_pilot(C)  # the EV asks again: now it may close
    assert contactor.energized
    assert connector.transaction is not None  # suspended and resumed, never ended


async def test_an_ev_still_in_c_after_the_f_resumes_on_its_first_reading(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, pilot, clock = charging(mock_factory)
    connector.raise_fault(Fault.METER, "no answer")
    connector.recover(Fault.METER)
    await clock.advance(connector.settings.fault_state_f_s)
    connector.supervise()
    assert not contactor.energized
    assert 0.0 < pilot.duty < 1.0  # offering again
    connector.on_pilot(C)  # the same state as before the F: still a fresh reading
    assert contactor.energized
