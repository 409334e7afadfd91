"""OCPP-J 1.6 strictness on top of the `ocpp` library's ChargePoint.

The library (ocpp 2.1.0) carries message types, schemas and call/result correlation, but
its answers to bad input drift from OCPP-J 1.6 §4.2.3 (REFERENCE §5.3): NotImplemented and
NotSupported are swapped, schema failures use the 2.0.1 spelling FormatViolation, and frames
it cannot unpack are dropped even when the CALL's id is readable. `StrictChargePoint` replaces
the two receive-side methods (`route_message`, `_handle_call`) and keeps everything else
(`start()`, `call()`, the `@on`/`@after` route map, camelCase<->snake_case translation).

How each kind of bad input is answered (the decisions, with the spec text behind them):

| incoming frame                                         | answer                         |
| ------------------------------------------------------ | ------------------------------ |
| binary frame, invalid JSON (incl. NaN, nesting bomb),  | ignored, logged: no id can be  |
| not an array, empty array, MessageTypeId not 2/3/4,     | read, and OCPP-J §4.1.3 says   |
| CALL whose uniqueId is absent or not a string          | unknown type numbers are ignored|
| CALL with fewer than 4 elements                        | ProtocolError ("incomplete")   |
| CALL with more than 4 elements, Action not a string,   | FormationViolation (not the    |
| payload not an object, uniqueId empty or > 36 chars,   | PDU structure); the id is      |
| frame larger than `max_frame_bytes`                    | echoed as received             |
| Action not an OCPP 1.6 action                          | NotImplemented ("not known")   |
| 1.6 action this CP does not handle / does not support  | NotSupported ("recognized but  |
|                                                        | not supported")                |
| schema: property not in the schema                     | FormationViolation             |
| schema: required property missing, too few/many items  | OccurenceConstraintViolation   |
| schema: wrong JSON type, string longer than its        | TypeConstraintViolation        |
|   CiStringNType, dateTime that is not a date-time      |                                |
| schema: value not in the enum, not a multiple of 0.1   | PropertyConstraintViolation    |
| handler raised (traceback logged), handler returned a  | InternalError; session goes on |
|   payload that fails the response schema               |                                |

Why "missing required" is OccurenceConstraintViolation and not ProtocolError: the 1.6 spec
gives every field a cardinality (1..1, 0..1, 0..*), and a required field that is absent
occurs 0 times where 1 is due. ProtocolError ("payload for Action is incomplete") is kept for
the frame-level case where the payload element itself is missing. Why maxLength stays a
TypeConstraintViolation: in 1.6 the length is part of the data type (CiString20Type, §7), so
a 21-character idTag violates a data type constraint; dateTime likewise is a type. Enum
membership and multipleOf are constraints on the value of a well-typed field, hence
PropertyConstraintViolation. When a payload breaks several rules, the most structural one
is reported: Formation > Occurence > Type > Property.

Oversize frames: the websocket must be opened with `max_size=max_frame_bytes` (see
`websocket_options()`), so websockets refuses a bigger message before buffering it and
closes the connection with 1009. `route_message` checks the bound again without parsing
the frame, for links that do not enforce it (an in-memory link, a larger transport limit).

Outgoing CALLERRORs always carry a string description ("" when empty, never null) and an
object as details ({} when empty), with 1.6 spellings even when a handler raised a 2.0.1
exception class (FormatViolationError is sent as FormationViolation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import ocpp.v16
from jsonschema import Draft4Validator, FormatChecker, validators
from jsonschema._keywords import multipleOf as _schema_multiple_of
from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.messages import CallError, CallResult, MessageType
from ocpp.routing import create_route_map
from ocpp.v16.enums import Action

from evsed.controller.ocpp16 import offload

try:  # the optional accelerator, evsed[fast]
    import jsonschema_rs as _jsonschema_rs
except ImportError:  # pragma: no cover - depends on the installation
    _jsonschema_rs = None

LOGGER = logging.getLogger(__name__)


class FrameLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger given to the `ocpp` library, which logs every frame it sends and receives
    at INFO: those lines go to DEBUG (a journal at INFO would get ~10 MB a day of frames,
    card ids included); its warnings and errors stay what they are."""

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        self.debug(msg, *args, **kwargs)  # type: ignore[arg-type]

    def addFilter(self, filter: logging.Filter) -> None:
        self.logger.addFilter(filter)


FRAME_LOGGER = FrameLogger(LOGGER, {})

SUBPROTOCOL = "ocpp1.6"
DEFAULT_MAX_FRAME_BYTES = 2 * 1024 * 1024  # a 10,000-entry SendLocalList is ~1.4 MiB
#: Frames longer than this (characters) are parsed and schema-checked in a worker process.
OFFLOAD_FRAME_BYTES = 16 * 1024
#: How long the receive loop waits for an answer to be applied by its caller before it reads
#: the next frame (it is applied in the next loop turns; the bound only guards a lost caller).
ANSWER_APPLY_S = 2.0
MAX_UNIQUE_ID_CHARS = 36
#: Every action name OCPP 1.6 (with the security extension) defines, in either direction.
KNOWN_ACTIONS: frozenset[str] = frozenset(a.value for a in Action)
_DESCRIPTION_MAX_CHARS = 255


class ErrorCode(StrEnum):
    """CALLERROR codes with their official OCPP-J 1.6 spellings (errata: typos kept)."""

    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL_ERROR = "InternalError"
    PROTOCOL_ERROR = "ProtocolError"
    SECURITY_ERROR = "SecurityError"
    FORMATION_VIOLATION = "FormationViolation"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    GENERIC_ERROR = "GenericError"


# Codes that other OCPP versions (and the library's 2.0.1-style exceptions) use for the same idea.
_SPELLING_1_6 = {
    "FormatViolation": ErrorCode.FORMATION_VIOLATION,
    "OccurrenceConstraintViolation": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
}


def to_1_6_code(code: str) -> ErrorCode:
    """Map any error code to its 1.6 spelling; codes 1.6 does not define become GenericError."""
    if code in _SPELLING_1_6:
        return _SPELLING_1_6[code]
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.GENERIC_ERROR


class CallErrorReply(Exception):
    """Raised inside the receive path to answer a CALL with this CALLERROR."""

    def __init__(
        self, code: ErrorCode, description: str = "", details: dict[str, Any] | None = None
    ):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by the frame worker process: rebuilt from its fields, not from str(self).
        return (type(self), (self.code, self.description, self.details))


def call_error_frame(
    unique_id: Any, code: str, description: str | None = "", details: Any = None
) -> str:
    """A CALLERROR frame as OCPP-J 1.6 wants it: string description, object details."""
    text = description if isinstance(description, str) else ""
    return json.dumps(
        [
            MessageType.CallError,
            unique_id,
            str(to_1_6_code(code)),
            text[:_DESCRIPTION_MAX_CHARS],
            details if isinstance(details, dict) else {},
        ],
        separators=(",", ":"),
        default=_json_default,
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def websocket_options(max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict[str, Any]:
    """Keyword arguments for `websockets.asyncio.client.connect` that the session must use.

    `max_size` makes websockets refuse (close 1009) a message above the bound before it
    is buffered, which is the only protection against memory exhaustion; the check in
    `StrictChargePoint.route_message` is a second line. After connecting, the session must
    also check `ws.subprotocol == SUBPROTOCOL` (a server may pick none).
    """
    return {"subprotocols": [SUBPROTOCOL], "max_size": max_frame_bytes}


# ---------------------------------------------------------------- schema validation

_SCHEMA_DIR = Path(ocpp.v16.__file__).parent / "schemas"
# The library parses these with Decimal so that `multipleOf: 0.1` holds for 21.4 (ocpp/messages.py).
_DECIMAL_SCHEMAS = {"SetChargingProfile", "RemoteStartTransaction", "GetCompositeScheduleResponse"}
_DATE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?$", re.IGNORECASE
)
_validators: dict[str, Any] = {}
_fast_validators: dict[str, Any] = {}

# Most structural first: the code reported when a payload breaks several rules.
_KEYWORD_CODES: dict[str, ErrorCode] = {
    "additionalProperties": ErrorCode.FORMATION_VIOLATION,
    "required": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "minLength": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "pattern": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
}
_PRIORITY = [
    ErrorCode.FORMATION_VIOLATION,
    ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
]
_MAX_ERRORS_EXAMINED = 50


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the "type" keyword reports non-strings
    match = _DATE_TIME.match(value)
    if match is None:
        return False
    try:
        datetime.fromisoformat(match.group(1))  # rejects month 13, day 32, hour 25...
    except ValueError:
        return False
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_date_time)


def _decimal_multiple_of(
    validator: Any, d_b: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[SchemaError]:
    """multipleOf as the library checks it (ocpp/messages.py): on the number as written in
    JSON, read as a Decimal, so that 21.4 is a multiple of 0.1 (as a float it is not). The
    float's repr is what JSON would carry; this is what the former json.dumps/json.loads
    round trip of the whole payload produced, for this one keyword only."""
    if isinstance(instance, float) and math.isfinite(instance):
        instance = Decimal(repr(instance))
    elif isinstance(instance, Decimal) and instance.is_finite():
        instance = Decimal(repr(float(instance)))  # a handler's Decimal went out as a float
    yield from _schema_multiple_of(validator, d_b, instance, schema)


_DecimalValidator = validators.extend(Draft4Validator, {"multipleOf": _decimal_multiple_of})


def _validator(schema_name: str) -> Any:
    validator = _validators.get(schema_name)
    if validator is None:
        text = (_SCHEMA_DIR / f"{schema_name}.json").read_text(encoding="utf-8-sig")
        if schema_name in _DECIMAL_SCHEMAS:
            schema = json.loads(text, parse_float=Decimal)
            validator = _DecimalValidator(schema, format_checker=_FORMATS)
        else:
            validator = Draft4Validator(json.loads(text), format_checker=_FORMATS)
        _validators[schema_name] = validator
    return validator


def _fast_valid(schema_name: str, payload: dict[str, Any]) -> bool:
    """True when jsonschema-rs (the optional ``evsed[fast]``) is installed and finds the
    payload valid: 1.4 ms instead of 430 ms for 10,000 local-list entries. It only ever
    says "valid"; an invalid payload goes through jsonschema below, which picks the 1.6
    code, so the CALLERROR mapping is the same with or without it. The date-time format is
    evsed's own checker; schemas read with Decimal (multipleOf 0.1) stay with jsonschema."""
    if _jsonschema_rs is None or schema_name in _DECIMAL_SCHEMAS:
        return False
    fast = _fast_validators.get(schema_name)
    if fast is None:
        fast = _jsonschema_rs.Draft4Validator(
            _validator(schema_name).schema,
            validate_formats=True,
            formats={"date-time": _is_date_time},
        )
        _fast_validators[schema_name] = fast
    try:
        return bool(fast.is_valid(payload))
    except Exception:  # a value it cannot take (not JSON data): jsonschema decides
        return False


def validate_payload(action: str, payload: dict[str, Any], *, response: bool = False) -> None:
    """Check a 1.6 request (or `response`) payload; raise CallErrorReply with the 1.6 code."""
    schema_name = action + ("Response" if response else "")
    if _fast_valid(schema_name, payload):
        return
    validator = _validator(schema_name)
    worst: tuple[int, SchemaError] | None = None
    for count, error in enumerate(validator.iter_errors(payload)):
        code = _KEYWORD_CODES.get(str(error.validator), ErrorCode.FORMATION_VIOLATION)
        rank = _PRIORITY.index(code)
        if worst is None or rank < worst[0]:
            worst = (rank, error)
        if rank == 0 or count >= _MAX_ERRORS_EXAMINED:
            break
    if worst is not None:
        rank, error = worst
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise CallErrorReply(_PRIORITY[rank], f"{where}: {error.message}"[:_DESCRIPTION_MAX_CHARS])


@functools.lru_cache(maxsize=4096)
def _snake_key(key: str) -> str:
    # The library's own rule, once per distinct name: it runs two regular expressions per
    # key, which made 10,000 local-list entries cost 600 ms.
    (snake,) = camel_to_snake_case({key: None})
    return str(snake)


def to_snake_case(data: Any) -> Any:
    """`ocpp.charge_point.camel_to_snake_case` with each key name converted once."""
    if isinstance(data, dict):
        return {_snake_key(k): to_snake_case(v) for k, v in data.items()}
    if isinstance(data, list):
        return [to_snake_case(v) for v in data]
    return data


def _checked_snake(action: str, payload: dict[str, Any], validate: bool) -> dict[str, Any]:
    """The request payload validated (CallErrorReply with the 1.6 code) and in snake_case."""
    if validate:
        validate_payload(action, payload)
    result: dict[str, Any] = to_snake_case(payload)
    return result


# ---------------------------------------------------------------- the charge point

_CALL_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_frame(raw_msg: str | bytes) -> tuple[list[Any] | None, str | None]:
    """Parse a frame: (frame, None), or (None, why it is ignored) when nothing can be answered."""
    if not isinstance(raw_msg, str):
        return None, "binary frame ignored (OCPP-J uses text frames)"
    try:
        frame = json.loads(raw_msg, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        return None, f"frame is not JSON, ignored: {e}"
    if not isinstance(frame, list) or not frame:
        return None, "frame is not a non-empty array, ignored"
    type_id = frame[0]
    if type(type_id) is not int or type_id not in (2, 3, 4):
        # OCPP-J 1.6 §4.1.3: an unknown Message Type Number is ignored.
        return None, f"unknown MessageTypeId {type_id!r}, ignored"
    if len(frame) < 2 or not isinstance(frame[1], str):
        return None, "frame without a readable uniqueId, ignored"
    return frame, None


def check_call_frame(frame: list[Any]) -> dict[str, Any]:
    """The payload of a CALL [2, uniqueId, Action, {payload}]; CallErrorReply otherwise."""
    unique_id = frame[1]
    if not 0 < len(unique_id) <= MAX_UNIQUE_ID_CHARS:
        raise CallErrorReply(
            ErrorCode.FORMATION_VIOLATION,
            f"uniqueId must be 1..{MAX_UNIQUE_ID_CHARS} characters",
        )
    if len(frame) < 4:
        raise CallErrorReply(
            ErrorCode.PROTOCOL_ERROR, "CALL incomplete: [2, uniqueId, Action, payload]"
        )
    if len(frame) > 4:
        raise CallErrorReply(ErrorCode.FORMATION_VIOLATION, "CALL has more than 4 elements")
    if not isinstance(frame[2], str):
        raise CallErrorReply(ErrorCode.FORMATION_VIOLATION, "Action must be a string")
    if not isinstance(frame[3], dict):
        raise CallErrorReply(ErrorCode.FORMATION_VIOLATION, "payload must be a JSON object")
    return frame[3]


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """A big frame as the worker process leaves it (`prepare_frame`).

    `frame` is None when it is ignored (`warning` says why). A CALL comes as
    [2, uniqueId, Action, payload in snake_case], or as its first three elements with
    `error` when it is not a well-formed CALL. `check` is the verdict of the request
    schema on the payload: None when valid, else what `validate_payload` raised; the charge
    point uses it only where it would have validated (a supported action that validates),
    so the answers are those of a small frame, in the same order of checks."""

    frame: list[Any] | None
    warning: str | None = None
    error: CallErrorReply | None = None
    check: BaseException | None = None


def prepare_frame(raw_msg: str | bytes) -> PreparedFrame:
    """Everything a big frame needs before its handler that does not need the charge
    point: parse, CALL structure, request schema, snake_case. Runs in the frame worker
    process (offload.Workers); the frame is `offload.pack`ed for the way back."""
    frame, warning = decode_frame(raw_msg)
    if frame is None or frame[0] != MessageType.Call:
        return PreparedFrame(offload.pack(frame), warning)
    try:
        payload = check_call_frame(frame)
    except CallErrorReply as e:
        return PreparedFrame(frame[:3], error=e)
    action: str = frame[2]
    check: BaseException | None = None
    if action in KNOWN_ACTIONS:  # never a file name made of what the CS sent
        try:
            validate_payload(action, payload)
        except CallErrorReply as e:
            check = e
        except Exception as e:  # a handler-less surprise: InternalError, as in the loop
            check = RuntimeError(f"schema check failed: {e!r}")
    else:
        check = LookupError(f"no OCPP 1.6 schema for {action!r}")
    head, snake = frame[:3], to_snake_case(payload)
    del frame, payload  # one copy less at the worker's peak (RSS on a Pi)
    return PreparedFrame(offload.pack([*head, snake]), check=check)


def _unpacked(prepared: PreparedFrame) -> PreparedFrame:
    return dataclasses.replace(prepared, frame=offload.unpack(prepared.frame))


#: The worker process for big frames, shared by every charge point of the process.
FRAME_WORKERS = offload.Workers()


#: The @on handlers marked by `answered_in_background` (module and qualified name).
_IN_BACKGROUND: set[str] = set()


def _name(handler: Callable[..., Any]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


def answered_in_background(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an @on handler that waits (bounded) for the hardware before it can answer
    (UnlockConnector: the soft stop, then the lock's travel). It is answered from a task
    of its own, so that the receive loop reads on meanwhile: the CS's other CALLs, and its
    answers to ours (a StopTransaction.conf, a Heartbeat's). Its @after hook still runs once
    its answer is sent. Put it under `@on`."""
    _IN_BACKGROUND.add(_name(handler))
    return handler


class StrictChargePoint(ocpp.v16.ChargePoint):
    """`ocpp.v16.ChargePoint` whose answers to bad CS->CP frames follow OCPP-J 1.6 exactly.

    Subclass it and register handlers with `ocpp.routing.on` / `after` as usual, on the
    subclass or on handler objects given to `add_handlers` (one per feature profile). An
    action is supported when it has an `@on` handler and, if `supported_actions` is not
    None, is listed there too (so a profile can be switched off without removing its
    handlers). An action outside `known_actions` is NotImplemented. Override
    `is_supported(action)` for anything dynamic.

    `route_message` never raises for bad input; it raises only when sending the answer
    fails (the link is gone), which ends `start()` as a dropped link does anyway.
    """

    #: The bound used by `route_message`; pass the same value to `websocket_options()`.
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: Frames longer than this are parsed and validated in the frame worker process.
    offload_frame_bytes: int = OFFLOAD_FRAME_BYTES
    #: None: every action with an @on handler is supported.
    supported_actions: frozenset[str] | None = None
    #: Actions answered NotSupported rather than NotImplemented when not supported.
    known_actions: frozenset[str] = KNOWN_ACTIONS

    def __init__(
        self,
        id: str,
        connection: Any,
        response_timeout: float = 30,
        logger: logging.Logger = LOGGER,
        *,
        max_frame_bytes: int | None = None,
    ) -> None:
        frames = FRAME_LOGGER if logger is LOGGER else FrameLogger(logger, {})
        super().__init__(id, connection, response_timeout=response_timeout, logger=frames)
        if max_frame_bytes is not None:
            self.max_frame_bytes = max_frame_bytes
        # @after hooks and other fire-and-forget work; kept so they are not garbage
        # collected mid-flight and can be cancelled when the session ends.
        self._background: set[asyncio.Task[Any]] = set()
        self._expected_answer: str | None = None
        self._answer_taken = asyncio.Event()

    def add_handlers(self, handler: object) -> None:
        """Route the `@on`/`@after` methods of `handler` (a profile's handler object) too.

        The library's own route map building is used (`create_route_map`), so the routing
        by method name is the library's; an action routed twice is a programming error."""
        for action, routes in create_route_map(handler).items():
            if action in self.route_map:
                raise ValueError(f"{action} is routed twice ({handler!r})")
            self.route_map[action] = routes

    def is_supported(self, action: str) -> bool:
        if "_on_action" not in self.route_map.get(action, {}):
            return False
        return self.supported_actions is None or action in self.supported_actions

    def expect_answer(self, unique_id: str) -> None:
        """A CALL `unique_id` goes out: its answer holds the receive loop until `answer_taken`."""
        self._expected_answer = unique_id
        self._answer_taken.clear()

    def answer_taken(self) -> None:
        """The caller has the answer (or gave up): the receive loop reads on. Called in the
        caller's own task, so what it does with the answer before its next await (a
        StartTransaction's transactionId stored) happens before the next frame is routed."""
        self._expected_answer = None
        self._answer_taken.set()

    def cancel_background_tasks(self) -> None:
        for task in list(self._background):
            task.cancel()

    # ------------------------------------------------------------ receive path

    async def start(self) -> None:
        """The library's receive loop, except that a big frame is not logged whole: at INFO
        that was a megabyte per line, redacted by regular expressions on the loop."""
        while True:
            message = await self._connection.recv()
            if len(message) > self.offload_frame_bytes:
                self.logger.info("%s: receive message of %d characters", self.id, len(message))
            else:
                self.logger.info("%s: receive message %s", self.id, message)
            await self.route_message(message)

    async def route_message(self, raw_msg: str | bytes) -> None:
        if self._too_big(raw_msg):
            reply = self._oversize_reply(raw_msg)
            if reply is not None:
                await self._send(reply)
            return
        # A big frame is parsed, structure- and schema-checked and converted in the frame
        # worker process: json.loads of a 1.4 MiB SendLocalList holds the GIL for tens of
        # milliseconds, in a worker thread too, and the safety core's thread would wait
        # that long. Same functions, same answers, only the process differs.
        prepared: PreparedFrame | None = None
        if len(raw_msg) > self.offload_frame_bytes:
            prepared = await self._prepare_elsewhere(raw_msg)
            if prepared.warning is not None:
                self.logger.warning("%s: %s", self.id, prepared.warning)
            frame = prepared.frame
        else:
            frame = self._decode(raw_msg)
        if frame is None:
            return
        if frame[0] != MessageType.Call:
            if self._deliver_response(frame) and frame[1] == self._expected_answer:
                # A CS may answer StartTransaction and send RemoteStopTransaction for it in
                # one breath: the stop must find the transactionId already stored.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ANSWER_APPLY_S):
                        await self._answer_taken.wait()
            return
        if self._in_background(frame):
            self._spawn(self._answer_and_send(frame, prepared))
            return
        await self._answer_and_send(frame, prepared)

    async def _prepare_elsewhere(self, raw_msg: str | bytes) -> PreparedFrame:
        packed = await FRAME_WORKERS.run(prepare_frame, raw_msg)
        # Rebuilt piece by piece in a thread: the loop and the core go on between pieces.
        return await asyncio.to_thread(_unpacked, packed)

    def _in_background(self, frame: list[Any]) -> bool:
        action = frame[2] if len(frame) > 2 else None
        if not isinstance(action, str) or not self.is_supported(action):
            return False
        return _name(self.route_map[action]["_on_action"]) in _IN_BACKGROUND

    async def _answer_and_send(self, frame: list[Any], prepared: PreparedFrame | None) -> None:
        reply, after = await self._answer_call(frame, prepared=prepared)
        await self._send(reply)
        if after is not None:
            # Runs once the CALLRESULT is sent, as a task, so that it may await self.call().
            self._spawn(after)

    def _too_big(self, raw_msg: str | bytes) -> bool:
        size = len(raw_msg)
        if isinstance(raw_msg, str) and size * 4 > self.max_frame_bytes:
            # Encode only when the character count cannot settle it.
            size = len(raw_msg.encode("utf-8", "surrogatepass"))
        if size > self.max_frame_bytes:
            self.logger.warning(
                "%s: frame of %d bytes exceeds %d, refused", self.id, size, self.max_frame_bytes
            )
            return True
        return False

    def _oversize_reply(self, raw_msg: str | bytes) -> str | None:
        """A CALLERROR when the frame's start shows a CALL id; the frame is never parsed."""
        if not isinstance(raw_msg, str):
            return None
        match = _CALL_ID_PREFIX.match(raw_msg[:128])
        if match is None:
            return None
        return call_error_frame(
            match.group(1),
            ErrorCode.FORMATION_VIOLATION,
            f"frame exceeds the limit of {self.max_frame_bytes} bytes",
        )

    def _decode(self, raw_msg: str | bytes) -> list[Any] | None:
        """Parse a frame; None (after logging) when there is nothing to answer."""
        frame, warning = decode_frame(raw_msg)
        if warning is not None:
            self.logger.warning("%s: %s", self.id, warning)
        return frame

    async def _answer_call(
        self, frame: list[Any], *, prepared: PreparedFrame | None = None
    ) -> tuple[str, Coroutine[Any, Any, None] | None]:
        unique_id: str = frame[1]
        action = frame[2] if len(frame) > 2 else None
        try:
            if prepared is None:
                payload = self._check_call_frame(frame)
            elif prepared.error is not None:
                raise prepared.error
            else:
                payload = frame[3]  # in snake_case already
            return await self._dispatch(unique_id, frame[2], payload, prepared=prepared)
        except CallErrorReply as e:
            self.logger.warning(
                "%s: CALL %s %r answered %s: %s", self.id, unique_id, action, e.code, e.description
            )
            return call_error_frame(unique_id, e.code, e.description, e.details), None
        except OCPPError as e:
            # The handler chose the code: keep it, in 1.6 spelling.
            self.logger.warning("%s: handler for %r raised %r", self.id, action, e)
            return call_error_frame(unique_id, e.code, e.description, e.details), None
        except Exception:
            self.logger.exception("%s: handler for %r failed", self.id, action)
            return call_error_frame(unique_id, ErrorCode.INTERNAL_ERROR, "handler failed"), None

    @staticmethod
    def _check_call_frame(frame: list[Any]) -> dict[str, Any]:
        return check_call_frame(frame)

    async def _dispatch(
        self,
        unique_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        prepared: PreparedFrame | None = None,
    ) -> tuple[str, Coroutine[Any, Any, None] | None]:
        if action not in self.known_actions:
            raise CallErrorReply(ErrorCode.NOT_IMPLEMENTED, f"unknown Action {action!r}")
        if not self.is_supported(action):
            raise CallErrorReply(ErrorCode.NOT_SUPPORTED, f"{action} is not supported")
        handlers = self.route_map[action]
        validate = not handlers.get("_skip_schema_validation", False)
        if prepared is not None:
            # Checked and converted in the frame worker process.
            if validate and prepared.check is not None:
                raise prepared.check
            snake_payload = payload
        else:
            # In the loop for a small frame: a hop elsewhere costs more than checking it.
            snake_payload = _checked_snake(action, payload, validate)
        response = await self._invoke(handlers["_on_action"], snake_payload, unique_id)
        result = snake_to_camel_case(remove_nones(serialize_as_dict(response)))
        if validate:
            try:
                validate_payload(action, result, response=True)
            except CallErrorReply as e:
                self.logger.error(
                    "%s: %s handler returned an invalid payload: %s", self.id, action, e
                )
                raise CallErrorReply(ErrorCode.INTERNAL_ERROR, "invalid response built") from e
        reply = CallResult(unique_id, result, action).to_json()
        after = handlers.get("_after_action")
        hook = None if after is None else self._run_after(after, snake_payload, unique_id)
        return reply, hook

    async def _invoke(
        self, handler: Callable[..., Any], kwargs: dict[str, Any], unique_id: str
    ) -> Any:
        if "call_unique_id" in inspect.signature(handler).parameters:
            kwargs = {**kwargs, "call_unique_id": unique_id}
        result = handler(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run_after(
        self, after: Callable[..., Any], kwargs: dict[str, Any], unique_id: str
    ) -> None:
        try:
            await self._invoke(after, kwargs, unique_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.exception("%s: @after hook for %s failed", self.id, unique_id)

    def _deliver_response(self, frame: list[Any]) -> bool:
        """Hand an answer to the waiting call(); False when it was dropped."""
        if not self._call_lock.locked():
            # No CALL of ours is outstanding: a late or stray answer. Dropping it here
            # keeps it out of the library's queue, where the next call() would trip on it.
            self.logger.warning("%s: unexpected response %s dropped", self.id, frame[1])
            return False
        if frame[0] == MessageType.CallResult:
            if len(frame) != 3 or not isinstance(frame[2], dict):
                self.logger.warning("%s: malformed CALLRESULT %s dropped", self.id, frame[1])
                return False
            self._response_queue.put_nowait(CallResult(frame[1], frame[2]))
            return True
        code = frame[2] if len(frame) > 2 and isinstance(frame[2], str) else "GenericError"
        description = frame[3] if len(frame) > 3 and isinstance(frame[3], str) else ""
        details = frame[4] if len(frame) > 4 and isinstance(frame[4], dict) else {}
        if code not in _known_library_codes():
            # call(suppress=False) would raise UnknownCallErrorCodeError, not an OCPPError.
            details = {**details, "errorCode": code}
            code = ErrorCode.GENERIC_ERROR
        self._response_queue.put_nowait(CallError(frame[1], code, description, details))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _handle_call(self, msg: Any) -> None:
        """Not used: `route_message` owns the receive path (kept so nothing calls the base)."""
        raise RuntimeError("StrictChargePoint routes CALLs in route_message")


def _known_library_codes() -> set[str]:
    # The same lookup CallError.to_exception() does: direct subclasses of OCPPError.
    return {cls.code for cls in OCPPError.__subclasses__()}
