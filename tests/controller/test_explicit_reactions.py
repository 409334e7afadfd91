"""What the connector hooks must do on a CS answer or a TxProfile happens by explicit call:
with no observer at all (or a broken one) StopTransactionOnInvalidId and the TxProfile's
end still work. Observers are for the timeline only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.connector.status import StopReason
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OTHER, OcppRig, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted", OTHER: "Accepted"}) as central:
        yield central


def broken_observers_only(rig: OcppRig) -> None:
    """Nothing but an observer that raises on every event."""

    def broken(_event: str, _fields: dict[str, Any]) -> None:
        raise RuntimeError("a broken timeline")

    rig.ocpp.ctx.observers[:] = [broken]


async def test_invalid_id_stops_without_any_working_observer(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false", "StopTransactionOnInvalidId": "true"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        broken_observers_only(rig)
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start("DEADBEEF", connector_id=1) == "Accepted"
        start = await rig.answered(await rig.call_of("StartTransaction", since=mark))
        assert start.payload["idTagInfo"]["status"] == "Invalid"
        stop = await rig.call_of("StopTransaction", since=mark)
        assert stop.payload["reason"] == "DeAuthorized"
        assert rig.connector.transaction is None
        assert rig.ocpp.ctx.observer_failures > 0  # they were called, and failed


async def test_a_tx_profile_ends_with_its_session_without_any_working_observer(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        broken_observers_only(rig)
        await rig.plug()
        profile = {
            "chargingProfileId": 7,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
            },
        }
        assert await rig.remote_start(connector_id=1, charging_profile=profile) == "Accepted"
        await rig.charging()
        await rig.until(lambda: rig.connector.offered_a == 10.0)
        assert rig.connector.request_stop(StopReason.REMOTE)
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.status == "Available")
        await rig.plug()
        assert await rig.remote_start(connector_id=1) == "Accepted"
        await rig.charging()
        assert rig.connector.offered_a == 32.0  # the last session's TxProfile is gone
