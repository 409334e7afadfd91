"""Transactions, the marker of a planned restart, and the last meter reading per connector.

The last meter reading is what a transaction cut short by a power loss (or a kill) is
stopped with at the next start. It is written in the same commit as each sampled or
clock-aligned MeterValues of a running transaction (`TxQueue.meter_values`), so it is never
older than one sample interval and costs no commit of its own. When no MeterValues stored it
for a while (sampling off or slower) the bridge's recorder writes it at its own tick
(``force``, one light commit); a non-forced `record_meter` is throttled
(``meter_write_interval_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from evsed.controller.store.codec import dt, ts
from evsed.controller.store.database import Database, Repository


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
class MeterReading:
    connector_id: int
    energy_wh: float
    at: datetime


_TX_COLS = (
    "local_id, connector_id, id_tag, meter_start_wh, start_time, reservation_id, "
    "cs_transaction_id, start_dropped, state, meter_stop_wh, stop_time, stop_reason, "
    "stop_id_tag"
)


def _tx(row: tuple[Any, ...]) -> Transaction:
    start = dt(row[4])
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
        stop_time=dt(row[10]),
        stop_reason=row[11],
        stop_id_tag=row[12],
    )


class TransactionRepository(Repository):
    """Writes here are light; `TxQueue` makes the start and the stop durable."""

    def __init__(
        self,
        db: Database,
        *,
        meter_write_interval_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._meter_interval = meter_write_interval_s
        self._monotonic = monotonic
        self._meter_written_at: dict[int, float] = {}

    # -- the planned-restart marker ---------------------------------------------------------

    def set_pending_stop_reason(self, reason: str) -> None:
        """Before a deliberate restart: the reason (Reboot, HardReset, SoftReset) with which
        the transactions still open at the next start are to be stopped. Durable: a hard
        reset may cut the power next."""
        with self._db.durable():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('pending_stop_reason', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (reason,),
            )

    def take_pending_stop_reason(self) -> str | None:
        """Read and clear the marker. None means the last exit was not planned (PowerLoss)."""
        with self._db.atomic():
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'pending_stop_reason'"
            ).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM meta WHERE key = 'pending_stop_reason'")
        return str(row[0])

    # -- transactions -----------------------------------------------------------------------

    def insert_transaction(
        self,
        connector_id: int,
        id_tag: str,
        meter_start_wh: int,
        start_time: datetime,
        reservation_id: int | None = None,
    ) -> int:
        """Returns the local id. sqlite3.IntegrityError if the connector has one open."""
        cur = self._db.execute(
            "INSERT INTO transactions "
            "(connector_id, id_tag, meter_start_wh, start_time, reservation_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (connector_id, id_tag, meter_start_wh, ts(start_time), reservation_id),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def transaction(self, local_id: int) -> Transaction | None:
        row = self._db.execute(
            f"SELECT {_TX_COLS} FROM transactions WHERE local_id = ?", (local_id,)
        ).fetchone()
        return None if row is None else _tx(row)

    def transaction_by_cs_id(self, cs_transaction_id: int) -> Transaction | None:
        row = self._db.execute(
            f"SELECT {_TX_COLS} FROM transactions WHERE cs_transaction_id = ? "
            "ORDER BY local_id DESC LIMIT 1",
            (cs_transaction_id,),
        ).fetchone()
        return None if row is None else _tx(row)

    def open_transactions(self) -> list[Transaction]:
        """Transactions still charging (after a restart: the ones to stop with PowerLoss/...)."""
        rows = self._db.execute(
            f"SELECT {_TX_COLS} FROM transactions WHERE state = 'open' ORDER BY local_id"
        ).fetchall()
        return [_tx(r) for r in rows]

    def open_transaction_on(self, connector_id: int) -> Transaction | None:
        row = self._db.execute(
            f"SELECT {_TX_COLS} FROM transactions WHERE state = 'open' AND connector_id = ?",
            (connector_id,),
        ).fetchone()
        return None if row is None else _tx(row)

    def set_cs_transaction_id(self, local_id: int, cs_transaction_id: int) -> None:
        self._db.execute(
            "UPDATE transactions SET cs_transaction_id = ? WHERE local_id = ?",
            (cs_transaction_id, local_id),
        )

    def mark_start_dropped(self, local_id: int) -> None:
        self._db.execute(
            "UPDATE transactions SET start_dropped = 1 WHERE local_id = ?", (local_id,)
        )

    def mark_stopping(
        self,
        local_id: int,
        meter_stop_wh: int,
        stop_time: datetime,
        reason: str | None,
        stop_id_tag: str | None,
    ) -> bool:
        """open -> stopping. False (and no change) if the transaction is not open."""
        cur = self._db.execute(
            "UPDATE transactions SET state = 'stopping', meter_stop_wh = ?, stop_time = ?, "
            "stop_reason = ?, stop_id_tag = ? WHERE local_id = ? AND state = 'open'",
            (meter_stop_wh, ts(stop_time), reason, stop_id_tag, local_id),
        )
        return cur.rowcount == 1

    def mark_stopped(self, local_id: int) -> None:
        self._db.execute(
            "UPDATE transactions SET state = 'stopped' WHERE local_id = ?", (local_id,)
        )

    def prune_transactions(self, keep: int = 100) -> int:
        """Forget all but the newest ``keep`` stopped transactions with nothing queued."""
        cur = self._db.execute(
            "DELETE FROM transactions WHERE state = 'stopped' "
            "AND local_id NOT IN (SELECT tx_local_id FROM tx_queue WHERE tx_local_id IS NOT NULL) "
            "AND local_id NOT IN (SELECT local_id FROM transactions WHERE state = 'stopped' "
            "ORDER BY local_id DESC LIMIT ?)",
            (keep,),
        )
        return cur.rowcount

    # -- last known meter reading -----------------------------------------------------------

    def record_meter(
        self, connector_id: int, energy_wh: float, at: datetime, *, force: bool = False
    ) -> bool:
        """Remember the register so a transaction cut by power loss can be stopped with it.

        Written at most every ``meter_write_interval_s`` per connector, unless ``force``
        (a transaction starts, or the reading goes into the commit of a MeterValues that
        carries it). Returns whether it was written."""
        now = self._monotonic()
        last = self._meter_written_at.get(connector_id)
        if not force and last is not None and now - last < self._meter_interval:
            return False
        self._db.execute(
            "INSERT INTO meter (connector_id, energy_wh, at) VALUES (?, ?, ?) "
            "ON CONFLICT (connector_id) DO UPDATE SET energy_wh = excluded.energy_wh, "
            "at = excluded.at",
            (connector_id, energy_wh, ts(at)),
        )
        self._meter_written_at[connector_id] = now
        return True

    def last_meter(self, connector_id: int) -> MeterReading | None:
        row = self._db.execute(
            "SELECT energy_wh, at FROM meter WHERE connector_id = ?", (connector_id,)
        ).fetchone()
        if row is None:
            return None
        at = dt(row[1])
        assert at is not None
        return MeterReading(connector_id, float(row[0]), at)
