"""Stored charging profiles at start-up (safety review of issue 11): a corrupt row neither
stops evsed nor lifts the cap it was; limits lowered since do not drop an accepted profile."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, exchange, ocpp_rig


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cs(clock: FakeClock) -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as central:
        yield central


async def set_profile(
    rig: OcppRig, pid: int, purpose: str, limit: float, stack: int = 1, connector: int = 0
) -> str:
    body = {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
        },
    }
    got = await exchange(
        rig, "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": body}
    )
    return str(got["status"])


def rows(state: Path) -> dict[int, str]:
    db = sqlite3.connect(state / "evsed.db")
    try:
        return dict(db.execute("SELECT profile_id, profile FROM charging_profiles").fetchall())
    finally:
        db.close()


def corrupt(state: Path, profile_id: int, text: str) -> None:
    db = sqlite3.connect(state / "evsed.db")
    with db:
        db.execute(
            "UPDATE charging_profiles SET profile = ? WHERE profile_id = ?", (text, profile_id)
        )
    db.close()


BAD_LIMIT = json.dumps(
    {
        "chargingProfileId": 1,
        "stackLevel": 1,
        "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": "x"}],
        },
    }
)


@pytest.mark.parametrize(
    "text",
    ["not json at all", '{"chargingProfileId": 1}', BAD_LIMIT, "[1, 2]"],
    ids=["garbage", "missing-fields", "bad-limit", "not-an-object"],
)
async def test_a_corrupt_cap_fails_safe_and_keeps_its_row_until_the_cs_sets_one_again(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path, text: str
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as first:
        assert await set_profile(first, 1, "ChargePointMaxProfile", 10) == "Accepted"
        assert await set_profile(first, 2, "TxDefaultProfile", 13) == "Accepted"
    corrupt(tmp_path, 1, text)
    async with ocpp_rig(cs, tmp_path, clock=clock) as second:  # starts: no traceback
        service = second.ocpp.ctx.smart_charging
        assert service is not None
        assert {p.id for p in service.profiles.profiles()} == {2}
        assert [s.profile_id for s in service.unreadable] == [1]
        await second.start_transaction()
        # The 10 A cap is unreadable: held at 6 A, never the 13 A TxDefault.
        assert second.connector.offered_a == 6.0
        assert rows(tmp_path)[1] == text  # kept for diagnosis
        # The CS says its cap again: the hold ends, the superseded row goes.
        assert await set_profile(second, 3, "ChargePointMaxProfile", 10, stack=2) == "Accepted"
        await second.until(lambda: second.connector.offered_a == 10.0, within_s=1)
        assert 1 not in rows(tmp_path)
        assert service.unreadable == []


async def test_a_corrupt_row_is_cleared_by_clear_charging_profile(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as first:
        assert await set_profile(first, 1, "ChargePointMaxProfile", 10) == "Accepted"
    corrupt(tmp_path, 1, "{")
    async with ocpp_rig(cs, tmp_path, clock=clock) as second:
        await second.start_transaction()
        assert second.connector.offered_a == 6.0
        got = await exchange(second, "ClearChargingProfile", {"id": 1})
        assert got == {"status": "Accepted"}
        await second.until(lambda: second.connector.offered_a == 32.0, within_s=1)
        assert rows(tmp_path) == {}


def test_limits_lowered_since_do_not_drop_an_accepted_profile() -> None:
    """ChargeProfileMaxStackLevel and ChargingScheduleMaxPeriods are read-only keys: they
    change with a new version's defaults. A profile accepted before is restored as it was
    (the CS was told it is installed); only new ones meet the new limits."""

    from evsed.controller.smartcharging.model import ChargingProfile, InvalidProfile
    from evsed.controller.smartcharging.profileset import ProfileSet

    body = json.loads(BAD_LIMIT)
    body["stackLevel"] = 5
    body["chargingSchedule"]["chargingSchedulePeriod"] = [
        {"startPeriod": 0, "limit": 10},
        {"startPeriod": 60, "limit": 8},
    ]
    accepted = ChargingProfile.from_ocpp(body, 0)
    lowered = ProfileSet(max_stack_level=2, max_periods=1)
    with pytest.raises(InvalidProfile):
        lowered.install(accepted)
    lowered.restore(accepted)
    assert [p.id for p in lowered.profiles()] == [1]
