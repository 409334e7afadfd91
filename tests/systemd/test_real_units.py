"""The shipped units (systemd/evsed.service, evsed-rollback.path, evsed-rollback.service and
the root-owned scripts they call, evsed-safe-off.sh and evsed-after-rollback.sh), run by a
real systemd: a private `systemd --user` manager per
test (tests/support/user_manager.py), `evsed run` on the simulated bench from this venv.

The units are rendered from the shipped text (`render`): the lines a user manager here
cannot apply are left out (NOT_IN_USER_MODE, each with why) and the fixed paths point
into the test's directory (`Paths.fixed`); every other line runs as shipped: Type=notify,
WatchdogSec=8, Restart=, RestartSec=, RestartPreventExitStatus=2, ExecStopPost=, Wants=,
the path unit's PathExists=, SuccessExitStatus=3, the root step ExecStopPost=+ and most
of the sandbox (ProtectSystem=strict with ReadWritePaths=, the system call filter,
MemoryDenyWriteExecute=, CapabilityBoundingSet=, NoNewPrivileges=, ...).

What a user manager cannot show: the service user and its groups (device access by
group), PrivateTmp= and the three masking options (NOT_IN_USER_MODE), DevicePolicy=/
DeviceAllow= and IPAddressDeny= (accepted; whether they are enforced is not checked: the
bench opens no device, the watcher no socket), After=/Wants= of network-online.target and
time-sync.target (system targets: not found by a user manager, so ignored) and a reboot (the
path unit starting the watcher at boot).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from evsed.controller.firmware.installer import MARKER, Pending, VenvInstaller, read_marker
from tests.support.user_manager import Unavailable, UserManager

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "systemd"
EVSED = Path(sysconfig.get_path("scripts")) / "evsed"

#: Left out of the rendered units, and why. Everything else is kept as shipped.
NOT_IN_USER_MODE: Mapping[str, str] = {
    # No `evsed` user and no gpio/spi groups on the test machine (the manager runs as the
    # test's user, root here): systemd would refuse the unit (216/GROUP, 217/USER).
    "User": "no service user here",
    "Group": "no service group here",
    "SupplementaryGroups": "no gpio/spi groups here",
    # The test's paths, the manager's NOTIFY_SOCKET and control socket included, are under
    # /tmp (tmp_path): a private /tmp would hide them from the service.
    "PrivateTmp": "the test's paths are under /tmp",
    # These three mask paths with systemd's "inaccessible" nodes, which the manager looks
    # for in /run/systemd/inaccessible/, made by PID 1 at boot and missing here: the start
    # fails with 226/NAMESPACE (ProtectHome=read-only, which masks nothing, works). With the
    # nodes made by hand the two kernel options work; ProtectHome=yes would then hide this
    # machine's python (the venv's base is under /root/.pyenv): 203/EXEC.
    "ProtectHome": "no /run/systemd/inaccessible here (226/NAMESPACE)",
    "ProtectKernelTunables": "no /run/systemd/inaccessible here (226/NAMESPACE)",
    "ProtectKernelLogs": "no /run/systemd/inaccessible here (226/NAMESPACE)",
}

WATCHDOG_S = 8  # the shipped WatchdogSec (test_shipped_values_are_what_these_tests_assume)
#: The rollback watcher's deadline, from the marker's writing (its own clock: wall time).
DEADLINE_S = 4.0

BENCH_CONFIG = """\
[central_system]
enabled = false
[bench]
control_port = 0
[[connectors]]
[connectors.meter]
port = 0
"""


@dataclass(frozen=True)
class Paths:
    """Where the units' fixed paths point in the test."""

    opt: Path  # /opt/evsed: venvs/, current, previous
    state: Path  # /var/lib/evsed, StateDirectory=evsed of a user manager
    config: Path  # /etc/evsed, ConfigurationDirectory=evsed of a user manager
    libdir: Path  # /usr/local/lib/evsed (after-rollback.sh)

    def fixed(self) -> dict[str, str]:
        return {
            "/opt/evsed": str(self.opt),
            "/var/lib/evsed": str(self.state),
            "/etc/evsed": str(self.config),
            "/usr/local/lib/evsed": str(self.libdir),
        }


def render(text: str, paths: Paths) -> str:
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.startswith("#") and key in NOT_IN_USER_MODE:
            out.append(f"# (test: not in user mode, {NOT_IN_USER_MODE[key]}) {line}")
            continue
        for fixed, here in paths.fixed().items():
            line = line.replace(fixed, here)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Units:
    manager: UserManager
    paths: Paths
    #: Every `systemctl` the units' scripts ran (after-rollback.sh), one line each.
    calls: Path

    def write_config(self, text: str) -> None:
        (self.paths.config / "evsed.toml").write_text(text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        return self.manager.show(unit, *props)


@pytest.fixture
def units(tmp_path: Path) -> Iterator[Units]:
    if not EVSED.exists():
        pytest.skip(f"no evsed console script at {EVSED}")
    manager = UserManager(tmp_path)
    try:
        manager.start()
    except Unavailable as e:
        pytest.skip(f"no usable systemd user manager: {e}")
    except BaseException:
        manager.stop()
        raise
    try:
        # A user manager's StateDirectory= and ConfigurationDirectory= are both under
        # $XDG_CONFIG_HOME (systemd 252): /var/lib/evsed and /etc/evsed are one directory.
        evsed_dir = manager.config_home / "evsed"
        paths = Paths(tmp_path / "opt", evsed_dir, evsed_dir, tmp_path / "usr-local-lib")
        # One venv, this one, under two version names: current -> v2 (the update under
        # test), previous -> v1 (the way back; the watcher runs its python).
        (paths.opt / "venvs").mkdir(parents=True)
        for version in ("v1", "v2"):
            (paths.opt / "venvs" / version).symlink_to(sys.prefix)
        (paths.opt / "current").symlink_to("venvs/v2")
        (paths.opt / "previous").symlink_to("venvs/v1")
        paths.config.mkdir(parents=True)
        paths.libdir.mkdir()
        # The root-owned scripts, as `evsed install` names them there, and root's copy of
        # evsed (admin: the venv safe-off.sh tries after current), this venv too.
        for shipped in SHIPPED.glob("evsed-*.sh"):
            script = paths.libdir / shipped.name.removeprefix("evsed-")
            script.write_text(shipped.read_text())
            script.chmod(0o755)
        (paths.libdir / "admin").symlink_to(sys.prefix)
        # The script says `systemctl`, meaning the system manager: here the same commands
        # go to this user manager, and each is noted (with what systemd gave the script).
        calls = tmp_path / "systemctl-calls"
        manager.add_command(
            "systemctl",
            "#!/bin/sh\n"
            'out=$(/usr/bin/systemctl --user "$@"); rc=$?\n'
            f'echo "EXIT_STATUS=${{EXIT_STATUS:-}} SERVICE_RESULT=${{SERVICE_RESULT:-}}'
            f' $* -> $out ($rc)" >> "{calls}"\n'
            '[ -z "$out" ] || printf "%s\\n" "$out"\n'
            "exit $rc\n",
        )
        for name in ("evsed.service", "evsed-rollback.path", "evsed-rollback.service"):
            rendered = render((SHIPPED / name).read_text(), paths)
            (manager.unit_dir / name).write_text(rendered)
        manager.systemctl("daemon-reload")
        found = Units(manager, paths, calls)
        found.write_config(BENCH_CONFIG)
        yield found
    finally:
        manager.stop()


def exec_command(value: str) -> dict[str, str]:
    """`systemctl show -p ExecStopPost`: `{ path=... ; argv[]=... ; code=exited ; status=0 }`."""
    fields = value.strip().removeprefix("{").removesuffix("}").strip().split(" ; ")
    return dict(f.partition("=")[::2] for f in fields)


def start_evsed(u: Units) -> dict[str, str]:
    # Type=notify: `start` returns once evsed has said READY=1 (or the start failed).
    u.manager.systemctl("start", "evsed.service")
    return wait_running(u, timeout=5)


def wait_running(u: Units, timeout: float) -> dict[str, str]:
    """evsed.service active and running; its restart count and main pid."""
    return u.manager.wait_for(
        "evsed.service",
        lambda s: s["ActiveState"] == "active" and s["SubState"] == "running",
        "ActiveState",
        "SubState",
        "NRestarts",
        "ExecMainPID",
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------- tests


def test_shipped_values_are_what_these_tests_assume() -> None:
    unit = (SHIPPED / "evsed.service").read_text().splitlines()
    assert f"WatchdogSec={WATCHDOG_S}" in unit
    for line in ("Type=notify", "Restart=always", "RestartPreventExitStatus=2"):
        assert line in unit
    rendered = render("\n".join(unit), Paths(Path("/o"), Path("/s"), Path("/c"), Path("/l")))
    assert "ExecStart=/o/current/bin/evsed run --config /c/evsed.toml" in rendered
    assert "\nUser=" not in rendered and "\nProtectSystem=strict" in rendered


def test_watchdog_kills_a_frozen_evsed_makes_it_safe_and_restart_brings_it_back(
    units: Units,
) -> None:
    u = units
    first = start_evsed(u)
    assert first["NRestarts"] == "0"
    # Wants=evsed-rollback.path: evsed's start armed the rollback trigger.
    path = u.show("evsed-rollback.path", "ActiveState", "SubState")
    assert path == {"ActiveState": "active", "SubState": "waiting"}
    # The watchdog is armed with the shipped value, and evsed pings it.
    armed = u.show("evsed.service", "WatchdogUSec", "WatchdogTimestampMonotonic")
    assert armed["WatchdogUSec"] == f"{WATCHDOG_S}s"
    u.manager.wait_for(
        "evsed.service",
        lambda s: s["WatchdogTimestampMonotonic"] != armed["WatchdogTimestampMonotonic"],
        "WatchdogTimestampMonotonic",
        timeout=5,
    )

    # Freeze the whole process (safety core and loop): no more pings.
    pid = int(first["ExecMainPID"])
    os.kill(pid, signal.SIGSTOP)
    frozen_at_us = time.monotonic() * 1e6
    # Its last ping (systemd clears this when the process goes, so it is read now).
    last_ping_us = int(
        u.show("evsed.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    )
    assert 0 < last_ping_us <= frozen_at_us

    # After the kill, before the restart: stop-post (safe-off) then auto-restart (2 s).
    props = (
        "ActiveState",
        "SubState",
        "Result",
        "NRestarts",
        "ExecMainCode",
        "ExecMainStatus",
        "ActiveExitTimestampMonotonic",
        "ExecStopPost",
    )
    killed = u.manager.wait_for(
        "evsed.service",
        lambda s: s["SubState"] == "auto-restart" or s["NRestarts"] != "0",
        *props,
        timeout=WATCHDOG_S + 10,
    )
    assert killed["SubState"] == "auto-restart", f"the restart window was missed: {killed}"
    assert killed["Result"] == "watchdog"
    # WatchdogSignal= (default SIGABRT; systemd sends SIGCONT after it) ended it.
    assert killed["ExecMainStatus"] == str(int(signal.SIGABRT))
    killed_at_us = int(killed["ActiveExitTimestampMonotonic"])
    # Within WatchdogSec of the last ping (systemd's timer slack is well under a second).
    assert WATCHDOG_S * 1e6 <= killed_at_us - last_ping_us < (WATCHDOG_S + 1) * 1e6
    # ExecStopPost= (safe-off.sh: evsed safe-off from current, else root's copy, else
    # previous) ran after the kill and succeeded (on the bench there are no real outputs).
    safe_off = exec_command(killed["ExecStopPost"])
    assert safe_off["path"] == str(u.paths.libdir / "safe-off.sh"), safe_off
    assert (safe_off["code"], safe_off["status"]) == ("exited", "0"), safe_off
    assert safe_off["pid"] not in ("0", str(pid))

    # Restart=always, RestartSec=2: back, ready again, one automatic restart counted.
    back = wait_running(u, timeout=30)
    assert back["NRestarts"] == "1"
    assert int(back["ExecMainPID"]) != pid


def test_a_configuration_error_is_not_restarted_and_the_unit_stays_failed(units: Units) -> None:
    u = units
    u.write_config("[central_system\nthis is not TOML\n")
    # The start fails: evsed exits 2 before READY=1.
    ran = u.manager.systemctl("start", "evsed.service", check=False)
    assert ran.returncode != 0
    state = u.show(
        "evsed.service", "ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus"
    )
    # failed, not auto-restart: RestartPreventExitStatus=2 kept Restart=always from
    # scheduling anything, and no job waits.
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "NRestarts": "0",
        "ExecMainStatus": "2",
    }, u.manager.status("evsed.service")
    assert "No jobs running." in u.manager.systemctl("list-jobs").stdout


def test_a_configuration_broken_while_running_still_gets_a_safe_off(units: Units) -> None:
    """The file edited into something unparseable while evsed runs, then evsed killed:
    ExecStopPost reads the outputs `evsed run` recorded in $RUNTIME_DIRECTORY at its start
    (the directory outlives the process until ExecStopPost has run). Every copy exited 2,
    "could not read the configuration", and the unit's ExecStopPost 1 before."""
    u = units
    first = start_evsed(u)
    u.write_config("[central_system\nthis is not TOML\n")
    os.kill(int(first["ExecMainPID"]), signal.SIGKILL)
    killed = u.manager.wait_for(
        "evsed.service",
        lambda s: s["SubState"] == "auto-restart" or s["NRestarts"] != "0",
        "SubState",
        "NRestarts",
        "ExecStopPost",
        timeout=20,
    )
    assert killed["SubState"] == "auto-restart", f"the restart window was missed: {killed}"
    safe_off = exec_command(killed["ExecStopPost"])
    assert (safe_off["code"], safe_off["status"]) == ("exited", "0"), safe_off


def write_marker(u: Units) -> Pending:
    """As the installer writes it (atomically), with a deadline DEADLINE_S from now."""
    opt = u.paths.opt
    pending = Pending(
        version="v2",
        venv=str(opt / "venvs" / "v2"),
        previous=str(opt / "venvs" / "v1"),
        deadline=time.time() + DEADLINE_S,
    )
    tmp = u.paths.state / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(asdict(pending)))
    tmp.replace(u.paths.state / MARKER)
    return pending


def rollback_done(u: Units) -> list[str]:
    """Wait until the path unit started the watcher, it rolled back (exit 3, its
    ExecStopPost ran) and the path unit started it again (the marker is still there).
    The script's systemctl calls."""
    state = u.paths.state
    watcher = u.manager.wait_for(
        "evsed-rollback.service",
        lambda s: s["ActiveState"] == "active" and s["ExecMainPID"] != "0",
        "ActiveState",
        "ExecMainPID",
        timeout=10,
    )
    marker = read_marker(state)
    assert marker is not None
    deadline = time.monotonic() + DEADLINE_S + 20
    while not (marker.rolled_back and marker.armed):
        assert time.monotonic() < deadline, (marker, u.manager.status("evsed-rollback.service"))
        time.sleep(0.1)  # a bounded poll of the watcher's file
        marker = read_marker(state)
        assert marker is not None
    assert os.readlink(u.paths.opt / "current") == "venvs/v1"
    # The first watcher exited 3; its ExecStopPost has run once the path unit has started
    # the next watcher (PathExists= the marker, which stays until the outcome is reported).
    first = watcher["ExecMainPID"]
    u.manager.wait_for(
        "evsed-rollback.service",
        lambda s: s["ActiveState"] == "active" and s["ExecMainPID"] not in ("0", first),
        "ActiveState",
        "ExecMainPID",
        timeout=15,
    )
    return u.calls.read_text().splitlines() if u.calls.exists() else []


def test_rollback_restarts_a_running_evsed_into_the_previous_version(units: Units) -> None:
    u = units
    before = start_evsed(u)
    write_marker(u)
    calls = rollback_done(u)
    # The root step saw the watcher's exit 3 as a success (SuccessExitStatus=3), evsed
    # active, and restarted it.
    assert calls[0] == "EXIT_STATUS=3 SERVICE_RESULT=success is-active evsed.service -> active (0)"
    assert calls[1].endswith("--no-block restart evsed.service ->  (0)"), calls
    after = u.manager.wait_for(
        "evsed.service",
        lambda s: (
            s["ActiveState"] == "active"
            and s["SubState"] == "running"
            and s["ExecMainPID"] not in ("0", before["ExecMainPID"])
        ),
        "ActiveState",
        "SubState",
        "ExecMainPID",
        "NRestarts",
        timeout=20,
    )
    assert after["NRestarts"] == "0"  # a restart by systemctl, not Restart=


def test_rollback_leaves_an_evsed_the_operator_stopped_stopped(units: Units) -> None:
    u = units
    start_evsed(u)
    u.manager.systemctl("stop", "evsed.service")
    # The path unit stays (Wants= does not stop it with evsed): the rollback still happens.
    assert u.show("evsed-rollback.path", "SubState") == {"SubState": "waiting"}
    write_marker(u)
    calls = rollback_done(u)
    assert calls == ["EXIT_STATUS=3 SERVICE_RESULT=success is-active evsed.service -> inactive (3)"]
    assert u.show("evsed.service", "ActiveState", "SubState") == {
        "ActiveState": "inactive",
        "SubState": "dead",
    }
    assert "No jobs running." in u.manager.systemctl("list-jobs").stdout

    # The outcome reported (as the old version does once it reached the Central System):
    # the marker goes, the watcher ends with 0 (its root step does nothing) and the path
    # unit waits for the next marker instead of starting it again.
    VenvInstaller(root=u.paths.opt, state_dir=u.paths.state).forget()
    ended = u.manager.wait_for(
        "evsed-rollback.service",
        lambda s: s["ActiveState"] == "inactive",
        "ActiveState",
        "Result",
        timeout=15,  # the watcher looks every 5 s
    )
    assert ended["Result"] == "success"
    assert u.show("evsed-rollback.path", "SubState") == {"SubState": "waiting"}
    assert u.calls.read_text().splitlines() == calls


def broken_version(u: Units, status: int) -> None:
    """venvs/v2 as a new version that cannot run: its evsed exits `status` at once, and it
    has no python of its own (so safe-off.sh falls back to root's copy)."""
    v2 = u.paths.opt / "venvs" / "v2"
    v2.unlink()
    (v2 / "bin").mkdir(parents=True)
    evsed = v2 / "bin" / "evsed"
    evsed.write_text(f"#!/bin/sh\nexit {status}\n")
    evsed.chmod(0o755)


@pytest.mark.parametrize(
    ("status", "state", "asked"),
    [
        # It refuses the old configuration: RestartPreventExitStatus=2 left it failed.
        (2, "failed", ["show --property=ExecMainStatus --value evsed.service -> 2 (0)"]),
        # It crashes at start: Restart=always retries it every RestartSec, for ever.
        (1, "activating", []),
    ],
)
def test_rollback_restarts_a_new_version_that_cannot_run_into_the_previous_one(
    units: Units, status: int, state: str, asked: list[str]
) -> None:
    u = units
    broken_version(u, status)
    assert u.manager.systemctl("start", "evsed.service", check=False).returncode != 0
    down = u.manager.wait_for(
        "evsed.service",
        lambda s: s["ActiveState"] == state,
        "ActiveState",
        "ExecMainStatus",
        "ExecStopPost",
        timeout=10,
    )
    if state == "failed":
        assert down["ExecMainStatus"] == str(status)
        # safe-off.sh: the version that ended has no python; root's copy made it safe.
        safe_off = exec_command(down["ExecStopPost"])
        assert (safe_off["code"], safe_off["status"]) == ("exited", "0"), safe_off
    write_marker(u)
    calls = rollback_done(u)
    prefix = "EXIT_STATUS=3 SERVICE_RESULT=success "
    assert calls == [
        f"{prefix}is-active evsed.service -> {state} (3)",
        *(prefix + a for a in asked),
        f"{prefix}--no-block restart evsed.service ->  (0)",
    ]
    back = u.manager.wait_for(
        "evsed.service",
        lambda s: s["ActiveState"] == "active" and s["SubState"] == "running",
        "ActiveState",
        "SubState",
        timeout=20,
    )
    assert back["SubState"] == "running"
    assert os.readlink(u.paths.opt / "current") == "venvs/v1"
