"""A stop releases a socket lock only once its contactor reads open (review of issue 14 #10:
`Parts.shutdown` released a hold-solenoid lock at once, whatever the contacts did)."""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.charger import ConnectorParts, Parts
from evsed.hal.contactor import RelayContactor
from evsed.hal.lock import GpioLock

RELAY, FEEDBACK, LOCK = 17, 27, 24


class _Pilot:
    def set_duty(self, duty: float) -> None: ...

    def shutdown(self) -> None: ...


class _Sensor:
    def shutdown(self) -> None: ...


def _parts(factory: MockFactory) -> tuple[Parts, RelayContactor, GpioLock]:
    contactor = RelayContactor(RELAY, FEEDBACK, pin_factory=factory)
    lock = GpioLock(LOCK, pin_factory=factory)  # a hold solenoid: energised = locked
    parts = Parts([ConnectorParts(_Pilot(), _Sensor(), contactor, lock=lock)])  # type: ignore[arg-type]
    contactor.energize()
    lock.lock()
    return parts, contactor, lock


def test_a_welded_contactor_keeps_the_socket_locked_at_shutdown(
    mock_factory: MockFactory,
) -> None:
    parts, _contactor, _lock = _parts(mock_factory)
    mock_factory.pin(FEEDBACK).drive_high()  # the contacts stay closed: welded
    parts.shutdown()
    assert not mock_factory.pin(RELAY).state  # commanded open
    assert mock_factory.pin(LOCK).state  # and the plug still held


def test_a_contactor_that_opens_releases_the_lock(mock_factory: MockFactory) -> None:
    parts, contactor, _lock = _parts(mock_factory)
    feedback = mock_factory.pin(FEEDBACK)
    feedback.drive_high()
    real = contactor.deenergize

    def deenergize() -> None:  # the auxiliary contact follows the relay as it drops out
        real()
        feedback.drive_low()

    contactor.deenergize = deenergize  # type: ignore[method-assign]
    parts.shutdown()
    assert not mock_factory.pin(LOCK).state  # released, once the contacts read open
