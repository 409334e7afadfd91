"""The one TOML configuration file, validated by pydantic.

Every key has a default that suits the simulated bench, so `evsed demo` needs no file.
Unknown keys are errors: a typo must not pass silently on a charger. Types are strict
(TOML has real integers, booleans and strings, so `"32"` for an integer or `"off"` for a
boolean is a mistake, not something to guess at); NaN and infinity are refused everywhere.

The simulated bench runs only where it is asked for: with no configuration file at all
(`load(None)`, the bench defaults), in `evsed demo`, or when the file has a `[bench]`
section (config/sim.toml). A file without `[bench]` describes a real charger and runs no
bench. A bench next to drivers that reach real hardware is refused unless
`[bench] force = true` (see `Config.real_drivers`).

What only the machine can tell (files exist, keys decrypt, directories are writable) is
checked by `evsed.controller.preflight`, before `evsed run` starts anything.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from evsed.controller import __version__
from evsed.controller.masking import mask_url
from evsed.controller.paths import anchor_paths, default_state_dir

Gpio = Annotated[int, Field(ge=0, le=27, description="BCM GPIO number")]
Amps = Annotated[float, Field(ge=6, le=80)]
# A part that is not fitted: TOML has no null, so `false` says "no pin" (printed back so).
OptionalGpio = Annotated[Gpio | None, BeforeValidator(lambda v: None if v is False else v)]
# TOML has no path type: a path is a string, so this is the one lax field type.
FsPath = Annotated[Path, Field(strict=False)]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )


class KeyProblem(ValueError):
    """A model validator's problem that belongs to one key: `where` is that key, relative
    to the model that raised it (or absolute, from the top, when `absolute`)."""

    def __init__(self, where: str, message: str, *, absolute: bool = False) -> None:
        super().__init__(message)
        self.where, self.absolute = where, absolute


class Identity(Strict):
    vendor: Annotated[str, Field(min_length=1, max_length=20)] = "evsed"
    model: Annotated[str, Field(min_length=1, max_length=20)] = "evsed-sim"
    charge_point_serial: Annotated[str, Field(max_length=25)] = "SIM-0001"
    charge_box_serial: Annotated[str, Field(max_length=25)] = "SIM-0001"
    firmware_version: Annotated[str, Field(max_length=50)] = __version__
    meter_type: Annotated[str, Field(max_length=25)] = "SDM630"
    meter_serial: Annotated[str, Field(max_length=25)] = ""


#: Where the charge point id goes in a `central_system.url` template.
CP_ID_PLACEHOLDER = "{charge_point_id}"


class CentralSystem(Strict):
    # The charge point id is appended as the last path segment, or goes where the URL
    # says {charge_point_id} (a trailing slash after it, a query string: kept as written).
    url: str = "ws://127.0.0.1:9000/ocpp"
    charge_point_id: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[^/\s]+$")] = (
        "CP-SIM-1"
    )
    security_profile: Annotated[int, Field(ge=0, le=3)] = 0
    authorization_key: SecretStr = SecretStr("")
    ca_file: FsPath | None = None
    client_cert: FsPath | None = None
    client_key: FsPath | None = None
    # The passphrase of an encrypted client_key. Never prompted for: without it an
    # encrypted key is refused at start-up.
    client_key_password: SecretStr = SecretStr("")
    enabled: bool = True
    # Larger frames from the CS are refused (close 1009) before they are read into memory.
    # 2 MiB takes a 10,000-entry SendLocalList (about 1.4 MiB).
    max_frame_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 2 * 1024 * 1024
    # The longest wait between reconnection attempts: back this long after the network is.
    reconnect_backoff_max_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # wss:// with the server verified (ca_file, else the system's CAs) and no Basic auth:
    # what many servers run. Only with security_profile 0, as an explicit choice.
    tls_without_auth: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (range-checked on access)
        except ValueError:
            # Not the parser's message: it may quote part of the URL (its password).
            raise ValueError("a URL that parses (check its port and any [IPv6] host)") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("expected a ws:// or wss:// URL with a host")
        if parts.password:
            raise ValueError("put the password in authorization_key, not in the URL")
        if value.replace(CP_ID_PLACEHOLDER, "").count("{") or value.count(CP_ID_PLACEHOLDER) > 1:
            raise ValueError(f"the only placeholder a url may hold is {CP_ID_PLACEHOLDER}, once")
        return value

    @model_validator(mode="after")
    def _profile(self) -> CentralSystem:
        scheme = urlsplit(self.url).scheme
        key = self.authorization_key.get_secret_value()
        if self.security_profile in (1, 2) and len(key) < 16:
            raise ValueError(
                f"security_profile {self.security_profile} needs authorization_key "
                "of at least 16 characters"
            )
        if self.security_profile >= 2 and scheme != "wss":
            raise ValueError(f"security_profile {self.security_profile} needs a wss:// url")
        if self.tls_without_auth:
            if self.security_profile != 0 or scheme != "wss":
                raise ValueError("tls_without_auth needs security_profile 0 and a wss:// url")
        elif self.security_profile <= 1 and scheme != "ws":
            hint = " (or tls_without_auth = true)" if self.security_profile == 0 else ""
            raise ValueError(f"security_profile {self.security_profile} needs a ws:// url{hint}")
        if self.security_profile == 3 and (self.client_cert is None or self.client_key is None):
            raise ValueError("security_profile 3 needs client_cert and client_key")
        return self


class Adc(Strict):
    chip: Literal["mcp3008", "mcp3208"] = "mcp3008"
    spi_port: Annotated[int, Field(ge=0, le=1)] = 0
    spi_device: Annotated[int, Field(ge=0, le=1)] = 0
    vref: Annotated[float, Field(gt=0, le=5.5)] = 3.3

    def spi_pins(self) -> dict[str, int]:
        """The GPIOs the SPI bus takes (so nothing else may claim them)."""
        if self.spi_port == 0:
            return {"SCLK": 11, "MOSI": 10, "MISO": 9, "CE": 8 if self.spi_device == 0 else 7}
        return {"SCLK": 21, "MOSI": 20, "MISO": 19, "CE": 18 if self.spi_device == 0 else 17}


AdcChannel = Annotated[int, Field(ge=0, le=7)]


class PilotConfig(Strict):
    driver: Literal["gpiozero", "sysfs"] = "gpiozero"
    pin: Gpio = 18
    # Kernel PWM (driver = "sysfs"): GPIO 12/18 are channel 0, 13/19 channel 1 on a Pi <= 4.
    pwm_chip: Annotated[int, Field(ge=0)] = 0
    pwm_channel: Annotated[int, Field(ge=0, le=3)] = 0
    sense_channel: AdcChannel = 0
    # CP volts = ADC volts * gain + offset; the default maps 0..3.3 V onto -12..+12 V.
    sense_gain: float = 24.0 / 3.3
    sense_offset: float = -12.0

    @field_validator("sense_gain")
    @classmethod
    def _gain(cls, value: float) -> float:
        if value == 0:
            raise ValueError("a non-zero gain (0 would read every pilot level as the offset)")
        return value

    @model_validator(mode="after")
    def _pwm_channel(self) -> PilotConfig:
        if self.driver != "sysfs":
            return self
        want = PI_PWM_CHANNEL.get(self.pin)
        if want is None:
            pins = ", ".join(f"GPIO{p}" for p in sorted(PI_PWM_CHANNEL))
            raise KeyProblem(
                "pin", f'a GPIO with hardware PWM for driver = "sysfs" (one of {pins})'
            )
        if self.pwm_channel != want:
            raise KeyProblem(
                "pwm_channel",
                f"channel {want} for GPIO{self.pin} (a Raspberry Pi routes PWM channel 0 "
                "to GPIO12/18 and channel 1 to GPIO13/19)",
            )
        return self


# BCM2835..2711 (Pi 1-4, `dtoverlay=pwm-2chan`): which kernel PWM channel drives which pin.
PI_PWM_CHANNEL = {12: 0, 18: 0, 13: 1, 19: 1}


class ProximityConfig(Strict):
    enabled: bool = True
    channel: AdcChannel = 1
    pullup_ohms: Annotated[float, Field(gt=0)] = 1000.0
    supply_v: Annotated[float, Field(gt=0)] = 3.3
    # A tethered cable has no PP resistor to read: give its rating instead.
    fixed_cable_a: Annotated[int, Field(ge=6, le=80)] | None = None


class ContactorConfig(Strict):
    relay_pin: Gpio = 17
    feedback_pin: OptionalGpio = 27
    active_high: bool = True
    feedback_active_high: bool = True
    settle_s: Annotated[float, Field(gt=0, le=2)] = 0.1


class PhaseSwitchConfig(Strict):
    """An optional second relay that takes L2 and L3 off the connector (as SmartEVSE-3's C2
    contactor): energised = one phase. Switched only with the main contactor open."""

    enabled: bool = False
    relay_pin: Gpio = 6
    active_high: bool = True
    # Waited with the contactor open before and after the phase relay moves.
    settle_s: Annotated[float, Field(ge=0.1, le=30)] = 2.0


class RcdConfig(Strict):
    enabled: bool = True
    fault_pin: Gpio = 22
    test_pin: OptionalGpio = 23


class LockConfig(Strict):
    enabled: bool = False
    lock_pin: Gpio = 24
    unlock_pin: OptionalGpio = 25
    feedback_pin: OptionalGpio = 5


class TemperatureConfig(Strict):
    driver: Literal["none", "ntc", "ds18b20"] = "ntc"
    channel: AdcChannel = 2
    beta: Annotated[float, Field(gt=0)] = 3950.0
    r25_ohms: Annotated[float, Field(gt=0)] = 10000.0
    series_ohms: Annotated[float, Field(gt=0)] = 10000.0
    # DS18B20 only: its directory under /sys/bus/w1/devices, e.g. "28-0316a279c4ff".
    device_id: str = ""
    max_c: Annotated[float, Field(ge=30, le=120)] = 80.0

    @model_validator(mode="after")
    def _device(self) -> TemperatureConfig:
        if self.driver == "ds18b20" and not re.fullmatch(r"[0-9a-f]{2}-[0-9a-f]+", self.device_id):
            raise KeyProblem(
                "device_id",
                'the sensor\'s 1-wire id for driver = "ds18b20", e.g. "28-0316a279c4ff" '
                "(ls /sys/bus/w1/devices)",
            )
        return self


class MeterConfig(Strict):
    model: str = "sdm630"
    transport: Literal["tcp", "rtu", "none"] = "tcp"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 15020
    serial_port: str = "/dev/ttyUSB0"
    baudrate: Annotated[int, Field(ge=1200, le=115200)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    device_id: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    poll_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0


class Connector(Strict):
    rated_current_a: Amps = 32
    max_current_a: Amps | None = None
    phases: Literal[1, 3] = 3
    nominal_voltage_v: Annotated[float, Field(ge=100, le=480)] = 230.0
    pilot: PilotConfig = PilotConfig()
    proximity: ProximityConfig = ProximityConfig()
    contactor: ContactorConfig = ContactorConfig()
    phase_switch: PhaseSwitchConfig = PhaseSwitchConfig()
    rcd: RcdConfig = RcdConfig()
    lock: LockConfig = LockConfig()
    temperature: TemperatureConfig = TemperatureConfig()
    meter: MeterConfig = MeterConfig()

    @model_validator(mode="after")
    def _max(self) -> Connector:
        if self.max_current_a is not None and self.max_current_a > self.rated_current_a:
            raise ValueError(
                f"max_current_a {self.max_current_a} exceeds rated_current_a {self.rated_current_a}"
            )
        if self.phase_switch.enabled and self.phases != 3:
            raise ValueError("phase_switch needs a three-phase connector (phases = 3)")
        return self


class Reader(Strict):
    model: Literal["rdm6300", "pn532", "none"] = "rdm6300"
    port: str = "/dev/serial0"
    # RDM6300 only: "hex" = the 10 hex characters of the frame, "decimal10" = the number
    # printed on most 125 kHz cards.
    id_format: Literal["hex", "decimal10"] = "hex"
    baudrate: Annotated[int, Field(ge=1200, le=115200)] | None = None


class GridMeter(Strict):
    enabled: bool = False
    meter: MeterConfig = MeterConfig(port=15021)
    main_fuse_a: Annotated[float, Field(gt=0, le=1000)] = 35.0
    margin_a: Annotated[float, Field(ge=0)] = 2.0
    solar: bool = False


class Authorization(Strict):
    free_vend: bool = False
    free_vend_id_tag: Annotated[str, Field(min_length=1, max_length=20)] = "FREEVEND"
    # Tags that may charge with no Central System configured at all (offline-first
    # chargers). With a Central System, offline cards follow its rules instead (the local
    # list, the authorisation cache, LocalAuthorizeOffline): a list of the operator's own
    # would let a card the Central System blocked charge whenever the link is down.
    local_tags: list[Annotated[str, Field(min_length=1, max_length=20)]] = []
    # ReserveNow on connector 0 (ReserveConnectorZeroSupported): one connector of the
    # charger kept free for the reserved idTag.
    reserve_connector_zero: bool = False
    # The authorisation cache's bound (OCPP names none): beyond it, entries that can no
    # longer authorise go first, then the least recently used. The local list is apart.
    cache_max_entries: Annotated[int, Field(ge=1, le=100_000)] = 1000


class Bench(Strict):
    # True inside a [bench] section; a file without the section runs no bench (Config.bench).
    enabled: bool = True
    # Run the bench although the configuration names drivers of real hardware.
    force: bool = False
    control_host: str = "127.0.0.1"
    control_port: Annotated[int, Field(ge=0, le=65535)] = 8765
    ev_max_current_a: Annotated[float, Field(ge=0, le=80)] = 32.0
    ev_phases: Literal[1, 3] = 3
    ev_delay_s: Annotated[float, Field(ge=0, le=30)] = 2.0

    @field_validator("control_host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if value not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the bench control channel listens on loopback only")
        return value


class Firmware(Strict):
    """UpdateFirmware and GetDiagnostics transfers, and where versions are installed."""

    max_download_mb: Annotated[int, Field(ge=1, le=4096)] = 200
    max_upload_mb: Annotated[int, Field(ge=1, le=4096)] = 50
    # One whole transfer (socket operations time out after 30 s each on top).
    transfer_timeout_s: Annotated[float, Field(ge=5, le=86400)] = 900.0
    # <install_root>/venvs/<version>, <install_root>/current -> the one in service.
    install_root: FsPath = Path("/opt/evsed")
    service: Annotated[str, Field(min_length=1, max_length=64)] = "evsed"
    # A new version must start and get its BootNotification Accepted within this.
    confirm_timeout_s: Annotated[float, Field(ge=60, le=86400)] = 600.0


class CrashGuard(Strict):
    """A crash loop (evsed ending uncleanly again and again while systemd restarts it)
    holds the charger Faulted instead of starting and stopping a charge every restart
    (evsed.controller.crashguard). Power cuts and reboots are not counted."""

    enabled: bool = True
    # Three: one crash, or two, is a bug hit once, not a loop; a loop of 20 s runs
    # reaches three in about a minute, and a crash every three minutes is still caught.
    max_unclean_exits: Annotated[int, Field(ge=1, le=100)] = 3
    window_s: Annotated[float, Field(ge=10, le=86400)] = 600.0
    # An hour without an unclean end lifts the hold (then the next one holds again at
    # once); 0: only `evsed clear-hold`, a Reset, a reboot or a new version end it.
    quiet_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 3600.0

    @model_validator(mode="after")
    def _quiet_beyond_window(self) -> CrashGuard:
        if 0 < self.quiet_s < self.window_s:
            raise ValueError(
                f"quiet_s ({self.quiet_s:g}) must be 0 or at least window_s "
                f"({self.window_s:g}): a hold must outlast the window that counts the crashes"
            )
        return self


class Logging(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Strict):
    identity: Identity = Identity()
    central_system: CentralSystem = CentralSystem()
    connectors: Annotated[list[Connector], Field(min_length=1, max_length=8)] = [Connector()]
    adc: Adc = Adc()
    reader: Reader = Reader()
    grid: GridMeter = GridMeter()
    authorization: Authorization = Authorization()
    # No [bench] section: a real charger. `load(None)` and `simulated()` turn it on.
    bench: Bench = Bench(enabled=False)
    # $STATE_DIRECTORY under systemd, else ~/.local/state/evsed: never the current directory.
    state_dir: FsPath = Field(default_factory=default_state_dir)
    logging: Logging = Logging()
    firmware: Firmware = Firmware()
    crash_guard: CrashGuard = CrashGuard()

    @model_validator(mode="after")
    def _bench_alone(self) -> Config:
        if self.bench.enabled and not self.bench.force:
            real = list(self.real_drivers())
            if real:
                named = "; ".join(f"{where} = {what}" for where, what in real)
                raise KeyProblem(
                    "bench.enabled",
                    f"no simulated bench next to real hardware ({named}): remove [bench] "
                    "or set enabled = false on a charger, or set force = true to simulate "
                    "these parts anyway",
                    absolute=True,
                )
        return self

    def real_drivers(self) -> Iterator[tuple[str, str]]:
        """Keys that choose drivers of real hardware, which a bench config never names:
        kernel PWM (the bench cannot stand in for it: the real pilot would be driven) and
        RS-485 meters (a production wiring; the bench would put them on a pty)."""
        for i, c in enumerate(self.connectors):
            if c.pilot.driver == "sysfs":
                yield f"connectors[{i}].pilot.driver", '"sysfs"'
            if c.meter.transport == "rtu":
                yield f"connectors[{i}].meter.transport", '"rtu"'
        if self.grid.enabled and self.grid.meter.transport == "rtu":
            yield "grid.meter.transport", '"rtu"'

    @model_validator(mode="after")
    def _serial_ports_unique(self) -> Config:
        owners: dict[str, str] = {}
        for where, port in self.serial_claims():
            if port in owners:
                raise ValueError(f"{where}: serial port {port} is already used by {owners[port]}")
            owners[port] = where
        return self

    def _meters(self) -> Iterator[tuple[str, MeterConfig]]:
        """Every meter the configuration reads (each connector's, the grid's), with its key."""
        for i, c in enumerate(self.connectors):
            yield f"connectors[{i}].meter", c.meter
        if self.grid.enabled:
            yield "grid.meter", self.grid.meter

    def serial_claims(self) -> Iterator[tuple[str, str]]:
        if self.reader.model != "none":
            yield "reader.port", self.reader.port
        for where, m in self._meters():
            if m.transport == "rtu":
                yield f"{where}.serial_port", m.serial_port

    @model_validator(mode="after")
    def _pins_unique(self) -> Config:
        owners: dict[int, str] = {}
        for where, pin in self.gpio_claims():
            if pin in owners:
                raise PinConflict(where, pin, owners[pin])
            owners[pin] = where
        return self

    @model_validator(mode="after")
    def _adc_channels_unique(self) -> Config:
        owners: dict[int, str] = {}
        for where, channel in self.adc_claims():
            if channel in owners:
                raise ChannelConflict(where, channel, owners[channel])
            owners[channel] = where
        return self

    @model_validator(mode="after")
    def _tcp_meters_unique(self) -> Config:
        # Two connectors reading one meter (the defaults are the same for every connector)
        # each see the other's EV: the idle one's load "with the contactor open" is a weld.
        # Port 0: the bench picks a free port for each.
        owners: dict[tuple[str, int, int], str] = {}
        for where, m in self._meters():
            # Only the meters whose address a file gives: one that keeps the default
            # address (every connector's; the bench serves the simulated configuration's)
            # is not claimed by anyone.
            if m.transport != "tcp" or m.port == 0 or not {"host", "port"} & m.model_fields_set:
                continue
            key = (m.host.strip().lower(), m.port, m.device_id)
            if key in owners:
                raise ValueError(
                    f"{where}: the meter at {m.host}:{m.port} (device_id {m.device_id}) is "
                    f"already {owners[key]}: every connector needs a meter of its own"
                )
            owners[key] = where
        return self

    def adc_claims(self) -> Iterator[tuple[str, int]]:
        """Every channel of the one `[adc]` chip a connector reads, with its key path."""
        for i, c in enumerate(self.connectors):
            base = f"connectors[{i}]"
            yield f"{base}.pilot.sense_channel", c.pilot.sense_channel
            if c.proximity.enabled and c.proximity.fixed_cable_a is None:
                yield f"{base}.proximity.channel", c.proximity.channel
            if c.temperature.driver == "ntc":
                yield f"{base}.temperature.channel", c.temperature.channel

    def gpio_claims(self) -> Iterator[tuple[str, int]]:
        """Every GPIO a part of this configuration drives or reads, with its key path."""
        # The pilot sense ADC is always fitted, so its SPI bus is always taken; listed
        # first so that a clash is reported at the user's own key.
        for name, pin in self.adc.spi_pins().items():
            yield f"adc (SPI{self.adc.spi_port} {name})", pin
        if self.reader.model != "none" and self.reader.port in PI_UART_PORTS:
            yield "reader.port (UART TXD)", 14
            yield "reader.port (UART RXD)", 15
        for i, c in enumerate(self.connectors):
            base = f"connectors[{i}]"
            yield f"{base}.pilot.pin", c.pilot.pin
            yield f"{base}.contactor.relay_pin", c.contactor.relay_pin
            if c.contactor.feedback_pin is not None:
                yield f"{base}.contactor.feedback_pin", c.contactor.feedback_pin
            if c.phase_switch.enabled:
                yield f"{base}.phase_switch.relay_pin", c.phase_switch.relay_pin
            if c.rcd.enabled:
                yield f"{base}.rcd.fault_pin", c.rcd.fault_pin
                if c.rcd.test_pin is not None:
                    yield f"{base}.rcd.test_pin", c.rcd.test_pin
            if c.lock.enabled:
                yield f"{base}.lock.lock_pin", c.lock.lock_pin
                for name in ("unlock_pin", "feedback_pin"):
                    pin = getattr(c.lock, name)
                    if pin is not None:
                        yield f"{base}.lock.{name}", pin


# The Pi's primary UART sits on GPIO 14/15, so a reader there takes those pins.
PI_UART_PORTS = frozenset({"/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0"})


class PinConflict(ValueError):
    def __init__(self, where: str, pin: int, other: str) -> None:
        super().__init__(f"GPIO {pin} is already used by {other}")
        self.where, self.pin, self.other = where, pin, other


class ChannelConflict(ValueError):
    def __init__(self, where: str, channel: int, other: str) -> None:
        super().__init__(f"channel {channel} is already used by {other}")
        self.where, self.channel, self.other = where, channel, other


@dataclass(frozen=True)
class Problem:
    path: str
    given: str
    expected: str

    def __str__(self) -> str:
        # No "(given: …)" for a problem no single value of the file caused (no GPIO here).
        given = f" (given: {self.given})" if self.given else ""
        # No key for the file as a whole (it cannot be read, it is not TOML): the line is
        # "FILE: what is wrong", not "FILE: (file): a readable file (...) (given: FILE)".
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.expected}{given}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        super().__init__("\n".join(f"{source}: {p}" for p in problems))
        self.source = source
        self.problems = problems


def simulated() -> Config:
    """The configuration with no file: every default, the simulated bench on."""
    return Config(bench=Bench())


def load(path: Path | None) -> Config:
    """Read and validate a configuration file; None gives the bench defaults."""
    if path is None:
        return simulated()
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = Problem("", "", f"cannot read the file: {exc.strerror or exc}")
        raise ConfigError(source, [problem]) from None
    except UnicodeDecodeError as exc:
        problem = Problem("", "", f"not UTF-8 text (a binary file?): byte {exc.start}")
        raise ConfigError(source, [problem]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [Problem("", "", f"not valid TOML: {exc}")]) from None
    # A relative path in the file is relative to the file, not to the working directory.
    return parse(anchor_paths(data, path.parent), source)


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_problem(err, data) for err in exc.errors()]) from None


def _problem(err: Any, data: dict[str, Any]) -> Problem:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, KeyProblem):
        where = ctx_error.where
        if not ctx_error.absolute:
            where = f"{key_path(loc)}.{where}" if loc else where
        given = _lookup(data, where)
        given_text = "its default" if given == "(default)" else _mask(where, given)
        return Problem(where, given_text, str(ctx_error))
    if isinstance(ctx_error, PinConflict):
        given = _lookup(data, ctx_error.where)
        return Problem(ctx_error.where, repr(given), f"a free GPIO ({ctx_error})")
    if isinstance(ctx_error, ChannelConflict):
        given = _lookup(data, ctx_error.where)
        # A clash can come from a default the user never wrote: show the value in effect.
        given_text = f"{ctx_error.channel} (default)" if given == "(default)" else repr(given)
        return Problem(ctx_error.where, given_text, f"a free ADC channel ({ctx_error})")
    path = key_path(loc)
    given = err.get("input")
    if kind == "extra_forbidden":
        # Never its value: a misspelt secret key ('authorisation_key') is still a secret,
        # and a misspelt section holds the URL and the key.
        given_text = _table_keys(given) if isinstance(given, dict) else ""
        return Problem(path, given_text, f"unknown key; {_spelling_hint(loc)}")
    if kind == "missing":
        return Problem(path, "nothing", "a value (required)")
    msg = err["msg"].removeprefix("Value error, ")
    msg = _plain_type_message(kind, loc, given) or msg
    if path.rsplit(".", 1)[-1] == "url" and kind not in ("value_error", "assertion_error"):
        # pydantic's own messages may quote the input; ours (the validator's) never do.
        msg = "a ws:// or wss:// URL (text)"
    if isinstance(given, dict) and kind in ("value_error", "assertion_error"):
        given_text = _table_keys(given)
    else:
        given_text = _mask(path, given)
    return Problem(path, given_text, msg[:1].lower() + msg[1:])


#: A quoted value of the right kind: what to write instead (TOML types are strict here).
_UNQUOTED = {"int_type": ("an integer", int), "float_type": ("a number", float)}


def _plain_type_message(kind: str, loc: tuple[Any, ...], given: Any) -> str | None:
    """pydantic's "Input should be a valid dictionary or instance of Logging" in TOML's
    words, and the fix for a number or boolean written in quotes (a new user's "30")."""
    key = str(loc[-1]) if loc else ""
    section = key_path(loc)
    if kind == "model_type":
        return f"a table: [{section}] on a line of its own, its keys under it"
    field = _field(loc) if kind == "list_type" else None
    if field is not None and any(_models_in(field.annotation)):
        return f"tables: [[{section}]] on a line of its own for each, its keys under it"
    if key in SECRET_KEYS:
        return None  # its value is never written back, not even in a hint
    if isinstance(given, str) and kind in _UNQUOTED:
        what, convert = _UNQUOTED[kind]
        try:
            convert(given.strip())
        except ValueError:
            return None
        return f"{what}, written without quotes: {key} = {given.strip()}"
    if kind == "bool_type":
        if isinstance(given, str) and given.strip() in ("true", "false"):
            return f"true or false, written without quotes: {key} = {given.strip()}"
        return "true or false (TOML's booleans, without quotes)"
    return None


def _field(loc: tuple[Any, ...]) -> Any:
    """The pydantic field `loc` names, None when it names none (an index, a typo)."""
    models: set[type[BaseModel]] = {Config}
    found = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return None
        found = fields[0]
        models = set(_models_in(found.annotation))
    return found


def _table_keys(table: dict[Any, Any]) -> str:
    """A table for a problem line by its key names only: its values may be secrets."""
    names = ", ".join(str(k) for k in table)
    if not names:
        return "an empty table"
    # "a table of url" read as a table of URLs: it is the key names the table holds.
    return f"a table with the key{'s' if len(table) > 1 else ''} {names}"


def _spelling_hint(loc: tuple[Any, ...]) -> str:
    """'did you mean 'X'?' with the closest key of the section `loc` is in (case aside), or
    the section a key of that exact name belongs to; else 'check the spelling'."""
    if not loc:
        return "check the spelling"
    models: set[type[BaseModel]] = {Config}
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an index into a list: its items' models are already in `models`
        models = {
            found
            for model in models
            if part in model.model_fields
            for found in _models_in(model.model_fields[part].annotation)
        }
    known = sorted({key for model in models for key in model.model_fields})
    typed = str(loc[-1])
    by_lower = {key.lower(): key for key in known}
    close = difflib.get_close_matches(typed.lower(), list(by_lower), n=1)
    if close:
        return f"did you mean {by_lower[close[0]]!r}?"
    elsewhere = sorted(where for where, key in _all_keys(Config, ()) if key == typed.lower())
    if elsewhere:
        return f"{typed!r} is a key of {' or '.join(elsewhere)}"
    return "check the spelling"


def _all_keys(
    model: type[BaseModel], at: tuple[str, ...], *, array: bool = False
) -> Iterator[tuple[str, str]]:
    """(section as written in TOML, key) for every key of `model` and the tables under it."""
    dotted = ".".join(at)
    where = (f"[[{dotted}]]" if array else f"[{dotted}]") if at else "the top level"
    for name, field in model.model_fields.items():
        yield where, name
        for sub in _models_in(field.annotation):
            if len(at) < 4:  # the tables nest two or three deep; a cycle must not recurse
                listed = get_origin(field.annotation) is list
                yield from _all_keys(sub, (*at, name), array=listed)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models a field's type holds: `Connector`, `list[Connector]`, `MeterConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def key_path(loc: tuple[Any, ...]) -> str:
    """("connectors", 0, "pilot") -> "connectors[0].pilot", the way a TOML user thinks of it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return "(default)"
    return node


def _mask(path: str, value: Any) -> str:
    """The given value for a problem line. Total: whatever fails in here, '***' (a
    traceback would carry the value, secrets and all, into the journal)."""
    try:
        leaf = path.rsplit(".", 1)[-1]
        if leaf in SECRET_KEYS:
            return "'***'"
        if leaf == "url":
            return repr(mask_url(value)) if isinstance(value, str) else "'***'"
        return repr(value)
    except Exception:
        return "'***'"


# Keys of [central_system] whose values are never printed.
SECRET_KEYS = ("authorization_key", "client_key_password")


def redacted(config: Config) -> dict[str, Any]:
    """The resolved configuration as plain data with secrets masked, for printing."""
    data = config.model_dump(mode="json")
    cs = data["central_system"]
    for key in SECRET_KEYS:
        cs[key] = "***" if getattr(config.central_system, key).get_secret_value() else ""
    cs["url"] = mask_url(cs["url"])
    for connector in data["connectors"]:
        for section, key in OPTIONAL_PINS:
            if connector[section][key] is None:
                connector[section][key] = False  # TOML has no null: false = not fitted
    return data


OPTIONAL_PINS = (
    ("contactor", "feedback_pin"),
    ("rcd", "test_pin"),
    ("lock", "unlock_pin"),
    ("lock", "feedback_pin"),
)
