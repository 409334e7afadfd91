"""The one SQLite database file: connection, pragmas, migrations, commits, syncs, checkpoints.

Opened in autocommit mode with WAL + synchronous=NORMAL (LIBRARY-NOTES §7): every public
method that writes has committed when it returns. Group several writes into one commit with
``with db.atomic(): ...``.

Two strengths of commit:

- **light** (the default): committed, so it survives ``kill -9`` (the WAL is replayed on
  open), but only in the page cache until the next checkpoint: a power cut or an OS crash
  may lose it. Meter values, the meter record and the authorisation cache are light: an SD
  card must not pay an fsync every sample.
- **durable** (``with db.durable(): ...``, or ``db.sync()`` after light commits): the WAL
  file is fdatasync'ed after the commit, before the block returns, so the commit and every
  one before it survive a power cut. This is what ``PRAGMA synchronous=FULL`` does at each
  commit in WAL mode, paid only where it matters: a transaction's start (before the relay
  closes), its stop (before it is queued or acknowledged), the queue's acknowledgements of
  Start/StopTransaction, configuration changes, charging profiles, the local list,
  reservations, firmware state. ``sync_off_loop()`` runs the same sync in a worker thread.

Why not ``PRAGMA synchronous=FULL``: it would sync every commit, meter values included.
Toggling it per commit costs the same as this explicit sync (measured on ext4/virtio: a
commit 20 us light, 350 us under FULL, 390 us light + fdatasync), but the explicit sync
can also run off the loop (`sync_off_loop`) and covers any number of earlier commits. It
runs inline today: the callers that need it (the connector's start and stop hooks, the
acknowledgement of a Start/Stop, a CS request) must not go on before it. It stalls the
loop 0.4 ms here, a few ms on an SD card, a handful of times per transaction; safety
reactions must not depend on the loop anyway (DESIGN rule 1, the safety core's thread).

Why an fdatasync of the ``-wal`` file is enough: in WAL mode a commit is a run of frames
appended to (or, after a checkpoint, rewritten from the start of) the WAL, the last one
marked as a commit; on open SQLite replays every frame whose salt and checksum chain is
valid. Once the WAL's data is on the medium, recovery finds the commit. A checkpoint (under
NORMAL) syncs the WAL before copying it back and syncs the database after, so frames that a
checkpoint moved are durable too. The directory entries of the database and its WAL are
synced once after opening (new files are otherwise not durable in their directory).

Not thread-safe, by design: the connection belongs to the thread that opened it (the event
loop's); ``check_same_thread`` makes a stray call from another thread fail loudly. ``sync``
and ``checkpoint`` touch no connection of the loop and may run in a worker thread.

Files are created readable by the service user only (0600); `secure_state_dir` makes the
state directory 0700. The database holds secrets at rest (the AuthorizationKey in the
``config`` table): see `controller.store` on what a diagnostics export must leave out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evsed.controller.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
# SQLite creates these beside the database, with the database file's permissions.
SIDE_FILES = ("-wal", "-shm", "-journal")

_datasync = getattr(os, "fdatasync", os.fsync)


class StoreError(Exception):
    """The database cannot be used (e.g. written by a newer evsed)."""


def secure_state_dir(path: Path) -> Path:
    """Create the state directory (parents too) and make it the service user's only."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError:
        # Someone else's directory that we may write to: run, but say what is exposed.
        log.warning("state directory %s is not ours: cannot make it 0700", path)
    return path


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        (os.fsync if directory else _datasync)(fd)
    finally:
        os.close(fd)


class Database:
    """``<state dir>/evsed.db``: see the module docstring for the rules."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        wal_autocheckpoint_pages: int = 256,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.wal_path = self.path.with_name(self.path.name + "-wal")
        self.syncs = 0  # durable syncs so far (diagnostics, benchmarks)
        self._depth = 0
        self._sync_on_commit = False
        self._restrict_files()
        self._con = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._configure(synchronous, wal_autocheckpoint_pages)
            self._migrate()
            # The schema, and the directory entries of the database and its WAL, durable.
            self.sync(directory=True)
        except BaseException:
            self._con.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------

    def _restrict_files(self) -> None:
        if not self.path.exists():
            # Created here, not by SQLite, so that it is never world-readable, not even for a
            # moment; SQLite gives the WAL and shared-memory files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
        for file in (self.path, *(self.path.with_name(self.path.name + s) for s in SIDE_FILES)):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(file, FILE_MODE)  # an older evsed left them 0644

    def _configure(self, synchronous: str, autocheckpoint: int) -> None:
        con = self._con
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Small pages: each commit writes whole pages to the WAL, and our rows are tiny.
            # Only effective before the first table exists (and before WAL mode is set).
            con.execute("PRAGMA page_size=1024")
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
        con.execute(f"PRAGMA synchronous={synchronous}")
        # Checkpoint every ~256 KiB of WAL: bounded file size and recovery time; the few hot
        # pages are written back once per checkpoint, not once per commit.
        con.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
        con.execute("PRAGMA journal_size_limit=1048576")
        con.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> None:
        version = self._con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this evsed "
                f"understands ({SCHEMA_VERSION}); refusing to touch it (a newer evsed ran "
                "here: run that version again, or put back a copy from before it)"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript does not take parameters; target is our own int.
            script = MIGRATIONS[target - 1]
            self._con.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={target};\nCOMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        return str(self._con.execute("PRAGMA integrity_check").fetchone()[0])

    # -- commits ----------------------------------------------------------------------------

    def execute(self, sql: str, params: tuple[Any, ...] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        """One statement: its own (light) commit, or part of the enclosing block's."""
        return self._con.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> sqlite3.Cursor:
        """One statement over many rows (a 10,000-entry local list: one call, not 10,000)."""
        return self._con.executemany(sql, rows)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One commit for every write inside the block; nested blocks join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._con.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._sync_on_commit = False
            self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        self._con.execute("COMMIT")
        if self._sync_on_commit:
            self._sync_on_commit = False
            self.sync()

    @contextmanager
    def durable(self) -> Iterator[None]:
        """Like `atomic`, and the commit is synced before the (outermost) block returns."""
        with self.atomic():
            self._sync_on_commit = True
            yield

    # -- syncs and checkpoints (no connection of the loop: any thread) ----------------------

    def sync(self, *, directory: bool = False) -> None:
        """Make every commit so far survive a power cut: fdatasync the WAL (see the module
        docstring); with ``directory``, also the directory holding the files."""
        try:
            _fsync_path(self.wal_path)
        except FileNotFoundError:
            # No WAL (not in WAL mode yet, or SQLite removed it on a close): every commit is
            # in the database file, synced by the checkpoint that removed the WAL.
            pass
        if directory:
            _fsync_path(self.path.parent, directory=True)
        self.syncs += 1

    async def sync_off_loop(self) -> None:
        """`sync` in a worker thread: for a caller on the event loop that must wait for the
        sync (its commit already made) without stalling the loop on a slow card."""
        await asyncio.to_thread(self.sync)

    def checkpoint(self) -> None:
        """Write the WAL back into the database, on a connection of the calling thread.

        Meant for `asyncio.to_thread`: a checkpoint flushes to the card twice, which must not
        happen inside a commit on the event loop that also samples the pilot. PASSIVE: it
        never waits for, nor blocks, the loop's own connection."""
        con = sqlite3.connect(self.path, isolation_level=None)
        try:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            con.close()


class Repository:
    """One aggregate's tables, over a `Database` (shared by all repositories)."""

    _db: Database

    def __init__(self, db: Database) -> None:
        self._db = db
