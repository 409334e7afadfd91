"""What the simulated bench needs to know, as plain dataclasses: pins, ADC channels, meters,
reader, EV and control channel.

The bench depends only on the hardware layer, never on the controller's configuration
model: the one wiring module (`evsed.controller.simbench`) builds these settings from the
`Config` and, once the bench runs, reads back `BenchEndpoints` (the ports it chose) to point
the drivers at it. Defaults are the bench defaults of `config/sim.toml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MeterTransport = Literal["tcp", "rtu", "none"]


@dataclass(frozen=True, slots=True)
class SimMeterSettings:
    """A simulated Modbus meter: on loopback TCP at `port` (0: any free port) or, for RTU,
    on a pseudo-terminal pair; "none" means no meter."""

    transport: MeterTransport = "tcp"
    model: str = "sdm630"
    device_id: int = 1
    port: int = 0


@dataclass(frozen=True, slots=True)
class SimConnectorSettings:
    """One connector's pins and analogue front end, as the drivers will read them."""

    pilot_pin: int | str = 18
    relay_pin: int | str = 17
    relay_feedback_pin: int | str | None = 27
    # None: no 1/3-phase relay; energised = one phase (L2, L3 off).
    phase_switch_pin: int | str | None = None
    rcd_fault_pin: int | str | None = 22
    rcd_test_pin: int | str | None = 23
    lock_pin: int | str | None = None
    unlock_pin: int | str | None = None
    lock_feedback_pin: int | str | None = None
    cp_channel: int = 0
    cp_gain: float = 24.0 / 3.3
    cp_offset: float = -12.0
    # None: the connector reads no proximity pilot (none, or a tethered cable).
    pp_channel: int | None = 1
    pp_pull_up_ohms: float = 1000.0
    pp_supply_v: float = 3.3
    # None: no NTC on the ADC.
    temp_channel: int | None = 2
    ntc_beta: float = 3950.0
    ntc_r25_ohms: float = 10000.0
    ntc_series_ohms: float = 10000.0
    phases: int = 3
    nominal_voltage_v: float = 230.0
    meter: SimMeterSettings = field(default_factory=SimMeterSettings)


@dataclass(frozen=True, slots=True)
class SimEvSettings:
    max_current_a: float = 32.0
    phases: int = 3
    delay_s: float = 2.0


@dataclass(frozen=True, slots=True)
class BenchSettings:
    connectors: tuple[SimConnectorSettings, ...] = (SimConnectorSettings(),)
    adc_bits: int = 10  # 10: MCP3008, 12: MCP3208
    adc_vref: float = 3.3
    adc_select_pin: int = 8
    grid_meter: SimMeterSettings | None = None
    reader: Literal["rdm6300", "pn532", "none"] = "rdm6300"
    ev: SimEvSettings = field(default_factory=SimEvSettings)
    control_host: str = "127.0.0.1"
    control_port: int = 8765


@dataclass(frozen=True, slots=True)
class MeterEndpoint:
    """Where a simulated meter answers: loopback TCP, or the driver's end of a pty pair."""

    host: str | None = None
    port: int | None = None
    serial_port: str | None = None
    parity: str | None = None  # the pty pair's: Linux ptys refuse even parity (EINVAL)


@dataclass(frozen=True, slots=True)
class BenchEndpoints:
    """What the bench chose once started, that the settings could not know in advance."""

    meters: dict[int, MeterEndpoint]  # by connector id; absent: no simulated meter
    grid_meter: MeterEndpoint | None
    reader_port: str | None
