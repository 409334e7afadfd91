"""StrictChargePoint answers every bad CS->CP frame with the OCPP-J 1.6 code, and goes on.

The CP runs over a real loopback websocket against the bench Central System, which sends
the raw frames of `MALFORMED_FRAMES` (tests/support/malformed_frames.py) and checks each
answer on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from ocpp.exceptions import (
    FormatViolationError,
    GenericError,
    OccurrenceConstraintViolationError,
    PropertyConstraintViolationError,
)
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from evsed.controller.ocpp16.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    KNOWN_ACTIONS,
    StrictChargePoint,
    call_error_frame,
    websocket_options,
)
from evsed.hwmocks.central_system import CentralSystem, Direction
from tests.support.malformed_frames import MALFORMED_FRAMES, MalformedFrame

CP = "CP_STRICT"


class BenchCP(StrictChargePoint):
    """Core CS->CP handlers that accept everything valid, plus two deliberate faults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resets: list[str] = []
        self.raise_from_handler: Exception | None = None

    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        self.resets.append(type)
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    async def after_reset(self, type: str) -> None:
        if type == "Soft":
            return
        # An @after hook may call the CS: it runs as a task, not inside the receive loop.
        await self.call(
            call.StatusNotification(connector_id=0, error_code="NoError", status="Unavailable")
        )

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str
    ) -> call_result.ChangeAvailability:
        return call_result.ChangeAvailability(status="Accepted")

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status="Rejected")

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(configuration_key=[], unknown_key=key or [])

    @on(Action.clear_cache)
    def on_clear_cache(self) -> call_result.ClearCache:
        if self.raise_from_handler is not None:
            raise self.raise_from_handler
        return call_result.ClearCache(status="Accepted")

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **_: Any) -> call_result.RemoteStartTransaction:
        return call_result.RemoteStartTransaction(status="Rejected")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int) -> call_result.RemoteStopTransaction:
        return call_result.RemoteStopTransaction(status="Rejected")

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int) -> call_result.UnlockConnector:
        if connector_id == 99:
            raise RuntimeError("simulated handler crash")
        if connector_id == 98:
            return call_result.UnlockConnector(status="Sideways")  # not in the enum
        return call_result.UnlockConnector(status="NotSupported")

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    # Has a handler, but the deployment switches Local Auth List Management off.
    @on(Action.get_local_list_version)
    def on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(list_version=1)

    supported_actions = frozenset(
        {
            "Reset",
            "ChangeAvailability",
            "ChangeConfiguration",
            "GetConfiguration",
            "ClearCache",
            "RemoteStartTransaction",
            "RemoteStopTransaction",
            "UnlockConnector",
            "DataTransfer",
        }
    )


@asynccontextmanager
async def strict_cp(
    cs: CentralSystem, *, max_size: int | None = DEFAULT_MAX_FRAME_BYTES, **cp_options: Any
) -> AsyncIterator[tuple[BenchCP, asyncio.Task[None]]]:
    options = websocket_options()
    options["max_size"] = max_size
    async with connect(f"{cs.url}/{CP}", **options) as ws:
        assert ws.subprotocol == "ocpp1.6"
        cp = BenchCP(CP, ws, response_timeout=2, **cp_options)
        task = asyncio.create_task(cp.start())
        await cs.wait_connected(CP)
        try:
            yield cp, task
        finally:
            task.cancel()
            cp.cancel_background_tasks()
            with suppress(asyncio.CancelledError, ConnectionClosed):
                await task
            await asyncio.gather(*cp._background, return_exceptions=True)


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as central:
        yield central


@pytest.fixture
async def cp(cs: CentralSystem) -> AsyncIterator[BenchCP]:
    async with strict_cp(cs) as (charge_point, _):
        yield charge_point


async def assert_session_goes_on(cs: CentralSystem) -> None:
    assert (await cs.call(CP, call.Reset(type="Soft"), timeout=2)).status == "Accepted"


def replies_since(cs: CentralSystem, mark: int) -> list[Any]:
    return [f for f in cs.frames[mark:] if f.direction is Direction.CP_TO_CS]


@pytest.mark.parametrize("case", MALFORMED_FRAMES, ids=[m.name for m in MALFORMED_FRAMES])
async def test_malformed_frame_gets_the_1_6_answer(
    cs: CentralSystem, cp: BenchCP, case: MalformedFrame
) -> None:
    mark = cs.mark()
    await cs.send_raw(CP, case.text)
    # The CP handles frames in order: once the next CALL is answered, any reply to the
    # bad frame is already on record.
    await assert_session_goes_on(cs)
    replies = replies_since(cs, mark)
    if case.expected is None:
        assert [(f.message_type, f.action) for f in replies] == [(3, "Reset")]
        return
    error = replies[0]
    assert json.loads(error.raw)[:3] == [4, case.unique_id, case.expected]
    assert isinstance(error.error_description, str)
    assert error.error_details == {}
    assert cp.resets == ["Soft"]  # no bad frame reached a handler


async def test_table_covers_every_1_6_payload_code() -> None:
    codes = {m.expected for m in MALFORMED_FRAMES}
    assert codes >= {
        None,
        "NotImplemented",
        "NotSupported",
        "ProtocolError",
        "FormationViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "PropertyConstraintViolation",
    }


async def test_valid_calls_are_answered(cs: CentralSystem, cp: BenchCP) -> None:
    assert (await cs.call(CP, call.GetConfiguration(key=["X"]))).unknown_key == ["X"]
    assert (await cs.call(CP, call.ChangeAvailability(connector_id=0, type="Operative"))).status
    assert (await cs.call(CP, call.DataTransfer(vendor_id="v"))).status == "UnknownVendorId"
    assert not [f for f in cs.frames if f.is_error]


async def test_handled_action_outside_supported_actions_is_not_supported(
    cs: CentralSystem, cp: BenchCP
) -> None:
    mark = cs.mark()
    await cs.send_raw(CP, '[2,"llv","GetLocalListVersion",{}]')
    reply = await cs.wait_for_reply("llv", since=mark)
    assert reply.error_code == "NotSupported"
    cp.supported_actions = cp.supported_actions | {"GetLocalListVersion"}
    assert (await cs.call(CP, call.GetLocalListVersion())).list_version == 1


async def test_every_known_action_without_handler_is_not_supported(
    cs: CentralSystem, cp: BenchCP
) -> None:
    unhandled = sorted(KNOWN_ACTIONS - BenchCP.supported_actions)
    for index, action in enumerate(unhandled):
        await cs.send_raw(CP, json.dumps([2, f"k{index}", action, {}]))
    await assert_session_goes_on(cs)
    codes = {f.action: f.error_code for f in cs.frames if f.is_error}
    assert codes == dict.fromkeys(unhandled, "NotSupported")


async def test_handler_crash_is_internal_error_and_logged(
    cs: CentralSystem, cp: BenchCP, caplog: pytest.LogCaptureFixture
) -> None:
    mark = cs.mark()
    with caplog.at_level(logging.ERROR):
        await cs.send_raw(CP, '[2,"crash","UnlockConnector",{"connectorId":99}]')
        reply = await cs.wait_for_reply("crash", since=mark)
    assert json.loads(reply.raw)[:3] == [4, "crash", "InternalError"]
    assert reply.error_details == {}
    assert any("simulated handler crash" in (r.exc_text or "") for r in caplog.records)
    await assert_session_goes_on(cs)


async def test_invalid_response_from_handler_is_internal_error(
    cs: CentralSystem, cp: BenchCP
) -> None:
    mark = cs.mark()
    await cs.send_raw(CP, '[2,"bad-out","UnlockConnector",{"connectorId":98}]')
    reply = await cs.wait_for_reply("bad-out", since=mark)
    assert reply.error_code == "InternalError"
    await assert_session_goes_on(cs)


@pytest.mark.parametrize(
    ("raised", "sent"),
    [
        (FormatViolationError(), "FormationViolation"),
        (OccurrenceConstraintViolationError(), "OccurenceConstraintViolation"),
        (
            PropertyConstraintViolationError(description="no such connector"),
            "PropertyConstraintViolation",
        ),
    ],
)
async def test_codes_a_handler_raises_go_out_in_1_6_spelling(
    cs: CentralSystem, cp: BenchCP, raised: Exception, sent: str
) -> None:
    cp.raise_from_handler = raised
    mark = cs.mark()
    await cs.send_raw(CP, '[2,"h","ClearCache",{}]')
    reply = await cs.wait_for_reply("h", since=mark)
    assert reply.error_code == sent
    assert isinstance(reply.error_description, str) and reply.error_details == {}


async def test_after_hook_can_call_the_central_system(cs: CentralSystem, cp: BenchCP) -> None:
    mark = cs.mark()
    assert (await cs.call(CP, call.Reset(type="Hard"))).status == "Accepted"
    status = await cs.wait_for_call("StatusNotification", CP, since=mark)
    reset_result = next(f for f in cs.frames[mark:] if f.is_result and f.action == "Reset")
    assert reset_result.seq < status.seq  # the hook runs after the CALLRESULT is sent


async def test_oversize_frame_is_refused_by_the_websocket(cs: CentralSystem) -> None:
    async with strict_cp(cs) as (_, task):
        huge = (
            '[2,"big","DataTransfer",{"vendorId":"v","data":"'
            + "x" * DEFAULT_MAX_FRAME_BYTES
            + '"}]'
        )
        await cs.send_raw(CP, huge)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(task, 2)
        assert closed.value.sent is not None and closed.value.sent.code == 1009
        await cs.wait_disconnected(CP)


async def test_oversize_frame_is_refused_by_the_class_when_the_link_allows_it(
    cs: CentralSystem,
) -> None:
    async with strict_cp(cs, max_size=None, max_frame_bytes=1024) as (cp, _):
        assert cp.max_frame_bytes == 1024
        mark = cs.mark()
        data = "x" * 2000
        await cs.send_raw(CP, '[2,"big","DataTransfer",{"vendorId":"v","data":"' + data + '"}]')
        await cs.send_raw(CP, '["not a call","' + data + '"]')  # no id to answer
        await assert_session_goes_on(cs)
        replies = replies_since(cs, mark)
        assert [(f.unique_id, f.error_code) for f in replies[:1]] == [("big", "FormationViolation")]
        assert len(replies) == 2


async def test_stray_results_do_not_poison_the_next_call(cs: CentralSystem, cp: BenchCP) -> None:
    for index in range(200):
        await cs.send_raw(CP, f'[3,"stray-{index}",{{}}]')
    assert (await cp.call(call.Heartbeat())).current_time
    assert cp._response_queue.empty()


async def test_unknown_error_code_from_the_cs_becomes_generic_error(
    cs: CentralSystem, cp: BenchCP
) -> None:
    cs.silent_actions.add("Heartbeat")
    cp._unique_id_generator = lambda: "hb-1"
    pending = asyncio.create_task(cp.call(call.Heartbeat(), suppress=False))
    await cs.wait_for_call("Heartbeat", CP)
    await cs.send_raw(CP, '[4,"hb-1","Kaboom",null,null]')
    with pytest.raises(GenericError) as raised:
        await pending
    assert raised.value.details == {"errorCode": "Kaboom"}
    assert raised.value.description == ""


async def test_binary_frame_is_ignored(cs: CentralSystem, cp: BenchCP) -> None:
    mark = cs.mark()
    await cs._sessions[CP].ws.send(b'[2,"bin","Reset",{"type":"Hard"}]')
    await assert_session_goes_on(cs)
    assert [f.action for f in replies_since(cs, mark)] == ["Reset"]
    assert cp.resets == ["Soft"]


def test_call_error_frame_never_carries_null() -> None:
    assert (
        call_error_frame("u", "FormatViolation", None, None) == '[4,"u","FormationViolation","",{}]'
    )
    assert call_error_frame("u", "NoSuchCode") == '[4,"u","GenericError","",{}]'
    long = json.loads(call_error_frame("u", "InternalError", "d" * 1000))
    assert len(long[3]) == 255


def test_websocket_options_bound_the_frame_and_name_the_subprotocol() -> None:
    assert websocket_options(4096) == {"subprotocols": ["ocpp1.6"], "max_size": 4096}
