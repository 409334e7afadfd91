"""UnlockConnector's bound covers the stop's meter reading where the meter is a witness.

With a meter fitted the unlock waits for a reading taken since the contactor opened (no
auxiliary contact: the stop's reading; with one: any reading then that still shows load).
An EV that draws until the soft stop forces the relay off leaves the meter's registers
showing that load in the reading polled at once after the open (they refresh every
0.5-1 s): the unlock waits for the next poll. The bound of the wait (the soft stop plus
`unlock_margin_s`) did not count that poll, so UnlockConnector was answered UnlockFailed,
withdrawn, and the cable stayed locked, where the lock opened a poll later with no load.
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.contactor import RelayContactor
from evsed.hal.lock import GpioLock
from evsed.hal.types import MeterSample, PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot

RELAY, AUX, LOCK = 17, 27, 24
C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
POLL_S = 1.0  # the meter's poll interval (config default)


def load(wh: float, amps: float) -> MeterSample:
    return MeterSample(
        current_a=(amps, amps, amps), power_total_w=3 * 230.0 * amps, energy_import_wh=wh
    )


def charging(factory: MockFactory, aux: bool) -> tuple[Connector, RelayContactor, FakeClock]:
    clock = FakeClock()
    contactor = RelayContactor(
        RELAY, AUX if aux else None, pin_factory=factory, monotonic=clock.monotonic
    )
    connector = Connector(
        Settings(free_vend=True, has_meter=True, stop_meter_wait_s=POLL_S + 2.0),
        pilot=Pilot(),
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
        lock=GpioLock(LOCK, pin_factory=factory),
    )
    connector.on_rcd_self_test(True)
    connector.on_meter_sample(load(1000.0, 0.0), clock.monotonic())
    connector.on_pilot(C)
    if aux:
        factory.pin(AUX).drive_high()
    connector.on_meter_sample(load(1010.0, 16.0), clock.monotonic())
    connector.supervise()
    assert contactor.energized and factory.pin(LOCK).state
    return connector, contactor, clock


async def unlock_of_an_ev_that_keeps_drawing(
    factory: MockFactory, aux: bool, next_poll_s: float
) -> str:
    connector, contactor, clock = charging(factory, aux)
    answer = connector.unlock()
    assert answer == "Pending"
    # The EV ignores the withdrawn PWM: the soft stop forces the relay off under load.
    t = 0.0
    while contactor.energized:
        await clock.advance(0.5)
        t += 0.5
        connector.on_meter_sample(load(1010.0 + t, 16.0), clock.monotonic() - 0.1)
        connector.supervise()
    if aux:
        factory.pin(AUX).drive_low()
        connector.supervise()
    # The stop's reading, polled at once: the registers still show the load.
    connector.on_meter_sample(load(1020.0, 16.0), clock.monotonic())
    connector.supervise()
    assert factory.pin(LOCK).state
    # The next poll (its answer takes 0.2 s on RTU) shows no load.
    await clock.advance(next_poll_s)
    polled = clock.monotonic()
    connector.supervise()
    answer = connector.unlock_result()
    await clock.advance(0.2)
    connector.on_meter_sample(load(1020.0, 0.0), polled)
    connector.supervise()
    if answer == "Pending":
        answer = connector.unlock_result()
    if next_poll_s > POLL_S:
        assert answer == "UnlockFailed"
    return answer


async def test_an_unlock_waits_for_the_next_poll_without_an_auxiliary_contact(
    mock_factory: MockFactory,
) -> None:
    assert await unlock_of_an_ev_that_keeps_drawing(mock_factory, False, POLL_S) == "Unlocked"
    assert not mock_factory.pin(LOCK).state


async def test_an_unlock_given_up_is_no_unlocked_for_a_lock_without_a_switch(
    mock_factory: MockFactory,
) -> None:
    """A lock with no position switch (locked() None) whose unlock was withdrawn, not
    driven, read "Unlocked": the charger told the Central System so with the cable held."""
    await unlock_of_an_ev_that_keeps_drawing(mock_factory, False, 3 * POLL_S + 2.5)
    assert mock_factory.pin(LOCK).state  # past every bound: withdrawn, the lock kept


async def test_a_weld_answers_unlock_failed_for_a_lock_without_a_switch(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory, False)
    connector.on_pilot(PilotReading(state=PilotState.B, high_v=9.0, low_v=-12.0))
    connector.supervise()
    assert not contactor.energized
    for wh in (1011.0, 1012.0, 1013.0, 1014.0, 1015.0):
        await clock.advance(1.0)
        connector.on_meter_sample(load(wh, 16.0), clock.monotonic())  # welded
        connector.supervise()
    assert connector.status.error_code == "PowerSwitchFailure"
    assert connector.unlock() == "UnlockFailed"
    assert connector.unlock_result() == "UnlockFailed"
    assert mock_factory.pin(LOCK).state


async def test_the_unlock_bound_the_charger_waits_covers_the_meter(
    mock_factory: MockFactory,
) -> None:
    connector, _, _ = charging(mock_factory, False)
    s = connector.settings
    assert connector.unlock_bound_s() >= (
        s.power_off_under_load_s + s.unlock_margin_s + s.stop_meter_wait_s
    )
