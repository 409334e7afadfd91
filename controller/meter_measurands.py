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
from evsed.controller.ocpp16.keys import phase_items
from evsed.hal.meters.regmap import load_map

#: From the connector itself, whatever its meter: what the pilot offers, in A. In W
#: (Power.Offered) too where the meter reads the voltage of every phase: the MeterValue
#: builder multiplies by the measured voltages and leaves the value out without them.
CONNECTOR_MEASURANDS = frozenset({"Current.Offered"})

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


#: The register-map quantity of each phase of a measurand with per-phase values.
_LINE_QUANTITY = {
    **_PER_PHASE,
    **{measurand: pattern for measurand, (_, pattern, _) in _TOTAL_AND_LINE.items()},
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
    if all(_PER_PHASE["Voltage"].format(k) in quantities for k in lines):
        out.add("Power.Offered")
    return out


def _quantities(cfg: ConnectorConfig) -> frozenset[str]:
    """The register-map quantities the connector's meter reads (none without a meter)."""
    if cfg.meter.transport == "none":
        return frozenset()
    return frozenset(f.name for f in load_map(cfg.meter.model).fields)


def connector_measurands(cfg: ConnectorConfig) -> frozenset[str]:
    """The measurand names one connector can report."""
    out = set(CONNECTOR_MEASURANDS)
    if cfg.temperature.driver != "none":
        out.add("Temperature")
    if cfg.meter.transport != "none":
        out |= _meter_measurands(_quantities(cfg), cfg.phases)
    return frozenset(out)


def connector_items(cfg: ConnectorConfig) -> list[str]:
    """Every item a Meter*Data key can hold that this connector's MeterValues carry: each
    measurand, and each phase of it the builder reports (`phase_items`) whose register the
    meter maps. A 1-phase meter (SDM120) has no "Voltage.L2-N", a totals-only one (SDM72D)
    no "Power.Active.Import.L1", though the connector has the measurand."""
    names = sorted(connector_measurands(cfg))
    quantities = _quantities(cfg)
    items = list(names)
    for name in names:
        pattern = _LINE_QUANTITY.get(name)
        items += [
            item
            for item, line in phase_items(name, cfg.phases)
            if pattern is not None and pattern.format(line) in quantities
        ]
    return items


def charger_items(config: Config) -> list[str]:
    """What the keys accept (they are charger-wide): an item any connector delivers, each
    once, measurands first."""
    seen = dict.fromkeys(n for c in config.connectors for n in connector_measurands(c))
    phased = dict.fromkeys(i for c in config.connectors for i in connector_items(c))
    return sorted(seen) + [i for i in phased if i not in seen]


def charger_measurands(config: Config) -> frozenset[str]:
    """What any connector of the charger can report (the keys are charger-wide)."""
    out: set[str] = set()
    for cfg in config.connectors:
        out |= connector_measurands(cfg)
    return frozenset(out)


def max_phases(config: Config) -> int:
    return max((c.phases for c in config.connectors), default=1)


def selectable_items(measurands: Iterable[str], phases: int) -> list[str]:
    """Every item a Meter*Data key can hold for these measurands on ``phases`` phases,
    with every phase's register mapped (`connector_items` asks the meter)."""
    names = sorted(measurands)
    return names + [item for name in names for item, _ in phase_items(name, phases)]
