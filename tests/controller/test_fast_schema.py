"""The jsonschema-rs fast path never accepts what evsed's jsonschema check refuses: it may
only say "valid", so the OCPP-J 1.6 CALLERROR codes cannot depend on whether it is
installed. Checked on the malformed-frame table and on payloads mutated by hypothesis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evsed.controller.ocpp16 import protocol
from evsed.controller.ocpp16.protocol import KNOWN_ACTIONS, CallErrorReply
from tests.support.malformed_frames import MALFORMED_FRAMES

pytest.importorskip("jsonschema_rs")


def slow_code(action: str, payload: Any) -> str | None:
    """What jsonschema alone answers: None (valid) or the 1.6 code."""
    saved = protocol._jsonschema_rs
    protocol._jsonschema_rs = None
    try:
        protocol.validate_payload(action, payload)
    except CallErrorReply as e:
        return str(e.code)
    finally:
        protocol._jsonschema_rs = saved
    return None


def fast_says_valid(action: str, payload: Any) -> bool:
    return protocol._fast_valid(action, payload)


def test_the_fast_path_is_used() -> None:
    payload = {"connectorId": 1, "type": "Inoperative"}
    assert fast_says_valid("ChangeAvailability", payload)
    assert not fast_says_valid("ChangeAvailability", {**payload, "type": "Sometimes"})


def _table_payloads() -> list[tuple[str, Any]]:
    out = []
    for frame in MALFORMED_FRAMES:
        try:
            parsed = json.loads(frame.text)
        except (ValueError, RecursionError):
            continue
        if (
            isinstance(parsed, list)
            and len(parsed) == 4
            and parsed[2] in KNOWN_ACTIONS
            and isinstance(parsed[3], dict)
        ):
            out.append((parsed[2], parsed[3]))
    return out


@pytest.mark.parametrize(("action", "payload"), _table_payloads())
def test_the_fast_path_agrees_on_the_malformed_table(action: str, payload: Any) -> None:
    if fast_says_valid(action, payload):
        assert slow_code(action, payload) is None


BASES: dict[str, dict[str, Any]] = {
    "ChangeAvailability": {"connectorId": 1, "type": "Operative"},
    "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "60"},
    "GetConfiguration": {"key": ["HeartbeatInterval"]},
    "ReserveNow": {
        "connectorId": 1,
        "expiryDate": "2026-01-01T12:00:00Z",
        "idTag": "AABBCCDD",
        "reservationId": 7,
    },
    "SendLocalList": {
        "listVersion": 3,
        "updateType": "Differential",
        "localAuthorizationList": [
            {
                "idTag": "AABBCCDD",
                "idTagInfo": {"status": "Accepted", "expiryDate": "2027-01-01T00:00:00Z"},
            }
        ],
    },
    "TriggerMessage": {"requestedMessage": "MeterValues", "connectorId": 1},
    "StatusNotification": {
        "connectorId": 0,
        "errorCode": "NoError",
        "status": "Available",
        "timestamp": "2026-01-01T00:00:00Z",
    },
    "DataTransfer": {"vendorId": "evsed", "messageId": "m", "data": "x"},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60)
    | st.sampled_from(
        ["2026-02-30T00:00:00Z", "2026-01-01T23:59:60Z", "2026-01-01 00:00:00", "Accepted", ""]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return copy


@settings(max_examples=400, deadline=None)
@given(
    action=st.sampled_from(sorted(BASES)),
    pick=st.integers(min_value=0, max_value=100),
    new=json_values,
    drop=st.booleans(),
)
def test_the_fast_path_never_accepts_what_jsonschema_refuses(
    action: str, pick: int, new: Any, drop: bool
) -> None:
    base = BASES[action]
    paths = _paths(base)[1:]
    path = paths[pick % len(paths)]
    payload = _replace(base, path, new)
    if drop and len(path) == 1:
        payload.pop(path[0], None)
    if fast_says_valid(action, payload):
        assert slow_code(action, payload) is None, payload
