"""Temperature sensors: an NTC on an ADC channel and a DS18B20 on the 1-Wire bus.

Both raise SensorError for anything that is not a believable temperature (open or
shorted NTC, missing 1-Wire device, garbage in sysfs): the controller turns that into a
DeviceFault("temperature", ...) and, failing safe, stops charging.
"""

from __future__ import annotations

import math
from pathlib import Path

from evsed.hal.adc import VoltageSource

KELVIN = 273.15


class SensorError(Exception):
    """A temperature sensor gave no usable reading."""


def ntc_volts(
    celsius: float,
    beta: float = 3950.0,
    r25: float = 10_000.0,
    series_r: float = 10_000.0,
    vref: float = 3.3,
) -> float:
    """Divider voltage AdcNtcTemperature expects at `celsius` (for benches and calibration)."""
    r = r25 * math.exp(beta * (1.0 / (celsius + KELVIN) - 1.0 / (25.0 + KELVIN)))
    return vref * r / (r + series_r)


class AdcNtcTemperature:
    """NTC thermistor from ADC input to GND, `series_r` from `vref` to the ADC input.

    R_ntc = series_r * V / (vref - V); T = 1 / (1/T25 + ln(R/r25) / beta).
    """

    def __init__(
        self,
        adc_channel: VoltageSource,
        beta: float = 3950.0,
        r25: float = 10_000.0,
        series_r: float = 10_000.0,
        vref: float = 3.3,
        min_c: float = -40.0,
        max_c: float = 150.0,
    ) -> None:
        self._adc = adc_channel
        self._beta = beta
        self._r25 = r25
        self._series_r = series_r
        self._vref = vref
        self._min_c = min_c
        self._max_c = max_c

    def read_celsius(self) -> float:
        try:
            v = self._adc.read_volts()
        except Exception as exc:
            raise SensorError(f"NTC ADC read failed: {exc}") from exc
        # The ADC saturates 1 LSB short of vref; treat the last ~1 % at either end as a wire fault.
        if v <= self._vref * 0.005:
            raise SensorError(f"NTC shorted ({v:.3f} V)")
        if v >= self._vref * 0.995:
            raise SensorError(f"NTC open ({v:.3f} V)")
        r = self._series_r * v / (self._vref - v)
        c = 1.0 / (1.0 / (25.0 + KELVIN) + math.log(r / self._r25) / self._beta) - KELVIN
        if not self._min_c <= c <= self._max_c:
            raise SensorError(f"NTC reading {c:.1f} C outside {self._min_c}..{self._max_c} C")
        return c

    def shutdown(self) -> None:
        self._adc.close()


class W1Ds18b20:
    """DS18B20 through the kernel w1-therm driver: `<root>/<device_id>/temperature`.

    On real hardware reading the file starts a conversion and blocks ~750 ms: call
    `read_celsius` via `asyncio.to_thread`, never directly on the event loop.
    """

    # 85.000 C is the power-on value of the scratchpad: a conversion that never ran.
    POWER_ON_RESET_MILLI_C = 85_000
    # Callers read a blocking sensor off the event loop (see evsed.controller.connector.sampler).
    blocking = True

    def __init__(self, device_id: str, root: Path = Path("/sys/bus/w1/devices")) -> None:
        self.device_id = device_id
        self._path = Path(root) / device_id / "temperature"

    def read_celsius(self) -> float:
        try:
            text = self._path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SensorError(f"DS18B20 {self.device_id}: {exc}") from exc
        try:
            milli = int(text)
        except ValueError:
            raise SensorError(f"DS18B20 {self.device_id}: unreadable value {text!r}") from None
        if milli == self.POWER_ON_RESET_MILLI_C:
            raise SensorError(f"DS18B20 {self.device_id}: power-on value 85 C, no conversion")
        if not -55_000 <= milli <= 125_000:  # the chip's measuring range
            raise SensorError(f"DS18B20 {self.device_id}: {milli / 1000} C out of range")
        return milli / 1000.0

    def shutdown(self) -> None:
        pass


__all__ = ["AdcNtcTemperature", "SensorError", "W1Ds18b20", "ntc_volts"]
