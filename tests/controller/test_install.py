"""`evsed install` / `evsed uninstall` into a temporary root directory: the files it writes,
the commands it would run (recorded, never run), the fallbacks, and the unit it installs
checked by systemd's own tools where this machine has them."""

from __future__ import annotations

import os
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
        if list(argv[1:3]) == ["-m", "venv"]:
            Path(argv[3]).mkdir(parents=True, exist_ok=True)  # as it leaves the venv: there

    def out(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


BIN = Path("/opt/evsed/current/bin/evsed")
VERSION = "1.2.3"


def wheel(tmp_path: Path, version: str = VERSION) -> Path:
    path = tmp_path / f"evsed-{version}-py3-none-any.whl"
    path.write_bytes(b"PK")  # only its name matters: pip is a recorded command here
    return path


def do_install(root: Path, rec: Recorder, **kw) -> int:
    if "running_prefix" not in kw:
        kw.setdefault("package", wheel(root.parent))
    kw.setdefault("running_prefix", Path(sys.prefix))
    return install.install(root, run=rec.run, out=rec.out, python="python3", **kw)


def test_install_writes_unit_rule_config_and_creates_the_user(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert "SupplementaryGroups=gpio spi dialout\n" in unit
    assert f"ExecStart={BIN} run --config /etc/evsed/evsed.toml\n" in unit
    # safe-off from current, else root's copy, else previous (test_safe_off_fallback.py).
    assert (
        "ExecStopPost=/usr/local/lib/evsed/safe-off.sh /opt/evsed/current "
        "/usr/local/lib/evsed/admin /opt/evsed/previous -- --config /etc/evsed/evsed.toml\n"
    ) in unit
    safe_off = root / "usr/local/lib/evsed/safe-off.sh"
    assert safe_off.read_text() == install.shipped("evsed-safe-off.sh")
    assert safe_off.stat().st_mode & 0o777 == 0o755
    assert "User=evsed\n" in unit and "Group=evsed\n" in unit
    rule = (root / "etc/udev/rules.d/99-evsed-pwm.rules").read_text()
    assert 'RUN+="/bin/chgrp -R gpio %S%p"' in rule
    config = root / "etc/evsed/evsed.toml"
    assert config.read_text() == install.example_config()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/evsed").stat().st_mode & 0o777 == 0o750
    venvs = root / "opt/evsed/venvs"
    package = tmp_path / f"evsed-{VERSION}-py3-none-any.whl"
    # The first version into venvs/<version>, with the Pi's GPIO and SPI backends.
    assert rec.commands[:2] == [
        ["python3", "-m", "venv", f"{venvs}/{VERSION}"],
        [f"{venvs}/{VERSION}/bin/python", "-m", "pip", "install", f"{package}[pi]"],
    ]
    assert os.readlink(root / "opt/evsed/current") == f"venvs/{VERSION}"
    assert os.readlink(root / "opt/evsed/previous") == f"venvs/{VERSION}"
    assert rec.commands[2] == [
        "useradd", "--system", "--user-group", "--home-dir", "/var/lib/evsed",
        "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", "gpio,spi,dialout",
        "evsed",
    ]  # fmt: skip
    # The service adds venvs and switches the links; the first venv stays root's. Never
    # through a link the service user may have put there (-h), never recursive.
    assert rec.commands[3] == [
        "chown", "-h", "evsed:evsed", str(root / "opt/evsed"), str(venvs)
    ]  # fmt: skip
    assert all("-h" in c for c in rec.commands if c[0] == "chown" and "evsed:evsed" in c)
    assert not any("-R" in c for c in rec.commands if c[0] in ("chown", "chmod"))
    # Root's own copy, from the same package: what /usr/local/bin/evsed runs.
    admin = root / "usr/local/lib/evsed/admin.a"
    assert ["python3", "-m", "venv", str(admin)] in rec.commands
    assert [f"{admin}/bin/python", "-m", "pip", "install", f"{package}[pi]"] in rec.commands
    assert os.readlink(root / "usr/local/lib/evsed/admin") == "admin.a"
    assert os.readlink(root / "usr/local/bin/evsed") == "/usr/local/lib/evsed/admin/bin/evsed"
    assert "ReadWritePaths=/opt/evsed /var/lib/evsed\n" in unit
    assert "Wants=evsed-rollback.path\n" in unit
    watcher = (root / "etc/systemd/system/evsed-rollback.service").read_text()
    assert "User=evsed\n" in watcher and "ExecStart=/opt/evsed/previous/bin/python " in watcher
    path_unit = (root / "etc/systemd/system/evsed-rollback.path").read_text()
    assert "PathExists=/var/lib/evsed/firmware-pending.json\n" in path_unit
    # The rollback's privileged step, root's and outside /opt/evsed, as shipped.
    assert "ExecStopPost=+/usr/local/lib/evsed/after-rollback.sh\n" in watcher
    after = root / "usr/local/lib/evsed/after-rollback.sh"
    assert after.read_text() == install.shipped("evsed-after-rollback.sh")
    assert after.stat().st_mode & 0o777 == 0o755
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
    assert "current -> venvs/1.2.3 (kept)" in rec2.text  # no second venv


def test_without_gpio_and_spi_groups_it_falls_back_and_says_so(tmp_path) -> None:
    root, rec = make_root(tmp_path, groups="root:x:0:\ndialout:x:20:\n"), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    # systemd refuses to start a unit naming a group that does not exist.
    assert re.findall(r"^SupplementaryGroups=.*$", unit, re.M) == ["SupplementaryGroups=dialout"]
    rule = (root / "etc/udev/rules.d/99-evsed-pwm.rules").read_text()
    assert "chgrp -R evsed %S%p" in rule and "chgrp -R gpio" not in rule
    assert "--groups" in rec.commands[2] and "dialout" in rec.commands[2]
    warnings = [ln for ln in rec.lines if ln.startswith("warning:")]
    assert len(warnings) == 2
    assert "no `gpio` group" in warnings[0] and "`evsed` group instead" in warnings[0]
    assert "no `spi` group" in warnings[1] and "/dev/spidev" in warnings[1]


def test_no_device_groups_at_all(tmp_path) -> None:
    root, rec = make_root(tmp_path, groups="root:x:0:\n"), Recorder()
    assert do_install(root, rec) == 0
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert "SupplementaryGroups=" not in unit
    assert "--groups" not in rec.commands[2]


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
    (root / "var/lib/evsed/evsed.sqlite3").write_text("")  # install made the directory
    rec = Recorder()
    assert install.uninstall(root, run=rec.run, out=rec.out) == 0
    assert rec.commands[0] == ["systemctl", "disable", "--now", "evsed"]
    assert rec.commands[1] == ["systemctl", "stop", "evsed-rollback.path", "evsed-rollback.service"]
    assert not (root / "etc/systemd/system/evsed.service").exists()
    assert not (root / "etc/systemd/system/evsed-rollback.service").exists()
    assert not (root / "etc/systemd/system/evsed-rollback.path").exists()
    assert not (root / "opt/evsed").exists()  # every version: the program is gone
    assert not (root / "usr/local/lib/evsed").exists()
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
    ran = _cli("install", "--root", str(root), "--package", str(wheel(tmp_path)))
    assert ran.returncode == 0, ran.stderr
    assert "would run: useradd --system" in ran.stdout
    assert f"would run: {sys.executable} -m venv {root}/opt/evsed/venvs/{VERSION}" in ran.stdout
    assert (root / "etc/systemd/system/evsed.service").exists()
    ran = _cli("uninstall", "--root", str(root))
    assert ran.returncode == 0, ran.stderr
    assert "would run: systemctl disable --now evsed" in ran.stdout


def test_cli_problem_is_one_line_and_exit_2(tmp_path) -> None:
    root = make_root(tmp_path)
    ran = _cli("install", "--root", str(root))  # no package, not run from /opt/evsed/venvs
    assert ran.returncode == 2
    assert "--package" in ran.stderr
    assert ran.stderr.count("\n") == 1 and ran.stderr.startswith("evsed install: ")
    assert "Traceback" not in ran.stderr


# -- systemd's own checks of the installed unit -------------------------------------------


UNITS = ("evsed.service", "evsed-rollback.service", "evsed-rollback.path")


def _installed_units(tmp_path: Path) -> list[Path]:
    """The installed units with /opt/evsed pointing at executables under tmp: `verify`
    checks that every ExecStart= can run (only that line of text differs)."""
    root = make_root(tmp_path)
    do_install(root, Recorder())
    venv = root / f"opt/evsed/venvs/{VERSION}/bin"  # `current` and `previous` point here
    venv.mkdir(parents=True)
    for name in ("evsed", "python"):
        (venv / name).write_text("#!/bin/sh\n")
        (venv / name).chmod(0o755)
    checked = tmp_path / "checked"
    checked.mkdir()
    for name in UNITS:
        text = (root / "etc/systemd/system" / name).read_text()
        for where in ("/opt/evsed/", "/usr/local/lib/evsed/"):
            text = text.replace(where, f"{root}{where}")
        (checked / name).write_text(text)
    return [checked / name for name in UNITS]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path) -> None:
    units = _installed_units(tmp_path)
    ran = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.strip() == "", ran.stderr  # no warning about any directive


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize(
    ("name", "worst"), [("evsed.service", 2.0), ("evsed-rollback.service", 1.0)]
)
def test_systemd_analyze_security_rates_the_unit_ok_or_better(tmp_path, name, worst) -> None:
    unit = dict(zip(UNITS, _installed_units(tmp_path), strict=True))[name]
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
    # evsed 1.6, the watcher 0.4 with systemd 252: what remains is in systemd/README.md
    assert score <= worst, ran.stdout


# -- the versions in /opt/evsed -------------------------------------------------------------


def test_run_from_a_venv_in_venvs_it_is_the_first_version(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    mine = root / "opt/evsed/venvs/2.0.0"
    mine.mkdir(parents=True)
    (root / "usr/local/lib/evsed/admin.a").mkdir(parents=True)
    (root / "usr/local/lib/evsed/admin").symlink_to("admin.a")  # root's copy is there
    assert do_install(root, rec, running_prefix=mine) == 0
    assert os.readlink(root / "opt/evsed/current") == "venvs/2.0.0"
    assert not any(c[1:3] == ["-m", "venv"] for c in rec.commands)
    assert "admin copy: /usr/local/lib/evsed/admin (kept; --package rebuilds it)" in rec.text


def test_without_a_package_root_has_no_copy_of_its_own_to_run(tmp_path) -> None:
    """The versions in /opt/evsed are the service user's: `sudo evsed` must not run one."""
    root, rec = make_root(tmp_path), Recorder()
    mine = root / "opt/evsed/venvs/2.0.0"
    mine.mkdir(parents=True)
    with pytest.raises(install.InstallError, match=r"no /usr/local/lib/evsed/admin yet.*--package"):
        do_install(root, rec, running_prefix=mine)
    assert rec.commands == [] and not (root / "etc/systemd").exists()
    assert not (root / "opt/evsed/current").is_symlink()


def test_nothing_to_install_from_says_what_to_give(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    with pytest.raises(install.InstallError, match=r"--package \./evsed-<version>"):
        do_install(root, rec, running_prefix=tmp_path / "home-venv")
    assert rec.commands == [] and not (root / "etc/systemd").exists()


def test_the_single_venv_of_earlier_releases_is_migrated(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    old = root / "opt/evsed/venv"
    (old / "lib/python3.11/site-packages/evsed-0.9.0.dist-info").mkdir(parents=True)
    (old / "bin").mkdir()
    (old / "bin/evsed").write_text("#!/opt/evsed/venv/bin/python\n")
    elsewhere = tmp_path / "elsewhere"
    assert do_install(root, rec, running_prefix=elsewhere, package=wheel(tmp_path)) == 0
    assert (root / "opt/evsed/venvs/0.9.0/bin/evsed").is_file()
    # The old name stays as a link: the scripts' first lines name /opt/evsed/venv/bin/python.
    assert os.readlink(old) == "venvs/0.9.0"
    assert os.readlink(root / "opt/evsed/current") == "venvs/0.9.0"
    assert (root / "opt/evsed/current/bin/evsed").read_text().startswith("#!/opt/evsed/venv/")
    assert "migrated to /opt/evsed/venvs/0.9.0" in rec.text
    # Nothing rebuilt in /opt/evsed (only root's own copy is made).
    made = [c[3] for c in rec.commands if c[1:3] == ["-m", "venv"]]
    assert made == [str(root / "usr/local/lib/evsed/admin.a")]
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert f"ExecStart={BIN} run --config /etc/evsed/evsed.toml\n" in unit
    # Again: the layout is there now, and kept.
    rec2 = Recorder()
    assert do_install(root, rec2, running_prefix=tmp_path / "elsewhere") == 0
    assert "current -> venvs/0.9.0 (kept)" in rec2.text


def test_an_old_venv_without_evsed_or_a_strange_current_is_refused(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    (root / "opt/evsed/venv/bin").mkdir(parents=True)
    with pytest.raises(install.InstallError, match="holds no evsed"):
        do_install(root, rec)
    (root / "opt/evsed/current").mkdir()
    with pytest.raises(install.InstallError, match="current is not a link into"):
        do_install(root, rec)
    assert rec.commands == [] and not (root / "etc/systemd").exists()


def test_another_service_user_runs_the_watcher_too(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec, user="charger") == 0
    watcher = (root / "etc/systemd/system/evsed-rollback.service").read_text()
    assert "User=charger\nGroup=charger\n" in watcher
    chown = [
        "chown",
        "-h",
        "charger:charger",
        str(root / "opt/evsed"),
        str(root / "opt/evsed/venvs"),
    ]
    assert chown in rec.commands


# -- what the README's walk-through needs before the service ever started --------------


def test_the_state_directory_is_there_before_the_first_start(tmp_path) -> None:
    # The trial: README step 5 (`sudo -u evsed ... config check`) said "state_dir: a
    # directory evsed can create (/var/lib: Permission denied)"; systemd makes
    # StateDirectory= only when the unit first starts.
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec) == 0
    state = root / "var/lib/evsed"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    chown = ["chown", "-h", "evsed:evsed", str(state)]
    # After the user exists: chown needs it.
    assert rec.commands[2][0] == "useradd" and rec.commands.index(chown) > 2
    assert "state: /var/lib/evsed (mode 0700, owned by evsed)" in rec.text
    # As the unit says it, and where the firmware rollback watcher looks.
    unit = (root / "etc/systemd/system/evsed.service").read_text()
    assert "StateDirectory=evsed\n" in unit and "StateDirectoryMode=0700\n" in unit
    watcher = (root / "etc/systemd/system/evsed-rollback.service").read_text()
    assert "--state-dir /var/lib/evsed" in watcher
    assert install.STATE_MODE == int(re.search(r"StateDirectoryMode=(\d+)", unit)[1], 8)


def test_the_state_directory_of_an_earlier_install_is_kept_and_made_private(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    state = root / "var/lib/evsed"
    state.mkdir(parents=True)
    state.chmod(0o755)
    (state / "evsed.sqlite3").write_text("transactions")
    assert do_install(root, rec) == 0
    assert (state / "evsed.sqlite3").read_text() == "transactions"
    assert state.stat().st_mode & 0o777 == 0o700
    assert "state: /var/lib/evsed (exists, mode 0700, owned by evsed)" in rec.text


def test_a_state_path_that_is_a_file_is_refused(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/evsed").write_text("")
    with pytest.raises(install.InstallError, match="/var/lib/evsed is not a directory"):
        do_install(root, rec)


ADMIN_BIN = "/usr/local/lib/evsed/admin/bin/evsed"


def test_evsed_on_the_path_is_roots_own_copy(tmp_path) -> None:
    # The trial: README step 7's bare `evsed status` was not found once ~/evsed-setup went.
    # The safety review: it linked into /opt/evsed/current, which the service user (and a
    # firmware image) can write, and `sudo evsed uninstall` ran that as root.
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec) == 0
    link = root / "usr/local/bin/evsed"
    assert os.readlink(link) == ADMIN_BIN
    assert f"command: /usr/local/bin/evsed -> {ADMIN_BIN}" in rec.text
    assert not ADMIN_BIN.startswith("/opt/evsed/")
    rec2 = Recorder()
    assert do_install(root, rec2) == 0  # again: the link is ours, kept; the copy rebuilt
    assert "(exists)" in rec2.text and "warning" not in rec2.text
    # ... into the other slot, so that the evsed doing it keeps running from the old one.
    assert os.readlink(root / "usr/local/lib/evsed/admin") == "admin.b"
    assert ["python3", "-m", "venv", str(root / "usr/local/lib/evsed/admin.b")] in rec2.commands
    assert install.uninstall(root, run=rec.run, out=rec.out) == 0
    assert not link.exists() and not link.is_symlink()
    assert "removed /usr/local/bin/evsed" in rec.text


@pytest.mark.parametrize("foreign", ["script", "link"])
def test_a_foreign_evsed_on_the_path_is_never_overwritten(tmp_path, foreign) -> None:
    root, rec = make_root(tmp_path), Recorder()
    link = root / "usr/local/bin/evsed"
    link.parent.mkdir(parents=True)
    if foreign == "script":  # e.g. a `sudo pip install` of some other evsed
        link.write_text("#!/usr/bin/python3\n")
    else:
        link.symlink_to("/home/pi/evsed-setup/bin/evsed")
    assert do_install(root, rec) == 0
    warning = next(ln for ln in rec.lines if "/usr/local/bin/evsed" in ln)
    assert warning.startswith("warning: /usr/local/bin/evsed exists and is not a link to ")
    assert "left as it is" in warning
    # The next steps then name the full path, which works whatever is on the PATH.
    assert f"{ADMIN_BIN} status" in rec.text
    assert install.uninstall(root, run=rec.run, out=rec.out) == 0
    if foreign == "script":
        assert link.read_text() == "#!/usr/bin/python3\n"
    else:
        assert os.readlink(link) == "/home/pi/evsed-setup/bin/evsed"


def test_next_steps_follow_the_readme(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    assert do_install(root, rec) == 0
    steps = rec.lines[rec.lines.index("next steps:") + 1 :]
    assert [s.split(". ", 1)[0].strip() for s in steps] == [str(n) for n in range(1, 7)]
    order = ["edit /etc/evsed", "config check", "selftest", "enable --now", "evsed status"]
    found = [next(i for i, s in enumerate(steps) if key in s) for key in order]
    assert found == sorted(found) == list(range(5))
    assert f"sudo -u evsed {BIN} selftest --config /etc/evsed/evsed.toml" in steps[2]
    assert "service stopped" in steps[2]
    assert steps[4].split(". ", 1)[1].startswith("evsed status")  # on the PATH now
    # The README's walk-through says the same commands in the same order.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    walk = readme[readme.index("## From a blank SD card") : readme.index("## Pointing it at")]
    at = [walk.index(cmd) for cmd in ("config check", "selftest", "enable --now", "evsed status")]
    assert at == sorted(at)


def test_the_link_of_earlier_releases_into_current_is_replaced(tmp_path) -> None:
    root, rec = make_root(tmp_path), Recorder()
    link = root / "usr/local/bin/evsed"
    link.parent.mkdir(parents=True)
    link.symlink_to("/opt/evsed/current/bin/evsed")  # what evsed install made before
    assert do_install(root, rec) == 0
    assert os.readlink(link) == ADMIN_BIN
    assert "was -> /opt/evsed/current/bin/evsed" in rec.text and "warning" not in rec.text


# -- what root runs and changes: never the service user's (safety review) ------------------


class FakeBuild(Recorder):
    """`python -m venv` and pip as they leave a venv (a link to this interpreter, pyvenv.cfg,
    a script naming the venv's python); ``plant`` changes it after pip, as a bad source
    would. Every other command is only recorded."""

    def __init__(self, plant=None) -> None:
        super().__init__()
        self.plant = plant

    def run(self, argv) -> None:
        super().run(argv)
        if list(argv[1:3]) == ["-m", "venv"] and "usr/local/lib/evsed" in argv[3]:
            venv = Path(argv[3])
            (venv / "bin").mkdir(parents=True)
            base = Path(os.path.realpath(sys.executable))
            (venv / "bin/python").symlink_to(base)
            (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\n")
            (venv / "lib/python3.11/site-packages").mkdir(parents=True)
        elif list(argv[1:4]) == ["-m", "pip", "install"] and "usr/local/lib/evsed" in argv[0]:
            venv = Path(argv[0]).parent.parent
            script = venv / "bin/evsed"
            script.write_text(f"#!{venv}/bin/python\nfrom evsed.controller.cli import main\n")
            script.chmod(0o777)  # root's umask 000: fixed, not refused
            if self.plant:
                self.plant(venv)


def test_roots_copy_is_made_writable_by_root_only(tmp_path) -> None:
    root, rec = make_root(tmp_path), FakeBuild()
    assert do_install(root, rec) == 0
    admin = root / "usr/local/lib/evsed/admin"
    assert (admin / "bin/evsed").stat().st_mode & 0o777 == 0o755
    assert (
        install.untrusted(
            admin.resolve(), top=root, owners=frozenset({0, os.getuid()}), forbidden=[root / "opt"]
        )
        == []
    )


def _shebang_into_current(venv: Path) -> None:
    (venv / "bin/evsed-x").write_text(f"#!{venv.parents[4]}/opt/evsed/current/bin/python\n")


def _home_in_current(venv: Path) -> None:
    (venv / "pyvenv.cfg").write_text(f"home = {venv.parents[4]}/opt/evsed/current/bin\n")


def _pth_into_venvs(venv: Path) -> None:
    site = venv / "lib/python3.11/site-packages"
    (site / "x.pth").write_text(f"{venv.parents[4]}/opt/evsed/venvs/1.2.3/lib\n")


@pytest.mark.parametrize("plant", [_shebang_into_current, _home_in_current, _pth_into_venvs])
def test_roots_copy_that_runs_anything_of_the_service_users_is_refused(tmp_path, plant) -> None:
    root, rec = make_root(tmp_path), FakeBuild(plant)
    with pytest.raises(install.InstallError, match="which the service user writes"):
        do_install(root, rec)
    assert not (root / "usr/local/bin/evsed").is_symlink()  # nothing links to it


def test_untrusted_names_a_writable_parent_and_a_foreign_owner(tmp_path) -> None:
    top = tmp_path / "top"
    venv = top / "lib/admin"
    (venv / "bin").mkdir(parents=True)
    (top / "lib").chmod(0o775)  # group-writable: its group could swap the venv
    me = frozenset({os.getuid()})
    problems = install.untrusted(venv, top=top, owners=me, forbidden=[])
    assert problems == [f"{top / 'lib'} (the venv): writable by its group or others"]
    (top / "lib").chmod(0o755)
    assert install.untrusted(venv, top=top, owners=me, forbidden=[]) == []
    assert install.untrusted(venv, top=top, owners=frozenset({-1}), forbidden=[])


@pytest.mark.parametrize("planted", ["opt/evsed/venvs", "opt/evsed", "var/lib/evsed"])
def test_a_planted_link_is_never_followed_by_roots_chown_or_chmod(tmp_path, planted) -> None:
    """The service user owns /opt/evsed: it can put a link where root changes owners or
    modes. Refused, and nothing changes what it points to."""
    root, rec = make_root(tmp_path), Recorder()
    victim = tmp_path / "etc-shadow-dir"
    victim.mkdir(mode=0o755)
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    with pytest.raises(install.InstallError, match="is a symbolic link"):
        do_install(root, rec)
    assert not any(c[0] in ("chown", "chmod") and str(link) in c for c in rec.commands)
    assert victim.stat().st_mode & 0o777 == 0o755


def test_chmod_nofollow_refuses_a_link(tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    victim.chmod(0o644)
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(install.InstallError, match="not changed"):
        install.chmod_nofollow(tmp_path / "link", 0o777)
    assert victim.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chown") is None, reason="needs root")
def test_a_link_swapped_in_after_the_check_is_chowned_itself_not_its_target(tmp_path) -> None:
    """The race the check cannot close: the service user replaces venvs with a link between
    the check and root's chown. The real chown runs (as root, to `nobody` here): -h changes
    the link, not what it points to."""
    root = make_root(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    venvs = root / "opt/evsed/venvs"

    class Swap(Recorder):
        def run(self, argv) -> None:
            super().run(argv)
            if argv[0] == "chown" and str(venvs) in argv:
                shutil.rmtree(venvs)
                venvs.symlink_to(victim)
                argv = [a.replace("evsed:evsed", "nobody:nogroup") for a in argv]
                subprocess.run(argv, check=True)

    assert do_install(root, Swap()) == 0
    assert victim.stat().st_uid == 0  # without -h: nobody's
    assert venvs.lstat().st_uid != 0


def test_an_etc_evsed_kept_elsewhere_by_its_admin_is_still_used(tmp_path) -> None:
    """/etc is root's: a link there is the admin's own choice (a read-only root file system
    with the configuration on another partition), unlike a link in /opt/evsed."""
    root, rec = make_root(tmp_path), Recorder()
    elsewhere = tmp_path / "data-evsed"
    elsewhere.mkdir()
    (root / "etc/evsed").symlink_to(elsewhere)
    assert do_install(root, rec) == 0
    assert (elsewhere / "evsed.toml").read_text() == install.example_config()
    assert elsewhere.stat().st_mode & 0o777 == 0o750


# -- the package root installs -----------------------------------------------------------
# `evsed install --package X` pip-installs X as root (into /opt/evsed/venvs/<version> and
# root's own copy, /usr/local/lib/evsed/admin). A package in /opt/evsed or /var/lib/evsed,
# which the service user writes (a firmware update, possibly from a compromised Central
# System, runs as that user), could be swapped between the checks and pip reading it, or
# before: root would then install, and later run, the service user's code. Such a path is
# refused, as is one where the file or a directory on its way belongs to someone else or is
# writable by its group or others (a sticky /tmp is fine).

SERVICE_PASSWD = "root:x:0:0::/root:/bin/sh\nevsed:x:998:998::/var/lib/evsed:/usr/sbin/nologin\n"


def _refused(root: Path, package: Path) -> str:
    rec = Recorder()
    with pytest.raises(install.InstallError) as exc:
        do_install(root, rec, package=package)
    assert rec.commands == []  # refused before anything runs
    assert not (root / "etc/systemd").exists()
    return str(exc.value)


@pytest.mark.parametrize("tree", ["opt/evsed", "var/lib/evsed", "opt/evsed/venvs/1.0.0"])
def test_a_package_where_the_service_user_writes_is_refused(tmp_path: Path, tree: str) -> None:
    """Fails without the change: pip ran on it as root."""
    root = make_root(tmp_path)
    (root / tree).mkdir(parents=True)
    why = _refused(root, wheel(root / tree))
    assert "evsed-1.2.3-py3-none-any.whl: root will not install it" in why
    first = tree.split("/venvs")[0]
    assert f"in {root}/{first}, which the service user writes" in why
    assert "from a directory only root (or you) can write" in why


def test_a_link_to_such_a_package_is_refused_too(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "var/lib/evsed").mkdir(parents=True)
    target = wheel(root / "var/lib/evsed")
    link = tmp_path / "evsed-1.2.3-py3-none-any.whl"
    link.symlink_to(target)
    assert f"in {root}/var/lib/evsed, which the service user writes" in _refused(root, link)


@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_a_package_in_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = make_root(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    package = wheel(shared)
    shared.chmod(mode)
    try:
        why = _refused(root, package)
    finally:
        shared.chmod(0o755)
    assert f"{shared} (the package): writable by its group or others" in why


def test_a_package_writable_by_others_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    package = wheel(tmp_path)
    package.chmod(0o666)
    assert f"{package} (the package): writable by its group or others" in _refused(root, package)


def test_a_package_in_a_sticky_directory_and_the_usual_places_are_installed(
    tmp_path: Path,
) -> None:
    """/tmp (mode 1777) is how systemd/README.md hands root a new wheel: only the file's
    owner can swap it there. ~/dist (the admin's, README step 4) is fine too."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    for package in (wheel(sticky), wheel(tmp_path)):
        root = make_root(tmp_path / package.parent.name)
        rec = Recorder()
        assert do_install(root, rec, package=package) == 0
        pips = [c for c in rec.commands if c[1:4] == ["-m", "pip", "install"]]
        assert len(pips) == 2 and all(c[-1] == f"{package}[pi]" for c in pips)


def test_a_package_owned_by_someone_else_is_named(tmp_path: Path) -> None:
    package = wheel(tmp_path)
    mine = os.stat(package).st_uid
    problems = install.package_problems(
        package, root=tmp_path / "root", owners=frozenset({mine + 1}), top=tmp_path
    )
    assert f"{package} (the package): owned by uid {mine}" in problems
    assert (
        install.package_problems(
            package, root=tmp_path / "root", owners=frozenset({mine}), top=tmp_path
        )
        == []
    )


def test_whose_packages_root_trusts(tmp_path: Path) -> None:
    """Root, whoever runs it, the admin who ran sudo; never the service user."""
    root = make_root(tmp_path, users=SERVICE_PASSWD)
    me = os.getuid()
    assert install.trusted_owners(root, "evsed", {}) == {0, me}
    assert install.trusted_owners(root, "evsed", {"SUDO_UID": "1000"}) == {0, me, 1000}
    assert 998 not in install.trusted_owners(root, "evsed", {"SUDO_UID": "998"})


# -- what --package accepts: one rule, a first install or a later one (safety review) -----


def _installed(tmp_path: Path) -> Path:
    """An installation: `current` in place, as a later `evsed install --package` finds it."""
    root = make_root(tmp_path)
    assert do_install(root, Recorder()) == 0
    assert (root / "opt/evsed/current").is_symlink()
    return root


def _not_a_package(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        path = tmp_path / "src" / "evsed"  # a source tree: pip would build it as root
        path.mkdir(parents=True)
        (path / "setup.py").write_text("import os  # anything, as root\n")
    elif kind == "directory named like an archive":
        path = tmp_path / "src" / "evsed-1.2.4.tar.gz"
        path.mkdir(parents=True)
    else:
        path = tmp_path / "src" / "evsed-1.2.4.txt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PK")
    return path


@pytest.mark.parametrize("installed", [False, True], ids=["first install", "installed already"])
@pytest.mark.parametrize("kind", ["directory", "directory named like an archive", "file"])
def test_a_package_that_is_not_a_wheel_or_archive_file_is_refused(
    tmp_path: Path, installed: bool, kind: str
) -> None:
    """Fails without the change: with `current` already there, only exists() was checked and
    root's pip installed the directory (its setup.py run as root) for its own copy; on a
    first install a directory named like an archive passed the name check."""
    root = _installed(tmp_path) if installed else make_root(tmp_path)
    package = _not_a_package(tmp_path, kind)
    rec = Recorder()
    with pytest.raises(install.InstallError) as exc:
        do_install(root, rec, package=package)
    assert rec.commands == []  # refused before anything runs
    why = str(exc.value)
    if kind == "file":
        assert f"{package.name}: not a wheel or source archive name" in why
    else:
        assert f"{package}: not a file: give the wheel (.whl) or source archive" in why
    assert "\n" not in why  # one line


@pytest.mark.parametrize(
    "name", ["evsed-1.2.4-py3-none-any.whl", "evsed-1.2.4.tar.gz", "evsed-1.2.4.zip"]
)
def test_a_wheel_or_archive_file_is_installed_over_an_installation(
    tmp_path: Path, name: str
) -> None:
    root = _installed(tmp_path)
    package = tmp_path / "dist" / name
    package.parent.mkdir()
    package.write_bytes(b"PK")
    rec = Recorder()
    assert do_install(root, rec, package=package) == 0
    pips = [c for c in rec.commands if c[1:4] == ["-m", "pip", "install"]]
    assert [c[-1] for c in pips] == [f"{package}[pi]"]  # root's own copy, from this file
