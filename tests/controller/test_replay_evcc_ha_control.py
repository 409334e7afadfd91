"""What evcc and Home Assistant do after their start-up, replayed against evsed on the bench
(embedded Central System, FakeClock) with the frames as those tools write them. Fills what
tests/controller/test_replay_evcc_ha.py and test_smart_charging_e2e.py leave out.

Sources read (not copied), at the snapshots fetched for issue 11:
- evcc-io/evcc `charger/ocpp/cp_setup.go` Setup: after the measurands, TriggerMessage
  MeterValues on connector 0, waiting for the MeterValues; `charger/ocpp.go` Enabled(): the
  Current.Offered measurand > 0, else GetCompositeSchedule(connector, 60) without a unit,
  first period's limit > 0; createTxDefaultChargingProfile: numberPhases in the period when
  the charger says ConnectorSwitch3to1PhaseSupported (phase switching), limit truncated to
  0.1 A; `charger/ocpp/connector.go` reads Current.Import.L1..L3, Voltage.L1-N.., "k"/"m"
  unit prefixes scaled.
- lbbrhzn/ocpp `custom_components/ocpp/ocppv16.py` set_charge_rate: reads
  ChargingScheduleAllowedChargingRateUnit and ChargeProfileMaxStackLevel one key at a time,
  then a Relative ChargePointMaxProfile (id 1000, that stack level) on connector 0, in W when
  given watts and the charger allows Power; clear_profile: ClearChargingProfile with no
  field at all (Accepted or Unknown both fine); chargepoint.py process_phases averages
  Power.Factor over L1..L3 and sums Power.* phases.
"""

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
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, clock: FakeClock, tmp_path: Path) -> AsyncIterator[OcppRig]:
    keys = {
        "MeterValuesSampledData": "Power.Active.Import,Energy.Active.Import.Register,"
        "Current.Import,Voltage,Current.Offered,Power.Offered",
        "MeterValueSampleInterval": "10",
    }
    async with ocpp_rig(cs, tmp_path, clock=clock, keys=keys) as r:
        yield r


async def get_one(rig: OcppRig, key: str) -> str | None:
    result = await exchange(rig, "GetConfiguration", {"key": [key]})
    return {kv["key"]: kv.get("value") for kv in result["configurationKey"]}[key]


def evcc_profile(rig: OcppRig, amps: float, phases: int | None = None) -> dict[str, Any]:
    """createTxDefaultChargingProfile (Absolute from a minute ago, stack 8, id 16)."""
    period: dict[str, Any] = {"startPeriod": 0, "limit": int(amps * 10) / 10}
    if phases:
        period["numberPhases"] = phases
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 16,
            "stackLevel": 8,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "startSchedule": iso(rig.clock.now() - timedelta(minutes=1)),
                "chargingSchedulePeriod": [period],
            },
        },
    }


async def offered_in_meter_values(rig: OcppRig) -> float:
    """The Current.Offered of the next periodic MeterValues (what evcc's Enabled() reads)."""
    mark = rig.central.mark()
    await rig.run(10.0)
    frame = await rig.call_of("MeterValues", since=mark)
    sampled = frame.payload["meterValue"][0]["sampledValue"]
    offered = [sv for sv in sampled if sv["measurand"] == "Current.Offered"]
    assert [sv["unit"] for sv in offered] == ["A"]
    return float(offered[0]["value"])


# --- evcc ----------------------------------------------------------------------------------


async def test_evcc_setup_triggers_meter_values_on_connector_0_and_gets_them(
    rig: OcppRig,
) -> None:
    await rig.meter_sample()
    mark = rig.central.mark()
    got = await exchange(
        rig, "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 0}
    )
    assert got == {"status": "Accepted"}
    frame = await rig.call_of("MeterValues", since=mark)
    assert frame.payload["connectorId"] == 1  # connector 0: every connector's meter
    measurands = {
        sv["measurand"] for mv in frame.payload["meterValue"] for sv in mv["sampledValue"]
    }
    assert "Energy.Active.Import.Register" in measurands


async def test_evcc_reads_enabled_from_current_offered_and_the_composite_schedule(
    rig: OcppRig,
) -> None:
    await rig.start_transaction()
    tx = rig.connector.transaction
    assert (await exchange(rig, "SetChargingProfile", evcc_profile(rig, 0.0))) == {
        "status": "Accepted"
    }
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
    assert await offered_in_meter_values(rig) == 0.0  # evcc: disabled
    schedule = await exchange(rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert schedule["status"] == "Accepted"
    assert schedule["chargingSchedule"]["chargingRateUnit"] == "A"  # none asked: amps
    assert schedule["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 0.0
    # evcc truncates to 0.1 A: 13.37 A becomes 13.3 A, offered as the pilot can (13.3 A).
    assert (await exchange(rig, "SetChargingProfile", evcc_profile(rig, 13.37))) == {
        "status": "Accepted"
    }
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    assert await offered_in_meter_values(rig) == pytest.approx(13.3, abs=0.1)
    schedule = await exchange(rig, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert schedule["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 13.3
    assert rig.connector.transaction == tx


async def test_evcc_switches_phases_with_number_phases(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    connectors = [
        {
            "meter": {"port": 0, "poll_interval_s": 1.0},
            "phase_switch": {"enabled": True, "relay_pin": 6, "settle_s": 2.0},
        }
    ]
    async with ocpp_rig(cs, tmp_path, clock=clock, connectors=connectors) as rig:
        # Setup: ConnectorSwitch3to1PhaseSupported true -> evcc sets numberPhases.
        assert await get_one(rig, "ConnectorSwitch3to1PhaseSupported") == "true"
        await rig.start_transaction()
        tx = rig.connector.transaction
        assert (await exchange(rig, "SetChargingProfile", evcc_profile(rig, 16.0, 1))) == {
            "status": "Accepted"
        }
        await rig.until(lambda: rig.sim.pins.phases_switched_to_one, within_s=15)
        await rig.until(lambda: rig.status == "Charging", within_s=15)
        await rig.until(
            lambda: sum(1 for a in rig.sim.ev.phase_currents_a() if a > 1.0) == 1, within_s=10
        )
        assert rig.connector.transaction == tx
        assert (await exchange(rig, "SetChargingProfile", evcc_profile(rig, 16.0, 3))) == {
            "status": "Accepted"
        }
        await rig.until(lambda: not rig.sim.pins.phases_switched_to_one, within_s=15)
        await rig.until(
            lambda: sum(1 for a in rig.sim.ev.phase_currents_a() if a > 1.0) == 3, within_s=15
        )
        assert rig.connector.transaction == tx
        assert rig.calls("StopTransaction") == []


# --- Home Assistant --------------------------------------------------------------------------


def ha_cp_max(stack_level: int, unit: str, limit: float) -> dict[str, Any]:
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 1000,
            "stackLevel": stack_level,
            "chargingProfileKind": "Relative",
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingSchedule": {
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            },
        },
    }


async def test_home_assistant_sets_zero_then_watts_on_connector_0_and_clears_all(
    rig: OcppRig,
) -> None:
    await rig.start_transaction()
    tx = rig.connector.transaction
    units = await get_one(rig, "ChargingScheduleAllowedChargingRateUnit")
    assert units is not None and {"current", "power"} <= {u.lower() for u in units.split(",")}
    stack = int(await get_one(rig, "ChargeProfileMaxStackLevel") or "")
    # "Maximum current" 0 A: charging stops (lbbrhzn #1245), the transaction stays.
    assert (await exchange(rig, "SetChargingProfile", ha_cp_max(stack, "A", 0.0))) == {
        "status": "Accepted"
    }
    await rig.until(lambda: rig.status == "SuspendedEVSE", within_s=1)
    await rig.until(lambda: not rig.sim.pins.contactor_closed, within_s=10)
    assert rig.connector.transaction == tx
    # Given watts (and the charger allows Power): the same profile in W, 6900 W = 10 A x 3 x 230 V.
    assert (await exchange(rig, "SetChargingProfile", ha_cp_max(stack, "W", 6900.0))) == {
        "status": "Accepted"
    }
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    assert rig.connector.offered_a == pytest.approx(10.0, abs=0.1)
    # clear_profile(): no field at all, every profile goes.
    assert await exchange(rig, "ClearChargingProfile", {}) == {"status": "Accepted"}
    assert rig.connector.offered_a == 32.0
    assert await exchange(rig, "ClearChargingProfile", {}) == {"status": "Unknown"}
    assert rig.connector.transaction == tx
