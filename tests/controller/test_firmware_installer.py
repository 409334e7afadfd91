"""The venv installer in a temporary root: a real `python -m venv` and pip for the install
that succeeds, the rollback watcher run as the unit runs it (the previous venv's python,
in its own process), the wall clock and the waits injected for the deadline, and the
rollback of a version that never confirmed, end to end with the Central System."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller import install
from evsed.controller.firmware.installer import (
    EXIT_ROLLED_BACK,
    MARKER,
    Layout,
    VenvInstaller,
    read_marker,
    run_command,
)
from evsed.controller.firmware.update import InstallFailed
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.file_servers import http_server
from tests.support.firmware_layout import (
    SYSTEMD,
    WHEEL_NAME,
    FakeVenvs,
    PathUnit,
    Restarts,
    spawn_watcher,
    tiny_wheel,
)
from tests.support.firmware_layout import layout_installer as _installer
from tests.support.firmware_layout import venv_root as _root
from tests.support.ocpp_stack import CARD, CP_ID, ocpp_rig
from tests.support.status_frames import statuses, wait_status

KEYS = {"AuthorizeRemoteTxRequests": "false"}
FW = "FirmwareStatusNotification"


def _state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return state


def _clock_sleep(now: list[float], slept: list[float]):
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return sleep


def test_real_venv_install_switches_atomically_and_restarts(tmp_path: Path) -> None:
    root, state = _root(tmp_path), _state(tmp_path)
    now = [time.time()]  # the watcher in its own process reads the real clock
    new = root / "venvs" / "9.9.9"
    path_unit, restarts = PathUnit(root, state, spawn=True), Restarts()
    installer = _installer(
        root, state, run_command, now, prefix=new, path_unit=path_unit, restart=restarts
    )
    try:
        assert asyncio.run(installer.install(tiny_wheel(tmp_path))) is False  # a restart comes
        assert os.readlink(root / "current") == "venvs/9.9.9"
        assert os.readlink(root / "previous") == "venvs/1.0.0"  # the way back, kept
        assert restarts.count == 1
        out = subprocess.run(
            [str(root / "current/bin/python"), "-c", "import evsedtiny; print(evsedtiny.VERSION)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "9.9.9"
        marker = read_marker(state)
        assert marker is not None and marker.armed and marker.deadline == now[0] + 600
        # The watcher (its own process, the old venv's python) waits for the confirmation.
        assert path_unit.watcher is not None and path_unit.watcher.poll() is None
        # The new version started and booted: confirmed; the deadline then changes nothing.
        assert installer.outcome_after_restart() is True
        now[0] += 601
        assert installer.rollback_if_due() is False
        installer.forget()  # Installed reached the Central System
        assert path_unit.watcher.wait(timeout=30) == 0, path_unit.watcher.stdout
        assert os.readlink(root / "current") == "venvs/9.9.9"
    finally:
        if path_unit.watcher is not None and path_unit.watcher.poll() is None:
            path_unit.watcher.kill()
            path_unit.watcher.wait()


def test_unconfirmed_version_is_rolled_back_at_its_deadline(tmp_path: Path) -> None:
    root, state = _root(tmp_path), _state(tmp_path)
    now = [1000.0]
    old = root / "venvs" / "1.0.0"
    installer = _installer(root, state, FakeVenvs(), now, prefix=old)
    asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert os.readlink(root / "current") == "venvs/9.9.9"
    slept: list[float] = []
    assert installer.watch(sleep=_clock_sleep(now, slept), poll_s=5) == EXIT_ROLLED_BACK
    assert now[0] == 1600.0 and max(slept) == 5  # it looked every 5 s, up to the deadline
    assert (root / "current").resolve() == old.resolve()
    assert installer.outcome_after_restart() is False  # the old one runs: InstallationFailed
    assert (root / "venvs" / "9.9.9").is_dir()  # kept for a look


def test_a_reboot_inside_the_window_keeps_the_rollback(tmp_path: Path) -> None:
    """The watcher dies with the machine 300 s into the window; after the boot a new one
    (the path unit starts it: the marker is there) reads the stored deadline and rolls back
    300 s later. (A transient timer would have been lost.)"""
    root, state = _root(tmp_path), _state(tmp_path)
    now = [1000.0]
    before = _installer(root, state, FakeVenvs(), now, prefix=root / "venvs/1.0.0")
    asyncio.run(before.install(tiny_wheel(tmp_path)))

    class PowerCut(BaseException):
        pass

    def sleep_until_the_power_cut(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1300:
            raise PowerCut

    with pytest.raises(PowerCut):
        before.watch(sleep=sleep_until_the_power_cut)
    assert os.readlink(root / "current") == "venvs/9.9.9"
    # After the boot: nothing of the old process survives, only the files.
    after_boot = VenvInstaller(root=root, state_dir=state, wall_time=lambda: now[0])
    slept: list[float] = []
    assert after_boot.watch(sleep=_clock_sleep(now, slept)) == EXIT_ROLLED_BACK
    assert sum(slept) == 300 and now[0] == 1600
    assert os.readlink(root / "current") == "venvs/1.0.0"


def test_the_units_watcher_rolls_back_a_version_that_crashes_at_import(tmp_path: Path) -> None:
    """The new venv's evsed dies at import; the watcher never runs its code: it is the
    command of evsed-rollback.service, run from `previous` in its own process, here after
    a reboot past the deadline."""
    root, state = _root(tmp_path), _state(tmp_path)
    new = root / "venvs" / "9.9.9" / "bin"
    new.mkdir(parents=True)
    (new / "python").write_text("#!/bin/sh\necho 'ImportError: broken' >&2\nexit 1\n")
    (new / "python").chmod(0o755)
    (new / "evsed").write_text(f"#!{new / 'python'}\n")
    (new / "evsed").chmod(0o755)
    Layout(root).switch("current", root / "venvs" / "9.9.9")
    pending = {
        "version": "9.9.9",
        "venv": str(root / "venvs" / "9.9.9"),
        "previous": str(root / "venvs" / "1.0.0"),
        "deadline": 0,  # long past: the machine was off
        "armed": True,
    }
    (state / MARKER).write_text(json.dumps(pending))
    crashed = subprocess.run([str(root / "current" / "bin" / "evsed")], capture_output=True)
    assert crashed.returncode == 1  # what systemd would restart every 2 s
    watcher = spawn_watcher(root, state)
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == EXIT_ROLLED_BACK, out
    assert os.readlink(root / "current") == "venvs/1.0.0"
    marker = read_marker(state)
    assert marker is not None and marker.rolled_back


# (the watcher's exit status, what `systemctl is-active evsed` says, the main process's exit
# status systemd keeps, whether evsed is restarted)
AFTER_ROLLBACK = [
    ("3", "active", "0", True),  # the new version runs, never confirmed (hung before boot)
    ("3", "reloading", "0", True),
    ("3", "activating", "1", True),  # auto-restart: it crashes in a loop
    ("3", "failed", "2", True),  # it exited 2 (RestartPreventExitStatus=2)
    ("3", "inactive", "0", False),  # `systemctl stop evsed` meanwhile
    ("3", "deactivating", "0", False),  # being stopped right now
    ("3", "failed", "0", False),  # an operator's stop that failed (a stop timeout)
    ("0", "active", "0", False),  # no rollback: nothing to do
    ("1", "failed", "2", False),
]


@pytest.mark.parametrize(("status", "state", "main", "restarted"), AFTER_ROLLBACK)
def test_the_rollback_units_restart_step_restarts_only_what_an_operator_did_not_stop(
    tmp_path: Path, status: str, state: str, main: str, restarted: bool
) -> None:
    """ExecStopPost of evsed-rollback.service as systemd runs it (the exit status in
    $EXIT_STATUS), the script as `evsed install` copies it, with a `systemctl` that answers
    is-active/show as given and records the rest. Before, a rollback restarted evsed
    whatever its state: an operator's `systemctl stop evsed` was undone (the inactive,
    deactivating and failed-with-0 rows fail without the state check)."""
    text = (SYSTEMD / "evsed-rollback.service").read_text()
    line = re.search(r"^ExecStopPost=\+(.*)$", text, re.M)
    assert line, "the restart step must be the privileged ('+') ExecStopPost"
    assert line[1] == f"/{install.AFTER_ROLLBACK}"  # root's copy, outside /opt/evsed
    script = SYSTEMD / "evsed-after-rollback.sh"
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "systemctl.log"
    (fake / "systemctl").write_text(
        "#!/bin/sh\n"
        f'case "$1" in is-active) echo {state}; exit 3;; show) echo {main}; exit 0;; esac\n'
        f'echo "$*" >> "{log}"\n'
    )
    (fake / "systemctl").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "EXIT_STATUS": status, "EXIT_CODE": "exited"}
    ran = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == (["--no-block restart evsed.service"] if restarted else [])
    if status == "3" and not restarted:
        assert f"evsed.service is {state}" in ran.stdout and "not restarted" in ran.stdout


def test_a_confirmed_version_is_never_rolled_back_and_a_rolled_back_one_never_confirms(
    tmp_path: Path,
) -> None:
    root, state = _root(tmp_path), _state(tmp_path)
    now = [1000.0]
    new = root / "venvs" / "9.9.9"
    installer = _installer(root, state, FakeVenvs(), now, prefix=new)
    asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert installer.outcome_after_restart() is True
    now[0] += 10_000
    assert installer.rollback_if_due() is False
    # The watcher stays while the marker does (else the path unit would start it again at
    # once), and ends when the outcome was reported.
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            installer.forget()

    assert installer.watch(sleep=sleep, poll_s=5) == 0
    assert looks == [5, 5, 5]
    assert os.readlink(root / "current") == "venvs/9.9.9"


def test_a_rolled_back_version_never_confirms(tmp_path: Path) -> None:
    """The new version, still running until the restart, asks after the rollback."""
    root, state = _root(tmp_path), _state(tmp_path)
    now = [1000.0]
    installer = _installer(root, state, FakeVenvs(), now, prefix=root / "venvs/9.9.9")
    asyncio.run(installer.install(tiny_wheel(tmp_path)))
    now[0] += 601
    assert installer.rollback_if_due() is True
    assert installer.outcome_after_restart() is False
    assert os.readlink(root / "current") == "venvs/1.0.0"


def test_a_later_installation_is_armed_by_the_watcher_already_running(tmp_path: Path) -> None:
    """The watcher of a confirmed update waits for its marker to go; a new UpdateFirmware
    writes a new marker meanwhile: the same watcher acknowledges it, and keeps its deadline."""
    root, state = _root(tmp_path), _state(tmp_path)
    now = [1000.0]
    first = _installer(root, state, FakeVenvs(), now, prefix=root / "venvs/9.9.9")
    asyncio.run(first.install(tiny_wheel(tmp_path)))
    assert first.outcome_after_restart() is True
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        now[0] += seconds
        if len(looks) == 1:  # the next update's marker, while this watcher still runs
            pending = {**json.loads((state / MARKER).read_text())}
            pending.update(version="10.0.0", confirmed=False, armed=False, deadline=now[0] + 600)
            (state / MARKER).write_text(json.dumps(pending))

    assert first.watch(sleep=sleep, poll_s=5) == EXIT_ROLLED_BACK
    marker = read_marker(state)
    assert marker is not None and marker.version == "10.0.0" and marker.armed
    assert now[0] == 1605.0  # the second marker's deadline, not the first's


def test_an_unreadable_marker_keeps_the_watcher_waiting(tmp_path: Path) -> None:
    """Exiting would have the path unit start it again at once, in a loop."""
    root, state = _root(tmp_path), _state(tmp_path)
    (state / MARKER).write_text("{not json")
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            (state / MARKER).unlink()

    assert VenvInstaller(root=root, state_dir=state).watch(sleep=sleep, poll_s=5) == 0
    assert looks == [5, 5, 5]
    assert os.readlink(root / "current") == "venvs/1.0.0"


async def test_a_stuck_command_is_killed_at_its_timeout() -> None:
    status, out = await run_command(
        [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5
    )
    assert status == 124 and "killed" in out


def test_a_new_venv_is_readable_by_all_despite_the_services_umask(tmp_path: Path) -> None:
    """UMask=0077 in the unit: without this, `evsed status` from /opt/evsed/current stops
    working for the evsed group after the first update."""
    root, state = _root(tmp_path), _state(tmp_path)

    class PrivateFiles(FakeVenvs):
        async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
            status, out = await super().__call__(argv)
            if list(argv[1:3]) == ["-m", "pip"]:
                script = Path(argv[0]).parent / "evsed"
                script.write_text("#!/bin/sh\n")
                script.chmod(0o700)
                (Path(argv[0]).parent.parent / "lib").mkdir(mode=0o700)
                (Path(argv[0]).parent.parent / "lib" / "mod.py").write_text("")
                (Path(argv[0]).parent.parent / "lib" / "mod.py").chmod(0o600)
            return status, out

    old_umask = os.umask(0o077)
    try:
        installer = _installer(root, state, PrivateFiles(), [0.0], prefix=root)
        asyncio.run(installer.install(tiny_wheel(tmp_path)))
    finally:
        os.umask(old_umask)
    new = root / "venvs" / "9.9.9"
    modes = {
        p.relative_to(new).as_posix(): p.stat().st_mode & 0o777 for p in (new, *new.rglob("*"))
    }
    assert modes == {
        ".": 0o755,
        "bin": 0o755,
        "bin/evsed": 0o755,
        "lib": 0o755,
        "lib/mod.py": 0o644,
    }


def test_the_new_version_gets_the_pi_extra_as_the_first_one_did(tmp_path: Path) -> None:
    """`evsed install` installs `<package>[pi]` (lgpio, the Pi's GPIO backend); an update
    installed the bare package, so on a Pi the new version had no GPIO backend."""
    root, state = _root(tmp_path), _state(tmp_path)
    venvs = FakeVenvs()
    package = tiny_wheel(tmp_path)
    installer = _installer(root, state, venvs, [0.0], prefix=root / "venvs" / "1.0.0")
    asyncio.run(installer.install(package))
    pip = next(c for c in venvs.commands if c[1:4] == ["-m", "pip", "install"])
    assert pip[-1] == f"{package}[pi]"


def test_an_update_leaves_no_pip_cache_in_the_state_directory(tmp_path: Path) -> None:
    """The service runs with HOME=/var/lib/evsed (its state directory, on the SD card):
    pip's default cache there grew with each update and only wore the card."""
    root, state = _root(tmp_path), _state(tmp_path)
    venvs = FakeVenvs()
    installer = _installer(root, state, venvs, [0.0], prefix=root / "venvs" / "1.0.0")
    asyncio.run(installer.install(tiny_wheel(tmp_path)))
    pip = next(c for c in venvs.commands if c[1:4] == ["-m", "pip", "install"])
    assert "--no-cache-dir" in pip


def test_pip_failure_leaves_the_running_version_alone(tmp_path: Path) -> None:
    root, state = _root(tmp_path), _state(tmp_path)
    restarts = Restarts()
    installer = _installer(
        root, state, FakeVenvs(pip_fails=True), [0.0], prefix=root, restart=restarts
    )
    with pytest.raises(InstallFailed, match="pip install"):
        asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert os.readlink(root / "current") == "venvs/1.0.0"
    assert not (root / "venvs" / "9.9.9").exists()
    assert not (state / MARKER).exists()
    assert restarts.count == 0


def test_no_switch_without_the_way_back(tmp_path: Path) -> None:
    """No watcher answers (the rollback units missing): nothing is switched or restarted."""
    root, state = _root(tmp_path), _state(tmp_path)
    restarts, unit = Restarts(), PathUnit(root, state, works=False)
    installer = _installer(
        root, state, FakeVenvs(), [0.0], prefix=root, path_unit=unit, restart=restarts
    )
    with pytest.raises(InstallFailed, match=r"rollback watcher .* nothing switched"):
        asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert unit.waits == 150  # 30 s in 0.2 s looks
    assert os.readlink(root / "current") == "venvs/1.0.0"
    assert not (state / MARKER).exists()
    assert restarts.count == 0


async def test_not_a_versioned_install_fails_cleanly(tmp_path: Path) -> None:
    old = tmp_path / "venv" / "bin"
    old.mkdir(parents=True)
    installer = VenvInstaller(root=tmp_path, state_dir=tmp_path)
    with pytest.raises(InstallFailed, match=r"not a symlink into .*venvs.*evsed install"):
        await installer.install(tiny_wheel(tmp_path))


def test_a_version_name_cannot_climb_out_of_venvs(tmp_path: Path) -> None:
    root, state = _root(tmp_path), _state(tmp_path)
    installer = _installer(root, state, FakeVenvs(), [0.0], prefix=root)
    with pytest.raises(InstallFailed, match="not a wheel"):
        asyncio.run(installer.install(tmp_path / "evsed-..-py3-none-any.whl"))


# ---------------------------------------------------------------- with the Central System


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


@pytest.mark.parametrize("boots", [True, False])
async def test_update_across_the_restart(cs: CentralSystem, tmp_path: Path, boots: bool) -> None:
    """Installing, the restart, then: the new version confirms (Installed), or it never
    booted, the watcher rolled back and the old version reports InstallationFailed."""
    root, state = _root(tmp_path), tmp_path / "state"
    now = [datetime(2026, 1, 1).timestamp()]
    clock = FakeClock()
    old, new = root / "venvs" / "1.0.0", root / "venvs" / "9.9.9"
    restarts = Restarts()
    before = _installer(root, state, FakeVenvs(), now, prefix=old, restart=restarts)
    with http_server() as srv:
        srv.files[f"/{WHEEL_NAME}"] = tiny_wheel(tmp_path).read_bytes()
        options = {"firmware_installer": before}
        async with ocpp_rig(cs, state, keys=KEYS, clock=clock, app_options=options) as rig:
            mark = cs.mark()
            await rig.command(
                call.UpdateFirmware(
                    location=srv.url(f"/{WHEEL_NAME}"), retrieve_date=clock.now().isoformat()
                )
            )
            await wait_status(cs, FW, "Installing", mark)
            await rig.until(lambda: restarts.count == 1, within_s=30)
    await cs.wait_disconnected(CP_ID)
    if not boots:  # the new version never came up: the watcher rolls back at the deadline
        watcher = VenvInstaller(root=root, state_dir=state, wall_time=lambda: now[0])
        assert watcher.watch(sleep=_clock_sleep(now, [])) == EXIT_ROLLED_BACK
    after = _installer(root, state, FakeVenvs(), now, prefix=new if boots else old)
    async with ocpp_rig(
        cs, state, keys=KEYS, clock=clock, app_options={"firmware_installer": after}
    ) as rig:
        final = "Installed" if boots else "InstallationFailed"
        await rig.run(2)  # the updater looks for the accepted boot once a second
        await wait_status(cs, FW, final, mark)
        await rig.until(lambda: rig.ocpp.store.firmware_state() is None, within_s=2)
    assert statuses(cs, FW, mark) == ["Downloading", "Downloaded", "Installing", final]
    assert (root / "current").resolve() == (new if boots else old).resolve()
    assert not (state / MARKER).exists()  # reported: forgotten
