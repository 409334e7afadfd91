"""`evsed safe-off` and a contactor feedback input that raises when read (safety review:
EIO from a GPIO expander). The weld check read the feedback with no try: the OSError
escaped `run()` after the relay and pilot lines were claimed, with no report, no exit
status of safe-off's choosing, and the hold-solenoid step never reached. A read that
raises now leaves that contactor's contacts unknown: one line naming the connector, its
hold solenoid kept, exit 4 as for a weld (the unit's script then fails the unit whatever
the next copy says: a copy from before the weld check would say 0 without reading). The
time is injected (tests.support.steptime): nothing here sleeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import safeoff
from tests.support.steptime import StepTime

RELAY, PILOT, FEEDBACK, SOLENOID = 17, 18, 27, 24

CFG = f"""
[central_system]
enabled = false
[[connectors]]
[connectors.pilot]
pin = {PILOT}
[connectors.contactor]
relay_pin = {RELAY}
feedback_pin = {FEEDBACK}
[connectors.lock]
enabled = true
lock_pin = {SOLENOID}
unlock_pin = false
[[connectors]]
[connectors.pilot]
pin = 13
[connectors.contactor]
relay_pin = 6
feedback_pin = 26
"""

EIO = OSError(5, "Input/output error")


class ExpanderPin(MockPWMPin):
    """A mock pin whose reads raise once `eio` is set: a GPIO expander that stops
    answering (gpiozero passes the driver's OSError through `is_active`)."""

    eio: OSError | None = None

    def _get_state(self) -> Any:
        if self.eio is not None:
            raise self.eio
        return super()._get_state()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=ExpanderPin)
    yield f
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    f.close()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(CFG)
    return path


def _left_high(factory: MockFactory, gpio: int) -> None:
    """What a killed evsed leaves: the line driven high at its last level."""
    DigitalOutputDevice(gpio, pin_factory=factory, initial_value=True).close()
    pin = factory.pin(gpio)
    pin.function = "output"
    pin.state = True


def _output(factory: MockFactory, gpio: int) -> float | None:
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


def _fail(factory: MockFactory) -> Callable[[], None]:
    def fail() -> None:
        factory.pin(FEEDBACK).eio = EIO

    return fail


def _at_the_first_read(factory: MockFactory, clock: StepTime) -> tuple[Any, Any]:
    """Contacts open; the expander fails before the weld check's first read (the check
    reads its clock once, right before that read)."""

    def monotonic() -> float:
        _fail(factory)()
        return clock.monotonic()

    return monotonic, clock.sleep


def _during_the_wait(factory: MockFactory, clock: StepTime) -> tuple[Any, Any]:
    """Contacts still closed when the relay is driven off; the expander fails 50 ms on,
    while the check waits for them to open."""
    factory.pin(FEEDBACK).drive_high()
    clock.at(0.05, _fail(factory))
    return clock.monotonic, clock.sleep


def _after_the_bounded_wait(factory: MockFactory, clock: StepTime) -> tuple[Any, Any]:
    """A clock that does not move: the check's wait ends by its count of reads; the
    expander fails before the last read."""
    factory.pin(FEEDBACK).drive_high()
    sleeps = {"n": 0}
    last = int(safeoff.MAX_SETTLE_S / safeoff.POLL_S) + 2

    def sleep(_s: float) -> None:
        sleeps["n"] += 1
        if sleeps["n"] == last:
            _fail(factory)()

    return (lambda: 0.0), sleep


@pytest.mark.parametrize("when", [_at_the_first_read, _during_the_wait, _after_the_bounded_wait])
def test_a_feedback_read_that_raises_is_contacts_unknown_exit_4(
    tmp_path: Path,
    factory: MockFactory,
    capsys: pytest.CaptureFixture[str],
    when: Callable[[MockFactory, StepTime], tuple[Any, Any]],
) -> None:
    """Fails without the change: the OSError escapes safeoff.run()."""
    _left_high(factory, RELAY)
    _left_high(factory, SOLENOID)  # the hold solenoid holding the plug
    monotonic, sleep = when(factory, StepTime())
    code = safeoff.run(_config(tmp_path), pin_factory=factory, monotonic=monotonic, sleep=sleep)
    assert code == safeoff.EXIT_WELDED
    out, err = capsys.readouterr()
    assert (
        "evsed safe-off: connector 1: contactor feedback GPIO27 not readable after the relay "
        "GPIO17 was driven off: [Errno 5] Input/output error; whether the contacts opened is "
        "unknown" in err
    )
    assert "NOT SAFE: whether a contactor opened is unknown" in err
    assert "still closed after opening" not in err  # not called a weld: unknown
    assert "connector 2" not in err  # its contacts read open
    # Every output driven safe all the same, both connectors reported.
    assert _output(factory, RELAY) == 0 and _output(factory, 6) == 0
    assert _output(factory, PILOT) == 1.0 and _output(factory, 13) == 1.0
    assert "connector 1: relay GPIO17 off, pilot GPIO18 +12 V" in out
    assert "connector 2: relay GPIO6 off, pilot GPIO13 +12 V" in out
    # The contacts may carry current: the plug stays held.
    assert _output(factory, SOLENOID) == 1.0


def test_a_feedback_that_cannot_be_claimed_is_contacts_unknown_too_exit_4(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """One rule for contacts unknown, whether the input could not be claimed or not read
    later. Fails without the change: exit 1, after which the next copy of evsed (one from
    before the weld check) would have made the unit's ExecStopPost 0."""
    _left_high(factory, SOLENOID)
    factory.pin(FEEDBACK).eio = EIO  # gpiozero reads the input when it claims it
    clock = StepTime()
    code = safeoff.run(
        _config(tmp_path), pin_factory=factory, monotonic=clock.monotonic, sleep=clock.sleep
    )
    assert code == safeoff.EXIT_WELDED
    err = capsys.readouterr().err
    assert (
        "connector 1: contactor feedback GPIO27 not readable after the relay GPIO17 was driven "
        "off: [Errno 5] Input/output error; whether the contacts opened is unknown" in err
    )
    assert _output(factory, RELAY) == 0 and _output(factory, PILOT) == 1.0
    assert _output(factory, SOLENOID) == 1.0
