"""ModbusMeter against the bench meter: a real pymodbus server on loopback TCP or a pty pair."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from evsed.hal.interfaces import EnergyMeter
from evsed.hal.meters import MeterError
from evsed.hal.meters.modbus import ModbusMeter, RtuTransport, TcpTransport
from evsed.hal.meters.regmap import builtin_maps, load_map
from evsed.hal.types import MeterSample
from evsed.hwmocks.meter import MeterFault, SimMeter
from evsed.hwmocks.serialpair import SerialPair
from tests.support.clock import FakeClock

V = (230.1, 231.2, 229.3)
I = (16.0, 7.5, 0.25)  # noqa: E741
PF = 0.95
ENERGY_WH = 12345.6


def expected(name: str, sim: SimMeter) -> dict[str, float | None]:
    present = {f.name for f in load_map(name).fields}
    values = sim.values()
    return {q: (values[q] if q in present else None) for q in values}


def as_dict(s: MeterSample) -> dict[str, float | None]:
    d: dict[str, float | None] = {
        "power_total": s.power_total_w,
        "energy_import": s.energy_import_wh,
        "energy_export": s.energy_export_wh,
        "frequency": s.frequency_hz,
        "reactive_power_total": s.reactive_power_total_var,
        "power_factor_total": s.power_factor_total,
    }
    for n in range(3):
        d[f"voltage_l{n + 1}"] = s.voltage_v[n]
        d[f"current_l{n + 1}"] = s.current_a[n]
        d[f"power_l{n + 1}"] = s.power_w[n]
        d[f"reactive_power_l{n + 1}"] = s.reactive_power_var[n]
        d[f"power_factor_l{n + 1}"] = s.power_factor[n]
    return d


def assert_matches(name: str, sample: MeterSample, sim: SimMeter) -> None:
    m = load_map(name)
    got, want = as_dict(sample), expected(name, sim)
    for q, w in want.items():
        if w is None:
            assert got[q] is None, q
            continue
        f = m.field(q)
        assert f is not None
        # Integer registers round to one step; float32 keeps ~7 significant digits.
        tol = f.scale * f.si_factor if f.type != "float32" else abs(w) * 1e-6 + 1e-9
        assert got[q] == pytest.approx(w, abs=tol), q


@pytest.fixture
async def sim_factory() -> AsyncIterator:
    started: list[SimMeter] = []

    async def make(name: str, **kw: object) -> SimMeter:
        sim = SimMeter(name, **kw)  # type: ignore[arg-type]
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


def tcp(name: str, sim: SimMeter, **kw: object) -> ModbusMeter:
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("request_gap_s", 0.0)
    return ModbusMeter(name, TcpTransport("127.0.0.1", sim.port), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", builtin_maps())
async def test_every_model_decodes_to_si_units_over_tcp(name: str, sim_factory) -> None:
    sim = await sim_factory(name)
    sim.set_load(V, I, PF)
    sim.energy_wh = ENERGY_WH
    await sim.update(0.0)
    meter = tcp(name, sim)
    assert isinstance(meter, EnergyMeter)
    await meter.connect()
    try:
        sample = await meter.poll()
    finally:
        await meter.close()
    assert_matches(name, sample, sim)
    assert sim.requests == len(load_map(name).plan)  # as few requests as the map allows


async def test_orno_registers_hold_kw_and_kwh_and_driver_gives_w_and_wh(sim_factory) -> None:
    sim = await sim_factory("orno_we517")
    sim.set_load((230.0, 230.0, 230.0), (10.0, 10.0, 10.0))
    sim.energy_wh = 4321.0
    await sim.update(0.0)
    raw = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.3, retries=0)
    await raw.connect()
    try:
        rr = await raw.read_holding_registers(0x1C, count=2, device_id=1)
        total_kw = struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]
        rr = await raw.read_holding_registers(0x108, count=2, device_id=1)
        import_kwh = struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]
    finally:
        raw.close()
    assert total_kw == pytest.approx(6.9)
    assert import_kwh == pytest.approx(4.321)
    meter = tcp("orno_we517", sim)
    sample = await meter.poll()  # connects on demand
    await meter.close()
    assert sample.power_total_w == pytest.approx(6900.0, rel=1e-6)
    assert sample.power_w[0] == pytest.approx(2300.0, rel=1e-6)
    assert sample.energy_import_wh == pytest.approx(4321.0, rel=1e-6)


async def test_em340_registers_are_scaled_int32_low_word_first(sim_factory) -> None:
    sim = await sim_factory("em340")
    sim.set_load((230.4, 0.0, 0.0), (70.0, 0.0, 0.0))  # 16128 W -> raw 161280 > 0xFFFF
    await sim.update(0.0)
    raw = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.3, retries=0)
    await raw.connect()
    try:
        rr = await raw.read_input_registers(0x12, count=2, device_id=1)
    finally:
        raw.close()
    lo, hi = rr.registers
    assert (hi << 16) | lo == 161280
    meter = tcp("em340", sim)
    sample = await meter.poll()
    await meter.close()
    assert sample.power_w[0] == pytest.approx(16128.0)
    assert sample.voltage_v[0] == pytest.approx(230.4)
    assert sample.current_a[0] == pytest.approx(70.0)


async def test_abb_nan_marker_reads_as_none(sim_factory) -> None:
    sim = await sim_factory("abb_b23")
    sim.set_load(V, I)
    await sim.update(0.0)
    await sim.poke(0x5B02, [0xFFFF, 0xFFFF])  # L2 voltage: not available
    meter = tcp("abb_b23", sim)
    sample = await meter.poll()
    await meter.close()
    assert sample.voltage_v[1] is None
    assert sample.voltage_v[0] == pytest.approx(230.1)


@pytest.mark.parametrize(("name", "baud"), [("sdm630", None), ("sdm120", 2400)])
async def test_rtu_over_pty_pair(name: str, baud: int | None) -> None:
    with SerialPair() as pair:
        sim = SimMeter(name, serial_port=pair.port_a)
        await sim.start()
        try:
            sim.set_load(V, I, PF)
            sim.energy_wh = ENERGY_WH
            await sim.update(0.0)
            meter = ModbusMeter(
                name, RtuTransport(pair.port_b, baudrate=baud), timeout_s=0.5, request_gap_s=0
            )
            await meter.connect()
            try:
                sample = await meter.poll()
                sim.fault = MeterFault.SILENT
                with pytest.raises(MeterError):
                    await asyncio.wait_for(meter.poll(), 3)
            finally:
                await meter.close()
        finally:
            await sim.stop()
    assert_matches(name, sample, sim)


@pytest.mark.parametrize("fault", list(MeterFault))
async def test_faults_become_meter_error_and_heal(fault: MeterFault, sim_factory) -> None:
    sim = await sim_factory("sdm630")
    sim.set_load(V, I)
    await sim.update(0.0)
    meter = tcp("sdm630", sim, timeout_s=0.2)
    await meter.connect()
    try:
        sim.fault = fault
        with pytest.raises(MeterError):
            await asyncio.wait_for(meter.poll(), 2)  # within the client timeout, never hangs
        sim.fault = None
        await meter.connect()  # a fresh link: a late or noisy answer must not linger
        sample = await meter.poll()
    finally:
        await meter.close()
    assert sample.voltage_v[0] == pytest.approx(230.1, rel=1e-6)


async def test_wrong_device_id_is_a_meter_error(sim_factory) -> None:
    sim = await sim_factory("sdm630")
    meter = tcp("sdm630", sim, device_id=7)
    with pytest.raises(MeterError):
        await meter.poll()
    await meter.close()


async def test_nobody_listening_is_a_meter_error(sim_factory) -> None:
    sim = await sim_factory("sdm630")
    port = sim.port
    await sim.stop()
    meter = ModbusMeter("sdm630", TcpTransport("127.0.0.1", port), timeout_s=0.2)
    with pytest.raises(MeterError, match="cannot connect"):
        await meter.connect()
    with pytest.raises(MeterError):
        await meter.poll()
    await meter.close()


async def test_missing_serial_port_is_a_meter_error() -> None:
    meter = ModbusMeter("sdm630", RtuTransport("/dev/nonexistent-tty"), timeout_s=0.2)
    with pytest.raises(MeterError):
        await meter.connect()
    await meter.close()


class RecordingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


async def test_inter_request_gap_comes_from_the_map(sim_factory) -> None:
    sim = await sim_factory("sdm120")
    clock = RecordingClock()
    meter = ModbusMeter("sdm120", TcpTransport("127.0.0.1", sim.port), timeout_s=0.3, clock=clock)
    await meter.poll()
    await meter.close()
    assert meter.request_gap_s == 0.1
    # Three requests (V..P, reactive power and power factor, frequency and energy): a gap
    # between each two, none before the first.
    assert clock.slept == [0.1, 0.1]
