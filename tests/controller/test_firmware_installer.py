"""The venv installer in a temporary root: a real `python -m venv` and pip for the install
that succeeds, fake `systemctl` / `systemd-run` scripts on PATH for the service manager,
and the rollback of a version that never confirmed, end to end with the Central System."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import zipfile
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.installer import MARKER, VenvInstaller, main, run_command
from evsed.controller.firmware.update import InstallFailed
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.file_servers import http_server
from tests.support.ocpp_stack import CARD, CP_ID, ocpp_rig
from tests.support.status_frames import statuses, wait_status

WHEEL_NAME = "evsedtiny-9.9.9-py3-none-any.whl"
KEYS = {"AuthorizeRemoteTxRequests": "false"}
FW = "FirmwareStatusNotification"


def tiny_wheel(where: Path) -> Path:
    """A pure wheel without dependencies: pip installs it offline."""
    path = where / WHEEL_NAME
    info = "evsedtiny-9.9.9.dist-info"
    files = {
        "evsedtiny/__init__.py": "VERSION = '9.9.9'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: evsedtiny\nVersion: 9.9.9\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def service_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`systemctl` and `systemd-run` that only write their arguments to a log."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "systemd.log"
    for name in ("systemctl", "systemd-run"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "opt-evsed"
    (root / "venvs" / "1.0.0" / "bin").mkdir(parents=True)
    (root / "current").symlink_to("venvs/1.0.0")
    return root


class FakeVenvs:
    """Stands in for `python -m venv` and pip (6 s per venv here: measured), and runs every
    other command for real (the fake systemctl / systemd-run on PATH)."""

    def __init__(self, pip_fails: bool = False) -> None:
        self.pip_fails = pip_fails
        self.commands: list[list[str]] = []

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        if list(argv[1:3]) == ["-m", "venv"]:
            (Path(argv[3]) / "bin").mkdir(parents=True)
            return 0, ""
        if list(argv[1:4]) == ["-m", "pip", "install"]:
            return (1, "ERROR: no matching distribution") if self.pip_fails else (0, "")
        return await run_command(argv)


def _installer(
    root: Path, state: Path, run: object, now: list[float], prefix: Path
) -> VenvInstaller:
    return VenvInstaller(
        root=root,
        state_dir=state,
        run=run,  # type: ignore[arg-type]
        confirm_timeout_s=600,
        running_prefix=lambda: prefix,
        wall_time=lambda: now[0],
    )


def test_real_venv_install_switches_atomically_and_restarts(
    tmp_path: Path, service_manager: Path
) -> None:
    root, state = _root(tmp_path), tmp_path / "state"
    state.mkdir()
    now = [1000.0]
    new = root / "venvs" / "9.9.9"
    installer = _installer(root, state, run_command, now, prefix=new)
    assert asyncio.run(installer.install(tiny_wheel(tmp_path))) is False  # a restart comes
    assert os.readlink(root / "current") == "venvs/9.9.9"
    assert (root / "venvs" / "1.0.0").is_dir()  # the previous one is kept
    out = subprocess.run(
        [
            str(root / "current" / "bin" / "python"),
            "-c",
            "import evsedtiny; print(evsedtiny.VERSION)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "9.9.9"
    calls = service_manager.read_text().splitlines()
    assert calls[0].startswith("systemd-run --unit=evsed-firmware-rollback --on-active=600 ")
    assert (
        f"{root}/venvs/1.0.0/bin/python -m evsed.controller.firmware.installer rollback" in calls[0]
    )
    assert calls[1] == "systemctl --no-block restart evsed"
    # The new version started and booted: confirmed; the deadline then changes nothing.
    assert installer.outcome_after_restart() is True
    now[0] += 601
    assert installer.rollback_if_due() is False
    assert os.readlink(root / "current") == "venvs/9.9.9"


def test_unconfirmed_version_is_rolled_back_at_its_deadline(
    tmp_path: Path, service_manager: Path
) -> None:
    root, state = _root(tmp_path), tmp_path / "state"
    state.mkdir()
    now = [1000.0]
    old = root / "venvs" / "1.0.0"
    installer = _installer(root, state, FakeVenvs(), now, prefix=old)
    asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert os.readlink(root / "current") == "venvs/9.9.9"
    now[0] += 599
    assert installer.rollback_if_due() is False  # not yet
    now[0] += 2
    # What the timer runs, from the old venv: `... installer rollback` (the fake systemctl
    # records the restart).
    service_manager.write_text("")
    assert installer.rollback_if_due(subprocess_run) is True
    assert (root / "current").resolve() == old.resolve()
    assert service_manager.read_text().splitlines() == ["systemctl --no-block restart evsed"]
    assert installer.outcome_after_restart() is False  # the old one runs: InstallationFailed
    assert (root / "venvs" / "9.9.9").is_dir()  # kept for a look


def subprocess_run(argv: Sequence[str]) -> tuple[int, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return done.returncode, done.stdout


def test_the_timer_command_rolls_back_when_due(tmp_path: Path, service_manager: Path) -> None:
    root, state = _root(tmp_path), tmp_path / "state"
    state.mkdir()
    (root / "venvs" / "9.9.9" / "bin").mkdir(parents=True)
    os.replace(_relink(root, "venvs/9.9.9"), root / "current")
    pending = {
        "version": "9.9.9",
        "venv": str(root / "venvs" / "9.9.9"),
        "previous": str(root / "venvs" / "1.0.0"),
        "deadline": 0,
    }
    (state / MARKER).write_text(json.dumps(pending))
    assert main(["rollback", "--root", str(root), "--state-dir", str(state)]) == 0
    assert os.readlink(root / "current") == "venvs/1.0.0"
    assert "systemctl --no-block restart evsed" in service_manager.read_text()


def _relink(root: Path, target: str) -> Path:
    tmp = root / ".tmp-link"
    tmp.symlink_to(target)
    return tmp


def test_pip_failure_leaves_the_running_version_alone(
    tmp_path: Path, service_manager: Path
) -> None:
    root, state = _root(tmp_path), tmp_path / "state"
    state.mkdir()
    installer = _installer(root, state, FakeVenvs(pip_fails=True), [0.0], prefix=root)
    with pytest.raises(InstallFailed, match="pip install"):
        asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert os.readlink(root / "current") == "venvs/1.0.0"
    assert not (root / "venvs" / "9.9.9").exists()
    assert not (state / MARKER).exists()
    assert not service_manager.exists()  # nothing restarted


async def test_not_a_versioned_install_fails_cleanly(tmp_path: Path) -> None:
    installer = VenvInstaller(root=tmp_path / "nothing", state_dir=tmp_path)
    with pytest.raises(InstallFailed, match="not a symlink"):
        await installer.install(tiny_wheel(tmp_path))


# ---------------------------------------------------------------- with the Central System


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


@pytest.mark.parametrize("boots", [True, False])
async def test_update_across_the_restart(
    cs: CentralSystem, tmp_path: Path, service_manager: Path, boots: bool
) -> None:
    """Installing, the restart, then: the new version confirms (Installed), or it never
    booted, the timer rolled back and the old version reports InstallationFailed."""
    root, state = _root(tmp_path), tmp_path / "state"
    now = [datetime(2026, 1, 1).timestamp()]
    clock = FakeClock()
    old, new = root / "venvs" / "1.0.0", root / "venvs" / "9.9.9"
    before = _installer(root, state, FakeVenvs(), now, prefix=old)
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
            restart = "systemctl --no-block restart evsed"
            await rig.until(lambda: restart in _read(service_manager), within_s=30)
    await cs.wait_disconnected(CP_ID)
    if not boots:  # the new version never came up: the timer fires after the deadline
        now[0] += 601
        assert before.rollback_if_due(subprocess_run) is True
    after = _installer(root, state, FakeVenvs(), now, prefix=new if boots else old)
    async with ocpp_rig(
        cs, state, keys=KEYS, clock=clock, app_options={"firmware_installer": after}
    ) as rig:
        final = "Installed" if boots else "InstallationFailed"
        await rig.run(2)  # the updater looks for the accepted boot once a second
        await wait_status(cs, FW, final, mark)
        await rig.until(lambda: rig.ocpp.store.firmware_state() is None, within_s=2)
    assert statuses(cs, FW, mark) == ["Downloading", "Downloaded", "Installing", final]
    assert (root / "current").resolve() == (new if boots else old).resolve(), _read(service_manager)
    assert not (state / MARKER).exists()  # reported: forgotten


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_no_switch_without_the_way_back(
    tmp_path: Path, service_manager: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd-run refused (a service user without the right): nothing is switched."""
    root, state = _root(tmp_path), tmp_path / "state"
    state.mkdir()
    refuse = tmp_path / "fakebin" / "systemd-run"
    refuse.write_text(
        "#!/bin/sh\necho 'Failed to start transient timer unit: Access denied'\nexit 1\n"
    )
    installer = _installer(root, state, FakeVenvs(), [0.0], prefix=root)
    with pytest.raises(InstallFailed, match=r"rollback timer.*Access denied"):
        asyncio.run(installer.install(tiny_wheel(tmp_path)))
    assert os.readlink(root / "current") == "venvs/1.0.0"
    assert not (state / MARKER).exists()
    assert not service_manager.exists()  # no restart
