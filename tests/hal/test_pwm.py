from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.interfaces import PilotOutput
from evsed.hal.pilot.duty import current_to_duty
from evsed.hal.pilot.pwm_gpiozero import GpiozeroPwmPilot
from evsed.hal.pilot.pwm_sysfs import SysfsPwmPilot

# -- gpiozero -------------------------------------------------------------------------


def test_gpiozero_pilot_starts_steady_high_at_1khz(mock_factory: MockFactory) -> None:
    pilot = GpiozeroPwmPilot(18)
    assert isinstance(pilot, PilotOutput)
    pin = mock_factory.pin(18)
    assert (pin.frequency, pin.state, pilot.duty) == (1000, 1.0, 1.0)
    assert pilot.resolution == 0.001
    pilot.shutdown()


def test_gpiozero_pilot_duty_reaches_pin_floored(mock_factory: MockFactory) -> None:
    pilot = GpiozeroPwmPilot(18, resolution=0.01)
    pin = mock_factory.pin(18)
    pilot.set_duty(current_to_duty(16, 0.001))  # 26.6 % floored to lgpio's 1 % steps
    assert pin.state == pytest.approx(0.26)
    assert pilot.duty == pytest.approx(0.26)
    pilot.set_duty(0.0)  # state F: steady -12 V
    assert pin.state == 0.0
    pilot.set_duty(7.0)  # out of range clamps
    assert pin.state == 1.0
    pilot.shutdown()


def test_gpiozero_pilot_nan_means_steady_high(mock_factory: MockFactory) -> None:
    pilot = GpiozeroPwmPilot(18)
    pilot.set_duty(0.5)
    pilot.set_duty(float("nan"))
    assert mock_factory.pin(18).state == 1.0
    pilot.shutdown()


def test_gpiozero_pilot_shutdown_goes_steady_high_then_releases(
    mock_factory: MockFactory,
) -> None:
    pilot = GpiozeroPwmPilot(18)
    pilot.set_duty(0.533)
    pin = mock_factory.pin(18)
    pin.clear_states()
    pilot.shutdown()
    assert [s.state for s in pin.states][:2] == [0.533, 1.0]
    assert pin.function == "input" and pin.frequency is None
    pilot.shutdown()  # idempotent


# -- sysfs ----------------------------------------------------------------------------


class FakePwmChip:
    """A /sys/class/pwm/pwmchipN tree whose `export` is a FIFO served by a thread that
    creates pwmM/ like the kernel does. No polling: the thread blocks on the FIFO."""

    def __init__(self, root: Path, chip: int = 0) -> None:
        self.dir = root / f"pwmchip{chip}"
        self.dir.mkdir(parents=True)
        (self.dir / "npwm").write_text("2\n")
        self.export = self.dir / "export"
        os.mkfifo(self.export)
        self.exports: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.export) as f:
                text = f.read().strip()
            if text == "stop":
                return
            ch = int(text)
            self.exports.append(ch)
            d = self.dir / f"pwm{ch}"
            d.mkdir()
            for name, value in (
                ("period", "0"),
                ("duty_cycle", "0"),
                ("enable", "0"),
                ("polarity", "normal"),
            ):
                (d / name).write_text(value + "\n")

    def read(self, ch: int, name: str) -> str:
        return (self.dir / f"pwm{ch}" / name).read_text().strip()

    def close(self) -> None:
        with open(self.export, "w") as f:
            f.write("stop")
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()


@pytest.fixture
def chip(tmp_path: Path) -> Iterator[FakePwmChip]:
    c = FakePwmChip(tmp_path)
    yield c
    c.close()


def test_sysfs_exports_and_starts_steady_high(chip: FakePwmChip, tmp_path: Path) -> None:
    pilot = SysfsPwmPilot(0, 1, root=tmp_path)
    assert isinstance(pilot, PilotOutput)
    assert chip.exports == [1]
    assert chip.read(1, "period") == "1000000"
    assert chip.read(1, "duty_cycle") == "1000000"
    assert chip.read(1, "enable") == "1"
    assert pilot.resolution == pytest.approx(1e-6)


def test_sysfs_duty_in_nanoseconds_floored(chip: FakePwmChip, tmp_path: Path) -> None:
    pilot = SysfsPwmPilot(0, 0, root=tmp_path)
    pilot.set_duty(current_to_duty(16, pilot.resolution))  # 26.66666 %
    assert chip.read(0, "duty_cycle") == "266666"
    assert pilot.duty == pytest.approx(0.266666)
    pilot.set_duty(0.0)
    assert chip.read(0, "duty_cycle") == "0"
    pilot.shutdown()
    assert chip.read(0, "duty_cycle") == "1000000"  # steady +12 V, still enabled
    assert chip.read(0, "enable") == "1"
    with pytest.raises(RuntimeError):
        pilot.set_duty(0.5)


def test_sysfs_every_duty_step_reads_back_as_given(chip: FakePwmChip, tmp_path: Path) -> None:
    """`set_duty` floored `duty * period_ns`, which floating point leaves just under the
    whole ns for some duties (15.2 A: 0.253333 * 1e6 = 253332.99999999997 -> 253332 ns):
    the driver reported 1 ns less than it was given, and the connector, seeing a duty other
    than the one it wants, wrote it again at every step (100 sysfs writes a second while
    charging, each with a "duty" note). 8 of the 741 currents from 6 to 80 A at 1 kHz."""
    pilot = SysfsPwmPilot(0, 0, root=tmp_path)
    differ = []
    for tenths in range(60, 801):
        duty = current_to_duty(tenths / 10, pilot.resolution)
        pilot.set_duty(duty)
        assert int(chip.read(0, "duty_cycle")) / pilot.period_ns <= duty  # never more
        if pilot.duty != duty:
            differ.append((tenths / 10, duty, pilot.duty))
    assert differ == []
    pilot.set_duty(current_to_duty(15.2, pilot.resolution))
    assert chip.read(0, "duty_cycle") == "253333"


def test_sysfs_reuses_exported_channel_and_orders_writes(chip: FakePwmChip, tmp_path: Path) -> None:
    d = chip.dir / "pwm0"
    d.mkdir()
    # Left over from a 100 Hz user: duty 8 ms > our new 1 ms period, so duty goes first.
    for name, value in (("period", "10000000"), ("duty_cycle", "8000000"), ("enable", "1")):
        (d / name).write_text(value)
    written: list[str] = []
    real_write = SysfsPwmPilot._write

    def spy(self: SysfsPwmPilot, name: str, value: int) -> None:
        written.append(name)
        assert name != "period" or value >= int(chip.read(0, "duty_cycle"))
        real_write(self, name, value)

    SysfsPwmPilot._write = spy  # type: ignore[method-assign]
    try:
        SysfsPwmPilot(0, 0, root=tmp_path)
    finally:
        SysfsPwmPilot._write = real_write  # type: ignore[method-assign]
    assert chip.exports == []
    assert written[:2] == ["duty_cycle", "period"]
    assert chip.read(0, "period") == "1000000"


def test_sysfs_export_timeout_is_bounded(tmp_path: Path) -> None:
    d = tmp_path / "pwmchip3"
    d.mkdir()
    (d / "export").write_text("")  # a plain file: nothing ever appears
    now = [0.0]

    def fake_sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(TimeoutError):
        SysfsPwmPilot(
            3, 0, root=tmp_path, export_timeout_s=0.5, monotonic=lambda: now[0], sleep=fake_sleep
        )
    assert 0.5 <= now[0] < 0.6
