"""What the controller reports of its meters to the layers above it (the OCPP layer).

The value type is the hardware layer's own (`evsed.hal.types.MeterSample`, frozen data, no
driver behind it); it is re-exported here so that `evsed.controller.ocpp16` depends on the
controller only and never imports `evsed.hal` (an import-linter contract).
"""

from __future__ import annotations

from evsed.hal.types import MeterSample

__all__ = ["MeterSample"]
