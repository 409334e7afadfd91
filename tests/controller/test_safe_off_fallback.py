"""The unit's ExecStopPost when the version that just ended cannot run (safety review):
`ExecStopPost=/opt/evsed/current/bin/evsed safe-off` ran the code of a firmware update
that broke at import, so safe-off failed too and the outputs stayed as they were. Now a
root-owned script tries `current`, then root's copy, then `previous`, each through the
minimal entry point (evsed.controller.safeoff), which imports only the pins' configuration
and the hal, and reads a newer version's configuration."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, install, safeoff

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"

#: A configuration of a newer version: keys this one does not know, in every section.
NEWER = """
state_dir = "{state}"
future_setting = true
[central_system]
enabled = false
brand_new_option = 3
[future_section]
x = 1
[[connectors]]
rated_current_a = 16
[connectors.pilot]
pin = 18
new_pilot_key = "x"
[connectors.contactor]
relay_pin = 17
feedback_pin = 27
settle_s = 5.0
weld_check = "strict"
[connectors.heater]
pin = 4
[[connectors]]
[connectors.pilot]
pin = 13
sense_channel = 3
[connectors.contactor]
relay_pin = 6
feedback_pin = 26
[connectors.rcd]
fault_pin = 20
test_pin = 21
"""


def newer_config(tmp_path: Path) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(NEWER.format(state=tmp_path / "state"))
    return path


def _mock_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    return env


@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    f.close()


def _output(factory: MockFactory, gpio: int) -> float | None:
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


def test_a_newer_versions_configuration_is_read_for_its_pins(tmp_path, factory, capsys) -> None:
    path = newer_config(tmp_path)
    with pytest.raises(config.ConfigError):
        config.load(path)  # what `evsed safe-off` read before: exit 2, nothing driven
    assert safeoff.run(path, pin_factory=factory) == safeoff.EXIT_SAFE
    assert _output(factory, 17) == 0 and _output(factory, 6) == 0  # relays off
    assert _output(factory, 18) == 1.0 and _output(factory, 13) == 1.0  # pilots +12 V
    out = capsys.readouterr().out
    assert "connector 1: relay GPIO17 off, pilot GPIO18 +12 V" in out


def test_an_unreadable_section_fails_its_output_alone(tmp_path, factory, capsys) -> None:
    path = newer_config(tmp_path)
    path.write_text(path.read_text().replace("relay_pin = 6", "relay_pin = 99"))
    assert safeoff.run(path, pin_factory=factory) == safeoff.EXIT_NOT_SAFE
    err = capsys.readouterr().err
    assert (
        "connector 2: relay (pin unknown) not driven off: connectors[1].contactor.relay_pin" in err
    )
    assert "NOT SAFE" in err
    # Everything else driven all the same.
    assert _output(factory, 17) == 0 and _output(factory, 13) == 1.0


def test_the_cli_reads_a_newer_configuration_too(tmp_path) -> None:
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "evsed.controller.cli",
            "safe-off",
            "-c",
            str(newer_config(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=_mock_env(),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr  # was 2: "future_setting: unknown key"


PROBE = """
import json, os, sys
from pathlib import Path
from evsed.controller import safeoff
code = safeoff.run(Path(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
sys.stdout.flush()
os._exit(code)
"""


def test_the_minimal_entry_point_imports_neither_ocpp_nor_the_store(tmp_path) -> None:
    ran = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(newer_config(tmp_path))],
        capture_output=True,
        text=True,
        env=_mock_env(),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    modules = json.loads(ran.stdout.splitlines()[-1])
    assert "evsed.hal.pilot.pwm_sysfs" in modules  # it did load what drives the outputs
    unwanted = (
        "evsed.controller.ocpp16",
        "evsed.controller.store",
        "evsed.controller.charger",
        "evsed.controller.cli",
        "evsed.controller.run",
        "evsed.controller.firmware",
        "websockets",
        "ocpp",
        "pymodbus",
        "serial",
        "sqlite3",
    )
    assert [m for m in modules if any(m == u or m.startswith(u + ".") for u in unwanted)] == []


# -- the unit's ExecStopPost with fake venvs in a temporary root ---------------------------


def _venv(path: Path, *, evsed_init: str | None = None) -> Path:
    """A real venv (no pip). ``evsed_init``: its evsed is a package whose __init__ is
    this (a firmware that breaks at import); else it sees this test's evsed and its
    dependencies (a .pth), as root's copy or `previous` would."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    site = Path(
        subprocess.run(
            [
                str(path / "bin/python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    if evsed_init is not None:
        (site / "evsed").mkdir()
        (site / "evsed/__init__.py").write_text(evsed_init)
    else:
        ours = sysconfig.get_paths()["purelib"]
        (site / "ours.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return path


def _exec_stop_post(root: Path, config_file: Path) -> list[str]:
    """The unit's ExecStopPost, with /opt/evsed and /usr/local/lib/evsed under ``root``."""
    text = (SYSTEMD / "evsed.service").read_text()
    line = re.search(r"^ExecStopPost=(.*)$", text, re.M)
    assert line
    argv = shlex.split(line[1])
    assert argv[0] == f"/{install.SAFE_OFF}"  # root's, outside /opt/evsed
    script = str(SYSTEMD / "evsed-safe-off.sh")  # what `evsed install` copies there

    def mapped(arg: str) -> str:
        if arg == "/etc/evsed/evsed.toml":
            return str(config_file)
        return f"{root}{arg}" if arg.startswith(("/opt/evsed", "/usr/local/lib/evsed")) else arg

    return ["/bin/sh", script, *map(mapped, argv[1:])]


BROKEN = "raise ImportError('firmware 9.9.9 is broken: no module named ocpp16.profiles.x')\n"


@pytest.mark.parametrize("good", ["usr/local/lib/evsed/admin", "opt/evsed/previous"])
def test_a_current_that_cannot_import_still_gets_the_outputs_safe(tmp_path, good) -> None:
    root = tmp_path / "root"
    _venv(root / "opt/evsed/current", evsed_init=BROKEN)
    _venv(root / good)  # the other fallback is not there at all
    argv = _exec_stop_post(root, newer_config(tmp_path))
    ran = subprocess.run(argv, capture_output=True, text=True, env=_mock_env(), timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"cannot import evsed in {root}/opt/evsed/current" in ran.stderr
    assert "firmware 9.9.9 is broken" in ran.stderr
    assert f"{root}/opt/evsed/current could not run (exit status 3)" in ran.stderr
    assert "connector 1: relay GPIO17 off, pilot GPIO18 +12 V" in ran.stdout
    assert "connector 2: relay GPIO6 off, pilot GPIO13 +12 V" in ran.stdout
    assert f"safe, by {root}/{good}" in ran.stdout


def test_could_not_run_and_could_not_drive_are_told_apart(tmp_path) -> None:
    """No GPIO backend in root's copy (no mock factory, no lgpio here): it ran, and could
    not drive: exit 1 for that copy, and for the unit, after every copy was tried."""
    root = tmp_path / "root"
    _venv(root / "opt/evsed/current", evsed_init=BROKEN)
    _venv(root / "usr/local/lib/evsed/admin")
    env = _mock_env()
    del env["GPIOZERO_PIN_FACTORY"]
    probe = subprocess.run([sys.executable, "-c", "import lgpio"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this machine has lgpio")
    argv = _exec_stop_post(root, newer_config(tmp_path))
    ran = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert f"{root}/opt/evsed/current could not run (exit status 3)" in ran.stderr
    assert f"{root}/usr/local/lib/evsed/admin could not drive every output" in ran.stderr
    assert f"{root}/opt/evsed/previous/bin/python missing" in ran.stderr
    assert "NOT SAFE: no copy of evsed drove every output" in ran.stderr


def _stub(venv: Path, status: int, said: str = "") -> None:
    """A copy of evsed whose safe-off says `said` and exits `status` (the script's view of
    a copy: its python's exit status)."""
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin/python"
    python.write_text(f"#!/bin/sh\necho {shlex.quote(said)} >&2\nexit {status}\n")
    python.chmod(0o755)


def _script(root: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    argv = _exec_stop_post(root, tmp_path / "evsed.toml")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("then", [0, 1, 4])
def test_a_welded_contactor_fails_the_unit_whatever_the_next_copy_says(
    tmp_path: Path, then: int
) -> None:
    """Fails without the change: exit 4 read as 'could not run', and a copy from before the
    weld check (exit 0: it drove the relay off and never read the feedback) then made the
    unit's ExecStopPost 0."""
    root = tmp_path / "root"
    _stub(root / "opt/evsed/current", 4, "contactor of connector 1 still closed")
    _stub(root / "usr/local/lib/evsed/admin", then)
    ran = _script(root, tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    current, admin = root / "opt/evsed/current", root / "usr/local/lib/evsed/admin"
    assert f"{current} found a contactor still closed after opening (welded?)" in ran.stderr
    assert "NOT SAFE: a contactor still reads closed after its relay was driven off" in ran.stderr
    assert "or whether it opened is unknown" in ran.stderr  # exit 4 covers a feedback not read
    assert f"found by {current}" in ran.stderr
    assert f"{admin}({then})" in ran.stderr  # the next copy was tried all the same
    assert "safe, by" not in ran.stdout


def test_each_exit_status_of_a_copy_is_told_as_what_it_means(tmp_path: Path) -> None:
    """Exit 2 of safe-off is the configuration unreadable AND no record of the outputs of
    `evsed run` (the record is driven when the file does not read). Fails without the
    change: the script said only 'could not read the configuration', as if a broken file
    alone had left the outputs undriven."""
    root = tmp_path / "root"
    _stub(root / "opt/evsed/current", 2)
    _stub(root / "usr/local/lib/evsed/admin", 1)
    ran = _script(root, tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    current, admin = root / "opt/evsed/current", root / "usr/local/lib/evsed/admin"
    assert (
        f"{current} could not read the configuration and found no record of the outputs: "
        "drove nothing; trying the next copy" in ran.stderr
    )
    assert f"{admin} could not drive every output; trying the next copy" in ran.stderr
    assert "NOT SAFE: no copy of evsed drove every output" in ran.stderr
