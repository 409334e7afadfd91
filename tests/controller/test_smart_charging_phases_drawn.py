"""A limit in W is enforced with the phases the EV really draws, not the phases a period's
numberPhases names: without a phase relay an EV on a three-phase connector draws on three
phases whatever the profile says (safety review of issue 11: a 4140 W, numberPhases 1
TxDefaultProfile was offered as 18 A and drawn on three phases, 12420 W)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.limiter import LimitInputs, SmartChargingLimit, limit
from evsed.hal.types import MeterSample
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


@pytest.fixture
async def rig(cs: CentralSystem, clock: FakeClock, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path, clock=clock) as r:
        yield r


def watts_tx_default(watts: float, number_phases: int) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 5,
            "stackLevel": 1,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": watts, "numberPhases": number_phases}
                ],
            },
        },
    }


async def test_a_number_phases_1_watt_limit_without_a_relay_is_drawn_on_three_phases(
    rig: OcppRig,
) -> None:
    await rig.start_transaction()
    got = await exchange(rig, "SetChargingProfile", watts_tx_default(8280.0, 1))
    assert got == {"status": "Accepted"}
    await rig.run(5)
    # 8280 W / (3 x 230 V) = 12 A on each of the three phases the EV draws (the meter's
    # voltages, near 230 V; numberPhases 1 would have given 36 A, the rated 32 A).
    assert rig.connector.offered_a == pytest.approx(12.0, abs=0.2)
    for _ in range(3):
        await rig.meter_sample()
    sample = rig.connector.last_sample
    assert sample is not None
    drawn = sum(p for p in sample.power_w if p is not None)
    assert drawn <= 8280.0 * 1.02, f"{drawn:.0f} W drawn under a 8280 W limit"
    # And GetCompositeSchedule says what is applied: 12 A (in W: the 8280 W).
    amps = await exchange(rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert amps["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 12.0
    watts = await exchange(
        rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 60, "chargingRateUnit": "W"}
    )
    assert watts["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 8280.0


def one_phase_sample(amps: float) -> MeterSample:
    return MeterSample(
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(amps, 0.0, 0.0),
        power_w=(230.0 * amps, 0.0, 0.0),
    )


def test_a_watt_limit_and_the_charge_point_max_are_both_converted_with_the_drawn_phases() -> None:
    """Which limit binds is decided in amps, after each is converted with what the meter
    shows: a 1-phase EV under 4140 W (18 A on one phase) and a 16 A ChargePointMax -> 16 A;
    the same on three phases -> 6 A."""
    sc = SmartChargingLimit(4140.0, "W", cap=SmartChargingLimit(16.0))
    base = LimitInputs(hardware_a=32, cable_a=32, config_a=32, smart_charging=sc)
    one = replace(base, meter=one_phase_sample(10.0))
    assert limit(one).amps == 16.0
    three = MeterSample(
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(10.0, 10.0, 10.0),
        power_w=(2300.0, 2300.0, 2300.0),
    )
    assert limit(replace(base, meter=three)).amps == pytest.approx(6.0)
    # The cap in W too: 3680 W on one phase = 16 A, on three 5.33 A.
    sc = SmartChargingLimit(32.0, "A", cap=SmartChargingLimit(3680.0, "W"))
    one = LimitInputs(hardware_a=32, cable_a=32, config_a=32, smart_charging=sc)
    assert limit(replace(one, meter=one_phase_sample(10.0))).amps == 16.0
