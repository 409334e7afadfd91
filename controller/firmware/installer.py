"""The default installer: one virtual environment per version, switched by a symlink.

The layout (made by `evsed install`, used by the unit and by this installer):

    /opt/evsed/venvs/<version>/   one venv per installed version (the previous ones are kept)
    /opt/evsed/current            -> venvs/<version> in service (ExecStart=.../current/bin/evsed)
    /opt/evsed/previous           -> venvs/<version> that ran the last installation: the way back
    <state>/firmware-pending.json the installation awaiting its confirmation (the marker)

`install(package)`, in the running (old) version: a new venv next to the current one
(`python -m venv`), the package installed into it with its pip, `previous` pointed at the
running venv, the marker written (new and previous venv, a wall-clock deadline), then,
once the rollback watcher has acknowledged the marker, `current` replaced atomically (a
new link renamed over it) and the process ends (SIGTERM to itself: the usual orderly
stop); the unit's `Restart=always` starts `current`, the new version. No right to run
`systemctl` is needed for that.

Who rolls back. A version that crashes on import never runs any code of ours, and a
transient timer armed by the old version (`systemd-run`) dies with a reboot, so the
watcher is a unit of its own, started by systemd whenever the marker exists:
`evsed-rollback.path` (PathExists= the marker; pulled in by evsed.service, so also at
every boot) starts `evsed-rollback.service`, which runs *the previous venv's* python
(`python -m evsed.controller.firmware.installer watch`, as the service user). The
watcher waits, on the wall clock, for the marker's deadline; if the new version has not
confirmed by then it puts `current` back to `previous` and exits 3, and the unit's only
privileged line (`ExecStopPost=+/usr/local/lib/evsed/after-rollback.sh`, root's, run
when the watcher exits 3) restarts the service into the old version, even out of a failed
state, unless an operator had stopped it (`systemctl stop evsed`: inactive). A reboot or
a crash inside the window changes nothing: the marker and its deadline are on disk, and
the path unit starts a watcher again at boot.

The data go back too. The new version migrates evsed.db when it starts, before it is
confirmed, and the old version refuses a schema newer than its own. So right before the
switch the installer takes a snapshot (`<state>/firmware-rollback.db`, SQLite's online
backup: consistent with the WAL while the running evsed keeps writing), and the old
version, started again after a rollback, renames it over evsed.db before it opens the
database (`restore_after_rollback`, once). Nothing of a driver's is lost with what the new
version wrote: until it is confirmed it starts no transaction (the updater blocks starts),
and the queue it inherited is in the snapshot. (Why not the alternatives: migrations after
the confirmation leave the new code on a schema it does not know; a "minimum reader
version" works for additive migrations only, and the old version would then run on a
database whose rows it no longer understands fully.) The snapshot is dropped with the
marker once the outcome reached the Central System.

The new version confirms (`outcome_after_restart`, asked by the updater once the
BootNotification was Accepted) by recording that it runs from the pending venv. The
previous version, back in service, finds the installation stored as Installing, asks
`outcome_after_restart` (False: it is not the pending venv) and reports
InstallationFailed. Confirmation and rollback take a lock on the marker, so that one of
them wins, never both.

Commands go through an injectable runner, the restart through an injectable callable,
the wall clock and the waits are injected: tests use a temporary root and never touch
`/opt` or the real service manager.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from evsed.controller.firmware.update import InstallFailed, SwitchCheck, always_may_switch
from evsed.controller.store.schema import DB_FILENAME

log = logging.getLogger(__name__)

MARKER = "firmware-pending.json"
LOCK = ".firmware-pending.lock"
#: The database as the old version left it at the switch (see `restore_after_rollback`).
DB_SNAPSHOT = "firmware-rollback.db"
DB_NAME = DB_FILENAME
DEFAULT_ROOT = Path("/opt/evsed")
DEFAULT_STATE_DIR = Path("/var/lib/evsed")
DEFAULT_CONFIRM_TIMEOUT_S = 600.0
DEFAULT_SERVICE = "evsed"
#: How long the installer waits for the watcher to acknowledge the marker before it
#: gives up (nothing switched): systemd starts a python within seconds, even on a Pi Zero.
DEFAULT_ARM_TIMEOUT_S = 60.0
ARM_POLL_S = 0.2
#: How often the watcher looks at the marker (it also wakes at the deadline).
WATCH_POLL_S = 5.0
#: The watcher's exit status when it rolled back: the unit's ExecStopPost restarts evsed.
EXIT_ROLLED_BACK = 3

#: Runs one command; returns (exit status, combined output).
Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]

# evsed-1.2.3-py3-none-any.whl, evsed-1.2.3.tar.gz, evsed-1.2.3.zip
_PACKAGE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-]+?)-(?P<version>\d[A-Za-z0-9_.+!]*?)(-.+\.whl|\.tar\.gz|\.zip)$"
)
# A version becomes a directory name: nothing that could climb out of venvs/.
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+!-]{0,63}$")


#: A venv and a pip install on a Pi take a minute or two; a pip stuck on the network must
#: not leave the update Installing for ever.
COMMAND_TIMEOUT_S = 1800.0
EXIT_TIMED_OUT = 124


async def run_command(argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return EXIT_TIMED_OUT, f"{argv[0]}: no result after {timeout_s:.0f} s, killed"
    return proc.returncode or 0, out.decode(errors="replace")


def run_command_sync(argv: Sequence[str]) -> tuple[int, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def restart_by_exit() -> None:
    """End this process the orderly way (its SIGTERM handler: outputs safe, store closed);
    systemd's Restart=always starts `current` again. Needs no right over the unit."""
    os.kill(os.getpid(), signal.SIGTERM)


def readable_by_all(tree: Path) -> None:
    """The service's UMask=0077 made the new venv its own only; like the first one (made by
    root), everyone may read and run it (`sudo -u evsed /opt/evsed/current/bin/evsed
    status` by people in the evsed group; root runs its own copy, never this). Nobody else
    may write it. Run as the service user on its own tree, so a link is skipped, not
    followed."""
    for path in (tree, *tree.rglob("*")):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        wanted = (mode | 0o444 | (0o111 if mode & 0o100 or path.is_dir() else 0)) & ~0o022
        if wanted != mode & 0o7777:
            path.chmod(wanted & 0o7777)


def package_version(package: Path) -> str:
    m = _PACKAGE.match(package.name)
    if m is None or not _SAFE_VERSION.match(m.group("version")):
        raise InstallFailed(f"{package.name}: not a wheel or source archive name")
    return m.group("version")


# ------------------------------------------------------------------------------ layout


@dataclass(frozen=True, slots=True)
class Layout:
    """/opt/evsed (or a temporary root in tests): venvs/<version>, current, previous."""

    root: Path = DEFAULT_ROOT

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    @property
    def old_venv(self) -> Path:
        """The single venv of the layout before this one (`/opt/evsed/venv`)."""
        return self.root / "venv"

    def venv(self, version: str) -> Path:
        if not _SAFE_VERSION.match(version):
            raise InstallFailed(f"{version!r} is not a usable version")
        return self.venvs / version

    def in_service(self) -> Path | None:
        """The venv `current` points at, if it is a link into venvs/ (else None)."""
        if not self.current.is_symlink():
            return None
        target = self.current.resolve()
        return target if target.parent == self.venvs.resolve() else None

    def link_target(self, venv: Path) -> Path:
        """What `switch` writes into the link for ``venv``: relative to the root when it lies
        under it, so that the layout means the same under a temporary root."""
        return venv.relative_to(self.root) if venv.is_relative_to(self.root) else venv

    def switch(self, name: str, venv: Path) -> None:
        """Point `<root>/<name>` at ``venv`` atomically: a new link under a temporary name,
        renamed over the old one (a reader sees the old or the new link, never none)."""
        link = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.link_target(venv))
        os.replace(tmp, link)
        _fsync_dir(self.root)


# ------------------------------------------------------------------------------ marker


@dataclass(frozen=True, slots=True)
class Pending:
    version: str
    venv: str  # the new venv
    previous: str  # the venv `current` pointed to before
    deadline: float  # wall-clock seconds (the marker outlives the process and its clock)
    confirmed: bool = False
    rolled_back: bool = False
    armed: bool = False  # the watcher has seen it (the installer waits for this)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One writer of the marker at a time (installer, watcher, confirming version)."""
    fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_marker(state_dir: Path) -> Pending | None:
    try:
        data = json.loads((state_dir / MARKER).read_text())
        known = {f.name for f in fields(Pending)}
        return Pending(**{k: v for k, v in data.items() if k in known})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError) as e:
        log.error("firmware marker unreadable (%s): ignored", e)
        return None


def _write_marker(state_dir: Path, pending: Pending) -> None:
    tmp = state_dir / f".{MARKER}.tmp"
    with tmp.open("w") as f:
        json.dump(asdict(pending), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_dir / MARKER)
    _fsync_dir(state_dir)  # synced: the way back must survive a power cut


# ------------------------------------------------------------------------------ installer


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
        restart: Callable[[], None] = restart_by_exit,
        arm_timeout_s: float = DEFAULT_ARM_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.layout = Layout(Path(root))
        self.state_dir = state_dir
        self._run = run
        self.confirm_timeout_s = confirm_timeout_s
        self.service = service
        self._prefix = running_prefix
        self._time = wall_time
        self._restart = restart
        self.arm_timeout_s = arm_timeout_s
        self._sleep = sleep

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def current(self) -> Path:
        return self.layout.current

    async def _must(self, argv: Sequence[str], what: str) -> None:
        status, out = await self._run(argv)
        if status != 0:
            tail = out.strip().splitlines()[-3:]
            raise InstallFailed(f"{what} failed (exit {status}): {' | '.join(tail)}")

    async def install(self, package: Path, may_switch: SwitchCheck = always_may_switch) -> bool:
        layout = self.layout
        running = layout.in_service()
        if running is None:
            raise InstallFailed(
                f"{layout.current} is not a symlink into {layout.venvs}: not the versioned "
                "venv layout (`evsed install` makes it, or migrates /opt/evsed/venv)"
            )
        version = package_version(package)
        target = layout.venv(version)
        if target.resolve() == running:
            raise InstallFailed(f"version {version} is the one running")
        # The way back first: `previous` is the version running now, known to start; the
        # watcher runs its python and puts `current` back to it. (Set before the build, so
        # that a downgrade to the old `previous` never rebuilds the way back in place.)
        layout.switch("previous", running)
        # Built under its final name: `python -m venv` writes absolute paths into the
        # scripts, so a venv cannot be renamed afterwards. What is atomic is the switch.
        shutil.rmtree(target, ignore_errors=True)
        layout.venvs.mkdir(parents=True, exist_ok=True)
        try:
            await self._must([sys.executable, "-m", "venv", str(target)], "venv creation")
            py = str(target / "bin" / "python")
            # With the [pi] extra, as `evsed install` installs the first version: without it
            # the new venv has no lgpio, and on a Pi the new version finds no GPIO backend.
            # No pip cache: the service's HOME is its state directory on the SD card, and
            # a cache there only wears it (a wheel is installed once per version).
            await self._must(
                [
                    py,
                    *("-m", "pip", "install", "--quiet", "--no-input", "--no-cache-dir"),
                    f"{package}[pi]",
                ],
                "pip install",
            )
            await asyncio.to_thread(readable_by_all, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        pending = Pending(
            version=version,
            venv=str(target),
            previous=str(running),
            deadline=self._time() + self.confirm_timeout_s,
        )
        with _locked(self.state_dir):
            _write_marker(self.state_dir, pending)
        if not await self._watcher_armed():
            self.forget()
            raise InstallFailed(
                f"the rollback watcher (evsed-rollback.path / evsed-rollback.service) did "
                f"not answer within {self.arm_timeout_s:.0f} s: nothing switched "
                "(`evsed install` installs those units)"
            )
        # The last look before the restart (the updater blocks new starts since Installing,
        # but one that began before may still run): never restart under a transaction.
        if not await may_switch():
            self.forget()
            raise InstallFailed("a transaction is still running: nothing switched")
        # The way back for the data: the new version may migrate the database before it is
        # confirmed, and the old one refuses a newer schema. Taken last, so that it holds
        # everything the old version wrote; starts are blocked from here on.
        try:
            await asyncio.to_thread(snapshot_database, self.state_dir)
        except (OSError, sqlite3.Error) as e:
            self.forget()
            raise InstallFailed(f"database snapshot failed: {e}") from e
        layout.switch("current", target)
        log.info("firmware %s installed in %s; restarting into it", version, target)
        try:
            self._restart()
        except Exception as e:
            layout.switch("current", running)
            self.forget()
            raise InstallFailed(f"restart failed: {e}") from e
        return False

    async def _watcher_armed(self) -> bool:
        for _ in range(max(1, round(self.arm_timeout_s / ARM_POLL_S))):
            pending = read_marker(self.state_dir)
            if pending is not None and pending.armed:
                return True
            await self._sleep(ARM_POLL_S)
        pending = read_marker(self.state_dir)
        return pending is not None and pending.armed

    def awaiting_confirmation(self) -> bool:
        """This process is the new version of a marker not yet confirmed nor rolled back."""
        pending = read_marker(self.state_dir)
        return (
            pending is not None
            and not (pending.confirmed or pending.rolled_back)
            and self._prefix().resolve() == Path(pending.venv).resolve()
        )

    def outcome_after_restart(self) -> bool:
        with _locked(self.state_dir):
            pending = read_marker(self.state_dir)
            if pending is None or pending.rolled_back:
                return False
            if self._prefix().resolve() != Path(pending.venv).resolve():
                return False  # the previous version runs: never switched, or rolled back
            if not pending.confirmed:
                _write_marker(self.state_dir, replace(pending, confirmed=True))
        log.info("firmware %s confirmed (started and booted)", pending.version)
        return True

    # -------------------------------------------------------------- the watcher's side

    def arm(self) -> Pending | None:
        """The watcher acknowledges the marker (the installer switches only then)."""
        with _locked(self.state_dir):
            pending = read_marker(self.state_dir)
            if pending is not None and not pending.armed:
                pending = replace(pending, armed=True)
                _write_marker(self.state_dir, pending)
        return pending

    def rollback_if_due(self) -> bool:
        """Past the deadline and unconfirmed: `current` back to the previous venv. True if
        it rolled back (then evsed must be restarted)."""
        with _locked(self.state_dir):
            pending = read_marker(self.state_dir)
            if pending is None or pending.confirmed or pending.rolled_back:
                return False
            if self._time() < pending.deadline:
                return False
            self.layout.switch("current", Path(pending.previous))
            _write_marker(self.state_dir, replace(pending, rolled_back=True))
        log.error(
            "firmware %s did not confirm by its deadline: back to %s",
            pending.version,
            pending.previous,
        )
        return True

    def watch(
        self, *, sleep: Callable[[float], None] = time.sleep, poll_s: float = WATCH_POLL_S
    ) -> int:
        """`evsed-rollback.service`: 0 once the marker is gone (reported: nothing to do),
        EXIT_ROLLED_BACK after a rollback. While the marker exists, confirmed or rolled
        back, it stays (exiting would make the path unit start it again at once)."""
        while True:
            if self.rollback_if_due():
                return EXIT_ROLLED_BACK
            # Armed on every look: a later installation may write a new marker meanwhile.
            pending = self.arm()
            if pending is None and not (self.state_dir / MARKER).exists():
                return 0
            wait = poll_s  # also for an unreadable marker: logged, and left to a person
            if pending is not None and not (pending.confirmed or pending.rolled_back):
                wait = min(poll_s, max(0.0, pending.deadline - self._time()))
            sleep(wait)

    def forget(self) -> None:
        """The outcome was reported: the marker (and the database snapshot) are history."""
        with _locked(self.state_dir):
            (self.state_dir / MARKER).unlink(missing_ok=True)
            (self.state_dir / DB_SNAPSHOT).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the database


def _restricted(path: Path) -> None:
    """Created 0600 before SQLite writes into it: the database holds secrets at rest."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))


def _copy_database(source: Path, dest: Path) -> None:
    """SQLite's online backup: a consistent copy of the database *and* its WAL, while the
    running evsed keeps its connection open (a file copy could catch half a commit)."""
    _restricted(dest)
    src = sqlite3.connect(source)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_database(state_dir: Path) -> Path | None:
    """At the switch, in the old version: `<state>/firmware-rollback.db`, synced."""
    db = state_dir / DB_NAME
    if not db.exists():
        return None
    dest = state_dir / DB_SNAPSHOT
    tmp = state_dir / f".{DB_SNAPSHOT}.tmp"
    _copy_database(db, tmp)
    os.replace(tmp, dest)
    _fsync_dir(state_dir)
    return dest


def restore_after_rollback(
    state_dir: Path, running_prefix: Callable[[], Path] = lambda: Path(sys.prefix)
) -> bool:
    """At start-up, before the database is opened: if the installation was rolled back and
    this is not the version that was rolled back, put back the database as it was at the
    switch (the new version may have migrated it to a schema this one cannot read). The
    new version started no transaction before it was confirmed (the updater blocks starts),
    so nothing of a driver's is lost. Once: the snapshot becomes the database (renamed), so
    a later restart keeps what this version writes. True if it restored."""
    snapshot = state_dir / DB_SNAPSHOT
    if not snapshot.exists():
        return False  # the common case: no lock file made in every state directory
    with _locked(state_dir):
        pending = read_marker(state_dir)
        if pending is None or not pending.rolled_back or not snapshot.exists():
            return False
        if running_prefix().resolve() == Path(pending.venv).resolve():
            return False  # the rolled-back version itself (a person started it): leave it
        db = state_dir / DB_NAME
        # The newer version's WAL belongs to the file replaced: it must not be replayed
        # into the restored one. A power cut in between leaves the snapshot: done again.
        for side in ("-wal", "-shm"):
            db.with_name(db.name + side).unlink(missing_ok=True)
        os.replace(snapshot, db)  # atomic; the snapshot is gone with it, so done once
        _fsync_dir(state_dir)
    log.warning(
        "firmware %s was rolled back: database restored as it was before the switch",
        pending.version,
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evsed.controller.firmware.installer watch|rollback ...` (the units' job).

    watch: what evsed-rollback.service runs. rollback: the same check once (for a person)."""
    parser = argparse.ArgumentParser(prog="evsed-firmware")
    parser.add_argument("action", choices=["watch", "rollback"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--poll-s", type=float, default=WATCH_POLL_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    installer = VenvInstaller(root=args.root, state_dir=args.state_dir)
    if args.action == "watch":
        return installer.watch(poll_s=args.poll_s)
    return EXIT_ROLLED_BACK if installer.rollback_if_due() else 0


if __name__ == "__main__":
    sys.exit(main())
