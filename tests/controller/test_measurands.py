"""The one measurand and phase table: its content is pinned here, and both its users read it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ocpp.v16.enums import Measurand, Phase

from evsed.controller.ocpp16 import keys, metering
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.measurands import (
    BUILDABLE,
    PHASES,
    REPORTED,
    SPEC_MEASURANDS,
    TABLE,
)
from evsed.controller.store import Store
from evsed.hal.types import MeterSample

# name: (unit, decimals, phases, location, never negative, source)
PINNED = {
    "Current.Import": ("A", 1, "line", "Outlet", True, "meter"),
    "Current.Offered": ("A", 1, "none", "Outlet", True, "connector"),
    "Energy.Active.Import.Register": ("Wh", 0, "none", "Outlet", True, "meter"),
    "Energy.Active.Import.Interval": ("Wh", 0, "none", "Outlet", True, "meter"),
    "Energy.Active.Export.Register": ("Wh", 0, "none", "Outlet", True, "meter"),
    "Frequency": (None, 2, "none", "Outlet", False, "meter"),
    "Power.Active.Import": ("W", 0, "total+line", "Outlet", True, "meter"),
    "Power.Offered": ("W", 0, "none", "Outlet", True, "connector"),
    "Power.Factor": (None, 2, "total+line", "Outlet", False, "meter"),
    "Power.Reactive.Import": ("var", 0, "total+line", "Outlet", True, "meter"),
    "Temperature": ("Celsius", 1, "none", "Body", False, "connector"),
    "Voltage": ("V", 1, "line-neutral", "Outlet", True, "meter"),
    "SoC": ("Percent", 0, "none", "EV", True, "none"),
}


def test_table_content_is_pinned() -> None:
    got = {
        name: (r.unit, r.decimals, r.phases.value, r.location, r.non_negative, r.source.value)
        for name, r in TABLE.items()
    }
    assert got == PINNED
    assert set(SPEC_MEASURANDS) == {m.value for m in Measurand} and len(SPEC_MEASURANDS) == 22
    assert {p.value for p in Phase} == PHASES
    assert BUILDABLE == set(PINNED)
    # SoC: formatted when given, never configurable (no source on IEC 61851 AC charging).
    assert set(PINNED) - {"SoC"} == REPORTED


def test_keys_and_builder_read_the_same_table(tmp_path: Path) -> None:
    # No second copy anywhere: the names the two modules use are the table's objects.
    assert keys.DEFAULT_MEASURANDS is REPORTED
    assert not hasattr(metering, "SUPPORTED_MEASURANDS")
    ck = ConfigurationKeys(
        Store(tmp_path / "k.db"), number_of_connectors=1, supported_feature_profiles=["Core"]
    )
    for name in sorted(REPORTED):
        assert ck.change("MeterValuesSampledData", name).value == "Accepted", name
    for name in sorted(set(SPEC_MEASURANDS) - REPORTED):
        assert ck.change("MeterValuesSampledData", name).value == "Rejected", name
    assert ck.change("MeterValuesSampledData", "Voltage.L2-N").value == "Accepted"
    # Every configurable measurand is built with the table's unit and location.
    sample = MeterSample(
        voltage_v=(230.0, 231.0, 229.0),
        current_a=(10.0, 10.0, 10.0),
        power_w=(2300.0, 2310.0, 2290.0),
        energy_import_wh=1000.0,
        frequency_hz=50.0,
        energy_export_wh=10.0,
        reactive_power_total_var=300.0,
        power_factor_total=0.99,
    )
    mv = metering.MeterValueBuilder(sorted(REPORTED), 3).build(
        sample,
        "Sample.Periodic",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        offered_a=16,
        temperature_c=30,
        interval_start_wh=900,
    )
    assert mv is not None
    for sv in mv["sampledValue"]:
        row = TABLE[sv["measurand"]]
        assert sv.get("unit") == row.unit
        assert sv["location"] == row.location
    assert {sv["measurand"] for sv in mv["sampledValue"]} == REPORTED
