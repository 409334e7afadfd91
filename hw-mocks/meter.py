"""The bench's energy meter: a pymodbus server answering with a real meter model's register map.

Registers follow a simulated load (`set_load`, or a `source` callable sampled on each update)
and import energy integrates over time. Time is explicit: `await meter.update(now)` integrates
from the previous update to the monotonic time `now` (default: the injected clock), so tests
are deterministic; `update_interval_s` makes the meter update itself on its clock for demos.

The registers are encoded with the same map data the driver decodes with (`regmap.encode`).

Faults (`meter.fault = MeterFault.SILENT`, None to heal):
- SILENT: requests are received but never answered (the client times out);
- GARBAGE: answers are replaced by noise bytes of the same length (the framer rejects them);
- SHORT: well-formed answers carrying half the registers asked for;
- EXCEPTION: Modbus exception 4 (server device failure);
- NONSENSE: well-formed answers with random register contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from evsed.hal.clock import Clock, SystemClock
from evsed.hal.meters.regmap import RegisterMap, encode, load_map

log = logging.getLogger(__name__)

Triple = tuple[float, float, float]


class MeterFault(StrEnum):
    SILENT = "silent"
    GARBAGE = "garbage"
    SHORT = "short"
    EXCEPTION = "exception"
    NONSENSE = "nonsense"


@dataclass(frozen=True, slots=True)
class Load:
    """What flows through the meter right now."""

    voltage_v: Triple = (230.0, 230.0, 230.0)
    current_a: Triple = (0.0, 0.0, 0.0)
    power_factor: float = 1.0
    frequency_hz: float = 50.0

    @property
    def power_w(self) -> Triple:
        v, i, pf = self.voltage_v, self.current_a, self.power_factor
        return (v[0] * i[0] * pf, v[1] * i[1] * pf, v[2] * i[2] * pf)

    @property
    def reactive_power_var(self) -> Triple:
        """Q = V x I x sin(phi): an inductive (lagging) load imports reactive power too; a
        negative current (export) exports it."""
        v, i = self.voltage_v, self.current_a
        sin_phi = math.sqrt(max(0.0, 1.0 - min(1.0, self.power_factor) ** 2))
        return (v[0] * i[0] * sin_phi, v[1] * i[1] * sin_phi, v[2] * i[2] * sin_phi)


class SimMeter:
    """A simulated meter of `model` (built-in map name, path, or RegisterMap).

    TCP on `host`:`port` (port 0 = ephemeral; read `.port` after `start()`), or Modbus RTU on
    `serial_port` (e.g. one end of `evsed.hwmocks.serialpair.SerialPair`) when that is given; the
    line settings are the map's serial defaults, `serial_parity` overriding the parity.
    """

    def __init__(
        self,
        model: str | Path | RegisterMap = "sdm630",
        *,
        device_id: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        serial_parity: str | None = None,
        clock: Clock | None = None,
        source: Callable[[], Load] | None = None,
        energy_wh: float = 0.0,
        update_interval_s: float | None = None,
        seed: int = 0,
        key: str | None = None,
    ) -> None:
        self.regmap = model if isinstance(model, RegisterMap) else load_map(model)
        self.device_id = self.regmap.serial.device_id if device_id is None else device_id
        names = {f.name for f in self.regmap.fields}
        # A map with L1 values but no L2/L3 is a single-phase meter: it sees only L1.
        self.phases = 1 if "voltage_l1" in names and not names & {"voltage_l2", "voltage_l3"} else 3
        self.host = host
        self._port = port
        self.serial_port = serial_port
        # Linux ptys refuse even parity (EINVAL) though they ignore line settings: override it.
        self.serial_parity = serial_parity
        self.clock: Clock = clock or SystemClock()
        self.source = source
        self.energy_wh = energy_wh
        self.energy_export_wh = 0.0  # what a negative power (PV through a grid meter) sends out
        self.load = Load()
        self.fault: MeterFault | None = None
        self.update_interval_s = update_interval_s
        #: The setting its port comes from, for the port-in-use message (the bench's wiring
        #: passes it: "[connectors.meter] port, connector 1").
        self.key = key
        self._rng = random.Random(seed)
        self._last_t: float | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.requests = 0  # requests seen, answered or not

    # --- load and energy -------------------------------------------------------------------

    def set_load(
        self,
        voltage_v: Triple,
        current_a: Triple,
        power_factor: float = 1.0,
        frequency_hz: float = 50.0,
    ) -> None:
        """Set the load; `update()` publishes it.

        `update(now)` integrates the time since the previous update at the load in effect when
        it runs, so to change load at time t call `update(t)` first, then `set_load`.
        """
        v, i = voltage_v, current_a
        self.load = Load((v[0], v[1], v[2]), (i[0], i[1], i[2]), power_factor, frequency_hz)

    @property
    def power_total_w(self) -> float:
        return sum(self.load.power_w[: self.phases])

    def values(self) -> dict[str, float]:
        """The SI values the registers hold after the next update, by quantity name."""
        ld = self.load
        n = self.phases
        # The signed power factor a meter shows: negative while the total is exported.
        pf = -ld.power_factor if self.power_total_w < 0 else ld.power_factor
        out: dict[str, float] = {
            "power_total": self.power_total_w,
            "energy_import": self.energy_wh,
            "energy_export": self.energy_export_wh,
            "frequency": ld.frequency_hz,
            "reactive_power_total": sum(ld.reactive_power_var[:n]),
            "power_factor_total": pf,
        }
        for k in range(3):
            out[f"voltage_l{k + 1}"] = ld.voltage_v[k]
            out[f"current_l{k + 1}"] = ld.current_a[k]
            out[f"power_l{k + 1}"] = ld.power_w[k]
            out[f"reactive_power_l{k + 1}"] = ld.reactive_power_var[k]
            exported = ld.current_a[k] < 0
            out[f"power_factor_l{k + 1}"] = -ld.power_factor if exported else ld.power_factor
        return out

    def _integrate(self, t: float) -> None:
        if self._last_t is not None and t > self._last_t:
            hours = (t - self._last_t) / 3600.0
            # Import only counts import, export only export: neither register counts down.
            self.energy_wh += max(self.power_total_w, 0.0) * hours
            self.energy_export_wh += max(-self.power_total_w, 0.0) * hours

    def accrue(self, now: float | None = None) -> None:
        """Integrate energy up to `now` at the load in effect, before the load changes (the
        contactor opens, the EV leaves): the next update must not count the new moment at
        the old power (the register kept creeping up after an unplug)."""
        t = self.clock.monotonic() if now is None else now
        if self._last_t is not None and t > self._last_t:
            self._integrate(t)
            self._last_t = t

    def resample(self) -> None:
        """The load from the source now (after `accrue` and the change it preceded)."""
        if self.source is not None:
            self.load = self.source()

    async def update(self, now: float | None = None) -> None:
        """Integrate energy up to monotonic time `now`, sample the source, write the registers."""
        t = self.clock.monotonic() if now is None else now
        self._integrate(t)
        self._last_t = t
        if self.source is not None:
            self.load = self.source()
        await self._publish()

    async def advance(self, dt_s: float) -> None:
        """`update()` at `dt_s` seconds after the previous update (or after the clock's now)."""
        if self._last_t is None:
            self._last_t = self.clock.monotonic()
        await self.update(self._last_t + dt_s)

    def registers(self) -> dict[int, int]:
        """Register image (address -> value) encoding `values()` with the map."""
        image: dict[int, int] = {}
        vals = self.values()
        for f in self.regmap.fields:
            words = encode(f, vals.get(f.name), nan_markers=self.regmap.nan_markers)
            for k, w in enumerate(words):
                image[f.address + k] = w
        return image

    async def _publish(self) -> None:
        if self._server is None:
            return
        image = self.registers()
        for block in self.regmap.plan:
            regs = [image.get(a, 0) for a in range(block.address, block.address + block.count)]
            await self._server.async_setValues(
                self.device_id, self.regmap.function_code, block.address, regs
            )

    async def poke(self, address: int, values: list[int]) -> None:
        """Write raw registers (e.g. a NaN marker) until the next update overwrites them."""
        assert self._server is not None, "start() the meter first"
        await self._server.async_setValues(
            self.device_id, self.regmap.function_code, address, values
        )

    # --- server ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (valid after `start()` for TCP meters)."""
        return self._port

    def _device(self) -> SimDevice:
        blocks = [
            SimData(b.address, count=b.count, values=0, datatype=DataType.REGISTERS)
            for b in self.regmap.plan
        ]
        # The other register table needs one entry; put it where no meter map reads.
        dummy = [SimData(0xFFFF, count=1, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        holding, inputs = (blocks, dummy) if self.regmap.function_code == 3 else (dummy, blocks)
        return SimDevice(id=self.device_id, simdata=(bits, list(bits), holding, inputs))

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.requests += 1
            return data
        if self.fault is MeterFault.SILENT:
            return b""
        if self.fault is MeterFault.GARBAGE:
            return bytes(self._rng.randrange(256) for _ in data)
        return data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending or not pdu.registers:
            return pdu
        if self.fault is MeterFault.SHORT:
            pdu.registers = pdu.registers[: len(pdu.registers) // 2]
        elif self.fault is MeterFault.NONSENSE:
            pdu.registers = [self._rng.randrange(0x10000) for _ in pdu.registers]
        elif self.fault is MeterFault.EXCEPTION:
            return ExceptionResponse(
                pdu.function_code,
                exception_code=4,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        return pdu

    async def start(self) -> SimMeter:
        device = self._device()
        if self.serial_port is not None:
            s = self.regmap.serial
            self._server = ModbusSerialServer(
                device,
                port=self.serial_port,
                baudrate=s.baudrate,
                parity=self.serial_parity or s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                trace_packet=self._trace_packet,
                trace_pdu=self._trace_pdu,
            )
        else:
            self._server = ModbusTcpServer(
                device,
                address=(self.host, self._port),
                trace_packet=self._trace_packet,
                trace_pdu=self._trace_pdu,
            )
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError:
            # pymodbus says only "Could not start listen": name the port (for a serial
            # meter the pseudo-terminal was just made, so it is the TCP case that fails).
            where = self.serial_port or f"{self.host}:{self._port}"
            if self.key is not None:
                where += f" ({self.key})"
            raise OSError(
                errno.EADDRINUSE, f"the simulated meter cannot listen on {where}"
            ) from None
        if self.serial_port is None:
            listener = self._server.transport
            self._port = listener.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await self.update()
        if self.update_interval_s:
            self._ticker = asyncio.create_task(self._tick(self.update_interval_s))
        return self

    async def _tick(self, interval_s: float) -> None:
        while True:
            await self.clock.sleep(interval_s)
            try:
                await self.update()
            except Exception:  # a bad source must not stop the bench
                log.exception("simulated meter update failed")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def __aenter__(self) -> SimMeter:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
