"""What a newcomer following the README tripped on (issue 13's new-user trial)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller import cli


def test_selftest_checks_the_wiring_before_the_central_system_is_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Commissioning comes before the Central System's details: a CA file not copied over
    # yet and a state directory that cannot be created must not stop the self-test (it
    # talks to no Central System and stores nothing), though `config check` names both.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{blocker / "state"}"\n'
        "[central_system]\n"
        f'ca_file = "{tmp_path / "cs-ca.pem"}"\n'
        'authorization_key = "change-me-0123456789abcdef"\n'
        "[bench]\ncontrol_port = 0\n"
        "[[connectors]]\n[connectors.meter]\nport = 0\n"
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "central_system.ca_file" in err and "state_dir" in err

    assert cli.main(["selftest", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    # The relay rows (no --close-relay) and one part the bench does not fit: skipped, counted.
    assert captured.out.rstrip().endswith("\nall 7 checks passed, 3 skipped")
    assert "central_system" not in captured.err and "state_dir" not in captured.err


@pytest.mark.parametrize("kind", ["below a file", "a plain file"])
def test_status_where_no_socket_can_be_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # A state_dir written wrong (here: under a file) or a --socket naming something else
    # gave `evsed status` (and the running-service probe of `selftest`) a NotADirectoryError
    # or ConnectionRefused traceback instead of "evsed is not running".
    plain = tmp_path / "plain"
    plain.write_text("")
    socket = plain / "status.sock" if kind == "below a file" else plain
    assert cli.main(["status", "--socket", str(socket)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evsed status: ")


@pytest.mark.parametrize(
    ("cs", "shown"),
    [
        (
            {"url": "ws://cs.example:9000/ocpp", "charge_point_id": "PI-1"},
            "ws://cs.example:9000/ocpp/PI-1",
        ),
        (
            {"url": "ws://cs.example/ocpp/{charge_point_id}/?v=1", "charge_point_id": "PI-1"},
            # The query's values masked (57cd032: a ?token= must not reach status).
            "ws://cs.example/ocpp/PI-1/?v=***",
        ),
        (
            {"url": "wss://cs.example", "charge_point_id": "PI-1", "tls_without_auth": True},
            "wss://cs.example/PI-1",
        ),
    ],
)
def test_status_shows_the_url_the_link_dials(cs: dict[str, object], shown: str) -> None:
    # The trial: `evsed status` printed "url: ws://127.0.0.1:9000/ocpp" while the journal
    # said "cannot connect to ws://127.0.0.1:9000/ocpp/CP-SIM-1": the template, not the
    # address a 404 is about.
    from evsed.controller.clock import SystemClock
    from evsed.controller.config import Config
    from evsed.controller.status import LinkTracker

    link = LinkTracker(Config.model_validate({"central_system": cs}), SystemClock())
    assert link.url == shown
    link.observe("connect_failed", {"url": "wss://other.example/PI-1", "http_status": 404})
    assert link.url == "wss://other.example/PI-1"


REPO = Path(__file__).resolve().parents[2]


def test_the_bench_examples_keep_no_state_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config/sim.toml said state_dir = "state": `evsed run --config config/sim.toml` made
    # ./state wherever it was typed (issue 13). It now takes the per-user default.
    from evsed.controller import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    for name in ("sim.toml", "sim-two-connectors.toml"):
        assert config.load(REPO / "config" / name).state_dir == tmp_path / "xdg" / "evsed"


def test_relative_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evsed.controller import config

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "evsed.toml"
    path.write_text(
        'state_dir = "state"\n'
        '[central_system]\nca_file = "../pki/ca.pem"\nclient_cert = "~/cp.pem"\n'
        'client_key = "/etc/evsed/cp-key.pem"\n'
        '[[connectors]]\n[connectors.meter]\nmodel = "maps/my-meter.toml"\n'
        '[grid]\n[grid.meter]\nmodel = "sdm120"\n'
        '[firmware]\ninstall_root = "opt"\n'
    )
    monkeypatch.chdir(tmp_path / "..")
    cfg = config.load(path.relative_to(tmp_path.parent))
    assert cfg.state_dir == conf / "state"
    cs = cfg.central_system
    assert cs.ca_file == conf / ".." / "pki" / "ca.pem"
    assert cs.client_cert == home / "cp.pem"
    assert cs.client_key == Path("/etc/evsed/cp-key.pem")
    assert cfg.connectors[0].meter.model == str(conf / "maps" / "my-meter.toml")
    assert cfg.grid.meter.model == "sdm120"  # a built-in map's name, not a path
    assert cfg.firmware.install_root == conf / "opt"
    # A wrong type is still validation's to name, unchanged.
    path.write_text("state_dir = 5\n")
    with pytest.raises(config.ConfigError, match="state_dir"):
        config.load(path)


async def test_run_from_another_directory_stores_next_to_its_file(tmp_path: Path) -> None:
    # The real thing: `evsed run` (started in the repository, as the subprocess tests do)
    # with state_dir = "state" opens its store beside the file, not in its working
    # directory.
    import signal

    from tests.support.evsed_process import Evsed

    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "evsed.toml"
    path.write_text(
        'state_dir = "state"\n[central_system]\nenabled = false\n'
        "[bench]\ncontrol_port = 0\n[[connectors]]\n[connectors.meter]\nport = 0\n"
    )
    in_cwd = REPO / "state"
    existed = in_cwd.exists()
    evsed = Evsed(path, tmp_path / "evsed.log")
    try:
        await evsed.start()
        assert await evsed.signal(signal.SIGTERM) == 0, (tmp_path / "evsed.log").read_text()
    finally:
        await evsed.close()
    assert any((conf / "state").iterdir())
    assert existed or not in_cwd.exists()


def _has_gpio() -> bool:
    import warnings

    from gpiozero import BadPinFactory, Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Device._default_pin_factory().close()
    except BadPinFactory:
        return False
    return True


@pytest.mark.parametrize("command", [["run", "--config"], ["selftest", "--config"]])
def test_the_pi_example_off_a_pi_is_lines_not_a_traceback(command: list[str]) -> None:
    # Issue 13 as reported: with the Pi configuration `evsed run` printed four gpiozero
    # fallback warnings and a raw BadPinFactory traceback. Now: one line per problem
    # naming the key, the package to install, exit status 2. (On a Pi this is not the
    # situation: skipped.)
    import os
    import subprocess
    import sys

    if _has_gpio():
        pytest.skip("this machine has GPIO")
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    path = REPO / "config" / "raspberry-pi.toml"
    ran = subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", *command, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and "Falling back" not in ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    (gpio,) = [line for line in lines if line.startswith(f"{path}: GPIO: ")]
    assert "pip install 'evsed[pi]'" in gpio
    # No value of the file is wrong: neither bench.enabled nor "(given: false)" is named.
    assert "(given:" not in gpio and "bench.enabled" not in gpio, gpio


@pytest.mark.parametrize("existing", [False, True])
def test_run_trace_file_is_0600_as_the_help_says(tmp_path: Path, existing: bool) -> None:
    # The trial: `evsed run --trace frames.log` left frames.log -rw-r--r--: the CLI's
    # writability check created it with open("a") before the trace opened it 0600.
    import stat

    trace = tmp_path / "frames.log"
    if existing:
        trace.write_text("")
        trace.chmod(0o644)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[connectors]]\n[connectors.meter]\nmodel = "sdm999"\n[bench]\n')
    with pytest.raises(SystemExit) as exc:  # stops at the check, after the trace file
        cli.main(["run", "--config", str(cfg), "--trace", str(trace)])
    assert exc.value.code == 2
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["bench", "run", "status", "selftest", "safe-off"])
def test_dash_c_is_config_wherever_there_is_a_config(command: str) -> None:
    # `evsed run -c config/sim.toml` (as most daemons spell it) was "unrecognized
    # arguments: -c".
    parser = cli._parser()
    args = parser.parse_args([command, "-c", "config/sim.toml"])
    assert args.config == Path("config/sim.toml")


async def test_a_second_run_on_the_same_state_leaves_the_first_ones_session_alone(
    tmp_path: Path,
) -> None:
    # The trial: while one `evsed run` charged, a second one with the same state directory
    # (other ports) opened the store, stopped the first one's transaction as PowerLoss at
    # the Central System and booted under the same identity; only then did it find the
    # status socket taken and exit. It must stop before it opens anything.
    from evsed.hwmocks.central_system import CentralSystem
    from tests.support.evsed_process import FREE_TAG, Evsed, _config, _cp_calls, until_charging

    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as cs:
        first = Evsed(_config(tmp_path, cs.url), tmp_path / "first.log")
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        # The same file: the same state_dir (absolute), bench ports 0 already.
        second = Evsed(_config(tmp_path, cs.url), second_dir / "second.log")
        try:
            await first.start()
            await first.bench("plug", connector=1)
            start = await cs.wait_for_call("StartTransaction", timeout=20)
            await until_charging(cs, start.seq)
            boots = len(_cp_calls(cs, "BootNotification"))
            with pytest.raises(AssertionError, match="exited before its control port"):
                await second.start()
            assert second.proc is not None
            assert await second.proc.wait() == 1
            assert _cp_calls(cs, "StopTransaction") == []
            assert len(_cp_calls(cs, "BootNotification")) == boots
            log = (second_dir / "second.log").read_text()
            assert "another evsed uses" in log and "Traceback" not in log
            status = await first.bench("status", connector=1)
            assert status["relay"]["energized"] is True
        finally:
            await second.close()
            await first.close()


def test_port_in_use_names_the_keys_to_change() -> None:
    # "give [bench] control_port and the meter port = 0" named no key a user could find.
    import errno

    from evsed.controller.run import first_run_message

    line = first_run_message(OSError(errno.EADDRINUSE, "Address already in use"))
    assert "control_port = 0 in [bench]" in line
    assert "port = 0 in each [connectors.meter]" in line and "state_dir" in line
