"""Energy meters over Modbus (RTU or TCP), described by register maps shipped as data.

Entry points (imported from their modules to keep this package import cheap):
- `evsed.hal.meters.regmap.load_map(name_or_path)` -> RegisterMap
- `evsed.hal.meters.modbus.ModbusMeter(regmap, transport, ...)` implements
  evsed.hal.interfaces.EnergyMeter
- `evsed.hal.meters.poller.MeterPoller(meter, sink, clock, ...)` polls and reports faults
"""

from __future__ import annotations


class MeterError(Exception):
    """The meter gave no usable answer: silence, exception response, short or garbage data."""


__all__ = ["MeterError"]
