"""Power.Factor, Power.Reactive.Import and Energy.Active.Export.Register: read from the meters
whose register maps have them, served by the bench's meter, selectable in the Meter*Data keys
exactly where the configured meter provides them, and reported with OCPP's units (var, Wh,
none for a ratio) and phases (issue 11)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from evsed.controller.meter_measurands import connector_measurands, selectable_items
from evsed.controller.ocpp16.metering import MeterValueBuilder
from evsed.hal.meters.modbus import ModbusMeter, TcpTransport
from evsed.hal.types import MeterSample
from evsed.hwmocks.central_system import CentralSystem
from evsed.hwmocks.meter import SimMeter
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig

NEW = ("Power.Factor", "Power.Reactive.Import", "Energy.Active.Export.Register")
TS = datetime(2026, 1, 1, tzinfo=UTC)


# --- which meter provides what --------------------------------------------------------------

PROVIDES = {
    "sdm630": set(NEW),
    "sdm72d_m2": set(NEW),
    "sdm120": set(NEW),
    "em340": set(NEW),
    "sdm72d": {"Energy.Active.Export.Register"},  # v1: totals only
    "abb_b23": {"Energy.Active.Export.Register"},  # PF/reactive left out (see its map)
    "orno_we517": {"Power.Factor", "Energy.Active.Export.Register"},  # var vs kvar unsure
}


@pytest.mark.parametrize("model", sorted(PROVIDES))
def test_the_keys_offer_what_the_meters_map_has(model: str) -> None:
    phases = 1 if model == "sdm120" else 3
    config = bench_config(connectors=[{"phases": phases, "meter": {"model": model, "port": 0}}])
    measurands = connector_measurands(config.connectors[0])
    assert measurands & set(NEW) == PROVIDES[model]
    items = selectable_items(measurands, phases)
    for name in PROVIDES[model] - {"Energy.Active.Export.Register"}:
        per_phase = {f"{name}.L{k}" for k in (1, 2, 3)}
        assert per_phase <= set(items) if phases == 3 else not per_phase & set(items)


# --- the driver reads them from the bench's pymodbus meter, in SI units ----------------------


@pytest.fixture
async def sim() -> AsyncIterator[list[SimMeter]]:
    started: list[SimMeter] = []
    yield started
    for s in started:
        await s.stop()


async def poll(model: str, started: list[SimMeter], **load: object) -> tuple[SimMeter, MeterSample]:
    meter = SimMeter(model)
    await meter.start()
    started.append(meter)
    meter.set_load(**load)  # type: ignore[arg-type]
    await meter.update(0.0)
    meter.energy_export_wh = 0.0
    await meter.advance(3600.0)  # an hour at that load
    client = ModbusMeter(model, TcpTransport("127.0.0.1", meter.port), request_gap_s=0.0)
    try:
        return meter, await client.poll()
    finally:
        await client.close()


async def test_an_inductive_load_shows_its_power_factor_and_reactive_power(
    sim: list[SimMeter],
) -> None:
    _, s = await poll(
        "sdm630",
        sim,
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(10.0, 10.0, 10.0),
        power_factor=0.8,
    )
    assert s.power_factor == pytest.approx((0.8, 0.8, 0.8))
    assert s.power_factor_total == pytest.approx(0.8)
    # Q = V I sin(phi) = 230 x 10 x 0.6 = 1380 var per phase.
    assert s.reactive_power_var == pytest.approx((1380.0, 1380.0, 1380.0), rel=1e-5)
    assert s.reactive_power_total_var == pytest.approx(4140.0, rel=1e-5)
    assert s.energy_export_wh == 0.0


async def test_exported_energy_counts_up_in_wh_from_a_kwh_register(sim: list[SimMeter]) -> None:
    # PV behind a grid meter: 10 A per phase flowing out for an hour.
    meter, s = await poll(
        "orno_we517", sim, voltage_v=(230.0, 230.0, 230.0), current_a=(-10.0, -10.0, -10.0)
    )
    assert s.energy_export_wh == pytest.approx(6900.0, rel=1e-5)  # Wh, never kWh
    assert s.power_factor_total == pytest.approx(-1.0)  # exported: the meter's sign
    raw = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=0.5, retries=0)
    await raw.connect()
    try:
        rr = await raw.read_holding_registers(0x110, count=2, device_id=1)
    finally:
        raw.close()
    assert struct.unpack(">f", struct.pack(">HH", *rr.registers))[0] == pytest.approx(6.9)


async def test_scaled_integer_registers_decode_to_var_and_a_ratio(sim: list[SimMeter]) -> None:
    _, s = await poll(
        "em340", sim, voltage_v=(230.0, 230.0, 230.0), current_a=(8.0, 8.0, 8.0), power_factor=0.6
    )
    assert s.power_factor == pytest.approx((0.6, 0.6, 0.6), abs=0.001)
    assert s.reactive_power_total_var == pytest.approx(3 * 230.0 * 8.0 * 0.8, abs=0.1)


async def test_an_odd_power_factor_is_dropped_not_the_sample(sim: list[SimMeter]) -> None:
    meter = SimMeter("sdm630")
    await meter.start()
    sim.append(meter)
    meter.set_load((230.0, 230.0, 230.0), (10.0, 10.0, 10.0))
    await meter.update(0.0)
    await meter.poke(0x3E, list(struct.unpack(">HH", struct.pack(">f", 42.0))))
    client = ModbusMeter("sdm630", TcpTransport("127.0.0.1", meter.port), request_gap_s=0.0)
    try:
        s = await client.poll()
    finally:
        await client.close()
    assert s.power_factor_total is None
    assert s.current_a == pytest.approx((10.0, 10.0, 10.0))  # what the limiter needs stays


# --- MeterValues: units and phases ----------------------------------------------------------

SAMPLE = MeterSample(
    voltage_v=(230.0, 230.0, 230.0),
    current_a=(10.0, 10.0, 10.0),
    power_w=(2200.0, 2210.0, -100.0),
    energy_export_wh=1234.56,
    reactive_power_var=(660.4, -20.0, 640.0),
    reactive_power_total_var=1280.4,
    power_factor=(0.957, 0.999, -0.5),
    power_factor_total=0.96,
)


def test_reported_with_ocpp_units_and_phases() -> None:
    mv = MeterValueBuilder(list(NEW), 3).build(SAMPLE, "Sample.Periodic", timestamp=TS)
    assert mv is not None
    got = [
        (sv["measurand"], sv.get("phase"), sv["value"], sv.get("unit")) for sv in mv["sampledValue"]
    ]
    assert got == [
        ("Power.Factor", None, "0.96", None),  # a ratio: OCPP 1.6 has no unit for it
        ("Power.Factor", "L1", "0.96", None),
        ("Power.Factor", "L2", "1.00", None),
        ("Power.Factor", "L3", "-0.50", None),  # signed as the meter says
        ("Power.Reactive.Import", None, "1280", "var"),
        ("Power.Reactive.Import", "L1", "660", "var"),
        ("Power.Reactive.Import", "L2", "0", "var"),  # import never below zero
        ("Power.Reactive.Import", "L3", "640", "var"),
        ("Energy.Active.Export.Register", None, "1235", "Wh"),
    ]


def test_single_phase_and_one_phase_items() -> None:
    one = MeterValueBuilder(list(NEW), 1).build(SAMPLE, "Trigger", timestamp=TS)
    assert one is not None
    assert {sv.get("phase") for sv in one["sampledValue"]} == {None}  # no lines on one phase
    only = MeterValueBuilder(["Power.Factor.L3", "Power.Reactive.Import.L1"], 3).build(
        SAMPLE, "Trigger", timestamp=TS
    )
    assert only is not None
    assert [(sv["measurand"], sv.get("phase")) for sv in only["sampledValue"]] == [
        ("Power.Factor", "L3"),
        ("Power.Reactive.Import", "L1"),
    ]


def test_reactive_total_is_summed_when_the_meter_has_none_but_pf_never_is() -> None:
    s = MeterSample(reactive_power_var=(100.0, 200.0, 300.0), power_factor=(0.9, 0.9, 0.9))
    mv = MeterValueBuilder(["Power.Reactive.Import", "Power.Factor"], 3).build(
        s, "Trigger", timestamp=TS
    )
    assert mv is not None
    totals = {sv["measurand"]: sv["value"] for sv in mv["sampledValue"] if "phase" not in sv}
    assert totals == {"Power.Reactive.Import": "600"}


# --- end to end: the Central System selects them and gets them --------------------------------


async def test_a_central_system_selects_them_and_receives_them(tmp_path: Path) -> None:
    clock = FakeClock()
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as cs:
        keys = {
            "MeterValuesSampledData": "Energy.Active.Import.Register," + ",".join(NEW),
            "MeterValueSampleInterval": "10",
        }
        async with ocpp_rig(cs, tmp_path, clock=clock, keys=keys) as rig:
            await check_meter_values(rig)


async def check_meter_values(rig: OcppRig) -> None:
    await rig.start_transaction()
    mark = rig.central.mark()
    await rig.run(10.0)
    frame = await rig.call_of("MeterValues", since=mark)
    sampled = frame.payload["meterValue"][0]["sampledValue"]
    seen = {(sv["measurand"], sv.get("phase"), sv.get("unit")) for sv in sampled}
    for phase in (None, "L1", "L2", "L3"):
        assert ("Power.Factor", phase, None) in seen
        assert ("Power.Reactive.Import", phase, "var") in seen
    assert ("Energy.Active.Export.Register", None, "Wh") in seen
    by = {(sv["measurand"], sv.get("phase")): sv["value"] for sv in sampled}
    assert by[("Power.Factor", None)] == "1.00"  # the bench's EV is a resistive load
    assert by[("Energy.Active.Export.Register", None)] == "0"  # it imports only
