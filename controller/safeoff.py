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

The output record: `evsed run` writes the pins it started with (these sections alone: no
secret, nothing else of the file) to `outputs.json` in its runtime directory
($RUNTIME_DIRECTORY: /run/evsed under the unit), atomically, before it drives anything.
When the configuration file cannot be read (an admin's edit half done), safe-off drives
what that record names. The runtime directory, not the state directory: systemd makes it
afresh at every start and removes it only after ExecStopPost has run, so a record is
always the one of the run that just ended, never an older run's (pins since changed); it is
on tmpfs, gone at a reboot, when no output is held any more. See `combine` for a record
and a file that both read but differ.

The weld check: where a connector's contactor has a feedback input (its auxiliary
contact), safe-off reads it once the relay is driven off, allowing the contacts the
contactor's `settle_s` to open (the time the running controller allows before it calls a
contactor welded; read leniently, at most `MAX_SETTLE_S`), and reports a contactor still
closed then: driving the relay off does not make a welded contactor safe.

Exit status: 0 every output driven safe; 1 (`EXIT_NOT_SAFE`) some output could not be
driven, one line each (systemctl status shows the failed ExecStopPost); 4
(`EXIT_WELDED`) a contactor still reads closed after its relay was driven off, or its
feedback could not be read then (the contacts unknown), one line each (and the lines of
any output not driven); 2 the
configuration file cannot be read at all and there is no record of the outputs (a start
that failed before writing it drove nothing). The unit runs it through
systemd/evsed-safe-off.sh, which tries the next copy of evsed when this one cannot run
(exit status 3 there: an import failure) or could not drive every output, and exits 1
when any copy found a contactor welded.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from gpiozero import DigitalInputDevice, DigitalOutputDevice
from pydantic import BaseModel, ValidationError

from evsed.controller import __version__
from evsed.controller.config import ContactorConfig, LockConfig, PilotConfig
from evsed.hal.pilot.pwm_sysfs import SysfsPwmPilot

if TYPE_CHECKING:
    from evsed.controller.config import Config

log = logging.getLogger(__name__)

EXIT_SAFE, EXIT_NOT_SAFE, EXIT_CONFIG = 0, 1, 2
#: A contactor still reads closed after its relay was driven off (welded?), or its
#: feedback could not be read then (contacts unknown: as unsafe as a weld). Not 1: the
#: unit's script tries the next copy of evsed after a 1 (it may drive what this one could
#: not), and a copy from before the weld check would then say 0, without reading anything;
#: after a 4 it still tries the next copy, and ends with 1 whatever that copy says.
EXIT_WELDED = 4

#: The longest wait for a contactor's contacts to open (the configuration's own maximum of
#: `contactor.settle_s`): a newer version's longer settle_s is cut to this, never refused.
MAX_SETTLE_S = 2.0
#: How often the feedback is read while waiting for it to read open.
POLL_S = 0.01

#: The devices holding the safe levels: referenced until the process ends, never closed
#: (gpiozero's lgpio pins turn into floating inputs when closed; lines still claimed at
#: exit are released by the kernel at their last level).
held: list[Any] = []


@dataclass(frozen=True)
class Outputs:
    """One connector's outputs as safe-off sees them; None: its section could not be read
    (with a line in `problems`: then that output is reported, not guessed), or, with no
    line there, it is another entry's to drive (`combine`)."""

    contactor: ContactorConfig | None
    pilot: PilotConfig | None
    lock: LockConfig | None
    problems: dict[str, str] = field(default_factory=dict)  # section -> why unreadable
    label: str = ""  # how the report names it; "" : "connector N" (its place in the list)


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
        if parts["contactor"] is not None and isinstance(conn, dict):
            settle = _settle_s(conn.get("contactor"))
            if settle is not None:
                parts["contactor"] = parts["contactor"].model_copy(update={"settle_s": settle})
        connectors.append(Outputs(parts["contactor"], parts["pilot"], parts["lock"], problems))
    return Plan(connectors)


def _settle_s(raw: Any) -> float | None:
    """A contactor table's settle_s for the weld check, leniently: not a key of SECTIONS
    (a value this version refuses must not cost the relay), so a number above 0 is taken,
    cut to MAX_SETTLE_S; anything else leaves the default."""
    value = raw.get("settle_s") if isinstance(raw, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return min(float(value), MAX_SETTLE_S)


def read(path: Path | None) -> Plan:
    if path is None:
        return Plan([], bench=True)  # no file: the bench defaults
    try:
        return plan_from(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise Unreadable(f"{path}: not readable ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Unreadable(f"{path}: not valid TOML ({exc})") from None


# -- the record of the outputs `evsed run` started with ------------------------------------

RECORD_NAME = "outputs.json"
#: A record of another format is not read (as if there were none): its keys might mean
#: something else. Within format 1, keys this version does not know are ignored.
RECORD_FORMAT = 1


def record_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """In the unit's runtime directory (the first of $RUNTIME_DIRECTORY, /run/evsed);
    None outside systemd: then nothing runs safe-off after `evsed run`, and a safe-off whose
    configuration cannot be read could not find the state directory either."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / RECORD_NAME if runtime else None


#: Keys recorded beyond SECTIONS', read leniently (`_settle_s`).
RECORDED_TOO = {"contactor": {"settle_s"}}


def record_of(config: Config) -> dict[str, Any]:
    """What `evsed run` records: the keys of SECTIONS of each connector and the bench's
    two flags, in the shape of the configuration file (`plan_from` reads both). Pins and
    polarities only: nothing of the Central System, its keys or the cards."""
    return {
        "format": RECORD_FORMAT,
        "written_by": f"evsed {__version__}",
        "pid": os.getpid(),
        "bench": {"enabled": config.bench.enabled, "force": config.bench.force},
        "connectors": [
            {
                name: getattr(conn, name).model_dump(
                    mode="json", include=set(keys) | RECORDED_TOO.get(name, set())
                )
                for name, (_, keys) in SECTIONS.items()
            }
            for conn in config.connectors
        ],
    }


def write_record(config: Config, path: Path) -> None:
    """Atomically: a temporary file beside it, written, fsync'ed, renamed over it, the
    directory fsync'ed; a killed writer leaves the old record or the new one, never half
    of one. Raises OSError (the caller logs it and starts all the same)."""
    data = (json.dumps(record_of(config), indent=1) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a signal, a full disk on the way): the rest is
    written until all of it is, or os.write raises. A record cut short would not read
    (JSON): the next safe-off would then drive nothing when the file does not read. A
    write of nothing raises too (ENOSPC): the loop never spins."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "nothing written")
        view = view[written:]


@dataclass(frozen=True)
class Record:
    plan: Plan
    source: str  # for the report: "evsed 0.1.0 (pid 1234), /run/evsed/outputs.json"


def read_record(path: Path | None) -> tuple[Record | None, str]:
    """The record and "", or None and why there is none (one line; "" when there is
    simply none: outside systemd, or a start that failed before writing it)."""
    if path is None:
        return None, ""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path}: not readable ({exc.strerror})"
    except ValueError as exc:  # JSON, or its UTF-8
        return None, f"{path}: not a record of the outputs ({exc})"
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None, f"{path}: not a record of the outputs (format {RECORD_FORMAT} expected)"
    by, pid = data.get("written_by"), data.get("pid")
    source = f"{by or 'evsed'}{f' (pid {pid})' if isinstance(pid, int) else ''}, {path}"
    return Record(plan_from(data), source), ""


Line = tuple[Any, ...]  # ("GPIO", 17) or ("PWM", chip, channel)


def _claims(name: str, section: Any) -> tuple[frozenset[Line], frozenset[Line]]:
    """The lines a section's safe state drives, and those it reads (a contactor's feedback:
    the lock's solenoid is released only when it reads open)."""
    if name == "contactor":
        read = frozenset() if section.feedback_pin is None else {("GPIO", section.feedback_pin)}
        return frozenset({("GPIO", section.relay_pin)}), frozenset(read)
    if name == "pilot":
        if section.driver == "sysfs":
            return frozenset({("PWM", section.pwm_chip, section.pwm_channel)}), frozenset()
        return frozenset({("GPIO", section.pin)}), frozenset()
    pins = (section.lock_pin, section.unlock_pin) if section.enabled else ()
    return frozenset(("GPIO", p) for p in pins if p is not None), frozenset()


def _named(claims: frozenset[Line]) -> str:
    return ", ".join(
        f"GPIO{c[1]}" if c[0] == "GPIO" else f"PWM chip {c[1]} channel {c[2]}"
        for c in sorted(claims)
    )


def _pins(outputs: Outputs) -> dict[str, Any]:
    """Each section's keys of SECTIONS (None: not read): what `combine` compares. A record
    and a file that differ only in a contactor's settle_s drive the same lines."""
    pins: dict[str, Any] = {}
    for name, (_, keys) in SECTIONS.items():
        section = getattr(outputs, name)
        pins[name] = None if section is None else section.model_dump(include=set(keys))
    return pins


def combine(recorded: Plan, configured: Plan) -> tuple[Plan, list[str]]:
    """A record and a configuration file that both read: what to drive, and one line per
    difference.

    They differ when the file was edited while evsed ran (the edit applies at the next
    start). The record is what the process that just ended drove: all of it is driven, as
    recorded. The file's outputs that the record does not name are driven too (at their
    safe levels): the file may be the wiring the admin has just described, and driving a
    relay output off or a pilot to +12 V is safe either way. Where the file names a line
    the record drives otherwise (GPIO17 the relay in the record, a pilot in the file), the
    record wins: that line was wired as the ended process drove it; the file's use of it
    is left out and said. A section of the file that cannot be read is said too, and is not
    a failure: its pin is unknown, and the record covers every output the run drove.

    A bench on either side adds no outputs (nothing real was driven, or nothing real is
    described)."""
    if configured.bench:
        return recorded, []
    if recorded.bench:
        return configured, []
    drives: dict[Line, str] = {}  # line -> whose (for the report)
    reads: dict[Line, str] = {}
    for n, conn in enumerate(recorded.connectors, 1):
        for name in SECTIONS:
            section = getattr(conn, name)
            if section is not None:
                driven, read = _claims(name, section)
                for line in driven:
                    drives.setdefault(line, f"connector {n}'s {name}")
                for line in read:
                    reads.setdefault(line, f"connector {n}'s {name}")
    same = [_pins(c) for c in recorded.connectors]
    notes = [f"configuration: {p}" for p in configured.problems]
    extra: list[Outputs] = []
    for i, conn in enumerate(configured.connectors):
        if _pins(conn) in same:
            continue
        kept: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(conn, name)
            kept[name] = None
            if name == "lock" and section is not None and not section.enabled:
                continue  # nothing to drive
            if section is None:
                notes.append(f"configuration: {conn.problems[name]}: not driven")
                continue
            if any(_pins(r)[name] == _pins(conn)[name] for r in recorded.connectors):
                continue  # driven as recorded already
            driven, read = _claims(name, section)
            # A line the record drives, or one it reads that the file would drive: the
            # record's. Two reads of one line (a shared feedback) are no clash.
            clash = {drives[x] for x in driven | read if x in drives}
            clash |= {reads[x] for x in driven if x in reads}
            if clash:
                notes.append(
                    f"configuration: connectors[{i}].{name} ({_named(driven | read)}) is the "
                    f"record's {', '.join(sorted(clash))}: driven as recorded"
                )
                continue
            kept[name] = section
            drives.update(dict.fromkeys(driven, f"connectors[{i}]'s {name}"))
            reads.update(dict.fromkeys(read, f"connectors[{i}]'s {name}"))
        if any(v is not None for v in kept.values()):
            label = f"connectors[{i}] of the configuration"
            extra.append(Outputs(kept["contactor"], kept["pilot"], kept["lock"], label=label))
    if extra or notes:
        notes.insert(
            0,
            "the configuration differs from the recorded outputs: driving the record's, and "
            "the file's where they do not clash",
        )
    return replace(recorded, connectors=[*recorded.connectors, *extra]), notes


@dataclass
class _Check:
    """A contactor whose relay was driven off, and its feedback input, to read once the
    contacts have had their settle_s to open."""

    name: str
    contactor: ContactorConfig
    feedback: Any  # DigitalInputDevice


@dataclass
class Driven:
    failed: list[str]  # outputs that could not be driven safe, one line each
    welded: list[str]  # contactors still closed after their relay was driven off
    #: contactors whose feedback could not be read once their relay was driven off: whether
    #: the contacts opened is unknown, which is as unsafe as a weld (`run`: exit 4 for both)
    unknown: list[str]
    devices: list[Any]  # now holding the safe levels: keep them referenced, never close
    done: list[str]  # one line per connector: what was driven


def drive(
    connectors: Sequence[Outputs],
    *,
    pin_factory: Any = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[str], list[Any], list[str]]:
    """Every output tried, whatever failed before it. Returns what could not be made safe
    (empty: all safe; a welded contactor included), the devices now driving the safe
    levels (keep them referenced, do not close them), and one line per connector saying
    what was driven. `drive_all` tells a weld apart."""
    r = drive_all(connectors, pin_factory=pin_factory, monotonic=monotonic, sleep=sleep)
    return r.failed + r.welded + r.unknown, r.devices, r.done


def drive_all(
    connectors: Sequence[Outputs],
    *,
    pin_factory: Any = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Driven:
    """`drive`, the welded contactors on their own.

    A PWM pilot device would stop its PWM on close and leave the line low (-12 V): the
    pilot pin is driven as a plain output instead. Every relay and pilot is driven first,
    then the contactors with a feedback input are read (`_still_closed`: one bounded wait
    for all, `monotonic` and `sleep` its time), then a hold solenoid is released where its
    contactor read open. A feedback input that cannot be claimed or read (EIO from a GPIO
    expander) leaves the contacts unknown: reported as such, never taken for open (its
    hold solenoid stays held)."""
    failed: list[str] = []
    unknown: list[str] = []
    devices: list[Any] = []
    lines: list[list[str]] = []
    no_gpio: str | None = None
    if pin_factory is None:
        from evsed.controller import gpiobackend

        try:
            # No bench advice: the unit of a real charger runs this after every exit.
            pin_factory = gpiobackend.default_factory(bench_hint=False)
        except gpiobackend.NoGpioBackend as exc:
            no_gpio = str(exc)
    feedbacks: dict[Any, Any] = {}  # pin -> its input device: a shared feedback, read once
    checks: dict[int, _Check] = {}  # connector index -> its contactor to check
    solenoids: list[int] = []  # connectors whose hold solenoid waits for the check
    for n, outputs in enumerate(connectors, 1):
        driven: list[str] = []
        lines.append(driven)
        relay = outputs.contactor
        name = outputs.label or f"connector {n}"
        relay_off = False
        try:
            if relay is None and "contactor" not in outputs.problems:
                pass  # another entry's (combine)
            elif relay is None:
                raise RuntimeError(outputs.problems["contactor"])
            elif no_gpio is not None:
                raise RuntimeError(no_gpio)
            else:
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
            log.debug("relay of %s", name, exc_info=True)
            pin = f"GPIO{relay.relay_pin}" if relay is not None else "(pin unknown)"
            failed.append(f"{name}: relay {pin} not driven off: {exc}")
        if relay is not None and relay_off and relay.feedback_pin is not None:
            try:
                feedback = feedbacks.get(relay.feedback_pin)
                if feedback is None:
                    feedback = DigitalInputDevice(
                        relay.feedback_pin,
                        pull_up=None,
                        active_state=relay.feedback_active_high,
                        pin_factory=pin_factory,
                    )
                    feedbacks[relay.feedback_pin] = feedback
                    devices.append(feedback)
                checks[n] = _Check(name, relay, feedback)
            except Exception as exc:
                log.debug("feedback of %s", name, exc_info=True)
                unknown.append(_unknown_line(name, relay, exc))
        pilot = outputs.pilot
        try:
            if pilot is None and "pilot" not in outputs.problems:
                pass  # another entry's (combine)
            elif pilot is None:
                raise RuntimeError(outputs.problems["pilot"])
            elif pilot.driver == "sysfs":
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
            log.debug("pilot of %s", name, exc_info=True)
            if pilot is None:
                where = "(pin unknown)"
            elif pilot.driver == "sysfs":
                where = f"PWM chip {pilot.pwm_chip} channel {pilot.pwm_channel}"
            else:
                where = f"GPIO{pilot.pin}"
            failed.append(f"{name}: pilot ({where}) not set to +12 V: {exc}")
        lock = outputs.lock
        if lock is None and "lock" not in outputs.problems:
            pass  # another entry's (combine)
        elif lock is not None and lock.enabled and lock.unlock_pin is None:
            solenoids.append(n)  # after the check: released only if the contacts read open
        elif lock is None or lock.enabled:
            try:
                if lock is None:
                    raise RuntimeError(outputs.problems["lock"])
                if no_gpio is not None:
                    raise RuntimeError(no_gpio)
                # A motor's outputs low now: killed mid-pulse, the H-bridge would otherwise
                # drive the motor against its end stop. The lock is bistable: it stays put.
                devices.extend(
                    DigitalOutputDevice(pin, initial_value=False, pin_factory=pin_factory)
                    for pin in (lock.lock_pin, lock.unlock_pin)
                )
                driven.append(f"lock GPIO{lock.lock_pin} safe")
            except Exception as exc:
                log.debug("lock of %s", name, exc_info=True)
                pin = f"GPIO{lock.lock_pin}" if lock is not None else "pin unknown"
                failed.append(f"{name}: lock outputs ({pin}) not set: {exc}")
    closed, unread = _still_closed(list(checks.values()), monotonic=monotonic, sleep=sleep)
    for check, exc in unread:
        unknown.append(_unknown_line(check.name, check.contactor, exc))
    not_open = {id(c) for c in closed} | {id(c) for c, _ in unread}
    welded: list[str] = []
    for check in closed:
        c = check.contactor
        welded.append(
            f"contactor of {check.name} still closed after opening: welded? (relay "
            f"GPIO{c.relay_pin} driven off, feedback GPIO{c.feedback_pin} reads closed "
            f"{c.settle_s * 1000:.0f} ms later); the cable may be live: switch the supply off "
            "upstream and have the contactor checked before the next charge"
        )
    for n in solenoids:
        outputs = connectors[n - 1]
        lock = outputs.lock
        assert lock is not None
        name = outputs.label or f"connector {n}"
        check = checks.get(n)
        try:
            if no_gpio is not None:
                raise RuntimeError(no_gpio)
            if check is not None and id(check) not in not_open:
                devices.append(
                    DigitalOutputDevice(lock.lock_pin, initial_value=False, pin_factory=pin_factory)
                )
            # Otherwise the contacts may carry current (closed, no feedback to tell, one that
            # could not be read, or the relay not driven off): the plug stays held, the
            # output is not claimed at all.
            lines[n - 1].append(f"lock GPIO{lock.lock_pin} safe")
        except Exception as exc:
            log.debug("lock of %s", name, exc_info=True)
            failed.append(f"{name}: lock outputs (GPIO{lock.lock_pin}) not set: {exc}")
    done = [
        f"{outputs.label or f'connector {n}'}: " + (", ".join(driven) or "nothing driven")
        for n, (outputs, driven) in enumerate(zip(connectors, lines, strict=True), 1)
    ]
    return Driven(failed=failed, welded=welded, unknown=unknown, devices=devices, done=done)


def _unknown_line(name: str, contactor: ContactorConfig, exc: BaseException) -> str:
    return (
        f"{name}: contactor feedback GPIO{contactor.feedback_pin} not readable after the relay "
        f"GPIO{contactor.relay_pin} was driven off: {exc}; whether the contacts opened is "
        "unknown: the cable may be live: switch the supply off upstream before anyone touches "
        "the charger"
    )


def _still_closed(
    checks: Sequence[_Check],
    *,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[list[_Check], list[tuple[_Check, Exception]]]:
    """The contactors whose feedback still reads closed once their settle_s has passed
    since their relay was driven off (all were driven off before this is called), and those
    whose feedback raised when read (with the exception: not read again, their contacts
    unknown). Returns as soon as every other feedback reads open; bounded by MAX_SETTLE_S
    in time and by a count of reads, whatever the clock does."""
    unread: list[tuple[_Check, Exception]] = []

    def reading_closed(pending: Sequence[_Check]) -> list[_Check]:
        closed = []
        for check in pending:
            try:
                if check.feedback.is_active:
                    closed.append(check)
            except Exception as exc:
                log.debug("feedback of %s", check.name, exc_info=True)
                unread.append((check, exc))
        return closed

    def readable() -> list[_Check]:
        return [c for c in checks if all(c is not u for u, _ in unread)]

    start = monotonic()
    for _ in range(int(MAX_SETTLE_S / POLL_S) + 2):
        closed = reading_closed(readable())
        elapsed = monotonic() - start
        waiting = [c.contactor.settle_s - elapsed for c in closed if elapsed < c.contactor.settle_s]
        if not waiting:
            return closed, unread
        sleep(min(POLL_S, *waiting))
    return reading_closed(readable()), unread


def plan_for(path: Path | None, record: Path | None) -> tuple[Plan, list[str]]:
    """What to drive, from the file and the record, and one line per remark. Raises
    Unreadable when neither can be read."""
    recorded, why_not = read_record(record)
    try:
        configured = read(path)
    except Unreadable as exc:
        if recorded is None:
            where = f" in {record}" if record is not None else ""
            why = why_not or f"no record of the outputs{where}"
            raise Unreadable(f"{exc}, and {why}") from None
        # The configuration of the run that just ended, as far as the outputs go.
        return recorded.plan, [
            f"{exc}; driving the outputs recorded at the start by {recorded.source}"
        ]
    if recorded is None:
        return configured, [f"{why_not}; not used"] if why_not else []
    return combine(recorded.plan, configured)


def _write(stream: Any, text: str) -> None:
    """Write and flush, never raising: the stream is the journal's (stdout and stderr of
    ExecStopPost), and a broken one (EPIPE once journald has gone, a closed file) must not
    end safe-off through an exception: the interpreter's exit would close the devices
    holding the safe levels (`held`)."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):  # ValueError: a closed file
        stream.write(text)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def say(line: str, *, err: bool = False) -> None:
    """One line of the report: "evsed safe-off: LINE" on stdout (what was driven) or
    stderr (what was not, and why). Cannot raise (`_write`)."""
    _write(sys.stderr if err else sys.stdout, f"evsed safe-off: {line}\n")


def run(
    path: Path | None,
    *,
    record: Path | None = None,
    pin_factory: Any = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Read, drive, report; the exit status. The devices stay in `held`. `record`: the
    outputs `evsed run` recorded (`main` passes `record_path()`'s); `monotonic` and
    `sleep`: the time of the weld check (`drive`)."""
    try:
        plan, notes = plan_for(path, record)
    except Unreadable as exc:
        say(f"{exc}; no output driven", err=True)
        return EXIT_CONFIG
    for line in notes:
        say(line, err=True)
    if plan.bench:
        # The bench's pins lived in the process that ran it; nothing real to drive.
        say("simulated bench, no real outputs to make safe", err=True)
        return EXIT_SAFE
    driven = drive_all(plan.connectors, pin_factory=pin_factory, monotonic=monotonic, sleep=sleep)
    held.extend(driven.devices)
    failed = plan.problems + driven.failed
    for line in driven.done:
        say(line)
    for line in failed + driven.welded + driven.unknown:
        say(line, err=True)
    if driven.welded:
        say("NOT SAFE: a contactor did not open", err=True)
    if driven.unknown:
        say("NOT SAFE: whether a contactor opened is unknown", err=True)
    if driven.welded or driven.unknown:
        return EXIT_WELDED
    if failed:
        say("NOT SAFE: check the relay and the pilot", err=True)
        return EXIT_NOT_SAFE
    return EXIT_SAFE


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """`python -m evsed.controller.safeoff [--config FILE]` (and `evsed safe-off`). Leaves
    through os._exit, whatever happens: nothing closes the GPIO devices on the way out
    (gpiozero closes every device at the interpreter's exit, and a closed lgpio line
    floats). An exception (BaseException: a KeyboardInterrupt too) exits 1, after one line
    and its traceback on stderr: the outputs driven so far stay held, and the unit's script
    tries the next copy of evsed."""
    code = EXIT_NOT_SAFE
    # What escaped, referenced until os._exit: its traceback holds the frames it stopped,
    # and with them the devices claimed so far (`drive_all`'s, not yet in `held`); freed,
    # a gpiozero device is closed, and its line floats.
    escaped: BaseException | None = None
    try:
        code = _main(argv)
    except BaseException as exc:
        escaped = exc
        with contextlib.suppress(BaseException):  # nothing may keep it from os._exit
            say(f"NOT SAFE: stopped by {exc!r}; the outputs driven so far are held", err=True)
            _write(sys.stderr, "".join(traceback.format_exception(exc)))
    finally:
        if escaped is not None:
            code = EXIT_NOT_SAFE
        _write(sys.stdout, "")
        _write(sys.stderr, "")
        os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="evsed safe-off")
    parser.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), a usage error (2): nothing claimed yet
        return exc.code if isinstance(exc.code, int) else EXIT_NOT_SAFE
    return run(args.config, record=record_path())


if __name__ == "__main__":
    main()
