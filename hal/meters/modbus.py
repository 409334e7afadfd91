"""Modbus energy-meter driver (pymodbus async clients): an evsed.hal.interfaces.EnergyMeter.

Transport is chosen by a small dataclass: `TcpTransport(host, port)` for Modbus TCP (or a
TCP gateway) and `RtuTransport(port, baudrate=None, ...)` for RS-485, where None takes the
map's serial default. Every failure, whatever the library raises, leaves as `MeterError`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from evsed.hal.clock import Clock, SystemClock
from evsed.hal.meters import MeterError
from evsed.hal.meters.regmap import RegisterMap, load_map
from evsed.hal.types import MeterSample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TcpTransport:
    host: str
    port: int = 502


@dataclass(frozen=True, slots=True)
class RtuTransport:
    """Serial line settings; None means the register map's factory default."""

    port: str
    baudrate: int | None = None
    parity: str | None = None
    stopbits: int | None = None
    bytesize: int | None = None


ModbusTransport = TcpTransport | RtuTransport

# Outside these a value is garbage, not a measurement: the whole sample is rejected.
_PLAUSIBLE: dict[str, tuple[float, float]] = {
    "voltage": (0.0, 1000.0),
    "current": (-2000.0, 2000.0),
    "power_factor": (-1.01, 1.01),  # before "power": the first matching prefix counts
    "power": (-2.0e6, 2.0e6),
    "reactive_power": (-2.0e6, 2.0e6),
    "energy_import": (0.0, 1.0e12),
    "energy_export": (0.0, 1.0e12),
    "frequency": (0.0, 100.0),
}
# Reported, never acted on: one of these out of range is dropped, not the whole sample, so
# a meter whose power factor reads oddly still measures the energy and current that the
# transaction and the limiter need.
_INFORMATIVE = ("power_factor",)


def _bounds(name: str) -> tuple[float, float]:
    for prefix, bounds in _PLAUSIBLE.items():
        if name.startswith(prefix):
            return bounds
    return (-math.inf, math.inf)


class ModbusMeter:
    """One meter on a Modbus link. `poll()` reads the map's plan and returns SI values."""

    def __init__(
        self,
        regmap: RegisterMap | str | Path,
        transport: ModbusTransport,
        *,
        device_id: int | None = None,
        timeout_s: float = 1.0,
        retries: int = 0,
        request_gap_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.regmap = regmap if isinstance(regmap, RegisterMap) else load_map(regmap)
        self.transport = transport
        self.device_id = self.regmap.serial.device_id if device_id is None else device_id
        self.timeout_s = timeout_s
        self.retries = retries
        self.request_gap_s = self.regmap.request_gap_s if request_gap_s is None else request_gap_s
        self._clock: Clock = clock or SystemClock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # reconnect_delay=0: the poller decides when to reconnect, not a background task.
        t = self.transport
        if isinstance(t, TcpTransport):
            return AsyncModbusTcpClient(
                t.host, port=t.port, timeout=self.timeout_s, retries=self.retries, reconnect_delay=0
            )
        s = self.regmap.serial
        return AsyncModbusSerialClient(
            t.port,
            baudrate=t.baudrate or s.baudrate,
            parity=t.parity or s.parity,
            stopbits=t.stopbits or s.stopbits,
            bytesize=t.bytesize or s.bytesize,
            timeout=self.timeout_s,
            retries=self.retries,
            reconnect_delay=0,
        )

    async def connect(self) -> None:
        await self.close()
        self._client = self._make_client()
        try:
            ok = await self._client.connect()
        except Exception as exc:  # the library may raise anything (serial, OS, its own)
            ok = False
            log.debug("meter connect failed: %r", exc)
        if not ok:
            await self.close()
            raise MeterError(f"cannot connect to meter at {self._where()}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing a broken link must not fail the caller
                log.debug("meter close failed: %r", exc)

    def _where(self) -> str:
        t = self.transport
        return f"{t.host}:{t.port}" if isinstance(t, TcpTransport) else t.port

    async def poll(self) -> MeterSample:
        if not self.connected:
            await self.connect()
        values: dict[str, float | None] = {}
        for i, block in enumerate(self.regmap.plan):
            if i and self.request_gap_s > 0:
                await self._clock.sleep(self.request_gap_s)
            registers = await self._read(block.address, block.count)
            values.update(self.regmap.decode_block(block, registers))
        return self._sample(values)

    async def _read(self, address: int, count: int) -> list[int]:
        assert self._client is not None
        fc = self.regmap.function_code
        try:
            if fc == 4:
                rr = await self._client.read_input_registers(
                    address, count=count, device_id=self.device_id
                )
            else:
                rr = await self._client.read_holding_registers(
                    address, count=count, device_id=self.device_id
                )
        # CancelledError is a BaseException and passes: stopping a poller mid-read still works.
        except Exception as exc:  # timeout (ModbusIOException), lost link, framing trouble
            raise MeterError(
                f"no answer reading {count} registers at 0x{address:04X}: {exc}"
            ) from exc
        if rr.isError():
            code = getattr(rr, "exception_code", "?")
            raise MeterError(f"exception response {code} reading 0x{address:04X}")
        registers = list(getattr(rr, "registers", None) or [])
        if len(registers) != count:
            raise MeterError(
                f"short response at 0x{address:04X}: {len(registers)} of {count} registers"
            )
        return registers

    def _sample(self, v: dict[str, float | None]) -> MeterSample:
        v = dict(v)
        for name, value in v.items():
            lo, hi = _bounds(name)
            if value is not None and not lo <= value <= hi:
                if name.startswith(_INFORMATIVE):
                    log.debug("meter: implausible %s = %r dropped", name, value)
                    v[name] = None
                    continue
                raise MeterError(f"implausible {name} = {value!r}: rejecting sample")
        if all(value is None for value in v.values()):
            raise MeterError("meter answered, but no value was readable")

        def phases(prefix: str) -> tuple[float | None, float | None, float | None]:
            return (v.get(f"{prefix}_l1"), v.get(f"{prefix}_l2"), v.get(f"{prefix}_l3"))

        return MeterSample(
            voltage_v=phases("voltage"),
            current_a=phases("current"),
            power_w=phases("power"),
            power_total_w=v.get("power_total"),
            energy_import_wh=v.get("energy_import"),
            frequency_hz=v.get("frequency"),
            energy_export_wh=v.get("energy_export"),
            reactive_power_var=phases("reactive_power"),
            reactive_power_total_var=v.get("reactive_power_total"),
            power_factor=phases("power_factor"),
            power_factor_total=v.get("power_factor_total"),
        )


__all__ = [
    "MeterError",
    "ModbusMeter",
    "ModbusTransport",
    "RtuTransport",
    "TcpTransport",
]
