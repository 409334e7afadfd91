"""`evsed safe-off`, the unit's ExecStopPost: every relay output off, every pilot at a
steady +12 V, a lock motor's outputs low, after any exit of `evsed run` (a crash, the
watchdog, kill -9 included).

It must work when the rest of evsed does not: after a firmware update whose new code
breaks at import, or with a configuration written for a newer version. So this module
imports only what drives those outputs: the pin sections of the configuration models
(`evsed.controller.config`, pydantic), gpiozero, the kernel PWM driver of the hal and the
GPIO backend's explanation; never the OCPP layer, websockets, the store, the charger.
The configuration file is read leniently: only `connectors[*].contactor`, `.pilot`,
`.lock` and `[bench]` matter, keys it does not know are ignored (a newer version's), and
a section it cannot read fails that output alone, named.

Exit status: 0 every output driven safe; 1 (`EXIT_NOT_SAFE`) some output could not be
driven, one line each (systemctl status shows the failed ExecStopPost); 2 the
configuration file cannot be read at all. The unit runs it through
systemd/evsed-safe-off.sh, which tries the next copy of evsed when this one cannot run
(exit status 3 there: an import failure) or could not drive every output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gpiozero import DigitalInputDevice, DigitalOutputDevice
from pydantic import BaseModel, ValidationError

from evsed.controller.config import ContactorConfig, LockConfig, PilotConfig
from evsed.hal.pilot.pwm_sysfs import SysfsPwmPilot

log = logging.getLogger(__name__)

EXIT_SAFE, EXIT_NOT_SAFE, EXIT_CONFIG = 0, 1, 2

#: The devices holding the safe levels: referenced until the process ends, never closed
#: (gpiozero's lgpio pins turn into floating inputs when closed; lines still claimed at
#: exit are released by the kernel at their last level).
held: list[Any] = []


@dataclass(frozen=True)
class Outputs:
    """One connector's outputs as safe-off sees them; None: its section could not be read
    (then that output is reported, not guessed)."""

    contactor: ContactorConfig | None
    pilot: PilotConfig | None
    lock: LockConfig | None
    problems: dict[str, str] = field(default_factory=dict)  # section -> why unreadable


@dataclass(frozen=True)
class Plan:
    connectors: list[Outputs]
    bench: bool = False  # a simulated bench: nothing real to drive
    problems: list[str] = field(default_factory=list)  # not tied to one connector


class Unreadable(Exception):
    """The file cannot be read at all: exit 2."""


M = TypeVar("M", bound=BaseModel)
#: Each section's model (the one `evsed run` uses: its defaults, its checks) and the only
#: keys safe-off reads from it: another key that a newer version allows a value this one
#: refuses (a longer settle_s) must not cost the relay.
SECTIONS: dict[str, tuple[type[BaseModel], frozenset[str]]] = {
    "contactor": (
        ContactorConfig,
        frozenset({"relay_pin", "active_high", "feedback_pin", "feedback_active_high"}),
    ),
    "pilot": (PilotConfig, frozenset({"driver", "pin", "pwm_chip", "pwm_channel"})),
    "lock": (LockConfig, frozenset({"enabled", "lock_pin", "unlock_pin"})),
}


def _section(model: type[M], keys: frozenset[str], raw: Any, where: str) -> tuple[M | None, str]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, f"{where}: a table expected"
    known = {k: v for k, v in raw.items() if k in keys}
    try:
        return model.model_validate(known), ""
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        return None, f"{where}{'.' + key if key else ''}: {first['msg']}"


def plan_from(data: dict[str, Any]) -> Plan:
    """What to drive, from a parsed configuration file (any version's)."""
    bench = data.get("bench")
    if isinstance(bench, dict) and bench.get("enabled", True) is True:
        if bench.get("force", False) is not True:
            return Plan([], bench=True)
    raw = data.get("connectors", [{}])  # the defaults: one connector
    if not isinstance(raw, list) or not raw:
        # Where the outputs are is unknown: the defaults could drive the wrong pins.
        return Plan([], problems=["connectors: a list of tables expected; no output driven"])
    connectors = []
    for i, conn in enumerate(raw):
        problems: dict[str, str] = {}
        parts: dict[str, Any] = {}
        for name, (model, keys) in SECTIONS.items():
            if isinstance(conn, dict):
                where = f"connectors[{i}].{name}"
                parts[name], why = _section(model, keys, conn.get(name), where)
            else:
                parts[name], why = None, f"connectors[{i}]: a table expected"
            if why:
                problems[name] = why
        connectors.append(Outputs(parts["contactor"], parts["pilot"], parts["lock"], problems))
    return Plan(connectors)


def read(path: Path | None) -> Plan:
    if path is None:
        return Plan([], bench=True)  # no file: the bench defaults
    try:
        return plan_from(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise Unreadable(f"{path}: not readable ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Unreadable(f"{path}: not valid TOML ({exc})") from None


def drive(
    connectors: Sequence[Outputs], *, pin_factory: Any = None
) -> tuple[list[str], list[Any], list[str]]:
    """Every output tried, whatever failed before it. Returns what could not be made safe
    (empty: all safe), the devices now driving the safe levels (keep them referenced, do
    not close them), and one line per connector saying what was driven.

    A PWM pilot device would stop its PWM on close and leave the line low (-12 V): the
    pilot pin is driven as a plain output instead."""
    failed: list[str] = []
    devices: list[Any] = []
    done: list[str] = []
    no_gpio: str | None = None
    if pin_factory is None:
        from evsed.controller import gpiobackend

        try:
            # No bench advice: the unit of a real charger runs this after every exit.
            pin_factory = gpiobackend.default_factory(bench_hint=False)
        except gpiobackend.NoGpioBackend as exc:
            no_gpio = str(exc)
    for n, outputs in enumerate(connectors, 1):
        driven: list[str] = []
        relay_off = False
        relay = outputs.contactor
        try:
            if relay is None:
                raise RuntimeError(outputs.problems["contactor"])
            if no_gpio is not None:
                raise RuntimeError(no_gpio)
            # De-energised: low on an active-high driver, high on an active-low one.
            devices.append(
                DigitalOutputDevice(
                    relay.relay_pin,
                    active_high=relay.active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
            )
            relay_off = True
            driven.append(f"relay GPIO{relay.relay_pin} off")
        except Exception as exc:
            log.debug("relay of connector %d", n, exc_info=True)
            pin = f"GPIO{relay.relay_pin}" if relay is not None else "(pin unknown)"
            failed.append(f"connector {n}: relay {pin} not driven off: {exc}")
        pilot = outputs.pilot
        try:
            if pilot is None:
                raise RuntimeError(outputs.problems["pilot"])
            if pilot.driver == "sysfs":
                # Duty = period: the kernel keeps the channel at +12 V after we exit.
                SysfsPwmPilot(pilot.pwm_chip, pilot.pwm_channel).shutdown()
                driven.append(f"pilot PWM chip {pilot.pwm_chip} channel {pilot.pwm_channel}")
            elif no_gpio is not None:
                raise RuntimeError(no_gpio)
            else:
                devices.append(
                    DigitalOutputDevice(pilot.pin, initial_value=True, pin_factory=pin_factory)
                )
                driven.append(f"pilot GPIO{pilot.pin} +12 V")
        except Exception as exc:
            log.debug("pilot of connector %d", n, exc_info=True)
            if pilot is None:
                where = "(pin unknown)"
            elif pilot.driver == "sysfs":
                where = f"PWM chip {pilot.pwm_chip} channel {pilot.pwm_channel}"
            else:
                where = f"GPIO{pilot.pin}"
            failed.append(f"connector {n}: pilot ({where}) not set to +12 V: {exc}")
        lock = outputs.lock
        if lock is None or lock.enabled:
            try:
                if lock is None:
                    raise RuntimeError(outputs.problems["lock"])
                if no_gpio is not None:
                    raise RuntimeError(no_gpio)
                devices.extend(
                    _lock_safe(lock, relay, relay_off=relay_off, pin_factory=pin_factory)
                )
                driven.append(f"lock GPIO{lock.lock_pin} safe")
            except Exception as exc:
                log.debug("lock of connector %d", n, exc_info=True)
                pin = f"GPIO{lock.lock_pin}" if lock is not None else "pin unknown"
                failed.append(f"connector {n}: lock outputs ({pin}) not set: {exc}")
        done.append(f"connector {n}: " + (", ".join(driven) or "nothing driven"))
    return failed, devices, done


def _lock_safe(
    lock: LockConfig, contactor: ContactorConfig | None, *, relay_off: bool, pin_factory: Any
) -> list[Any]:
    """A motor lock's outputs low: killed mid-pulse, the H-bridge would otherwise drive the
    motor against its end stop until the next start. The lock is bistable, so it stays
    where it is. A hold solenoid is released only when the contacts read open: while they
    may carry current (closed, or no feedback to tell, or the relay not driven off) the
    plug stays held, at whatever level the output has now (it is not claimed at all)."""
    if lock.unlock_pin is not None:
        return [
            DigitalOutputDevice(pin, initial_value=False, pin_factory=pin_factory)
            for pin in (lock.lock_pin, lock.unlock_pin)
        ]
    if not relay_off or contactor is None or contactor.feedback_pin is None:
        return []
    feedback = DigitalInputDevice(
        contactor.feedback_pin,
        pull_up=None,
        active_state=contactor.feedback_active_high,
        pin_factory=pin_factory,
    )
    if feedback.is_active:
        return [feedback]
    return [
        feedback,
        DigitalOutputDevice(lock.lock_pin, initial_value=False, pin_factory=pin_factory),
    ]


def run(path: Path | None, *, pin_factory: Any = None) -> int:
    """Read, drive, report; the exit status. The devices stay in `held`."""
    try:
        plan = read(path)
    except Unreadable as exc:
        print(f"evsed safe-off: {exc}; no output driven", file=sys.stderr)
        return EXIT_CONFIG
    if plan.bench:
        # The bench's pins lived in the process that ran it; nothing real to drive.
        print("evsed safe-off: simulated bench, no real outputs to make safe", file=sys.stderr)
        return EXIT_SAFE
    failed, devices, done = drive(plan.connectors, pin_factory=pin_factory)
    held.extend(devices)
    failed = plan.problems + failed
    for line in done:
        print(f"evsed safe-off: {line}")
    for line in failed:
        print(f"evsed safe-off: {line}", file=sys.stderr)
    if failed:
        print("evsed safe-off: NOT SAFE: check the relay and the pilot", file=sys.stderr)
        return EXIT_NOT_SAFE
    return EXIT_SAFE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evsed.controller.safeoff [--config FILE]` (and `evsed safe-off`). Leaves
    through os._exit: nothing closes the GPIO devices on the way out."""
    parser = argparse.ArgumentParser(prog="evsed safe-off")
    parser.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    args = parser.parse_args(argv)
    code = run(args.config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
