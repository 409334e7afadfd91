"""The persistent, strictly FIFO queue of transaction-related messages.

StartTransaction, StopTransaction and MeterValues of a transaction are committed to the
store before the call that queued them returns, and are delivered oldest first, one at a
time (OCPP 1.6 §3.7: "in chronological order"). The session's delivery coroutine does:

    msg = queue.next_due(clock.monotonic())        # None: empty, or head not due yet
    payload = queue.resolve_payload(msg)            # the real transactionId filled in
    ... send msg.action with payload ...
    queue.ack(msg.id, response)                     # CALLRESULT: removed (committed)
    queue.mark_attempt(msg.id, now, "CALLERROR ...") # the CS failed to process it
    queue.mark_attempt(msg.id, now, "timeout", failed_to_process=False)  # transport

Transaction ids: a transaction gets a local id when it starts (online or not). Its
StopTransaction/MeterValues are queued under that local id, never with a guessed
transactionId; ``resolve_payload`` fills in the CS's transactionId, stored by ``ack`` of
the StartTransaction. FIFO order guarantees the StartTransaction was answered before a
dependent message reaches the head.

Errors (OCPP 1.6 §3.7.1): only a "failure to process" (OCPP-J: a CALLERROR) counts as a
failed attempt. After TransactionMessageAttempts such failures the spec lets the CP skip
the message, so that one message the CS cannot digest does not block all later ones. Before
each retry we wait TransactionMessageRetryInterval times the number of transmissions so far.
Transport failures (offline, connection lost, no answer) do not count: the message stays
at the head and is retried after the retry interval, however long the outage lasts, so
nothing is ever lost to being offline.

What "skip" means here:
- MeterValues: deleted, as the spec says.
- StartTransaction / StopTransaction: *parked*, never deleted: they carry the energy to bill,
  so they stay in the database for diagnostics and reconciliation but are not sent again.
  A parked StartTransaction marks its transaction ``start_dropped``; the CS never issued a
  transactionId, so every later message of that transaction is parked too when it reaches
  the head instead of being sent with a bogus id (the CS would reject it anyway).

Durability (see `controller.store.database`): the StartTransaction with its transaction
record, the StopTransaction with the stop record, the acknowledgement of either, and a
parking are durable commits (synced before the call returns: they survive a power cut).
A start whose sync fails is undone before the error reaches the connector (which then
reports it not recorded and never closes the relay): its StartTransaction unqueued, the
transaction closed as start_dropped, so no session that never ran is sent or recovered.
MeterValues and their acknowledgements are light (they survive kill -9, a power cut may
lose the last few), which keeps an SD card's writes while charging small. Each sampled
MeterValues carries the connector's newest reading into the store in its own commit, so a
transaction cut short is stopped with an energy at most one sample interval old.

Delivery is at-least-once: a kill -9 after the CS answered but before ``ack`` committed
re-sends that one message after restart.

Retry due times are kept in memory (they are monotonic-clock values, meaningless after a
restart); after a restart every message is due at once. Attempt counts are persistent.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from evsed.controller.store import QueuedRow, Store, Transaction, TxState

if TYPE_CHECKING:
    from evsed.controller.ocpp16.keys import ConfigurationKeys

log = logging.getLogger(__name__)

START = "StartTransaction"
STOP = "StopTransaction"
METER_VALUES = "MeterValues"
TX_ACTIONS = frozenset({START, STOP, METER_VALUES})

IntSource = int | Callable[[], int]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    action: str
    payload: dict[str, Any]  # as queued (camelCase wire names), transactionId not resolved
    tx_local_id: int | None
    attempts: int  # failures to process so far
    last_error: str | None


class UnresolvedTransaction(Exception):
    """The message's transaction has no CS transactionId (and will never get one)."""


def ocpp_timestamp(at: datetime) -> str:
    """UTC, second precision is not required; 'Z' suffix as CSs expect."""
    if at.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _field(response: Any, camel: str, snake: str) -> Any:
    if response is None:
        return None
    if isinstance(response, Mapping):
        return response.get(camel, response.get(snake))
    return getattr(response, snake, None)


def _msg(row: QueuedRow) -> QueuedMessage:
    return QueuedMessage(
        row.id, row.action, row.payload, row.tx_local_id, row.attempts, row.last_error
    )


class TxQueue:
    """See the module docstring. Event-loop thread only (like the Store)."""

    def __init__(
        self, store: Store, *, attempts: IntSource = 3, retry_interval_s: IntSource = 60
    ) -> None:
        self._store = store
        self._attempts = attempts
        self._interval = retry_interval_s
        self._due: dict[int, float] = {}

    @classmethod
    def from_keys(cls, store: Store, keys: ConfigurationKeys) -> TxQueue:
        """Attempts and interval read live from the configuration keys."""
        return cls(
            store,
            attempts=lambda: keys.int("TransactionMessageAttempts"),
            retry_interval_s=lambda: keys.int("TransactionMessageRetryInterval"),
        )

    @staticmethod
    def _read(source: IntSource) -> int:
        return source() if callable(source) else source

    # -- queueing ---------------------------------------------------------------------------

    def enqueue(self, action: str, payload: Mapping[str, Any], tx_local_id: int | None) -> int:
        """Queue a message (committed on return); returns its id. For a message of a
        transaction pass its local id; any transactionId in the payload is replaced at
        send time."""
        if action not in TX_ACTIONS:
            raise ValueError(f"{action} is not a transaction-related message")
        if action != METER_VALUES and tx_local_id is None:
            raise ValueError(f"{action} needs the transaction's local id")
        return self._store.queue_insert(action, payload, tx_local_id)

    def start_transaction(
        self,
        connector_id: int,
        id_tag: str,
        meter_start_wh: int,
        timestamp: datetime,
        reservation_id: int | None = None,
    ) -> int:
        """Record a new transaction and queue its StartTransaction in one commit.
        Returns the local id. sqlite3.IntegrityError if the connector already has one open."""
        payload: dict[str, Any] = {
            "connectorId": connector_id,
            "idTag": id_tag,
            "meterStart": int(meter_start_wh),
            "timestamp": ocpp_timestamp(timestamp),
        }
        if reservation_id is not None:
            payload["reservationId"] = reservation_id
        # Durable before it returns: the connector closes the relay only after this hook.
        local_id: int | None = None
        msg_id: int | None = None
        try:
            with self._store.durable():
                local_id = self._store.insert_transaction(
                    connector_id, id_tag, int(meter_start_wh), timestamp, reservation_id
                )
                msg_id = self._store.queue_insert(START, payload, local_id)
                self._store.record_meter(connector_id, meter_start_wh, timestamp, force=True)
        except OSError:
            # Only the sync after the COMMIT raises an OSError (SQLite's own failures are
            # sqlite3.Error, rolled back): the start is committed but not known to be on
            # disk. The connector reports "not recorded" and never closes the relay, so the
            # record must not stay behind it (its StartTransaction sent, then a PowerLoss
            # stop for a session that never ran). Not retried: after an EIO Linux may have
            # marked the lost pages clean, so a second fdatasync that succeeds proves nothing.
            if local_id is not None and msg_id is not None:
                self._undo_start(local_id, msg_id)
            raise
        assert local_id is not None
        return local_id

    def _undo_start(self, local_id: int, msg_id: int) -> None:
        """Take back a start whose sync failed: its StartTransaction unqueued, the
        transaction closed as never accepted (nothing for recovery to stop)."""
        try:
            with self._store.durable():
                self._store.queue_delete(msg_id)
                self._store.mark_start_dropped(local_id)
                self._store.mark_stopped(local_id)
        except (OSError, sqlite3.Error):
            # Committed all the same when only the sync failed (a kill -9 keeps it).
            log.exception("transaction %d: the undone start could not be synced", local_id)
        else:
            log.error("transaction %d: its start could not be synced; undone", local_id)

    def stop_transaction(
        self,
        local_id: int,
        meter_stop_wh: int,
        timestamp: datetime,
        reason: str | None = None,
        transaction_data: list[dict[str, Any]] | None = None,
        id_tag: str | None = None,
    ) -> int | None:
        """Queue the transaction's StopTransaction, exactly once: returns the message id,
        or None if the transaction is unknown or already stopping/stopped (nothing queued).
        ``reason`` None means Local (the spec's default)."""
        tx = self._store.transaction(local_id)
        if tx is None or tx.state is not TxState.OPEN:
            return None
        if meter_stop_wh < tx.meter_start_wh:
            # The meter was lost or replaced mid-session (it reads 0, or less than at the
            # start): never bill a negative or zero session when a reading says otherwise.
            known = self._store.last_meter(tx.connector_id)
            fallback = tx.meter_start_wh
            if known is not None and known.at >= tx.start_time:
                fallback = max(fallback, round(known.energy_wh))
            log.warning(
                "transaction %d: meterStop %d Wh below meterStart %d Wh; stopping with %d Wh",
                local_id,
                meter_stop_wh,
                tx.meter_start_wh,
                fallback,
            )
            meter_stop_wh = fallback
        payload: dict[str, Any] = {
            "meterStop": int(meter_stop_wh),
            "timestamp": ocpp_timestamp(timestamp),
        }
        if reason is not None:
            payload["reason"] = reason
        if id_tag is not None:
            payload["idTag"] = id_tag
        if transaction_data:
            payload["transactionData"] = transaction_data
        # Durable before it returns: the stop is queued (and the CS may acknowledge it) only
        # once it survives a power cut.
        with self._store.durable():
            if not self._store.mark_stopping(
                local_id, int(meter_stop_wh), timestamp, reason, id_tag
            ):
                return None
            # The unique index on (tx_local_id) for StopTransaction backs this up.
            msg_id = self._store.queue_insert(STOP, payload, local_id)
        # No meter record here: it is read only to stop a transaction still open after a
        # power cut, and the next start writes its own.
        return msg_id

    def meter_values(
        self,
        connector_id: int,
        meter_value: list[dict[str, Any]],
        tx_local_id: int | None,
        *,
        energy_wh: float | None = None,
        at: datetime | None = None,
    ) -> int:
        """Queue a MeterValues.req (``meter_value`` in wire form: timestamp, sampledValue).

        ``energy_wh`` (the register these values carry) and ``at`` (their timestamp) are
        remembered in the same commit as the newest reading of the connector: what a
        transaction cut short by a power loss is stopped with. Light, like every MeterValues:
        a kill -9 keeps it; a power cut may lose the last few, never a start or stop."""
        payload = {"connectorId": connector_id, "meterValue": meter_value}
        if energy_wh is None or at is None:
            return self.enqueue(METER_VALUES, payload, tx_local_id)
        with self._store.atomic():
            msg_id = self.enqueue(METER_VALUES, payload, tx_local_id)
            self._store.record_meter(connector_id, energy_wh, at, force=True)
        return msg_id

    # -- delivery ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Messages still to deliver (parked ones excluded)."""
        return self._store.queue_len()

    def next_due(self, now: float) -> QueuedMessage | None:
        """The head of the queue if it may be sent at ``now`` (monotonic seconds), else None.
        Messages whose transaction can never get a transactionId are parked on the way."""
        while True:
            row = self._store.queue_head()
            if row is None:
                return None
            if row.action != START and row.tx_local_id is not None:
                tx = self._store.transaction(row.tx_local_id)
                if tx is None or tx.start_dropped or tx.cs_transaction_id is None:
                    self._park(row, "StartTransaction of this transaction was not accepted")
                    continue
            if self._due.get(row.id, float("-inf")) > now:
                return None
            return _msg(row)

    def due_in(self, now: float) -> float | None:
        """Seconds until the head may be sent (0 if now), None if the queue is empty."""
        row = self._store.queue_head()
        if row is None:
            return None
        return max(0.0, self._due.get(row.id, now) - now)

    def resolve_payload(self, msg: QueuedMessage) -> dict[str, Any]:
        """The payload to send, with the CS's transactionId for Stop/MeterValues.
        UnresolvedTransaction if it is not known (next_due never returns such a message)."""
        payload = dict(msg.payload)
        if msg.action == START or msg.tx_local_id is None:
            return payload
        tx = self._store.transaction(msg.tx_local_id)
        if tx is None or tx.cs_transaction_id is None:
            raise UnresolvedTransaction(f"message {msg.id}: no transactionId for its transaction")
        payload["transactionId"] = tx.cs_transaction_id
        return payload

    def ack(self, msg_id: int, response: Any = None) -> bool:
        """The CS answered with a CALLRESULT: remove the message (committed on return).

        ``response`` is the CALLRESULT payload (dict in camelCase or snake_case, or the
        ``ocpp`` library's call_result dataclass). For a StartTransaction it must carry the
        transactionId, which is stored for the dependent messages. Returns False if the
        message was not in the queue (already acked)."""
        row = self._store.queue_get(msg_id)
        if row is None:
            return False
        # A Start's transactionId and a Stop's end are durable once acknowledged (lost, the
        # CS would see the Start again and open a second transaction); a MeterValues' ack is
        # light: lost to a power cut, that one reading is sent twice.
        commit = self._store.atomic if row.action == METER_VALUES else self._store.durable
        with commit():
            if row.action == START and row.tx_local_id is not None:
                cs_id = _field(response, "transactionId", "transaction_id")
                if not isinstance(cs_id, int) or isinstance(cs_id, bool):
                    raise ValueError("StartTransaction response without an integer transactionId")
                self._store.set_cs_transaction_id(row.tx_local_id, cs_id)
            elif row.action == STOP and row.tx_local_id is not None:
                self._store.mark_stopped(row.tx_local_id)
            self._store.queue_delete(msg_id)
        self._due.pop(msg_id, None)
        return True

    def mark_attempt(
        self, msg_id: int, now: float, error: str, *, failed_to_process: bool = True
    ) -> bool:
        """A transmission did not succeed. ``failed_to_process`` (a CALLERROR) counts towards
        TransactionMessageAttempts; a transport failure does not. Returns True if the message
        will be retried, False if it was dropped (MeterValues) or parked (Start/Stop)."""
        row = self._store.queue_get(msg_id)
        if row is None:
            return False
        interval = max(0, self._read(self._interval))
        if not failed_to_process:
            self._due[msg_id] = now + interval
            return True
        attempts = row.attempts + 1
        if attempts >= max(1, self._read(self._attempts)):
            if row.action == METER_VALUES:
                log.warning(
                    "dropping MeterValues %d after %d failures: %s", msg_id, attempts, error
                )
                self._store.queue_delete(msg_id)
            else:
                self._park(row, f"{attempts} failures, last: {error}")
            self._due.pop(msg_id, None)
            return False
        self._store.queue_set_attempts(msg_id, attempts, error)
        self._due[msg_id] = now + interval * attempts
        return True

    def _park(self, row: QueuedRow, error: str) -> None:
        log.error("parking %s %d (not sent again): %s", row.action, row.id, error)
        with self._store.durable():
            self._store.queue_park(row.id, error)
            if row.tx_local_id is not None:
                if row.action == START:
                    self._store.mark_start_dropped(row.tx_local_id)
                elif row.action == STOP:
                    self._store.mark_stopped(row.tx_local_id)
        self._due.pop(row.id, None)

    # -- inspection -------------------------------------------------------------------------

    def parked(self) -> list[QueuedMessage]:
        """Start/Stop messages given up on, oldest first (for diagnostics)."""
        return [_msg(r) for r in self._store.queue_rows(parked=True)]

    def pending(self) -> list[QueuedMessage]:
        return [_msg(r) for r in self._store.queue_rows()]

    def transaction(self, local_id: int) -> Transaction | None:
        return self._store.transaction(local_id)

    def open_transactions(self) -> list[Transaction]:
        return self._store.open_transactions()
