"""minChargingRate (OCPP 1.6 §7.13): "Minimum charging rate supported by the electric vehicle
... intended to be used by a local smart charging algorithm to optimize the power allocation
for in the case a charging process is inefficient at lower charging rates."

evsed's local algorithm: a limit above 0 but below the prevailing profile's minChargingRate
is not offered, the connector pauses (SuspendedEVSE, transaction kept) instead of charging
inefficiently; the load balancer does not hand such a connector a share below it (the newest
starter yields); GetCompositeSchedule reports it in the unit asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.limiter import (
    Allowance,
    Budget,
    CurrentLimiter,
    LimiterConfig,
    LimitInputs,
    Reason,
    SmartChargingLimit,
    minimum_current,
)
from evsed.controller.loadbalance import ConnectorDemand, LoadBalanceConfig, LoadBalancer
from evsed.controller.smartcharging.composite import (
    ElectricalContext,
    TxContext,
    composite,
    limit_at,
)
from evsed.controller.smartcharging.model import ChargingProfile, Kind, Purpose, RateUnit
from evsed.controller.smartcharging.profileset import ProfileSet
from evsed.hal.types import MeterSample
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, exchange, ocpp_rig
from tests.support.smartcharging import at, profile

T = at("2026-12-03T10:00")
H = 3600
RATED = ElectricalContext(phases=3, voltage_v=230.0, max_current_a=32.0)


def with_min(p: ChargingProfile, rate: float) -> ChargingProfile:
    return dataclasses.replace(p, schedule=dataclasses.replace(p.schedule, min_rate=rate))


def ask(ps: ProfileSet, unit: RateUnit = RateUnit.A, cid: int = 1, **kw: Any) -> dict[str, Any]:
    return composite(
        ps, cid, T, 4 * H, unit, transaction=kw.get("tx"), electrical=RATED, connector_ids=(1, 2)
    ).to_ocpp()


# --- GetCompositeSchedule -------------------------------------------------------------------


def test_the_composite_reports_the_prevailing_profiles_rate_in_the_unit_asked() -> None:
    ps = ProfileSet()
    ps.install(
        with_min(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)), 8.0)
    )
    assert ask(ps)["minChargingRate"] == 8.0
    # W = 8 A x 230 V x 3 phases.
    assert ask(ps, RateUnit.W)["minChargingRate"] == 5520.0


def test_the_highest_rate_prevailing_anywhere_in_the_window_counts() -> None:
    ps = ProfileSet()
    ps.install(
        with_min(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)), 7.0)
    )
    # Stack 1 takes over in the second hour of the window: its 10 A counts.
    ps.install(
        with_min(
            profile(
                2, Purpose.TX_DEFAULT, 1, [(0, 20)], start=T + timedelta(hours=1), duration_s=H
            ),
            10.0,
        )
    )
    # Stack 2 covers the whole window: neither of the others prevails anywhere.
    ps.install(
        with_min(profile(3, Purpose.TX_DEFAULT, 2, [(0, 12)], start=T - timedelta(hours=2)), 6.5)
    )
    assert ask(ps)["minChargingRate"] == 6.5  # only stack 2 prevails
    ps.clear(id=3)
    assert ask(ps)["minChargingRate"] == 10.0
    # A profile that starts only after the window: not counted.
    later = T + timedelta(hours=5)
    ps.install(with_min(profile(4, Purpose.TX_DEFAULT, 3, [(0, 16)], start=later), 30.0))
    assert ask(ps)["minChargingRate"] == 10.0


def test_a_charge_point_max_profile_says_nothing_about_the_ev_and_connector_0_has_none() -> None:
    ps = ProfileSet()
    ps.install(
        with_min(
            profile(1, Purpose.CHARGE_POINT_MAX, 0, [(0, 20)], start=T - timedelta(hours=1)), 9.0
        )
    )
    assert "minChargingRate" not in ask(ps)
    ps.install(
        with_min(profile(2, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)), 8.0)
    )
    assert "minChargingRate" not in ask(ps, cid=0)
    assert ask(ps)["minChargingRate"] == 8.0


def test_a_tx_profile_of_the_running_transaction_brings_its_own() -> None:
    ps = ProfileSet()
    ps.install(
        with_min(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)), 6.0)
    )
    ps.install(
        with_min(profile(2, Purpose.TX, 0, [(0, 16)], kind=Kind.RELATIVE, transaction_id=5), 11.0)
    )
    assert ask(ps, tx=TxContext(5, T))["minChargingRate"] == 11.0
    assert ask(ps)["minChargingRate"] == 6.0  # no transaction: the TxProfile does not apply


def test_limit_at_gives_the_rate_with_the_limit() -> None:
    ps = ProfileSet()
    ps.install(
        with_min(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)), 10.0)
    )
    got = limit_at(ps, 1, T, transaction=None, electrical=RATED)
    assert (got.limit, got.min_rate) == (16.0, 10.0)
    watts = limit_at(ps, 1, T, transaction=None, electrical=RATED, unit=RateUnit.W)
    assert watts.min_rate == pytest.approx(6900.0)


# --- the limiter and the balancer ---------------------------------------------------------------


def inputs(**kw: Any) -> LimitInputs:
    return LimitInputs(hardware_a=32.0, cable_a=32.0, config_a=32.0, **kw)


def test_a_limit_below_the_evs_minimum_pauses_instead_of_charging_slowly() -> None:
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    assert limiter.update(inputs(smart_charging=SmartChargingLimit(8.0, "A", 10.0)), 0.0) == (
        Allowance(0.0, True, Reason.SMART_CHARGING)
    )
    # The Central System raises it above the minimum: at once, no hold.
    assert limiter.update(inputs(smart_charging=SmartChargingLimit(12.0, "A", 10.0)), 0.1) == (
        Allowance(12.0, False, Reason.SMART_CHARGING)
    )
    # Without a minChargingRate the same 8 A are offered.
    assert limiter.update(inputs(smart_charging=SmartChargingLimit(8.0)), 0.2).amps == 8.0


def test_a_watt_minimum_is_converted_like_the_limit() -> None:
    sample = MeterSample(voltage_v=(230.0, 230.0, 230.0), current_a=(9.0, 9.0, 9.0))
    sc = SmartChargingLimit(6210.0, "W", 6900.0)  # 9 A, minimum 10 A on three phases
    assert minimum_current(inputs(smart_charging=sc, meter=sample)) == pytest.approx(10.0)
    assert CurrentLimiter().update(inputs(smart_charging=sc, meter=sample), 0.0).suspended
    # Nonsense never raises the current, and an impossible minimum cannot pause for ever.
    assert minimum_current(inputs(smart_charging=SmartChargingLimit(16.0, "A", -3.0))) == 6.0
    assert minimum_current(inputs(smart_charging=SmartChargingLimit(16.0, "A", 500.0))) == 80.0


def test_a_budget_below_the_evs_minimum_is_a_dip_and_holds_the_resume() -> None:
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    sc = SmartChargingLimit(16.0, "A", 10.0)
    assert limiter.update(inputs(smart_charging=sc, budget=Budget(8.0)), 0.0).suspended
    assert limiter.update(inputs(smart_charging=sc, budget=Budget(12.0)), 1.0).suspended
    assert limiter.update(inputs(smart_charging=sc, budget=Budget(12.0)), 30.9).suspended
    assert not limiter.update(inputs(smart_charging=sc, budget=Budget(12.0)), 31.0).suspended


FUSE = LoadBalanceConfig(fuse_a=22.0, margin_a=2.0)  # 20 A to share


def grid_sample(amps: float) -> MeterSample:
    return MeterSample(voltage_v=(230.0,) * 3, current_a=(amps,) * 3, power_w=(230.0 * amps,) * 3)


def test_the_balancer_gives_no_share_below_a_connectors_minimum() -> None:
    lb = LoadBalancer(FUSE)
    old = ConnectorDemand(1, started_at=0.0, max_a=32.0)
    new = ConnectorDemand(2, started_at=5.0, max_a=32.0, min_a=12.0)
    # 10 A each would leave connector 2 under its 12 A: the newest starter (2) yields.
    out = lb.update(10.0, [old, new], grid_sample(0.0))
    assert (out[1].amps, out[2].amps) == (20.0, 0.0)
    # The older one needs 12 A: it keeps going, the newcomer (6 A minimum) yields.
    out = lb.update(
        11.0,
        [dataclasses.replace(old, min_a=12.0), dataclasses.replace(new, min_a=6.0)],
        grid_sample(0.0),
    )
    assert (out[1].amps, out[2].amps) == (20.0, 0.0)
    # With 25 A to share both get their fair 12.5 A, above either minimum.
    roomy = LoadBalancer(LoadBalanceConfig(fuse_a=27.0, margin_a=2.0))
    out = roomy.update(12.0, [old, new], grid_sample(0.0))
    assert (out[1].amps, out[2].amps) == (12.5, 12.5)


# --- end to end, with the embedded Central System -----------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[OcppRig]:
    clock = FakeClock()
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as cs:
        async with ocpp_rig(cs, tmp_path, clock=clock) as r:
            yield r


def tx_default(pid: int, amps: float, min_rate: float) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": pid,
            "stackLevel": 1,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "minChargingRate": min_rate,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}],
            },
        },
    }


async def test_below_the_minimum_the_ev_pauses_and_resumes_when_the_limit_rises(
    rig: OcppRig,
) -> None:
    await rig.start_transaction()
    tx = rig.connector.transaction
    got = await exchange(rig, "SetChargingProfile", tx_default(1, 8.0, 10.0))
    assert got == {"status": "Accepted"}
    assert rig.connector.offered_a == 0.0  # 8 A < the EV's 10 A: not offered
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
    assert rig.connector.transaction is tx
    schedule = await exchange(
        rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"}
    )
    assert schedule["status"] == "Accepted"
    assert schedule["chargingSchedule"]["minChargingRate"] == 6900.0  # 10 A x 230 V x 3
    assert schedule["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 5520.0
    got = await exchange(rig, "SetChargingProfile", tx_default(1, 16.0, 10.0))
    assert got == {"status": "Accepted"}
    took = await rig.until(lambda: rig.status == "Charging", within_s=5)
    assert rig.connector.offered_a == 16.0
    assert took < 5.0
    assert rig.connector.transaction is tx
