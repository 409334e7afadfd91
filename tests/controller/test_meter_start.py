"""A start never reports an energy the meter did not give (second safety review of issue
14 #11): a start before the first meter reading since start-up waits for one, bounded; if
none comes, the start is refused and the meter reported failed, never recorded with 0 Wh
(or any other guess). The whole stack on the bench against the embedded Central System.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.run import Stack
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def status_of(error_code: str) -> Callable[[Frame], bool]:
    return lambda f: (
        f.is_call
        and f.direction is Direction.CP_TO_CS
        and f.action == "StatusNotification"
        and f.payload["connectorId"] == 1
        and f.payload["errorCode"] == error_code
    )


async def sent(rig: OcppRig, pred: Callable[[Frame], bool], since: int) -> Frame:
    """The first frame matching `pred` after `since`, simulated time moving on meanwhile."""
    waiting = asyncio.ensure_future(rig.central.wait_for(pred, 10, since=since))
    while not waiting.done():
        await rig.clock.advance(0.05)
        await asyncio.wait([waiting], timeout=0.02)
    return waiting.result()


async def just_restarted_with_a_silent_meter(rig: OcppRig) -> None:
    rig.sim.meter.energy_wh = 25.0  # what the meter holds
    await rig.bench.inject_fault("meter_silent", 1, True)
    rig.connector.last_energy_wh = None  # just restarted: nothing read yet


async def test_a_start_with_no_meter_reading_is_refused_not_recorded_with_0(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await just_restarted_with_a_silent_meter(rig)
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        await rig.run(9.5)
        # Still waiting: nothing recorded, nothing offered (before: recorded at 2 s, 0 Wh).
        assert rig.kinds("transaction_started") == []
        assert not rig.sim.pins.relay_energized
        failed = await sent(rig, status_of("PowerMeterFailure"), since=mark)
        assert failed.payload["status"] == "Faulted"
        assert rig.connector.transaction is None
        assert rig.kinds("transaction_started") == []
        assert rig.calls("StartTransaction", since=mark) == []
        assert not len(rig.ocpp.txqueue)
        refused = rig.kinds("start_refused")
        assert refused and "meter" in str(refused[-1]["reason"]), refused
        assert "no transaction" in caplog.text
        # The meter answers again: the connector is usable, a start takes its reading.
        mark = cs.mark()
        await rig.bench.inject_fault("meter_silent", 1, False)
        cleared = await sent(rig, status_of("NoError"), since=mark)
        assert cleared.payload["status"] == "Preparing"  # the EV is still plugged
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        start = await rig.call_of("StartTransaction", since=mark)
        assert start.payload["meterStart"] == 25


async def test_a_stop_while_the_start_waits_for_the_meter_records_nothing(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await just_restarted_with_a_silent_meter(rig)
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        # The authorisation runs after the answer (AuthorizeRemoteTxRequests): an Authorize
        # round trip in real time. Unplugging before it lands tests another case (a remote
        # start for an empty connector: Preparing until ConnectionTimeOut).
        await rig.event("remote_start", lambda f: f["status"] == "Started")
        await rig.run(1)
        assert rig.connector.transaction is not None  # the start waits for the meter
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.status == "Available", within_s=3)
        # Before: the start was recorded (meterStart 0) and stopped at once.
        assert rig.kinds("transaction_started") == []
        assert rig.kinds("transaction_stopped") == []
        assert not len(rig.ocpp.txqueue)
        assert rig.calls("StartTransaction", since=mark) == []
        assert rig.calls("StopTransaction", since=mark) == []


# ---------------------------------------------------------------- a real soft Reset (#11)


async def test_a_card_right_after_a_soft_reset_starts_with_the_meters_energy(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The prober's case end to end: a session stopped, Reset(Soft) restarts the controller
    (a new charger, nothing read yet), the card is presented before the meter has answered:
    meterStart is the meter's register, never 0."""
    clock = FakeClock()
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    try:
        await stack.ocpp.session.wait_online(5)
        rig = OcppRig(stack, clock, cs=cs)
        await stack.bench.plug(1)
        await rig.until(lambda: rig.status == "Preparing", within_s=3)
        stack.charger.present_tag(CARD)
        first = await rig.central.wait_for_call("StartTransaction", CP_ID, timeout=5)
        await rig.until(lambda: rig.status == "Charging", within_s=5)
        await rig.run(60)  # a minute at the EV's current: energy on the register
        mark = cs.mark()
        stack.charger.present_tag(CARD)  # Local stop; the EV stays plugged
        stop = await sent(rig, lambda f: f.is_call and f.action == "StopTransaction", mark)
        meter_stop = stop.payload["meterStop"]
        assert meter_stop > first.payload["meterStart"]
        # The meter does not answer at once after the restart (a slow first poll).
        await stack.bench.inject_fault("meter_silent", 1, True)
        mark = cs.mark()
        reply = await cs.call(CP_ID, call.Reset(type="Soft"), timeout=5)
        assert reply.status == "Accepted"
        for _ in range(500):
            if stack.restarts == 1 and stack.ocpp is not None and stack.charger is not None:
                break
            await asyncio.sleep(0.01)
        assert stack.restarts == 1
        assert stack.charger.connector(1).last_energy_wh is None  # nothing read yet
        stack.charger.present_tag(CARD)  # the card still on the reader
        await rig.run(1)
        await stack.bench.inject_fault("meter_silent", 1, False)
        start = await sent(rig, lambda f: f.is_call and f.action == "StartTransaction", mark)
        # The register as the meter holds it: the last meterStop, plus what flowed during
        # that stop's soft stop (the EV's reaction), never 0.
        held = round(stack.bench.sim(1).meter.energy_wh)
        assert start.payload["meterStart"] == held
        assert meter_stop <= held < meter_stop + 20
    finally:
        await stack.stop()
