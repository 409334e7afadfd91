"""Issue 12's audit of TriggerMessage: every one of the six targets, each with a connectorId
(Accepted, then the message after the answer) and with one that does not exist (Rejected,
and nothing sent). test_remote_trigger.py covers each target without connectorId and the
other answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.ocpp16.profiles.remote_trigger import MESSAGES
from evsed.hwmocks.central_system import CentralSystem, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig

TARGETS = sorted(MESSAGES)


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path) as r:
        # The start-up StatusNotifications first: they would interleave with a trigger's.
        await cs.wait_for(
            lambda f: (
                f.is_call and f.action == "StatusNotification" and f.payload["connectorId"] == 1
            )
        )
        yield r


async def trigger(rig: OcppRig, uid: str, payload: dict[str, Any]) -> tuple[Frame, int]:
    mark = rig.central.mark()
    await rig.central.send_raw(CP_ID, json.dumps([2, uid, "TriggerMessage", payload]))
    return await rig.central.wait_for_reply(uid, since=mark), mark


def test_the_six_targets_of_ocpp_16() -> None:
    assert TARGETS == [
        "BootNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StatusNotification",
    ]


@pytest.mark.parametrize("message", TARGETS)
async def test_each_target_with_a_connector_id_is_accepted_then_sent(
    rig: OcppRig, message: str
) -> None:
    if message == "MeterValues":
        await rig.meter_sample()  # a reading to report
    reply, _ = await trigger(rig, "c1", {"requestedMessage": message, "connectorId": 1})
    assert reply.payload == {"status": "Accepted"}
    frame = await rig.call_of(message, since=reply.seq)
    assert frame.seq > reply.seq  # §5.17: the answer first, then the message
    if message in ("StatusNotification", "MeterValues"):
        assert frame.payload["connectorId"] == 1


@pytest.mark.parametrize("message", TARGETS)
async def test_each_target_for_a_connector_that_does_not_exist_is_rejected(
    rig: OcppRig, message: str
) -> None:
    reply, mark = await trigger(rig, "c2", {"requestedMessage": message, "connectorId": 7})
    assert reply.payload == {"status": "Rejected"}
    # A Heartbeat triggered after it marks the end: whatever the first one sent came before.
    marker, _ = await trigger(rig, "c3", {"requestedMessage": "Heartbeat"})
    await rig.call_of("Heartbeat", since=marker.seq)
    sent = rig.calls(message, since=mark)
    if message == "Heartbeat":
        assert len(sent) == 1  # the marker's own
    else:
        assert sent == []
