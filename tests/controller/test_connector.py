"""The connector on the simulated bench: transitions, safety rules, faults and their clearing.

Driven by a FakeClock: the sampler, limiter and EV follow simulated time, so a minute of
charging takes milliseconds and every timing assertion is exact. Cards go through the real
RDM6300 driver on a pseudo-terminal, so those waits are on events, in real time.
"""

from __future__ import annotations

from typing import Any

import pytest

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.status import StopReason
from evsed.controller.limiter import SmartChargingLimit
from tests.support.bench_rig import MakeRig, Rig
from tests.support.stopping import stop_note

CARD = "AABBCCDDEE"
OTHER_CARD = "0102030405"


@pytest.fixture
async def free(make_rig: MakeRig) -> Rig:
    return await make_rig(authorization={"free_vend": True})


@pytest.fixture
async def tags(make_rig: MakeRig) -> Rig:
    return await make_rig()


async def charging(rig: Rig) -> None:
    await rig.until(lambda: rig.status == "Charging", within_s=3)


async def present(rig: Rig, card: str = CARD) -> None:
    seen = rig.note("authorized", lambda f: f["id_tag"] == card)
    await rig.bench.present_card(card)
    await seen


# ---------------------------------------------------------------- authorisation, transitions


async def test_free_vend_charges_a_plugged_ev(free: Rig) -> None:
    assert free.status == "Available"
    assert free.sim.pins.pilot_duty == 1.0  # steady +12 V: nothing offered
    await free.bench.plug(1)
    await charging(free)
    assert free.sim.pins.relay_energized
    assert free.sim.pins.pilot_duty == pytest.approx(0.533)  # 32 A, floored
    tx = free.stack.hooks.started[0]
    assert tx.id_tag == "FREEVEND"
    await free.run(5)
    sample = await free.meter_sample()
    assert sample["power_w"] > 20_000
    await free.bench.unplug(1)
    await free.until(lambda: free.status == "Available", within_s=1)
    assert not free.sim.pins.relay_energized
    stop = free.stack.hooks.stopped[0]
    assert stop.reason == StopReason.EV_DISCONNECTED
    assert stop.meter_stop_wh > tx.meter_start_wh


async def test_no_card_no_energy_then_a_known_card_charges(tags: Rig) -> None:
    await tags.bench.plug(1)
    await tags.until(lambda: tags.status == "Preparing")
    await tags.run(5)
    assert not tags.sim.pins.relay_energized
    assert tags.sim.pins.pilot_duty == 1.0
    assert tags.sim.ev.state == "B"  # a real car waits for PWM before closing S2
    await present(tags, OTHER_CARD)  # unknown: refused
    await tags.run(1)
    assert tags.status == "Preparing"
    assert tags.connector.transaction is None
    await present(tags, CARD)
    await charging(tags)
    assert tags.connector.transaction is not None
    assert tags.connector.transaction.id_tag == CARD


async def test_card_first_then_plug(tags: Rig) -> None:
    await present(tags, CARD)
    assert tags.status == "Preparing"
    await tags.run(10)
    await tags.bench.plug(1)
    await charging(tags)


async def test_authorisation_lapses_after_connection_timeout(tags: Rig) -> None:
    await present(tags, CARD)
    assert tags.status == "Preparing"
    took = await tags.until(lambda: tags.status == "Available", within_s=70)
    assert 59.5 <= took <= 60.5  # ConnectionTimeOut default 60 s
    await tags.bench.plug(1)
    await tags.run(2)
    assert tags.connector.transaction is None


async def test_same_card_stops_locally_then_finishing_until_unplug(tags: Rig) -> None:
    await tags.bench.plug(1)
    await present(tags, CARD)
    await charging(tags)
    # The same card again (straight to the charger: the reader's own debounce runs in
    # real time and is tested with the reader).
    assert tags.stack.charger is not None
    tags.stack.charger.present_tag(CARD.lower())
    assert tags.sim.pins.pilot_duty == 1.0  # PWM withdrawn at once
    await tags.until(lambda: not tags.sim.pins.relay_energized, within_s=6.5)
    # Recorded once the contactor has opened and the meter was read after it.
    assert (await stop_note(tags))["reason"] == "Local"
    assert tags.status == "Finishing"
    await tags.bench.unplug(1)
    await tags.until(lambda: tags.status == "Available")


async def test_remote_stop_reason_and_energy(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.run(3)
    await free.meter_sample()
    assert free.connector.request_stop(StopReason.REMOTE)
    assert free.sim.pins.pilot_duty == 1.0  # PWM withdrawn at once
    await free.until(lambda: not free.sim.pins.relay_energized, within_s=6.5)
    await stop_note(free)
    stop = free.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.REMOTE
    assert stop.meter_stop_wh - stop.transaction.meter_start_wh > 0


async def test_ev_pause_is_suspended_ev_and_resumes(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.set_ev(1, paused=True)
    await free.until(lambda: free.status == "SuspendedEV", within_s=1)
    assert not free.sim.pins.relay_energized
    assert free.sim.pins.pilot_duty < 1.0  # still offering: the EV chose to pause
    assert free.connector.transaction is not None
    await free.bench.set_ev(1, paused=False)
    await charging(free)


async def test_full_battery_ends_in_suspended_ev(make_rig: MakeRig) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await rig.bench.set_ev(1, soc=99.9, capacity_kwh=10.0)
    await rig.bench.plug(1)
    await charging(rig)
    await rig.until(lambda: rig.status == "SuspendedEV", within_s=120)
    assert not rig.sim.pins.relay_energized


# ---------------------------------------------------------------- safety timings


@pytest.mark.parametrize(
    ("change", "expect_status"),
    [
        ("pause", "SuspendedEV"),  # C -> B
        ("unplug", "Available"),  # C -> A
        ("pilot_short", "SuspendedEVSE"),  # C -> E
    ],
)
async def test_contactor_opens_within_100_ms_of_leaving_c(
    free: Rig, change: str, expect_status: str
) -> None:
    await free.bench.plug(1)
    await charging(free)
    if change == "pause":
        await free.bench.set_ev(1, paused=True)
    elif change == "unplug":
        await free.bench.unplug(1)
    else:
        await free.bench.inject_fault("pilot_short", 1, True)
    took = await free.until(lambda: not free.sim.pins.relay_energized, within_s=0.1)
    assert took <= 0.1
    await free.until(lambda: free.status == expect_status, within_s=1)


async def test_pwm_only_when_6_amps_may_be_drawn(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    charger = free.stack.charger
    assert charger is not None
    charger.set_smart_charging_limit(1, SmartChargingLimit(10.0))
    assert free.sim.pins.pilot_duty == pytest.approx(0.166)
    await free.run(4)
    assert max(free.sim.ev.phase_currents_a()) == pytest.approx(9.96, abs=0.05)  # 16.6 %
    charger.set_smart_charging_limit(1, SmartChargingLimit(5.0))
    assert free.sim.pins.pilot_duty == 1.0  # below 6 A: no PWM at all
    await free.until(lambda: free.status == "SuspendedEVSE", within_s=7)
    await free.until(lambda: not free.sim.pins.relay_energized, within_s=7)
    assert free.connector.transaction is not None  # paused, not ended


async def test_limit_of_zero_pauses_and_a_raised_limit_resumes_at_once(free: Rig) -> None:
    charger = free.stack.charger
    assert charger is not None
    await free.bench.plug(1)
    await charging(free)
    charger.set_smart_charging_limit(1, SmartChargingLimit(0.0))
    await free.until(lambda: not free.sim.pins.relay_energized, within_s=7)
    assert free.status == "SuspendedEVSE"
    assert free.connector.transaction is not None
    charger.set_smart_charging_limit(1, SmartChargingLimit(16.0))
    # A Central System's command is no flapping budget: no resume hold (limiter docstring).
    assert free.sim.pins.pilot_duty == pytest.approx(0.266)
    took = await free.until(lambda: free.status == "Charging", within_s=5)
    assert took <= 1.5  # the EV's own delay (bench ev_delay_s 0.5) and the contactor
    assert len(free.stack.hooks.started) == 1


async def test_watt_limit_uses_measured_voltage_and_phases(make_rig: MakeRig) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await rig.bench.set_ev(1, phases=1)
    await rig.bench.plug(1)
    await charging(rig)
    await rig.run(3)
    await rig.meter_sample()
    assert rig.stack.charger is not None
    rig.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(2300.0, "W"))
    # One phase actually drawn at 230 V: 2300 W is 10 A, not 3.3 A as three phases would be.
    assert rig.connector.offered_a == pytest.approx(10.0)


async def test_cable_rating_caps_the_offer(free: Rig) -> None:
    await free.bench.plug(1, cable_ohms=1500.0)  # 13 A cable
    await charging(free)
    assert free.connector.offered_a == 13.0
    assert free.sim.pins.pilot_duty == pytest.approx(0.216)


async def test_no_cable_reading_no_offer(free: Rig) -> None:
    await free.bench.plug(1, cable_ohms=5000.0)  # PP open: no usable cable
    await free.run(2)
    assert free.sim.pins.pilot_duty == 1.0
    assert not free.sim.pins.relay_energized


async def test_overcurrent_beyond_grace_stops_with_overcurrentfailure(make_rig: MakeRig) -> None:
    rig = await make_rig(
        authorization={"free_vend": True}, bench={"control_port": 0, "ev_delay_s": 0.1}
    )
    await rig.bench.set_ev(1, max_current_a=32.0)
    assert rig.stack.charger is not None
    rig.stack.charger.set_smart_charging_limit(1, SmartChargingLimit(10.0))
    await rig.bench.plug(1)
    await charging(rig)
    await rig.bench.set_ev(1, overdraw_a=6.0)  # the EV takes 6 A more than offered
    for _ in range(9):
        await rig.meter_sample()
        if rig.connector.faults:
            break
    assert Fault.OVER_CURRENT in rig.connector.faults
    assert not rig.sim.pins.relay_energized
    assert rig.status == "Faulted"
    assert rig.connector.status.error_code == "OverCurrentFailure"
    await stop_note(rig)
    assert rig.stack.hooks.stopped[-1].reason == StopReason.OTHER
    await rig.bench.unplug(1)
    await rig.until(lambda: rig.status == "Available")


async def test_ventilation_state_d_is_not_charged_without_ventilation(free: Rig) -> None:
    await free.bench.set_ev(1, needs_ventilation=True)
    await free.bench.plug(1)
    await free.run(3)
    assert free.sim.ev.state == "D"
    assert not free.sim.pins.relay_energized


# ---------------------------------------------------------------- faults and their clearing


async def test_rcd_trip_opens_faults_and_clears_only_by_unplug(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("rcd_trip", 1, True)
    await free.run(0)  # the driver hands the trip to the loop: no sampler tick needed
    assert not free.sim.pins.relay_energized
    assert free.status == "Faulted"
    assert free.connector.status.error_code == "GroundFailure"
    await stop_note(free)
    assert free.stack.hooks.stopped[-1].reason == StopReason.OTHER
    await free.run(2)
    assert free.status == "Faulted"  # does not clear by itself
    await free.bench.inject_fault("rcd_trip", 1, False)
    await free.run(2)
    assert free.status == "Faulted"  # nor when the residual current is gone
    await free.bench.unplug(1)
    await free.until(lambda: free.status == "Available")


async def test_rcd_still_tripped_survives_unplug(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("rcd_trip", 1, True)
    await free.bench.unplug(1)
    await free.run(1)
    assert free.status == "Faulted"


async def test_welded_contactor_never_clears_by_unplug(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("contactor_welded", 1, True)
    await free.bench.set_ev(1, paused=True)  # C -> B: contactor commanded open
    await free.until(lambda: free.status == "Faulted", within_s=1)
    assert free.connector.status.error_code == "PowerSwitchFailure"
    assert free.connector.transaction is None
    await free.bench.unplug(1)
    await free.run(1)
    assert free.status == "Faulted"
    free.connector.reset_faults()
    assert free.status == "Faulted"  # still welded: a reset does not make it safe
    await free.bench.inject_fault("contactor_welded", 1, False)
    await free.run(0.5)
    free.connector.reset_faults()
    assert free.status == "Available"


async def test_contactor_that_fails_to_close(free: Rig) -> None:
    await free.bench.inject_fault("contactor_fails_to_close", 1, True)
    await free.bench.plug(1)
    await free.until(lambda: free.status == "Faulted", within_s=1)
    assert free.connector.status.error_code == "PowerSwitchFailure"
    assert not free.sim.pins.relay_energized
    await free.bench.inject_fault("contactor_fails_to_close", 1, False)
    await free.bench.unplug(1)
    await free.until(lambda: free.status == "Available")


async def test_over_temperature_suspends_then_recovers(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("over_temperature", 1, True)
    await free.until(lambda: free.status == "Faulted", within_s=2.5)
    assert free.connector.status.error_code == "HighTemperature"
    assert not free.sim.pins.relay_energized
    assert free.connector.transaction is not None  # waits it out
    await free.bench.inject_fault("over_temperature", 1, False)
    await free.until(lambda: free.status == "Charging", within_s=5)


async def test_missing_diode_never_closes(free: Rig) -> None:
    await free.bench.inject_fault("diode_missing", 1, True)
    await free.bench.plug(1)
    await free.until(lambda: Fault.DIODE_MISSING in free.connector.faults, within_s=2)
    await free.run(3)
    assert not free.sim.pins.relay_energized
    assert free.connector.status.error_code == "EVCommunicationError"
    assert free.status == "SuspendedEVSE"
    await free.bench.inject_fault("diode_missing", 1, False)
    await free.bench.unplug(1)
    await free.until(lambda: free.status == "Available", within_s=2)


async def test_pilot_short_clears_when_the_pilot_recovers(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("pilot_short", 1, True)
    await free.until(lambda: Fault.PILOT_SHORT in free.connector.faults, within_s=0.2)
    await free.bench.inject_fault("pilot_short", 1, False)
    await charging(free)


async def test_meter_silent_is_powermeterfailure_and_recovers(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("meter_silent", 1, True)
    await free.until_note("fault", lambda f: f["fault"] == "meter" and f["active"] is True)
    assert free.connector.status.error_code == "PowerMeterFailure"
    assert not free.sim.pins.relay_energized
    await free.bench.inject_fault("meter_silent", 1, False)
    await free.until_note("fault", lambda f: f["fault"] == "meter" and f["active"] is False)
    await charging(free)


async def test_fault_drives_state_f_for_300_ms(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    await free.bench.inject_fault("rcd_trip", 1, True)
    await free.run(0)
    assert free.sim.pins.pilot_duty == 0.0  # steady -12 V
    took = await free.until(lambda: free.sim.pins.pilot_duty == 1.0, within_s=1)
    assert 0.3 <= took <= 0.32


async def test_failed_rcd_self_test_means_no_energy(make_rig: MakeRig) -> None:
    from evsed.hwmocks.pins import BenchPins

    original = BenchPins.__init__

    def broken(self: BenchPins, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        self.set_rcd_test_broken(True)

    BenchPins.__init__ = broken  # type: ignore[method-assign]
    try:
        rig = await make_rig(authorization={"free_vend": True})
    finally:
        BenchPins.__init__ = original  # type: ignore[method-assign]
    assert rig.status == "Faulted"
    await rig.bench.plug(1)
    await rig.run(3)
    assert not rig.sim.pins.relay_energized


# ---------------------------------------------------------------- availability


async def test_inoperative_is_scheduled_until_the_transaction_ends(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    assert free.connector.change_availability(False) == "Scheduled"
    assert free.status == "Charging"
    await free.bench.unplug(1)
    await free.until(lambda: free.status == "Unavailable")
    await free.bench.plug(1)
    await free.run(2)
    assert free.connector.transaction is None
    assert not free.sim.pins.relay_energized
    assert free.connector.change_availability(True) == "Accepted"


async def test_shutdown_stops_the_transaction_and_leaves_everything_safe(free: Rig) -> None:
    await free.bench.plug(1)
    await charging(free)
    pins = free.sim.pins
    charger = free.stack.charger
    assert charger is not None
    await charger.stop(StopReason.REBOOT)
    free.stack.charger = None
    assert free.stack.hooks.stopped[-1].reason == StopReason.REBOOT
    assert not pins.relay_energized


async def test_unplug_drops_contactor_and_pwm_before_the_transaction_is_recorded(
    free: Rig,
) -> None:
    seen: list[tuple[bool, float | None]] = []
    hooks = free.stack.hooks
    assert isinstance(hooks, LocalHooks)
    hooks.listeners.append(
        lambda kind, _: (
            seen.append((free.sim.pins.relay_energized, free.sim.pins.pilot_duty))
            if kind == "transaction_stopped"
            else None
        )
    )
    await free.bench.plug(1)
    await charging(free)
    await free.bench.unplug(1)
    await free.until(lambda: bool(seen), within_s=0.1)
    assert seen == [(False, 1.0)]  # both safe before the stop reached the store


async def test_jammed_lock_is_connectorlockfailure_and_no_energy(make_rig: MakeRig) -> None:
    rig = await make_rig(
        authorization={"free_vend": True},
        connectors=[{"meter": {"port": 0}, "lock": {"enabled": True}}],
    )
    rig.sim.pins.lock_jam(True)
    await rig.bench.plug(1)
    took = await rig.until(lambda: rig.status == "Faulted", within_s=3)
    assert 2.0 <= took <= 2.1  # lock_timeout_s: a motor lock gets its pulse first
    assert rig.connector.status.error_code == "ConnectorLockFailure"
    assert not rig.sim.pins.relay_energized
    assert rig.sim.pins.pilot_duty != pytest.approx(0.533)


async def test_working_lock_engages_before_energy(make_rig: MakeRig) -> None:
    rig = await make_rig(
        authorization={"free_vend": True},
        connectors=[{"meter": {"port": 0}, "lock": {"enabled": True}}],
    )
    await rig.bench.plug(1)
    await charging(rig)
    assert rig.sim.pins.locked
    await rig.run(3)
    assert rig.status == "Charging"


async def test_no_pwm_on_an_empty_socket_while_the_session_outlives_unplug(free: Rig) -> None:
    from dataclasses import replace

    free.connector.settings = replace(free.connector.settings, stop_on_ev_disconnect=False)
    await free.bench.plug(1)
    await charging(free)
    await free.bench.unplug(1)
    await free.run(1)
    assert free.connector.transaction is not None  # StopTransactionOnEVSideDisconnect=false
    assert free.sim.pins.pilot_duty == 1.0
    assert not free.sim.pins.relay_energized
    await free.bench.plug(1)
    await charging(free)  # the same session resumes


async def test_a_1wire_sensor_is_read_off_the_event_loop(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    from evsed.hal.temperature import W1Ds18b20

    threads: list[int] = []
    hot = threading.Event()

    def read_celsius(self: W1Ds18b20) -> float:
        threads.append(threading.get_ident())
        return 95.0 if hot.is_set() else 30.0

    monkeypatch.setattr(W1Ds18b20, "read_celsius", read_celsius)
    rig = await make_rig(
        authorization={"free_vend": True},
        connectors=[
            {"meter": {"port": 0}, "temperature": {"driver": "ds18b20", "device_id": "28-0"}}
        ],
    )
    await rig.bench.plug(1)
    await charging(rig)
    hot.set()
    hot_seen = asyncio.ensure_future(rig.note("fault", lambda f: f["fault"] == "over_temperature"))
    while not hot_seen.done():
        await rig.run(0.5)
        await asyncio.wait([hot_seen], timeout=0.05)
    assert threads and threading.get_ident() not in threads  # never on the loop's thread
    assert not rig.sim.pins.relay_energized
    assert rig.connector.status.error_code == "HighTemperature"
