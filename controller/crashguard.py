"""A crash loop ends in a hold, not in a contactor that closes and opens every 25 s.

The unit restarts evsed for ever (Restart=always, RestartSec=2, StartLimitIntervalSec=0):
a build that crashes 20 s into each run, with a car plugged in and asking for charge,
would start and stop the charge (contactor closed, then opened under load by the crash)
every ~25 s. So evsed records that it runs (`crash-guard.json` in the state directory,
fsynced) and clears the mark on a clean exit; a start that finds the mark counts an
unclean end. After `max_unclean_exits` of them within `window_s`, evsed starts in a hold:
the safety core runs, the link to the Central System works, every connector is Faulted
(OtherError, vendorErrorCode CrashLoopHold) so the relay never closes and the pilot offers
nothing, and one log line says why and how to clear it.

What counts: ends where the machine kept running (a crash, kill -9, the watchdog's kill, an
unhandled exception). A power cut or a reboot does not count, nor does anything recorded
before it: the boot id (/proc/sys/kernel/random/boot_id) in the record differs, and a
charger that loses power a few times is not locked out for it. All times are the system's
monotonic clock, which is the same for every process of one boot and immune to the wall
clock's steps (a Pi without RTC steps at NTP sync). A new version starts afresh too: the
count is of crashes of one build.

The hold ends by `evsed clear-hold` (the running evsed notices within HOLD_POLL_S), a Reset
from the Central System, a reboot, a new version, or `quiet_s` without an unclean end (0:
never by itself). After a quiet lift the next unclean end of this boot holds again at once
(probation), so a crash loop costs one contactor cycle per quiet period, not three.

The record is tiny and written twice per run (start, clean exit) and when a hold ends. A
record that cannot be written (disk full, read-only SD card) never stops evsed: it starts
as it would have, with an error in the log that crash counting is off; one that cannot be
read counts as empty.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD_NAME = "crash-guard.json"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: StatusNotification.vendorErrorCode of a connector in the hold (errorCode OtherError).
VENDOR_ERROR_CODE = "CrashLoopHold"
#: How often a running evsed in a hold looks whether `evsed clear-hold` cleared it.
HOLD_POLL_S = 5.0
HOW_TO_CLEAR = (
    "clear it with `evsed clear-hold` (as the service user or root) or a Reset from the "
    "Central System"
)


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""  # not Linux: told apart by the monotonic clock alone


@dataclass
class Record:
    """What `crash-guard.json` holds; every time is `time.monotonic()` of boot `boot_id`."""

    boot_id: str = ""
    version: str = ""
    running_since: float | None = None  # set while a run has not ended cleanly
    unclean: list[float] = field(default_factory=list)  # when a start found the mark
    last_unclean: float | None = None
    hold_since: float | None = None
    hold_reason: str = ""
    probation: bool = False  # a hold ended by quiet: the next unclean end holds at once

    @classmethod
    def parse(cls, text: str) -> Record:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")

        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        unclean = data.get("unclean") or []
        if not isinstance(unclean, list):
            raise ValueError("unclean is not a list")
        # Typed field by field: a record of the wrong shape is corrupt (ValueError,
        # TypeError), never a start that fails later on a comparison.
        return cls(
            boot_id=str(data.get("boot_id", "")),
            version=str(data.get("version", "")),
            running_since=number("running_since"),
            unclean=[float(t) for t in unclean],
            last_unclean=number("last_unclean"),
            hold_since=number("hold_since"),
            hold_reason=str(data.get("hold_reason", "")),
            probation=data.get("probation") is True,
        )

    def clear_history(self) -> None:
        self.unclean = []
        self.last_unclean = None
        self.hold_since = None
        self.hold_reason = ""
        self.probation = False


def record_path(state_dir: Path) -> Path:
    return Path(state_dir) / RECORD_NAME


def read_record(path: Path) -> Record:
    """The record, or an empty one (missing, unreadable, corrupt: logged)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Record()
    except OSError as exc:
        log.warning("crash guard: %s unreadable (%s): counted as empty", path, exc)
        return Record()
    try:
        return Record.parse(text)
    except (ValueError, TypeError) as exc:
        log.warning("crash guard: %s is corrupt (%s): counted as empty", path, exc)
        return Record()


def read_known_record(path: Path) -> Record | None:
    """The record as the file says it, or None when the file cannot say (missing,
    unreadable, corrupt). For decisions that would end a hold: a transient read error of
    the card or a garbled file must never read as an operator's `evsed clear-hold`."""
    try:
        return Record.parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("crash guard: %s not readable now (%s): the hold stays", path, exc)
        return None


def write_record(path: Path, record: Record) -> None:
    """Atomically and durably: a temporary file, fsync, rename, fsync of the directory.
    Raises OSError."""
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(asdict(record), sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _same_owner_as_directory(tmp)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _same_owner_as_directory(path: Path) -> None:
    """`sudo evsed clear-hold` as root: the file stays the service user's, readable by it."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid)


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    max_unclean_exits: int = 3
    window_s: float = 600.0
    quiet_s: float = 3600.0


class CrashGuard:
    """One per `evsed run`, taken after the instance lock: `start()` before the charger
    starts, `clean_exit()` on an orderly end only."""

    def __init__(
        self,
        state_dir: Path,
        settings: Settings = Settings(),
        *,
        version: str = "",
        boot_id: Callable[[], str] = read_boot_id,
        monotonic: Callable[[], float] = time.monotonic,
        write: Callable[[Path, Record], None] | None = None,
    ) -> None:
        self.path = record_path(state_dir)
        self.settings = settings
        self.version = version
        self._boot_id = boot_id
        self._monotonic = monotonic
        self._write = write  # None: write_record (looked up when used)
        self.record = Record()
        #: False once the record could not be written: nothing is counted this run.
        self.recording = True

    # ------------------------------------------------------------------ the hold

    def now(self) -> float:
        return self._monotonic()

    @property
    def holding(self) -> bool:
        return self.record.hold_since is not None

    @property
    def reason(self) -> str:
        return self.record.hold_reason

    def quiet_until(self) -> float | None:
        """When the hold lifts by itself (monotonic), None if only an operator ends it."""
        last = self.record.last_unclean
        if not self.holding or self.settings.quiet_s <= 0 or last is None:
            return None
        return last + self.settings.quiet_s

    def snapshot(self) -> dict[str, Any] | None:
        """For `evsed status`: None when not holding."""
        if not self.holding:
            return None
        now = self._monotonic()
        since = self.record.hold_since or now
        until = self.quiet_until()
        return {
            "reason": self.reason,
            "held_for_s": round(max(0.0, now - since)),
            "lifts_in_s": None if until is None else round(max(0.0, until - now)),
            "clear": HOW_TO_CLEAR,
            "recording": self.recording,
        }

    # ------------------------------------------------------------------ life cycle

    def start(self) -> bool:
        """Count the last run's end, decide the hold, mark this run; True if holding."""
        if not self.settings.enabled:
            return False
        record = read_record(self.path)
        now = self._monotonic()
        boot = self._boot_id()
        times = [t for t in (record.running_since, record.last_unclean, record.hold_since) if t]
        quiet = self.settings.quiet_s
        same_boot = record.boot_id == boot and all(t <= now for t in times + record.unclean)
        found_unclean = False
        if not same_boot:
            if record.running_since is not None:
                log.info(
                    "crash guard: the last run ended with the machine (power cut or "
                    "reboot): not counted"
                )
            record.clear_history()
        elif record.version != self.version:
            if record.unclean or record.hold_since is not None:
                log.info(
                    "crash guard: a new version (%s, was %s): the count starts afresh",
                    self.version,
                    record.version or "?",
                )
            record.clear_history()
        else:
            last = record.last_unclean
            if record.hold_since is not None and quiet > 0 and last is not None:
                if now - last >= quiet:  # stopped in the hold and started after its quiet
                    self._end_hold(record, "quiet", probation=True)
            if record.running_since is not None:
                found_unclean = True
                record.unclean.append(now)
                record.last_unclean = now
        window = self.settings.window_s
        record.unclean = [t for t in record.unclean if now - t <= window]
        count = len(record.unclean)
        if found_unclean:
            log.warning(
                "crash guard: the last run of evsed ended uncleanly (a crash, kill -9 or the "
                "watchdog): %d within %s",
                count,
                _duration(window),
            )
        if (
            record.hold_since is None
            and found_unclean
            and (count >= self.settings.max_unclean_exits or record.probation)
        ):
            record.hold_since = now
            record.hold_reason = (
                f"crash loop hold: {count} unclean exits within {_duration(window)}"
                if not record.probation
                else "crash loop hold: an unclean exit again after a hold"
            )
            record.probation = False
        record.boot_id = boot
        record.version = self.version
        record.running_since = now
        self.record = record
        self._save()
        if self.holding:
            quiet = self.settings.quiet_s
            after = f", or wait {_duration(quiet)} without a crash" if quiet > 0 else ""
            log.critical(
                "%s: every connector is Faulted and will not charge (the link to the Central "
                "System works); %s%s",
                self.reason,
                HOW_TO_CLEAR,
                after,
            )
        return self.holding

    def lift(self, why: str) -> bool:
        """End the hold (an operator's action, or `quiet`); True if there was one."""
        if not self.holding:
            return False
        known = read_known_record(self.path) if self.recording else None
        record = known if known is not None else self.record
        record.running_since = self.record.running_since
        self._end_hold(record, why, probation=why == "quiet")
        self.record = record
        self._save()
        return True

    def cleared_by_operator(self) -> bool:
        """Whether `evsed clear-hold` cleared the record since (a file read, no write)."""
        if not self.holding or not self.recording:
            return False
        known = read_known_record(self.path)
        return known is not None and known.hold_since is None

    def clean_exit(self) -> None:
        """An orderly end: the mark goes, the history stays (a hold survives a restart)."""
        if not self.settings.enabled or not self.recording:
            return
        # An `evsed clear-hold` meanwhile stays cleared; a record that cannot be read now
        # keeps what this process knows (its hold included), never an empty one.
        known = read_known_record(self.path)
        record = known if known is not None else self.record
        record.running_since = None
        self.record = record
        self._save()

    # ------------------------------------------------------------------ inside

    @staticmethod
    def _end_hold(record: Record, why: str, *, probation: bool) -> None:
        log.warning("crash guard: the hold ends (%s)", why)
        record.clear_history()
        record.probation = probation

    def _save(self) -> None:
        try:
            (self._write or write_record)(self.path, self.record)
        except OSError as exc:
            if self.recording:
                log.error(
                    "crash guard: %s could not be written (%s): evsed runs, but crash loops "
                    "are not counted",
                    self.path,
                    exc,
                )
            self.recording = False


def clear_hold(state_dir: Path) -> bool:
    """`evsed clear-hold`: the hold and the count go (a running evsed keeps its mark).
    True if there was a hold. Raises OSError."""
    path = record_path(state_dir)
    record = read_record(path)
    held = record.hold_since is not None
    record.clear_history()
    if path.exists():
        write_record(path, record)
    return held


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"
