"""Rows of the transaction-message queue (the policy lives in `controller.ocpp16.txqueue`).

Payloads are JSON text; one longer than ``COMPRESS_ABOVE`` bytes (MeterValues with per-phase
values, a StopTransaction with transactionData) is kept zlib-compressed as a BLOB. With
1 KiB pages a 1.7 KiB MeterValues would take an overflow page to write and another to free
on its acknowledgement, and every page is one more WAL frame on the card: compressed
(sampled values repeat their keys), it fits in the leaf page the queue writes anyway.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evsed.controller.store.codec import dumps, loads
from evsed.controller.store.database import Repository


@dataclass(frozen=True, slots=True)
class QueuedRow:
    id: int
    action: str
    payload: dict[str, Any]
    tx_local_id: int | None
    attempts: int
    last_error: str | None
    parked: bool


_Q_COLS = "id, action, payload, tx_local_id, attempts, last_error, parked"
COMPRESS_ABOVE = 512


def _encode(payload: Mapping[str, Any]) -> str | bytes:
    text = dumps(payload)
    return zlib.compress(text.encode(), 6) if len(text) > COMPRESS_ABOVE else text


def _decode(stored: str | bytes) -> Any:
    return loads(zlib.decompress(stored).decode() if isinstance(stored, bytes) else stored)


def _q(row: tuple[Any, ...]) -> QueuedRow:
    return QueuedRow(
        id=row[0],
        action=row[1],
        payload=_decode(row[2]),
        tx_local_id=row[3],
        attempts=row[4],
        last_error=row[5],
        parked=bool(row[6]),
    )


class QueueRepository(Repository):
    """Light writes; `TxQueue` decides which commits are durable."""

    def queue_insert(self, action: str, payload: Mapping[str, Any], tx_local_id: int | None) -> int:
        cur = self._db.execute(
            "INSERT INTO tx_queue (action, payload, tx_local_id) VALUES (?, ?, ?)",
            (action, _encode(payload), tx_local_id),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def queue_head(self) -> QueuedRow | None:
        """The oldest message not parked."""
        row = self._db.execute(
            f"SELECT {_Q_COLS} FROM tx_queue WHERE parked = 0 ORDER BY id LIMIT 1"
        ).fetchone()
        return None if row is None else _q(row)

    def queue_get(self, msg_id: int) -> QueuedRow | None:
        row = self._db.execute(f"SELECT {_Q_COLS} FROM tx_queue WHERE id = ?", (msg_id,)).fetchone()
        return None if row is None else _q(row)

    def queue_rows(self, *, parked: bool = False) -> list[QueuedRow]:
        rows = self._db.execute(
            f"SELECT {_Q_COLS} FROM tx_queue WHERE parked = ? ORDER BY id", (int(parked),)
        ).fetchall()
        return [_q(r) for r in rows]

    def queue_len(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM tx_queue WHERE parked = 0").fetchone()[0])

    def queue_delete(self, msg_id: int) -> bool:
        return self._db.execute("DELETE FROM tx_queue WHERE id = ?", (msg_id,)).rowcount == 1

    def queue_set_attempts(self, msg_id: int, attempts: int, error: str | None) -> None:
        self._db.execute(
            "UPDATE tx_queue SET attempts = ?, last_error = ? WHERE id = ?",
            (attempts, error, msg_id),
        )

    def queue_park(self, msg_id: int, error: str) -> None:
        """Never deliver this message, but keep it for diagnostics / billing reconciliation."""
        self._db.execute(
            "UPDATE tx_queue SET parked = 1, last_error = ? WHERE id = ?", (error, msg_id)
        )
