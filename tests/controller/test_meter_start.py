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

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig


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
        await rig.run(1)
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.status == "Available", within_s=3)
        # Before: the start was recorded (meterStart 0) and stopped at once.
        assert rig.kinds("transaction_started") == []
        assert rig.kinds("transaction_stopped") == []
        assert not len(rig.ocpp.txqueue)
        assert rig.calls("StartTransaction", since=mark) == []
        assert rig.calls("StopTransaction", since=mark) == []
