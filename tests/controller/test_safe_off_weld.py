"""`evsed safe-off` and a welded contactor: it drove the relay off and set the pilot safe,
then exited 0 ("safe") with the contacts still reading closed, so the unit's ExecStopPost
looked fine while the cable could be live. Where a contactor has a feedback input, safe-off
now reads it once the contacts have had their settle_s to open and exits 1 naming the
connector. The time is injected (tests.support.steptime): nothing here sleeps."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import DigitalOutputDevice, PWMOutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import config, safeoff
from tests.support.steptime import StepTime

TWO = """
[central_system]
enabled = false
[[connectors]]
[connectors.pilot]
pin = 18
[connectors.contactor]
relay_pin = 17
feedback_pin = 27
{settle}
[[connectors]]
[connectors.pilot]
pin = 13
[connectors.contactor]
relay_pin = 6
feedback_pin = {feedback2}
"""


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    f.close()


@pytest.fixture
def clock() -> StepTime:
    return StepTime()


def _config(tmp_path: Path, *, settle: str = "", feedback2: str = "26") -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(TWO.format(settle=settle, feedback2=feedback2))
    return path


def _charging(factory: MockFactory, relay: int, pilot: int) -> None:
    """What a killed evsed leaves: relay energised, pilot offering current (PWM)."""
    DigitalOutputDevice(relay, pin_factory=factory, initial_value=True).close()
    PWMOutputDevice(pilot, pin_factory=factory, initial_value=0.5, frequency=1000).close()


def _output(factory: MockFactory, gpio: int) -> float | None:
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


def _run(path: Path, factory: MockFactory, clock: StepTime, **kw: object) -> int:
    return safeoff.run(
        path, pin_factory=factory, monotonic=clock.monotonic, sleep=clock.sleep, **kw
    )


def test_a_contactor_still_closed_after_opening_exit_1_naming_it(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails without the change: exit 0, nothing said. Exit 4, not 1: the unit's script
    tries the next copy after a 1, and one from before this check would say 0."""
    _charging(factory, 17, 18)
    _charging(factory, 6, 13)
    factory.pin(26).drive_high()  # connector 2's contacts welded
    assert _run(_config(tmp_path), factory, clock) == safeoff.EXIT_WELDED
    out, err = capsys.readouterr()
    assert (
        "contactor of connector 2 still closed after opening: welded? (relay GPIO6 driven "
        "off, feedback GPIO26 reads closed 100 ms later)" in err
    )
    assert "connector 1" not in err  # its contacts opened
    assert "NOT SAFE: a contactor did not open" in err
    # Every output still driven safe: the relay off, the pilot at +12 V.
    assert _output(factory, 17) == 0 and _output(factory, 6) == 0
    assert _output(factory, 18) == 1.0 and _output(factory, 13) == 1.0
    assert "connector 2: relay GPIO6 off, pilot GPIO13 +12 V" in out
    # The contacts had their settle_s (0.1 s, the default) to open, and not more.
    assert math.isclose(clock.slept, 0.1)


def test_contacts_that_open_within_the_settle_time_are_safe(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    factory.pin(27).drive_high()  # still closed when the relay is driven off
    clock.at(0.05, factory.pin(27).drive_low)  # and open 50 ms later
    assert _run(_config(tmp_path), factory, clock) == safeoff.EXIT_SAFE
    assert capsys.readouterr().err == ""
    assert clock.slept < 0.1  # read as soon as they opened, no full settle wait


def test_contacts_that_read_open_at_once_cost_no_wait(
    tmp_path: Path, factory: MockFactory, clock: StepTime
) -> None:
    assert _run(_config(tmp_path), factory, clock) == safeoff.EXIT_SAFE
    assert clock.sleeps == 0


def test_no_feedback_configured_unchanged(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """No feedback input on either connector: nothing to read, exit 0 as before."""
    path = _config(tmp_path, feedback2="false")
    path.write_text(path.read_text().replace("feedback_pin = 27", "feedback_pin = false"))
    factory.pin(27).drive_high()  # whatever a line it does not know of reads
    assert _run(path, factory, clock) == safeoff.EXIT_SAFE
    assert capsys.readouterr().err == ""
    assert clock.sleeps == 0
    assert all(isinstance(d, DigitalOutputDevice) for d in safeoff.held)  # no input read
    assert _output(factory, 17) == 0 and _output(factory, 6) == 0


def test_the_contactors_own_settle_time_is_allowed_and_bounded(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slow contactor (settle_s 0.5, as the running controller allows it) opening at
    0.3 s is no weld; a newer version's settle_s beyond this one's maximum is cut to it."""
    factory.pin(27).drive_high()
    clock.at(0.3, factory.pin(27).drive_low)
    assert _run(_config(tmp_path, settle="settle_s = 0.5"), factory, clock) == 0
    assert capsys.readouterr().err == ""
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    factory.pin(27).drive_high()  # welded this time
    later = StepTime()
    path = _config(tmp_path, settle="settle_s = 3600.0")
    assert _run(path, factory, later) == safeoff.EXIT_WELDED
    assert math.isclose(later.slept, safeoff.MAX_SETTLE_S)
    assert "contactor of connector 1 still closed after opening" in capsys.readouterr().err


def test_a_clock_that_does_not_move_still_ends(
    tmp_path: Path, factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wait is bounded by a count of reads too, not by the clock alone."""
    factory.pin(27).drive_high()
    reads: list[float] = []

    def stuck() -> float:
        reads.append(0.0)
        return 0.0

    code = safeoff.run(
        _config(tmp_path), pin_factory=factory, monotonic=stuck, sleep=lambda _s: None
    )
    assert code == safeoff.EXIT_WELDED
    assert len(reads) < 1000
    assert "contactor of connector 1 still closed" in capsys.readouterr().err


def test_a_shared_feedback_is_read_once(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two connectors reading one auxiliary line (combine allows it): one input device."""
    factory.pin(27).drive_high()
    assert _run(_config(tmp_path, feedback2="27"), factory, clock) == safeoff.EXIT_WELDED
    err = capsys.readouterr().err
    assert "contactor of connector 1 still closed" in err
    assert "contactor of connector 2 still closed" in err
    assert "not readable" not in err


def test_the_record_carries_settle_s(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """The configuration file unreadable, the record drives: its settle_s is the wait."""
    (tmp_path / "run").mkdir()
    record = tmp_path / "run" / safeoff.RECORD_NAME
    data = {
        "central_system": {"enabled": False},
        "reader": {"model": "none"},
        "connectors": [
            {
                "contactor": {"relay_pin": 17, "feedback_pin": 27, "settle_s": 0.4},
                "meter": {"transport": "none"},
            }
        ],
    }
    safeoff.write_record(config.parse(data), record)
    broken = tmp_path / "evsed.toml"
    broken.write_text("[central_system\n")
    factory.pin(27).drive_high()
    assert _run(broken, factory, clock, record=record) == safeoff.EXIT_WELDED
    assert math.isclose(clock.slept, 0.4)
    assert "reads closed 400 ms later" in capsys.readouterr().err


def test_a_weld_and_an_output_not_driven_both_said_exit_4(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    factory.pin(27).drive_high()
    holder = DigitalOutputDevice(13, pin_factory=factory, initial_value=True)  # not ours
    try:
        assert _run(_config(tmp_path), factory, clock) == safeoff.EXIT_WELDED
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert "contactor of connector 1 still closed after opening" in err
    assert "connector 2: pilot (GPIO13) not set to +12 V" in err


def test_a_file_that_differs_from_the_record_only_in_settle_s_says_nothing(
    tmp_path: Path, factory: MockFactory, clock: StepTime, capsys: pytest.CaptureFixture[str]
) -> None:
    """settle_s is in the record now: the same pins with another settle_s are no
    difference to report, and the record's wait is the one used."""
    (tmp_path / "run").mkdir()
    record = tmp_path / "run" / safeoff.RECORD_NAME
    contactor = {"relay_pin": 17, "feedback_pin": 27, "settle_s": 0.4}
    data = {
        "central_system": {"enabled": False},
        "reader": {"model": "none"},
        "connectors": [{"contactor": contactor, "meter": {"transport": "none"}}],
    }
    safeoff.write_record(config.parse(data), record)
    path = tmp_path / "evsed.toml"
    path.write_text("[[connectors]]\n[connectors.contactor]\nrelay_pin = 17\nfeedback_pin = 27\n")
    factory.pin(27).drive_high()
    clock.at(0.3, factory.pin(27).drive_low)  # within the record's 0.4 s, past the file's 0.1
    assert _run(path, factory, clock, record=record) == safeoff.EXIT_SAFE
    assert capsys.readouterr().err == ""
