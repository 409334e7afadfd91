"""A wall clock set back while a transaction runs does not lift its Relative limits.

evsed takes the Central System's time from every BootNotification and Heartbeat answer (and
NTP may step a Pi's clock): when that time is behind ours, the clock steps back and the
running transaction's start lies "in the future". Relative schedules run from the
transaction's start, so anchored on it as it reads they had not begun: Home Assistant's
maximum current (a Relative ChargePointMaxProfile on connector 0) stopped applying to the
charging connector, which offered its full rating until the clock caught up; the
GetCompositeSchedule said the same. They now run from the moment asked until then
(`composite._started_by`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.smartcharging.composite import (
    ElectricalContext,
    TxContext,
    composite,
    enforced_at,
    limit_at,
)
from evsed.controller.smartcharging.model import Kind, Purpose, RateUnit
from evsed.controller.smartcharging.profileset import ProfileSet
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, exchange, ocpp_rig
from tests.support.smartcharging import at, profile

BEHIND = timedelta(minutes=2)


def relative_max(limit: float) -> dict[str, Any]:
    schedule = {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
    }
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 5,
            "stackLevel": 1,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": schedule,
        },
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cs(clock: FakeClock) -> AsyncIterator[tuple[CentralSystem, list[timedelta]]]:
    shift = [timedelta(0)]  # how far the Central System's clock is behind ours

    def cs_now() -> datetime:
        return clock.now() - shift[0]

    async with CentralSystem(tags={CARD: "Accepted"}, now=cs_now) as c:
        yield c, shift


async def test_a_relative_cap_holds_when_the_clock_steps_back(
    cs: tuple[CentralSystem, list[timedelta]], clock: FakeClock, tmp_path: Path
) -> None:
    central, shift = cs
    async with ocpp_rig(central, tmp_path, clock=clock) as rig:
        charger = rig.stack.charger
        assert charger is not None
        assert (await exchange(rig, "SetChargingProfile", relative_max(10.0)))["status"] == (
            "Accepted"
        )
        await rig.start_transaction()
        await rig.run(30)
        assert charger.connector(1).offered_a == 10.0
        started = charger.transaction(1)
        assert started is not None
        # The Central System's clock is 2 minutes behind: its Heartbeat answer sets ours back.
        shift[0] = BEHIND
        r = await rig.command(call.TriggerMessage(requested_message="Heartbeat"))
        assert r.status == "Accepted"
        await rig.until(lambda: clock.now() < started.started_at, within_s=5)
        await rig.run(5)
        assert charger.connector(1).offered_a == 10.0  # not the connector's 32 A
        got = await exchange(rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 600})
        assert got["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
        # Once the clock has caught up with the start the schedule runs on as before.
        await rig.run(BEHIND.total_seconds())
        assert charger.connector(1).offered_a == 10.0


def test_each_entry_point_runs_a_future_start_from_now() -> None:
    start = at("2026-12-03T10:00")
    back = start - timedelta(minutes=20)  # the clock set back past the start
    el = ElectricalContext(phases=3, voltage_v=230.0)
    ps = ProfileSet()
    # A Relative TxProfile: 16 A for half an hour, then 6 A.
    ps.install(profile(2, Purpose.TX, 0, [(0, 16.0), (1800, 6.0)], kind=Kind.RELATIVE))
    tx = TxContext(7, start)
    now = limit_at(ps, 1, back, transaction=tx, electrical=el, connector_ids=(1,))
    assert now.limit == 16.0  # its first period, not "not begun" (no limit at all)
    assert enforced_at(ps, 1, back, transaction=tx).tx is not None
    report = composite(
        ps, 1, back, 3600, RateUnit.A, transaction=tx, electrical=el, connector_ids=(1,)
    )
    assert [(p.start_s, p.limit) for p in report.periods] == [(0, 16.0), (1800, 6.0)]
