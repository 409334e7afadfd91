"""MeterValuesSampledData (and the other measurand keys) take exactly what the configured
meters deliver: all of it at once, each item alone; anything else Rejected."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.meter_measurands import charger_measurands, selectable_items
from evsed.controller.ocpp16.app import OcppApp
from evsed.controller.ocpp16.measurands import SPEC_MEASURANDS, TABLE
from evsed.controller.ocpp16.metering import MeterValueBuilder
from evsed.controller.readings import MeterSample
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock

KEYS = ("MeterValuesSampledData", "MeterValuesAlignedData", "StopTxnSampledData")
# What Home Assistant's integration writes in one ChangeConfiguration (all 22).
HOME_ASSISTANT_ALL = ",".join(SPEC_MEASURANDS)


def app_for(tmp_path: Path, **connector: Any) -> OcppApp:
    meter = {"port": 0, "poll_interval_s": 1.0, **connector.pop("meter", {})}
    config = bench_config(connectors=[{"meter": meter, **connector}])
    return OcppApp(config, FakeClock(), tmp_path / "state")


def test_a_three_phase_sdm630_offers_everything_it_measures(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    try:
        keys = app.keys
        items = selectable_items(charger_measurands(app.config), 3)
        assert set(items) >= {
            "Energy.Active.Import.Register",
            "Power.Active.Import",
            "Current.Import",
            "Voltage",
            "Frequency",
            "Temperature",
            "Current.Offered",
            "Power.Offered",
            "Voltage.L3-N",
            "Current.Import.L2",
            "Power.Active.Import.L1",
        }
        for key in KEYS:
            assert keys.int(f"{key}MaxLength") >= len(items)
            for item in [*items, "Voltage.L1"]:  # one at a time, as evcc probes
                assert keys.change(key, item).value == "Accepted", (key, item)
            assert keys.change(key, ",".join(items)).value == "Accepted", key  # all at once
            assert keys.csl(key) == items
        for bad in ("SoC", "RPM", "Power.Reactive.Export", "Energy.Active.Import.Interval", "Foo"):
            assert keys.change("MeterValuesSampledData", bad).value == "Rejected", bad
        assert keys.change("MeterValuesSampledData", HOME_ASSISTANT_ALL).value == "Rejected"
        assert keys.csl("MeterValuesSampledData") == items  # a Rejected list changes nothing
    finally:
        app.close()


def test_a_meter_without_phase_values_offers_only_its_totals(tmp_path: Path) -> None:
    app = app_for(tmp_path, meter={"model": "sdm72d"})
    try:
        keys = app.keys
        for ok in ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Offered"):
            assert keys.change("MeterValuesSampledData", ok).value == "Accepted", ok
        for bad in ("Voltage", "Current.Import", "Frequency", "Current.Import.L1"):
            assert keys.change("MeterValuesSampledData", bad).value == "Rejected", bad
    finally:
        app.close()


def test_a_single_phase_connector_has_no_second_line(tmp_path: Path) -> None:
    app = app_for(tmp_path, phases=1, meter={"model": "sdm120"})
    try:
        keys = app.keys
        assert keys.change("MeterValuesSampledData", "Voltage.L1-N").value == "Accepted"
        assert keys.change("MeterValuesSampledData", "Voltage.L2-N").value == "Rejected"
        assert keys.change("MeterValuesSampledData", "Current.Import.L3").value == "Rejected"
    finally:
        app.close()


def test_without_a_meter_only_the_connectors_own_values(tmp_path: Path) -> None:
    app = app_for(tmp_path, meter={"transport": "none"})
    try:
        keys = app.keys
        assert keys.change("MeterValuesSampledData", "Current.Offered").value == "Accepted"
        # Power.Offered is the offered current times the measured voltages: none here.
        assert keys.change("MeterValuesSampledData", "Power.Offered").value == "Rejected"
        assert keys.change("MeterValuesSampledData", "Energy.Active.Import.Register").value == (
            "Rejected"
        )
    finally:
        app.close()


@pytest.mark.parametrize("phases", [1, 3])
def test_every_selectable_item_is_reported_with_its_unit(phases: int) -> None:
    measurands = charger_measurands(bench_config())
    items = selectable_items(measurands, phases)
    sample = MeterSample(
        voltage_v=(230.0, 231.0, 229.0),
        current_a=(10.0, 10.0, 10.0),
        power_w=(2300.0, 2310.0, 2290.0),
        energy_import_wh=12345.0,
        frequency_hz=50.0,
        energy_export_wh=678.0,
        reactive_power_var=(300.0, 310.0, 290.0),
        reactive_power_total_var=900.0,
        power_factor=(0.99, 0.98, 0.97),
        power_factor_total=0.98,
    )
    mv = MeterValueBuilder(items, phases).build(
        sample,
        "Sample.Periodic",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        offered_a=16.0,
        temperature_c=31.0,
    )
    assert mv is not None
    units = {
        "Energy.Active.Import.Register": "Wh",
        "Power.Active.Import": "W",
        "Power.Offered": "W",
        "Current.Import": "A",
        "Current.Offered": "A",
        "Voltage": "V",
        "Temperature": "Celsius",
        "Energy.Active.Export.Register": "Wh",
        "Power.Reactive.Import": "var",
        "Power.Factor": None,
    }
    seen = {sv["measurand"] for sv in mv["sampledValue"]}
    assert seen == set(measurands)
    for sv in mv["sampledValue"]:
        assert sv.get("unit") == units.get(sv["measurand"], TABLE[sv["measurand"]].unit)
    energy = next(sv for sv in mv["sampledValue"] if sv["measurand"].startswith("Energy.Active.I"))
    assert energy["value"] == "12345"  # Wh, never kWh
    offered_w = next(sv for sv in mv["sampledValue"] if sv["measurand"] == "Power.Offered")
    assert float(offered_w["value"]) == pytest.approx(16.0 * sum((230.0, 231.0, 229.0)[:phases]))
    voltages = [sv for sv in mv["sampledValue"] if sv["measurand"] == "Voltage"]
    # Each line once for "Voltage" and once more for its own item "Voltage.Lk-N".
    assert [sv["phase"] for sv in voltages] == [f"L{k}-N" for k in range(1, phases + 1)] * 2


async def test_offered_current_and_power_reach_the_central_system(tmp_path: Path) -> None:
    from evsed.controller.limiter import SmartChargingLimit
    from evsed.hwmocks.central_system import CentralSystem
    from tests.support.ocpp_rig import CARD, ocpp_rig

    keys = {
        "MeterValuesSampledData": "Current.Offered,Power.Offered,Voltage",
        "MeterValueSampleInterval": "10",
    }
    async with CentralSystem(tags={CARD: "Accepted"}) as cs:
        async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
            await rig.start_transaction()
            assert rig.stack.charger is not None
            rig.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(10.0))
            mark = cs.mark()
            await rig.run(10.0)
            frame = await rig.call_of("MeterValues", since=mark)
            values = frame.payload["meterValue"][0]["sampledValue"]
            by = {(v["measurand"], v.get("phase")): v for v in values}
            assert by[("Current.Offered", None)]["value"] == "10.0"
            assert by[("Current.Offered", None)]["unit"] == "A"
            volts = sum(float(by[("Voltage", f"L{k}-N")]["value"]) for k in (1, 2, 3))
            power = by[("Power.Offered", None)]
            assert power["unit"] == "W"
            assert float(power["value"]) == pytest.approx(10.0 * volts, abs=1.0)
