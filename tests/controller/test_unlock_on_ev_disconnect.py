"""After a card's stop the lock holds the cable until the EV side is unplugged, then lets go.

A Local stop (the same card again) keeps the socket's lock, so that nobody but the driver
takes the cable while the car still holds it; evsed advertises UnlockConnectorOnEVSideDisconnect
= true for exactly that. But nothing released the lock when the EV left (CP to A): the cable
stayed locked in the socket, the connector Available, until someone sent an UnlockConnector.
Now the EV's disconnect releases it (once the contactor reads open, as every unlock), and
with StopTransactionOnEVSideDisconnect = false (the session goes on across a re-plug) it
stays.

The real lock driver (hold solenoid) on gpiozero's mock pins.
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.controller.connector.status import StopReason
from evsed.hal.lock import GpioLock
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot, Relay

LOCK = 24
A = PilotReading(state=PilotState.A, high_v=12.0, low_v=12.0)
B = PilotReading(state=PilotState.B, high_v=9.0, low_v=-12.0)
C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


def charging(factory: MockFactory, settings: Settings) -> tuple[Connector, Relay, FakeClock]:
    clock = FakeClock()
    relay = Relay()
    connector = Connector(
        settings,
        pilot=Pilot(),
        contactor=relay,
        hooks=LocalHooks(),
        clock=clock,
        lock=GpioLock(LOCK, pin_factory=factory),
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(C)
    assert relay.energized and factory.pin(LOCK).state
    return connector, relay, clock


async def test_a_card_stop_keeps_the_lock_until_the_ev_is_unplugged(
    mock_factory: MockFactory,
) -> None:
    connector, relay, clock = charging(mock_factory, Settings(free_vend=True))
    assert connector.request_stop(StopReason.LOCAL, "FREEVEND")
    connector.on_pilot(B)
    connector.supervise()
    assert not relay.energized
    assert mock_factory.pin(LOCK).state  # a Local stop keeps the lock: the car holds the plug
    await clock.advance(60)
    connector.supervise()
    assert mock_factory.pin(LOCK).state
    connector.on_pilot(A)  # the driver unplugs the car's end
    connector.supervise()
    assert not mock_factory.pin(LOCK).state, "cable left locked in the socket"
    assert connector.status.status == "Available"


async def test_a_session_that_outlives_the_unplug_keeps_its_lock(
    mock_factory: MockFactory,
) -> None:
    settings = Settings(free_vend=True, stop_on_ev_disconnect=False)
    connector, relay, _clock = charging(mock_factory, settings)
    connector.on_pilot(A)  # StopTransactionOnEVSideDisconnect = false: the session goes on
    connector.supervise()
    assert connector.transaction is not None and not relay.energized
    assert mock_factory.pin(LOCK).state


async def test_an_unplug_without_a_session_moves_no_lock(mock_factory: MockFactory) -> None:
    """Plugged and unplugged with no card: the lock never engaged, nothing is pulsed."""
    clock = FakeClock()
    lock = GpioLock(LOCK, pin_factory=mock_factory)
    unlocks: list[bool] = []
    real = lock.unlock

    def unlock() -> None:
        unlocks.append(True)
        real()

    lock.unlock = unlock  # type: ignore[method-assign]
    connector = Connector(
        Settings(), pilot=Pilot(), contactor=Relay(), hooks=LocalHooks(), clock=clock, lock=lock
    )
    connector.on_rcd_self_test(True)
    connector.on_pilot(B)
    connector.on_pilot(A)
    connector.supervise()
    assert unlocks == []


async def test_with_unlock_on_ev_side_disconnect_false_the_lock_stays(
    mock_factory: MockFactory,
) -> None:
    """UnlockConnectorOnEVSideDisconnect = false (the Central System's ChangeConfiguration,
    applied through `Charger.apply_session_settings`): the cable stays locked after the EV
    leaves, until an UnlockConnector."""
    settings = Settings(free_vend=True, unlock_on_ev_disconnect=False)
    connector, relay, _clock = charging(mock_factory, settings)
    assert connector.request_stop(StopReason.LOCAL, "FREEVEND")
    connector.on_pilot(B)
    connector.supervise()
    connector.on_pilot(A)
    connector.supervise()
    assert not relay.energized
    assert mock_factory.pin(LOCK).state, "the lock let go although the key says to keep it"
