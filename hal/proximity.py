"""Proximity pilot (Type 2 cable coding) read through an ADC divider (REFERENCE §2).

Wiring assumed: supply_v --[pull_up_ohms]--+-- ADC input
                                             |
                                          PP --[Rc in the plug]-- PE
so V = supply_v * Rc / (Rc + pull_up_ohms) and Rc = pull_up_ohms * V / (supply_v - V).
"""

from __future__ import annotations

import logging
import math

from evsed.hal.adc import VoltageSource
from evsed.hal.types import ProximityReading

log = logging.getLogger(__name__)

SHORT_BELOW_OHMS = 75.0
OPEN_ABOVE_OHMS = 2200.0
# (lower bound inclusive, cable rating); a value on a boundary gets the lower rating (safe side).
_RANGES: tuple[tuple[float, int], ...] = ((1000.0, 13), (330.0, 20), (150.0, 32), (75.0, 63))


def cable_rating(ohms: float) -> ProximityReading:
    """Map a PP resistance to the cable's current rating."""
    if math.isnan(ohms):
        return ProximityReading(ohms=ohms, cable_a=None)
    if ohms < SHORT_BELOW_OHMS:
        return ProximityReading(ohms=ohms, cable_a=None, short=True)
    if ohms > OPEN_ABOVE_OHMS:
        return ProximityReading(ohms=ohms, cable_a=None)
    for lower, amps in _RANGES:
        if ohms >= lower:
            return ProximityReading(ohms=ohms, cable_a=amps)
    raise AssertionError("unreachable: ranges cover 75..2200 ohms")  # pragma: no cover


def pp_volts(ohms: float | None, pull_up_ohms: float = 1000.0, supply_v: float = 3.3) -> float:
    """Divider voltage for a PP resistance (None = open), for benches and calibration."""
    if ohms is None or math.isinf(ohms):
        return supply_v
    return supply_v * ohms / (ohms + pull_up_ohms)


class AdcProximity:
    """ProximitySensor over one ADC channel.

    A failed ADC read is reported as "no cable" (cable_a None, ohms NaN): the controller
    then offers no current, which is the safe reaction to not knowing the cable.
    """

    def __init__(
        self,
        adc_channel: VoltageSource,
        pull_up_ohms: float = 1000.0,
        supply_v: float = 3.3,
        samples: int = 4,
    ) -> None:
        if pull_up_ohms <= 0 or supply_v <= 0:
            raise ValueError("pull_up_ohms and supply_v must be positive")
        self._adc = adc_channel
        self._pull_up = pull_up_ohms
        self._supply = supply_v
        self._samples = max(1, samples)

    def ohms(self) -> float:
        try:
            v = sum(self._adc.read_volts() for _ in range(self._samples)) / self._samples
        except Exception as exc:
            log.warning("PP ADC read failed: %s", exc)
            return math.nan
        # Within 1 % of the supply is indistinguishable from open at ADC resolution.
        if v >= self._supply * 0.99:
            return math.inf
        return self._pull_up * max(v, 0.0) / (self._supply - v)

    def read(self) -> ProximityReading:
        return cable_rating(self.ohms())

    def shutdown(self) -> None:
        self._adc.close()


__all__ = ["AdcProximity", "cable_rating", "pp_volts"]
