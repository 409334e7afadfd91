"""Which OCPP measurands this charger can really report, from its configuration: the
connectors' meter register maps, their phases and their temperature sensors.

The Meter*Data / StopTxn*Data keys accept exactly these (OCPP 1.6 §9.1.15: a list naming
something the charge point cannot deliver is Rejected), so a Central System that probes
them one at a time (evcc) gets what it will see in MeterValues, and one that writes all 22
at once (Home Assistant) is told no and falls back to what GetConfiguration reports.

Kept out of `evsed.controller.ocpp16` because it reads the hardware layer's register maps;
it answers in the wire's measurand names, and takes their phases from the one measurand
table (`evsed.controller.ocpp16.measurands.TABLE`). The keys are charger-wide, so a measurand one
connector's meter delivers counts (the others leave it out of their MeterValues).
"""

from __future__ import annotations

from collections.abc import Iterable

from evsed.controller.config import Config
from evsed.controller.config import Connector as ConnectorConfig
from evsed.controller.ocpp16.measurands import TABLE, PhaseStyle
from evsed.hal.meters.regmap import load_map

#: From the connector itself, whatever its meter: what the pilot offers, in A and in W.
CONNECTOR_MEASURANDS = frozenset({"Current.Offered", "Power.Offered"})

# Which register-map quantities make a measurand (any of them per phase: that phase).
_PER_PHASE = {
    "Voltage": "voltage_l{}",
    "Current.Import": "current_l{}",
}


# Measurands with a total (no phase) and per-phase values: the register-map quantity of the
# total, and the per-phase pattern. The total is reported when the meter has it, or, except
# for a power factor (which does not add up), when every phase of the connector is mapped.
_TOTAL_AND_LINE = {
    "Power.Active.Import": ("power_total", "power_l{}", True),
    "Power.Reactive.Import": ("reactive_power_total", "reactive_power_l{}", True),
    "Power.Factor": ("power_factor_total", "power_factor_l{}", False),
}
_TOTALS = {
    "energy_import": "Energy.Active.Import.Register",
    "energy_export": "Energy.Active.Export.Register",
    "frequency": "Frequency",
}


def _meter_measurands(quantities: frozenset[str], phases: int) -> set[str]:
    lines = range(1, phases + 1)
    out = {measurand for quantity, measurand in _TOTALS.items() if quantity in quantities}
    for measurand, pattern in _PER_PHASE.items():
        if any(pattern.format(k) in quantities for k in lines):
            out.add(measurand)
    for measurand, (total, pattern, sums) in _TOTAL_AND_LINE.items():
        per_phase = all(pattern.format(k) in quantities for k in lines)
        if total in quantities or (sums and per_phase):
            out.add(measurand)
    return out


def connector_measurands(cfg: ConnectorConfig) -> frozenset[str]:
    """The measurand names one connector can report."""
    out = set(CONNECTOR_MEASURANDS)
    if cfg.temperature.driver != "none":
        out.add("Temperature")
    if cfg.meter.transport != "none":
        regmap = load_map(cfg.meter.model)
        out |= _meter_measurands(frozenset(f.name for f in regmap.fields), cfg.phases)
    return frozenset(out)


def charger_measurands(config: Config) -> frozenset[str]:
    """What any connector of the charger can report (the keys are charger-wide)."""
    out: set[str] = set()
    for cfg in config.connectors:
        out |= connector_measurands(cfg)
    return frozenset(out)


def max_phases(config: Config) -> int:
    return max((c.phases for c in config.connectors), default=1)


def selectable_items(measurands: Iterable[str], phases: int) -> list[str]:
    """Every item a Meter*Data key can hold: each measurand, and each per-phase variant the
    MeterValue builder reports, as the one measurand table says (Voltage as L1-N..,
    currents, powers and the power factor as L1.. on a multi-phase connector)."""
    names = sorted(measurands)
    items: list[str] = list(names)
    lines = range(1, phases + 1)
    for name in names:
        style = TABLE[name].phases
        if style is PhaseStyle.LINE_NEUTRAL:
            items += [f"{name}.L{k}-N" for k in lines]
        elif style is PhaseStyle.LINE or (style is PhaseStyle.TOTAL_AND_LINE and phases > 1):
            items += [f"{name}.L{k}" for k in lines]
    return items
