"""A private `systemd --user` manager for tests that run the shipped units for real.

One manager per test: its own XDG_RUNTIME_DIR (its control socket, NOTIFY_SOCKET),
XDG_CONFIG_HOME (units in $XDG_CONFIG_HOME/systemd/user) and XDG_DATA_HOME under the
test's directory, and its own cgroup, so that two pytest-xdist workers never share a
manager, a unit or a process. There is no journald here: tests read the units' state.

`UserManager.start()` raises `Unavailable` (the caller skips with it) when there is no
systemd, no cgroup to give it, or it is not up within STARTUP_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

SYSTEMD = Path("/usr/lib/systemd/systemd")
#: The test's own systemctl (its PATH, not the manager's, which has `add_command`'s first).
SYSTEMCTL = shutil.which("systemctl")
#: "A few seconds" for a manager to come up; the test machine is a busy 2-core one.
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0
#: sd_booted(): systemd --user refuses to start ("System has not been booted with
#: systemd") unless this directory exists, which it does only where systemd is PID 1.
BOOTED_FLAG = Path("/run/systemd/system")
#: Serialises the start of managers of all workers (see `_booted_flag`).
BOOTED_LOCK = Path("/tmp/evsed-tests-user-manager.lock")
#: sun_path holds 108 bytes; the manager's sockets are under XDG_RUNTIME_DIR/systemd/.
MAX_SOCKET_PATH = 107


class Unavailable(Exception):
    """No usable user manager on this machine (the reason is the message)."""


@contextlib.contextmanager
def _booted_flag() -> Iterator[None]:
    """/run/systemd/system exists while a manager starts, and afterwards only if it did
    before. A user manager only looks at it at start-up (sd_booted(): it refuses to run on a
    system not booted with systemd); `systemctl --user` works without it (only
    `is-system-running` then says "offline"). So it is made only if missing and removed
    again only if made here, right after the start, so that the machine is left as found.
    The lock keeps another worker from removing it while its own manager starts."""
    with BOOTED_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = False
        try:
            if not BOOTED_FLAG.exists():
                BOOTED_FLAG.mkdir(parents=True)
                made = True
            yield
        finally:
            if made:
                BOOTED_FLAG.rmdir()


def _cgroup_dirs(name: str) -> list[Path]:
    """A new cgroup for the manager in every hierarchy systemd uses (the v1 name=systemd one
    and the v2 one): without it, two managers would both take the cgroup they were started
    in as their root and stop (kill) each other's `evsed.service`."""
    dirs: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            mount = Path("/sys/fs/cgroup/systemd")
        elif controllers == "":
            unified = Path("/sys/fs/cgroup/unified")
            mount = unified if unified.is_dir() else Path("/sys/fs/cgroup")
        else:
            continue
        dirs.append(mount / path.lstrip("/") / name)
    return dirs


def _remove_cgroup(top: Path) -> None:
    if not top.is_dir():
        return
    for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _pids_in(top: Path) -> list[int]:
    pids: list[int] = []
    if top.is_dir():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(x) for x in procs.read_text().split()]
    return pids


class UserManager:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.runtime_dir = base / "xdg-runtime"
        self.config_home = base / "xdg-config"
        self.data_home = base / "xdg-data"
        self.unit_dir = self.config_home / "systemd" / "user"
        #: On PATH before the system's: what the units' scripts run (see `add_command`).
        self.bin_dir = base / "bin"
        self.log = base / "manager.log"
        self.cgroups = _cgroup_dirs(f"evsed-test-{uuid.uuid4().hex[:12]}")
        path = f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.env = {
            "PATH": path,
            "HOME": str(base / "home"),
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_DATA_HOME": str(self.data_home),
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if not SYSTEMD.exists() or SYSTEMCTL is None:
            raise Unavailable(f"no systemd here ({SYSTEMD}, systemctl)")
        if len(str(self.runtime_dir / "systemd" / "private")) > MAX_SOCKET_PATH:
            raise Unavailable(f"socket paths under {self.runtime_dir} would be too long")
        for d in (self.unit_dir, self.data_home, self.bin_dir, self.base / "home"):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700)
        if not self.cgroups:
            raise Unavailable("no systemd cgroup hierarchy in /proc/self/cgroup")
        try:
            for cg in self.cgroups:
                cg.mkdir()
        except OSError as e:
            for cg in self.cgroups:
                _remove_cgroup(cg)
            raise Unavailable(f"cannot give the manager a cgroup of its own: {e}") from e
        # The shell moves itself into the new cgroups, then becomes the manager.
        join = "".join(f'echo $$ > "{cg}/cgroup.procs" && ' for cg in self.cgroups)
        # Its own log goes to /dev/console whatever its stdio (a user manager reopens the
        # console), and its services' output to the journal, which is not there: a test
        # reads the units' state (`systemctl show`, `status`), and manager.log holds what
        # the generators print.
        argv = [str(SYSTEMD), "--user"]
        with _booted_flag():
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    ["/bin/sh", "-c", join + 'exec "$@"', "sh", *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            state = ""
            while time.monotonic() < deadline and self.proc.poll() is None:
                state = self._run(["is-system-running"], timeout=5).stdout.strip()
                if state in ("running", "degraded"):
                    # A user manager sets its own PATH for its services: put ours back.
                    self.systemctl("set-environment", f"PATH={self.env['PATH']}")
                    return
                time.sleep(0.1)  # a bounded poll of the manager coming up
        self.stop()
        raise Unavailable(
            f"systemd --user not up within {STARTUP_TIMEOUT_S:.0f} s (state {state!r}, "
            f"exit {self.proc.returncode}): {self.log.read_text(errors='replace')[-800:]}"
        )

    def stop(self) -> None:
        """Stop the manager (it stops its units first), wait for it with a timeout, then
        end whatever is left in its cgroups by pid and remove them."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a user manager's orderly exit
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for cg in self.cgroups:
            for pid in _pids_in(cg):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for cg in self.cgroups:
            deadline = time.monotonic() + 5
            while _pids_in(cg) and time.monotonic() < deadline:
                time.sleep(0.05)  # the killed processes leave their cgroup
            _remove_cgroup(cg)

    # ------------------------------------------------------------------ systemctl

    def _run(self, args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SYSTEMCTL), "--user", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        ran = self._run(list(args))
        if check and ran.returncode != 0:
            raise AssertionError(
                f"systemctl --user {' '.join(args)}: exit {ran.returncode}\n{ran.stderr}"
                f"\n{self.status()}"
            )
        return ran

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(
        self,
        unit: str,
        check: Callable[[Mapping[str, str]], bool],
        *props: str,
        timeout: float = 30.0,
    ) -> dict[str, str]:
        """Poll `systemctl show` (a real external process's state), bounded."""
        props = props or ("ActiveState", "SubState", "NRestarts", "ExecMainStatus")
        deadline = time.monotonic() + timeout
        while True:
            seen = self.show(unit, *props)
            if check(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{unit} did not get there within {timeout} s: {seen}\n{self.status(unit)}"
                )
            time.sleep(0.1)

    def status(self, *units: str) -> str:
        """`systemctl --user status` (states, pids, exit statuses) for a failure message."""
        ran = self._run(["status", "--no-pager", "--lines=0", *units])
        return ran.stdout + ran.stderr

    def add_command(self, name: str, script: str) -> Path:
        """An executable `name` on the PATH of the manager and its services."""
        path = self.bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
        return path
