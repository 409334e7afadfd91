"""What the controller reports of its meters to the layers above it (the OCPP layer), and
how a reading is shown to people and scripts (`evsed status`, `evsed demo --json`).

The value type is the hardware layer's own (`evsed.hal.types.MeterSample`, frozen data, no
driver behind it); it is re-exported here so that `evsed.controller.ocpp16` depends on the
controller only and never imports `evsed.hal` (an import-linter contract).
"""

from __future__ import annotations

import math

from evsed.hal.types import MeterSample

__all__ = ["MeterSample", "drawn_a", "reading"]

#: What a meter resolves: the digits a shown reading keeps.
POWER_DIGITS = 1  # 0.1 W
ENERGY_DIGITS = 1  # 0.1 Wh
CURRENT_DIGITS = 2  # 0.01 A


def reading(value: float | None, digits: int) -> float | None:
    """A measured value as evsed shows it: rounded to what the meter resolves (a sum of
    float registers read 22080.000000000004 W), None for one it could not read (NaN is
    not JSON: a script's parser stops at it)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def drawn_a(sample: MeterSample | None) -> float | None:
    """The current drawn: the highest phase's, None when no phase could be read."""
    if sample is None:
        return None
    currents = [a for a in sample.current_a if a is not None and math.isfinite(a)]
    return reading(max(currents), CURRENT_DIGITS) if currents else None
