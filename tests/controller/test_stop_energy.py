"""A stop bills the energy up to the contactor opening (issue 14, "energy is never lost in a
stop"): meterStop was taken when the stop was requested, while the EV still drew until it
reacted to the withdrawn PWM and the contactor opened (the soft stop, up to 6 s at 22 kW),
so neither that session nor the next paid for it. The stop's reading is now the first one
taken after the contactor reads open (bounded; else the newest known, never below a
reading already reported), on every stop path.

Driven by a FakeClock; the meter answers over a real socket, hence `advancing`.
"""

from __future__ import annotations

from evsed.controller.connector.status import StopReason
from tests.support.bench_rig import MakeRig, Rig
from tests.support.stopping import advancing

CARD = "AABBCCDDEE"


async def charging_a_while(rig: Rig, seconds: float = 30.5) -> None:
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    await rig.run(seconds)  # mid-way between two meter polls: the last reading is stale
    assert rig.sim.ev.state == "C" and rig.sim.pins.relay_energized


def register_wh(rig: Rig) -> int:
    return round(rig.sim.meter.energy_wh)


async def test_a_local_stop_bills_its_soft_stop_and_the_next_session_starts_there(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    await rig.bench.plug(1)
    charger = rig.stack.charger
    assert charger is not None
    charger.present_tag(CARD)
    await advancing(rig, lambda: rig.status == "Charging")
    await rig.run(30)
    at_request = round(rig.connector.last_energy_wh or 0)
    charger.present_tag(CARD)  # the same card: Local stop, the EV stays plugged
    assert rig.sim.pins.pilot_duty == 1.0  # PWM withdrawn at once
    assert rig.stack.hooks.stopped == []  # not before the contactor has opened
    await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    stop = rig.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.LOCAL
    assert not rig.sim.pins.relay_energized
    # The EV drew through its reaction to the PWM change: that energy is this session's.
    assert stop.meter_stop_wh == register_wh(rig) > at_request
    assert stop.stopped_at > stop.transaction.started_at
    assert rig.status == "Finishing"
    await rig.run(5)
    assert register_wh(rig) == stop.meter_stop_wh  # nothing flowed after it
    # The next session starts where this one ended: no Wh belongs to nobody.
    await rig.bench.unplug(1)
    await advancing(rig, lambda: rig.status == "Available")
    await rig.bench.plug(1)
    charger.present_tag(CARD)
    await advancing(rig, lambda: len(rig.stack.hooks.started) == 2)
    assert rig.stack.hooks.started[-1].meter_start_wh == stop.meter_stop_wh


async def test_a_remote_stop_bills_its_soft_stop(make_rig: MakeRig) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    assert rig.connector.request_stop(StopReason.REMOTE)
    await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    stop = rig.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.REMOTE
    assert stop.meter_stop_wh == register_wh(rig)


async def test_an_unplug_bills_up_to_the_contactor_opening(make_rig: MakeRig) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    stale = round(rig.connector.last_energy_wh or 0)
    await rig.bench.unplug(1)
    await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    stop = rig.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.EV_DISCONNECTED
    assert stop.meter_stop_wh == register_wh(rig) > stale


async def test_a_fault_stop_bills_up_to_the_cut(make_rig: MakeRig) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    stale = round(rig.connector.last_energy_wh or 0)
    await rig.bench.inject_fault("rcd_trip", 1, True)
    await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    stop = rig.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.OTHER
    assert stop.meter_stop_wh == register_wh(rig) > stale


async def test_a_charger_stop_reads_the_meter_after_the_cut(make_rig: MakeRig) -> None:
    """Reset, systemctl stop, an update: Charger.stop cuts, reads the meter once more."""
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    stale = round(rig.connector.last_energy_wh or 0)
    charger = rig.stack.charger
    assert charger is not None
    await charger.stop(StopReason.SOFT_RESET)
    stop = rig.stack.hooks.stopped[-1]
    assert stop.reason == StopReason.SOFT_RESET
    assert stop.meter_stop_wh == register_wh(rig) > stale


async def test_a_silent_meter_bounds_the_wait_and_keeps_the_newest_reading(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    newest = round(rig.connector.last_energy_wh or 0)
    await rig.bench.inject_fault("meter_silent", 1, True)
    assert rig.connector.request_stop(StopReason.REMOTE)
    took = await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    stop = rig.stack.hooks.stopped[-1]
    s = rig.connector.settings
    # The soft stop (the EV opens S2 after 3 s here), then a poll interval and its margin.
    assert took <= s.power_off_under_load_s + s.stop_meter_wait_s + 0.5
    assert stop.meter_stop_wh == newest  # never less than a reading already known


async def test_an_unreadable_contactor_feedback_still_records_the_stop(make_rig: MakeRig) -> None:
    """The stop waits for the contact to read open; a feedback input that raises must not
    keep it from being recorded (the bound holds, with the newest reading)."""
    rig = await make_rig(authorization={"free_vend": True})
    await charging_a_while(rig)
    assert rig.stack.charger is not None
    contactor = rig.stack.charger.parts.connectors[0].contactor

    def broken() -> bool | None:
        raise OSError("feedback input unreadable")

    contactor.feedback = broken  # type: ignore[method-assign]
    assert rig.connector.request_stop(StopReason.REMOTE)
    await advancing(rig, lambda: bool(rig.stack.hooks.stopped))
    assert rig.stack.hooks.stopped[-1].meter_stop_wh >= round(rig.connector.last_energy_wh or 0)
