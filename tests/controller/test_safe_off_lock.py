"""`evsed safe-off` and the socket lock (review of issue 13): killed mid-pulse, the lock
motor's H-bridge output stayed driven after safe-off had exited 0. A hold solenoid is kept
while the contacts may carry current."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, run, safeoff
from tests.support.steptime import StepTime

RELAY, FEEDBACK, LOCK, UNLOCK, LOCK_FB = 17, 27, 24, 25, 5


def _cfg(**lock: Any) -> config.Config:
    return config.parse(
        {
            "central_system": {"enabled": False},
            "reader": {"model": "none"},
            "connectors": [
                {
                    "pilot": {"pin": 18},
                    "contactor": {"relay_pin": RELAY, "feedback_pin": FEEDBACK},
                    "lock": {"enabled": True, "lock_pin": LOCK, "feedback_pin": LOCK_FB, **lock},
                    "rcd": {"enabled": False},
                    "proximity": {"enabled": False},
                    "temperature": {"driver": "none"},
                    "meter": {"transport": "none"},
                }
            ],
        }
    )


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for d in run._held:
        d.close()
    run._held.clear()
    f.close()


def _left_high(factory: MockFactory, gpio: int) -> None:
    """What kill -9 leaves: the line driven at its last level."""
    DigitalOutputDevice(gpio, pin_factory=factory, initial_value=True).close()
    pin = factory.pin(gpio)
    pin.function = "output"
    pin.state = True


def _driven_high(factory: MockFactory, gpio: int) -> bool:
    pin = factory.pin(gpio)
    return pin.function == "output" and bool(pin.state)


def _drive_welded(factory: MockFactory, cfg: config.Config) -> list[str]:
    """safe-off's drive with the contacts reading closed (welded) and the time injected:
    what could not be made safe."""
    outputs = [safeoff.Outputs(c.contactor, c.pilot, c.lock) for c in cfg.connectors]
    clock = StepTime()
    failed, held, _ = safeoff.drive(
        outputs, pin_factory=factory, monotonic=clock.monotonic, sleep=clock.sleep
    )
    run._held.extend(held)
    return failed


@pytest.mark.parametrize("pulsing", [LOCK, UNLOCK])
def test_safe_off_stops_a_lock_motor_pulse(factory: MockFactory, pulsing: int) -> None:
    _left_high(factory, pulsing)
    factory.pin(FEEDBACK).drive_high()  # even with the contacts closed: the lock is bistable
    (welded,) = _drive_welded(factory, _cfg(unlock_pin=UNLOCK))  # the weld alone is reported
    assert welded.startswith("contactor of connector 1 still closed after opening")
    assert not _driven_high(factory, LOCK) and not _driven_high(factory, UNLOCK)
    assert factory.pin(LOCK).function == factory.pin(UNLOCK).function == "output"


def test_a_motor_lock_stopped_with_the_contacts_open_exit_0(factory: MockFactory) -> None:
    _left_high(factory, LOCK)
    assert run.safe_off(_cfg(unlock_pin=UNLOCK), pin_factory=factory) == 0
    assert not _driven_high(factory, LOCK) and not _driven_high(factory, UNLOCK)


def test_a_hold_solenoid_stays_energised_while_the_contacts_read_closed(
    factory: MockFactory,
) -> None:
    _left_high(factory, LOCK)
    factory.pin(FEEDBACK).drive_high()  # welded: the plug must stay held
    (welded,) = _drive_welded(factory, _cfg(unlock_pin=False))
    assert welded.startswith("contactor of connector 1 still closed after opening")
    assert _driven_high(factory, LOCK)


def test_a_hold_solenoid_is_released_once_the_contacts_read_open(factory: MockFactory) -> None:
    _left_high(factory, LOCK)
    factory.pin(FEEDBACK).drive_low()
    assert run.safe_off(_cfg(unlock_pin=False), pin_factory=factory) == 0
    assert not _driven_high(factory, LOCK)
