"""What goes into a diagnostics archive, and how nothing secret gets in.

Sources: the journal of the service (`journalctl -u <unit>`, when journalctl exists and
answers), else the log files the process writes; the OCPP frame trace if one is kept;
the configuration (already masked) and the configuration keys. Lines are kept when their
leading timestamp falls within startTime/stopTime; a line without one (a traceback's
continuation) follows the line before it.

Every text passes `scrub` before it is archived: the process-wide redaction (AuthorizationKey
values, Authorization headers, URL passwords), the secrets the caller names (the key in use,
passwords), and private key blocks. Built in a worker thread: reading and compressing
megabytes must not hold the loop.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from evsed.controller.ocpp16.redaction import redact

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 20 * 1024 * 1024  # per source: the archive stays an upload, not a backup

_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
# "2026-12-03T09:01:02", "2026-12-03 09:01:02,123", with an optional zone.
_STAMP = re.compile(
    r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:[.,]\d+)?(Z|[+-]\d{2}:?\d{2})?"
)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime | None
    stop: datetime | None

    def holds(self, when: datetime) -> bool:
        return (self.start is None or when >= self.start) and (
            self.stop is None or when <= self.stop
        )


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    text = _PRIVATE_KEY.sub("[private key removed]", text)
    return redact(text, tuple(s for s in secrets if s and len(s) >= 3))


def line_time(line: str) -> datetime | None:
    m = _STAMP.match(line)
    if m is None:
        return None
    try:
        when = datetime.fromisoformat(m.group(1).replace(" ", "T") + (m.group(2) or ""))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def within(lines: Iterable[str], window: Window) -> list[str]:
    kept: list[str] = []
    keep = window.start is None  # lines before the first stamp: only with no start bound
    for line in lines:
        when = line_time(line)
        if when is not None:
            keep = window.holds(when)
        if keep:
            kept.append(line)
    return kept


JournalReader = Callable[[Window], str | None]


def journal_reader(unit: str) -> JournalReader:
    """Reads `journalctl -u unit` (short-iso stamps) within a window; None if unavailable."""

    def read(window: Window) -> str | None:
        exe = shutil.which("journalctl")
        if exe is None:
            return None
        argv = [exe, "-u", unit, "--no-pager", "-o", "short-iso", "-q"]
        if window.start is not None:
            argv += ["--since", window.start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
        if window.stop is not None:
            argv += ["--until", window.stop.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0 or not done.stdout.strip():
            return None
        return done.stdout[-MAX_SOURCE_BYTES:]

    return read


def log_files_in_use() -> list[Path]:
    """The files the root logger's handlers write to."""
    files = []
    for handler in logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if isinstance(name, str):
            files.append(Path(name))
    return files


def _read_tail(path: Path) -> str:
    with path.open("rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(max(0, size - MAX_SOURCE_BYTES))
        return f.read().decode(errors="replace")


@dataclass
class Sources:
    journal: JournalReader | None = None
    log_files: Sequence[Path] = ()
    trace_file: Path | None = None
    # name -> text: the configuration, the configuration keys (already masked by the caller).
    extra: dict[str, str] | None = None


def build_archive(
    dest: Path, sources: Sources, window: Window, secrets: Sequence[str] = ()
) -> list[str]:
    """Write the tar.gz ``dest``; returns the member names. Blocking: run it in a thread."""
    members: dict[str, str] = {}
    journal = sources.journal(window) if sources.journal is not None else None
    if journal is not None:
        members["journal.log"] = "\n".join(within(journal.splitlines(), window)) + "\n"
    else:
        for path in sources.log_files:
            try:
                text = _read_tail(path)
            except OSError as e:
                log.warning("diagnostics: cannot read %s: %s", path, e)
                continue
            members[f"logs/{path.name}"] = "\n".join(within(text.splitlines(), window)) + "\n"
    if sources.trace_file is not None:
        try:
            text = _read_tail(sources.trace_file)
            members["ocpp-trace.log"] = "\n".join(within(text.splitlines(), window)) + "\n"
        except OSError as e:
            log.warning("diagnostics: cannot read the trace %s: %s", sources.trace_file, e)
    for name, text in (sources.extra or {}).items():
        members[name] = text
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with tarfile.open(part, "w:gz") as tar:
        for name, text in members.items():
            data = scrub(text, secrets).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(datetime.now(UTC).timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    part.replace(dest)
    return list(members)
