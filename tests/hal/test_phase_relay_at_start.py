"""A restart never moves the phase relay under contacts that read closed (review of issue
13): after a crash while on one phase with the contactor welded, the next start claimed
the relay de-energised and dropped L2/L3 under load."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, hardware
from evsed.hal.phase_switch import RelayPhaseSwitch
from tests.support.clock import FakeClock

RELAY, FEEDBACK, PHASE_RELAY = 17, 27, 6

CFG = {
    "central_system": {"enabled": False},
    "reader": {"model": "none"},
    "connectors": [
        {
            "pilot": {"pin": 18},
            "contactor": {"relay_pin": RELAY, "feedback_pin": FEEDBACK},
            "phase_switch": {"enabled": True, "relay_pin": PHASE_RELAY},
            "rcd": {"enabled": False},
            "proximity": {"enabled": False},
            "temperature": {"driver": "none"},
            "meter": {"transport": "none"},
        }
    ],
}


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.close()


def _left_energised(factory: MockFactory, gpio: int) -> None:
    """What kill -9 leaves: the line still driven at its last level."""
    DigitalOutputDevice(gpio, pin_factory=factory, initial_value=True).close()
    pin = factory.pin(gpio)
    pin.function = "output"
    pin.state = True


class _Channel:
    def __init__(self, *_: Any, **__: Any) -> None: ...

    def close(self) -> None: ...


def _build(factory: MockFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(hardware, "AdcChannel", _Channel)  # no ADC needed for this
    cfg = config.parse(CFG)
    return hardware._connector(cfg.connectors[0], cfg.adc, FakeClock(), factory)


def test_restart_keeps_the_phase_relay_under_a_welded_contactor(
    factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _left_energised(factory, PHASE_RELAY)  # the last run was on one phase
    factory.pin(FEEDBACK).drive_high()  # auxiliary contact: closed (welded)
    parts = _build(factory, monkeypatch)
    try:
        assert factory.pin(PHASE_RELAY).state, "L2/L3 switched with the contacts closed"
        assert parts.phase_switch.phases == 1
        assert parts.contactor.feedback() is True  # the weld is there for the charger to see
        assert not factory.pin(RELAY).state  # the main relay is claimed off regardless
    finally:
        parts.phase_switch._relay.close()
        parts.contactor._relay.close()


def test_restart_with_open_contacts_starts_on_three_phases(
    factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _left_energised(factory, PHASE_RELAY)
    factory.pin(FEEDBACK).drive_low()  # contacts open: switching the relay breaks no load
    parts = _build(factory, monkeypatch)
    try:
        assert not factory.pin(PHASE_RELAY).state
        assert parts.phase_switch.phases == 3
    finally:
        parts.phase_switch._relay.close()
        parts.contactor._relay.close()


@pytest.mark.parametrize(("line", "active_high", "phases"), [(True, True, 1), (False, False, 1)])
def test_keep_present_reads_the_line_with_either_polarity(
    factory: MockFactory, line: bool, active_high: bool, phases: int
) -> None:
    pin = factory.pin(PHASE_RELAY)
    pin.function = "output"
    pin.state = line
    relay = RelayPhaseSwitch(
        PHASE_RELAY, active_high=active_high, pin_factory=factory, keep_present=True
    )
    try:
        assert bool(pin.state) is line
        assert relay.phases == phases
    finally:
        relay._relay.close()
