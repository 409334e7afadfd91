"""Start-up checks: what the configuration file alone cannot tell, found before `run` starts.

`evsed config check` and `evsed run` run the same checks, so a configuration that passes
the check does not trip `run` on a missing file, an encrypted key, an unknown meter model
or a state directory it cannot write. Problems stop `run` (exit status 2, one line each,
naming the key and the file); warnings are printed and do not.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from evsed.controller import tls
from evsed.controller.config import Config, MeterConfig, Problem
from evsed.hal.meters.regmap import MapError, load_map

# The example configuration's authorisation key: a charger must never keep it.
PLACEHOLDER_KEY_PREFIX = "change-me"
# gpiozero factories that drive real pins (GPIOZERO_PIN_FACTORY); "mock" is the bench's.
REAL_PIN_FACTORIES = frozenset({"lgpio", "rpigpio", "pigpio", "native", "rpio"})


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def check(
    config: Config,
    *,
    pwm_root: Path = Path("/sys/class/pwm"),
    w1_root: Path = Path("/sys/bus/w1/devices"),
    environ: dict[str, str] | None = None,
    hardware_only: bool = False,
) -> Report:
    """Every check; reads files (blocking), so call it before the event loop runs.

    `hardware_only` (`evsed selftest`): only what driving the parts needs. Commissioning
    talks to no Central System and stores nothing, so a CA file not yet copied over, an
    unwritable state directory or the example's key must not keep anyone from checking the
    wiring."""
    report = Report()
    env = dict(os.environ) if environ is None else environ
    if not hardware_only:
        _tls(config, report)
    _meters(config, report)
    if not hardware_only:
        _state_dir(config.state_dir, report)
    _pwm_chips(config, pwm_root, report)
    _w1_sensors(config, w1_root, report)
    _pins(config, env, report)
    _gpio(config, report)
    _warnings(config, report, hardware_only)
    return report


def _tls(config: Config, report: Report) -> None:
    cs = config.central_system
    if not cs.enabled:
        return
    # Even at profile 0: the CS may raise SecurityProfile later, and the contexts are then
    # ready, so no file is read (nor any passphrase needed) once the loop runs.
    try:
        tls.prepare(cs)
    except tls.TlsProblem as exc:
        report.problems.append(
            Problem(f"central_system.{exc.key}", repr(str(exc.path)), exc.message)
        )


def _meters(config: Config, report: Report) -> None:
    meters: list[tuple[str, MeterConfig]] = [
        (f"connectors[{i}].meter", c.meter) for i, c in enumerate(config.connectors)
    ]
    if config.grid.enabled:
        meters.append(("grid.meter", config.grid.meter))
    for where, meter in meters:
        if meter.transport == "none":
            continue
        model: str | Path = Path(meter.model) if meter.model.endswith(".toml") else meter.model
        try:
            load_map(model)
        except MapError as exc:
            report.problems.append(Problem(f"{where}.model", repr(meter.model), str(exc)))


def _state_dir(path: Path, report: Report) -> None:
    key, given = "state_dir", repr(str(path))
    if path.exists():
        if not path.is_dir():
            report.problems.append(Problem(key, given, f"a directory ({path} is not one)"))
        elif (why := _unwritable(path)) is not None:
            report.problems.append(Problem(key, given, f"a directory evsed may write ({why})"))
        return
    # Missing: evsed creates it, so the nearest existing parent must take a new entry.
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    why = f"{parent} is not a directory" if not parent.is_dir() else _unwritable(parent)
    if why is not None:
        report.problems.append(Problem(key, given, f"a directory evsed can create ({why})"))


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in `directory`, or None. Tried for real (an unnamed
    temporary file): os.access() says yes to root even on a read-only file system."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"


def _pwm_chips(config: Config, root: Path, report: Report) -> None:
    for i, c in enumerate(config.connectors):
        if c.pilot.driver != "sysfs":
            continue
        chip = root / f"pwmchip{c.pilot.pwm_chip}"
        if not chip.is_dir():
            report.problems.append(
                Problem(
                    f"connectors[{i}].pilot.pwm_chip",
                    str(c.pilot.pwm_chip),
                    f"a kernel PWM chip ({chip} does not exist: enable dtoverlay=pwm-2chan, "
                    f"or pick the chip listed in {root})",
                )
            )


def _w1_sensors(config: Config, root: Path, report: Report) -> None:
    for i, c in enumerate(config.connectors):
        t = c.temperature
        if t.driver != "ds18b20":
            continue
        if not (root / t.device_id).is_dir():
            report.problems.append(
                Problem(
                    f"connectors[{i}].temperature.device_id",
                    repr(t.device_id),
                    f"a DS18B20 on the 1-wire bus ({root / t.device_id} does not exist: "
                    f"enable dtoverlay=w1-gpio, or pick the id listed in {root})",
                )
            )


def _pins(config: Config, env: dict[str, str], report: Report) -> None:
    factory = env.get("GPIOZERO_PIN_FACTORY", "").strip().lower()
    if config.bench.enabled and not config.bench.force and factory in REAL_PIN_FACTORIES:
        report.problems.append(
            Problem(
                "bench.enabled",
                "true",
                f"no simulated bench where GPIOZERO_PIN_FACTORY={factory} asks for real pins: "
                "remove [bench] on a charger, or set [bench] force = true",
            )
        )


def _gpio(config: Config, report: Report) -> None:
    """Without the bench the drivers need real GPIO: on a PC gpiozero finds no pin factory
    and `run` would stop with a traceback from deep inside the first driver."""
    if config.bench.enabled:
        return
    from evsed.controller import gpiobackend

    try:
        # The factory the drivers will get (GPIOZERO_PIN_FACTORY honoured); opening it
        # touches no pin.
        factory = gpiobackend.default_factory()
    except gpiobackend.NoGpioBackend as exc:
        # Named "GPIO", given nothing: the machine lacks it, no key of the file is wrong
        # (it read "bench.enabled: … (given: false)" for a file with no [bench] at all).
        report.problems.append(Problem("GPIO", "", str(exc)))
        return
    factory.close()


def file_warnings(config: Config) -> list[Problem]:
    """The warnings the file alone gives (`config check --file-only` prints them too)."""
    report = Report()
    _warnings(config, report)
    return report.warnings


def _warnings(config: Config, report: Report, hardware_only: bool = False) -> None:
    warn = report.warnings.append
    for i, c in enumerate(config.connectors):
        if not c.rcd.enabled:
            warn(
                Problem(
                    f"connectors[{i}].rcd.enabled",
                    "false",
                    "an RCD/RCM (disabled: a DC fault current would not open the contactor; "
                    "only if the installation has its own type B RCD)",
                )
            )
        if c.contactor.feedback_pin is None:
            warn(
                Problem(
                    f"connectors[{i}].contactor.feedback_pin",
                    "none",
                    "a contactor feedback input (without it a welded contactor goes unnoticed)",
                )
            )
    key = config.central_system.authorization_key.get_secret_value()
    if not hardware_only and key.startswith(PLACEHOLDER_KEY_PREFIX):
        warn(
            Problem(
                "central_system.authorization_key",
                "'***'",
                "replace the example's placeholder with this charger's own key (16+ characters)",
            )
        )
