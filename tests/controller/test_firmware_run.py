"""A firmware update across real processes, as systemd would run them: `evsed run` installs
the package (real venv, real pip), waits for the rollback watcher (the unit's own command
line, from the previous venv), switches `current` and ends itself with status 0 (so that
Restart=always starts the new version). Then either the new version, started by the new
venv's python, boots and reports Installed (the watcher ends with nothing to do); or it
cannot even import evsed, the watcher rolls back at the deadline, and the old version,
started again, reports InstallationFailed to the Central System.

The one shortcut: the deadline (at least 60 s by configuration) is moved into the past in
the marker instead of waited for; what the watcher does then is what it does at the
deadline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.installer import (
    EXIT_ROLLED_BACK,
    MARKER,
    _locked,
    _write_marker,
    read_marker,
)
from evsed.hwmocks.central_system import CentralSystem
from tests.support.evsed_process import CP_ID, ENV, FREE_TAG, REPO, Evsed, _config, _cp_calls
from tests.support.file_servers import http_server
from tests.support.firmware_layout import WHEEL_NAME, spawn_watcher, tiny_wheel, venv_root

FW = "FirmwareStatusNotification"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as central:
        yield central


def _wait_path(path: Path, *, exists: bool, timeout_s: float) -> None:
    """What inotify tells systemd, by looking (in a worker thread: the loop goes on)."""
    deadline = time.monotonic() + timeout_s
    while path.exists() != exists:
        assert time.monotonic() < deadline, f"{path} exists={not exists} after {timeout_s} s"
        time.sleep(0.05)


async def _path_unit(state: Path, root: Path) -> subprocess.Popen[str]:
    """evsed-rollback.path: the marker appears, the watcher starts."""
    await asyncio.to_thread(_wait_path, state / MARKER, exists=True, timeout_s=60)
    return spawn_watcher(root, state)


def _statuses(cs: CentralSystem, since: int) -> list[str]:
    return [f.payload["status"] for f in _cp_calls(cs, FW, since)]


class NewVersion(Evsed):
    """`evsed run` started as the unit starts it: by the `current` venv's python."""

    def __init__(self, python: Path, config: Path, log: Path) -> None:
        super().__init__(config, log)
        self.python = python

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.python),
                "-m",
                "evsed.controller.cli",
                "run",
                "--config",
                str(self.config),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=ENV,
                cwd=REPO,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while not (await self.proc.stdout.readline()).startswith(b"bench control port "):
                assert self.proc.returncode is None, self.log.read_text()


def _with_firmware(tmp_path: Path, cs: CentralSystem, root: Path) -> Path:
    config = _config(tmp_path, cs.url)
    with config.open("a") as f:
        f.write(f'[firmware]\ninstall_root = "{root}"\nconfirm_timeout_s = 60\n')
    return config


@pytest.mark.timeout(180)
async def test_an_update_that_starts_and_boots_is_confirmed(
    cs: CentralSystem, tmp_path: Path
) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    config = _with_firmware(tmp_path, cs, root)
    old = Evsed(config, tmp_path / "old.log")
    watcher: subprocess.Popen[str] | None = None
    try:
        with http_server() as srv:
            wheel = tiny_wheel(tmp_path, with_evsed=True)
            srv.files[f"/{WHEEL_NAME}"] = wheel.read_bytes()
            await old.start()
            await cs.wait_for_call("BootNotification", CP_ID, timeout=20)
            mark = cs.mark()
            await cs.call(
                CP_ID,
                call.UpdateFirmware(location=srv.url(f"/{WHEEL_NAME}"), retrieve_date=cs.now_iso()),
            )
            watcher = await _path_unit(state, root)
            assert old.proc is not None
            assert await asyncio.wait_for(old.proc.wait(), 90) == 0, old.log.read_text()
        assert os.readlink(root / "current") == "venvs/9.9.9"
        new = NewVersion(root / "current/bin/python", config, tmp_path / "new.log")
        try:
            await new.start()
            await cs.wait_for(
                lambda f: f.is_call and f.action == FW and f.payload["status"] == "Installed",
                timeout=30,
                since=mark,
            )
            await asyncio.to_thread(_wait_path, state / MARKER, exists=False, timeout_s=10)
            # The watcher saw the confirmation, then the marker go: nothing to roll back.
            await asyncio.to_thread(watcher.wait, 30)
            assert watcher.returncode == 0
        finally:
            await new.close()
        assert _statuses(cs, mark) == ["Downloading", "Downloaded", "Installing", "Installed"]
        assert os.readlink(root / "current") == "venvs/9.9.9"
    finally:
        await old.close()
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()


@pytest.mark.timeout(180)
async def test_an_update_that_cannot_start_is_rolled_back_and_reported(
    cs: CentralSystem, tmp_path: Path
) -> None:
    root, state = venv_root(tmp_path), tmp_path / "state"
    config = _with_firmware(tmp_path, cs, root)
    old = Evsed(config, tmp_path / "old.log")
    watcher: subprocess.Popen[str] | None = None
    try:
        with http_server() as srv:
            srv.files[f"/{WHEEL_NAME}"] = tiny_wheel(tmp_path).read_bytes()
            await old.start()
            await cs.wait_for_call("BootNotification", CP_ID, timeout=20)
            mark = cs.mark()
            await cs.call(
                CP_ID,
                call.UpdateFirmware(location=srv.url(f"/{WHEEL_NAME}"), retrieve_date=cs.now_iso()),
            )
            watcher = await _path_unit(state, root)
            assert old.proc is not None
            # Installed, switched, and ended the orderly way: Restart=always takes over.
            assert await asyncio.wait_for(old.proc.wait(), 90) == 0, old.log.read_text()
        assert os.readlink(root / "current") == "venvs/9.9.9"
        assert os.readlink(root / "previous") == "venvs/1.0.0"
        assert _statuses(cs, mark) == ["Downloading", "Downloaded", "Installing"]

        # systemd starts current/bin/...: this version cannot even import evsed.
        crashed = await asyncio.to_thread(
            subprocess.run,
            [str(root / "current/bin/python"), "-m", "evsed.controller.cli", "run"],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in ENV.items() if k != "PYTHONPATH"},
        )
        assert crashed.returncode == 1 and "No module named 'evsed'" in crashed.stderr
        assert watcher.poll() is None  # still waiting for the deadline

        with _locked(state):
            pending = read_marker(state)
            assert pending is not None and pending.armed and not pending.confirmed
            assert pending.deadline > time.time() + 30  # 60 s from the install
            _write_marker(state, replace(pending, deadline=time.time() - 1))
        out, _ = await asyncio.to_thread(watcher.communicate, timeout=30)
        assert watcher.returncode == EXIT_ROLLED_BACK, out  # ExecStopPost restarts evsed
        assert os.readlink(root / "current") == "venvs/1.0.0"

        # The old version again (what `systemctl restart evsed` starts now).
        again = Evsed(config, tmp_path / "again.log")
        try:
            await again.start()
            await cs.wait_for(
                lambda f: (
                    f.is_call and f.action == FW and f.payload["status"] == "InstallationFailed"
                ),
                timeout=30,
                since=mark,
            )
            # Reported: the marker is forgotten.
            await asyncio.to_thread(_wait_path, state / MARKER, exists=False, timeout_s=10)
        finally:
            await again.close()
        assert _statuses(cs, mark) == [
            "Downloading",
            "Downloaded",
            "Installing",
            "InstallationFailed",
        ]
        assert (root / "venvs/9.9.9").is_dir()  # kept for a look
    finally:
        await old.close()
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
