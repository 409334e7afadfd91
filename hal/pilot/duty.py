"""IEC 61851-1 pilot duty cycle <-> allowed current (REFERENCE §1.2).

The EV applies the standard's formula to the duty it *measures*, so the EVSE floors the
duty to its PWM resolution: rounding up would let the EV draw more than allowed.
Duties are fractions 0..1 (not percent) because that is what PilotOutput.set_duty takes.
"""

from __future__ import annotations

import math
from fractions import Fraction

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0
LOW_RANGE_MAX_A = 51.0
HIGH_RANGE_MIN_A = 52.5  # 51 A < I < 52.5 A has no duty value: clamped to 51 A (as EVerest)
NO_PWM = 1.0  # steady +12 V: no current offered (B1/C1)


def _steps(resolution: float) -> int:
    """Resolution is 1/N of the period (0.001 = 0.1 %, 0.01 = lgpio's 1 % steps)."""
    if not (math.isfinite(resolution) and 0.0 < resolution <= 0.1):
        raise ValueError(f"PWM resolution must be in (0, 0.1], got {resolution!r}")
    return max(1, round(1.0 / resolution))


def current_to_duty(amps: float, resolution: float = 0.001) -> float:
    """Duty (0..1) that tells the EV it may draw at most `amps` per phase.

    Below 6 A (or NaN) there is no valid duty: 1.0 (no PWM). Above 80 A caps at 80 A.
    Computed in exact fractions so that 6 A gives exactly 10.0 % and never 9.9 %.
    """
    if not math.isfinite(amps) or amps < MIN_CURRENT_A:
        return NO_PWM
    n = _steps(resolution)
    a = Fraction(min(amps, MAX_CURRENT_A))
    if a >= HIGH_RANGE_MIN_A:
        exact = a / 250 + Fraction(64, 100)  # D% = I / 2.5 + 64
    else:
        exact = min(a, Fraction(LOW_RANGE_MAX_A)) / 60  # D% = I / 0.6
    return math.floor(exact * n) / n


def duty_to_current(duty: float) -> float | None:
    """Current the EV reads from `duty` (0..1); None = no charging or digital comms (3-7 %)."""
    if not math.isfinite(duty):
        return None
    # Rounding to 1e-9 removes float noise (0.1 * 60 = 6.000000000000001) without ever
    # crossing a table boundary that a real duty could sit on.
    d = round(duty * 100.0, 9)
    if d < 8.0:  # < 3 %: none; 3-7 %: digital communication; 7-8 %: none
        return None
    if d < 10.0:
        return 6.0
    if d <= 85.0:
        return round(d * 0.6, 9)
    if d <= 96.0:
        return round((d - 64.0) * 2.5, 9)
    if d <= 97.0:
        return 80.0
    return None


__all__ = ["MAX_CURRENT_A", "MIN_CURRENT_A", "NO_PWM", "current_to_duty", "duty_to_current"]
