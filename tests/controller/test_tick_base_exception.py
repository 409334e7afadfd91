"""One connector's tick that raises a BaseException leaves the other connectors alone.

A pilot sensor whose library raises SystemExit (the sampler catches Exception around the
read) went up through connector 2's guard, which cut connector 2 and recorded the fault,
and on through `SafetyCore._step` to the thread's last-resort handler: that cut every
connector *without* a fault, logged a traceback, and began the next step at once, since
connector 2's next tick was never planned. Connector 1, charging, had its PWM and relay
turned on again by its own next tick and cut again by connector 2's failure, step after
step: its contactor cycled under load at the rate of a busy loop, with a traceback each
time, until the freeze guard (connector 2 never completed a tick) faulted both.

The core on its own thread in real time (the production path); the test waits on events.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from evsed.controller.clock import SystemClock
from evsed.controller.connector.core import SafetyCore
from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.sampler import Sampler
from evsed.controller.connector.settings import Settings
from evsed.hal.types import PilotReading, PilotState
from tests.support.outputs import Pilot

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
READS = 40  # connector 2's failed ticks before the test looks


class Relay:
    def __init__(self) -> None:
        self.energized = False
        self.closes = 0

    def energize(self) -> None:
        if not self.energized:
            self.closes += 1
        self.energized = True

    def deenergize(self) -> None:
        self.energized = False

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass


class Sensor:
    """A pilot in state C; or a sensor whose library calls sys.exit() on every read."""

    def __init__(self, exits: bool = False) -> None:
        self.exits = exits
        self.reads = 0
        self.enough = threading.Event()

    def read(self, samples: int) -> PilotReading:
        self.reads += 1
        if self.reads >= READS:
            self.enough.set()
        if self.exits:
            raise SystemExit(1)
        return C

    def shutdown(self) -> None:
        pass


def connector(cid: int, clock: SystemClock) -> tuple[Connector, Relay, Pilot]:
    relay, pilot = Relay(), Pilot()
    c = Connector(
        Settings(connector_id=cid, free_vend=True),
        pilot=pilot,
        contactor=relay,
        hooks=LocalHooks(),
        clock=clock,
    )
    c.on_rcd_self_test(True)
    return c, relay, pilot


async def test_a_tick_raising_system_exit_leaves_the_other_connector_charging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SystemClock()
    core = SafetyCore(clock, threaded=True)
    c1, relay1, pilot1 = connector(1, clock)
    c2, relay2, pilot2 = connector(2, clock)
    s1, s2 = Sensor(), Sensor(exits=True)
    core.add(c1, Sampler(c1, s1, clock, duty=lambda: pilot1.duty))
    core.add(c2, Sampler(c2, s2, clock, duty=lambda: pilot2.duty))
    c1.on_pilot(C)  # before start the core runs inline: connector 1 charges
    assert relay1.energized and relay1.closes == 1
    caplog.set_level(logging.ERROR)
    core.start()
    try:
        assert await asyncio.to_thread(s2.enough.wait, 10.0)
        assert await asyncio.to_thread(core.wait_ticking, 5.0)
        closes, errors = relay1.closes, len(caplog.records)
    finally:
        await core.stop()
    assert Fault.INTERNAL in c2.faults and not relay2.energized  # the broken one is cut
    assert pilot2.duty in (0.0, 1.0)
    assert relay1.energized and closes == 1, f"connector 1's relay closed {closes} times"
    assert Fault.INTERNAL not in c1.faults
    assert errors <= 2, f"{errors} error lines for one failure"
