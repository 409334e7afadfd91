"""Register maps: loading/validation, read planning, decoding and its inverse."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evsed.hal.meters.regmap import (
    QUANTITIES,
    FieldSpec,
    MapError,
    builtin_maps,
    decode,
    encode,
    load_map,
    parse_map,
    plan_reads,
)

ALL_TYPES = ["float32", "int16", "uint16", "int32", "uint32", "int64", "uint64"]


def spec(type_: str = "float32", order: str = "big", scale: float = 1.0, factor: float = 1.0):
    return FieldSpec("power_total", 0, type_, order, scale, "W", factor)


def test_builtin_maps_ship_as_package_data() -> None:
    names = builtin_maps()
    for required in ("sdm630", "sdm120", "sdm72d", "sdm72d_m2", "abb_b23", "em340", "orno_we517"):
        assert required in names
    for name in names:
        m = load_map(name)
        assert m.name == name
        assert m.function_code in (3, 4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sdm630", [(0x00, 76)]),  # 0x00-0x4B: one request within the 80-register limit
        ("sdm72d_m2", [(0x00, 18), (0x18, 12), (0x34, 24)]),
        ("sdm72d", [(0x34, 24)]),
        ("sdm120", [(0x00, 14), (0x18, 8), (0x46, 6)]),
        ("abb_b23", [(0x5000, 8), (0x5B00, 45)]),
        ("em340", [(0x00, 54), (0x4E, 2)]),
        ("orno_we517", [(0x0E, 22), (0x34, 8), (0x108, 10)]),
    ],
)
def test_read_plan_uses_as_few_requests_as_the_map_allows(
    name: str, expected: list[tuple[int, int]]
) -> None:
    m = load_map(name)
    assert [(b.address, b.count) for b in m.plan] == expected
    assert all(b.count <= m.max_registers for b in m.plan)
    planned = sorted(f.name for b in m.plan for f in b.fields)
    assert planned == sorted(f.name for f in m.fields)


def test_sdm72d_v1_has_no_phase_values_and_no_frequency() -> None:
    m = load_map("sdm72d")
    assert {f.name for f in m.fields} == {"power_total", "energy_import", "energy_export"}


def test_plan_splits_when_the_limit_demands_it() -> None:
    m = load_map("sdm630").with_limits(max_registers=20)
    assert len(m.plan) > 1
    assert all(b.count <= 20 for b in m.plan)
    assert sorted(f.name for b in m.plan for f in b.fields) == sorted(f.name for f in m.fields)
    # No holes allowed: every request holds only back-to-back values.
    strict = load_map("sdm630").with_limits(max_gap=0)
    assert [(b.address, b.count) for b in strict.plan] == [
        (0x00, 18),
        (0x18, 12),
        (0x34, 2),
        (0x3C, 4),
        (0x46, 6),
    ]


@settings(max_examples=200, deadline=None)
@given(
    addrs=st.lists(
        st.tuples(st.integers(0, 300), st.sampled_from(ALL_TYPES)), min_size=1, max_size=12
    ),
    max_registers=st.integers(4, 125),
    max_gap=st.integers(0, 20),
)
def test_plan_properties(addrs: list[tuple[int, str]], max_registers: int, max_gap: int) -> None:
    fields = tuple(FieldSpec(f"q{i}", a, t, "big", 1.0, "W", 1.0) for i, (a, t) in enumerate(addrs))
    plan = plan_reads(fields, max_registers, max_gap)
    seen = [f for b in plan for f in b.fields]
    assert sorted(f.name for f in seen) == sorted(f.name for f in fields)
    for b in plan:
        assert 1 <= b.count <= max_registers
        for f in b.fields:
            assert b.address <= f.address and f.end <= b.address + b.count
    starts = [b.address for b in plan]
    assert starts == sorted(starts)


def test_decode_float32_big_endian() -> None:
    hi, lo = struct.unpack(">HH", struct.pack(">f", 230.5))
    assert decode(spec(), [hi, lo]) == 230.5


def test_decode_int32_low_word_first_scaled() -> None:
    # EM340 voltage 230.4 V = 2304 x 0.1, low word first.
    raw = 2304
    f = FieldSpec("voltage_l1", 0, "int32", "little", 0.1, "V", 1.0)
    assert decode(f, [raw & 0xFFFF, raw >> 16]) == pytest.approx(230.4)
    big = 0x12345
    assert decode(f, [big & 0xFFFF, big >> 16]) == pytest.approx(big * 0.1)
    neg = FieldSpec("power_l1", 0, "int32", "little", 0.1, "W", 1.0)
    assert decode(neg, encode(neg, -1500.0)) == pytest.approx(-1500.0)


def test_units_become_si() -> None:
    kw = FieldSpec("power_total", 0, "float32", "big", 1.0, "kW", 1000.0)
    assert decode(kw, encode(spec(), 2.5)) == pytest.approx(2500.0)
    kwh = FieldSpec("energy_import", 0, "uint64", "big", 0.01, "kWh", 1000.0)
    assert decode(kwh, [0, 0, 0, 12345]) == pytest.approx(123450.0)  # 123.45 kWh


def test_abb_nan_markers_become_none() -> None:
    u32 = FieldSpec("voltage_l1", 0, "uint32", "big", 0.1, "V", 1.0)
    i32 = FieldSpec("power_l1", 0, "int32", "big", 0.01, "W", 1.0)
    u64 = FieldSpec("energy_import", 0, "uint64", "big", 0.01, "kWh", 1000.0)
    u16 = FieldSpec("frequency", 0, "uint16", "big", 0.01, "Hz", 1.0)
    assert decode(u32, [0xFFFF, 0xFFFF], nan_markers=True) is None
    assert decode(i32, [0x7FFF, 0xFFFF], nan_markers=True) is None
    assert decode(u64, [0xFFFF] * 4, nan_markers=True) is None
    assert decode(u16, [0xFFFF], nan_markers=True) is None
    # Without markers these are ordinary numbers.
    assert decode(u32, [0xFFFF, 0xFFFF]) == pytest.approx(0xFFFFFFFF * 0.1)
    # The encoder writes the marker for "not available".
    assert encode(u32, None, nan_markers=True) == [0xFFFF, 0xFFFF]
    assert encode(i32, None, nan_markers=True) == [0x7FFF, 0xFFFF]


def test_non_finite_floats_become_none() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        hi, lo = struct.unpack(">HH", struct.pack(">f", bad))
        assert decode(spec(), [hi, lo]) is None
    assert decode(spec(), [1]) is None  # wrong register count
    assert decode(spec(), [0x1_0000, 0]) is None  # not a register value


@pytest.mark.parametrize("name", builtin_maps())
def test_encode_is_the_inverse_of_decode(name: str) -> None:
    m = load_map(name)
    for f in m.fields:
        value = {
            "V": 231.7,
            "A": 12.345,
            "W": 3456.7,
            "Wh": 98765.4,
            "Hz": 49.95,
            "var": 456.7,
            "1": 0.937,
        }[QUANTITIES[f.name]]
        got = decode(f, encode(f, value, nan_markers=m.nan_markers), nan_markers=m.nan_markers)
        tolerance = f.scale * f.si_factor if f.type != "float32" else abs(value) * 1e-6
        assert got == pytest.approx(value, abs=tolerance), f.name


@settings(max_examples=500, deadline=None)
@given(
    type_=st.sampled_from(ALL_TYPES),
    order=st.sampled_from(["big", "little"]),
    nan=st.booleans(),
    registers=st.lists(st.integers(-5, 0x1_0005), min_size=0, max_size=5),
    scale=st.sampled_from([1.0, 0.1, 0.001, 1e30]),
)
def test_decoder_never_raises(
    type_: str, order: str, nan: bool, registers: list[int], scale: float
) -> None:
    got = decode(spec(type_, order, scale), registers, nan_markers=nan)
    assert got is None or math.isfinite(got)


def test_custom_map_from_path(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text(
        'name = "mine"\nfunction_code = 3\nmax_registers = 10\n'
        "[quantities]\n"
        'power_total = { address = 100, type = "int16", scale = 10.0 }\n'
        'energy_import = { address = 102, type = "uint32", unit = "kWh" }\n'
    )
    m = load_map(p)
    assert m.name == "mine" and m.function_code == 3
    assert [(b.address, b.count) for b in m.plan] == [(100, 1), (102, 2)]  # max_gap 0
    assert load_map(str(p)).fields == m.fields
    assert m.field("energy_import") is not None and m.field("energy_import").si_factor == 1000.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name = 'x'\nfunction_code = 4\n[quantities]\nwatts = { address = 1 }\n", "watts"),
        (
            "name='x'\nfunction_code=4\n[quantities]\nvoltage_l1={address=0, unit='kW'}\n",
            "quantities.voltage_l1.unit",
        ),
        ("name = 'x'\n[quantities]\npower_total = { address = 1 }\n", "function_code"),
        ("name='x'\nfunction_code=5\n[quantities]\npower_total={address=1}\n", "function_code"),
        (
            "name='x'\nfunction_code=4\n[quantities]\npower_total={address=1, type='float'}\n",
            "quantities.power_total.type",
        ),
        (
            "name='x'\nfunction_code=4\n[quantities]\npower_total={address=70000}\n",
            "quantities.power_total.address",
        ),
        ("name='x'\nfunction_code=4\nbogus=1\n[quantities]\npower_total={address=1}\n", "bogus"),
        ("name='x'\nfunction_code=4\n[quantities]\n", "at least one quantity"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_maps_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(MapError) as err:
        parse_map(text, "bad.toml")
    assert "bad.toml" in str(err.value)
    assert needle in str(err.value)


def test_missing_files_and_models() -> None:
    with pytest.raises(MapError, match="cannot read"):
        load_map("/nonexistent/meter.toml")
    with pytest.raises(MapError, match=r"unknown meter model 'sdm999'.*sdm630"):
        load_map("sdm999")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(builtin_maps()))
def test_whole_blocks_of_random_registers_decode_without_raising(
    data: st.DataObject, name: str
) -> None:
    m = load_map(name)
    for block in m.plan:
        regs = data.draw(
            st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count)
        )
        values = m.decode_block(block, regs)
        assert set(values) == {f.name for f in block.fields}
        assert all(v is None or math.isfinite(v) for v in values.values())
