"""`evsed selftest`: commissioning checks of every fitted part, one row each.

Run with the service stopped (it owns the outputs). The pilot is checked first: the relay is
only closed when the pilot reads state A (no vehicle plugged), the proximity pilot reads no
cable in the socket (a cable plugged there with its car end hanging free would have live
pins: CP reads A all the same), the RCD has not tripped, and the person at the charger
agreed (`close_relay`: the connector's pins are live while it is closed). The pilot stays at
a steady +12 V (no PWM, so no current offered) while it is closed, and is not put into PWM
at all once a vehicle is seen. Whatever happens (a failed row, an exception, Ctrl-C), the
relay ends open and the pilot at +12 V before the devices are released.

The limits below are what a healthy installation reads with nothing plugged in; they are
wide on purpose: a commissioning check finds a wrong wire or a dead part, not drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from evsed.controller import hardware
from evsed.controller.charger import ConnectorParts, Parts
from evsed.controller.clock import Clock, SystemClock
from evsed.controller.config import Config
from evsed.controller.config import Connector as ConnectorConfig
from evsed.hal.types import DeviceFault, PilotState

log = logging.getLogger(__name__)

PLUS_12_V = (11.0, 13.0)
MINUS_12_V = (-13.0, -11.0)
#: Half duty: the low plateau is sampled as often as the high one.
TEST_DUTY = 0.5
PILOT_SAMPLES = 200
TEMPERATURE_C = (-25.0, 60.0)
MAINS_V = (190.0, 260.0)
#: What a meter may show flowing with the relay open (noise, its own consumption).
IDLE_POWER_W = 100.0
METER_TIMEOUT_S = 5.0
READER_WINDOW_S = 1.5
#: The lock driver's pulse (0.5 s) and the motor's travel.
LOCK_WAIT_S = 0.8
#: Consent to close the relay: True (`--close-relay`), False (not given: the relay rows are
#: skipped), or a question asked for connector n right before it closes (a tty).
CloseRelay: TypeAlias = bool | Callable[[int], bool]
NEEDS_CONSENT = "not tried (needs --close-relay)"


@dataclass(frozen=True)
class Row:
    part: str
    connector: int | None  # None: the whole charge point (reader)
    ok: bool | None  # None: not fitted / not checkable here (does not fail the test)
    detail: str


def failed(rows: list[Row]) -> bool:
    return any(r.ok is False for r in rows)


def format_table(rows: list[Row]) -> str:
    table = [("part", "conn", "result", "detail")]
    for r in rows:
        result = {True: "PASS", False: "FAIL", None: "skip"}[r.ok]
        table.append((r.part, "-" if r.connector is None else str(r.connector), result, r.detail))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    lines.append(summary(rows))
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """The table's last line. A skipped row is counted, never folded into "passed": a part
    not tried (the relay without consent, a part not fitted) has not been shown to work."""
    n_passed = sum(r.ok is True for r in rows)
    n_failed = sum(r.ok is False for r in rows)
    n_skipped = sum(r.ok is None for r in rows)
    skipped = f", {n_skipped} skipped" if n_skipped else ""
    if n_failed:
        return f"{n_failed} failed{skipped}"
    if n_passed == 0:
        return f"no checks run{skipped}"
    if n_passed == 1:
        return f"1 check passed{skipped}"
    return f"all {n_passed} checks passed{skipped}"


class _Connector:
    """The checks of one connector, in the order they must run."""

    def __init__(
        self,
        n: int,
        cfg: ConnectorConfig,
        parts: ConnectorParts,
        clock: Clock,
        close_relay: CloseRelay = False,
    ) -> None:
        self.n = n
        self.cfg = cfg
        self.parts = parts
        self.clock = clock
        self.close_relay = close_relay
        self.rows: list[Row] = []
        self.vehicle = False  # a vehicle seems plugged: no PWM, no relay test
        self.cable = False  # a plug in the socket outlet: no relay test

    def row(self, part: str, ok: bool | None, detail: str) -> None:
        self.rows.append(Row(part, self.n, ok, detail))

    async def check(self, part: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception as exc:
            log.debug("selftest %s", part, exc_info=True)
            self.row(part, False, f"{type(exc).__name__}: {exc}")

    async def _read_pilot(self) -> Any:
        await self.clock.sleep(0.05)  # the driver and the RC filter settle
        return await asyncio.to_thread(self.parts.sensor.read, PILOT_SAMPLES)

    async def pilot_plus(self) -> None:
        self.parts.pilot.set_duty(1.0)
        reading = await self._read_pilot()
        lo, hi = PLUS_12_V
        ok = lo <= reading.high_v <= hi
        detail = f"{reading.high_v:+.1f} V (expected {lo:+.0f} to {hi:+.0f} V)"
        if reading.state in (PilotState.B, PilotState.C, PilotState.D):
            self.vehicle = True
            ok = False
            detail += f": state {reading.state}, unplug the vehicle"
        elif reading.state is PilotState.E:
            detail += ": CP shorted to PE, or the pilot driver has no supply"
        self.row("pilot +12 V", ok, detail)

    async def pilot_minus(self) -> None:
        if self.vehicle:
            # PWM is a current offer (50 % = 30 A): a vehicle in state B would start drawing
            # as soon as the relay closed, and the relay is the only thing between.
            self.row("pilot -12 V", None, "not tried: a vehicle is plugged (PWM offers current)")
            return
        try:
            self.parts.pilot.set_duty(TEST_DUTY)
            reading = await self._read_pilot()
        finally:
            self.parts.pilot.set_duty(1.0)
        lo, hi = MINUS_12_V
        ok = lo <= reading.low_v <= hi
        detail = f"{reading.low_v:+.1f} V during PWM (expected {lo:+.0f} to {hi:+.0f} V)"
        if not ok and reading.low_v > hi:
            detail += ": no -12 V supply, or the pilot driver does not swing"
        self.row("pilot -12 V", ok, detail)

    async def proximity(self) -> None:
        pp = self.cfg.proximity
        if not pp.enabled:
            self.row("proximity", None, "not fitted")
            return
        if self.parts.proximity is None:
            self.row("proximity", None, f"fixed cable {pp.fixed_cable_a} A")
            return
        reading = self.parts.proximity.read()
        if reading.short:
            self.row("proximity", False, f"{reading.ohms:.0f} ohm: PP shorted to PE")
        elif reading.cable_a is None:
            self.row("proximity", True, "open (no cable plugged)")
        else:
            self.cable = True
            self.row("proximity", True, f"{reading.cable_a} A cable ({reading.ohms:.0f} ohm)")

    async def relay(self) -> None:
        contactor = self.parts.contactor
        rcd = self.parts.rcd
        reason = ""
        if self.vehicle:
            reason = "a vehicle is plugged"
        elif self.cable:
            # CP reads A with the car end of the cable hanging free: only PP tells.
            reason = "a cable is plugged in the socket (its pins would be live): unplug it"
        elif not any(r.part == "pilot +12 V" and r.ok for r in self.rows):
            reason = "the pilot check failed"
        elif rcd is not None and rcd.tripped:
            reason = "the RCD is tripped"
        if reason:
            self.row("relay close", False, f"not tried: {reason}")
            self.row("relay open", False, f"not tried: {reason}")
            return
        if not await self._consent():
            self.row("relay close", None, NEEDS_CONSENT)
            self.row("relay open", None, NEEDS_CONSENT)
            return
        settle = self.cfg.contactor.settle_s + 0.1
        try:
            contactor.energize()
            await self.clock.sleep(settle)
            closed = contactor.feedback()
        finally:
            contactor.deenergize()
        if closed is None:
            self.row("relay close", None, "no feedback contact fitted: listen for the click")
        else:
            self.row("relay close", closed, "feedback closed" if closed else "feedback stayed open")
        await self.clock.sleep(settle)
        still = contactor.feedback()
        if still is None:
            self.row("relay open", None, "no feedback contact fitted")
        else:
            self.row(
                "relay open",
                not still,
                "feedback stayed closed: welded?" if still else "feedback open",
            )

    async def _consent(self) -> bool:
        if callable(self.close_relay):
            # Asked right before closing (not up front): the answer is about this moment.
            return bool(await asyncio.to_thread(self.close_relay, self.n))
        return self.close_relay is True

    async def rcd(self) -> None:
        rcd = self.parts.rcd
        if rcd is None:
            self.row("RCD self-test", None, "not fitted")
            return
        if rcd.tripped:
            self.row("RCD self-test", False, "tripped before the test: reset it")
            return
        passed = await rcd.self_test()
        self.row(
            "RCD self-test", passed, "tripped on the test output" if passed else "did not trip"
        )

    async def lock(self) -> None:
        lock = self.parts.lock
        if lock is None:
            self.row("lock", None, "not fitted")
            return
        wait = LOCK_WAIT_S
        try:
            lock.lock()
            await self.clock.sleep(wait)
            locked = lock.locked()
        finally:
            lock.unlock()
        await self.clock.sleep(wait)
        released = lock.locked()
        if locked is None:
            self.row("lock", None, "no feedback fitted: watch it move")
        elif locked and released is False:
            self.row("lock", True, "locked and released")
        elif not locked:
            self.row("lock", False, "feedback did not show locked")
        else:
            self.row("lock", False, "locked, but did not release")

    async def temperature(self) -> None:
        sensor = self.parts.temperature
        if sensor is None:
            self.row("temperature", None, "not fitted")
            return
        celsius = await asyncio.to_thread(sensor.read_celsius)
        lo, hi = TEMPERATURE_C
        ok = lo <= celsius <= hi
        self.row("temperature", ok, f"{celsius:.1f} C (expected {lo:.0f} to {hi:.0f} C)")

    async def meter(self) -> None:
        meter = self.parts.meter
        if meter is None:
            self.row("meter", None, "not fitted")
            return
        try:
            await asyncio.wait_for(meter.connect(), METER_TIMEOUT_S)
            sample = await asyncio.wait_for(meter.poll(), METER_TIMEOUT_S)
        finally:
            with contextlib.suppress(Exception):
                await meter.close()
        problems = []
        energy = sample.energy_import_wh
        if energy is None or energy < 0:
            problems.append(f"energy register {energy}")
        volts = [v for v in sample.voltage_v[: self.cfg.phases] if v is not None]
        lo, hi = MAINS_V
        if volts and not all(lo <= v <= hi for v in volts):
            problems.append(f"voltage {volts} V outside {lo:.0f}-{hi:.0f} V")
        power = sample.power_total_w
        if power is not None and abs(power) > IDLE_POWER_W:
            problems.append(f"{power:.0f} W flowing with the relay open")
        if problems:
            self.row("meter", False, "; ".join(problems))
        else:
            shown = f"{energy:.0f} Wh" + (f", {volts[0]:.0f} V" if volts else "")
            self.row("meter", True, shown)


async def _reader_row(parts: Parts, clock: Clock, window_s: float) -> Row:
    reader = parts.reader
    if reader is None:
        return Row("reader", None, None, "not fitted")
    faults: list[str] = []

    def sink(event: object) -> None:
        if isinstance(event, DeviceFault) and event.active:
            faults.append(event.detail)

    reader.start(sink)
    await clock.sleep(window_s)
    if faults:
        return Row("reader", None, False, faults[0])
    return Row("reader", None, True, f"{reader.name} answering")


async def check_parts(
    config: Config,
    parts: Parts,
    clock: Clock,
    *,
    reader_window_s: float = READER_WINDOW_S,
    close_relay: CloseRelay = False,
) -> list[Row]:
    rows: list[Row] = []
    try:
        for n, (cfg, cparts) in enumerate(zip(config.connectors, parts.connectors, strict=True), 1):
            c = _Connector(n, cfg, cparts, clock, close_relay)
            for part, fn in (
                ("pilot +12 V", c.pilot_plus),
                ("pilot -12 V", c.pilot_minus),
                ("proximity", c.proximity),
                ("RCD self-test", c.rcd),
                ("relay", c.relay),
                ("lock", c.lock),
                ("temperature", c.temperature),
                ("meter", c.meter),
            ):
                await c.check(part, fn)
            rows.extend(c.rows)
        try:
            rows.append(await _reader_row(parts, clock, reader_window_s))
        except Exception as exc:
            rows.append(Row("reader", None, False, f"{type(exc).__name__}: {exc}"))
    finally:
        make_safe(parts)
    return rows


def make_safe(parts: Parts) -> None:
    """Relays open, pilots at +12 V: first, and each whatever the others did."""
    for c in parts.connectors:
        with contextlib.suppress(Exception):
            c.contactor.deenergize()
    for c in parts.connectors:
        with contextlib.suppress(Exception):
            c.pilot.set_duty(1.0)


async def run_selftest(
    config: Config,
    *,
    clock: Clock | None = None,
    on_bench: Callable[[Any], Awaitable[None]] | None = None,
    reader_window_s: float = READER_WINDOW_S,
    close_relay: CloseRelay = False,
) -> list[Row]:
    """Build the configured parts (on the simulated bench when it is enabled; `on_bench`
    is then awaited with it before the checks, e.g. to inject a fault), check them, and
    release them safe."""
    clock = clock or SystemClock()
    bench = None
    wired = config
    if config.bench.enabled:
        from evsed.controller import simbench

        bench = simbench.build_bench(config, clock)
        await bench.start(control=False)
    try:
        if bench is not None:
            from evsed.controller import simbench

            wired = simbench.wired(config, bench.endpoints())
        parts = hardware.build(wired, clock)
        try:
            if bench is not None:
                bench.drivers_ready()
                if on_bench is not None:
                    await on_bench(bench)
            return await check_parts(
                wired, parts, clock, reader_window_s=reader_window_s, close_relay=close_relay
            )
        finally:
            make_safe(parts)
            parts.shutdown()
    finally:
        if bench is not None:
            await bench.stop()
