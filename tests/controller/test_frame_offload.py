"""Big CS->CP frames are parsed and schema-checked off the loop (issue 10 "heavy work leaves
the loop"), in a worker process since issue 12 (not even a thread of this process holds the
GIL through them), with exactly the OCPP-J 1.6 answers a small frame gets (protocol.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.ocpp16 import offload, protocol
from evsed.controller.ocpp16.protocol import OFFLOAD_FRAME_BYTES, StrictChargePoint


class ListCP(StrictChargePoint):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lists: list[dict[str, Any]] = []

    @on(Action.send_local_list)
    def on_send_local_list(self, **payload: Any) -> call_result.SendLocalList:
        self.lists.append(payload)
        return call_result.SendLocalList(status="Accepted")


class Wire:
    """The connection as the charge point sees it: what it sends is kept."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    async def recv(self) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def entries(n: int) -> list[dict[str, Any]]:
    return [
        {"idTag": f"TAG{i:012d}", "idTagInfo": {"status": "Accepted", "parentIdTag": "GROUP1"}}
        for i in range(n)
    ]


def frame(payload: dict[str, Any]) -> str:
    return json.dumps([2, "u-1", "SendLocalList", payload])


BIG = 2000  # entries: about 150 KB, well above the threshold


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """Which threads parsed frames and validated payloads."""
    seen: dict[str, set[int]] = {"decode": set(), "validate": set()}
    decode, validate = StrictChargePoint._decode, protocol.validate_payload

    def spy_decode(self: StrictChargePoint, raw: Any) -> Any:
        seen["decode"].add(threading.get_ident())
        return decode(self, raw)

    def spy_validate(*args: Any, **kwargs: Any) -> None:
        if not kwargs.get("response"):
            seen["validate"].add(threading.get_ident())
        validate(*args, **kwargs)

    monkeypatch.setattr(StrictChargePoint, "_decode", spy_decode)
    monkeypatch.setattr(protocol, "validate_payload", spy_validate)
    return seen


def cp() -> tuple[ListCP, Wire]:
    wire = Wire()
    return ListCP("CP", wire, max_frame_bytes=4 * 1024 * 1024), wire


async def test_a_big_frame_is_parsed_and_validated_in_the_worker_process(
    threads: dict[str, set[int]],
) -> None:
    charge_point, wire = cp()
    raw = frame({"listVersion": 3, "updateType": "Full", "localAuthorizationList": entries(BIG)})
    assert len(raw) > OFFLOAD_FRAME_BYTES
    assert await protocol.FRAME_WORKERS.warm_up()
    await charge_point.route_message(raw)
    assert wire.sent == [[3, "u-1", {"status": "Accepted"}]]
    # Not in any thread of this process (a thread holds the GIL through json.loads), but
    # in the frame worker process (issue 12: the safety core must not notice such frames).
    assert threads["decode"] == threads["validate"] == set()
    assert protocol.FRAME_WORKERS.started
    # The handler got the library's snake_case, nested objects included.
    [got] = charge_point.lists
    assert got["local_authorization_list"][5] == {
        "id_tag": "TAG000000000005",
        "id_tag_info": {"status": "Accepted", "parent_id_tag": "GROUP1"},
    }


async def test_a_small_frame_stays_on_the_loop(threads: dict[str, set[int]]) -> None:
    charge_point, wire = cp()
    await charge_point.route_message(frame({"listVersion": 3, "updateType": "Full"}))
    assert wire.sent == [[3, "u-1", {"status": "Accepted"}]]
    assert threads["decode"] == threads["validate"] == {threading.get_ident()}


def _bad(kind: str, n: int) -> dict[str, Any]:
    items = entries(n)
    payload: dict[str, Any] = {"listVersion": 3, "updateType": "Full"}
    if kind == "enum":
        items[-1]["idTagInfo"]["status"] = "Bogus"
    elif kind == "length":
        items[-1]["idTag"] = "X" * 21
    elif kind == "missing":
        del payload["updateType"]
    elif kind == "extra":
        items[-1]["colour"] = "blue"
    elif kind == "type":
        payload["listVersion"] = "3"
    payload["localAuthorizationList"] = items
    return payload


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("enum", "PropertyConstraintViolation"),
        ("length", "TypeConstraintViolation"),
        ("missing", "OccurenceConstraintViolation"),
        ("extra", "FormationViolation"),
        ("type", "TypeConstraintViolation"),
    ],
)
async def test_a_big_frame_gets_the_same_callerror_as_a_small_one(kind: str, code: str) -> None:
    answers = []
    for n in (1, BIG):
        charge_point, wire = cp()
        raw = frame(_bad(kind, n))
        assert (len(raw) > OFFLOAD_FRAME_BYTES) == (n == BIG)
        await charge_point.route_message(raw)
        [answer] = wire.sent
        answers.append(answer[:3])
        assert charge_point.lists == []
    assert answers == [[4, "u-1", code]] * 2


@pytest.mark.parametrize(
    "raw",
    [
        '[2, "u-1", "SendLocalList", {"listVersion": 1, "x": "' + "y" * 40000 + '"',  # cut
        "[" * 30000 + "]" * 30000,  # nesting bomb
    ],
)
async def test_a_big_frame_that_is_not_json_is_ignored(raw: str) -> None:
    charge_point, wire = cp()
    await charge_point.route_message(raw)
    assert wire.sent == []


@pytest.mark.parametrize("processes", [True, False])
async def test_a_worker_process_and_the_thread_fallback_answer_alike(
    processes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no process can be started, the same function runs in a thread."""
    workers = offload.Workers(processes=processes)
    monkeypatch.setattr(protocol, "FRAME_WORKERS", workers)
    try:
        assert await workers.warm_up() is processes
        for kind, code in [("enum", "PropertyConstraintViolation"), (None, None)]:
            charge_point, wire = cp()
            payload = _bad(kind, BIG) if kind else frame_payload_ok()
            await charge_point.route_message(frame(payload))
            [answer] = wire.sent
            if code is None:
                assert answer == [3, "u-1", {"status": "Accepted"}]
                assert len(charge_point.lists[0]["local_authorization_list"]) == BIG
            else:
                assert answer[:3] == [4, "u-1", code]
        assert workers.started is processes
    finally:
        await workers.aclose()
    assert not workers.started


def frame_payload_ok() -> dict[str, Any]:
    return {"listVersion": 3, "updateType": "Full", "localAuthorizationList": entries(BIG)}


def test_pack_and_unpack_keep_the_value() -> None:
    value = {"a": [{"b": i, "c": [1, 2]} for i in range(1000)], "d": [[1] * 300, "x"], "e": None}
    packed = offload.pack(value)
    assert isinstance(packed["a"], offload.Chunked)
    assert len(packed["a"].pieces) == -(-1000 // offload.CHUNK_ITEMS)
    assert isinstance(packed["d"][0], offload.Chunked)
    assert offload.unpack(packed) == value


async def test_a_big_frame_does_not_wait_for_the_worker_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first big frame starts the worker and is parsed in a thread meanwhile: "spawn"
    takes a second here and more on a Pi, and the receive loop (a Heartbeat answer, the
    Reset after a nesting bomb) must not wait that long."""
    workers = offload.Workers()
    monkeypatch.setattr(protocol, "FRAME_WORKERS", workers)
    in_threads: list[object] = []
    to_thread = asyncio.to_thread

    async def spy(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        in_threads.append(fn)
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(offload.asyncio, "to_thread", spy)
    try:
        charge_point, wire = cp()
        await charge_point.route_message(frame(frame_payload_ok()))
        assert wire.sent == [[3, "u-1", {"status": "Accepted"}]]
        assert protocol.prepare_frame in in_threads, "parsed here while the worker starts"
        assert workers.started
        assert await workers.warm_up()  # and the worker is up for the next one
    finally:
        await workers.aclose()
    assert not workers.ready
