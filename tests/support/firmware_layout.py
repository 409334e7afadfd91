"""The venv layout of the firmware installer in a temporary root, a tiny wheel pip installs
offline, and the rollback watcher started as its unit starts it (shared by the installer's
tests and the update across real `evsed run` processes)."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from pathlib import Path

from evsed.controller.firmware.installer import MARKER, VenvInstaller

WHEEL_NAME = "evsedtiny-9.9.9-py3-none-any.whl"
SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def tiny_wheel(
    where: Path, *, with_evsed: bool = False, extra: dict[str, str] | None = None
) -> Path:
    """A pure wheel without dependencies: pip installs it offline. ``with_evsed``: its venv
    also sees this test's evsed (a .pth adding our site-packages), so the new version can
    run `evsed run` with its own sys.prefix, as a real new version would. ``extra``: more
    files (name -> text), e.g. a .pth that gives that evsed a migration of its own."""
    path = where / WHEEL_NAME
    info = "evsedtiny-9.9.9.dist-info"
    files = {
        "evsedtiny/__init__.py": "VERSION = '9.9.9'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: evsedtiny\nVersion: 9.9.9\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    if with_evsed:
        ours = sysconfig.get_paths()["purelib"]
        files["evsedtiny_evsed.pth"] = f"import site; site.addsitedir({ours!r})\n"
    files.update(extra or {})
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", record)
    return path


def venv_root(tmp_path: Path) -> Path:
    """/opt/evsed with version 1.0.0 in service; its python is this test's (evsed inside),
    so the watcher can run from it as the unit runs it from `previous`."""
    root = tmp_path / "opt-evsed"
    (root / "venvs" / "1.0.0" / "bin").mkdir(parents=True)
    python = root / "venvs" / "1.0.0" / "bin" / "python"
    # A script, not a link: a venv's python is recognised by the path it is started by.
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (root / "current").symlink_to("venvs/1.0.0")
    (root / "previous").symlink_to("venvs/1.0.0")
    return root


def unit_command(name: str, directive: str, root: Path, state: Path) -> list[str]:
    """A command line of a shipped unit, with /opt/evsed and /var/lib/evsed under tmp."""
    text = (SYSTEMD / name).read_text()
    line = re.search(rf"^{directive}=(.*)$", text, re.M)
    assert line, f"{directive}= missing in {name}"
    command = line[1].replace("/opt/evsed", str(root)).replace("/var/lib/evsed", str(state))
    return shlex.split(command)


def spawn_watcher(root: Path, state: Path, poll_s: float = 0.05) -> subprocess.Popen[str]:
    argv = unit_command("evsed-rollback.service", "ExecStart", root, state)
    return subprocess.Popen(
        [*argv, "--poll-s", str(poll_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class FakeVenvs:
    """Stands in for `python -m venv` and pip (6 s per venv here: measured)."""

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
        raise AssertionError(f"unexpected command {argv}")


class PathUnit:
    """Plays evsed-rollback.path for the installer's wait: once the marker exists, the
    watcher starts and acknowledges it; in-process (``arm``) or, with ``spawn``, the real
    watcher command in its own process, from the previous venv."""

    def __init__(self, root: Path, state: Path, *, spawn: bool = False, works: bool = True):
        self.root, self.state, self.spawn, self.works = root, state, spawn, works
        self.watcher: subprocess.Popen[str] | None = None
        self.waits = 0

    async def sleep(self, seconds: float) -> None:
        self.waits += 1
        if not self.works or not (self.state / MARKER).exists():
            return
        if self.spawn:
            if self.watcher is None:
                self.watcher = spawn_watcher(self.root, self.state)
            await asyncio.sleep(seconds)  # real: another process answers
        else:
            VenvInstaller(root=self.root, state_dir=self.state).arm()


class Restarts:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def layout_installer(
    root: Path,
    state: Path,
    run: object,
    now: list[float],
    prefix: Path,
    *,
    path_unit: PathUnit | None = None,
    restart: Restarts | None = None,
) -> VenvInstaller:
    path_unit = path_unit or PathUnit(root, state)
    return VenvInstaller(
        root=root,
        state_dir=state,
        run=run,  # type: ignore[arg-type]
        confirm_timeout_s=600,
        running_prefix=lambda: prefix,
        wall_time=lambda: now[0],
        restart=restart or Restarts(),
        arm_timeout_s=30,
        sleep=path_unit.sleep,
    )
