"""Reads the pilot, proximity and temperature at rates that fit the connector's state.

Why these rates:
- Contactor closed: the EV may open S2 (C -> B) at any moment and the contactor must open
  within 100 ms (IEC 61851-1 Table A.6); our own target is p99 <= 25 ms. A 10 ms tick with a
  burst spanning one PWM period (so at least one read lands on the high plateau at any duty
  we offer) detects the change in about one tick.
- PWM on, contactor open (B2, waiting for C): the contactor must close within 3 s of C;
  50 ms is prompt for the driver and costs a fifth of the fast rate.
- No PWM (A, B1, C1): the CP is a DC level, so two reads (a glitch shows as disagreement)
  are enough, and nothing needs a reaction faster than the 3 s allowed to close or the
  ConnectionTimeOut: 200 ms keeps an idle charger under 1 % of a core. Except with the
  contactor still closed (C1 during the soft stop, the EV still drawing): the charging
  rate then, since C -> B must open it within 100 ms there too.
Proximity only matters with a plug in the socket; temperature changes slowly.

The sampler is run by the safety core (`core.py`), on its thread: `tick()` is one round and
returns the delay until the next. Nothing here touches the asyncio loop; a sensor that
blocks (a 1-wire conversion takes ~750 ms) is read by a worker thread of its own and
judged on the tick that finds its answer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from evsed.controller.clock import Clock
from evsed.controller.connector.faults import Fault
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.phases import PLUGGED_STATES
from evsed.hal.interfaces import (
    PilotSensor,
    ProximitySensor,
    ResidualCurrentMonitor,
    TemperatureSensor,
)
from evsed.hal.types import PilotReading, PilotState

log = logging.getLogger(__name__)

PWM_PERIOD_S = 0.001
#: A pilot sensor whose read raises this many times in a row (~30 ms while charging) is a
#: pilot we cannot see: read as state F, so the contactor opens (DESIGN rule 7), whatever
#: the driver does about its own failures.
SENSOR_FAILURES_TO_F = 3
#: A burst spans 1.2 PWM periods, so at any duty evsed offers (>= 10 %) it sees the high
#: plateau; inconclusive bursts (all low) for this long are a pilot the core cannot see
#: (a dead ADC reads 0 V, i.e. -12 V): read as state F, so the contactor opens. Long
#: enough that unlucky sampling of a short plateau never trips it.
INCONCLUSIVE_TO_F_S = 0.3
#: A blocking temperature read (a DS18B20 conversion takes ~750 ms) with no answer after
#: this is a sensor that cannot be read: the socket must not go unsupervised behind a read
#: that hangs (a 1-Wire bus held low). A late answer is still judged, and clears it.
TEMPERATURE_ANSWER_S = 5.0


@dataclass(frozen=True, slots=True)
class Rates:
    charging_interval_s: float = 0.010
    pwm_interval_s: float = 0.050
    idle_interval_s: float = 0.200
    idle_reads: int = 2
    proximity_interval_s: float = 1.0
    temperature_interval_s: float = 2.0
    temperature_hysteresis_c: float = 5.0


class Sampler:
    def __init__(
        self,
        connector: Connector,
        sensor: PilotSensor,
        clock: Clock,
        *,
        proximity: ProximitySensor | None = None,
        temperature: TemperatureSensor | None = None,
        rcd: ResidualCurrentMonitor | None = None,
        max_temperature_c: float = 80.0,
        rates: Rates = Rates(),
        duty: Callable[[], float] | None = None,
        read_time_s: float | None = None,
        perf_counter: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.connector = connector
        self.sensor = sensor
        self.clock = clock
        self.proximity = proximity
        self.temperature = temperature
        self.rcd = rcd
        self.max_temperature_c = max_temperature_c
        self.rates = rates
        self._duty = duty
        self._read_time_s = read_time_s
        self._perf = perf_counter
        self._next_pp = 0.0
        self._next_temp = 0.0
        self._sensor_failures = 0
        self._inconclusive_since: float | None = None
        self._temperature_reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._temperature_read: concurrent.futures.Future[float | Exception] | None = None
        self._temperature_read_at = 0.0  # clock.monotonic() when that read was handed over

    def calibrate(self, reads: int = 8) -> float:
        """Time one ADC read, so a burst can be sized to span one PWM period."""
        start = self._perf()
        self.sensor.read(reads)
        self._learn_read_time(self._perf() - start, reads, first=True)
        assert self._read_time_s is not None
        return self._read_time_s

    def _learn_read_time(self, elapsed_s: float, reads: int, *, first: bool = False) -> None:
        """Keep the fastest read time seen. A read timed while the thread was preempted or
        the GIL was held elsewhere (start-up on a busy Pi) looks slow; trusted, it sized
        every later burst too short to span a PWM period, and at a low duty whole runs of
        bursts saw only the low plateau: inconclusive, then F, and a charge broken off
        for nothing (seen in `evsed demo` under load). A slower read only lengthens the
        burst in time, which is the safe side."""
        measured = max(elapsed_s / max(1, reads), 1e-6)
        if first or self._read_time_s is None or measured < self._read_time_s:
            self._read_time_s = measured

    def plan(self) -> tuple[float, int]:
        """(interval, reads per burst) for the connector's present state."""
        duty = self._duty() if self._duty is not None else 1.0
        if 0.0 < duty < 1.0:
            read_time = self._read_time_s or 50e-6
            burst = min(64, max(4, math.ceil(1.2 * PWM_PERIOD_S / read_time)))
            if self.connector.energized:
                return self.rates.charging_interval_s, burst
            return self.rates.pwm_interval_s, burst
        if self.connector.energized:
            # No PWM but the relay closed: the soft stop (C2 -> C1), the EV still drawing.
            # Its C -> B must open the relay within 100 ms as much as while charging.
            return self.rates.charging_interval_s, self.rates.idle_reads
        return self.rates.idle_interval_s, self.rates.idle_reads

    def tick(self) -> float:
        """One round of sampling; returns the delay until the next."""
        _, reads = self.plan()
        now = self.clock.monotonic()
        try:
            started = self._perf()
            reading = self.sensor.read(reads)
            self._learn_read_time(self._perf() - started, reads)
            if reading.state is None:
                reading = self._read_on(reading, started)
        except Exception:  # a broken ADC must not end sampling, nor pass for a healthy one
            self._sensor_failures += 1
            if self._sensor_failures == 1:  # the traceback once per run of failures
                log.exception("pilot sensing failed")
            reading = None
            if self._sensor_failures >= SENSOR_FAILURES_TO_F:
                reading = PilotReading(state=PilotState.F, high_v=math.nan, low_v=math.nan)
        else:
            if self._sensor_failures:
                log.info("pilot sensing works again after %d failures", self._sensor_failures)
                self._sensor_failures = 0
        reading = self._bounded_inconclusive(reading, now)
        if self.rcd is not None and self.rcd.tripped:
            # The driver also reports the trip through the loop; the core does not wait
            # for it (a no-op while the fault is active).
            self.connector.raise_fault(Fault.RCD, "residual current")
        if reading is not None:
            arriving = (
                reading.state in PLUGGED_STATES and self.connector.pilot_state not in PLUGGED_STATES
            )
            if arriving or (self.connector.pilot_state in PLUGGED_STATES and now >= self._next_pp):
                # Read the cable before the connector hears of the EV, so that nothing is
                # ever offered beyond a cable rating it has not seen yet.
                self._read_proximity(now)
            self.connector.on_pilot(reading)
        pending = self._temperature_read
        if pending is not None and pending.done():  # a blocking sensor answered
            self._temperature_read = None
            self._judge_temperature(pending.result())
        elif pending is not None and now - self._temperature_read_at >= TEMPERATURE_ANSWER_S:
            self.connector.temperature_c = None
            self.connector.raise_fault(  # once: a no-op while the fault is active
                Fault.TEMPERATURE_SENSOR,
                f"temperature sensor: no answer within {TEMPERATURE_ANSWER_S:.0f} s",
            )
        if self.temperature is not None and now >= self._next_temp:
            self._next_temp = now + self.rates.temperature_interval_s
            self._check_temperature()
        self.connector.supervise()
        # Plan again: this tick may have closed the contactor, and the next one must then
        # come at the charging rate, not at the rate planned before the read.
        interval = self.plan()[0]
        wake_at = self.connector.wake_at()
        if wake_at is not None:
            # A deadline (the end of state F, a timeout) falls before the next tick.
            interval = min(interval, max(0.0, wake_at - self.clock.monotonic()))
        return interval

    def _read_on(self, reading: PilotReading, started: float) -> PilotReading:
        """An inconclusive burst (all low under PWM) is read on until it has spanned 1.2 PWM
        periods of real time. A burst sized by count can be shorter than a period (fast
        reads meet the 64-read cap; a slow calibration), and ticks that come at nearly the
        same phase of the PWM then keep missing a short high plateau for many ticks in a
        row, which read as F and broke a charge off. Spanning the period, only a pilot that
        really shows no plateau stays inconclusive."""
        deadline = started + 1.2 * PWM_PERIOD_S
        while reading.state is None and self._perf() < deadline:
            reading = self.sensor.read(8)
        return reading

    def _bounded_inconclusive(
        self, reading: PilotReading | None, now: float
    ) -> PilotReading | None:
        """An inconclusive reading keeps the previous state, but not for ever: before, a
        dead ADC under PWM was inconclusive on every burst, and the core charged blind."""
        if reading is None or reading.state is not None:
            self._inconclusive_since = None
            return reading
        since = self._inconclusive_since
        if since is None:
            self._inconclusive_since = since = now
        if now - since < INCONCLUSIVE_TO_F_S:
            return reading
        log.debug("pilot unreadable under PWM for %.2f s: read as state F", now - since)
        return PilotReading(state=PilotState.F, high_v=reading.high_v, low_v=reading.low_v)

    def _read_proximity(self, now: float) -> None:
        if self.proximity is None:
            return
        self._next_pp = now + self.rates.proximity_interval_s
        try:
            pp = self.proximity.read()
        except Exception:
            log.exception("proximity sensing failed")
            self.connector.on_cable(None)
            return
        self.connector.on_cable(pp.cable_a, pp.short)

    def _check_temperature(self) -> None:
        assert self.temperature is not None
        if not getattr(self.temperature, "blocking", False):
            self._judge_temperature(_read(self.temperature.read_celsius))
            return
        # A 1-wire conversion takes ~750 ms: never on the thread that samples the pilot.
        if self._temperature_read is not None:
            return  # the last conversion is still running
        if self._temperature_reader is None:
            self._temperature_reader = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="temperature"
            )
        self._temperature_read = self._temperature_reader.submit(
            _read, self.temperature.read_celsius
        )
        self._temperature_read_at = self.clock.monotonic()

    def _judge_temperature(self, reading: float | Exception) -> None:
        if isinstance(reading, Exception):  # unreadable: as fail-safe as too hot, told apart
            self.connector.temperature_c = None
            self.connector.raise_fault(
                Fault.TEMPERATURE_SENSOR, f"temperature sensor unreadable: {reading}"
            )
            return
        self.connector.temperature_c = reading
        if Fault.TEMPERATURE_SENSOR in self.connector.faults:
            self.connector.recover(Fault.TEMPERATURE_SENSOR)
        if reading >= self.max_temperature_c:
            self.connector.raise_fault(Fault.OVER_TEMPERATURE, f"{reading:.0f} C")
        elif reading <= self.max_temperature_c - self.rates.temperature_hysteresis_c:
            self.connector.recover(Fault.OVER_TEMPERATURE)

    def stop_workers(self) -> None:
        if self._temperature_reader is not None:
            self._temperature_reader.shutdown(wait=False, cancel_futures=True)
            self._temperature_reader = None
            self._temperature_read = None


def _read(read_celsius: Callable[[], float]) -> float | Exception:
    try:
        return read_celsius()
    except Exception as exc:
        return exc
