"""The default installer: one virtual environment per version, switched by a symlink.

    <root>/venvs/<version>/   one venv per installed version (the previous ones are kept)
    <root>/current            symlink to the venv in service (ExecStart=<root>/current/bin/evsed)
    <state>/firmware-pending.json   the installation awaiting its confirmation

`install(package)`: a new venv next to the current one (`python -m venv`), the wheel or
source archive installed into it with its pip, the marker written (new and previous venv,
deadline), the symlink replaced atomically (a new link renamed over `current`), a rollback
check armed, and the service restarted (`systemctl restart evsed`).

Rollback when the new version does not confirm. A version that crashes on import never
runs any code of ours, so the check must not live in the new version: before the restart,
the *old* version arms a transient systemd timer (`systemd-run --on-active=<timeout>`)
that runs the old venv's `python -m evsed.controller.firmware.installer rollback`. At the
deadline it puts `current` back to the previous venv and restarts the service unless the
marker says confirmed. The new version confirms (`outcome_after_restart`, asked by the
updater once the BootNotification was Accepted) by recording that it runs from the
pending venv. The previous version, back in service, finds the
installation still stored as Installing, asks `outcome_after_restart` (False: it is not
the pending venv) and reports InstallationFailed. (systemd's OnFailure= would not do: a
version that hangs before its boot never fails, and a crash loop is cut by the start
limit only much later. A transient timer does not survive a reboot: a reboot within the
confirmation window leaves the rollback to a person: a known limit.)

Commands go through an injectable runner, so tests use a fake `systemctl`/`systemd-run`
and a temporary root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evsed.controller.firmware.update import InstallFailed

log = logging.getLogger(__name__)

MARKER = "firmware-pending.json"
DEFAULT_ROOT = Path("/opt/evsed")
DEFAULT_CONFIRM_TIMEOUT_S = 600.0
DEFAULT_SERVICE = "evsed"

#: Runs one command; returns (exit status, combined output).
Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]

# evsed-1.2.3-py3-none-any.whl, evsed-1.2.3.tar.gz, evsed-1.2.3.zip
_PACKAGE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-]+?)-(?P<version>\d[A-Za-z0-9_.+!]*?)(-.+\.whl|\.tar\.gz|\.zip)$"
)


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def run_command_sync(argv: Sequence[str]) -> tuple[int, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


@dataclass(frozen=True, slots=True)
class Pending:
    version: str
    venv: str  # the new venv
    previous: str  # the venv `current` pointed to before
    deadline: float  # wall-clock seconds (the marker outlives the process and its clock)
    confirmed: bool = False
    rolled_back: bool = False


def package_version(package: Path) -> str:
    m = _PACKAGE.match(package.name)
    if m is None:
        raise InstallFailed(f"{package.name}: not a wheel or source archive name")
    return m.group("version")


def _read_marker(state_dir: Path) -> Pending | None:
    try:
        return Pending(**json.loads((state_dir / MARKER).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        log.error("firmware marker unreadable (%s): ignored", e)
        return None


def _write_marker(state_dir: Path, pending: Pending) -> None:
    tmp = state_dir / f".{MARKER}.tmp"
    with tmp.open("w") as f:
        json.dump(asdict(pending), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_dir / MARKER)
    _fsync_dir(state_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_current(root: Path, venv: Path) -> None:
    """Point `<root>/current` at ``venv`` atomically (rename of a new link over it)."""
    new = root / ".current.new"
    new.unlink(missing_ok=True)
    new.symlink_to(venv.relative_to(root) if venv.is_relative_to(root) else venv)
    os.replace(new, root / "current")
    _fsync_dir(root)


class VenvInstaller:
    def __init__(
        self,
        *,
        root: Path = DEFAULT_ROOT,
        state_dir: Path,
        run: Runner = run_command,
        confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
        service: str = DEFAULT_SERVICE,
        running_prefix: Callable[[], Path] = lambda: Path(sys.prefix),
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.state_dir = state_dir
        self._run = run
        self.confirm_timeout_s = confirm_timeout_s
        self.service = service
        self._prefix = running_prefix
        self._time = wall_time

    @property
    def current(self) -> Path:
        return self.root / "current"

    async def _must(self, argv: Sequence[str], what: str) -> None:
        status, out = await self._run(argv)
        if status != 0:
            tail = out.strip().splitlines()[-3:]
            raise InstallFailed(f"{what} failed (exit {status}): {' | '.join(tail)}")

    async def install(self, package: Path) -> bool:
        if not self.current.is_symlink():
            raise InstallFailed(
                f"{self.current} is not a symlink: evsed is not installed as versioned venvs"
            )
        previous = self.current.resolve()
        version = package_version(package)
        venvs = self.root / "venvs"
        target = venvs / version
        if target.resolve() == previous:
            raise InstallFailed(f"version {version} is the one running")
        # Built under its final name: `python -m venv` writes absolute paths into the
        # scripts, so a venv cannot be renamed afterwards. What is atomic is the switch.
        shutil.rmtree(target, ignore_errors=True)
        venvs.mkdir(parents=True, exist_ok=True)
        try:
            await self._must([sys.executable, "-m", "venv", str(target)], "venv creation")
            py = str(target / "bin" / "python")
            await self._must(
                [py, "-m", "pip", "install", "--quiet", "--no-input", str(package)],
                "pip install",
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        pending = Pending(
            version=version,
            venv=str(target),
            previous=str(previous),
            deadline=self._time() + self.confirm_timeout_s,
        )
        # The check runs from the previous venv: known to start, unlike the new one. Armed
        # before the switch: a charger switched without its way back must never happen.
        timer = f"{self.service}-firmware-rollback"
        _write_marker(self.state_dir, pending)
        try:
            await self._must(
                [
                    "systemd-run",
                    f"--unit={timer}",
                    f"--on-active={int(self.confirm_timeout_s)}",
                    str(previous / "bin" / "python"),
                    "-m",
                    "evsed.controller.firmware.installer",
                    "rollback",
                    "--root",
                    str(self.root),
                    "--state-dir",
                    str(self.state_dir),
                    "--service",
                    self.service,
                ],
                "arming the rollback timer",
            )
        except InstallFailed:
            self.forget()
            raise
        switch_current(self.root, target)
        log.info("firmware %s installed in %s; restarting into it", version, target)
        try:
            await self._must(["systemctl", "--no-block", "restart", self.service], "restart")
        except InstallFailed:
            switch_current(self.root, previous)
            self.forget()
            await self._run(["systemctl", "stop", f"{timer}.timer"])
            raise
        return False

    def outcome_after_restart(self) -> bool:
        pending = _read_marker(self.state_dir)
        if pending is None or pending.rolled_back:
            return False
        running = self._prefix().resolve()
        if running != Path(pending.venv).resolve():
            return False
        _write_marker(self.state_dir, _replace(pending, confirmed=True))
        log.info("firmware %s confirmed (started and booted)", pending.version)
        return True

    def rollback_if_due(
        self, run: Callable[[Sequence[str]], tuple[int, str]] | None = None
    ) -> bool:
        """Past the deadline and unconfirmed: `current` back to the previous venv and the
        service restarted (when ``run`` is given). True if it rolled back."""
        pending = _read_marker(self.state_dir)
        if pending is None or pending.confirmed or pending.rolled_back:
            return False
        if self._time() < pending.deadline:
            return False
        switch_current(self.root, Path(pending.previous))
        _write_marker(self.state_dir, _replace(pending, rolled_back=True))
        log.error(
            "firmware %s did not confirm by its deadline: back to %s",
            pending.version,
            pending.previous,
        )
        if run is not None:
            run(["systemctl", "--no-block", "restart", self.service])
        return True

    def forget(self) -> None:
        """The outcome was reported: the marker is history."""
        (self.state_dir / MARKER).unlink(missing_ok=True)


def _replace(p: Pending, **changes: object) -> Pending:
    return Pending(**{**asdict(p), **changes})  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evsed.controller.firmware.installer rollback ...` (the systemd timer's job)."""
    parser = argparse.ArgumentParser(prog="evsed-firmware")
    parser.add_argument("action", choices=["rollback"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--service", default=DEFAULT_SERVICE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    installer = VenvInstaller(root=args.root, state_dir=args.state_dir, service=args.service)
    installer.rollback_if_due(run_command_sync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
