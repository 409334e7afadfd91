"""Values the charger hands out about one connector at one moment.

Read by the OCPP layer through `evsed.controller.ocpp16.port.ChargePointPort`; defined down
here so that the charger, which builds them, never imports the OCPP layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from evsed.controller.readings import MeterSample


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation the connector holds (OCPP ReserveNow)."""

    reservation_id: int
    id_tag: str
    parent_id_tag: str | None


@dataclass(frozen=True, slots=True)
class Metering:
    """What a MeterValue of one connector is built from."""

    sample: MeterSample | None  # the last meter sample, None before the first
    energy_wh: float | None  # the last energy register, None when the meter never answered
    offered_a: float  # what the pilot offers now (0 when suspended)
    temperature_c: float | None
    phases: int  # phases wired to the connector
