"""Pilot sensing through the real stack: GpiozeroPwmPilot drives a MockPWMPin, the bench
computes CP from that duty and the EV's level, SimMcp3xxx serves it over mock SPI, and
AdcPilotSensor reads it with gpiozero's MCP3008."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.adc import AdcChannel
from evsed.hal.interfaces import PilotSensor
from evsed.hal.pilot.pwm_gpiozero import GpiozeroPwmPilot
from evsed.hal.pilot.sense import AdcPilotSensor, cp_to_adc_volts
from evsed.hal.types import PilotState
from evsed.hwmocks.pins import BenchPins

LEVELS = {PilotState.A: 12.0, PilotState.B: 9.0, PilotState.C: 6.0, PilotState.D: 3.0}
SAMPLES = 20


class Rig:
    def __init__(self, factory: MockFactory) -> None:
        self.bench = BenchPins(factory)
        self.pilot = GpiozeroPwmPilot(18)
        self.adc = AdcChannel("MCP3008", 0, select_pin=8)
        self.sensor = AdcPilotSensor(self.adc, commanded_duty=lambda: self.pilot.duty)
        self.phases: Iterator[float] = iter(())
        self.sweep()

    def sweep(self, start: float = 0.0, step: float = 1.0 / SAMPLES) -> None:
        """Deterministic sample instants: SAMPLES reads spread evenly over one 1 ms period."""
        ticks = (start + k * step * 1e-3 for k in itertools.count())
        self.bench.adc.set_channel(0, lambda: cp_to_adc_volts(self.bench.cp_volts(next(ticks))))

    def close(self) -> None:
        self.sensor.shutdown()
        self.pilot.shutdown()
        self.bench.close()


@pytest.fixture
def rig(mock_factory: MockFactory) -> Iterator[Rig]:
    r = Rig(mock_factory)
    yield r
    r.close()


def test_protocol(rig: Rig) -> None:
    assert isinstance(rig.sensor, PilotSensor)


@pytest.mark.parametrize("state", list(LEVELS))
def test_dc_levels(rig: Rig, state: PilotState) -> None:
    rig.bench.set_cp(LEVELS[state])
    r = rig.sensor.read(SAMPLES)
    assert r.state is state
    assert r.high_v == pytest.approx(LEVELS[state], abs=0.1)
    assert not r.diode_fault


def test_state_e_short_and_state_f(rig: Rig) -> None:
    rig.bench.set_cp(0.0)
    assert rig.sensor.read(SAMPLES).state is PilotState.E
    rig.bench.set_cp(9.0)
    rig.pilot.set_duty(0.0)  # EVSE drives -12 V
    r = rig.sensor.read(SAMPLES)
    assert r.state is PilotState.F
    assert r.high_v == pytest.approx(-12.0, abs=0.1)


@pytest.mark.parametrize("duty", [0.1, 0.266, 0.5, 0.96])
@pytest.mark.parametrize("state", list(LEVELS))
def test_pwm_states(rig: Rig, state: PilotState, duty: float) -> None:
    rig.pilot.set_duty(duty)
    rig.bench.set_cp(LEVELS[state])
    rig.sweep(step=1 / 50)  # fine enough to catch the 4 % low plateau at 96 %
    r = rig.sensor.read(50)
    assert r.state is state
    assert r.high_v == pytest.approx(LEVELS[state], abs=0.1)
    assert r.low_v == pytest.approx(-12.0, abs=0.1)
    assert not r.diode_fault


@pytest.mark.parametrize("state", [PilotState.B, PilotState.C, PilotState.D])
def test_missing_diode(rig: Rig, state: PilotState) -> None:
    rig.pilot.set_duty(0.5)
    rig.bench.set_cp(LEVELS[state], diode=False)
    r = rig.sensor.read(SAMPLES)
    assert r.state is state
    assert r.diode_fault
    assert r.low_v == pytest.approx(-LEVELS[state], abs=0.1)


def test_no_diode_verdict_without_pwm(rig: Rig) -> None:
    rig.bench.set_cp(6.0, diode=False)  # duty 1.0: no low plateau to judge
    assert not rig.sensor.read(SAMPLES).diode_fault


def test_missed_high_plateau_is_inconclusive(rig: Rig) -> None:
    rig.bench.set_cp(6.0)
    rig.sensor.read(SAMPLES)
    rig.pilot.set_duty(0.1)
    rig.sweep(start=0.5e-3, step=0.02)  # every sample in the low half of the period
    r = rig.sensor.read(SAMPLES)
    assert r.state is None
    assert rig.sensor.last_state is PilotState.C


def test_all_low_without_duty_knowledge_is_f(rig: Rig) -> None:
    sensor = AdcPilotSensor(rig.adc)
    rig.pilot.set_duty(0.1)
    rig.sweep(start=0.5e-3, step=0.02)
    assert sensor.read(SAMPLES).state is PilotState.F


def test_low_reading_while_commanding_dc_is_reported_as_f(rig: Rig) -> None:
    rig.bench.adc.set_channel(0, 0.0)  # -12 V although we drive steady +12 V
    assert rig.sensor.read(SAMPLES).state is PilotState.F


class ConstantVolts:
    def __init__(self, cp_v: float) -> None:
        self.cp_v = cp_v

    def read_volts(self) -> float:
        return cp_to_adc_volts(self.cp_v)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("previous", "cp_v", "expected"),
    [
        (None, 10.7, PilotState.A),  # above the 10.5 V midpoint
        (PilotState.B, 10.7, PilotState.B),  # held by hysteresis
        (PilotState.B, 11.0, PilotState.A),  # A at -1 V tolerance still wins
        (PilotState.A, 10.2, PilotState.A),
        (PilotState.A, 10.0, PilotState.B),  # B at +1 V tolerance still wins
        (PilotState.C, 7.8, PilotState.C),
        (PilotState.C, 4.2, PilotState.C),
        (PilotState.C, 4.0, PilotState.D),
        (PilotState.D, 1.2, PilotState.D),
        (PilotState.D, 1.0, PilotState.E),
        (PilotState.E, -6.3, PilotState.E),
        (PilotState.E, -6.5, PilotState.F),
    ],
)
def test_hysteresis(previous: PilotState | None, cp_v: float, expected: PilotState) -> None:
    src = ConstantVolts(9.0)
    sensor = AdcPilotSensor(src)
    if previous is not None:
        src.cp_v = {PilotState.E: 0.0, PilotState.F: -12.0}.get(previous, LEVELS.get(previous))
        assert sensor.read(1).state is previous
    src.cp_v = cp_v
    assert sensor.read(1).state is expected


def test_bad_hysteresis_rejected() -> None:
    with pytest.raises(ValueError):
        AdcPilotSensor(ConstantVolts(0.0), hysteresis_v=0.5)


def test_adc_failure_is_inconclusive_not_traceback() -> None:
    class Broken(ConstantVolts):
        def read_volts(self) -> float:
            raise OSError("spidev gone")

    r = AdcPilotSensor(Broken(0.0)).read(5)
    assert r.state is None
    assert r.high_v != r.high_v  # NaN


def test_real_time_waveform_sees_both_plateaus(rig: Rig) -> None:
    """The bench's own perf_counter waveform: at 50 % duty a 40-read burst spanning several
    periods hits both plateaus (chance of missing one is < 1e-12)."""
    rig.bench.adc.set_channel(0, rig.bench._cp_adc_volts)
    rig.pilot.set_duty(0.5)
    rig.bench.set_cp(9.0)
    r = rig.sensor.read(40)
    assert r.state is PilotState.B
    assert r.low_v == pytest.approx(-12.0, abs=0.1)


def test_an_adc_that_stays_dead_reads_as_state_f(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(ConstantVolts):
        broken = True

        def read_volts(self) -> float:
            if self.broken:
                raise OSError("spidev gone")
            return super().read_volts()

    adc = Flaky(6.0)
    sensor = AdcPilotSensor(adc)
    states = [sensor.read(5).state for _ in range(5)]
    # One or two failed bursts are a glitch; from the third on the pilot counts as lost,
    # which makes the connector open the contactor.
    assert states == [None, None, PilotState.F, PilotState.F, PilotState.F]
    assert sum("pilot ADC read failed" in r.getMessage() for r in caplog.records) == 1
    adc.broken = False
    assert sensor.read(5).state is PilotState.C
    adc.broken = True
    assert sensor.read(5).state is None  # the count starts again after a good burst
