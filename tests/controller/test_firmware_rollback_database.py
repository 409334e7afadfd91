"""A rollback leaves a charger that starts (safety review of issue 12): the new version
migrates evsed.db when it starts, before it is confirmed; the old version refuses a newer
schema. So the installer snapshots the database at the switch (SQLite's online backup),
and the old version, back after a rollback, puts the snapshot back before it opens the
database. The new version started no transaction meanwhile (it waits for its
confirmation: test_firmware_install_safety), so nothing of a driver's is lost. An old
version meeting a newer schema without a snapshot says so in one line and exits 2, the
status the unit does not restart on."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evsed.controller.firmware.installer import DB_SNAPSHOT, restore_after_rollback
from evsed.controller.firmware.update import FirmwareStatus
from evsed.controller.ocpp16.app import OcppApp
from evsed.controller.store import database
from evsed.controller.store.database import Database, StoreError
from evsed.controller.store.firmware import FirmwareState
from evsed.controller.store.schema import SCHEMA_VERSION
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.evsed_process import ENV, REPO, _config
from tests.support.firmware_layout import SYSTEMD, FakeVenvs, Restarts, tiny_wheel, venv_root
from tests.support.firmware_layout import layout_installer as _installer

#: What a new version might add: a column on the queue and a table of its own.
DUMMY_MIGRATION = """
    ALTER TABLE tx_queue ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE new_feature (x INTEGER);
"""
T = datetime(2026, 1, 1, tzinfo=UTC)


def _open(state: Path) -> OcppApp:
    return OcppApp(bench_config(), FakeClock(), state)


def _queued(app: OcppApp) -> list[str]:
    return [m.action for m in app.txqueue.pending()]


def test_the_old_version_gets_back_the_database_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    state.mkdir()
    now = [T.timestamp()]
    old, new = root / "venvs" / "1.0.0", root / "venvs" / "9.9.9"

    # The old version runs: a transaction message waits for the CS, the update installs.
    app = _open(state)
    app.txqueue.enqueue("MeterValues", {"connectorId": 1, "meterValue": []}, None)
    assert app.keys.change("HeartbeatInterval", "123").value == "Accepted"
    app.store.set_firmware_state(
        FirmwareState("http://cs/evsed-9.9.9.whl", T, FirmwareStatus.INSTALLING, 0, 0, T)
    )
    installer = _installer(root, state, FakeVenvs(), now, prefix=old, restart=Restarts())
    assert asyncio.run(installer.install(tiny_wheel(tmp_path))) is False  # switched
    app.close()
    snapshot = state / DB_SNAPSHOT
    assert snapshot.stat().st_mode & 0o777 == 0o600  # it holds the AuthorizationKey too

    # The new version starts and migrates (it never reaches its confirmation).
    with monkeypatch.context() as m:
        m.setattr(database, "MIGRATIONS", (*database.MIGRATIONS, DUMMY_MIGRATION))
        m.setattr(database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        newer = _open(state)
        assert newer.store.schema_version == SCHEMA_VERSION + 1
        newer.close()
    # What the old version met before: a schema it refuses.
    with pytest.raises(StoreError, match="newer than this evsed"):
        Database(state / "evsed.db")

    # The deadline passes: the watcher rolls back; systemd starts the old version.
    now[0] += 601
    assert installer.rollback_if_due() is True
    back = _open(state)  # sys.prefix here is not the rolled-back venv: it restores
    try:
        assert back.store.schema_version == SCHEMA_VERSION
        assert _queued(back) == ["MeterValues"]  # nothing queued before the switch is lost
        assert back.keys.value("HeartbeatInterval") == "123"
        fw = back.store.firmware_state()
        assert fw is not None and fw.status == FirmwareStatus.INSTALLING  # reports the failure
        assert installer.outcome_after_restart() is False
        assert not snapshot.exists()  # restored once
        assert back.keys.change("HeartbeatInterval", "77").value == "Accepted"
    finally:
        back.close()
    # A later start keeps what the old version wrote since (no second restore).
    assert restore_after_rollback(state, lambda: old) is False
    again = _open(state)
    try:
        assert again.keys.value("HeartbeatInterval") == "77"
    finally:
        again.close()
    assert sqlite3.connect(state / "evsed.db").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )
    del new


def test_a_confirmed_version_keeps_its_database(tmp_path: Path) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    state.mkdir()
    now = [T.timestamp()]
    old, new = root / "venvs" / "1.0.0", root / "venvs" / "9.9.9"
    _open(state).close()
    asyncio.run(_installer(root, state, FakeVenvs(), now, prefix=old).install(tiny_wheel(tmp_path)))
    assert (state / DB_SNAPSHOT).exists()
    confirmed = _installer(root, state, FakeVenvs(), now, prefix=new)
    assert confirmed.awaiting_confirmation() is True
    assert restore_after_rollback(state, lambda: new) is False  # not rolled back
    assert confirmed.outcome_after_restart() is True
    assert confirmed.awaiting_confirmation() is False
    confirmed.forget()  # Installed reached the CS
    assert not (state / DB_SNAPSHOT).exists()


def test_no_switch_while_a_transaction_runs(tmp_path: Path) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    state.mkdir()
    restarts = Restarts()
    installer = _installer(
        root, state, FakeVenvs(), [T.timestamp()], prefix=root / "venvs/1.0.0", restart=restarts
    )

    async def still_busy() -> bool:
        return False

    with pytest.raises(Exception, match="transaction is still running"):
        asyncio.run(installer.install(tiny_wheel(tmp_path), still_busy))
    assert (root / "current").resolve() == (root / "venvs/1.0.0").resolve()
    assert restarts.count == 0
    assert not (state / "firmware-pending.json").exists()  # the watcher ends: nothing to do


def test_an_old_version_meeting_a_newer_schema_exits_2_in_one_line(tmp_path: Path) -> None:
    """No snapshot to go back to (a downgrade by hand): no traceback into a restart loop,
    one line and the status the unit does not restart on."""
    config = _config(tmp_path, "ws://127.0.0.1:9/ocpp")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = sqlite3.connect(state / "evsed.db")
    db.executescript(f"CREATE TABLE new_feature (x); PRAGMA user_version={SCHEMA_VERSION + 1};")
    db.close()
    done = subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("evsed:")]
    assert len(ours) == 1 and "newer than this evsed" in ours[0], done.stderr
    assert "Traceback" not in done.stderr
    unit = (SYSTEMD / "evsed.service").read_text()
    assert re.search(r"^RestartPreventExitStatus=.*\b2\b", unit, re.M)
