"""The one SQLite database: everything that must survive a power cut.

Opened in autocommit mode with WAL + synchronous=NORMAL (LIBRARY-NOTES §7): every public
method that writes has committed when it returns, so the caller may acknowledge what it
stored. Group several writes into one commit with ``with store.atomic(): ...``.

NORMAL keeps every commit across ``kill -9`` (the WAL is replayed on open); only an OS
crash or power loss may lose the last commits since the previous checkpoint sync. FULL
would fsync every commit, which an SD card pays for; pass ``synchronous="FULL"`` if a
deployment prefers that trade.

Not thread-safe, by design: the store is used from the event-loop thread only. The
connection is opened with ``check_same_thread=True`` so a stray call from another thread
fails loudly instead of corrupting state.

Write only what must be written: meter readings are throttled (``record_meter``), writes
that would not change a row are skipped, and the WAL is checkpointed in small steps.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

DB_FILENAME = "evsed.db"

# Each entry migrates from version i to i+1. Never edit a released entry; append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE config (
        key   TEXT PRIMARY KEY COLLATE NOCASE,
        value TEXT NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE transactions (
        local_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        connector_id      INTEGER NOT NULL,
        id_tag            TEXT NOT NULL,
        meter_start_wh    INTEGER NOT NULL,
        start_time        TEXT NOT NULL,
        reservation_id    INTEGER,
        cs_transaction_id INTEGER,
        start_dropped     INTEGER NOT NULL DEFAULT 0,
        state             TEXT NOT NULL DEFAULT 'open'
                          CHECK (state IN ('open', 'stopping', 'stopped')),
        meter_stop_wh     INTEGER,
        stop_time         TEXT,
        stop_reason       TEXT,
        stop_id_tag       TEXT
    );
    -- A connector carries at most one open transaction.
    CREATE UNIQUE INDEX transactions_one_open
        ON transactions (connector_id) WHERE state = 'open';
    CREATE TABLE tx_queue (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        action      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        tx_local_id INTEGER REFERENCES transactions (local_id),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        parked      INTEGER NOT NULL DEFAULT 0
    );
    -- Exactly one StopTransaction per transaction, ever queued (see TxQueue.stop_transaction).
    CREATE UNIQUE INDEX tx_queue_one_stop
        ON tx_queue (tx_local_id) WHERE action = 'StopTransaction';
    CREATE TABLE auth_cache (
        id_tag      TEXT PRIMARY KEY COLLATE NOCASE,
        id_tag_info TEXT NOT NULL,
        expiry      TEXT
    );
    CREATE TABLE local_list (
        id_tag      TEXT PRIMARY KEY COLLATE NOCASE,
        id_tag_info TEXT NOT NULL
    );
    CREATE TABLE charging_profiles (
        profile_id   INTEGER PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        purpose      TEXT NOT NULL,
        stack_level  INTEGER NOT NULL,
        profile      TEXT NOT NULL
    );
    CREATE TABLE meter (
        connector_id INTEGER PRIMARY KEY,
        energy_wh    REAL NOT NULL,
        at           TEXT NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The database cannot be used (e.g. written by a newer evsed)."""


class TxState(StrEnum):
    OPEN = "open"  # charging session running
    STOPPING = "stopping"  # StopTransaction queued, not yet acknowledged by the CS
    STOPPED = "stopped"  # StopTransaction acknowledged (or given up, see txqueue)


@dataclass(frozen=True, slots=True)
class Transaction:
    local_id: int
    connector_id: int
    id_tag: str
    meter_start_wh: int
    start_time: datetime
    reservation_id: int | None
    cs_transaction_id: int | None  # None until StartTransaction.conf arrived
    start_dropped: bool  # the CS never accepted the StartTransaction (txqueue docs)
    state: TxState
    meter_stop_wh: int | None
    stop_time: datetime | None
    stop_reason: str | None
    stop_id_tag: str | None


@dataclass(frozen=True, slots=True)
class QueuedRow:
    id: int
    action: str
    payload: dict[str, Any]
    tx_local_id: int | None
    attempts: int
    last_error: str | None
    parked: bool


@dataclass(frozen=True, slots=True)
class CachedAuth:
    id_tag: str
    id_tag_info: dict[str, Any]
    expiry: datetime | None


@dataclass(frozen=True, slots=True)
class StoredProfile:
    profile_id: int
    connector_id: int
    purpose: str
    stack_level: int
    profile: dict[str, Any]  # the csChargingProfiles object as received


@dataclass(frozen=True, slots=True)
class MeterReading:
    connector_id: int
    energy_wh: float
    at: datetime


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dumps(obj: Any) -> str:
    # Compact and key-sorted: stable text lets "unchanged" writes be detected and skipped.
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


class Store:
    """Typed access to ``<state dir>/evsed.db``. See the module docstring for the rules."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        meter_write_interval_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        wal_autocheckpoint_pages: int = 256,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self._meter_interval = meter_write_interval_s
        self._monotonic = monotonic
        self._meter_written_at: dict[int, float] = {}
        self._depth = 0
        self._con = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._configure(synchronous, wal_autocheckpoint_pages)
            self._migrate()
        except BaseException:
            self._con.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------

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
                f"understands ({SCHEMA_VERSION}); refusing to touch it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript does not take parameters; target is our own int.
            script = _MIGRATIONS[target - 1]
            self._con.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={target};\nCOMMIT;"
            )

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

    @property
    def schema_version(self) -> int:
        return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        return str(self._con.execute("PRAGMA integrity_check").fetchone()[0])

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
            self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        self._con.execute("COMMIT")

    def _x(self, sql: str, params: tuple[Any, ...] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self._con.execute(sql, params)

    # -- configuration keys (only values changed by the CS are stored) ----------------------

    def config_values(self) -> dict[str, str]:
        return dict(self._x("SELECT key, value FROM config").fetchall())

    def set_config(self, key: str, value: str) -> None:
        self._x(
            "INSERT INTO config (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
            "WHERE value IS NOT excluded.value",
            (key, value),
        )

    def delete_config(self, key: str) -> None:
        self._x("DELETE FROM config WHERE key = ?", (key,))

    # -- small markers ----------------------------------------------------------------------

    def set_pending_stop_reason(self, reason: str) -> None:
        """Before a deliberate restart: the reason (Reboot, HardReset, SoftReset) with which
        the transactions still open at the next start are to be stopped."""
        self._x(
            "INSERT INTO meta (key, value) VALUES ('pending_stop_reason', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (reason,),
        )

    def take_pending_stop_reason(self) -> str | None:
        """Read and clear the marker. None means the last exit was not planned (PowerLoss)."""
        with self.atomic():
            row = self._x("SELECT value FROM meta WHERE key = 'pending_stop_reason'").fetchone()
            if row is None:
                return None
            self._x("DELETE FROM meta WHERE key = 'pending_stop_reason'")
        return str(row[0])

    # -- transactions -----------------------------------------------------------------------

    _TX_COLS = (
        "local_id, connector_id, id_tag, meter_start_wh, start_time, reservation_id, "
        "cs_transaction_id, start_dropped, state, meter_stop_wh, stop_time, stop_reason, "
        "stop_id_tag"
    )

    @staticmethod
    def _tx(row: tuple[Any, ...]) -> Transaction:
        start = _dt(row[4])
        assert start is not None
        return Transaction(
            local_id=row[0],
            connector_id=row[1],
            id_tag=row[2],
            meter_start_wh=row[3],
            start_time=start,
            reservation_id=row[5],
            cs_transaction_id=row[6],
            start_dropped=bool(row[7]),
            state=TxState(row[8]),
            meter_stop_wh=row[9],
            stop_time=_dt(row[10]),
            stop_reason=row[11],
            stop_id_tag=row[12],
        )

    def insert_transaction(
        self,
        connector_id: int,
        id_tag: str,
        meter_start_wh: int,
        start_time: datetime,
        reservation_id: int | None = None,
    ) -> int:
        """Returns the local id. sqlite3.IntegrityError if the connector has one open."""
        cur = self._x(
            "INSERT INTO transactions "
            "(connector_id, id_tag, meter_start_wh, start_time, reservation_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (connector_id, id_tag, meter_start_wh, _ts(start_time), reservation_id),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def transaction(self, local_id: int) -> Transaction | None:
        row = self._x(
            f"SELECT {self._TX_COLS} FROM transactions WHERE local_id = ?", (local_id,)
        ).fetchone()
        return None if row is None else self._tx(row)

    def transaction_by_cs_id(self, cs_transaction_id: int) -> Transaction | None:
        row = self._x(
            f"SELECT {self._TX_COLS} FROM transactions WHERE cs_transaction_id = ? "
            "ORDER BY local_id DESC LIMIT 1",
            (cs_transaction_id,),
        ).fetchone()
        return None if row is None else self._tx(row)

    def open_transactions(self) -> list[Transaction]:
        """Transactions still charging (after a restart: the ones to stop with PowerLoss/...)."""
        rows = self._x(
            f"SELECT {self._TX_COLS} FROM transactions WHERE state = 'open' ORDER BY local_id"
        ).fetchall()
        return [self._tx(r) for r in rows]

    def open_transaction_on(self, connector_id: int) -> Transaction | None:
        row = self._x(
            f"SELECT {self._TX_COLS} FROM transactions WHERE state = 'open' AND connector_id = ?",
            (connector_id,),
        ).fetchone()
        return None if row is None else self._tx(row)

    def set_cs_transaction_id(self, local_id: int, cs_transaction_id: int) -> None:
        self._x(
            "UPDATE transactions SET cs_transaction_id = ? WHERE local_id = ?",
            (cs_transaction_id, local_id),
        )

    def mark_start_dropped(self, local_id: int) -> None:
        self._x("UPDATE transactions SET start_dropped = 1 WHERE local_id = ?", (local_id,))

    def mark_stopping(
        self,
        local_id: int,
        meter_stop_wh: int,
        stop_time: datetime,
        reason: str | None,
        stop_id_tag: str | None,
    ) -> bool:
        """open -> stopping. False (and no change) if the transaction is not open."""
        cur = self._x(
            "UPDATE transactions SET state = 'stopping', meter_stop_wh = ?, stop_time = ?, "
            "stop_reason = ?, stop_id_tag = ? WHERE local_id = ? AND state = 'open'",
            (meter_stop_wh, _ts(stop_time), reason, stop_id_tag, local_id),
        )
        return cur.rowcount == 1

    def mark_stopped(self, local_id: int) -> None:
        self._x("UPDATE transactions SET state = 'stopped' WHERE local_id = ?", (local_id,))

    def prune_transactions(self, keep: int = 100) -> int:
        """Forget all but the newest ``keep`` stopped transactions with nothing queued."""
        cur = self._x(
            "DELETE FROM transactions WHERE state = 'stopped' "
            "AND local_id NOT IN (SELECT tx_local_id FROM tx_queue WHERE tx_local_id IS NOT NULL) "
            "AND local_id NOT IN (SELECT local_id FROM transactions WHERE state = 'stopped' "
            "ORDER BY local_id DESC LIMIT ?)",
            (keep,),
        )
        return cur.rowcount

    # -- transaction-message queue (policy lives in evsed.controller.ocpp16.txqueue) ---------------

    @staticmethod
    def _q(row: tuple[Any, ...]) -> QueuedRow:
        return QueuedRow(
            id=row[0],
            action=row[1],
            payload=json.loads(row[2]),
            tx_local_id=row[3],
            attempts=row[4],
            last_error=row[5],
            parked=bool(row[6]),
        )

    _Q_COLS = "id, action, payload, tx_local_id, attempts, last_error, parked"

    def queue_insert(self, action: str, payload: Mapping[str, Any], tx_local_id: int | None) -> int:
        cur = self._x(
            "INSERT INTO tx_queue (action, payload, tx_local_id) VALUES (?, ?, ?)",
            (action, _dumps(payload), tx_local_id),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def queue_head(self) -> QueuedRow | None:
        """The oldest message not parked."""
        row = self._x(
            f"SELECT {self._Q_COLS} FROM tx_queue WHERE parked = 0 ORDER BY id LIMIT 1"
        ).fetchone()
        return None if row is None else self._q(row)

    def queue_get(self, msg_id: int) -> QueuedRow | None:
        row = self._x(f"SELECT {self._Q_COLS} FROM tx_queue WHERE id = ?", (msg_id,)).fetchone()
        return None if row is None else self._q(row)

    def queue_rows(self, *, parked: bool = False) -> list[QueuedRow]:
        rows = self._x(
            f"SELECT {self._Q_COLS} FROM tx_queue WHERE parked = ? ORDER BY id", (int(parked),)
        ).fetchall()
        return [self._q(r) for r in rows]

    def queue_len(self) -> int:
        return int(self._x("SELECT count(*) FROM tx_queue WHERE parked = 0").fetchone()[0])

    def queue_delete(self, msg_id: int) -> bool:
        return self._x("DELETE FROM tx_queue WHERE id = ?", (msg_id,)).rowcount == 1

    def queue_set_attempts(self, msg_id: int, attempts: int, error: str | None) -> None:
        self._x(
            "UPDATE tx_queue SET attempts = ?, last_error = ? WHERE id = ?",
            (attempts, error, msg_id),
        )

    def queue_park(self, msg_id: int, error: str) -> None:
        """Never deliver this message, but keep it for diagnostics / billing reconciliation."""
        self._x("UPDATE tx_queue SET parked = 1, last_error = ? WHERE id = ?", (error, msg_id))

    # -- authorisation cache ----------------------------------------------------------------

    def cache_put(
        self, id_tag: str, id_tag_info: Mapping[str, Any], expiry: datetime | None
    ) -> None:
        self._x(
            "INSERT INTO auth_cache (id_tag, id_tag_info, expiry) VALUES (?, ?, ?) "
            "ON CONFLICT (id_tag) DO UPDATE SET id_tag_info = excluded.id_tag_info, "
            "expiry = excluded.expiry WHERE id_tag_info IS NOT excluded.id_tag_info "
            "OR expiry IS NOT excluded.expiry",
            (id_tag, _dumps(id_tag_info), _ts(expiry)),
        )

    def cache_get(self, id_tag: str) -> CachedAuth | None:
        row = self._x(
            "SELECT id_tag, id_tag_info, expiry FROM auth_cache WHERE id_tag = ?", (id_tag,)
        ).fetchone()
        return None if row is None else CachedAuth(row[0], json.loads(row[1]), _dt(row[2]))

    def cache_clear(self) -> None:
        self._x("DELETE FROM auth_cache")

    # -- local authorisation list -----------------------------------------------------------

    def local_list_version(self) -> int:
        row = self._x("SELECT value FROM meta WHERE key = 'local_list_version'").fetchone()
        return 0 if row is None else int(row[0])

    def local_list_get(self, id_tag: str) -> dict[str, Any] | None:
        row = self._x("SELECT id_tag_info FROM local_list WHERE id_tag = ?", (id_tag,)).fetchone()
        return None if row is None else json.loads(row[0])

    def local_list_entries(self) -> dict[str, dict[str, Any]]:
        rows = self._x("SELECT id_tag, id_tag_info FROM local_list ORDER BY id_tag").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def local_list_len(self) -> int:
        return int(self._x("SELECT count(*) FROM local_list").fetchone()[0])

    def local_list_update(
        self,
        version: int,
        entries: Mapping[str, Mapping[str, Any] | None],
        *,
        full: bool,
    ) -> None:
        """SendLocalList: ``full`` replaces the list; a differential update deletes the tags
        whose info is None and upserts the others. One commit, version included."""
        with self.atomic():
            if full:
                self._x("DELETE FROM local_list")
            for id_tag, info in entries.items():
                if info is None:
                    self._x("DELETE FROM local_list WHERE id_tag = ?", (id_tag,))
                else:
                    self._x(
                        "INSERT INTO local_list (id_tag, id_tag_info) VALUES (?, ?) "
                        "ON CONFLICT (id_tag) DO UPDATE SET id_tag_info = excluded.id_tag_info",
                        (id_tag, _dumps(info)),
                    )
            self._x(
                "INSERT INTO meta (key, value) VALUES ('local_list_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )

    # -- charging profiles ------------------------------------------------------------------

    def profile_put(
        self,
        profile_id: int,
        connector_id: int,
        purpose: str,
        stack_level: int,
        profile: Mapping[str, Any],
    ) -> None:
        """Install, replacing a profile with the same id or the same connector, purpose and
        stack level (OCPP 1.6 §3.13.2)."""
        with self.atomic():
            self._x(
                "DELETE FROM charging_profiles WHERE profile_id = ? OR "
                "(connector_id = ? AND purpose = ? AND stack_level = ?)",
                (profile_id, connector_id, purpose, stack_level),
            )
            self._x(
                "INSERT INTO charging_profiles "
                "(profile_id, connector_id, purpose, stack_level, profile) VALUES (?, ?, ?, ?, ?)",
                (profile_id, connector_id, purpose, stack_level, _dumps(profile)),
            )

    def profiles(
        self, connector_id: int | None = None, purpose: str | None = None
    ) -> list[StoredProfile]:
        rows = self._x(
            "SELECT profile_id, connector_id, purpose, stack_level, profile "
            "FROM charging_profiles WHERE (:c IS NULL OR connector_id = :c) "
            "AND (:p IS NULL OR purpose = :p) ORDER BY connector_id, purpose, stack_level",
            {"c": connector_id, "p": purpose},
        ).fetchall()
        return [StoredProfile(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def profile_clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile semantics: an id selects only that profile; otherwise the
        other criteria filter (all None clears everything). Returns how many were removed."""
        if profile_id is not None:
            cur = self._x("DELETE FROM charging_profiles WHERE profile_id = ?", (profile_id,))
        else:
            cur = self._x(
                "DELETE FROM charging_profiles WHERE (:c IS NULL OR connector_id = :c) "
                "AND (:p IS NULL OR purpose = :p) AND (:s IS NULL OR stack_level = :s)",
                {"c": connector_id, "p": purpose, "s": stack_level},
            )
        return cur.rowcount

    # -- last known meter reading -----------------------------------------------------------

    def record_meter(
        self, connector_id: int, energy_wh: float, at: datetime, *, force: bool = False
    ) -> bool:
        """Remember the register so a transaction cut by power loss can be stopped with it.

        Written at most every ``meter_write_interval_s`` per connector, unless ``force``
        (use it when a transaction starts or stops). Returns whether it was written."""
        now = self._monotonic()
        last = self._meter_written_at.get(connector_id)
        if not force and last is not None and now - last < self._meter_interval:
            return False
        self._x(
            "INSERT INTO meter (connector_id, energy_wh, at) VALUES (?, ?, ?) "
            "ON CONFLICT (connector_id) DO UPDATE SET energy_wh = excluded.energy_wh, "
            "at = excluded.at",
            (connector_id, energy_wh, _ts(at)),
        )
        self._meter_written_at[connector_id] = now
        return True

    def last_meter(self, connector_id: int) -> MeterReading | None:
        row = self._x(
            "SELECT energy_wh, at FROM meter WHERE connector_id = ?", (connector_id,)
        ).fetchone()
        if row is None:
            return None
        at = _dt(row[1])
        assert at is not None
        return MeterReading(connector_id, float(row[0]), at)
