"""A Meter*Data item narrowed to a phase is Accepted only where the configured meter reads
that phase and evsed reports it (OCPP 1.6: a measurand the charge point cannot deliver is
not supported). Before, any phase of an accepted measurand was Accepted up to the
connector's phase count ("Power.Active.Import.L3" on a totals-only SDM72D, "Voltage.L1-L2",
"Current.Import.N", "Energy.Active.Import.Register.L1") and then never sent.

A list holding one undeliverable item is Rejected as a whole: ChangeConfiguration has no
partial answer, and Home Assistant takes Accepted to mean its whole list is in effect (on
Rejected it reads GetConfiguration instead)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.meter_measurands import charger_items, charger_measurands, max_phases
from evsed.controller.ocpp16.app import OcppApp
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.measurands import PHASES, SPEC_MEASURANDS
from evsed.controller.ocpp16.metering import MeterValueBuilder
from evsed.controller.readings import MeterSample
from evsed.controller.store import Store
from evsed.hal.meters.regmap import builtin_maps, load_map
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock

# Every item a CS could write: each measurand alone and narrowed to each OCPP phase.
UNIVERSE = [*SPEC_MEASURANDS, *(f"{m}.{p}" for m in SPEC_MEASURANDS for p in sorted(PHASES))]
KEY = "MeterValuesSampledData"
# What Home Assistant's users usually select, and what evcc probes (one at a time).
HOME_ASSISTANT = (
    "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered,"
    "Power.Offered,Frequency,Temperature"
)
EVCC = ("Power.Active.Import", "Energy.Active.Import.Register", "Current.Import", "Voltage")
EVCC_ALSO = ("Current.Offered", "Power.Offered")


def app_for(tmp_path: Path, **connector: Any) -> OcppApp:
    meter = {"port": 0, "poll_interval_s": 1.0, **connector.pop("meter", {})}
    config = bench_config(connectors=[{"meter": meter, **connector}])
    return OcppApp(config, FakeClock(), tmp_path / "state")


@pytest.fixture
def app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OcppApp]:
    a = app_for(tmp_path, **request.param)
    yield a
    a.close()


def sample_of(model: str) -> MeterSample:
    """A reading with a value for exactly what the meter's register map reads."""
    names = {f.name for f in load_map(model).fields}

    def get(name: str, value: float) -> float | None:
        return value if name in names else None

    def lines(prefix: str, value: float) -> tuple[float | None, float | None, float | None]:
        return (get(f"{prefix}_l1", value), get(f"{prefix}_l2", value), get(f"{prefix}_l3", value))

    return MeterSample(
        voltage_v=lines("voltage", 230.0),
        current_a=lines("current", 10.0),
        power_w=lines("power", 2300.0),
        power_total_w=get("power_total", 6900.0),
        energy_import_wh=get("energy_import", 1000.0),
        frequency_hz=get("frequency", 50.0),
        energy_export_wh=get("energy_export", 5.0),
        reactive_power_var=lines("reactive_power", 100.0),
        reactive_power_total_var=get("reactive_power_total", 300.0),
        power_factor=lines("power_factor", 0.99),
        power_factor_total=get("power_factor_total", 0.99),
    )


@pytest.mark.parametrize("phases", [1, 3])
@pytest.mark.parametrize("model", builtin_maps())
def test_every_accepted_item_is_in_the_meter_values(
    tmp_path: Path, model: str, phases: int
) -> None:
    config = bench_config(connectors=[{"phases": phases, "meter": {"model": model, "port": 0}}])
    store = Store(tmp_path / "evsed.db")
    try:
        keys = ConfigurationKeys(
            store,
            number_of_connectors=1,
            measurands=charger_measurands(config),
            phases=max_phases(config),
            items=charger_items(config),
        )
        accepted = [i for i in UNIVERSE if keys.change(KEY, i).value == "Accepted"]
    finally:
        store.close()
    assert accepted, model
    sample = sample_of(model)
    never_sent = []
    for item in accepted:
        mv = MeterValueBuilder([item], phases).build(
            sample,
            "Sample.Periodic",
            timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            offered_a=16.0,
            temperature_c=30.0,
        )
        if mv is None:
            never_sent.append(item)
    assert never_sent == [], (model, phases)


@pytest.mark.parametrize(
    ("app", "bad"),
    [
        (
            {},
            [
                "Voltage.L1-L2",
                "Voltage.N",
                "Current.Import.N",
                "Current.Import.L1-N",
                "Energy.Active.Import.Register.L1",
                "Current.Offered.L2",
                "Frequency.L1",
            ],
        ),
        (
            {"phases": 1, "meter": {"model": "sdm120"}},
            ["Power.Active.Import.L1", "Power.Factor.L1", "Voltage.L2-N", "Current.Import.L2"],
        ),
        ({"meter": {"model": "sdm72d"}}, ["Power.Active.Import.L1", "Power.Active.Import.L3"]),
    ],
    indirect=["app"],
)
def test_a_phase_the_meter_cannot_deliver_is_rejected(app: OcppApp, bad: list[str]) -> None:
    keys = app.keys
    before = keys.csl(KEY)
    for item in bad:
        assert keys.change(KEY, item).value == "Rejected", item
        # ... and so is a list holding it: Home Assistant reads Accepted as all in effect.
        assert keys.change(KEY, f"Energy.Active.Import.Register,{item}").value == "Rejected"
    assert keys.csl(KEY) == before


@pytest.mark.parametrize("app", [{}, {"phases": 1, "meter": {"model": "sdm120"}}], indirect=True)
def test_home_assistant_and_evcc_values_are_still_accepted(app: OcppApp) -> None:
    keys = app.keys
    assert keys.change(KEY, HOME_ASSISTANT).value == "Accepted"
    for item in (*EVCC, *EVCC_ALSO):  # evcc probes one at a time, then writes the lot
        assert keys.change(KEY, item).value == "Accepted", item
    assert keys.change(KEY, "SoC").value == "Rejected"  # AC charging carries no SoC
    assert keys.change(KEY, ",".join((*EVCC, *EVCC_ALSO))).value == "Accepted"
    for item in ("Voltage.L1", "Voltage.L1-N", "Current.Import.L1"):  # on every meter here
        assert keys.change(KEY, item).value == "Accepted", item


@pytest.mark.parametrize("app", [{}], indirect=True)
def test_a_three_phase_meter_offers_its_phases(app: OcppApp) -> None:
    keys = app.keys
    for item in (
        "Voltage.L3-N",
        "Voltage.L2",
        "Current.Import.L3",
        "Power.Active.Import.L2",
        "Power.Factor.L1",
        "Power.Reactive.Import.L3",
    ):
        assert keys.change(KEY, item).value == "Accepted", item
    assert keys.int(f"{KEY}MaxLength") >= len(charger_items(app.config))
