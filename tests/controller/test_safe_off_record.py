"""safe-off when the configuration file does not read (found in a real systemd manager,
tests/systemd/test_real_units.py): an admin's edit in progress or a half-written file made
every copy of safe-off exit 2, "could not read the configuration", and a crash or a
watchdog kill of a running evsed then left the relay and the pilot as they were. Now
`evsed run` records the output pins it started with in its runtime directory, and safe-off
drives those when the file does not read."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import DigitalOutputDevice, PWMOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, run, safeoff
from evsed.controller.run import Stack, serve
from tests.support.bench_rig import bench_config

SECRET = "s3cret-authorization-key"
CARD = "AABBCCDDEE"

#: A charger's outputs (no bench): two connectors, one with a motor lock.
CHARGER = {
    "central_system": {"enabled": False},
    "reader": {"model": "none"},
    "connectors": [
        {
            "pilot": {"pin": 18},
            "contactor": {"relay_pin": 17, "feedback_pin": 27},
            "lock": {"enabled": True, "lock_pin": 24, "unlock_pin": 25},
            "meter": {"transport": "none"},
        },
        {
            "pilot": {"pin": 13, "sense_channel": 3},
            "contactor": {"relay_pin": 6, "feedback_pin": 26, "active_high": False},
            "proximity": {"enabled": False},
            "rcd": {"fault_pin": 20, "test_pin": 21},
            "temperature": {"driver": "none"},
            "meter": {"transport": "none"},
        },
    ],
}

BROKEN_TOML = '[central_system\nurl = "ws://half-writ'


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    f.close()


def _charging(factory: MockFactory, relay: int, pilot: int, *, relay_on: bool = True) -> None:
    """What a killed evsed leaves: relay energised, pilot offering current (PWM)."""
    DigitalOutputDevice(relay, pin_factory=factory, initial_value=relay_on).close()
    PWMOutputDevice(pilot, pin_factory=factory, initial_value=0.5, frequency=1000).close()


def _output(factory: MockFactory, gpio: int) -> float | None:
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


def _recorded(tmp_path: Path, data: dict = CHARGER) -> Path:
    """The record as `evsed run` writes it at its start."""
    (tmp_path / "run").mkdir(exist_ok=True)
    path = tmp_path / "run" / safeoff.RECORD_NAME
    safeoff.write_record(config.parse(data), path)
    return path


def _broken(tmp_path: Path) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(BROKEN_TOML)
    return path


# -- evsed run writes the record ------------------------------------------------------------


async def _serve_until_ready(cfg: config.Config) -> Stack:
    stop = asyncio.Event()
    ready: asyncio.Future[Stack] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(cfg, on_ready=ready.set_result, stop=stop))
    try:
        return await asyncio.wait_for(asyncio.shield(ready), 20)
    finally:
        stop.set()
        await asyncio.wait_for(server, 20)


async def test_a_running_evsed_records_the_pins_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails without the change: nothing was written."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    cfg = bench_config(
        central_system={"enabled": False, "authorization_key": SECRET},
        connectors=[
            {
                "meter": {"port": 0},
                "pilot": {"pin": 12},
                "contactor": {"relay_pin": 16, "feedback_pin": None, "active_high": False},
            }
        ],
        state_dir=str(tmp_path / "state"),
    )
    await _serve_until_ready(cfg)
    path = runtime / safeoff.RECORD_NAME
    text = path.read_text()
    record = json.loads(text)
    assert record["format"] == safeoff.RECORD_FORMAT
    assert record["pid"] == os.getpid()
    assert record["bench"] == {"enabled": True, "force": False}
    assert record["connectors"] == [
        {
            "contactor": {
                "relay_pin": 16,
                "active_high": False,
                "feedback_pin": None,
                "feedback_active_high": True,
                "settle_s": 0.1,  # the weld check's wait
            },
            "pilot": {"driver": "gpiozero", "pin": 12, "pwm_chip": 0, "pwm_channel": 0},
            "lock": {"enabled": False, "lock_pin": 24, "unlock_pin": 25},
        }
    ]
    # Pins only: no secret, no card, nothing else of the file.
    assert SECRET not in text and CARD not in text and "state" not in text
    assert [p.name for p in runtime.iterdir()] == ["outputs.json"]  # no temporary left over


async def test_a_record_that_cannot_be_written_does_not_stop_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where the record goes: the rename over it fails for real. evsed still
    starts, and says it once. Fails without the change: no such line."""
    runtime = tmp_path / "run"
    (runtime / safeoff.RECORD_NAME).mkdir(parents=True)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    cfg = bench_config(central_system={"enabled": False}, state_dir=str(tmp_path / "state"))
    with caplog.at_level(logging.ERROR, logger="evsed.controller.run"):
        stack = await _serve_until_ready(cfg)
    assert stack is not None  # on_ready: it started
    lines = [r.getMessage() for r in caplog.records if "record the outputs" in r.getMessage()]
    assert len(lines) == 1
    assert f"could not record the outputs for safe-off in {runtime}/outputs.json" in lines[0]
    assert "starting all the same" in lines[0]
    assert sorted(p.name for p in runtime.iterdir()) == ["outputs.json"]  # no temporary


def test_a_failed_write_leaves_no_older_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older record (its pins since changed) must not be read as this run's."""
    old = _recorded(tmp_path)

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safeoff, "write_record", full)
    cfg = config.parse(CHARGER)
    assert run.record_outputs(cfg, {"RUNTIME_DIRECTORY": str(old.parent)}) is None
    assert not old.exists()


def test_a_short_write_is_written_on_until_the_whole_record_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write may write part of what it is given (a signal, a disk filling up). Fails
    without the change: one os.write, the record cut after 7 bytes, which does not read
    (and a configuration that does not read then leaves safe-off nothing to drive)."""
    real = os.write
    calls: list[int] = []

    def short(fd: int, data: bytes) -> int:
        if ".outputs.json." not in os.readlink(f"/proc/self/fd/{fd}"):
            return real(fd, data)  # not the record's: whatever else writes meanwhile
        calls.append(len(data))
        return real(fd, bytes(data[:7]))

    monkeypatch.setattr(safeoff.os, "write", short)
    path = _recorded(tmp_path)
    monkeypatch.undo()
    assert len(calls) > 1
    assert json.loads(path.read_bytes()) == json.loads(
        json.dumps(safeoff.record_of(config.parse(CHARGER)))
    )
    record, why = safeoff.read_record(path)
    assert record is not None and why == ""


def test_a_write_of_nothing_fails_the_record_never_spins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.write

    def nothing(fd: int, data: bytes) -> int:
        if ".outputs.json." not in os.readlink(f"/proc/self/fd/{fd}"):
            return real(fd, data)
        return 0

    monkeypatch.setattr(safeoff.os, "write", nothing)
    with pytest.raises(OSError, match="nothing written"):
        _recorded(tmp_path)
    monkeypatch.undo()
    assert list((tmp_path / "run").iterdir()) == []  # no temporary, no record


def test_no_runtime_directory_no_record(tmp_path: Path) -> None:
    assert run.record_outputs(config.parse(CHARGER), {}) is None
    assert safeoff.record_path({}) is None
    assert safeoff.record_path({"RUNTIME_DIRECTORY": "/run/evsed:/run/other"}) == Path(
        "/run/evsed/outputs.json"
    )


# -- safe-off reads it --------------------------------------------------------------------


def test_an_unreadable_configuration_with_the_record_is_made_safe_exit_0(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails without the change: exit 2, nothing driven."""
    record = _recorded(tmp_path)
    _charging(factory, 17, 18)
    _charging(factory, 6, 13, relay_on=False)  # active low: energised is low
    assert safeoff.run(_broken(tmp_path), record=record, pin_factory=factory) == 0
    assert _output(factory, 17) == 0 and _output(factory, 18) == 1.0
    assert _output(factory, 6) == 1 and _output(factory, 13) == 1.0  # active-low relay off
    assert _output(factory, 24) == 0 and _output(factory, 25) == 0  # lock motor stopped
    out, err = capsys.readouterr()
    (line,) = err.splitlines()  # one line says why the record was used
    assert "evsed.toml: not valid TOML" in line
    assert f"driving the outputs recorded at the start by evsed 0.1.0 (pid {os.getpid()})" in line
    assert str(record) in line
    assert "connector 1: relay GPIO17 off, pilot GPIO18 +12 V, lock GPIO24 safe" in out
    assert "connector 2: relay GPIO6 off, pilot GPIO13 +12 V" in out


def test_a_missing_configuration_file_with_the_record_too(
    tmp_path: Path, factory: MockFactory
) -> None:
    record = _recorded(tmp_path)
    assert safeoff.run(tmp_path / "gone.toml", record=record, pin_factory=factory) == 0
    assert _output(factory, 17) == 0 and _output(factory, 13) == 1.0


def test_neither_configuration_nor_record_exit_2(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start that failed before writing the record drove nothing: exit 2, as before, and
    the line says there is no record either (fails without the change: it did not)."""
    record = tmp_path / "run" / safeoff.RECORD_NAME
    assert safeoff.run(_broken(tmp_path), record=record, pin_factory=factory) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err
    assert f"and no record of the outputs in {record}; no output driven" in err
    assert _output(factory, 17) is None


@pytest.mark.parametrize("content", [b'{"format": 1, "conn', b"[]", b'{"format": 2}'])
def test_a_record_that_does_not_read_is_not_used(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    record = tmp_path / safeoff.RECORD_NAME
    record.write_bytes(content)
    assert safeoff.run(_broken(tmp_path), record=record, pin_factory=factory) == 2
    assert f"{record}: not a record of the outputs" in capsys.readouterr().err
    # With a file that reads, the file alone is driven (one line about the record).
    good = tmp_path / "good.toml"
    good.write_text("[central_system]\nenabled = false\n[[connectors]]\n")
    assert safeoff.run(good, record=record, pin_factory=factory) == 0
    assert _output(factory, 17) == 0 and _output(factory, 18) == 1.0


def test_a_bench_record_drives_nothing(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    record = _recorded(tmp_path, {"bench": {}, "central_system": {"enabled": False}})
    assert safeoff.run(_broken(tmp_path), record=record, pin_factory=factory) == 0
    assert "simulated bench" in capsys.readouterr().err
    assert _output(factory, 17) is None


def test_a_configuration_that_differs_from_the_record_both_driven_the_record_wins(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file edited while evsed ran: connector 1's relay moved to GPIO22, and the new
    connector 2 puts its pilot on GPIO17, the running relay."""
    record = _recorded(tmp_path)
    edited = tmp_path / "evsed.toml"
    edited.write_text(
        "[central_system]\nenabled = false\n"
        "[[connectors]]\n[connectors.pilot]\npin = 18\n"
        "[connectors.contactor]\nrelay_pin = 22\nfeedback_pin = 27\n"
        "[connectors.lock]\nenabled = true\nlock_pin = 24\nunlock_pin = 25\n"
        "[[connectors]]\n[connectors.pilot]\npin = 17\n"
        "[connectors.contactor]\nrelay_pin = 6\nfeedback_pin = 26\nactive_high = false\n"
    )
    _charging(factory, 17, 18)
    assert safeoff.run(edited, record=record, pin_factory=factory) == 0
    # The record, all of it, as it ran.
    assert _output(factory, 17) == 0 and _output(factory, 18) == 1.0
    assert _output(factory, 6) == 1 and _output(factory, 13) == 1.0
    # The file's new relay, off too; its pilot on the record's relay line is not driven.
    assert _output(factory, 22) == 0
    out, err = capsys.readouterr()
    assert "the configuration differs from the recorded outputs" in err
    assert "connectors[1].pilot (GPIO17) is the record's connector 1's contactor" in err
    assert "connectors[0] of the configuration: relay GPIO22 off" in out
    assert "connectors[1] of the configuration" not in out  # nothing of it left to drive


def test_the_same_configuration_as_the_record_says_nothing_more(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    record = _recorded(tmp_path)
    same = tmp_path / "evsed.toml"
    same.write_text(
        "[central_system]\nenabled = false\n"
        "[[connectors]]\n[connectors.pilot]\npin = 18\n"
        "[connectors.contactor]\nrelay_pin = 17\n"
        "[connectors.lock]\nenabled = true\nlock_pin = 24\nunlock_pin = 25\n"
        "[[connectors]]\n[connectors.pilot]\npin = 13\n"
        "[connectors.contactor]\nrelay_pin = 6\nfeedback_pin = 26\nactive_high = false\n"
    )
    assert safeoff.run(same, record=record, pin_factory=factory) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("connector") == 2


def test_the_entry_point_finds_the_record_in_the_runtime_directory(tmp_path: Path) -> None:
    """As the unit's ExecStopPost runs it: `python -I`, $RUNTIME_DIRECTORY from systemd."""
    record = _recorded(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"GPIOZERO_PIN_FACTORY": "mock", "RUNTIME_DIRECTORY": str(record.parent)}
    ran = subprocess.run(
        [
            sys.executable,
            "-I",
            "-m",
            "evsed.controller.safeoff",
            "--config",
            str(_broken(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr  # was 2
    assert "driving the outputs recorded at the start" in ran.stderr
    assert "connector 1: relay GPIO17 off, pilot GPIO18 +12 V" in ran.stdout
