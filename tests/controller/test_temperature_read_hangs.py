"""A blocking temperature sensor whose read never returns is a sensor fault, not silence.

A DS18B20 read (the kernel's w1-therm, ~750 ms) runs in a worker thread and is judged on
the tick that finds its answer; while it runs no new read starts. A read that hung (a 1-Wire
bus held low, a driver stuck in the kernel) was never judged at all: the socket's
temperature went unsupervised for the rest of the session, the charge went on at full
current with no reading and no fault. Past `TEMPERATURE_ANSWER_S` without an answer the
sensor now counts as unreadable (Fault.TEMPERATURE_SENSOR: nothing flows); an answer that
comes later is judged as usual and clears it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.sampler import TEMPERATURE_ANSWER_S, Rates, Sampler
from evsed.controller.connector.settings import Settings
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot, Relay

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


class Sensor:
    def read(self, samples: int) -> PilotReading:
        return C

    def shutdown(self) -> None:
        pass


class HangingDs18b20:
    """A 1-Wire sensor whose read blocks until `release` is set."""

    blocking = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reading = threading.Event()
        self.answered = threading.Event()

    def read_celsius(self) -> float:
        self.reading.set()
        self.release.wait(30)
        self.answered.set()
        return 35.0

    def shutdown(self) -> None:
        self.release.set()


async def test_a_temperature_read_that_never_returns_stops_the_charge() -> None:
    clock = FakeClock()
    relay, pilot = Relay(), Pilot()
    connector = Connector(
        Settings(free_vend=True), pilot=pilot, contactor=relay, hooks=LocalHooks(), clock=clock
    )
    connector.on_rcd_self_test(True)
    ds18b20 = HangingDs18b20()
    sampler = Sampler(
        connector, Sensor(), clock, temperature=ds18b20, rates=Rates(), duty=lambda: pilot.duty
    )
    try:
        sampler.tick()
        assert await asyncio.to_thread(ds18b20.reading.wait, 5)
        assert relay.energized  # charging; the read hangs
        elapsed = 0.0
        while elapsed < TEMPERATURE_ANSWER_S + 1.0:
            step = sampler.tick()
            await clock.advance(step)
            elapsed += step
        assert Fault.TEMPERATURE_SENSOR in connector.faults, "charging with no temperature"
        assert not relay.energized
        pending = sampler._temperature_read
        assert pending is not None  # still awaited: a late answer is judged
        ds18b20.release.set()  # it answers at last: judged, and the fault clears
        await asyncio.to_thread(concurrent.futures.wait, [pending], 5)
        assert pending.done()
        sampler.tick()
        assert Fault.TEMPERATURE_SENSOR not in connector.faults
        assert connector.temperature_c == 35.0
    finally:
        ds18b20.release.set()
        sampler.stop_workers()
