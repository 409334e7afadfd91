"""TriggerMessage end to end with the embedded Central System: every requestedMessage, with
and without connectorId, each answer value, and the message arriving after the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.ocpp16.profiles import SUPPORTED_FEATURE_PROFILES
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig


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
    """Send TriggerMessage raw (so any requestedMessage goes out as written); the reply and
    the mark taken before it."""
    mark = rig.central.mark()
    await rig.central.send_raw(CP_ID, json.dumps([2, uid, "TriggerMessage", payload]))
    return await rig.central.wait_for_reply(uid, since=mark), mark


async def the_call_after(rig: OcppRig, action: str, reply: Frame) -> Frame:
    frame = await rig.call_of(action, since=reply.seq)
    assert frame.seq > reply.seq  # §5.17: the answer first, then the message
    return frame


def test_remote_trigger_is_a_supported_feature_profile() -> None:
    assert "RemoteTrigger" in SUPPORTED_FEATURE_PROFILES


@pytest.mark.parametrize("connector_id", [None, 1], ids=["no connectorId", "connector 1"])
async def test_status_notification_is_sent_after_the_answer(
    rig: OcppRig, connector_id: int | None
) -> None:
    payload: dict[str, Any] = {"requestedMessage": "StatusNotification"}
    if connector_id is not None:
        payload["connectorId"] = connector_id
    reply, _ = await trigger(rig, "t1", payload)
    assert reply.payload == {"status": "Accepted"}
    first = await the_call_after(rig, "StatusNotification", reply)
    if connector_id is None:
        assert first.payload["connectorId"] == 0  # every connector, 0 first
        second = await rig.call_of("StatusNotification", since=first.seq + 1)
        assert second.payload["connectorId"] == 1
    else:
        assert first.payload["connectorId"] == 1
        assert first.payload["status"] == "Available"


async def test_boot_notification(rig: OcppRig) -> None:
    reply, _ = await trigger(rig, "t2", {"requestedMessage": "BootNotification"})
    assert reply.payload == {"status": "Accepted"}
    boot = await the_call_after(rig, "BootNotification", reply)
    assert boot.payload["chargePointVendor"]


async def test_heartbeat(rig: OcppRig) -> None:
    reply, _ = await trigger(rig, "t3", {"requestedMessage": "Heartbeat"})
    assert reply.payload == {"status": "Accepted"}
    await the_call_after(rig, "Heartbeat", reply)


@pytest.mark.parametrize("connector_id", [None, 1], ids=["no connectorId", "connector 1"])
async def test_meter_values_with_context_trigger(rig: OcppRig, connector_id: int | None) -> None:
    await rig.meter_sample()  # a reading to report
    payload: dict[str, Any] = {"requestedMessage": "MeterValues"}
    if connector_id is not None:
        payload["connectorId"] = connector_id
    reply, _ = await trigger(rig, "t4", payload)
    assert reply.payload == {"status": "Accepted"}
    frame = await the_call_after(rig, "MeterValues", reply)
    assert frame.payload["connectorId"] == 1
    contexts = {
        sv.get("context") for mv in frame.payload["meterValue"] for sv in mv["sampledValue"]
    }
    assert contexts == {"Trigger"}


@pytest.mark.parametrize("message", ["FirmwareStatusNotification", "DiagnosticsStatusNotification"])
async def test_firmware_and_diagnostics_status_idle_when_nothing_goes_on(
    rig: OcppRig, message: str
) -> None:
    reply, _ = await trigger(rig, "t5", {"requestedMessage": message})
    assert reply.payload == {"status": "Accepted"}
    frame = await the_call_after(rig, message, reply)
    assert frame.payload == {"status": "Idle"}


async def test_firmware_status_reports_what_the_firmware_job_says(rig: OcppRig) -> None:
    rig.ocpp.ctx.firmware_status = lambda: "Downloading"
    reply, _ = await trigger(rig, "t6", {"requestedMessage": "FirmwareStatusNotification"})
    frame = await the_call_after(rig, "FirmwareStatusNotification", reply)
    assert frame.payload == {"status": "Downloading"}


async def test_a_connector_that_does_not_exist_is_rejected_and_nothing_is_sent(
    rig: OcppRig,
) -> None:
    reply, mark = await trigger(
        rig, "t7", {"requestedMessage": "StatusNotification", "connectorId": 7}
    )
    assert reply.payload == {"status": "Rejected"}
    hb, _ = await trigger(rig, "t8", {"requestedMessage": "Heartbeat"})  # a later marker
    await the_call_after(rig, "Heartbeat", hb)
    assert rig.calls("StatusNotification", since=mark) == []


async def test_an_unknown_requested_message_is_not_implemented(rig: OcppRig) -> None:
    reply, _ = await trigger(rig, "t9", {"requestedMessage": "LogStatusNotification"})
    assert reply.direction is Direction.CP_TO_CS
    assert reply.payload == {"status": "NotImplemented"}


async def test_a_malformed_trigger_is_still_a_callerror(rig: OcppRig) -> None:
    reply, _ = await trigger(rig, "t10", {"requestedMessage": "Heartbeat", "connectorId": "x"})
    assert reply.error_code == "TypeConstraintViolation"
    reply, _ = await trigger(rig, "t11", {"connectorId": 1})
    assert reply.error_code == "OccurenceConstraintViolation"
