"""Smart Charging end to end: the embedded Central System installs and clears profiles, the
bench's EV follows them on time (injected clock), evcc's and Home Assistant's control
frames are answered as they expect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.smartcharging.model import format_datetime as iso
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, exchange, ocpp_rig


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cs(clock: FakeClock) -> AsyncIterator[CentralSystem]:
    # The CS's time is the simulated one: its Heartbeat answers do not pull the charger's
    # wall clock back to the real time while hours are simulated.
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, clock: FakeClock, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path, clock=clock) as r:
        yield r


def profile(
    pid: int,
    purpose: str,
    limit: float,
    *,
    stack: int = 0,
    kind: str = "Relative",
    unit: str = "A",
    periods: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": periods or [{"startPeriod": 0, "limit": limit}],
    }
    schedule.update(extra.pop("schedule", {}))
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
        **extra,
    }


async def set_profile(rig: OcppRig, connector_id: int, body: dict[str, Any]) -> str:
    got = await exchange(
        rig, "SetChargingProfile", {"connectorId": connector_id, "csChargingProfiles": body}
    )
    return str(got["status"])


def evcc_tx_default(rig: OcppRig, amps: float) -> dict[str, Any]:
    """evcc's createTxDefaultChargingProfile: id MaxChargingProfilesInstalled, stack level
    ChargeProfileMaxStackLevel, Absolute from a minute ago, one period, limit at 0.1 A."""
    start = rig.clock.now() - timedelta(minutes=1)
    return profile(
        16,
        "TxDefaultProfile",
        amps,
        stack=8,
        kind="Absolute",
        schedule={"startSchedule": iso(start)},
    )


async def test_evcc_pauses_with_limit_zero_and_resumes_with_16_a(rig: OcppRig) -> None:
    keys = await exchange(rig, "GetConfiguration", {})
    values = {k["key"]: k.get("value") for k in keys["configurationKey"]}
    assert "SmartCharging" in (values["SupportedFeatureProfiles"] or "").split(",")
    assert values["ChargeProfileMaxStackLevel"] == "8"
    assert values["MaxChargingProfilesInstalled"] == "16"
    assert values["ConnectorSwitch3to1PhaseSupported"] == "false"
    assert "Current" in (values["ChargingScheduleAllowedChargingRateUnit"] or "")
    await rig.start_transaction()
    tx = rig.connector.transaction
    mark = rig.central.mark()
    assert await set_profile(rig, 1, evcc_tx_default(rig, 0.0)) == "Accepted"
    assert rig.connector.offered_a == 0.0  # applied before the answer went out
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
    # The Central System hears it (evcc reads SuspendedEVSE as "disabled").
    await rig.central.wait_for(
        lambda f: (
            f.is_call
            and f.action == "StatusNotification"
            and f.payload.get("status") == "SuspendedEVSE"
        ),
        since=mark,
    )
    await rig.until(lambda: not rig.sim.pins.contactor_closed, within_s=10)
    assert rig.connector.transaction == tx
    assert await set_profile(rig, 1, evcc_tx_default(rig, 16.0)) == "Accepted"
    took = await rig.until(lambda: rig.connector.offered_a == 16.0, within_s=1)
    assert took <= 1.0
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    assert rig.connector.transaction == tx
    assert rig.calls("StopTransaction", since=mark) == []


async def test_home_assistant_sets_its_maximum_on_connector_0(rig: OcppRig) -> None:
    await rig.start_transaction()
    # lbbrhzn/ocpp set_charge_rate: a Relative ChargePointMaxProfile, id 1000, stack level
    # ChargeProfileMaxStackLevel, on connector 0.
    body = profile(1000, "ChargePointMaxProfile", 10.0, stack=8)
    assert await set_profile(rig, 0, body) == "Accepted"
    assert rig.connector.offered_a == 10.0
    got = await exchange(rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 3600})
    assert got["status"] == "Accepted" and got["connectorId"] == 1
    assert got["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10.0}]
    assert got["scheduleStart"] == got["chargingSchedule"]["startSchedule"]
    cleared = await exchange(rig, "ClearChargingProfile", {"id": 1000})
    assert cleared == {"status": "Accepted"}
    assert rig.connector.offered_a == 32.0
    assert await exchange(rig, "ClearChargingProfile", {"id": 1000}) == {"status": "Unknown"}


async def test_set_charging_profile_rules(rig: OcppRig) -> None:
    assert await set_profile(rig, 1, profile(1, "ChargePointMaxProfile", 10)) == "Rejected"
    assert await set_profile(rig, 2, profile(2, "TxDefaultProfile", 10)) == "Rejected"
    assert await set_profile(rig, 1, profile(3, "TxProfile", 10)) == "Rejected"  # no tx
    assert await set_profile(rig, 0, profile(4, "TxProfile", 10)) == "Rejected"
    assert await set_profile(rig, 1, profile(5, "TxDefaultProfile", 10, stack=9)) == "Rejected"
    many = [{"startPeriod": 60 * k, "limit": 10} for k in range(49)]
    assert await set_profile(rig, 1, profile(6, "TxDefaultProfile", 10, periods=many)) == (
        "Rejected"
    )
    assert await set_profile(rig, 0, profile(7, "TxDefaultProfile", 12)) == "Accepted"
    tx_id = await rig.start_transaction()
    assert rig.connector.offered_a == 12.0  # connector 0's TxDefaultProfile: every connector
    wrong = profile(8, "TxProfile", 8, transactionId=tx_id + 1)
    assert await set_profile(rig, 1, wrong) == "Rejected"
    right = profile(8, "TxProfile", 8, transactionId=tx_id)
    assert await set_profile(rig, 1, right) == "Accepted"
    assert rig.connector.offered_a == 8.0  # TxProfile over TxDefaultProfile
    watts = profile(9, "TxDefaultProfile", 11040, stack=1, unit="W")  # 16 A x 3 x 230 V
    assert await set_profile(rig, 1, watts) == "Accepted"
    got = await exchange(
        rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": "W"}
    )
    assert got["chargingSchedule"]["chargingRateUnit"] == "W"
    assert got["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 8 * 3 * 230
    assert (await exchange(rig, "GetCompositeSchedule", {"connectorId": 5, "duration": 60}))[
        "status"
    ] == "Rejected"
    assert await exchange(rig, "ClearChargingProfile", {"chargingProfilePurpose": "TxProfile"}) == {
        "status": "Accepted"
    }
    assert rig.connector.offered_a == 16.0  # the 11040 W TxDefaultProfile (stack 1) again
    assert await exchange(rig, "ClearChargingProfile", {"stackLevel": 5}) == {"status": "Unknown"}


async def test_the_ev_follows_the_periods_on_time(rig: OcppRig) -> None:
    await rig.start_transaction()
    periods = [
        {"startPeriod": 0, "limit": 16},
        {"startPeriod": 300, "limit": 0},
        {"startPeriod": 600, "limit": 10},
    ]
    origin = rig.clock.now().replace(microsecond=0)
    body = profile(
        1,
        "TxDefaultProfile",
        0,
        kind="Absolute",
        periods=periods,
        schedule={"startSchedule": iso(origin)},
    )
    assert await set_profile(rig, 1, body) == "Accepted"
    assert rig.connector.offered_a == 16.0

    def seconds() -> float:
        # In the schedule's time (the wall clock the CS set), as the boundaries are.
        return (rig.clock.now() - origin).total_seconds()

    async def until_offered(amps: float) -> None:
        # What a failure needs to be read: the Heartbeats due at these very boundaries
        # once stepped the clock back by their answers' latency (test_learn_time).
        try:
            await rig.until(lambda: rig.connector.offered_a == amps, within_s=3)
        except AssertionError as e:
            raise AssertionError(
                f"{e}: {rig.connector.offered_a} A offered at {seconds():.1f} s of the "
                f"schedule, clock offset {rig.clock.offset_s:+.3f} s, notes {rig.notes[-12:]}"
            ) from None

    await rig.run(299.0 - seconds())
    assert rig.connector.offered_a == 16.0
    await until_offered(0.0)
    assert 300.0 <= seconds() <= 300.0 + 1.0  # within 1 s of the boundary
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
    await rig.run(599.0 - seconds())
    assert rig.connector.offered_a == 0.0
    await until_offered(10.0)
    assert 600.0 <= seconds() <= 600.0 + 1.0
    await rig.until(lambda: rig.status == "Charging", within_s=5)


async def test_remote_start_installs_the_whole_tx_profile(rig: OcppRig) -> None:
    await rig.plug()
    body = profile(
        7,
        "TxProfile",
        0,
        periods=[{"startPeriod": 0, "limit": 10}, {"startPeriod": 120, "limit": 6}],
    )
    got = await exchange(
        rig,
        "RemoteStartTransaction",
        {"idTag": CARD, "connectorId": 1, "chargingProfile": body},
    )
    assert got == {"status": "Accepted"}
    await rig.charging()
    assert rig.connector.offered_a == 10.0
    await rig.run(125.0)
    assert rig.connector.offered_a == 6.0  # the second period too, not just the first


async def test_profiles_survive_a_restart_tx_profiles_do_not(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as first:
        assert await set_profile(first, 0, profile(1, "ChargePointMaxProfile", 13)) == "Accepted"
        tx_id = await first.start_transaction()
        body = profile(2, "TxProfile", 8, transactionId=tx_id)
        assert await set_profile(first, 1, body) == "Accepted"
    async with ocpp_rig(cs, tmp_path, clock=clock) as second:
        assert second.ocpp.ctx.smart_charging is not None
        ids = {p.id for p in second.ocpp.ctx.smart_charging.profiles.profiles()}
        assert ids == {1}
        await second.start_transaction()
        assert second.connector.offered_a == 13.0
