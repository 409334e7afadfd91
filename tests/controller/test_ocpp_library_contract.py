"""What evsed relies on in the `ocpp` library's private routing, pinned.

`StrictChargePoint` (controller/ocpp16/protocol.py) replaces `start`, `route_message` and
`_handle_call`, reads the attributes the library's `__init__` sets (`_connection`, `id`,
`logger`, `route_map`), builds on `create_route_map`, and feeds `call()` through
`_call_lock` and `_response_queue`. None of that is public API: a new `ocpp` release may
change it without notice. These tests fail loudly when it does, naming what to re-check in
protocol.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from pathlib import Path

import ocpp
import ocpp.charge_point
import ocpp.routing
import ocpp.v16
import pytest
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.messages import CallError, CallResult, MessageType
from ocpp.routing import after, create_route_map, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evsed.controller.ocpp16.protocol import ErrorCode, StrictChargePoint

REVIEW = (
    "the ocpp library changed {what}: re-check StrictChargePoint (controller/ocpp16/"
    "protocol.py) against the new release, then update this pin"
)

# sha256 (16 hex digits) of the source of each library function evsed overrides or leans
# on, in ocpp 2.1.0. After reviewing protocol.py against a new release, regenerate with
# hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16].
PINNED_SOURCES = {
    "ChargePoint.__init__": "36c0ca30a2784dfb",
    "ChargePoint.route_message": "fe0bf07bdd2e1c9a",
    "ChargePoint._handle_call": "f9877c77b99a69af",
    "ChargePoint.call": "29fb6b76027ae74c",
    "ChargePoint._get_specific_response": "fc24c06ff488079a",
    "ChargePoint._send": "3b3ce2162751e44c",
    "routing.create_route_map": "5b3bb22df9e82d58",
    "routing.on": "9ad1d763873618ec",
    "routing.after": "18a5ee16484a1239",
}


def _source_of(name: str) -> str:
    owner, attr = name.split(".")
    obj = ocpp.v16.ChargePoint if owner == "ChargePoint" else ocpp.routing
    return inspect.getsource(getattr(obj, attr))


def _digest(name: str) -> str:
    return hashlib.sha256(_source_of(name).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(PINNED_SOURCES))
def test_the_library_code_evsed_overrides_is_unchanged(name: str) -> None:
    assert _digest(name) == PINNED_SOURCES[name], REVIEW.format(what=name)


def test_signatures_evsed_overrides_or_calls() -> None:
    base = ocpp.v16.ChargePoint
    expected = {
        "__init__": ["self", "id", "connection", "response_timeout", "logger"],
        "route_message": ["self", "raw_msg"],
        "_handle_call": ["self", "msg"],
        "_send": ["self", "message"],
        "call": ["self", "payload", "suppress", "unique_id", "skip_schema_validation"],
    }
    for name, params in expected.items():
        got = list(inspect.signature(getattr(base, name)).parameters)
        assert got == params, REVIEW.format(what=f"the signature of ChargePoint.{name}")
    ours = inspect.signature(StrictChargePoint.route_message).parameters
    assert list(ours) == expected["route_message"]
    assert list(inspect.signature(StrictChargePoint._handle_call).parameters) == ["self", "msg"]
    # Replaced outright, so the library's version of these does not matter:
    for name in ("start", "route_message", "_handle_call"):
        assert name in vars(StrictChargePoint), name


def test_the_attributes_init_sets() -> None:
    link = _Link()
    cp = _CP("cp-7", link, response_timeout=3)
    assert cp._connection is link, REVIEW.format(what="ChargePoint.__init__ (_connection)")
    assert cp.id == "cp-7" and cp.logger is not None
    assert isinstance(cp._call_lock, asyncio.Lock)
    assert isinstance(cp._response_queue, asyncio.Queue)
    assert "_on_action" in cp.route_map["Reset"]


def test_route_map_shape() -> None:
    """`add_handlers` and `is_supported` read the route map's keys."""

    class Handlers:
        @on(Action.reset, skip_schema_validation=True)
        def on_reset(self, type: str) -> call_result.Reset:
            return call_result.Reset(status="Accepted")

        @after(Action.reset)
        def after_reset(self, type: str) -> None:
            return None

        @on(Action.clear_cache)
        def on_clear_cache(self) -> call_result.ClearCache:
            return call_result.ClearCache(status="Accepted")

    handlers = Handlers()
    routes = create_route_map(handlers)
    assert set(routes) == {"Reset", "ClearCache"}, REVIEW.format(what="create_route_map keys")
    assert routes["Reset"] == {
        "_on_action": handlers.on_reset,
        "_after_action": handlers.after_reset,
        "_skip_schema_validation": True,
    }, REVIEW.format(what="the route map entries")
    assert routes["ClearCache"]["_skip_schema_validation"] is False
    assert Action.reset == "Reset"  # the map is keyed by the action's wire name


class _Link:
    """The connection the library's ChargePoint reads and writes (recv/send)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str] = asyncio.Queue()
        self.sent: asyncio.Queue[str] = asyncio.Queue()

    async def recv(self) -> str:
        return await self.incoming.get()

    async def send(self, message: str) -> None:
        await self.sent.put(message)


class _CP(StrictChargePoint):
    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status="Accepted")


async def test_start_routes_every_frame_through_our_route_message() -> None:
    """Each frame read from the connection goes through our `route_message`: a CALL the
    library would answer NotImplemented gets our NotSupported; `_handle_call` is never
    reached."""
    link = _Link()
    cp = _CP("cp", link)
    task = asyncio.create_task(cp.start())
    try:
        await link.incoming.put('[2,"a1","ClearCache",{}]')
        reply = json.loads(await asyncio.wait_for(link.sent.get(), 2))
        assert reply[:3] == [4, "a1", "NotSupported"], REVIEW.format(what="start()'s routing")
        await link.incoming.put('[2,"a2","Reset",{"type":"Soft"}]')
        reply = json.loads(await asyncio.wait_for(link.sent.get(), 2))
        assert reply == [3, "a2", {"status": "Accepted"}]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_call_waits_on_call_lock_and_reads_response_queue() -> None:
    """`_deliver_response` puts answers on `_response_queue` only while `_call_lock` is held
    by `call()`; the answer objects are the library's CallResult / CallError."""
    link = _Link()
    cp = _CP("cp", link, response_timeout=2)
    pending = asyncio.create_task(cp.call(call.Heartbeat()))
    sent = json.loads(await asyncio.wait_for(link.sent.get(), 2))
    assert sent[0] == MessageType.Call and sent[2] == "Heartbeat"
    assert cp._call_lock.locked(), REVIEW.format(what="call()'s use of _call_lock")
    cp._response_queue.put_nowait(CallResult(sent[1], {"currentTime": "2026-01-01T00:00:00Z"}))
    result = await asyncio.wait_for(pending, 2)
    assert result == call_result.Heartbeat(current_time="2026-01-01T00:00:00Z")
    assert not cp._call_lock.locked()

    failing = asyncio.create_task(cp.call(call.Heartbeat(), suppress=False))
    sent = json.loads(await asyncio.wait_for(link.sent.get(), 2))
    cp._response_queue.put_nowait(CallError(sent[1], "GenericError", "no", {}))
    with pytest.raises(OCPPError):
        await asyncio.wait_for(failing, 2)


def test_message_objects_and_helpers() -> None:
    assert CallResult("u1", {"status": "Accepted"}, "Reset").to_json() == (
        '[3,"u1",{"status":"Accepted"}]'
    ), REVIEW.format(what="CallResult.to_json")
    assert camel_to_snake_case({"idTagInfo": {"parentIdTag": "P"}}) == {
        "id_tag_info": {"parent_id_tag": "P"}
    }
    assert snake_to_camel_case({"id_tag_info": {"parent_id_tag": "P"}}) == {
        "idTagInfo": {"parentIdTag": "P"}
    }
    assert remove_nones(serialize_as_dict(call_result.DataTransfer(status="Accepted"))) == {
        "status": "Accepted"
    }
    # `_deliver_response` maps unknown CALLERROR codes via OCPPError's direct subclasses.
    codes = {cls.code for cls in OCPPError.__subclasses__()}
    assert {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "PropertyConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    } <= codes, REVIEW.format(what="its OCPPError subclasses")
    assert {str(c) for c in ErrorCode} - codes <= {
        "FormationViolation",
        "OccurenceConstraintViolation",
    }


@pytest.mark.parametrize("action", sorted(a.value for a in Action))
def test_schemas_for_every_action_in_both_directions(action: str) -> None:
    """protocol.validate_payload reads `ocpp/v16/schemas/<Action>[Response].json`."""
    schemas = Path(ocpp.v16.__file__).parent / "schemas"
    for name in (action, f"{action}Response"):
        text = (schemas / f"{name}.json").read_text(encoding="utf-8-sig")
        assert json.loads(text).get("type") == "object", REVIEW.format(what=f"schema {name}")
