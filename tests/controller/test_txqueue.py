"""Transaction-related messages: FIFO, committed, the real transactionId, retries (§3.7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocpp.v16 import call_result

from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.txqueue import TxQueue, UnresolvedTransaction
from evsed.controller.store import Store, TxState

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "evsed.db"


@pytest.fixture
def store(db: Path):
    s = Store(db)
    yield s
    s.close()


@pytest.fixture
def queue(store: Store) -> TxQueue:
    return TxQueue(store, attempts=3, retry_interval_s=60)


def mv(wh: int) -> list[dict[str, object]]:
    return [{"timestamp": "2026-01-01T12:00:00Z", "sampledValue": [{"value": str(wh)}]}]


def deliver(queue: TxQueue, now: float, start_ids: dict[int, int]) -> list[tuple[str, dict]]:
    """A CS that accepts everything; StartTransaction of local id n gets start_ids[n]."""
    sent = []
    while (msg := queue.next_due(now)) is not None:
        payload = queue.resolve_payload(msg)
        sent.append((msg.action, payload))
        response = {"transactionId": start_ids.get(msg.tx_local_id or 0, 0)}
        assert queue.ack(msg.id, response if msg.action == "StartTransaction" else {})
    return sent


def test_enqueue_is_committed_and_fifo_across_reopen(db: Path) -> None:
    with Store(db) as s:
        q = TxQueue(s)
        local = q.start_transaction(1, "AABBCCDD", 100, T0)
        ids = [q.meter_values(1, mv(i), local) for i in range(5)]
        q.stop_transaction(local, 600, T0 + timedelta(hours=1), "Local")
    with Store(db) as s:  # as after kill -9: nothing was closed cleanly before this point
        q = TxQueue(s)
        assert len(q) == 7
        assert [m.action for m in q.pending()] == ["StartTransaction"] + ["MeterValues"] * 5 + [
            "StopTransaction"
        ]
        assert [m.id for m in q.pending()][1:6] == ids
        sent = deliver(q, 0.0, {local: 77})
        assert [p.get("transactionId") for _, p in sent] == [None, 77, 77, 77, 77, 77, 77]
        assert [p["meterValue"][0]["sampledValue"][0]["value"] for a, p in sent[1:6]] == [
            "0",
            "1",
            "2",
            "3",
            "4",
        ]
        assert len(q) == 0
        tx = q.transaction(local)
        assert tx is not None and tx.state is TxState.STOPPED and tx.cs_transaction_id == 77


def test_offline_transactions_get_their_real_ids_at_send_time(queue: TxQueue) -> None:
    a = queue.start_transaction(1, "A", 0, T0)
    queue.meter_values(1, mv(10), a)
    b = queue.start_transaction(2, "B", 5, T0)
    queue.stop_transaction(a, 20, T0, "EVDisconnected", id_tag="A")
    queue.stop_transaction(b, 50, T0, None)
    sent = deliver(queue, 0.0, {a: 1001, b: 1002})
    assert [(act, p.get("transactionId")) for act, p in sent] == [
        ("StartTransaction", None),
        ("MeterValues", 1001),
        ("StartTransaction", None),
        ("StopTransaction", 1001),
        ("StopTransaction", 1002),
    ]
    stop_a = sent[3][1]
    assert stop_a == {
        "transactionId": 1001,
        "meterStop": 20,
        "timestamp": "2026-01-01T12:00:00Z",
        "reason": "EVDisconnected",
        "idTag": "A",
    }
    assert "reason" not in sent[4][1]  # None means Local, the spec's default


def test_placeholder_in_payload_is_never_sent(queue: TxQueue) -> None:
    local = queue.start_transaction(1, "A", 0, T0)
    queue.enqueue(
        "MeterValues", {"connectorId": 1, "transactionId": -1, "meterValue": mv(1)}, local
    )
    start = queue.next_due(0.0)
    assert start is not None
    with pytest.raises(UnresolvedTransaction):
        queue.resolve_payload(queue.pending()[1])  # the StartTransaction is not answered yet
    queue.ack(start.id, call_result.StartTransaction(transaction_id=9, id_tag_info={}))
    msg = queue.next_due(0.0)
    assert msg is not None and queue.resolve_payload(msg)["transactionId"] == 9


def test_stop_transaction_is_idempotent(queue: TxQueue, store: Store) -> None:
    local = queue.start_transaction(1, "A", 0, T0)
    first = queue.stop_transaction(local, 10, T0, "PowerLoss")
    assert first is not None
    assert queue.stop_transaction(local, 11, T0, "PowerLoss") is None
    assert [m.action for m in queue.pending()].count("StopTransaction") == 1
    deliver(queue, 0.0, {local: 5})
    # Even after the StopTransaction was acknowledged and removed from the queue.
    assert queue.stop_transaction(local, 12, T0, "PowerLoss") is None
    assert len(queue) == 0
    assert queue.stop_transaction(9999, 1, T0) is None  # unknown transaction


def test_restart_finds_open_transactions_and_the_reason(db: Path) -> None:
    with Store(db) as s:
        q = TxQueue(s)
        local = q.start_transaction(1, "A", 1000, T0)
        s.record_meter(1, 1500.0, T0 + timedelta(minutes=5), force=True)
        s.set_pending_stop_reason("SoftReset")
    with Store(db) as s:
        q = TxQueue(s)
        [tx] = q.open_transactions()
        assert tx.local_id == local
        reason = s.take_pending_stop_reason() or "PowerLoss"
        meter = s.last_meter(tx.connector_id)
        assert meter is not None
        assert q.stop_transaction(tx.local_id, int(meter.energy_wh), meter.at, reason)
        assert q.open_transactions() == []
    with Store(db) as s:
        assert s.take_pending_stop_reason() is None  # next unplanned restart: PowerLoss
        [_, stop] = TxQueue(s).pending()
        assert (stop.payload["meterStop"], stop.payload["reason"]) == (1500, "SoftReset")


def test_retry_schedule_is_interval_times_attempts(queue: TxQueue) -> None:
    local = queue.start_transaction(1, "A", 0, T0)
    msg = queue.next_due(0.0)
    assert msg is not None
    assert queue.mark_attempt(msg.id, 0.0, "CALLERROR InternalError")
    assert queue.next_due(59.9) is None
    assert queue.due_in(0.0) == pytest.approx(60.0)
    assert queue.next_due(60.0) is not None
    assert queue.mark_attempt(msg.id, 60.0, "CALLERROR InternalError")
    assert queue.next_due(60.0 + 119.9) is None
    again = queue.next_due(180.0)
    assert (
        again is not None and again.attempts == 2 and again.last_error == "CALLERROR InternalError"
    )
    queue.ack(again.id, {"transactionId": 3})
    tx = queue.transaction(local)
    assert tx is not None and tx.cs_transaction_id == 3


def test_transport_failures_never_use_up_attempts(queue: TxQueue) -> None:
    queue.start_transaction(1, "A", 0, T0)
    msg = queue.next_due(0.0)
    assert msg is not None
    now = 0.0
    for _ in range(50):
        assert queue.mark_attempt(msg.id, now, "timeout", failed_to_process=False)
        assert queue.next_due(now) is None
        now += 60.0
    head = queue.next_due(now)
    assert head is not None and head.attempts == 0


def test_meter_values_dropped_after_attempts(queue: TxQueue) -> None:
    local = queue.start_transaction(1, "A", 0, T0)
    deliver(queue, 0.0, {local: 1})
    bad = queue.meter_values(1, mv(1), local)
    good = queue.meter_values(1, mv(2), local)
    now = 0.0
    for expect_retry in (True, True, False):
        msg = queue.next_due(now)
        assert msg is not None and msg.id == bad
        assert queue.mark_attempt(msg.id, now, "CALLERROR") is expect_retry
        now += 1000.0
    nxt = queue.next_due(now)
    assert nxt is not None and nxt.id == good
    assert queue.parked() == []  # MeterValues are dropped, not kept


def test_refused_start_parks_its_transaction_messages(queue: TxQueue, store: Store) -> None:
    doomed = queue.start_transaction(1, "A", 0, T0)
    queue.meter_values(1, mv(1), doomed)
    queue.stop_transaction(doomed, 10, T0, "Local")
    other = queue.start_transaction(2, "B", 0, T0)
    now = 0.0
    for _ in range(3):
        msg = queue.next_due(now)
        assert msg is not None and msg.action == "StartTransaction" and msg.tx_local_id == doomed
        queue.mark_attempt(msg.id, now, "CALLERROR FormationViolation")
        now += 1000.0
    # The dependent MeterValues and StopTransaction are skipped, never sent with a bogus id.
    sent = deliver(queue, now, {other: 2})
    assert [(a, p.get("connectorId")) for a, p in sent] == [("StartTransaction", 2)]
    assert [m.action for m in queue.parked()] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    tx = store.transaction(doomed)
    assert tx is not None and tx.start_dropped and tx.state is TxState.STOPPED


def test_stop_transaction_parked_not_deleted_after_attempts(queue: TxQueue) -> None:
    local = queue.start_transaction(1, "A", 0, T0)
    deliver(queue, 0.0, {local: 1})
    queue.stop_transaction(local, 5, T0, "Local")
    now = 0.0
    while (msg := queue.next_due(now)) is not None:
        queue.mark_attempt(msg.id, now, "CALLERROR")
        now += 1000.0
    [parked] = queue.parked()
    assert parked.action == "StopTransaction" and parked.attempts == 2
    assert len(queue) == 0


def test_attempt_count_survives_restart(db: Path) -> None:
    with Store(db) as s:
        q = TxQueue(s)
        q.start_transaction(1, "A", 0, T0)
        msg = q.next_due(0.0)
        assert msg is not None
        q.mark_attempt(msg.id, 0.0, "CALLERROR")
        q.mark_attempt(msg.id, 60.0, "CALLERROR")
    with Store(db) as s:
        q = TxQueue(s)
        msg = q.next_due(0.0)  # due times are not kept: due at once after restart
        assert msg is not None and msg.attempts == 2
        assert not q.mark_attempt(msg.id, 0.0, "CALLERROR")
        assert len(q) == 0


def test_retry_settings_follow_configuration_keys(store: Store) -> None:
    keys = ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"])
    queue = TxQueue.from_keys(store, keys)
    assert keys.change("TransactionMessageRetryInterval", "10").value == "Accepted"
    assert keys.change("TransactionMessageAttempts", "1").value == "Accepted"
    queue.start_transaction(1, "A", 0, T0)
    msg = queue.next_due(0.0)
    assert msg is not None
    assert not queue.mark_attempt(msg.id, 0.0, "CALLERROR")  # one attempt only
    keys.change("TransactionMessageAttempts", "5")
    local = queue.start_transaction(2, "B", 0, T0)
    msg = queue.next_due(0.0)
    assert msg is not None and msg.tx_local_id == local
    assert queue.mark_attempt(msg.id, 0.0, "CALLERROR")
    assert queue.due_in(0.0) == pytest.approx(10.0)


def test_rejects_non_transaction_messages(queue: TxQueue) -> None:
    with pytest.raises(ValueError):
        queue.enqueue("Heartbeat", {}, None)
    with pytest.raises(ValueError):
        queue.enqueue("StopTransaction", {}, None)


def test_ack_is_idempotent_and_start_needs_an_id(queue: TxQueue) -> None:
    queue.start_transaction(1, "A", 0, T0)
    msg = queue.next_due(0.0)
    assert msg is not None
    with pytest.raises(ValueError):
        queue.ack(msg.id, {"idTagInfo": {"status": "Accepted"}})
    assert len(queue) == 1  # nothing half-done
    assert queue.ack(msg.id, {"transaction_id": 4})
    assert not queue.ack(msg.id, {"transactionId": 4})


def test_meter_values_carry_the_reading_into_the_store_in_their_own_commit(
    queue: TxQueue, store: Store
) -> None:
    local = queue.start_transaction(1, "AABBCCDD", 100, T0)
    statements: list[str] = []
    store._con.set_trace_callback(statements.append)
    at = T0 + timedelta(seconds=10)
    queue.meter_values(1, mv(150), local, energy_wh=150.0, at=at)
    store._con.set_trace_callback(None)
    # Within the meter throttle interval, yet written: it rides on the MeterValues' commit.
    reading = store.last_meter(1)
    assert reading is not None and (reading.energy_wh, reading.at) == (150.0, at)
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    assert writes == ["BEGIN", "INSERT", "INSERT", "COMMIT"]


def test_a_stop_below_the_start_is_stopped_with_the_last_reading(
    queue: TxQueue, store: Store
) -> None:
    local = queue.start_transaction(1, "AABBCCDD", 1000, T0)
    queue.meter_values(1, mv(1040), local, energy_wh=1040.0, at=T0 + timedelta(seconds=10))
    # The meter failed (reads nothing, so the connector says 0 Wh) when the session ended.
    queue.stop_transaction(local, 0, T0 + timedelta(seconds=20), "Local")
    (stop,) = [m for m in queue.pending() if m.action == "StopTransaction"]
    assert stop.payload["meterStop"] == 1040
    tx = store.transaction(local)
    assert tx is not None and tx.meter_stop_wh == 1040


def test_start_stop_and_their_acks_are_synced_meter_values_are_not(
    queue: TxQueue, store: Store
) -> None:
    syncs = store.syncs
    local = queue.start_transaction(1, "AABBCCDD", 100, T0)
    assert store.syncs == syncs + 1
    queue.meter_values(1, mv(150), local, energy_wh=150.0, at=T0 + timedelta(seconds=10))
    assert store.syncs == syncs + 1
    queue.stop_transaction(local, 200, T0 + timedelta(seconds=20), "Local")
    assert store.syncs == syncs + 2
    start, meter, stop = queue.pending()
    queue.ack(start.id, {"transactionId": 9})
    assert store.syncs == syncs + 3
    queue.ack(meter.id, {})
    assert store.syncs == syncs + 3
    queue.ack(stop.id, {})
    assert store.syncs == syncs + 4
