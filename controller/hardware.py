"""Build the configured drivers (hal) from the configuration: one place that knows both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evsed.controller.charger import ConnectorParts, Parts
from evsed.controller.clock import Clock
from evsed.controller.config import Adc, Config, Connector, MeterConfig
from evsed.hal.adc import AdcChannel
from evsed.hal.contactor import RelayContactor
from evsed.hal.interfaces import EnergyMeter, PilotOutput, TemperatureSensor
from evsed.hal.lock import GpioLock
from evsed.hal.meters.modbus import ModbusMeter, RtuTransport, TcpTransport
from evsed.hal.phase_switch import RelayPhaseSwitch
from evsed.hal.pilot.pwm_gpiozero import GpiozeroPwmPilot
from evsed.hal.pilot.pwm_sysfs import SysfsPwmPilot
from evsed.hal.pilot.sense import AdcPilotSensor
from evsed.hal.proximity import AdcProximity
from evsed.hal.rcd import GpioRcd
from evsed.hal.rfid import make_reader
from evsed.hal.temperature import AdcNtcTemperature, W1Ds18b20

log = logging.getLogger(__name__)


def build(config: Config, clock: Clock, *, pin_factory: Any = None) -> Parts:
    """Every device of the charger. On failure, what was built is released again."""
    built: list[ConnectorParts] = []
    try:
        for cfg in config.connectors:
            built.append(_connector(cfg, config.adc, clock, pin_factory))
        reader = None
        if config.reader.model != "none":
            options: dict[str, Any] = {}
            if config.reader.model == "rdm6300":
                options["id_format"] = config.reader.id_format
            reader = make_reader(
                config.reader.model, config.reader.port, config.reader.baudrate, **options
            )
        grid = meter(config.grid.meter, clock) if config.grid.enabled else None
    except BaseException:
        Parts(built).shutdown()
        raise
    return Parts(built, reader=reader, grid_meter=grid)


class _Opened:
    """What one connector's build opened so far, to release again if the build fails.

    Left open, its ADC channels' shared gpiozero SPI interface would sit in a reference
    cycle until the collector closes it at any later moment, possibly in the middle of
    the next build (see hal/adc.py), and its pins would stay taken."""

    def __init__(self) -> None:
        self.channels: list[AdcChannel] = []
        self.devices: list[Any] = []  # contactor and pilot, until `parts` holds them
        self.parts: ConnectorParts | None = None

    def release(self) -> None:
        if self.parts is not None:
            # The safe order of a stop: contactor first, a lock only once it reads open.
            Parts([self.parts]).shutdown()
        else:
            for dev in reversed(self.devices):
                _quietly(dev.shutdown)
        for ch in self.channels:  # also those no sensor took yet (a second close is harmless)
            _quietly(ch.close)


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.exception("releasing a device of a failed build failed")


def _connector(cfg: Connector, adc: Adc, clock: Clock, pin_factory: Any) -> ConnectorParts:
    opened = _Opened()
    try:
        return _open_connector(cfg, adc, clock, pin_factory, opened)
    except BaseException:
        opened.release()
        raise


def _open_connector(
    cfg: Connector, adc: Adc, clock: Clock, pin_factory: Any, opened: _Opened
) -> ConnectorParts:
    def channel(number: int) -> AdcChannel:
        made = AdcChannel(
            adc.chip.upper(),
            number,
            port=adc.spi_port,
            device=adc.spi_device,
            vref=adc.vref,
            pin_factory=pin_factory,
        )
        opened.channels.append(made)
        return made

    # The contactor first: whatever fails after it, the relay is held de-energised.
    contactor = RelayContactor(
        cfg.contactor.relay_pin,
        cfg.contactor.feedback_pin,
        active_high=cfg.contactor.active_high,
        feedback_active_high=cfg.contactor.feedback_active_high,
        settle_s=cfg.contactor.settle_s,
        monotonic=clock.monotonic,
        pin_factory=pin_factory,
    )
    opened.devices.append(contactor)
    pilot = pilot_output(cfg, pin_factory)
    opened.devices.append(pilot)
    sensor = AdcPilotSensor(
        channel(cfg.pilot.sense_channel),
        gain=cfg.pilot.sense_gain,
        offset=cfg.pilot.sense_offset,
        commanded_duty=lambda: pilot.duty,
    )
    parts = opened.parts = ConnectorParts(pilot=pilot, sensor=sensor, contactor=contactor)
    if cfg.phase_switch.enabled:
        parts.phase_switch = RelayPhaseSwitch(
            cfg.phase_switch.relay_pin,
            active_high=cfg.phase_switch.active_high,
            pin_factory=pin_factory,
            # Contacts reading closed (welded, or the feedback stuck): the phase relay stays
            # where the last run left it; the charger raises the weld fault from the feedback.
            keep_present=contactor.feedback() is True,
        )
    if cfg.rcd.enabled:
        parts.rcd = GpioRcd(cfg.rcd.fault_pin, cfg.rcd.test_pin, pin_factory=pin_factory)
    if cfg.proximity.enabled and cfg.proximity.fixed_cable_a is None:
        parts.proximity = AdcProximity(
            channel(cfg.proximity.channel),
            pull_up_ohms=cfg.proximity.pullup_ohms,
            supply_v=cfg.proximity.supply_v,
        )
    if cfg.lock.enabled:
        parts.lock = GpioLock(
            cfg.lock.lock_pin,
            cfg.lock.unlock_pin,
            cfg.lock.feedback_pin,
            clock=clock,
            pin_factory=pin_factory,
        )
    parts.temperature = temperature(cfg, channel)
    parts.meter = meter(cfg.meter, clock)
    return parts


def pilot_output(cfg: Connector, pin_factory: Any) -> PilotOutput:
    if cfg.pilot.driver == "sysfs":
        return SysfsPwmPilot(cfg.pilot.pwm_chip, cfg.pilot.pwm_channel)
    return GpiozeroPwmPilot(cfg.pilot.pin, pin_factory=pin_factory)


def temperature(cfg: Connector, channel: Any) -> TemperatureSensor | None:
    t = cfg.temperature
    if t.driver == "ntc":
        return AdcNtcTemperature(
            channel(t.channel), beta=t.beta, r25=t.r25_ohms, series_r=t.series_ohms
        )
    if t.driver == "ds18b20":
        return W1Ds18b20(t.device_id)
    return None


def meter(cfg: MeterConfig, clock: Clock) -> EnergyMeter | None:
    if cfg.transport == "none":
        return None
    transport: TcpTransport | RtuTransport
    if cfg.transport == "tcp":
        transport = TcpTransport(cfg.host, cfg.port)
    else:
        transport = RtuTransport(
            cfg.serial_port, baudrate=cfg.baudrate, parity=cfg.parity, stopbits=cfg.stopbits
        )
    model: str | Path = Path(cfg.model) if cfg.model.endswith(".toml") else cfg.model
    return ModbusMeter(
        model, transport, device_id=cfg.device_id, timeout_s=cfg.timeout_s, clock=clock
    )


def safe_off(config: Config, *, pin_factory: Any = None) -> tuple[list[str], list[Any]]:
    """After any exit: relay outputs low and pilots at steady +12 V (no PWM), whatever
    state they were left in, and a lock motor's outputs low. The logic lives in
    `evsed.controller.safeoff` (the unit's ExecStopPost imports that alone); this is it
    for a validated configuration.

    Returns what could not be made safe (empty: all safe) and the devices now driving the
    safe levels. Keep those referenced until the process ends and do not close them:
    gpiozero's lgpio pins turn into floating inputs when closed."""
    from evsed.controller import safeoff

    outputs = [safeoff.Outputs(c.contactor, c.pilot, c.lock) for c in config.connectors]
    failed, held, _ = safeoff.drive(outputs, pin_factory=pin_factory)
    return failed, held
