"""`evsed config check`: one line per problem naming the key, the value and what was expected."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from evsed.controller import cli, config, tomlout

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _mock_gpio(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files without [bench] need GPIO, which this machine may not have: gpiozero's mock pins
    # stand in (the check for real pins has its own test in test_preflight.py).
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


def check(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "evsed.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    out = capsys.readouterr()
    return exc.value.code, out.err.splitlines(), out.out


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # wrong type
        ('[[connectors]]\nphases = "three"\n', "connectors[0].phases: input should be 1 or 3"),
        ('[bench]\ncontrol_port = "abc"\n', "bench.control_port: input should be a valid integer"),
        # unknown key (a typo)
        ('[identity]\nvendr = "x"\n', "identity.vendr: unknown key"),
        ("[[connectors]]\nrated_curent_a = 16\n", "connectors[0].rated_curent_a: unknown key"),
        # out-of-range current
        (
            "[[connectors]]\nrated_current_a = 100\n",
            "connectors[0].rated_current_a: input should be less than or equal to 80 (given: 100)",
        ),
        (
            "[[connectors]]\nrated_current_a = 3\n",
            "connectors[0].rated_current_a: input should be greater than or equal to 6 (given: 3)",
        ),
        (
            "[[connectors]]\nrated_current_a = 16\nmax_current_a = 32\n",
            "max_current_a 32.0 exceeds rated_current_a 16.0",
        ),
        # a pin used twice
        (
            "[[connectors]]\n[connectors.contactor]\nrelay_pin = 18\n",
            "connectors[0].contactor.relay_pin: a free GPIO "
            "(GPIO 18 is already used by connectors[0].pilot.pin) (given: 18)",
        ),
        (
            "[[connectors]]\n[connectors.rcd]\ntest_pin = 9\n",
            "connectors[0].rcd.test_pin: a free GPIO (GPIO 9 is already used by adc (SPI0 MISO))",
        ),
        (
            "[[connectors]]\n[[connectors]]\n",
            "connectors[1].pilot.pin: a free GPIO "
            "(GPIO 18 is already used by connectors[0].pilot.pin)",
        ),
        # non-TOML and binary
        ("x = [\n", "evsed.toml: not valid TOML: "),
        (b"\x00\xff\xfe", "evsed.toml: not UTF-8 text (a binary file?): byte 1"),
    ],
)
def test_each_problem_gets_one_clear_line_and_exit_2(tmp_path, capsys, text, needle) -> None:
    code, err, out = check(tmp_path, text, capsys)
    assert code == 2
    assert out == ""
    assert any(needle in line for line in err), err
    assert all(line.startswith(str(tmp_path / "evsed.toml") + ": ") for line in err)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            '[identity]\nvendr = "x"\n',
            "identity.vendr: unknown key; did you mean 'vendor'?",
        ),
        ("stat_dir = 'x'\n", "stat_dir: unknown key; did you mean 'state_dir'?"),
        ("[bench]\ncontrol_prot = 0\n", "did you mean 'control_port'?"),
        ("[[connectors]]\nrated_curent_a = 16\n", "did you mean 'rated_current_a'?"),
        (
            "[[connectors]]\n[connectors.meter]\nprot = 1\n",
            "connectors[0].meter.prot: unknown key; did you mean 'port'?",
        ),
        (
            "[grid.meter]\nhots = 'x'\n",
            "grid.meter.hots: unknown key; did you mean 'host'?",
        ),
        # Nothing close: no guess, the old advice.
        ("[identity]\nzzzz = 1\n", "identity.zzzz: unknown key; check the spelling"),
        # Case aside, and a key written in the wrong section.
        (
            "[central_system]\nURL = 'ws://x'\n",
            "central_system.URL: unknown key; did you mean 'url'?",
        ),
        (
            "[central_system]\ncontrol_port = 0\n",
            "central_system.control_port: unknown key; 'control_port' is a key of [bench]",
        ),
        (
            "[identity]\nrated_current_a = 16\n",
            "'rated_current_a' is a key of [[connectors]]",
        ),
    ],
)
def test_an_unknown_key_suggests_the_close_known_key_of_its_section(
    tmp_path, capsys, text, line
) -> None:
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert any(line in x for x in err), err


@pytest.mark.parametrize(
    "text",
    [
        # The README's prose says "authorisation": a likely misspelling of a secret key.
        '[central_system]\nauthorisation_key = "MySecretKey-0123456789"\n',
        '[central_system]\nclient_key_pasword = "MySecretKey-0123456789"\n',
        # A misspelt section: the URL with its password and the key inside it.
        '[central_sytem]\nurl = "wss://user:MySecretKey-0123456789@cs.example/ocpp"\n'
        'authorization_key = "MySecretKey-0123456789"\n',
    ],
)
def test_an_unknown_key_never_prints_its_value(tmp_path, capsys, text) -> None:
    """A new user's trial: a misspelt key printed its value (given: 'MySecret...'), and a
    misspelt section all of it, into `config check` and the journal of `evsed run`."""
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert err and not any("MySecretKey" in line for line in err), err
    assert any("unknown key; did you mean" in line for line in err), err


def test_several_problems_are_all_reported(tmp_path, capsys) -> None:
    code, err, _ = check(
        tmp_path,
        "[identity]\nvendr = 1\n[[connectors]]\nphases = 2\nrated_current_a = 99\n",
        capsys,
    )
    assert code == 2
    assert len(err) == 3


def test_unreadable_file(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(tmp_path / "nope.toml")])
    assert exc.value.code == 2
    # Fails without the change: "nope.toml: (file): a readable file (No such file or
    # directory) (given: .../nope.toml)".
    err = capsys.readouterr().err
    assert err == f"{tmp_path / 'nope.toml'}: cannot read the file: No such file or directory\n"


def test_directory_is_unreadable(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"{tmp_path}: cannot read the file: Is a directory\n"


def test_secrets_never_printed(tmp_path, capsys) -> None:
    key = "s3cret-key-0123456789"
    text = (
        "[central_system]\nsecurity_profile = 1\n"
        f'authorization_key = "{key}"\nurl = "ws://127.0.0.1:9000/ocpp"\n'
    )
    path = tmp_path / "ok.toml"
    path.write_text(text)
    assert cli.main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert key not in out
    assert 'authorization_key = "***"' in out
    # a password in the URL is refused, and the refusal does not echo it
    code, err, _ = check(
        tmp_path, '[central_system]\nurl = "ws://cp:hunter2@127.0.0.1/ocpp"\n', capsys
    )
    assert code == 2
    assert "hunter2" not in "\n".join(err)


def test_resolved_output_is_toml_that_loads_back_to_the_same_config(capsys) -> None:
    assert cli.main(["config", "check"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    # No file means the bench defaults, bench included (a file needs its [bench] section).
    assert config.parse(printed) == config.load(None) == config.simulated()
    assert config.simulated().bench.enabled


def test_security_profile_rules() -> None:
    with pytest.raises(config.ConfigError, match="needs a wss:// url"):
        config.parse({"central_system": {"security_profile": 2, "authorization_key": "k" * 16}})
    with pytest.raises(config.ConfigError, match="needs client_cert and client_key"):
        config.parse({"central_system": {"security_profile": 3, "url": "wss://h/ocpp"}})


def test_two_connectors_on_one_tcp_meter_are_refused() -> None:
    """Each would read the other's EV: the idle one's load with its contactor open is taken
    for a weld (review of the weld-by-meter judgement)."""
    data = tomllib.loads((REPO / "config" / "sim-two-connectors.toml").read_text())
    first, second = data["connectors"][0]["meter"], data["connectors"][1]["meter"]
    second.update(host=first["host"].upper() + " ", port=first["port"])
    with pytest.raises(config.ConfigError, match=r"connectors\[1\]\.meter: the meter at"):
        config.parse(data)
    second["device_id"] = 2  # another device behind the same gateway is another meter
    config.parse(data)


@pytest.mark.parametrize("name", ["sim.toml", "raspberry-pi.toml", "sim-two-connectors.toml"])
def test_shipped_examples_are_valid(name: str, capsys) -> None:
    assert cli.main(["config", "check", "--file-only", str(REPO / "config" / name)]) == 0


def test_shipped_bench_examples_run_here(capsys) -> None:
    # The bench examples need nothing of the machine: the full check passes too.
    for name in ("sim.toml", "sim-two-connectors.toml"):
        assert cli.main(["config", "check", str(REPO / "config" / name)]) == 0


def test_console_entry_point_exit_status(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[connectors]]\nrated_current_a = 200\n")
    proc = subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "connectors[0].rated_current_a" in proc.stderr


def test_toml_writer_round_trips_nested_tables() -> None:
    data = {
        "a": 1,
        "t": {"b": [1, 2], "s": 'x"y', "u": {"f": 1.5}},
        "l": [{"x": True}, {"x": False}],
    }
    assert tomllib.loads(tomlout.dumps(data)) == data


def test_serial_port_used_twice(tmp_path, capsys) -> None:
    code, err, _ = check(
        tmp_path,
        '[reader]\nport = "/dev/ttyUSB0"\n[[connectors]]\n[connectors.meter]\n'
        'transport = "rtu"\nserial_port = "/dev/ttyUSB0"\n',
        capsys,
    )
    assert code == 2
    assert any("serial port /dev/ttyUSB0 is already used by reader.port" in line for line in err)


# ---------------------------------------------------------------- ADC channels, several connectors

# Connector 2 on GPIOs of its own, so that only its ADC channels can clash.
SECOND = (
    "[[connectors]]\n[[connectors]]\n[connectors.pilot]\npin = 13\n{pilot}"
    "[connectors.contactor]\nrelay_pin = 16\nfeedback_pin = 26\n"
    "[connectors.rcd]\nfault_pin = 6\ntest_pin = 12\n{rest}"
)


@pytest.mark.parametrize(
    ("pilot", "rest", "needle"),
    [
        (
            "sense_channel = 0\n",
            "[connectors.proximity]\nchannel = 4\n[connectors.temperature]\nchannel = 5\n",
            "connectors[1].pilot.sense_channel: a free ADC channel "
            "(channel 0 is already used by connectors[0].pilot.sense_channel) (given: 0)",
        ),
        (
            "sense_channel = 3\n",
            "[connectors.proximity]\nchannel = 4\n[connectors.temperature]\nchannel = 1\n",
            "connectors[1].temperature.channel: a free ADC channel "
            "(channel 1 is already used by connectors[0].proximity.channel) (given: 1)",
        ),
        (  # a clash with a default the user never wrote still names the value in effect
            "sense_channel = 3\n",
            "[connectors.temperature]\nchannel = 5\n",
            "connectors[1].proximity.channel: a free ADC channel "
            "(channel 1 is already used by connectors[0].proximity.channel) (given: 1 (default))",
        ),
    ],
)
def test_adc_channel_used_twice_is_one_line_and_exit_2(
    tmp_path, capsys, pilot: str, rest: str, needle: str
) -> None:
    code, err, out = check(tmp_path, SECOND.format(pilot=pilot, rest=rest), capsys)
    assert code == 2
    assert out == ""
    assert err == [f"{tmp_path / 'evsed.toml'}: {needle}"]


def test_adc_channel_clash_within_one_connector(tmp_path, capsys) -> None:
    code, err, _ = check(tmp_path, "[[connectors]]\n[connectors.proximity]\nchannel = 0\n", capsys)
    assert code == 2
    assert any(
        "connectors[0].proximity.channel: a free ADC channel "
        "(channel 0 is already used by connectors[0].pilot.sense_channel) (given: 0)" in line
        for line in err
    )


def test_channels_a_connector_does_not_read_are_free() -> None:
    # A tethered cable reads no PP and a DS18B20 no ADC: their channels are not claimed.
    config.parse(
        {
            "connectors": [
                {
                    "proximity": {"channel": 0, "fixed_cable_a": 32},
                    "temperature": {"driver": "ds18b20", "channel": 0, "device_id": "28-01"},
                }
            ]
        }
    )


def test_two_connector_example_is_valid(capsys) -> None:
    path = REPO / "config" / "sim-two-connectors.toml"
    assert cli.main(["config", "check", str(path)]) == 0
    loaded = config.load(path)
    assert len(loaded.connectors) == 2
    assert loaded.grid.enabled


# ---------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[[connectors]]\nrated_current_a = "32"\n',
            "connectors[0].rated_current_a: a number, written without quotes: "
            "rated_current_a = 32 (given: '32')",
        ),
        (
            '[central_system]\nenabled = "off"\n',
            "central_system.enabled: true or false (TOML's booleans, without quotes) "
            "(given: 'off')",
        ),
        (
            '[central_system]\nsecurity_profile = "2"\n',
            "central_system.security_profile: an integer, written without quotes: "
            "security_profile = 2 (given: '2')",
        ),
        (
            "[[connectors]]\n[connectors.meter]\nport = 502.0\n",
            "connectors[0].meter.port: input should be a valid integer (given: 502.0)",
        ),
        (
            "[[connectors]]\n[connectors.pilot]\nsense_gain = 0.0\n",
            "connectors[0].pilot.sense_gain: a non-zero gain",
        ),
        (
            "[[connectors]]\n[connectors.pilot]\nsense_gain = nan\n",
            "connectors[0].pilot.sense_gain: input should be a finite number (given: nan)",
        ),
        (
            "[[connectors]]\n[connectors.pilot]\nsense_offset = inf\n",
            "connectors[0].pilot.sense_offset: input should be a finite number",
        ),
    ],
)
def test_types_are_strict(tmp_path, capsys, text, needle) -> None:
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert any(needle in line for line in err), err


def test_real_types_still_pass() -> None:
    # An integer where a number is expected, and paths as strings, are what TOML gives.
    cfg = config.parse(
        {"state_dir": "/tmp/x", "connectors": [{"rated_current_a": 16, "phases": 1}]}
    )
    assert cfg.state_dir == Path("/tmp/x")
    assert cfg.connectors[0].rated_current_a == 16.0


# ---------------------------------------------------------------- sysfs pin and channel


@pytest.mark.parametrize(("pin", "channel"), [(12, 0), (18, 0), (13, 1), (19, 1)])
def test_sysfs_pin_and_channel_agree(pin: int, channel: int) -> None:
    pilot = {"driver": "sysfs", "pin": pin, "pwm_channel": channel}
    assert config.parse({"connectors": [{"pilot": pilot}]}).connectors[0].pilot.pin == pin


@pytest.mark.parametrize(
    ("pilot", "needle"),
    [
        (
            "pin = 18\npwm_channel = 1\n",
            "connectors[0].pilot.pwm_channel: channel 0 for GPIO18 (a Raspberry Pi routes "
            "PWM channel 0 to GPIO12/18 and channel 1 to GPIO13/19) (given: 1)",
        ),
        (
            "pin = 19\n",
            "connectors[0].pilot.pwm_channel: channel 1 for GPIO19 (a Raspberry Pi routes "
            "PWM channel 0 to GPIO12/18 and channel 1 to GPIO13/19) (given: its default)",
        ),
        (
            "pin = 4\n",
            'connectors[0].pilot.pin: a GPIO with hardware PWM for driver = "sysfs" '
            "(one of GPIO12, GPIO13, GPIO18, GPIO19) (given: 4)",
        ),
    ],
)
def test_sysfs_pin_and_channel_mismatch(tmp_path, capsys, pilot: str, needle: str) -> None:
    text = f'[[connectors]]\n[connectors.pilot]\ndriver = "sysfs"\n{pilot}'
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert err == [f"{tmp_path / 'evsed.toml'}: {needle}"]


def test_gpiozero_pilot_needs_no_pwm_channel() -> None:
    config.parse({"connectors": [{"pilot": {"pin": 4, "pwm_channel": 1}}]})


# ---------------------------------------------------------------- the bench only where asked for


def pi_without_bench() -> str:
    text = (REPO / "config" / "raspberry-pi.toml").read_text()
    head, sep, tail = text.partition("[bench]\nenabled = false\n")
    assert sep, "the example's [bench] section moved: update this test"
    return head + tail


def test_a_file_without_a_bench_section_runs_no_bench(tmp_path, capsys) -> None:
    from evsed.controller.run import Stack

    path = tmp_path / "pi.toml"
    path.write_text(pi_without_bench())
    cfg = config.load(path)
    assert not cfg.bench.enabled
    assert Stack(cfg).use_bench is False  # what `evsed run` would build: no bench
    assert cli.main(["config", "check", "--file-only", str(path)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["bench"]["enabled"] is False
    assert not config.parse({"central_system": {"charge_point_id": "X"}}).bench.enabled


def test_the_bench_runs_where_asked_for() -> None:
    from evsed.controller.demo import demo_config
    from evsed.controller.run import Stack

    assert config.load(None).bench.enabled  # no file: the bench defaults
    assert config.load(REPO / "config" / "sim.toml").bench.enabled
    assert config.load(REPO / "config" / "sim-two-connectors.toml").bench.enabled
    assert config.parse({"bench": {"control_port": 0}}).bench.enabled  # a [bench] section
    assert not config.parse({"bench": {"enabled": False}}).bench.enabled
    assert Stack(demo_config(Path("state"), "ws://127.0.0.1:9/ocpp")).use_bench


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            '[[connectors]]\n[connectors.pilot]\ndriver = "sysfs"\n',
            'connectors[0].pilot.driver = "sysfs"',
        ),
        (
            '[[connectors]]\n[connectors.meter]\ntransport = "rtu"\n',
            'connectors[0].meter.transport = "rtu"',
        ),
        (
            '[grid]\nenabled = true\n[grid.meter]\ntransport = "rtu"\n'
            'serial_port = "/dev/ttyUSB1"\n',
            'grid.meter.transport = "rtu"',
        ),
    ],
)
def test_the_bench_is_refused_next_to_real_drivers(tmp_path, capsys, text, named) -> None:
    code, err, _ = check(tmp_path, "[bench]\n" + text, capsys)
    assert code == 2
    assert len(err) == 1
    assert f"bench.enabled: no simulated bench next to real hardware ({named})" in err[0]
    assert "force = true" in err[0]
    # Forced, it runs; without the bench, the same drivers are a charger's.
    assert config.parse(tomllib.loads("[bench]\nforce = true\n" + text)).bench.enabled
    assert not config.parse(tomllib.loads(text)).bench.enabled


def test_client_key_password_is_masked(tmp_path, capsys) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[central_system]\nclient_key_password = "pa55-phrase"\n')
    assert cli.main(["config", "check", "--file-only", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pa55-phrase" not in out
    assert 'client_key_password = "***"' in out
    code, err, _ = check(tmp_path, "[central_system]\nclient_key_password = 5\n", capsys)
    assert code == 2 and any("client_key_password" in line for line in err)


def test_false_means_a_part_is_not_fitted_and_frees_its_pin(tmp_path, capsys) -> None:
    text = (
        "[[connectors]]\n[connectors.contactor]\nfeedback_pin = false\n"
        "[connectors.rcd]\ntest_pin = false\n"
        "[connectors.lock]\nenabled = true\nunlock_pin = false\nfeedback_pin = 27\n"
    )
    path = tmp_path / "pins.toml"
    path.write_text(text)
    cfg = config.load(path)
    c = cfg.connectors[0]
    assert (c.contactor.feedback_pin, c.rcd.test_pin, c.lock.unlock_pin) == (None, None, None)
    assert c.lock.feedback_pin == 27  # the contactor's default pin, now free
    assert cli.main(["config", "check", "--file-only", str(path)]) == 0
    assert config.parse(tomllib.loads(capsys.readouterr().out)) == cfg
    code, err, _ = check(tmp_path, "[[connectors]]\n[connectors.rcd]\ntest_pin = true\n", capsys)
    assert code == 2 and "connectors[0].rcd.test_pin: input should be a valid integer" in err[0]


def test_ds18b20_needs_its_device_id(tmp_path, capsys) -> None:
    text = '[[connectors]]\n[connectors.temperature]\ndriver = "ds18b20"\n'
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert err == [
        f"{tmp_path / 'evsed.toml'}: connectors[0].temperature.device_id: the sensor's 1-wire "
        'id for driver = "ds18b20", e.g. "28-0316a279c4ff" (ls /sys/bus/w1/devices) '
        "(given: its default)"
    ]
    code, err, _ = check(tmp_path, text + 'device_id = "../../etc"\n', capsys)
    assert code == 2 and "(given: '../../etc')" in err[0]


def test_a_table_given_is_named_by_its_keys(tmp_path, capsys) -> None:
    """Fails without the change: "(given: a table of url)", read as a table of URLs."""
    code, err, _ = check(tmp_path, '[central_system]\nurl = "wss://cs.example/ocpp"\n', capsys)
    assert code == 2
    assert err[0].endswith("(given: a table with the key url)"), err
    code, err, _ = check(tmp_path, '[identiti]\nvendor = "x"\nmodel = "y"\n', capsys)
    assert err[0].endswith(
        "identiti: unknown key; did you mean 'identity'? "
        "(given: a table with the keys vendor, model)"
    ), err


def test_a_file_evsed_may_not_read_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "evsed.toml"
    path.write_text("")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # as root, chmod 000 would not stop it
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"{path}: cannot read the file: Permission denied\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            '[central_system]\nsecurity_profile = "1"\n',
            "central_system.security_profile: an integer, written without quotes: "
            "security_profile = 1 (given: '1')",
        ),
        (
            '[central_system]\nreconnect_backoff_max_s = "30"\n',
            "central_system.reconnect_backoff_max_s: a number, written without quotes: "
            "reconnect_backoff_max_s = 30 (given: '30')",
        ),
        (
            '[central_system]\nenabled = "false"\n',
            "central_system.enabled: true or false, written without quotes: enabled = false "
            "(given: 'false')",
        ),
        (
            'logging = "DEBUG"\n',
            "logging: a table: [logging] on a line of its own, its keys under it (given: 'DEBUG')",
        ),
        (
            "connectors = 1\n",
            "connectors: tables: [[connectors]] on a line of its own for each, its keys under "
            "it (given: 1)",
        ),
    ],
)
def test_type_problems_are_said_in_tomls_words(tmp_path, capsys, text, line) -> None:
    """Fails without the change: "input should be a valid dictionary or instance of
    Logging", "input should be a valid integer (given: '1')" with no word of the quotes."""
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 2
    assert err == [f"{tmp_path / 'evsed.toml'}: {line}"]


def test_a_quoted_word_is_not_suggested_as_a_number(tmp_path, capsys) -> None:
    _, err, _ = check(tmp_path, '[central_system]\nsecurity_profile = "one"\n', capsys)
    assert err[0].endswith("security_profile: input should be a valid integer (given: 'one')")
