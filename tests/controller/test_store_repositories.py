"""Each aggregate's repository on its own over one Database, and the new tables' rules."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evsed.controller.store import (
    SCHEMA_VERSION,
    Database,
    FirmwareRepository,
    FirmwareState,
    Reservation,
    ReservationRepository,
    Store,
    secure_state_dir,
)
from evsed.controller.store.schema import MIGRATIONS

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path):
    d = Database(tmp_path / "evsed.db")
    yield d
    d.close()


def test_reservation_put_replace_and_one_per_connector(db: Database) -> None:
    repo = ReservationRepository(db)
    repo.reservation_put(Reservation(7, 1, "AABB", T0, parent_id_tag="P"))
    assert repo.reservation_get(7) == Reservation(7, 1, "AABB", T0, "P")
    # The same id again replaces it (another tag, another expiry).
    repo.reservation_put(Reservation(7, 1, "CCDD", T0 + timedelta(hours=1)))
    assert repo.reservation_on(1) == Reservation(7, 1, "CCDD", T0 + timedelta(hours=1))
    # Another id on the same connector: refused (the handler answers Occupied).
    with pytest.raises(sqlite3.IntegrityError):
        repo.reservation_put(Reservation(8, 1, "EEFF", T0))
    # Connector 0 (the charger) may hold several.
    repo.reservation_put(Reservation(9, 0, "A", T0))
    repo.reservation_put(Reservation(10, 0, "B", T0))
    assert [r.reservation_id for r in repo.reservations()] == [9, 10, 7]
    assert repo.reservation_on(0) is not None and repo.reservation_on(0).reservation_id == 9
    assert repo.reservation_delete(9) and not repo.reservation_delete(9)


def test_reservations_expire(db: Database) -> None:
    repo = ReservationRepository(db)
    repo.reservation_put(Reservation(1, 1, "A", T0))
    repo.reservation_put(Reservation(2, 2, "B", T0 + timedelta(minutes=5)))
    assert [r.reservation_id for r in repo.reservations_expire(T0)] == [1]
    assert [r.reservation_id for r in repo.reservations()] == [2]
    assert repo.reservations_expire(T0) == []


def test_firmware_state_one_row(db: Database) -> None:
    repo = FirmwareRepository(db)
    assert repo.firmware_state() is None
    state = FirmwareState("https://fw.example/1.2.bin", T0, "Downloading", 3, 60, T0)
    repo.set_firmware_state(state)
    later = FirmwareState("https://fw.example/1.2.bin", T0, "Installing", 2, 60, T0)
    repo.set_firmware_state(later)
    assert repo.firmware_state() == later
    assert db.execute("SELECT count(*) FROM firmware").fetchone()[0] == 1
    repo.clear_firmware_state()
    assert repo.firmware_state() is None


def test_reservations_and_firmware_survive_reopen(tmp_path: Path) -> None:
    with Store(tmp_path / "evsed.db") as s:
        s.reservation_put(Reservation(3, 2, "AABB", T0))
        s.set_firmware_state(FirmwareState("ftp://x/y", T0, "Downloaded", 1, 30, T0))
    with Store(tmp_path / "evsed.db") as s:
        assert s.reservation_get(3) == Reservation(3, 2, "AABB", T0)
        fw = s.firmware_state()
        assert fw is not None and fw.status == "Downloaded"


def test_a_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version=1; COMMIT;")
    con.execute("INSERT INTO config (key, value) VALUES ('HeartbeatInterval', '60')")
    con.execute(
        "INSERT INTO transactions (connector_id, id_tag, meter_start_wh, start_time) "
        "VALUES (1, 'A', 0, ?)",
        (T0.isoformat(),),
    )
    con.execute("INSERT INTO tx_queue (id, action, payload, tx_local_id) VALUES (41, 'X', '{}', 1)")
    con.execute(
        "INSERT INTO tx_queue (action, payload, tx_local_id, attempts, parked) "
        "VALUES ('StopTransaction', '{}', 1, 2, 1)"
    )
    con.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 4
        assert s.config_values() == {"HeartbeatInterval": "60"}
        s.reservation_put(Reservation(1, 1, "A", T0))
        rows = s.queue_rows() + s.queue_rows(parked=True)
        assert [(r.id, r.action, r.attempts, r.parked) for r in rows] == [
            (41, "X", 0, False),
            (42, "StopTransaction", 2, True),
        ]
        with pytest.raises(sqlite3.IntegrityError):  # still one StopTransaction per tx
            s.queue_insert("StopTransaction", {}, 1)
        assert s.queue_insert("MeterValues", {}, 1) == 43
        assert s.integrity_check() == "ok"


def test_a_queued_meter_value_writes_no_sequence_page(tmp_path: Path) -> None:
    """The queue has no AUTOINCREMENT: a MeterValues dirties no sqlite_sequence page."""
    with Store(tmp_path / "evsed.db") as s:
        s.queue_insert("MeterValues", {}, None)
        sql = "SELECT count(*) FROM sqlite_sequence WHERE name = 'tx_queue'"
        assert s.execute(sql).fetchone()[0] == 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_files_and_state_dir_are_the_service_users_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a usual umask: files would be 0644 if not created 0600
    try:
        state = secure_state_dir(tmp_path / "state")
        with Store(state / "evsed.db") as s:
            s.set_config("AuthorizationKey", "00112233445566778899aabbccddeeff")
            files = [state / "evsed.db", state / "evsed.db-wal", state / "evsed.db-shm"]
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert _mode(state) == 0o700
    finally:
        os.umask(old)


def test_files_left_world_readable_by_an_older_evsed_are_restricted(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    Store(path).close()
    os.chmod(path, 0o644)
    (tmp_path / "state").mkdir(mode=0o755)
    with Store(path):
        assert _mode(path) == 0o600
    assert _mode(secure_state_dir(tmp_path / "state")) == 0o700


def test_a_state_dir_we_cannot_restrict_is_used_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)
    assert secure_state_dir(tmp_path / "shared") == tmp_path / "shared"
    assert "cannot make it 0700" in caplog.text
