"""Pilot PWM through gpiozero's PWMOutputDevice (the bench; software PWM on a Pi).

Resolution: gpiozero's lgpio factory sends int(value * 100) to lgpio, so duty moves in
1 % steps and 26.67 % becomes 26 %; pigpio gives 200 steps at 1 kHz. The `resolution`
attribute tells the controller what to floor to (evsed.hal.pilot.duty.current_to_duty).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gpiozero import Device, PWMOutputDevice

log = logging.getLogger(__name__)

# Factory class name -> duty step. Anything unknown (mock, RPi.GPIO float duty) gets 0.1 %.
_RESOLUTION_BY_FACTORY = {"LGPIOFactory": 0.01, "PiGPIOFactory": 1 / 200}
DEFAULT_RESOLUTION = 0.001


def _floor_to(duty: float, resolution: float) -> float:
    n = round(1.0 / resolution)
    return math.floor(duty * n + 1e-9) / n


class GpiozeroPwmPilot:
    """PilotOutput on a GPIO: duty 1.0 = steady high (+12 V), 0.0 = steady low (-12 V, F).

    Starts at duty 1.0 (no current offered). `shutdown()` drives steady +12 V, then closes
    the device: from then on the GPIO is an input and the pilot driver's own bias resistor
    decides the level (wire it so a released GPIO gives +12 V or "driver off").
    """

    def __init__(
        self,
        pin: int | str,
        frequency: float = 1000,
        pin_factory: Any = None,
        resolution: float | None = None,
    ) -> None:
        self._dev = PWMOutputDevice(
            pin, active_high=True, initial_value=1.0, frequency=frequency, pin_factory=pin_factory
        )
        if resolution is None:
            factory = self._dev.pin_factory or Device.pin_factory
            resolution = _RESOLUTION_BY_FACTORY.get(type(factory).__name__, DEFAULT_RESOLUTION)
        self.resolution: float = resolution
        self.frequency = frequency
        self._duty = 1.0

    @property
    def duty(self) -> float:
        return self._duty

    def set_duty(self, duty: float) -> None:
        nan = math.isnan(duty)
        duty = 1.0 if nan else _floor_to(min(max(duty, 0.0), 1.0), self.resolution)
        if duty != self._duty:
            self._dev.value = duty
            self._duty = duty
        if nan:  # logged after the safe level is driven, never before
            log.error("pilot duty NaN requested; driving steady +12 V instead")

    def shutdown(self) -> None:
        if self._dev.closed:
            return
        try:
            self._dev.value = 1.0
            self._duty = 1.0
        finally:
            self._dev.close()


__all__ = ["GpiozeroPwmPilot"]
