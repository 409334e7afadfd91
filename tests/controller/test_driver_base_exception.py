"""A driver that raises a BaseException (SystemExit from a vendor library) on the path of a
safety reaction does not keep the rest of the reaction from running.

`Connector._drive` (a driver call inside a reaction) and `Connector._safely` (each output in
the cut after an internal error) caught Exception only. A relay driver whose deenergize
raised SystemExit when the EV went C -> B went straight up through the reaction and through
the internal-error cut, which tried the relay first again: the pilot was never touched and
kept offering 32 A of PWM with the relay in an unknown state, and no fault was recorded.
The SystemExit still goes on up, after the cut, as the guard promises.
"""

from __future__ import annotations

import pytest

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import DUTY_F, Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
B = PilotReading(state=PilotState.B, high_v=9.0, low_v=-12.0)


class ExitingRelay:
    """A relay whose library calls sys.exit() once its I/O expander stops answering."""

    def __init__(self) -> None:
        self.energized = False
        self.broken = False

    def energize(self) -> None:
        self.energized = True

    def deenergize(self) -> None:
        if self.broken:
            raise SystemExit(1)
        self.energized = False

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass


def test_a_relay_that_raises_system_exit_on_open_still_gets_the_pilot_cut() -> None:
    relay, pilot = ExitingRelay(), Pilot()
    connector = Connector(
        Settings(free_vend=True),
        pilot=pilot,
        contactor=relay,
        hooks=LocalHooks(),
        clock=FakeClock(),
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(C)
    assert relay.energized and 0.0 < pilot.duty < 1.0  # charging at 32 A
    relay.broken = True
    with pytest.raises(SystemExit):
        connector.on_pilot(B)  # the EV stops: the relay must open, it raises instead
    assert pilot.duty == DUTY_F, "the pilot still offers current after the relay failed"
    assert Fault.INTERNAL in connector.faults
    assert connector.status.status == "Faulted"
