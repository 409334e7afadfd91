"""The one table of OCPP 1.6 measurands and phases: what the spec names, and how evsed reports
each measurand it can build (spec §7.31 Measurand, §7.34 Phase, §7.43 UnitOfMeasure, §4.7).

Both the configuration keys (which Meter*Data / StopTxn*Data items a CS may set) and the
MeterValue builder (units, rounding, phases, location) read this table, so the two cannot
drift apart.

`REPORTED` is what a CS may configure: a measurand evsed has a source for. SoC has a row
(the builder can format a value it is given) but no source: IEC 61851 AC charging carries
no state of charge, so the keys refuse it rather than accept an item that never appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Spec §7.31, in the spec's order (tests check it against ocpp.v16.enums.Measurand).
SPEC_MEASURANDS: tuple[str, ...] = (
    "Current.Export",
    "Current.Import",
    "Current.Offered",
    "Energy.Active.Export.Register",
    "Energy.Active.Import.Register",
    "Energy.Reactive.Export.Register",
    "Energy.Reactive.Import.Register",
    "Energy.Active.Export.Interval",
    "Energy.Active.Import.Interval",
    "Energy.Reactive.Export.Interval",
    "Energy.Reactive.Import.Interval",
    "Frequency",
    "Power.Active.Export",
    "Power.Active.Import",
    "Power.Factor",
    "Power.Offered",
    "Power.Reactive.Export",
    "Power.Reactive.Import",
    "RPM",
    "SoC",
    "Temperature",
    "Voltage",
)

# Spec §7.34: the phase a measurand item may be narrowed to ("Voltage.L1", §9.1.17).
PHASES = frozenset({"L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1"})
LINE = ("L1", "L2", "L3")
LINE_NEUTRAL = ("L1-N", "L2-N", "L3-N")


class PhaseStyle(StrEnum):
    """How a measurand's values are split over the phases (§4.7, meter's point of view)."""

    NONE = "none"  # one value, no phase
    LINE = "line"  # one value per phase drawn: L1, L2, L3
    LINE_NEUTRAL = "line-neutral"  # one value per phase, phase to neutral: L1-N ...
    TOTAL_AND_LINE = "total+line"  # a total without phase, plus L1.. on a multi-phase connector


class Source(StrEnum):
    """Where evsed gets the value from."""

    METER = "meter"  # the connector's energy meter
    CONNECTOR = "connector"  # the connector itself (offered current, its temperature sensor)
    NONE = "none"  # nothing supplies it on this hardware


@dataclass(frozen=True, slots=True)
class MeasurandRow:
    name: str
    unit: str | None  # None: the spec defines no unit (Frequency is Hertz, §7.31)
    decimals: int
    phases: PhaseStyle
    location: str  # §7.30
    non_negative: bool  # import measurands never go below zero (a signed meter reports export)
    source: Source


_M, _C, _NO = Source.METER, Source.CONNECTOR, Source.NONE
_P = PhaseStyle

TABLE: dict[str, MeasurandRow] = {
    row.name: row
    for row in (
        MeasurandRow("Current.Import", "A", 1, _P.LINE, "Outlet", True, _M),
        MeasurandRow("Current.Offered", "A", 1, _P.NONE, "Outlet", True, _C),
        MeasurandRow("Energy.Active.Import.Register", "Wh", 0, _P.NONE, "Outlet", True, _M),
        MeasurandRow("Energy.Active.Import.Interval", "Wh", 0, _P.NONE, "Outlet", True, _M),
        # Energy sent back from the EV side (V2G, or PV behind the meter): its own register.
        MeasurandRow("Energy.Active.Export.Register", "Wh", 0, _P.NONE, "Outlet", True, _M),
        MeasurandRow("Frequency", None, 2, _P.NONE, "Outlet", False, _M),
        MeasurandRow("Power.Active.Import", "W", 0, _P.TOTAL_AND_LINE, "Outlet", True, _M),
        MeasurandRow("Power.Offered", "W", 0, _P.NONE, "Outlet", True, _C),
        # A ratio: OCPP 1.6 has no UnitOfMeasure for it (§7.43), so no unit, like Frequency.
        # Signed as the meter gives it (export or a leading load shows negative).
        MeasurandRow("Power.Factor", None, 2, _P.TOTAL_AND_LINE, "Outlet", False, _M),
        # var, never kvar (the register map turns kvar into var).
        MeasurandRow("Power.Reactive.Import", "var", 0, _P.TOTAL_AND_LINE, "Outlet", True, _M),
        # The charge point's own temperature (§7.31 "inside Charge Point"): location Body.
        MeasurandRow("Temperature", "Celsius", 1, _P.NONE, "Body", False, _C),
        MeasurandRow("Voltage", "V", 1, _P.LINE_NEUTRAL, "Outlet", True, _M),
        MeasurandRow("SoC", "Percent", 0, _P.NONE, "EV", True, _NO),
    )
}

#: What the MeterValue builder can format (given the value).
BUILDABLE: frozenset[str] = frozenset(TABLE)
#: What a CS may configure in Meter*Data / StopTxn*Data: a source exists.
REPORTED: frozenset[str] = frozenset(n for n, row in TABLE.items() if row.source is not _NO)
