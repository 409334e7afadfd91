"""The simulated charger bench: pins, ADC, EV, meter and readers wired as one charger.

Built from `BenchSettings` (evsed.hwmocks.settings), which the controller's one wiring
module (`evsed.controller.simbench`) derives from its configuration: the bench knows the
hardware layer, never the controller. It must exist *before* the drivers (gpiozero mock
pins are created here first), and `endpoints()` tells where the bench put what the
settings cannot know in advance (the meter's TCP port when it was 0, an RTU meter's and
the reader's pseudo-terminal).

Each connector has its own pins, EV and meter; all share the one ADC chip (each on its
own channels, as `evsed config check` demands) and the grid meter.

    bench = Bench(settings)
    await bench.start()
    endpoints = bench.endpoints()           # the wiring module points the drivers there
    ...build the real drivers, on the bench's pins...
    bench.drivers_ready()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evsed.hal.clock import Clock, SystemClock
from evsed.hwmocks.control import ControlServer
from evsed.hwmocks.ev import EvConfig, SimEv
from evsed.hwmocks.meter import Load, MeterFault, SimMeter
from evsed.hwmocks.pins import BenchPins, SimMcp3xxx, install_mock_factory, uninstall_mock_factory
from evsed.hwmocks.rfid import SimPn532, SimRdm6300
from evsed.hwmocks.serialpair import SerialPair
from evsed.hwmocks.settings import (
    BenchEndpoints,
    BenchSettings,
    MeterEndpoint,
    SimConnectorSettings,
    SimMeterSettings,
)

log = logging.getLogger(__name__)

# A Type 2 cable rated 32 A (REFERENCE §2: 220 ohm).
DEFAULT_CABLE_OHMS = 220.0
# How long a card stays on the reader when the caller gives no hold time: a tap.
TAP_S = 0.4
HOT_C = 95.0
NORMAL_C = 25.0
METER_UPDATE_S = 0.5

BENCH_WIDE_FAULTS = frozenset({"reader_unplugged", "reader_silent", "reader_garbage"})


@dataclass
class SimConnector:
    """One simulated connector: its pins, its EV and its meter."""

    id: int
    settings: SimConnectorSettings
    pins: BenchPins
    ev: SimEv
    meter: SimMeter | None
    faults: set[str]
    # An RTU meter's null-modem cable: the meter serves port_a, the driver opens port_b.
    serial: SerialPair | None = None
    _duty: float = 1.0
    _closed: bool = False
    _one_phase: bool = False
    car_phases: int = 3  # what the car itself can take (the phase relay may take fewer)

    def sync(self) -> None:
        """Tell the EV what the charger does now (PWM duty, contactor, phase relay)."""
        one = self.pins.phases_switched_to_one
        if one != self._one_phase:
            self._one_phase = one
            # The car draws on the phases the connector gives it (never switched under
            # load: evsed moves the relay only with the contactor open).
            self.ev.configure(phases=1 if one else self.car_phases)
        duty = self.pins.pilot_duty
        duty = 1.0 if duty is None else duty
        if duty != self._duty:
            self._duty = duty
            self.ev.set_duty(duty)
        closed = self.pins.contactor_closed
        if closed != self._closed:
            self._closed = closed
            if self.meter is not None:
                self.meter.accrue()
            self.ev.set_contactor(closed)
            if self.meter is not None:
                self.meter.resample()

    def cp_high_volts(self) -> float:
        # Called at every ADC conversion of CP: the EV sees the latest duty first.
        self.sync()
        return self.ev.cp_high_volts()

    def load(self) -> Load:
        self.sync()
        return Load(self.ev.phase_voltages_v(), self.ev.phase_currents_a())


def _endpoint(meter: SimMeter | None, pair: SerialPair | None) -> MeterEndpoint | None:
    """Where a driver reaches the simulated meter: the pty pair's far end, or loopback TCP."""
    if meter is None:
        return None
    if pair is not None:
        return MeterEndpoint(serial_port=pair.port_b, parity="N")
    return MeterEndpoint(host="127.0.0.1", port=meter.port)


class Bench:
    """Implements evsed.hwmocks.control.BenchControl."""

    def __init__(self, settings: BenchSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.factory = install_mock_factory()
        self._connectors: dict[int, SimConnector] = {}
        self.rdm6300: SimRdm6300 | None = None
        self.pn532: SimPn532 | None = None
        self.control: ControlServer | None = None
        self._bench_faults: set[str] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        # The house behind the grid meter: its own consumption and a PV inverter's output,
        # per phase in amps; the grid meter sees house + EVs - PV.
        self.house_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.pv_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.grid_meter: SimMeter | None = None
        self.grid_serial: SerialPair | None = None
        self._adc: SimMcp3xxx | None = None
        try:
            if settings.grid_meter is not None:
                self.grid_meter, self.grid_serial = self._meter(
                    settings.grid_meter, self._grid_load, "[grid.meter] port"
                )
            for index, cfg in enumerate(settings.connectors):
                self._connectors[index + 1] = self._build_connector(index + 1, cfg)
        except BaseException:
            self._close_serial()
            for sim in self._connectors.values():
                with contextlib.suppress(Exception):
                    sim.pins.close()
            uninstall_mock_factory(self.factory)
            raise

    def _meter(
        self, cfg: SimMeterSettings, source: Callable[[], Load], key: str
    ) -> tuple[SimMeter | None, SerialPair | None]:
        """A simulated meter for `cfg`: on loopback TCP, or on a pty pair for RTU."""
        if cfg.transport == "none":
            return None, None
        pair = SerialPair() if cfg.transport == "rtu" else None
        meter = SimMeter(
            cfg.model,
            device_id=cfg.device_id,
            port=cfg.port,
            # Linux ptys refuse even parity (EINVAL) though they ignore it: both ends use N.
            serial_port=None if pair is None else pair.port_a,
            serial_parity=None if pair is None else "N",
            source=source,
            update_interval_s=METER_UPDATE_S,
            clock=self.clock,
            key=key,
        )
        return meter, pair

    def _close_serial(self) -> None:
        pairs = [sim.serial for sim in self._connectors.values()] + [self.grid_serial]
        for pair in pairs:
            if pair is not None:
                pair.close()

    def _build_connector(self, cid: int, cfg: SimConnectorSettings) -> SimConnector:
        bench = self.settings
        pins = BenchPins(
            self.factory,
            pilot_pin=cfg.pilot_pin,
            relay_pin=cfg.relay_pin,
            relay_feedback_pin=cfg.relay_feedback_pin,
            phase_switch_pin=cfg.phase_switch_pin,
            rcd_fault_pin=cfg.rcd_fault_pin,
            rcd_test_pin=cfg.rcd_test_pin,
            lock_pin=cfg.lock_pin,
            unlock_pin=cfg.unlock_pin,
            lock_feedback_pin=cfg.lock_feedback_pin,
            adc_select_pin=bench.adc_select_pin,
            adc_bits=bench.adc_bits,
            vref=bench.adc_vref,
            cp_channel=cfg.cp_channel,
            pp_channel=cfg.pp_channel,
            temp_channel=cfg.temp_channel,
            cp_gain=cfg.cp_gain,
            cp_offset=cfg.cp_offset,
            pp_pull_up_ohms=cfg.pp_pull_up_ohms,
            pp_supply_v=cfg.pp_supply_v,
            ntc_beta=cfg.ntc_beta,
            ntc_r25=cfg.ntc_r25_ohms,
            ntc_series_r=cfg.ntc_series_ohms,
            ntc_vref=bench.adc_vref,
            adc=self._adc,
        )
        # The first connector's pins create the chip; the others wire into it.
        self._adc = pins.adc
        ev = SimEv(
            self.clock,
            EvConfig(
                max_current_a=bench.ev.max_current_a,
                phases=min(bench.ev.phases, cfg.phases),
                response_s=bench.ev.delay_s,
                nominal_voltage_v=cfg.nominal_voltage_v,
            ),
        )
        sim = SimConnector(cid, cfg, pins, ev, None, set(), car_phases=ev.config.phases)
        pins.set_cp(sim.cp_high_volts)
        try:
            sim.meter, sim.serial = self._meter(
                cfg.meter, sim.load, f"[connectors.meter] port, connector {cid}"
            )
        except BaseException:
            pins.close()
            raise
        return sim

    # ------------------------------------------------------------------ life cycle

    def _grid_load(self) -> Load:
        ev = [0.0, 0.0, 0.0]
        for sim in self._connectors.values():
            sim.sync()
            for i, a in enumerate(sim.ev.phase_currents_a()):
                ev[i] += a
        # Export shows as negative current and power, as a bidirectional meter's power does.
        net = (
            self.house_a[0] + ev[0] - self.pv_a[0],
            self.house_a[1] + ev[1] - self.pv_a[1],
            self.house_a[2] + ev[2] - self.pv_a[2],
        )
        return Load((230.0, 230.0, 230.0), net)

    def set_house(
        self,
        house_a: tuple[float, float, float] | None = None,
        pv_a: tuple[float, float, float] | None = None,
    ) -> None:
        if house_a is not None:
            self.house_a = house_a
        if pv_a is not None:
            self.pv_a = pv_a

    async def start(self, *, control: bool = True) -> None:
        for pair in [sim.serial for sim in self._connectors.values()] + [self.grid_serial]:
            if pair is not None:
                pair.start()
        for sim in self._connectors.values():
            if sim.meter is not None:
                await sim.meter.start()
        if self.grid_meter is not None:
            await self.grid_meter.start()
        # Only the configured reader is simulated: the other's thread would cost idle CPU
        # for a device no driver listens to.
        if self.settings.reader == "pn532":
            self.pn532 = SimPn532()
        else:
            self.rdm6300 = SimRdm6300()
        if control:
            self.control = ControlServer(
                self, self.settings.control_host, self.settings.control_port
            )
            await self.control.start()

    def endpoints(self) -> BenchEndpoints:
        """Where the started bench's meters and reader are, for the drivers to connect to."""
        meters = {
            cid: endpoint
            for cid, sim in self._connectors.items()
            if (endpoint := _endpoint(sim.meter, sim.serial)) is not None
        }
        reader = self.rdm6300 or self.pn532
        return BenchEndpoints(
            meters=meters,
            grid_meter=_endpoint(self.grid_meter, self.grid_serial),
            reader_port=None if reader is None else reader.port,
        )

    def drivers_ready(self) -> None:
        """Re-drive inputs after the drivers set their pulls (they reset mock input pins)."""
        for sim in self._connectors.values():
            sim.pins.sync()

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.control is not None:
            await self.control.close()
        for sim in self._connectors.values():
            if sim.meter is not None:
                await sim.meter.stop()
        if self.grid_meter is not None:
            await self.grid_meter.stop()
        self._close_serial()
        for reader in (self.rdm6300, self.pn532):
            if reader is not None:
                reader.close()
        for sim in self._connectors.values():
            with contextlib.suppress(Exception):
                sim.pins.close()
        uninstall_mock_factory(self.factory)

    @property
    def control_port(self) -> int | None:
        return None if self.control is None else self.control.port

    # ------------------------------------------------------------------ BenchControl

    @property
    def connector_ids(self) -> Sequence[int]:
        return list(self._connectors)

    def sim(self, connector: int) -> SimConnector:
        try:
            return self._connectors[connector]
        except KeyError:
            raise LookupError(f"unknown connector {connector}") from None

    async def plug(self, connector: int, cable_ohms: float = DEFAULT_CABLE_OHMS) -> dict[str, Any]:
        sim = self.sim(connector)
        if sim.ev.plugged:
            raise ValueError(f"connector {connector} already has an EV plugged")
        sim.pins.set_pp_ohms(cable_ohms)
        sim.ev.plug()
        return {"ev_state": sim.ev.state}

    async def unplug(self, connector: int) -> dict[str, Any]:
        sim = self.sim(connector)
        if not sim.ev.plugged:
            raise ValueError(f"connector {connector} has no EV plugged")
        if sim.meter is not None:
            sim.meter.accrue()
        sim.ev.unplug()
        if sim.meter is not None:
            sim.meter.resample()
        sim.pins.set_pp_ohms(None)
        return {"ev_state": sim.ev.state}

    async def set_ev(self, connector: int, **fields: Any) -> dict[str, Any]:
        sim = self.sim(connector)
        sim.ev.configure(**fields)
        return {"ev": sim.ev.snapshot()}

    async def present_card(
        self, uid: str, reader: str = "rdm6300", hold_s: float | None = None
    ) -> dict[str, Any]:
        sim_reader = self.rdm6300 if reader == "rdm6300" else self.pn532
        if sim_reader is None:
            raise ValueError(f"this bench simulates no {reader} reader (see [reader] model)")
        sim_reader.present(uid, hold_s=TAP_S if hold_s is None else hold_s)
        return {"reader": reader, "uid": uid}

    async def inject_fault(self, name: str, connector: int, on: bool) -> dict[str, Any]:
        if name in BENCH_WIDE_FAULTS:
            self._reader_fault(name, on)
            (self._bench_faults.add if on else self._bench_faults.discard)(name)
            return {"faults": sorted(self._bench_faults)}
        sim = self.sim(connector)
        action = self._fault_actions(sim).get(name)
        if action is None:
            raise ValueError(f"unknown fault {name!r}")
        action(on)
        (sim.faults.add if on else sim.faults.discard)(name)
        return {"faults": sorted(sim.faults | self._bench_faults)}

    def _fault_actions(self, sim: SimConnector) -> Mapping[str, Callable[[bool], None]]:
        def meter(kind: MeterFault) -> Callable[[bool], None]:
            def set_fault(on: bool) -> None:
                if sim.meter is None:
                    raise ValueError(f"connector {sim.id} has no simulated meter")
                sim.meter.fault = kind if on else None

            return set_fault

        def ev_fault(name: str) -> Callable[[bool], None]:
            return lambda on: sim.ev.set_fault(name, on)

        def diode(on: bool) -> None:
            sim.ev.set_fault("diode_missing", on)
            sim.pins.set_cp(sim.cp_high_volts, diode=not on)

        return {
            "meter_silent": meter(MeterFault.SILENT),
            "meter_garbage": meter(MeterFault.GARBAGE),
            "contactor_welded": sim.pins.weld,
            "contactor_fails_to_close": sim.pins.fail_to_close,
            "rcd_trip": sim.pins.rcd_trip,
            "over_temperature": lambda on: sim.pins.set_temperature(HOT_C if on else NORMAL_C),
            "pilot_short": ev_fault("pilot_short"),
            "diode_missing": diode,
            "pilot_negative_lost": sim.pins.lose_negative_supply,
            "pp_short": lambda on: sim.pins.set_pp_ohms(0.0 if on else None),
            "lock_jammed": sim.pins.lock_jam,
            # The one ADC chip every connector reads: all of them see it die.
            "adc_dead": sim.pins.adc.set_dead,
        }

    def _reader_fault(self, name: str, on: bool) -> None:
        if name == "reader_garbage":
            for garbled in (self.rdm6300, self.pn532):
                if garbled is not None:
                    garbled.set_garbage(on)
        elif name == "reader_silent":
            if self.pn532 is None:
                # It only ever transmits: a silent one is what an idle one is.
                raise ValueError("an RDM6300 is silent whenever no card is on it")
            self.pn532.set_silent(on)
        else:
            for reader in (self.rdm6300, self.pn532):
                if reader is not None:
                    (reader.unplug if on else reader.replug)()

    async def status(self, connector: int | None = None) -> dict[str, Any]:
        if connector is not None:
            return self._status(self.sim(connector))
        return {
            "connectors": [self._status(sim) for sim in self._connectors.values()],
            "faults": sorted(self._bench_faults),
        }

    def _status(self, sim: SimConnector) -> dict[str, Any]:
        sim.sync()
        meter: dict[str, Any] = {}
        if sim.meter is not None:
            v = sim.meter.values()
            meter = {
                "voltage_v": [v.get(f"voltage_l{i}") for i in (1, 2, 3)],
                "current_a": [v.get(f"current_l{i}") for i in (1, 2, 3)],
                "power_w": [v.get(f"power_l{i}") for i in (1, 2, 3)],
                "power_total_w": v.get("power_total"),
                "energy_wh": v.get("energy_import"),
            }
        return {
            "connector": sim.id,
            "pilot": {
                "duty": sim.pins.pilot_duty,
                "state": sim.ev.state,
                "high_v": sim.ev.cp_high_volts(),
                "low_v": sim.ev.cp_low_volts(),
            },
            "relay": {
                "energized": sim.pins.relay_energized,
                "contactor_closed": sim.pins.contactor_closed,
            },
            "lock": {"locked": sim.pins.locked},
            "meter": meter,
            "ev": sim.ev.snapshot(),
            "faults": sorted(sim.faults | self._bench_faults),
        }
