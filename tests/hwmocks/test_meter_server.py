"""The bench meter: energy integration, load following, faults, and the pty serial pair."""

from __future__ import annotations

import os
import select
import threading

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from evsed.hal.meters.modbus import ModbusMeter, TcpTransport
from evsed.hal.meters.regmap import decode, load_map
from evsed.hwmocks.meter import Load, MeterFault, SimMeter
from evsed.hwmocks.serialpair import SerialPair
from tests.support.clock import FakeClock

THREE_PHASE_16A = ((230.0, 230.0, 230.0), (16.0, 16.0, 16.0))  # 11040 W


async def test_energy_integrates_in_wh_with_explicit_time() -> None:
    sim = SimMeter("sdm630", energy_wh=1000.0)
    sim.set_load(*THREE_PHASE_16A)
    await sim.update(0.0)  # first update only sets the time origin
    assert sim.energy_wh == 1000.0
    await sim.update(1800.0)
    assert sim.energy_wh == pytest.approx(1000.0 + 11040.0 / 2)
    sim.set_load((230.0, 230.0, 230.0), (0.0, 0.0, 0.0))
    await sim.advance(3600.0)  # no current: no energy
    assert sim.energy_wh == pytest.approx(6520.0)
    sim.set_load((230.0, 0.0, 0.0), (10.0, 0.0, 0.0), power_factor=-1.0)  # exporting
    await sim.advance(3600.0)
    assert sim.energy_wh == pytest.approx(6520.0)  # the import register does not run back


async def test_driver_reads_the_integrated_energy() -> None:
    async with SimMeter("orno_we517") as sim:
        sim.set_load(*THREE_PHASE_16A, power_factor=0.5)
        await sim.update(100.0)
        await sim.update(100.0 + 3600.0)
        meter = ModbusMeter("orno_we517", TcpTransport("127.0.0.1", sim.port), timeout_s=0.3)
        sample = await meter.poll()
        await meter.close()
    assert sample.power_total_w == pytest.approx(5520.0, rel=1e-6)
    assert sample.energy_import_wh == pytest.approx(5520.0, rel=1e-6)


async def test_ticker_follows_a_source_on_the_injected_clock() -> None:
    clock = FakeClock()
    amps = [0.0]
    sim = SimMeter(
        "sdm630",
        clock=clock,
        source=lambda: Load(current_a=(amps[0],) * 3),
        update_interval_s=1.0,
    )
    await sim.start()
    try:
        amps[0] = 16.0
        await clock.advance(1.0)  # source sampled: 11040 W from now on
        await clock.advance(360.0)
        assert sim.power_total_w == pytest.approx(11040.0)
        assert sim.energy_wh == pytest.approx(11040.0 / 10)
    finally:
        await sim.stop()


async def test_single_phase_model_sees_only_l1() -> None:
    sim = SimMeter("sdm120")
    sim.set_load(*THREE_PHASE_16A)
    assert sim.phases == 1
    assert sim.power_total_w == pytest.approx(3680.0)
    assert SimMeter("sdm630").phases == 3


def test_register_image_uses_the_map_encoding() -> None:
    sim = SimMeter("orno_we517")
    sim.set_load(*THREE_PHASE_16A)
    image = sim.registers()
    f = load_map("orno_we517").field("power_total")
    assert f is not None and f.unit == "kW"
    raw_kw = decode(f, [image[0x1C], image[0x1D]]) / f.si_factor  # type: ignore[operator]
    assert raw_kw == pytest.approx(11.04)


async def test_binds_an_ephemeral_port_and_counts_requests() -> None:
    async with SimMeter("em340") as sim:
        assert sim.port > 0
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.3, retries=0)
        await client.connect()
        try:
            rr = await client.read_input_registers(0, count=54, device_id=1)
            assert not rr.isError() and len(rr.registers) == 54
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            assert rr.isError()  # EM340 answers input registers only
        finally:
            client.close()
        assert sim.requests == 2


async def test_silent_meter_makes_the_client_time_out() -> None:
    async with SimMeter("sdm630") as sim:
        sim.fault = MeterFault.SILENT
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.2, retries=0)
        await client.connect()
        try:
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=2, device_id=1)
        finally:
            client.close()
        assert sim.requests == 1


async def test_short_and_nonsense_answers_are_well_formed() -> None:
    async with SimMeter("sdm630") as sim:
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.3, retries=0)
        await client.connect()
        try:
            sim.fault = MeterFault.SHORT
            rr = await client.read_input_registers(0, count=10, device_id=1)
            assert len(rr.registers) == 5
            sim.fault = MeterFault.NONSENSE
            rr = await client.read_input_registers(0, count=10, device_id=1)
            assert len(rr.registers) == 10
            sim.fault = MeterFault.EXCEPTION
            rr = await client.read_input_registers(0, count=10, device_id=1)
            assert rr.isError() and rr.exception_code == 4
        finally:
            client.close()


def _read_exactly(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], 2.0)
        assert ready, "timed out waiting for bytes"
        out += os.read(fd, n - len(out))
    return out


def test_serial_pair_carries_bytes_both_ways_and_cleans_up() -> None:
    threads_before = threading.active_count()
    with SerialPair() as pair:
        a = os.open(pair.port_a, os.O_RDWR | os.O_NOCTTY)
        b = os.open(pair.port_b, os.O_RDWR | os.O_NOCTTY)
        try:
            payload = bytes(range(256))  # binary-clean: no line discipline in the way
            os.write(a, payload)
            assert _read_exactly(b, 256) == payload
            os.write(b, b"\x01\x04\x00\x00\x00\x02")
            assert _read_exactly(a, 6) == b"\x01\x04\x00\x00\x00\x02"
        finally:
            os.close(a)
            os.close(b)
    assert threading.active_count() == threads_before
