"""`evsed safe-off` (the unit's ExecStopPost): exit 0 only when every relay output is low
and every pilot at steady +12 V; otherwise non-zero, naming each output it could not drive."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from gpiozero import DigitalOutputDevice, PWMOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, run
from evsed.controller.run import EXIT_NOT_SAFE, safe_off

TWO = {
    "central_system": {"enabled": False},
    "connectors": [
        {"pilot": {"pin": 18}, "contactor": {"relay_pin": 17, "feedback_pin": 27}},
        {
            "pilot": {"pin": 13, "sense_channel": 3},
            "proximity": {"enabled": False},
            "contactor": {"relay_pin": 6, "feedback_pin": 26},
            "rcd": {"fault_pin": 20, "test_pin": 21},
            "lock": {"enabled": False},
            "temperature": {"driver": "none"},
        },
    ],
}


@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for device in run._held:
        device.close()
    run._held.clear()
    f.close()


def _charging(factory: MockFactory, relay: int, pilot: int) -> None:
    """What a killed evsed leaves behind: relay energised, pilot offering current (PWM)."""
    relay_dev = DigitalOutputDevice(relay, pin_factory=factory, initial_value=True)
    pilot_dev = PWMOutputDevice(pilot, pin_factory=factory, initial_value=0.5, frequency=1000)
    # Released as the killed process's end releases them: safe-off claims each line anew.
    relay_dev.close()
    pilot_dev.close()


def driven(factory: MockFactory, gpio: int) -> float | None:
    """The level an output holds on this GPIO (None: not an output). safe-off leaves its
    lines claimed as outputs: closed, gpiozero's lgpio pins become floating inputs."""
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


def _cfg(data=TWO) -> config.Config:
    try:
        return config.parse(data)
    except config.ConfigError as exc:  # pragma: no cover - the table above is wrong
        pytest.fail(str(exc))


def test_outputs_driven_safe_exit_0(factory, capsys) -> None:
    _charging(factory, 17, 18)
    _charging(factory, 6, 13)
    assert safe_off(_cfg(), pin_factory=factory) == 0
    for relay, pilot in ((17, 18), (6, 13)):
        assert driven(factory, relay) == 0
        assert driven(factory, pilot) == 1.0  # steady +12 V: no PWM, no current offered
    assert capsys.readouterr().err == ""


def test_active_low_relay_ends_high(factory) -> None:
    data = {
        "central_system": {"enabled": False},
        "connectors": [{"contactor": {"relay_pin": 17, "active_high": False}}],
    }
    assert safe_off(_cfg(data), pin_factory=factory) == 0
    assert driven(factory, 17) == 1  # de-energised is a high level on an active-low driver


def test_an_output_it_cannot_drive_exit_nonzero_and_the_rest_still_made_safe(
    factory, capsys
) -> None:
    _charging(factory, 6, 13)
    # Connector 1's relay GPIO is held by someone else: it cannot be driven low.
    holder = DigitalOutputDevice(17, pin_factory=factory, initial_value=True)
    try:
        assert safe_off(_cfg(), pin_factory=factory) == EXIT_NOT_SAFE != 0
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert "connector 1: relay GPIO17 not driven off" in err
    assert "NOT SAFE" in err
    assert "connector 2" not in err
    # Everything else was still made safe, after the failure.
    assert driven(factory, 18) == 1.0
    assert driven(factory, 6) == 0 and driven(factory, 13) == 1.0


def test_pilot_it_cannot_drive(factory, capsys) -> None:
    holder = PWMOutputDevice(13, pin_factory=factory, initial_value=0.3)
    try:
        assert safe_off(_cfg(), pin_factory=factory) == EXIT_NOT_SAFE
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert "connector 2: pilot (GPIO13) not set to +12 V" in err
    assert driven(factory, 6) == 0  # the relay of that connector went low all the same


def test_bench_configuration_has_nothing_to_drive(capsys) -> None:
    assert safe_off(config.load(None)) == 0
    assert "simulated bench" in capsys.readouterr().err


def _has_gpio() -> bool:
    from gpiozero import Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Device._default_pin_factory().close()
    except Exception:
        return False
    return True


def test_cli_without_gpio_backend_exits_nonzero_with_one_clear_line(tmp_path: Path) -> None:
    if _has_gpio():
        pytest.skip("this machine has real GPIO")
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[central_system]\nenabled = false\n')
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    ran = subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", "safe-off", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ran.returncode == EXIT_NOT_SAFE
    assert "Traceback" not in ran.stderr and "PinFactoryFallback" not in ran.stderr
    assert "relay GPIO17 not driven off" in ran.stderr
    assert "pip install 'evsed[pi]'" in ran.stderr
