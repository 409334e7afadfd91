"""A CS frame right behind an answer sees that answer applied (issue 9: a flaky start-path
test; a real race for any Central System).

The library's receive loop hands a CALLRESULT to the waiting call() and goes on to the next
frame at once. A CS that answers StartTransaction and sends RemoteStopTransaction straight
after (both in one TCP read) had the RemoteStop handled before the charge point stored the
transactionId: Rejected, and the session went on charging."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem, Direction
from tests.support.ocpp_stack import CARD, CP_ID, OcppRig, ocpp_rig

TX_ID = 7


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def _answer_then_stop(rig: OcppRig, cs: CentralSystem) -> dict[str, object]:
    """The CS answers the StartTransaction and, in the same write, stops it."""
    start = await rig.call_of("StartTransaction")
    answer = [3, start.unique_id, {"transactionId": TX_ID, "idTagInfo": {"status": "Accepted"}}]
    stop = [2, "stop-right-behind", "RemoteStopTransaction", {"transactionId": TX_ID}]
    session = cs._session(CP_ID)
    # One websocket write each, no await in between: both reach the CP in one read.
    await session.ws.send(json.dumps(answer))
    await session.ws.send(json.dumps(stop))
    reply = await cs.wait_for(
        lambda f: (
            f.direction is Direction.CP_TO_CS and f.is_result and f.unique_id == "stop-right-behind"
        )
    )
    return dict(reply.payload)


async def test_a_remote_stop_right_behind_the_start_answer_stops(
    cs: CentralSystem, tmp_path: Path
) -> None:
    cs.silent_actions.add("StartTransaction")  # the test writes the answer itself
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}) as rig:
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        assert await _answer_then_stop(rig, cs) == {"status": "Accepted"}
        await rig.until(lambda: rig.connector.transaction is None, within_s=10)
