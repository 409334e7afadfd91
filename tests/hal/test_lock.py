from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.interfaces import LockActuator
from evsed.hal.lock import GpioLock
from evsed.hwmocks.pins import BenchPins
from tests.support.clock import FakeClock


@pytest.fixture
def bench(mock_factory: MockFactory) -> Iterator[BenchPins]:
    b = BenchPins(mock_factory)
    yield b
    b.close()


async def test_motor_lock_pulses_and_feedback(bench: BenchPins, mock_factory: MockFactory) -> None:
    clock = FakeClock()
    lock = GpioLock(24, 25, 5, pulse_s=0.3, clock=clock)
    assert isinstance(lock, LockActuator)
    lock_pin, unlock_pin = mock_factory.pin(24), mock_factory.pin(25)
    assert lock.locked() is False
    lock.lock()
    assert lock_pin.state and not unlock_pin.state and lock.busy
    assert lock.locked() is True
    await clock.advance(0.29)
    assert lock_pin.state
    await clock.advance(0.02)
    assert not lock_pin.state and not lock.busy
    lock.unlock()
    assert unlock_pin.state and not lock_pin.state
    await clock.advance(0.3)
    assert not unlock_pin.state
    assert lock.locked() is False
    lock.shutdown()


async def test_reversal_mid_pulse_never_drives_both_legs(
    bench: BenchPins, mock_factory: MockFactory
) -> None:
    clock = FakeClock()
    lock = GpioLock(24, 25, 5, pulse_s=0.3, clock=clock)
    lock_pin, unlock_pin = mock_factory.pin(24), mock_factory.pin(25)
    lock.lock()
    await clock.advance(0.1)
    lock_pin.clear_states()
    lock.unlock()
    assert not lock_pin.state and unlock_pin.state
    # lock leg went low before the unlock leg rose: no state with both high was possible
    assert [bool(s.state) for s in lock_pin.states] == [True, False]
    await clock.advance(0.5)
    assert not unlock_pin.state and not lock_pin.state
    lock.shutdown()


async def test_jammed_lock_shows_in_feedback(bench: BenchPins) -> None:
    clock = FakeClock()
    lock = GpioLock(24, 25, 5, clock=clock)
    bench.lock_jam(True)
    lock.lock()
    await clock.advance(1)
    assert lock.locked() is False
    lock.shutdown()


async def test_shutdown_mid_pulse_releases_outputs(
    bench: BenchPins, mock_factory: MockFactory
) -> None:
    clock = FakeClock()
    lock = GpioLock(24, 25, 5, clock=clock)
    lock.lock()
    lock.shutdown()
    await clock.advance(1)
    assert mock_factory.pin(24).function == "input"
    assert not mock_factory.pin(24).state


def test_hold_solenoid_model(mock_factory: MockFactory) -> None:
    bench = BenchPins(mock_factory, unlock_pin=None)
    lock = GpioLock(24, feedback_pin=5)
    lock.lock()
    assert mock_factory.pin(24).state and lock.locked() is True
    lock.unlock()
    assert not mock_factory.pin(24).state and lock.locked() is False
    lock.lock()
    lock.shutdown()  # de-energising a hold output releases it
    assert bench.locked is False
    bench.close()


def test_no_feedback(mock_factory: MockFactory) -> None:
    lock = GpioLock(24)
    assert lock.locked() is None
    lock.shutdown()


def test_motor_lock_driven_from_a_thread_ends_its_pulse_by_timer(
    bench: BenchPins, mock_factory: MockFactory
) -> None:
    """The safety core drives the lock from its own thread, where no event loop runs."""
    import threading

    lock = GpioLock(24, 25, 5, pulse_s=0.05)
    lock_pin, unlock_pin = mock_factory.pin(24), mock_factory.pin(25)
    assert bench.lock_out is lock_pin
    low = threading.Event()
    previous = bench.lock_out.on_change

    def on_change() -> None:
        if previous is not None:
            previous()
        if not lock_pin.state:
            low.set()

    bench.lock_out.on_change = on_change
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            lock.lock()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=drive)
    t.start()
    t.join(1.0)
    assert errors == []
    assert lock_pin.state and not unlock_pin.state and lock.busy
    assert low.wait(2.0)  # the pulse ended without any loop
    assert not lock.busy
    assert lock.locked() is True
    lock.shutdown()
