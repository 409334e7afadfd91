"""The socket lock never opens while the meter measures current through the contactor.

`_release_lock_when_safe` looked at the contactor alone: commanded open and its auxiliary
contact not reading closed. Many contactors have no auxiliary contact (feedback None), and
then a welded one reads as open: the stop's unlock released the plug the moment the relay
was commanded off, with the meter still measuring 11 kW through the welded contacts, and
the person pulling the plug drew an arc under load. Where a meter is fitted it is a witness
too: no unlock while a stop still waits for the reading taken after the contactor opened
(current may still flow), nor while the newest reading shows current flowing (> 2 A on a
phase, or > 460 W: more than the charger's own electronics draw through the meter).

The real relay and lock drivers (hold solenoid) on gpiozero's mock pins.
"""

from __future__ import annotations

from dataclasses import replace

from gpiozero.pins.mock import MockFactory

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.controller.connector.status import StopReason
from evsed.hal.contactor import RelayContactor
from evsed.hal.lock import GpioLock
from evsed.hal.types import MeterSample, PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot

RELAY, LOCK = 17, 24
C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)
B = PilotReading(state=PilotState.B, high_v=9.0, low_v=-12.0)


def load(wh: float, amps: float) -> MeterSample:
    return MeterSample(
        current_a=(amps, amps, amps),
        power_total_w=3 * 230.0 * amps,
        energy_import_wh=wh,
    )


def charging(factory: MockFactory) -> tuple[Connector, RelayContactor, FakeClock]:
    clock = FakeClock()
    contactor = RelayContactor(RELAY, pin_factory=factory, monotonic=clock.monotonic)  # no aux
    lock = GpioLock(LOCK, pin_factory=factory)  # hold solenoid: energised = locked
    connector = Connector(
        Settings(free_vend=True, has_meter=True),
        pilot=Pilot(),
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
        lock=lock,
    )
    connector.on_rcd_self_test(True)
    connector.on_meter_sample(load(1000.0, 0.0), clock.monotonic())
    connector.on_pilot(C)
    connector.on_meter_sample(load(1010.0, 16.0), clock.monotonic())
    assert contactor.energized and factory.pin(LOCK).state
    return connector, contactor, clock


async def test_a_welded_contactor_without_feedback_keeps_the_lock_while_current_flows(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory)
    assert connector.request_stop(StopReason.REMOTE)
    # The EV keeps drawing: after the soft stop the relay is commanded open, the contacts
    # stay welded (nothing reads them), and the meter goes on measuring 16 A.
    await clock.advance(connector.settings.power_off_under_load_s)
    connector.supervise()
    assert not contactor.energized
    assert mock_factory.pin(LOCK).state, "unlocked before any reading after the relay opened"
    for wh in (1020.0, 1030.0, 1040.0, 1050.0, 1060.0):
        await clock.advance(1.0)
        connector.on_meter_sample(load(wh, 16.0), clock.monotonic())
        connector.supervise()
        assert mock_factory.pin(LOCK).state, "unlocked while the meter measures 16 A"
    assert not connector.stop_pending  # the stop was recorded by its bound all the same
    # The current stops (someone opened the breaker): judged welded, the lock waits for
    # someone to look (a reset), then an UnlockConnector releases it.
    await clock.advance(1.0)
    connector.on_meter_sample(load(1060.0, 0.0), clock.monotonic())
    connector.supervise()
    assert mock_factory.pin(LOCK).state
    connector.reset_faults()
    assert connector.unlock() == "Unlocked"
    assert not mock_factory.pin(LOCK).state


async def test_a_contactor_that_opens_unlocks_at_the_first_reading_without_load(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory)
    assert connector.request_stop(StopReason.REMOTE)
    await clock.advance(0.5)
    connector.on_pilot(B)  # the EV stops drawing and opens S2: the relay opens at once
    connector.supervise()  # (the same sampler tick)
    assert not contactor.energized
    assert mock_factory.pin(LOCK).state  # the stop's reading is not taken yet
    await clock.advance(0.2)
    connector.on_meter_sample(load(1012.0, 0.0), clock.monotonic())
    connector.supervise()
    assert not connector.stop_pending
    assert not mock_factory.pin(LOCK).state


# A welded contactor without an auxiliary contact was never judged at all: nothing but the
# feedback input could raise Fault.WELDED, and the over-current check ignores the meter with
# the relay commanded open. The connector went Available with the socket's contacts live.


async def test_current_measured_well_after_the_relay_opened_is_a_weld(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory)
    assert connector.request_stop(StopReason.REMOTE)
    await clock.advance(connector.settings.power_off_under_load_s)
    connector.supervise()
    assert not contactor.energized
    for wh in (1020.0, 1030.0, 1040.0, 1050.0, 1060.0):
        await clock.advance(1.0)
        connector.on_meter_sample(load(wh, 16.0), clock.monotonic())
        connector.supervise()
    assert connector.status.status == "Faulted"
    assert connector.status.error_code == "PowerSwitchFailure"
    connector.reset_faults()  # someone has looked: the probe (no feedback) lets it clear
    connector.on_meter_sample(load(1060.0, 0.0), clock.monotonic())
    connector.supervise()
    assert connector.status.status != "Faulted"


async def test_a_meter_slow_to_refresh_after_the_open_is_no_weld(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory)
    connector.on_pilot(B)  # the EV stops: the relay opens at once
    connector.supervise()
    assert not contactor.energized
    for wh, amps in ((1011.0, 16.0), (1011.0, 16.0), (1011.0, 0.0), (1011.0, 0.0)):
        await clock.advance(1.0)  # the first two polls still show the old registers
        connector.on_meter_sample(load(wh, amps), clock.monotonic())
        connector.supervise()
    assert connector.status.status != "Faulted"
    assert not connector.faults


# The charger's stop (systemctl stop, a Reset): outputs cut, the transaction stopped, one
# more meter reading, then `take_pending_stop`, and the core stops. The unlock waited for a
# stop that no tick would look at again: a motor lock stayed locked across the restart.


async def test_the_chargers_stop_unlocks_once_its_last_reading_shows_no_load(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging(mock_factory)
    connector.cut_outputs()
    connector.shutdown(StopReason.REBOOT)
    assert not contactor.energized
    assert mock_factory.pin(LOCK).state  # the stop's reading is not taken yet
    await clock.advance(0.3)
    connector.on_meter_sample(load(1011.0, 0.0), clock.monotonic())  # the final reading
    connector.take_pending_stop()
    assert not mock_factory.pin(LOCK).state


async def test_the_chargers_stop_keeps_the_lock_when_the_last_reading_shows_load(
    mock_factory: MockFactory,
) -> None:
    connector, _contactor, clock = charging(mock_factory)
    connector.cut_outputs()
    connector.shutdown(StopReason.REBOOT)
    await clock.advance(0.3)
    connector.on_meter_sample(load(1011.0, 16.0), clock.monotonic())  # still flowing
    connector.take_pending_stop()
    assert mock_factory.pin(LOCK).state


async def test_the_chargers_own_standby_through_the_meter_is_no_weld(
    mock_factory: MockFactory,
) -> None:
    """A meter upstream of the contactor sees the charger's electronics: 150 W (a fan, a
    display) never traps the cable, nor is it judged a weld (a reset to clear)."""
    connector, contactor, clock = charging(mock_factory)
    assert connector.request_stop(StopReason.REMOTE)
    connector.on_pilot(B)
    connector.supervise()
    assert not contactor.energized
    standby = MeterSample(current_a=(0.65, 0.0, 0.0), power_total_w=150.0, energy_import_wh=1011)
    for _ in range(6):
        await clock.advance(1.0)
        connector.on_meter_sample(standby, clock.monotonic())
        connector.supervise()
    assert not connector.faults
    assert not mock_factory.pin(LOCK).state  # released once the stop's reading was taken


# A contactor with an auxiliary contact that reads open has opened: the unlock does not
# wait for the meter (a Reset with the meter just gone must not trap the cable); only a
# reading taken since the open that still shows current (the two disagree) keeps the lock.

AUX = 27


def charging_with_aux(factory: MockFactory) -> tuple[Connector, RelayContactor, FakeClock]:
    clock = FakeClock()
    contactor = RelayContactor(RELAY, AUX, pin_factory=factory, monotonic=clock.monotonic)
    lock = GpioLock(LOCK, pin_factory=factory)
    connector = Connector(
        Settings(free_vend=True, has_meter=True),
        pilot=Pilot(),
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
        lock=lock,
    )
    connector.on_rcd_self_test(True)
    connector.on_meter_sample(load(1000.0, 0.0), clock.monotonic())
    connector.on_pilot(C)
    factory.pin(AUX).drive_high()  # the contacts follow the relay
    connector.on_meter_sample(load(1010.0, 16.0), clock.monotonic())
    connector.supervise()
    assert contactor.energized and factory.pin(LOCK).state
    return connector, contactor, clock


async def test_an_auxiliary_contact_that_reads_open_unlocks_without_waiting_for_the_meter(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging_with_aux(mock_factory)
    assert connector.request_stop(StopReason.REMOTE)
    connector.on_pilot(B)
    assert not contactor.energized
    await clock.advance(0.05)
    mock_factory.pin(AUX).drive_low()  # the contacts have opened
    connector.supervise()
    assert connector.stop_pending  # its reading is still to come: no matter for the lock
    assert not mock_factory.pin(LOCK).state


async def test_an_auxiliary_contact_open_with_current_measured_after_it_keeps_the_lock(
    mock_factory: MockFactory,
) -> None:
    connector, contactor, clock = charging_with_aux(mock_factory)
    assert connector.request_stop(StopReason.LOCAL)  # a card: the lock stays for now
    connector.on_pilot(B)
    await clock.advance(0.05)
    mock_factory.pin(AUX).drive_low()  # reads open ...
    connector.supervise()
    assert not contactor.energized and mock_factory.pin(LOCK).state
    await clock.advance(0.5)  # ... yet the meter, polled since, measures 16 A
    connector.on_meter_sample(load(1011.0, 16.0), clock.monotonic())
    connector.supervise()
    assert connector.unlock() == "Pending"  # UnlockConnector: not while current flows
    connector.supervise()
    assert mock_factory.pin(LOCK).state


# --- no weld where the meter cannot show one (review of the weld-by-meter judgement) ---------


async def test_a_gateway_serving_cached_registers_is_no_weld(mock_factory: MockFactory) -> None:
    """A Modbus-TCP gateway that polls the meter itself served the registers of before the
    open for seconds: six readings of 16 A at 1 s raised WELDED (cleared only by a reset)
    after an ordinary stop. Its energy register stands still: no energy, no weld."""
    connector, contactor, clock = charging(mock_factory)
    connector.on_pilot(B)
    connector.supervise()
    assert not contactor.energized
    for _ in range(6):
        await clock.advance(1.0)
        connector.on_meter_sample(load(1010.0, 16.0), clock.monotonic())
        connector.supervise()
    assert Fault.WELDED not in connector.faults
    connector.on_meter_sample(load(1010.0, 0.0), clock.monotonic())  # the cache refreshed
    connector.supervise()
    assert not connector.faults


async def test_other_loads_on_the_phases_a_one_phase_connector_does_not_use_are_no_weld(
    mock_factory: MockFactory,
) -> None:
    clock = FakeClock()
    contactor = RelayContactor(RELAY, pin_factory=mock_factory, monotonic=clock.monotonic)
    connector = Connector(
        Settings(free_vend=True, has_meter=True, phases=1),
        pilot=Pilot(),
        contactor=contactor,
        hooks=LocalHooks(),
        clock=clock,
    )
    connector.on_rcd_self_test(True)
    others = MeterSample(
        current_a=(0.0, 5.0, 5.0),
        power_w=(0.0, 1150.0, 1150.0),
        power_total_w=2300.0,
        energy_import_wh=1000.0,
    )
    for i in range(8):  # idle, the relay open: the house's loads on L2 and L3
        await clock.advance(1.0)
        connector.on_meter_sample(replace(others, energy_import_wh=1000.0 + 5 * i))
        connector.supervise()
    assert not contactor.energized
    assert Fault.WELDED not in connector.faults


async def test_a_weld_still_shows_with_the_energy_counting(mock_factory: MockFactory) -> None:
    """The energy condition leaves a real weld judged: load and energy growing."""
    connector, _contactor, clock = charging(mock_factory)
    connector.on_pilot(B)
    connector.supervise()
    for wh in (1011.0, 1012.0, 1020.0, 1030.0, 1040.0):
        await clock.advance(1.0)
        connector.on_meter_sample(load(wh, 16.0), clock.monotonic())
        connector.supervise()
    assert Fault.WELDED in connector.faults
    assert mock_factory.pin(LOCK).state  # the plug stays held
