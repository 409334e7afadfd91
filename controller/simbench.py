"""The simulated bench, wired to the controller's configuration: the only controller module
that imports `evsed.hwmocks` (an import-linter contract in pyproject.toml keeps it so); the
demo's embedded Central System comes through here too.

`bench_settings(config)` turns the configuration into the bench's own settings (the bench
knows the hardware layer, never `Config`); `wired(config, endpoints)` is the configuration
pointed at what the started bench chose (a meter's TCP port when it was 0, an RTU meter's
and the reader's pseudo-terminal), for the real drivers to connect to.
"""

from __future__ import annotations

from typing import Any

from evsed.controller.config import Config, MeterConfig
from evsed.controller.config import Connector as ConnectorConfig
from evsed.hal.clock import Clock
from evsed.hwmocks.bench import Bench
from evsed.hwmocks.central_system import CentralSystem
from evsed.hwmocks.settings import (
    BenchEndpoints,
    BenchSettings,
    MeterEndpoint,
    SimConnectorSettings,
    SimEvSettings,
    SimMeterSettings,
)

__all__ = ["Bench", "CentralSystem", "bench_settings", "build_bench", "wired"]


def _meter(cfg: MeterConfig) -> SimMeterSettings:
    return SimMeterSettings(
        transport=cfg.transport, model=cfg.model, device_id=cfg.device_id, port=cfg.port
    )


def _connector(cfg: ConnectorConfig) -> SimConnectorSettings:
    lock, rcd, pp, temp = cfg.lock, cfg.rcd, cfg.proximity, cfg.temperature
    return SimConnectorSettings(
        pilot_pin=cfg.pilot.pin,
        relay_pin=cfg.contactor.relay_pin,
        relay_feedback_pin=cfg.contactor.feedback_pin,
        phase_switch_pin=cfg.phase_switch.relay_pin if cfg.phase_switch.enabled else None,
        rcd_fault_pin=rcd.fault_pin if rcd.enabled else None,
        rcd_test_pin=rcd.test_pin if rcd.enabled else None,
        lock_pin=lock.lock_pin if lock.enabled else None,
        unlock_pin=lock.unlock_pin if lock.enabled else None,
        lock_feedback_pin=lock.feedback_pin if lock.enabled else None,
        cp_channel=cfg.pilot.sense_channel,
        cp_gain=cfg.pilot.sense_gain,
        cp_offset=cfg.pilot.sense_offset,
        # Channels a connector does not read are left to the others on the shared chip.
        pp_channel=pp.channel if pp.enabled and pp.fixed_cable_a is None else None,
        pp_pull_up_ohms=pp.pullup_ohms,
        pp_supply_v=pp.supply_v,
        temp_channel=temp.channel if temp.driver == "ntc" else None,
        ntc_beta=temp.beta,
        ntc_r25_ohms=temp.r25_ohms,
        ntc_series_ohms=temp.series_ohms,
        phases=cfg.phases,
        nominal_voltage_v=cfg.nominal_voltage_v,
        meter=_meter(cfg.meter),
    )


def bench_settings(config: Config) -> BenchSettings:
    bench = config.bench
    return BenchSettings(
        connectors=tuple(_connector(c) for c in config.connectors),
        adc_bits=12 if config.adc.chip == "mcp3208" else 10,
        adc_vref=config.adc.vref,
        adc_select_pin=config.adc.spi_pins()["CE"],
        grid_meter=_meter(config.grid.meter) if config.grid.enabled else None,
        reader=config.reader.model,
        ev=SimEvSettings(
            max_current_a=bench.ev_max_current_a, phases=bench.ev_phases, delay_s=bench.ev_delay_s
        ),
        control_host=bench.control_host,
        control_port=bench.control_port,
    )


def build_bench(config: Config, clock: Clock | None = None) -> Bench:
    """The bench for `config` (not started): create it before any driver."""
    return Bench(bench_settings(config), clock)


def _point(data: dict[str, Any], endpoint: MeterEndpoint | None) -> None:
    if endpoint is None:
        return
    if endpoint.serial_port is not None:
        data["serial_port"] = endpoint.serial_port
        if endpoint.parity is not None:
            data["parity"] = endpoint.parity
    else:
        data["host"], data["port"] = endpoint.host, endpoint.port


def wired(config: Config, endpoints: BenchEndpoints) -> Config:
    """`config` with the bench's actual meter ports and reader device."""
    data = config.model_dump()
    for cid, endpoint in endpoints.meters.items():
        _point(data["connectors"][cid - 1]["meter"], endpoint)
    _point(data["grid"]["meter"], endpoints.grid_meter)
    if data["reader"]["model"] != "none" and endpoints.reader_port is not None:
        data["reader"]["port"] = endpoints.reader_port
    return Config.model_validate(data)
