"""Values that cross the hardware boundary: readings and events from drivers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PilotState(StrEnum):
    """IEC 61851-1 control-pilot states, classified from the CP high level."""

    A = "A"  # +12 V: no EV
    B = "B"  # +9 V: EV plugged, not ready
    C = "C"  # +6 V: EV ready
    D = "D"  # +3 V: EV ready, ventilation required
    E = "E"  # 0 V: CP shorted to PE, or EVSE unpowered
    F = "F"  # -12 V: EVSE not available


@dataclass(frozen=True, slots=True)
class PilotReading:
    """One burst of CP samples.

    `state` is None when the burst was inconclusive (PWM running at low duty and no
    sample hit the high plateau): callers keep the previous state rather than guess.
    """

    state: PilotState | None
    high_v: float
    low_v: float
    diode_fault: bool = False


@dataclass(frozen=True, slots=True)
class ProximityReading:
    """Cable coding from the PP resistor. `cable_a` None means no cable (open)."""

    ohms: float
    cable_a: int | None
    short: bool = False


class ContactorFault(StrEnum):
    WELDED = "welded"  # feedback closed while commanded open
    FAILED_TO_CLOSE = "failed_to_close"  # feedback open while commanded closed


Phases3 = tuple[float | None, float | None, float | None]


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One poll of an energy meter, in SI units. Energy is always Wh, never kWh; reactive
    power is var, never kvar; the power factor is a plain ratio (-1..1, signed as the meter
    gives it). None: the meter does not provide the value (or could not read it)."""

    voltage_v: Phases3 = (None, None, None)
    current_a: Phases3 = (None, None, None)
    power_w: Phases3 = (None, None, None)
    power_total_w: float | None = None
    energy_import_wh: float | None = None
    frequency_hz: float | None = None
    energy_export_wh: float | None = None
    reactive_power_var: Phases3 = (None, None, None)
    reactive_power_total_var: float | None = None
    power_factor: Phases3 = (None, None, None)
    power_factor_total: float | None = None


@dataclass(frozen=True, slots=True)
class TagPresented:
    """A card arrived at a reader. One event per presentation, not per frame."""

    id_tag: str  # OCPP idTag form: uppercase hex (or the reader's number), <= 20 chars
    reader: str


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A part stopped working (`active`) or recovered (`active=False`)."""

    device: str  # "reader", "meter", "rcd", "contactor", "lock", "temperature", ...
    active: bool
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)
