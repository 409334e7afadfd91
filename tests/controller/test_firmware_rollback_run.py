"""A rollback across real `evsed run` processes leaves a charger that starts and charges
(safety review of issue 12). The new version's evsed has a migration of its own (a dummy
one, given by a .pth in the wheel): it migrates evsed.db when it starts, its boot is never
accepted (the Central System rejects it), it starts nothing meanwhile though an EV is
plugged in with free vend, and the watcher rolls it back. The old version, started again,
finds the database as it left it at the switch, reports InstallationFailed and charges.

As in test_firmware_run, the deadline is moved into the past in the marker instead of
waited for."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.installer import (
    DB_SNAPSHOT,
    EXIT_ROLLED_BACK,
    MARKER,
    _locked,
    _write_marker,
    read_marker,
)
from evsed.controller.store.schema import SCHEMA_VERSION
from evsed.hwmocks.central_system import CentralSystem
from tests.support.evsed_process import (
    CP_ID,
    ENV,
    FREE_TAG,
    REPO,
    Evsed,
    _config,
    _cp_calls,
    until_charging,
)
from tests.support.file_servers import http_server
from tests.support.firmware_layout import WHEEL_NAME, spawn_watcher, tiny_wheel, venv_root

FW = "FirmwareStatusNotification"

#: Run at the new venv's start (after the .pth that makes evsed importable there): its
#: evsed knows one migration more than ours.
MIGRATION_MODULE = """
from evsed.controller.store import database, schema

DUMMY = "CREATE TABLE new_feature (x INTEGER); ALTER TABLE tx_queue ADD COLUMN prio INTEGER;"
database.MIGRATIONS = schema.MIGRATIONS = (*schema.MIGRATIONS, DUMMY)
database.SCHEMA_VERSION = schema.SCHEMA_VERSION = len(schema.MIGRATIONS)
"""
EXTRA = {
    "evsedtiny_migration.py": MIGRATION_MODULE,
    # .pth files run in name order: after evsedtiny_evsed.pth.
    "evsedtiny_zmigration.pth": "import evsedtiny_migration\n",
}


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as central:
        yield central


def _wait(pred: object, what: str, timeout_s: float) -> None:
    """Bounded look (in a worker thread) for what another process does."""
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class NewVersion(Evsed):
    """`evsed run` as the unit starts it after the switch: by the `current` venv's python."""

    def __init__(self, python: Path, config: Path, log: Path) -> None:
        super().__init__(config, log)
        self.python = python

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *(str(self.python), "-m", "evsed.controller.cli", "run", "-c", str(self.config)),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=ENV,
                cwd=REPO,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, f"the new version exited:\n{self.log.read_text()}"
                if line.startswith("bench control port "):
                    self.control_port = int(line.split()[-1])
                    return


def _user_version(state: Path) -> int:
    con = sqlite3.connect(state / "evsed.db")
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


@pytest.mark.timeout(240)
async def test_a_rolled_back_migration_leaves_a_charger_that_charges(
    cs: CentralSystem, tmp_path: Path
) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    config = _config(tmp_path, cs.url)
    with config.open("a") as f:
        f.write(f'[firmware]\ninstall_root = "{root}"\nconfirm_timeout_s = 60\n')
    old = Evsed(config, tmp_path / "old.log")
    new: NewVersion | None = None
    again: Evsed | None = None
    watcher: subprocess.Popen[str] | None = None
    try:
        with http_server() as srv:
            wheel = tiny_wheel(tmp_path, with_evsed=True, extra=EXTRA)
            srv.files[f"/{WHEEL_NAME}"] = wheel.read_bytes()
            await old.start()
            await cs.wait_for_call("BootNotification", CP_ID, timeout=20)
            mark = cs.mark()
            await cs.call(
                CP_ID,
                call.UpdateFirmware(location=srv.url(f"/{WHEEL_NAME}"), retrieve_date=cs.now_iso()),
            )
            await asyncio.to_thread(_wait, (state / MARKER).exists, "no marker", 60)
            watcher = spawn_watcher(root, state)  # evsed-rollback.path saw the marker
            assert old.proc is not None
            assert await asyncio.wait_for(old.proc.wait(), 90) == 0, old.log.read_text()
        assert os.readlink(root / "current") == "venvs/9.9.9"
        assert (state / DB_SNAPSHOT).exists()

        # The new version: migrates at start, its boot never accepted, an EV plugged in.
        cs.boot_status = "Rejected"
        boots = len(_cp_calls(cs, "BootNotification"))
        new = NewVersion(root / "current/bin/python", config, tmp_path / "new.log")
        await new.start()
        assert _user_version(state) == SCHEMA_VERSION + 1
        await new.bench("plug", connector=1)
        refused = "no transaction: unavailable (firmware not yet confirmed)"
        await asyncio.to_thread(
            _wait, lambda: refused in new.log.read_text(), "free vend not refused", 20
        )
        await asyncio.to_thread(
            _wait, lambda: len(_cp_calls(cs, "BootNotification")) > boots, "no boot", 20
        )
        status = await new.bench("status", connector=1)
        assert status["relay"]["energized"] is False  # type: ignore[index]
        await new.close()  # crashed, or stopped by the restart: the same to the watcher
        assert _cp_calls(cs, "StartTransaction", since=mark) == []

        # The deadline: the watcher rolls back, ExecStopPost restarts evsed (the old one).
        with _locked(state):
            pending = read_marker(state)
            assert pending is not None and pending.armed and not pending.confirmed
            _write_marker(state, replace(pending, deadline=time.time() - 1))
        out, _ = await asyncio.to_thread(watcher.communicate, timeout=30)
        assert watcher.returncode == EXIT_ROLLED_BACK, out
        assert os.readlink(root / "current") == "venvs/1.0.0"

        cs.boot_status = "Accepted"
        again = Evsed(config, tmp_path / "again.log")
        await again.start()  # without the restore: "schema version 5 is newer", exit 2
        failed = await cs.wait_for(
            lambda f: f.is_call and f.action == FW and f.payload["status"] == "InstallationFailed",
            timeout=30,
            since=mark,
        )
        assert _user_version(state) == SCHEMA_VERSION
        await again.bench("plug", connector=1)
        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=20, since=failed.seq)
        await until_charging(cs, start.seq)
        log = again.log.read_text()
        assert "database restored as it was before the switch" in log
        assert "Traceback" not in log
    finally:
        for proc in (old, new, again):
            if proc is not None:
                await proc.close()
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
