"""Control-pilot sensing: classify a burst of CP samples (REFERENCE §1.1, §1.4).

Why max/min of a burst: the pilot is a 1 kHz square wave. Its *high* plateau carries the
state (12/9/6/3/0 V) and its *low* plateau proves the EV's diode (-12 V). A single sample
lands on either plateau at random, so the driver keeps the maximum (state) and the
minimum (diode) of `samples` readings, like OpenEVSE and SmartEVSE do.

Why `state=None`: at 10 % duty the high plateau lasts 100 us. A burst that never hit it
sees only -12 V, which would look like state F. When the sensor knows the PWM is running
(`commanded_duty` > 0) it reports "inconclusive" instead, and the caller keeps its
previous state rather than raising a false fault. The same goes for a failed ADC read.

Why hysteresis: thresholds sit midway between nominal levels (1.5 V from each). Noise on
a level close to a threshold would flip the state back and forth, so the previous state's
band is widened by `hysteresis_v`. It must stay below 0.5 V: levels are 3 V apart and
each may be off by +-1 V (REFERENCE §1.1), so a wider band could swallow a neighbour
that is still inside its own tolerance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from evsed.hal.adc import VoltageSource
from evsed.hal.types import PilotReading, PilotState

log = logging.getLogger(__name__)

# Default front-end: 0..3.3 V at the ADC maps linearly to -12..+12 V on CP.
DEFAULT_ADC_SPAN_V = 3.3
DEFAULT_GAIN = 24.0 / DEFAULT_ADC_SPAN_V
DEFAULT_OFFSET = -12.0

NOMINAL_V: dict[PilotState, float] = {
    PilotState.A: 12.0,
    PilotState.B: 9.0,
    PilotState.C: 6.0,
    PilotState.D: 3.0,
    PilotState.E: 0.0,
    PilotState.F: -12.0,
}
_ORDER = (PilotState.A, PilotState.B, PilotState.C, PilotState.D, PilotState.E, PilotState.F)
# Lower edge of each state's band, midway to the next lower level (F has none).
DEFAULT_THRESHOLDS: dict[PilotState, float] = {
    PilotState.A: 10.5,
    PilotState.B: 7.5,
    PilotState.C: 4.5,
    PilotState.D: 1.5,
    PilotState.E: -6.0,
}
# A low plateau above this while PWM runs means the EV diode is missing or shorted
# (Tinkerforge uses -10 V; a shorted diode gives -(high level)).
DEFAULT_DIODE_LOW_MAX_V = -10.0
# One failed burst is a glitch (inconclusive); this many in a row (~30 ms while charging)
# is a broken pilot front-end, reported as F.
FAILED_BURSTS_TO_F = 3
# Max - min above this means the burst saw two plateaus, i.e. the PWM is running.
PWM_SWING_MIN_V = 4.0


def cp_to_adc_volts(
    cp_v: float, gain: float = DEFAULT_GAIN, offset: float = DEFAULT_OFFSET
) -> float:
    """Inverse of the front-end mapping, for benches and calibration."""
    return (cp_v - offset) / gain


class AdcPilotSensor:
    """PilotSensor over one ADC channel: CP volts = adc_volts * gain + offset."""

    def __init__(
        self,
        adc_channel: VoltageSource,
        gain: float = DEFAULT_GAIN,
        offset: float = DEFAULT_OFFSET,
        thresholds: dict[PilotState, float] | None = None,
        hysteresis_v: float = 0.4,
        diode_low_max_v: float = DEFAULT_DIODE_LOW_MAX_V,
        commanded_duty: Callable[[], float] | None = None,
    ) -> None:
        """`commanded_duty` returns the duty the PilotOutput currently drives (e.g.
        `lambda: pilot.duty`); without it an all-low burst is reported as state F."""
        if not 0.0 <= hysteresis_v < 0.5:
            raise ValueError("hysteresis_v must be in [0, 0.5) V, see module docstring")
        th = dict(DEFAULT_THRESHOLDS)
        th.update(thresholds or {})
        edges = [th[s] for s in _ORDER[:-1]]
        if edges != sorted(edges, reverse=True):
            raise ValueError(f"pilot thresholds must decrease from A to E: {th}")
        self._adc = adc_channel
        self._gain = gain
        self._offset = offset
        self._th = th
        self._hyst = hysteresis_v
        self._diode_low_max = diode_low_max_v
        self._commanded_duty = commanded_duty
        self._prev: PilotState | None = None
        self._failures = 0  # failed bursts in a row

    @property
    def last_state(self) -> PilotState | None:
        return self._prev

    def _band(self, state: PilotState) -> tuple[float, float]:
        i = _ORDER.index(state)
        low = self._th[state] if state is not PilotState.F else -math.inf
        high = self._th[_ORDER[i - 1]] if i > 0 else math.inf
        return low, high

    def classify(self, high_v: float) -> PilotState:
        """State from the high plateau, keeping the previous state inside its widened band."""
        if self._prev is not None:
            low, high = self._band(self._prev)
            if low - self._hyst <= high_v < high + self._hyst:
                return self._prev
        for state in _ORDER[:-1]:
            if high_v >= self._th[state]:
                return state
        return PilotState.F

    def read(self, samples: int) -> PilotReading:
        n = max(1, int(samples))
        hi = -math.inf
        lo = math.inf
        try:
            for _ in range(n):
                v = self._adc.read_volts() * self._gain + self._offset
                hi = v if v > hi else hi
                lo = v if v < lo else lo
        except Exception as exc:  # spidev/gpiozero errors: a fault value, never a traceback
            self._failures += 1
            if self._failures >= FAILED_BURSTS_TO_F:
                # A pilot we cannot read is no EV we may charge: report F, the controller
                # opens the contactor (DESIGN rule 7: when in doubt, open).
                return PilotReading(state=PilotState.F, high_v=math.nan, low_v=math.nan)
            if self._failures == 1:  # once per run of failures, not per 10 ms burst
                log.warning("pilot ADC read failed: %s", exc)
            return PilotReading(state=None, high_v=math.nan, low_v=math.nan)
        if self._failures:
            log.info("pilot ADC readable again after %d failed bursts", self._failures)
            self._failures = 0
        # The max is always >= the no-PWM levels, so the unclamped classify is correct;
        # only an all-low burst under running PWM needs the "inconclusive" escape.
        state = self.classify(hi)
        if state is PilotState.F and self._pwm_running():
            return PilotReading(state=None, high_v=hi, low_v=lo)
        self._prev = state
        saw_low_plateau = hi - lo > PWM_SWING_MIN_V
        diode_fault = (
            state in (PilotState.B, PilotState.C, PilotState.D)
            and saw_low_plateau
            and lo > self._diode_low_max
        )
        return PilotReading(state=state, high_v=hi, low_v=lo, diode_fault=diode_fault)

    def _pwm_running(self) -> bool:
        """True only for a real square wave: at duty 1.0 a -12 V reading is a genuine anomaly
        (CP driver broken) and is reported as F so the controller faults."""
        if self._commanded_duty is None:
            return False
        try:
            return 0.0 < self._commanded_duty() < 1.0
        except Exception:  # a broken provider must not break sensing: report what we measured
            return False

    def shutdown(self) -> None:
        self._adc.close()


__all__ = [
    "DEFAULT_GAIN",
    "DEFAULT_OFFSET",
    "DEFAULT_THRESHOLDS",
    "NOMINAL_V",
    "AdcPilotSensor",
    "cp_to_adc_volts",
]
