"""GetCompositeSchedule of a connector under a ChargePointMaxProfile two connectors share
reports what the profiles give it (the whole cap), not its present share of it: the share is
the local load balancer's decision of the moment (it changes with every start, stop and grid
poll), the composite schedule is "the result of the calculation of all active schedules"
(OCPP 1.6 §3.13.5/§5.7) for the whole window asked. What the connector offers now is in its
Current.Offered MeterValues. evcc reads the composite's first period as "is the charger
enabled" (charger/ocpp/connector.go GetScheduleLimit, a fallback of ocpp.go Enabled): a
connector the balancer pauses for the older one must not read as disabled to evcc, which
enabled it ("charger out of sync"). The test pins this choice (the code did this already;
the reasons are written down in the module). See `evsed.controller.smartcharging.composite`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OTHER, OcppRig, exchange, ocpp_rig

ROOT = Path(__file__).parents[2]


def shared_cap(limit: float) -> dict[str, Any]:
    """An Absolute ChargePointMaxProfile on connector 0 from long ago, no end."""
    schedule = {
        "chargingRateUnit": "A",
        "startSchedule": "2020-01-01T00:00:00Z",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
    }
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 77,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": schedule,
        },
    }


async def first_limit(rig: OcppRig, connector_id: int) -> float:
    got = await exchange(rig, "GetCompositeSchedule", {"connectorId": connector_id, "duration": 60})
    assert got["status"] == "Accepted", got
    return float(got["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])


@pytest.mark.parametrize(("cap", "shares"), [(24.0, (12.0, 12.0)), (10.0, (10.0, 0.0))])
async def test_a_connector_reports_the_cap_not_its_share(
    tmp_path: Path, cap: float, shares: tuple[float, float]
) -> None:
    connectors = tomllib.loads((ROOT / "config" / "sim-two-connectors.toml").read_text())
    for c in connectors["connectors"]:
        c["meter"]["port"] = 0
    clock = FakeClock()
    tags = {CARD: "Accepted", OTHER: "Accepted"}
    async with (
        CentralSystem(tags=tags, now=clock.now) as cs,
        ocpp_rig(
            cs,
            tmp_path,
            clock=clock,
            connectors=connectors["connectors"],
            authorization={"local_tags": [CARD, OTHER]},
        ) as rig,
    ):
        charger = rig.stack.charger
        assert charger is not None
        assert (await exchange(rig, "SetChargingProfile", shared_cap(cap)))["status"] == "Accepted"
        for cid, tag in ((1, CARD), (2, OTHER)):
            await rig.bench.plug(cid)
            await rig.until(lambda c=cid: str(charger.connector(c).status.status) == "Preparing")
            r = await rig.command(call.RemoteStartTransaction(id_tag=tag, connector_id=cid))
            assert r.status == "Accepted"
            await rig.until(lambda c=cid: charger.connector(c).transaction is not None, within_s=10)
            await rig.run(3)
        # Shared (or, with too little for two, the newer one paused) ...
        assert tuple(charger.connector(c).offered_a for c in (1, 2)) == shares
        # ... while each connector's composite is what the profiles give it: the cap.
        assert [await first_limit(rig, c) for c in (1, 2)] == [cap, cap]
        # The whole charge point's never exceeds the cap (nor the sum of the shares' caps).
        assert await first_limit(rig, 0) == cap
