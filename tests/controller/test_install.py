"""`evsed install` / `evsed uninstall` into a temporary root directory: the files it writes,
the commands it would run (recorded, never run), the fallbacks, and the unit it installs
checked by systemd's own tools where this machine has them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evsed.controller import install

GROUPS = "root:x:0:\ngpio:x:997:\nspi:x:999:\ndialout:x:20:\n"


def make_root(tmp_path: Path, groups: str = GROUPS, users: str = "root:x:0:0::/root:/bin/sh\n"):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text(groups)
    (root / "etc/passwd").write_text(users)
    return root


class Recorder:
    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.lines: list[str] = []

    def run(self, argv) -> None:
        self.commands.append(list(argv))

    def out(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


BIN = Path("/opt/evsed/venv/bin/evsed")


def do_install(root: Path, rec: Recorder, **kw) -> int:
    kw.setdefault("evsed_bin", BIN)
    return install.install(root, run=rec.run, out=rec.out, **kw)


def test_install_writes_unit_rule_config_and_creates_the_user(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert "SupplementaryGroups=gpio spi dialout\n" in unit
    assert f"ExecStart={BIN} run --config /etc/evsed/evsed.toml\n" in unit
    assert f"ExecStopPost={BIN} safe-off --config /etc/evsed/evsed.toml\n" in unit
    assert "User=evsed\n" in unit and "Group=evsed\n" in unit
    rule = (root / "etc/udev/rules.d/99-evsed-pwm.rules").read_text()
    assert 'RUN+="/bin/chgrp -R gpio %S%p"' in rule
    config = root / "etc/evsed/evsed.toml"
    assert config.read_text() == install.example_config()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/evsed").stat().st_mode & 0o777 == 0o750
    assert rec.commands[0] == [
        "useradd", "--system", "--user-group", "--home-dir", "/var/lib/evsed",
        "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", "gpio,spi,dialout",
        "evsed",
    ]  # fmt: skip
    assert ["chown", "root:evsed", str(root / "etc/evsed"), str(config)] in rec.commands
    assert ["systemctl", "daemon-reload"] in rec.commands
    assert ["udevadm", "control", "--reload-rules"] in rec.commands
    # Installs, enables nothing: the configuration must be edited first.
    assert not any("enable" in c for c in rec.commands)
    assert "sudo systemctl enable --now evsed" in rec.text
    assert f"sudo -u evsed {BIN} config check /etc/evsed/evsed.toml" in rec.text
    assert "warning" not in rec.text


def test_an_existing_configuration_is_kept(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    config = root / "etc/evsed/evsed.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    assert do_install(root, rec) == 0
    assert config.read_text() == "# mine\n"
    assert "exists, kept" in rec.text
    # Installing again over an installation: same files, the user not created twice.
    (root / "etc/passwd").write_text("evsed:x:998:998::/var/lib/evsed:/usr/sbin/nologin\n")
    rec2 = Recorder()
    assert do_install(root, rec2) == 0
    assert config.read_text() == "# mine\n"
    assert rec2.commands[0] == ["usermod", "--append", "--groups", "gpio,spi,dialout", "evsed"]


def test_without_gpio_and_spi_groups_it_falls_back_and_says_so(tmp_path) -> None:
    root, rec = make_root(tmp_path, groups="root:x:0:\ndialout:x:20:\n"), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    # systemd refuses to start a unit naming a group that does not exist.
    assert re.findall(r"^SupplementaryGroups=.*$", unit, re.M) == ["SupplementaryGroups=dialout"]
    rule = (root / "etc/udev/rules.d/99-evsed-pwm.rules").read_text()
    assert "chgrp -R evsed %S%p" in rule and "chgrp -R gpio" not in rule
    assert "--groups" in rec.commands[0] and "dialout" in rec.commands[0]
    warnings = [ln for ln in rec.lines if ln.startswith("warning:")]
    assert len(warnings) == 2
    assert "no `gpio` group" in warnings[0] and "`evsed` group instead" in warnings[0]
    assert "no `spi` group" in warnings[1] and "/dev/spidev" in warnings[1]


def test_no_device_groups_at_all(tmp_path) -> None:
    root, rec = make_root(tmp_path, groups="root:x:0:\n"), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert "SupplementaryGroups=" not in unit
    assert "--groups" not in rec.commands[0]


def test_an_evsed_under_home_is_refused(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    with pytest.raises(install.InstallError, match=r"ProtectHome=yes.*/opt/evsed/venv"):
        do_install(root, rec, evsed_bin=Path("/home/pi/evsed/.venv/bin/evsed"))
    assert rec.commands == [] and not (root / "etc/systemd").exists()


def test_boot_config_hints_name_what_is_missing(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    boot = root / "boot/firmware/config.txt"
    boot.parent.mkdir(parents=True)
    boot.write_text("[all]\ndtparam=spi=on\n#dtoverlay=pwm-2chan\n")
    assert do_install(root, rec) == 0
    assert "dtoverlay=pwm-2chan" in rec.text and "enable_uart=1" in rec.text
    assert "`dtparam=spi=on`" not in rec.text


def test_uninstall_keeps_configuration_and_state_unless_purged(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    do_install(root, rec)
    (root / "var/lib/evsed").mkdir(parents=True)
    (root / "var/lib/evsed/evsed.sqlite3").write_text("")
    rec = Recorder()
    assert install.uninstall(root, run=rec.run, out=rec.out) == 0
    assert rec.commands[0] == ["systemctl", "disable", "--now", "evsed"]
    assert not (root / "etc/systemd/system/evsed.service").exists()
    assert not (root / "etc/udev/rules.d/99-evsed-pwm.rules").exists()
    assert (root / "etc/evsed/evsed.toml").exists() and (root / "var/lib/evsed").exists()
    assert "--purge" in rec.text
    (root / "etc/passwd").write_text("evsed:x:998:998::/var/lib/evsed:/usr/sbin/nologin\n")
    rec = Recorder()
    assert install.uninstall(root, purge=True, run=rec.run, out=rec.out) == 0
    assert not (root / "etc/evsed").exists() and not (root / "var/lib/evsed").exists()
    assert rec.commands[-1] == ["userdel", "evsed"]
    assert ["systemctl", "disable", "--now", "evsed"] not in rec.commands  # already gone


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_into_a_root_directory_only_prints_the_commands(tmp_path) -> None:
    root = make_root(tmp_path)
    ran = _cli("install", "--root", str(root), "--evsed", str(BIN))
    assert ran.returncode == 0, ran.stderr
    assert "would run: useradd --system" in ran.stdout
    assert (root / "etc/systemd/system/evsed.service").exists()
    ran = _cli("uninstall", "--root", str(root))
    assert ran.returncode == 0, ran.stderr
    assert "would run: systemctl disable --now evsed" in ran.stdout


def test_cli_problem_is_one_line_and_exit_2(tmp_path) -> None:
    root = make_root(tmp_path)
    ran = _cli("install", "--root", str(root), "--evsed", "/root/venv/bin/evsed")
    assert ran.returncode == 2
    assert ran.stderr.count("\n") == 1 and ran.stderr.startswith("evsed install: ")
    assert "Traceback" not in ran.stderr


# -- systemd's own checks of the installed unit -------------------------------------------


def _installed_unit(tmp_path: Path) -> Path:
    root = make_root(tmp_path)
    # A real executable outside the checkout: verify checks that ExecStart= can run.
    evsed = tmp_path / "bin" / "evsed"
    evsed.parent.mkdir()
    evsed.write_text("#!/bin/sh\n")
    evsed.chmod(0o755)
    do_install(root, Recorder(), evsed_bin=evsed)
    return root / "etc/systemd/system/evsed.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_installed_unit(tmp_path) -> None:
    unit = _installed_unit(tmp_path)
    ran = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.strip() == "", ran.stderr  # no warning about any directive


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_security_rates_the_unit_ok_or_better(tmp_path) -> None:
    unit = _installed_unit(tmp_path)
    ran = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ran.returncode != 0 and "offline" in ran.stderr:
        pytest.skip(f"systemd-analyze security has no --offline here: {ran.stderr.strip()}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", ran.stdout)
    assert found, ran.stdout + ran.stderr
    score, label = float(found[1]), found[2]
    assert label in {"PERFECT", "SAFE", "OK"}, ran.stdout
    assert score <= 2.0, ran.stdout  # 1.6 with systemd 252: what remains is in the README
