"""Meter values: measurands, phases, units, schema validity, schedules, transactionData."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.messages import MessageType, get_validator
from ocpp.v16 import call
from ocpp.v16.enums import Location, Measurand, Phase, ReadingContext, UnitOfMeasure, ValueFormat

from evsed.controller.ocpp16.measurands import BUILDABLE, PHASES, REPORTED, SPEC_MEASURANDS
from evsed.controller.ocpp16.metering import (
    READING_CONTEXTS,
    ClockAlignedSchedule,
    MeterValueBuilder,
    SampledSchedule,
    TransactionData,
    iso8601_utc,
    parse_measurands,
)
from evsed.hal.types import MeterSample
from tests.support.clock import FakeClock

TS = datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
THREE = MeterSample(
    voltage_v=(230.14, 229.96, 231.0),
    current_a=(15.96, 16.04, 15.999999),
    power_w=(3672.4, 3688.0, 3696.1),
    power_total_w=11056.5,
    energy_import_wh=123456.6,
    frequency_hz=49.987,
    energy_export_wh=2345.4,
    reactive_power_var=(690.2, 701.0, 695.5),
    reactive_power_total_var=2086.7,
    power_factor=(0.983, 0.982, 0.984),
    power_factor_total=0.983,
)
ONE = MeterSample(
    voltage_v=(230.0, None, None),
    current_a=(10.0, None, None),
    power_w=(2300.0, None, None),
    energy_import_wh=1000.2,
    frequency_hz=50.0,
)
ALL = sorted(BUILDABLE)


def validate(payload: Any) -> dict[str, Any]:
    """What ocpp.ChargePoint.call does before sending: serialise, camelCase, validate."""
    wire = remove_nones(snake_to_camel_case(serialize_as_dict(payload)))
    get_validator(MessageType.Call, type(payload).__name__, "1.6").validate(wire)
    return wire


def meter_values(*mv: dict[str, Any]) -> dict[str, Any]:
    return validate(call.MeterValues(connector_id=1, meter_value=list(mv), transaction_id=1))


def by(mv: dict[str, Any], measurand: str) -> list[dict[str, str]]:
    return [sv for sv in mv["sampledValue"] if sv["measurand"] == measurand]


# -- spec enums -----------------------------------------------------------------------------


def test_enums_match_spec_and_library() -> None:
    # Spec §7.31 / §7.35 / §7.34 (text checked by hand) against the library's enums.
    assert set(SPEC_MEASURANDS) == {m.value for m in Measurand}
    assert len(SPEC_MEASURANDS) == 22
    assert {c.value for c in ReadingContext} == READING_CONTEXTS
    assert {p.value for p in Phase} == PHASES
    assert set(SPEC_MEASURANDS) >= BUILDABLE >= REPORTED  # what the keys offer is built


def test_parse_measurands() -> None:
    items = parse_measurands(["Voltage", "Current.Import.L2", "Voltage", " SoC "])
    assert [(i.measurand, i.phase) for i in items] == [
        ("Voltage", None),
        ("Current.Import", "L2"),
        ("SoC", None),
    ]
    for bad in ("Energy", "Voltage.L4", "Current.Import.Register", ""):
        with pytest.raises(ValueError, match="unknown measurand"):
            parse_measurands([bad])


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        MeterValueBuilder(["Energy.Active.Import.Register"], phases=4)
    with pytest.raises(ValueError):
        MeterValueBuilder(["Energy.kWh"], phases=1)
    b = MeterValueBuilder(["RPM", "Voltage"], phases=1)
    assert b.unsupported == ["RPM"]
    with pytest.raises(ValueError, match="context"):
        b.build(ONE, "Sample.Sometimes", timestamp=TS)


# -- each measurand -------------------------------------------------------------------------


def test_energy_register_integer_wh() -> None:
    mv = MeterValueBuilder(["Energy.Active.Import.Register"], 3).build(
        THREE, "Sample.Periodic", timestamp=TS
    )
    assert mv == {
        "timestamp": "2026-01-01T10:15:00Z",
        "sampledValue": [
            {
                "value": "123457",
                "context": "Sample.Periodic",
                "format": "Raw",
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            }
        ],
    }
    meter_values(mv)


def test_energy_interval() -> None:
    b = MeterValueBuilder(["Energy.Active.Import.Interval"], 1)
    assert b.build(ONE, "Sample.Clock", timestamp=TS) is None  # no interval start given
    mv = b.build(ONE, "Sample.Clock", timestamp=TS, interval_start_wh=500.0)
    assert mv is not None
    assert by(mv, "Energy.Active.Import.Interval")[0]["value"] == "500"
    assert by(mv, "Energy.Active.Import.Interval")[0]["unit"] == "Wh"


def test_power_three_phase_total_and_per_phase() -> None:
    mv = MeterValueBuilder(["Power.Active.Import"], 3).build(THREE, "Trigger", timestamp=TS)
    assert mv is not None
    got = [(sv.get("phase"), sv["value"], sv["unit"]) for sv in mv["sampledValue"]]
    assert got == [
        (None, "11056", "W"),
        ("L1", "3672", "W"),
        ("L2", "3688", "W"),
        ("L3", "3696", "W"),
    ]
    meter_values(mv)


def test_power_single_phase_total_only_from_phase_when_no_total() -> None:
    mv = MeterValueBuilder(["Power.Active.Import"], 1).build(ONE, "Trigger", timestamp=TS)
    assert mv is not None
    assert [(sv.get("phase"), sv["value"]) for sv in mv["sampledValue"]] == [(None, "2300")]


def test_current_per_phase_to_a_tenth() -> None:
    mv = MeterValueBuilder(["Current.Import"], 3).build(THREE, "Sample.Periodic", timestamp=TS)
    assert mv is not None
    got = [(sv["phase"], sv["value"], sv["unit"]) for sv in mv["sampledValue"]]
    assert got == [("L1", "16.0", "A"), ("L2", "16.0", "A"), ("L3", "16.0", "A")]
    one = MeterValueBuilder(["Current.Import"], 1).build(ONE, "Sample.Periodic", timestamp=TS)
    assert one is not None
    assert [(sv["phase"], sv["value"]) for sv in one["sampledValue"]] == [("L1", "10.0")]


def test_voltage_phase_to_neutral() -> None:
    mv = MeterValueBuilder(["Voltage"], 3).build(THREE, "Sample.Clock", timestamp=TS)
    assert mv is not None
    got = [(sv["phase"], sv["value"], sv["unit"]) for sv in mv["sampledValue"]]
    assert got == [("L1-N", "230.1", "V"), ("L2-N", "230.0", "V"), ("L3-N", "231.0", "V")]
    meter_values(mv)


def test_single_phase_restriction_from_csl_item() -> None:
    mv = MeterValueBuilder(["Voltage.L2-N", "Current.Import.L3", "Power.Active.Import.L1"], 3)
    out = mv.build(THREE, "Sample.Periodic", timestamp=TS)
    assert out is not None
    assert [(sv["measurand"], sv.get("phase")) for sv in out["sampledValue"]] == [
        ("Voltage", "L2-N"),
        ("Current.Import", "L3"),
        ("Power.Active.Import", "L1"),
    ]


def test_offered_current_and_power() -> None:
    b = MeterValueBuilder(["Current.Offered", "Power.Offered"], 3)
    mv = b.build(THREE, "Sample.Periodic", timestamp=TS, offered_a=16)
    assert mv is not None
    assert by(mv, "Current.Offered")[0] == {
        "value": "16.0",
        "context": "Sample.Periodic",
        "format": "Raw",
        "measurand": "Current.Offered",
        "location": "Outlet",
        "unit": "A",
    }
    assert by(mv, "Power.Offered")[0]["value"] == str(round(16 * (230.14 + 229.96 + 231.0)))
    explicit = b.build(None, "Trigger", timestamp=TS, offered_a=6, offered_w=4140)
    assert explicit is not None
    assert by(explicit, "Power.Offered")[0]["value"] == "4140"
    meter_values(mv, explicit)


def test_frequency_has_no_unit() -> None:
    mv = MeterValueBuilder(["Frequency"], 3).build(THREE, "Sample.Periodic", timestamp=TS)
    assert mv is not None
    (sv,) = mv["sampledValue"]
    assert sv["value"] == "49.99" and "unit" not in sv and "phase" not in sv
    meter_values(mv)


def test_temperature_and_soc() -> None:
    b = MeterValueBuilder(["Temperature", "SoC"], 1)
    mv = b.build(None, "Sample.Periodic", timestamp=TS, temperature_c=41.26, soc_percent=79.6)
    assert mv is not None
    temp, soc = mv["sampledValue"]
    assert (temp["value"], temp["unit"], temp["location"]) == ("41.3", "Celsius", "Body")
    assert (soc["value"], soc["unit"], soc["location"]) == ("80", "Percent", "EV")
    assert b.build(None, "Sample.Periodic", timestamp=TS) is None  # SoC unknown: no entry
    meter_values(mv)


def test_nothing_to_report_is_none() -> None:
    b = MeterValueBuilder(["Energy.Active.Import.Register", "Voltage"], 3)
    assert b.build(MeterSample(), "Sample.Periodic", timestamp=TS) is None
    assert b.build(None, "Sample.Periodic", timestamp=TS) is None
    nan = MeterSample(energy_import_wh=float("nan"), voltage_v=(float("inf"), None, None))
    assert b.build(nan, "Sample.Periodic", timestamp=TS) is None


def test_import_never_negative_and_no_minus_zero() -> None:
    s = MeterSample(power_total_w=-250.0, current_a=(-0.04, None, None), energy_import_wh=5.0)
    mv = MeterValueBuilder(["Power.Active.Import", "Current.Import"], 1).build(
        s, "Sample.Periodic", timestamp=TS
    )
    assert mv is not None
    assert [sv["value"] for sv in mv["sampledValue"]] == ["0", "0.0"]


def test_missing_phase_values_are_left_out() -> None:
    s = MeterSample(voltage_v=(230.0, None, 229.0))
    mv = MeterValueBuilder(["Voltage"], 3).build(s, "Sample.Periodic", timestamp=TS)
    assert mv is not None
    assert [sv["phase"] for sv in mv["sampledValue"]] == ["L1-N", "L3-N"]


@pytest.mark.parametrize("phases", [1, 3])
@pytest.mark.parametrize("context", sorted(READING_CONTEXTS))
def test_every_measurand_and_context_is_schema_valid(phases: int, context: str) -> None:
    b = MeterValueBuilder(ALL, phases)
    mv = b.build(
        THREE,
        context,
        timestamp=TS,
        offered_a=16,
        temperature_c=35,
        soc_percent=50,
        interval_start_wh=120000,
    )
    assert mv is not None
    assert {sv["measurand"] for sv in mv["sampledValue"]} == BUILDABLE
    for sv in mv["sampledValue"]:
        assert sv["context"] == context
        assert sv["format"] == ValueFormat.raw
        assert sv["location"] in {loc.value for loc in Location}
        # The spec's units only (not the library schema's extra "Hertz"/"Celcius").
        assert sv.get("unit", "Wh") in {u.value for u in UnitOfMeasure}
        if phases == 1:
            assert sv.get("phase") in (None, "L1", "L1-N")
    meter_values(mv)
    validate(
        call.StopTransaction(
            meter_stop=123457,
            timestamp=iso8601_utc(TS),
            transaction_id=1,
            transaction_data=[mv],
        )
    )


@given(
    energy=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    current=st.floats(min_value=-100, max_value=100, allow_nan=False),
    volts=st.floats(min_value=0, max_value=500, allow_nan=False),
)
def test_values_are_plain_decimals(energy: float, current: float, volts: float) -> None:
    s = MeterSample(
        voltage_v=(volts, volts, volts),
        current_a=(current, current, current),
        power_w=(current * volts,) * 3,
        energy_import_wh=energy,
        frequency_hz=50.0,
    )
    mv = MeterValueBuilder(ALL, 3).build(s, "Sample.Periodic", timestamp=TS, offered_a=current)
    assert mv is not None
    for sv in mv["sampledValue"]:
        text = sv["value"]
        assert "e" not in text.lower() and not text.startswith("-")
        whole, _, frac = text.partition(".")
        assert whole.isdigit() and len(frac) <= 2
    meter_values(mv)


def test_timestamp_format() -> None:
    assert iso8601_utc(datetime(2026, 1, 1, 1, 2, 3, tzinfo=UTC)) == "2026-01-01T01:02:03Z"
    plus_one = datetime(2026, 1, 1, 2, 2, 3, 250000, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=1))
    )
    assert iso8601_utc(plus_one) == "2026-01-01T02:02:03.250Z"
    assert iso8601_utc(datetime(2026, 1, 1)) == "2026-01-01T00:00:00Z"


# -- clock-aligned schedule -----------------------------------------------------------------


def test_next_boundary() -> None:
    s = ClockAlignedSchedule(900, FakeClock())
    day = datetime(2026, 5, 4, tzinfo=UTC)
    assert s.next_boundary(day + timedelta(minutes=7)) == day + timedelta(minutes=15)
    assert s.next_boundary(day + timedelta(minutes=15)) == day + timedelta(minutes=30)
    assert s.next_boundary(day + timedelta(hours=23, minutes=59)) == day + timedelta(days=1)
    odd = ClockAlignedSchedule(7 * 3600, FakeClock())  # 0, 7, 14, 21 h, then midnight
    assert odd.next_boundary(day + timedelta(hours=22)) == day + timedelta(days=1)
    assert odd.next_boundary(day + timedelta(hours=20)) == day + timedelta(hours=21)
    with pytest.raises(ValueError):
        ClockAlignedSchedule(0, FakeClock()).next_boundary(day)
    assert not ClockAlignedSchedule(0, FakeClock()).enabled


async def test_wait_next_lands_exactly_on_quarter_hours() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 9, 7, 13, 500000, tzinfo=UTC))
    schedule = ClockAlignedSchedule(900, clock)
    readings: list[tuple[datetime, datetime]] = []

    async def loop() -> None:
        while True:
            boundary = await schedule.wait_next()
            readings.append((boundary, clock.now()))

    task = asyncio.create_task(loop())
    try:
        await clock.advance(3600)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    expected = [datetime(2026, 1, 1, 9, m, tzinfo=UTC) for m in (15, 30, 45)]
    expected.append(datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
    assert [b for b, _ in readings] == expected
    assert [now for _, now in readings] == expected  # woke exactly at each boundary
    assert iso8601_utc(expected[0]) == "2026-01-01T09:15:00Z"


async def test_wait_next_sleeps_again_if_woken_early() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 9, 14, tzinfo=UTC))
    schedule = ClockAlignedSchedule(900, clock)
    task = asyncio.create_task(schedule.wait_next())
    await clock.advance(1)
    clock.offset_s = -30  # wall clock set back while sleeping
    await clock.advance(59)
    assert not task.done()
    await clock.advance(30)
    assert task.done() and task.result() == datetime(2026, 1, 1, 9, 15, tzinfo=UTC)
    assert clock.now() == task.result()


# -- sampled schedule -----------------------------------------------------------------------


async def test_sampled_schedule_from_transaction_start() -> None:
    clock = FakeClock()
    schedule = SampledSchedule(60)
    started = clock.monotonic()
    await clock.advance(12.5)
    dues: list[float] = []

    async def loop() -> None:
        while True:
            dues.append(await schedule.wait_next(clock, started) - started)

    task = asyncio.create_task(loop())
    try:
        await clock.advance(180)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert dues == [60, 120, 180]
    assert schedule.next_due(started, started + 60) == started + 120
    with pytest.raises(ValueError):
        SampledSchedule(0).next_due(0, 1)


# -- transactionData ------------------------------------------------------------------------


def _mv(i: int, context: str = "Sample.Periodic") -> dict[str, Any]:
    b = MeterValueBuilder(["Energy.Active.Import.Register"], 1)
    mv = b.build(
        MeterSample(energy_import_wh=float(i)), context, timestamp=TS + timedelta(minutes=i)
    )
    assert mv is not None
    return mv


def test_transaction_data_bounded_keeps_begin_and_end() -> None:
    data = TransactionData(max_entries=10)
    assert data.to_list() is None
    data.add(_mv(0, "Transaction.Begin"))
    for i in range(1, 1000):
        data.add(_mv(i))
        assert len(data) <= 10
    data.add(_mv(1000, "Transaction.End"))
    out = data.to_list()
    assert out is not None and len(out) <= 10
    assert out[0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert out[-1]["sampledValue"][0]["context"] == "Transaction.End"
    stamps = [mv["timestamp"] for mv in out]
    assert stamps == sorted(stamps)  # still in time order
    values = [int(mv["sampledValue"][0]["value"]) for mv in out]
    assert values[0] == 0 and values[-1] == 1000
    gaps = [b - a for a, b in itertools.pairwise(values)]
    assert max(gaps) <= 128  # evenly thinned, not crowded at the end
    assert len(set(gaps[:-1])) == 1
    assert data.dropped == 1001 - len(out)
    validate(
        call.StopTransaction(
            meter_stop=1000, timestamp=iso8601_utc(TS), transaction_id=7, transaction_data=out
        )
    )
    data.add(None)
    data.clear()
    assert data.to_list() is None and data.dropped == 0


def test_transaction_data_limits() -> None:
    with pytest.raises(ValueError):
        TransactionData(max_entries=2)
