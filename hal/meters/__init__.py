"""Energy meters over Modbus (RTU or TCP), described by register maps shipped as data.

Entry points (imported from their modules to keep this package import cheap):
- `hal.meters.regmap.load_map(name_or_path)` -> RegisterMap
- `hal.meters.modbus.ModbusMeter(regmap, transport, ...)` implements hal.interfaces.EnergyMeter
- `hal.meters.poller.MeterPoller(meter, sink, clock, ...)` polls and reports faults
"""

from __future__ import annotations


class MeterError(Exception):
    """The meter gave no usable answer: silence, exception response, short or garbage data."""


__all__ = ["MeterError"]
