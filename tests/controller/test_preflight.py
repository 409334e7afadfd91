"""`evsed config check` finds what `evsed run` would trip on, and `run` stops on the same."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from evsed.controller import cli, config, preflight

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _mock_gpio(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files without [bench] need GPIO, which this machine may not have: gpiozero's mock pins
    # stand in (the check for real pins has its own test in test_preflight.py).
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "evsed.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    try:
        code = cli.main(["config", "check", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.splitlines()


def prefix(tmp_path: Path) -> str:
    return f"{tmp_path / 'evsed.toml'}: "


def test_unknown_meter_model(tmp_path, capsys) -> None:
    code, err = check(tmp_path, '[[connectors]]\n[connectors.meter]\nmodel = "sdm999"\n', capsys)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(
        prefix(tmp_path) + "connectors[0].meter.model: unknown meter model 'sdm999' (built in: "
    )
    assert err[0].endswith("(given: 'sdm999')")


def test_missing_meter_map_names_the_file(tmp_path, capsys) -> None:
    gone = tmp_path / "maps" / "mine.toml"
    code, err = check(tmp_path, f'[grid]\nenabled = true\n[grid.meter]\nmodel = "{gone}"\n', capsys)
    assert code == 2
    assert err == [
        prefix(tmp_path) + f"grid.meter.model: {gone}: cannot read register map: "
        f"No such file or directory (given: '{gone}')"
    ]


def test_broken_meter_map_is_named(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 3\n")
    code, err = check(tmp_path, f'[[connectors]]\n[connectors.meter]\nmodel = "{bad}"\n', capsys)
    assert code == 2
    assert err[0].startswith(prefix(tmp_path) + f"connectors[0].meter.model: {bad}: ")


def test_state_dir_that_is_a_file(tmp_path, capsys) -> None:
    (tmp_path / "state").write_text("")
    code, err = check(tmp_path, "", capsys)
    assert code == 2
    assert err == [
        prefix(tmp_path) + f"state_dir: a directory ({tmp_path / 'state'} is not one) "
        f"(given: '{tmp_path / 'state'}')"
    ]


def test_state_dir_that_cannot_be_created(tmp_path, capsys) -> None:
    # /proc takes no new entries, not even from root (os.access() would say it does).
    path = tmp_path / "evsed.toml"
    path.write_text('state_dir = "/proc/evsed/state"\n')
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{path}: state_dir: a directory evsed can create (/proc: " in err
    assert "(given: '/proc/evsed/state')" in err


def test_state_dir_below_a_file(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("")
    path = tmp_path / "evsed.toml"
    path.write_text(f'state_dir = "{tmp_path / "f" / "state"}"\n')
    with pytest.raises(SystemExit):
        cli.main(["config", "check", str(path)])
    assert f"a directory evsed can create ({tmp_path / 'f'} is not a directory)" in (
        capsys.readouterr().err
    )


def test_missing_state_dir_that_can_be_created_passes_and_is_not_created(tmp_path, capsys):
    code, err = check(tmp_path, "", capsys)
    assert code == 0, err
    assert not (tmp_path / "state").exists()  # checking creates nothing


def sysfs_config(chip: int = 0) -> config.Config:
    return config.parse({"connectors": [{"pilot": {"driver": "sysfs", "pwm_chip": chip}}]})


def test_sysfs_pwm_chip_must_exist(tmp_path) -> None:
    (tmp_path / "pwmchip0").mkdir()
    assert preflight.check(sysfs_config(0), pwm_root=tmp_path).problems == []
    problems = preflight.check(sysfs_config(2), pwm_root=tmp_path).problems
    assert [str(p) for p in problems] == [
        f"connectors[0].pilot.pwm_chip: a kernel PWM chip ({tmp_path / 'pwmchip2'} does not "
        f"exist: enable dtoverlay=pwm-2chan, or pick the chip listed in {tmp_path}) (given: 2)"
    ]


def test_ds18b20_must_be_on_the_bus(tmp_path) -> None:
    cfg = config.parse(
        {"connectors": [{"temperature": {"driver": "ds18b20", "device_id": "28-0316a279c4ff"}}]}
    )
    (tmp_path / "28-0316a279c4ff").mkdir()
    assert preflight.check(cfg, w1_root=tmp_path).problems == []
    problems = preflight.check(cfg, w1_root=tmp_path / "none").problems
    assert [p.path for p in problems] == ["connectors[0].temperature.device_id"]
    assert f"{tmp_path / 'none' / '28-0316a279c4ff'} does not exist" in str(problems[0])


@pytest.mark.parametrize("factory", ["lgpio", "RPiGPIO", "pigpio", "native"])
def test_the_bench_is_refused_on_real_pins(factory: str) -> None:
    cfg = config.load(None)
    problems = preflight.check(cfg, environ={"GPIOZERO_PIN_FACTORY": factory}).problems
    assert len(problems) == 1
    assert problems[0].path == "bench.enabled"
    assert f"GPIOZERO_PIN_FACTORY={factory.lower()}" in problems[0].expected
    forced = config.parse({"bench": {"force": True}})
    assert preflight.check(forced, environ={"GPIOZERO_PIN_FACTORY": factory}).problems == []
    assert preflight.check(cfg, environ={"GPIOZERO_PIN_FACTORY": "mock"}).problems == []


def test_warnings_are_printed_and_pass(tmp_path, capsys) -> None:
    path = tmp_path / "evsed.toml"
    path.write_text(
        "[central_system]\nsecurity_profile = 1\n"
        'authorization_key = "change-me-0123456789abcdef"\n'
        "[[connectors]]\n[connectors.rcd]\nenabled = false\n"
        "[connectors.contactor]\nfeedback_pin = false\n"  # false: not fitted
    )
    report = preflight.check(config.load(path))
    assert report.problems == []
    assert [w.path for w in report.warnings] == [
        "connectors[0].rcd.enabled",
        "connectors[0].contactor.feedback_pin",
        "central_system.authorization_key",
    ]
    assert all("change-me" not in str(w) for w in report.warnings)
    assert cli.main(["config", "check", str(path)]) == 0
    out = capsys.readouterr()
    err = out.err.splitlines()
    assert len(err) == 3
    assert err[0].startswith(f"{path}: warning: connectors[0].rcd.enabled: an RCD/RCM")
    assert err[1].startswith(f"{path}: warning: connectors[0].contactor.feedback_pin: a contactor")
    assert any(
        "authorization_key: replace the example's placeholder with this charger's own key "
        "(16+ characters)" in line
        for line in err
    )
    assert "feedback_pin = false" in out.out  # printed back as it was written


def test_pi_example_on_this_machine_names_each_missing_part(capsys) -> None:
    path = REPO / "config" / "raspberry-pi.toml"
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # `evsed install` copies this file to /etc/evsed: nothing of the Central System may stop
    # its first check on a fresh Pi (no CA file was ever put there), only its wiring.
    assert "central_system.ca_file" not in err
    assert f"{path}: warning: central_system.authorization_key" in err


def test_run_stops_with_the_same_lines_and_exit_2(tmp_path) -> None:
    path = tmp_path / "evsed.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[[connectors]]\n[connectors.meter]\nmodel = "sdm999"\n'
        '[grid]\nenabled = true\n[grid.meter]\nmodel = "nope"\n'
    )
    runs = [
        subprocess.run(
            [sys.executable, "-m", "evsed.controller.cli", *argv, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        for argv in (["config", "check"], ["run", "--config"])
    ]
    checked, ran = runs
    assert checked.returncode == ran.returncode == 2
    assert ran.stderr == checked.stderr
    lines = ran.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "connectors[0].meter.model",
        "grid.meter.model",
    ]
    assert "Traceback" not in ran.stderr
    assert not (tmp_path / "state").exists()


def test_without_the_bench_the_drivers_need_real_gpio(monkeypatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY")
    from gpiozero import BadPinFactory, Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Device._default_pin_factory().close()
    except BadPinFactory:
        pass
    else:
        pytest.skip("this machine has GPIO")
    cfg = config.parse({"central_system": {"enabled": False}})
    problems = preflight.check(cfg).problems
    assert [p.path for p in problems] == [
        "GPIO"
    ]  # the machine lacks it: no key of the file is to blame
    assert "gpiozero has none here" in str(problems[0])
    assert "pip install 'evsed[pi]'" in str(problems[0])
    assert "set enabled = true under [bench]" in str(problems[0])
    # The bench brings its own pins.
    assert preflight.check(config.load(None)).problems == []
