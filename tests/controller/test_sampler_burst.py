"""A pilot burst spans the PWM period in time, whatever a count of reads spans.

Seen in `evsed demo` under load: at 10 A (16.7 % duty) the relay opened and the pilot read F
three times in one session. A burst is a count of reads sized from a timed calibration;
with fast reads (the 64-read cap) or a calibration timed while the thread waited, it spans
less than a period, and ticks that come at nearly the same phase of the PWM keep missing
the short high plateau: inconclusive for 0.3 s, read as F, the charge broken off."""

from __future__ import annotations

from typing import Any

from evsed.controller.connector.sampler import Rates, Sampler
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock

DUTY = 1 / 6  # 10 A
PERIOD_S = 0.001


class Perf:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class PwmSensor:
    """Samples a PWM pilot (C: +6 V high plateau for DUTY of each period, -12 V low) at the
    perf counter's time; each read takes `read_s` of it."""

    def __init__(self, perf: Perf, read_s: float) -> None:
        self.perf = perf
        self.read_s = read_s
        self.bursts: list[int] = []

    def read(self, samples: int) -> PilotReading:
        self.bursts.append(samples)
        high = False
        for _ in range(samples):
            high = high or (self.perf.t % PERIOD_S) / PERIOD_S < DUTY
            self.perf.t += self.read_s
        if high:
            return PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
        return PilotReading(state=None, high_v=-12.0, low_v=-12.0)


class ChargingConnector:
    """What the sampler asks of a connector that is charging."""

    energized = True
    pilot_state = PilotState.C
    faults: dict[Any, str] = {}

    def __init__(self) -> None:
        self.states: list[PilotState | None] = []

    def on_pilot(self, reading: PilotReading) -> None:
        self.states.append(reading.state)

    def supervise(self) -> None:
        pass

    def wake_at(self) -> float | None:
        return None

    def raise_fault(self, *_: Any) -> None:
        raise AssertionError("no fault expected")


def _sampler(read_s: float) -> tuple[Sampler, ChargingConnector, PwmSensor, Perf, FakeClock]:
    perf, clock, connector = Perf(), FakeClock(), ChargingConnector()
    sensor = PwmSensor(perf, read_s)
    sampler = Sampler(
        connector,  # type: ignore[arg-type]
        sensor,
        clock,
        rates=Rates(),
        duty=lambda: DUTY,
        perf_counter=perf,
    )
    return sampler, connector, sensor, perf, clock


async def _tick_phase_locked(sampler: Sampler, perf: Perf, clock: FakeClock, n: int) -> None:
    """n ticks, each starting at the same phase of the PWM: just after the high plateau."""
    for _ in range(n):
        perf.t = (perf.t // PERIOD_S + 10) * PERIOD_S + 0.3 * PERIOD_S
        await clock.advance(sampler.tick())


async def test_phase_locked_ticks_with_fast_reads_never_read_f() -> None:
    sampler, connector, _sensor, perf, clock = _sampler(read_s=2e-6)  # a simulated ADC
    sampler.calibrate()
    await _tick_phase_locked(sampler, perf, clock, 60)  # 0.6 s at the charging rate
    assert PilotState.F not in connector.states
    assert connector.states.count(PilotState.C) == 60


async def test_a_slow_calibration_does_not_leave_the_bursts_short() -> None:
    sampler, connector, sensor, perf, clock = _sampler(read_s=40e-6)  # an SPI ADC on a Pi
    sensor.read_s = 1e-3  # the calibration timed while the thread waited: 1 ms a read
    sampler.calibrate()
    sensor.read_s = 40e-6
    await _tick_phase_locked(sampler, perf, clock, 3)
    assert sampler.plan()[1] * 40e-6 >= 1.2 * PERIOD_S  # sized from the fast reads now
    assert PilotState.F not in connector.states and None not in connector.states[1:]
