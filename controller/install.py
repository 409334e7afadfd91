"""`evsed install` / `evsed uninstall`: the service user, the systemd unit, the udev rule for
the kernel PWM and the example configuration, under a root directory (`/` on the charger, a
temporary directory in tests).

Files are written directly under the root. What needs the system's own tools (creating the
user, chown, reloading systemd and udev) goes through a `Runner`: the real one runs the
commands, the dry run only prints them (the default for any root other than `/`, where
those tools would act on the host instead), and tests record them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

#: The groups that own the charger's devices on Raspberry Pi OS: /dev/gpiochip* (and the
#: PWM files, through the udev rule), /dev/spidev*, the serial ports.
DEVICE_GROUPS = ("gpio", "spi", "dialout")
WHY = {
    "gpio": "GPIO (/dev/gpiochip*: relay, RCD, lock) and the kernel PWM of the pilot",
    "spi": "SPI (/dev/spidev*: the ADC that reads the pilot)",
    "dialout": "serial ports (/dev/ttyUSB*, /dev/serial0: RS-485 meter, RFID reader)",
}
UNIT = PurePosixPath("etc/systemd/system/evsed.service")
RULE = PurePosixPath("etc/udev/rules.d/99-evsed-pwm.rules")
CONFIG = PurePosixPath("etc/evsed/evsed.toml")
STATE = PurePosixPath("var/lib/evsed")
SHIPPED_BIN = "/opt/evsed/venv/bin/evsed"
#: ProtectHome=yes hides these from the service: an evsed there cannot start.
HIDDEN = ("/home", "/root", "/run/user")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Runner = Callable[[Sequence[str]], None]
Out = Callable[[str], None]


class InstallError(Exception):
    """One line for the user; `evsed install` exits 2 with it."""


def run_commands(argv: Sequence[str]) -> None:
    """The real runner: a failed command raises InstallError with its own message."""
    try:
        subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]}: not found on this system") from None
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {exc.returncode}"
        raise InstallError(f"{shlex.join(argv)}: {reason}") from None


def dry_run(out: Out) -> Runner:
    def runner(argv: Sequence[str]) -> None:
        out(f"  would run: {shlex.join(argv)}")

    return runner


def shipped(name: str) -> str:
    """A file of systemd/ as shipped (package data of evsed.systemd)."""
    return resources.files("evsed.systemd").joinpath(name).read_text(encoding="utf-8")


def example_config() -> str:
    return resources.files("evsed.examples").joinpath("raspberry-pi.toml").read_text("utf-8")


def default_evsed_bin() -> Path:
    """The `evsed` script next to this interpreter (the venv evsed runs from); not resolved:
    a venv's python is a symlink to the system's."""
    beside = Path(sys.executable).parent / "evsed"
    if beside.exists():
        return beside
    found = shutil.which("evsed")
    return Path(found) if found else beside


@dataclass
class System:
    """What the root directory says about users and groups (its etc/passwd, etc/group)."""

    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, root: Path) -> System:
        def names(path: Path) -> set[str]:
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                return set()
            return {ln.split(":", 1)[0] for ln in lines if ln and not ln.startswith("#")}

        return cls(names(root / "etc/passwd"), names(root / "etc/group"))


def render_unit(text: str, *, evsed_bin: Path, user: str, groups: Sequence[str]) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("SupplementaryGroups="):
            if not groups:
                continue  # systemd refuses to start a unit naming a group that does not exist
            line = "SupplementaryGroups=" + " ".join(groups)
        elif line.startswith(("User=", "Group=")):
            line = line.split("=", 1)[0] + "=" + user
        line = line.replace(SHIPPED_BIN, str(evsed_bin))
        out.append(line)
    return "\n".join(out) + "\n"


def render_rule(text: str, group: str) -> str:
    return text.replace("chgrp -R gpio ", f"chgrp -R {group} ").replace(
        "writable by the service's GPIO group", f"writable by the group {group}"
    )


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".evsed-new")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)  # never a half-written unit


def _boot_config_hints(root: Path) -> list[str]:
    """The Pi firmware settings evsed's wiring needs that /boot/firmware/config.txt lacks."""
    for candidate in ("boot/firmware/config.txt", "boot/config.txt"):
        path = root / candidate
        if path.exists():
            break
    else:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    active = {ln.split("#", 1)[0].strip().replace(" ", "") for ln in text.splitlines()}
    wanted = {
        "dtparam=spi=on": "the ADC on SPI0",
        "dtoverlay=pwm-2chan": "hardware PWM for the pilot on GPIO18",
        "enable_uart=1": "the RDM6300 reader on the UART",
    }
    return [
        f"add `{setting}` to /{candidate} ({why}), then reboot"
        for setting, why in wanted.items()
        if setting not in active
    ]


def install(
    root: Path = Path("/"),
    *,
    evsed_bin: Path | None = None,
    user: str = "evsed",
    run: Runner | None = None,
    out: Out = print,
) -> int:
    root = Path(root)
    real = root == Path("/")
    run = run or (run_commands if real else dry_run(out))
    evsed_bin = evsed_bin or default_evsed_bin()
    if not evsed_bin.is_absolute():
        raise InstallError(f"{evsed_bin}: the unit needs an absolute path to evsed")
    hidden = [h for h in HIDDEN if str(evsed_bin) == h or str(evsed_bin).startswith(h + "/")]
    if hidden:
        raise InstallError(
            f"{evsed_bin} is under {hidden[0]}, which the unit hides from the service "
            "(ProtectHome=yes): install evsed into /opt/evsed/venv (README: Raspberry Pi)"
        )
    if real and os.geteuid() != 0:
        raise InstallError("evsed install changes /etc and creates a user: run it with sudo")

    system = System.read(root)
    groups = [g for g in DEVICE_GROUPS if g in system.groups]
    for missing in (g for g in DEVICE_GROUPS if g not in system.groups):
        out(
            f"warning: no `{missing}` group on this system: the service gets no access to "
            f"{WHY[missing]} from it"
            + (
                f"; the udev rule gives the PWM files to the `{user}` group instead"
                if missing == "gpio"
                else ""
            )
        )
    out(f"service user {user}: " + ("exists" if user in system.users else "creating"))
    if user in system.users:
        if groups:
            run(["usermod", "--append", "--groups", ",".join(groups), user])
    else:
        argv = ["useradd", "--system", "--user-group", "--home-dir", "/" + str(STATE)]
        argv += ["--no-create-home", "--shell", "/usr/sbin/nologin"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        run([*argv, user])

    unit = render_unit(shipped("evsed.service"), evsed_bin=evsed_bin, user=user, groups=groups)
    _write(root / UNIT, unit, 0o644)
    out(f"unit: /{UNIT} (ExecStart={evsed_bin} run)")
    pwm_group = "gpio" if "gpio" in groups else user
    _write(root / RULE, render_rule(shipped("99-evsed-pwm.rules"), pwm_group), 0o644)
    out(f"udev rule: /{RULE} (kernel PWM writable by the group {pwm_group})")

    config = root / CONFIG
    if config.exists():
        out(f"configuration: /{CONFIG} exists, kept as it is")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.parent.chmod(0o750)
        _write(config, example_config(), 0o640)
        out(f"configuration: /{CONFIG} (the Raspberry Pi example: edit it)")
    # Readable by the service (it holds the Central System's key), by no one else.
    run(["chown", f"root:{user}", str(config.parent), str(config)])
    run(["systemctl", "daemon-reload"])
    run(["udevadm", "control", "--reload-rules"])
    run(["udevadm", "trigger", "--subsystem-match=pwm"])

    steps = [
        *_boot_config_hints(root),
        f"edit /{CONFIG}: [central_system] url, charge_point_id and key; the wiring",
        f"sudo -u {user} {evsed_bin} config check /{CONFIG}",
        "sudo systemctl enable --now evsed",
        "journalctl -u evsed -f",
    ]
    out("next steps:")
    for n, step in enumerate(steps, 1):
        out(f"  {n}. {step}")
    return EXIT_OK


def uninstall(
    root: Path = Path("/"),
    *,
    user: str = "evsed",
    purge: bool = False,
    run: Runner | None = None,
    out: Out = print,
) -> int:
    root = Path(root)
    real = root == Path("/")
    run = run or (run_commands if real else dry_run(out))
    if real and os.geteuid() != 0:
        raise InstallError("evsed uninstall changes /etc: run it with sudo")
    if (root / UNIT).exists():
        # Stopping runs ExecStopPost: the outputs end safe before the unit goes away.
        run(["systemctl", "disable", "--now", "evsed"])
    for path in (UNIT, RULE):
        if (root / path).exists():
            (root / path).unlink()
            out(f"removed /{path}")
    run(["systemctl", "daemon-reload"])
    run(["udevadm", "control", "--reload-rules"])
    if not purge:
        out(
            f"kept /{CONFIG.parent} (configuration), /{STATE} (transactions, queued "
            f"messages) and the user {user}: `evsed uninstall --purge` removes them"
        )
        return EXIT_OK
    for directory in (CONFIG.parent, STATE):
        if (root / directory).exists():
            shutil.rmtree(root / directory)
            out(f"removed /{directory}")
    if user in System.read(root).users:
        run(["userdel", user])
        out(f"removed the user {user}")
    return EXIT_OK
