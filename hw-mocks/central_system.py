"""An embedded OCPP 1.6J Central System for the bench, tests and the demo.

Built on the `ocpp` library's own peer class, used from the CS side, behind a websockets
server on loopback. It answers the CP->CS messages of the Core and Firmware profiles with
configurable outcomes, records every frame in both directions (so tests can assert order),
sends any CS->CP command or raw text, and can misbehave on purpose: go offline, drop a
link, answer late or never, override an answer with any payload, demand HTTP Basic auth.

    async with CentralSystem(tags={"AABBCCDD": "Accepted"}) as cs:
        ...connect a charge point to f"{cs.url}/CP_1" with subprotocol ocpp1.6...
        await cs.wait_connected("CP_1")
        boot = await cs.wait_for_call("BootNotification")
        result = await cs.call("CP_1", call.Reset(type="Hard"))   # result.status

Waiting never sleeps: `wait_for` scans the recording, then resolves a future on the
first new frame that matches. The table of bad CS->CP frames that tests replay with
`send_raw` lives with the tests (`tests/support/malformed_frames.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import errno
import hmac
import itertools
import json
import logging
import ssl
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import unquote

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action, AuthorizationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

LOGGER = logging.getLogger(__name__)
SUBPROTOCOL = "ocpp1.6"
T = TypeVar("T")


class Direction(StrEnum):
    CP_TO_CS = "cp->cs"
    CS_TO_CP = "cs->cp"


@dataclass(frozen=True, slots=True)
class Frame:
    """One websocket message as it crossed the wire, parsed as far as it parses."""

    seq: int
    cp_id: str
    direction: Direction
    monotonic: float
    raw: str
    message_type: int | None = None  # 2 CALL, 3 CALLRESULT, 4 CALLERROR; None if unparsable
    unique_id: str | None = None
    action: str | None = None  # for results and errors: the action of the CALL they answer
    payload: Any = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None

    @property
    def is_call(self) -> bool:
        return self.message_type == 2

    @property
    def is_result(self) -> bool:
        return self.message_type == 3

    @property
    def is_error(self) -> bool:
        return self.message_type == 4


@dataclass(frozen=True, slots=True)
class TagInfo:
    """What the CS says about an idTag (OCPP 1.6 IdTagInfo)."""

    status: str = "Accepted"
    parent_id_tag: str | None = None
    expiry_date: str | None = None  # ISO 8601, sent as given

    def as_id_tag_info(self) -> dict[str, str]:
        info = {"status": self.status}
        if self.parent_id_tag is not None:
            info["parent_id_tag"] = self.parent_id_tag
        if self.expiry_date is not None:
            info["expiry_date"] = self.expiry_date
        return info


@dataclass(slots=True)
class Transaction:
    transaction_id: int
    cp_id: str
    connector_id: int
    id_tag: str
    meter_start: int
    start_timestamp: str
    meter_stop: int | None = None
    stop_timestamp: str | None = None
    stop_reason: str | None = None
    stop_id_tag: str | None = None

    @property
    def stopped(self) -> bool:
        return self.meter_stop is not None


@dataclass(frozen=True, slots=True)
class Handshake:
    """One opening handshake, accepted or not (security profile tests look here)."""

    cp_id: str
    path: str
    authorization: str | None
    status: int  # 101 when accepted


#: A reply override gets the CALL payload (camelCase) and returns the CALLRESULT payload
#: (sent as is, unvalidated) or None for no reply.
Override = Callable[
    [str, dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any] | None] | None"
]


class _RecordingConnection:
    """Wraps the server connection so that every frame is recorded as it passes."""

    def __init__(self, ws: ServerConnection, cs: CentralSystem, cp_id: str) -> None:
        self.ws = ws
        self._cs = cs
        self._cp_id = cp_id

    async def recv(self) -> str:
        message = await self.ws.recv()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self._cs._record(self._cp_id, Direction.CP_TO_CS, text)
        return text

    async def send(self, message: str) -> None:
        # Recorded before the await: the CP's answer can never be recorded ahead of it.
        self._cs._record(self._cp_id, Direction.CS_TO_CP, message)
        await self.ws.send(message)


class _CentralSystemPeer(ChargePoint):
    """The library's peer class, used from the CS side; answers follow `CentralSystem` settings."""

    def __init__(self, cp_id: str, connection: _RecordingConnection, cs: CentralSystem) -> None:
        # Timeouts are enforced by CentralSystem.call, which can also see the link drop.
        super().__init__(cp_id, connection, response_timeout=3600)
        self._cs = cs
        self.pending_id: str | None = None

    async def route_message(self, raw_msg: str) -> None:
        try:
            frame = json.loads(raw_msg)
        except ValueError:
            frame = None
        if not isinstance(frame, list) or len(frame) < 2:
            await super().route_message(raw_msg)
            return
        if frame[0] in (3, 4):
            # Answers to send_raw() CALLs are only recorded; queueing them would make the
            # next call() wade through them.
            if frame[1] == self.pending_id:
                await super().route_message(raw_msg)
            return
        if frame[0] == 2 and len(frame) == 4 and isinstance(frame[2], str):
            action, payload = frame[2], frame[3]
            if action in self._cs.silent_actions or "*" in self._cs.silent_actions:
                return
            delay = self._cs.reply_delays.get(action)
            if delay is not None:
                self._cs._spawn(self._reply_later(delay, raw_msg, frame))
                return
            if action in self._cs.overrides:
                await self._reply_override(frame[1], action, payload)
                return
        await super().route_message(raw_msg)

    async def _reply_later(
        self, delay: float | asyncio.Event, raw_msg: str, frame: list[Any]
    ) -> None:
        if isinstance(delay, asyncio.Event):
            await delay.wait()
        else:
            await asyncio.sleep(delay)  # a deliberately slow CS, not a test waiting
        if frame[2] in self._cs.overrides:
            await self._reply_override(frame[1], frame[2], frame[3])
        else:
            await super().route_message(raw_msg)

    async def _reply_override(self, unique_id: Any, action: str, payload: Any) -> None:
        result = self._cs.overrides[action](self.id, payload)
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result is not None:
            await self._send(json.dumps([3, unique_id, result], separators=(",", ":")))

    # ---- Core and Firmware Management CP->CS messages

    @on(Action.boot_notification)
    def _on_boot(self, **payload: Any) -> call_result.BootNotification:
        self._cs.boots.append((self.id, payload))
        return call_result.BootNotification(
            current_time=self._cs.now_iso(),
            interval=self._cs.heartbeat_interval,
            status=self._cs.boot_status,
        )

    @on(Action.heartbeat)
    def _on_heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=self._cs.now_iso())

    @on(Action.authorize)
    def _on_authorize(self, id_tag: str) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=self._cs.tag_info(id_tag).as_id_tag_info())

    @on(Action.start_transaction)
    def _on_start(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> call_result.StartTransaction:
        tx = Transaction(
            transaction_id=next(self._cs._transaction_ids),
            cp_id=self.id,
            connector_id=connector_id,
            id_tag=id_tag,
            meter_start=meter_start,
            start_timestamp=timestamp,
        )
        self._cs.transactions[tx.transaction_id] = tx
        return call_result.StartTransaction(
            transaction_id=tx.transaction_id,
            id_tag_info=self._cs.tag_info(id_tag).as_id_tag_info(),
        )

    @on(Action.stop_transaction)
    def _on_stop(
        self,
        meter_stop: int,
        timestamp: str,
        transaction_id: int,
        id_tag: str | None = None,
        reason: str | None = None,
        **_: Any,
    ) -> call_result.StopTransaction:
        tx = self._cs.transactions.get(transaction_id)
        if tx is not None:
            tx.meter_stop, tx.stop_timestamp = meter_stop, timestamp
            tx.stop_reason, tx.stop_id_tag = reason or "Local", id_tag
        else:
            LOGGER.warning(
                "%s: StopTransaction for unknown transaction %s", self.id, transaction_id
            )
        info = None if id_tag is None else self._cs.tag_info(id_tag).as_id_tag_info()
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.meter_values)
    def _on_meter_values(self, **payload: Any) -> call_result.MeterValues:
        self._cs.meter_values.append((self.id, payload))
        return call_result.MeterValues()

    @on(Action.status_notification)
    def _on_status(
        self, connector_id: int, status: str, error_code: str, **_: Any
    ) -> call_result.StatusNotification:
        self._cs.connector_status[(self.id, connector_id)] = (status, error_code)
        return call_result.StatusNotification()

    @on(Action.data_transfer)
    def _on_data_transfer(self, **payload: Any) -> call_result.DataTransfer:
        self._cs.data_transfers.append((self.id, payload))
        return call_result.DataTransfer(status=self._cs.data_transfer_status)

    @on(Action.diagnostics_status_notification)
    def _on_diagnostics_status(self, status: str) -> call_result.DiagnosticsStatusNotification:
        self._cs.diagnostics_status[self.id] = status
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def _on_firmware_status(self, status: str) -> call_result.FirmwareStatusNotification:
        self._cs.firmware_status[self.id] = status
        return call_result.FirmwareStatusNotification()


@dataclass(slots=True)
class _Session:
    cp_id: str
    ws: ServerConnection
    peer: _CentralSystemPeer
    closed: asyncio.Future[None]
    call_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class CentralSystem:
    """See the module docstring. All settings are plain attributes, changeable at any time."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tags: Mapping[str, str | TagInfo] | None = None,
        boot_status: str = "Accepted",
        heartbeat_interval: int = 300,
        passwords: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        response_timeout: float = 10.0,
        first_transaction_id: int = 1,
        max_size: int | None = 2**20,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.tags: dict[str, TagInfo] = {
            k: v if isinstance(v, TagInfo) else TagInfo(status=v) for k, v in (tags or {}).items()
        }
        self.boot_status = boot_status  # Accepted / Pending / Rejected
        self.heartbeat_interval = heartbeat_interval
        #: None: no authentication. Otherwise cp id -> expected Basic auth password; a CP
        #: not listed, or with a wrong password, gets HTTP 401.
        self.passwords: dict[str, str] | None = None if passwords is None else dict(passwords)
        self.ssl_context = ssl_context
        self.response_timeout = response_timeout
        self.max_size = max_size
        self.data_transfer_status = "Accepted"
        #: Actions (or "*") whose CALLs are recorded but never answered.
        self.silent_actions: set[str] = set()
        #: Action -> seconds, or an asyncio.Event the answer waits for.
        self.reply_delays: dict[str, float | asyncio.Event] = {}
        #: Action -> function(cp_id, payload) giving the raw CALLRESULT payload (or None).
        self.overrides: dict[str, Override] = {}
        self._now = now or (lambda: datetime.now(UTC))

        self.frames: list[Frame] = []
        self.handshakes: list[Handshake] = []
        self.transactions: dict[int, Transaction] = {}
        self.boots: list[tuple[str, dict[str, Any]]] = []
        self.meter_values: list[tuple[str, dict[str, Any]]] = []
        self.data_transfers: list[tuple[str, dict[str, Any]]] = []
        self.connector_status: dict[tuple[str, int], tuple[str, str]] = {}
        self.diagnostics_status: dict[str, str] = {}
        self.firmware_status: dict[str, str] = {}
        self.connect_counts: dict[str, int] = defaultdict(int)

        self._transaction_ids = itertools.count(first_transaction_id)
        self._seq = itertools.count()
        self._actions: dict[tuple[str, Direction, str], str] = {}
        self._sessions: dict[str, _Session] = {}
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offline = False
        self._refusing = False
        self._server: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> CentralSystem:
        self._server = await serve(
            self._handle_connection,
            self.host,
            self.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._process_request,
            ssl=self.ssl_context,
            max_size=self.max_size,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        LOGGER.info("central system listening on %s", self.url)
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> CentralSystem:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    def now_iso(self) -> str:
        return self._now().astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def tag_info(self, id_tag: str) -> TagInfo:
        """IdToken is case-insensitive (CiString20Type): an exact match first, then any case."""
        info = self.tags.get(id_tag)
        if info is None:
            folded = id_tag.casefold()
            info = next((v for k, v in self.tags.items() if k.casefold() == folded), None)
        return info or TagInfo(status="Invalid")

    # ------------------------------------------------------------ link control

    def is_connected(self, cp_id: str) -> bool:
        return cp_id in self._sessions

    def set_offline(self, offline: bool) -> None:
        """Offline: cut every link now (no close handshake) and answer new handshakes 503."""
        self._offline = offline
        if offline:
            for session in list(self._sessions.values()):
                session.ws.transport.abort()

    def refuse_handshakes(self, refuse: bool) -> None:
        """Answer new handshakes 503, as offline does, but leave the links up: a test closes
        one its own way (`disconnect`) and knows the CP stays offline until it allows."""
        self._refusing = refuse

    async def disconnect(self, cp_id: str, *, abrupt: bool = False, code: int = 1000) -> None:
        """Close one CP's link, cleanly or as a cut cable, and wait until it is gone."""
        session = self._sessions.get(cp_id)
        if session is None:
            return
        if abrupt:
            session.ws.transport.abort()
        else:
            await session.ws.close(code)
        async with asyncio.timeout(self.response_timeout):
            await asyncio.shield(session.closed)

    # ------------------------------------------------------------ talking to a CP

    async def call(
        self,
        cp_id: str,
        payload: Any,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send a CS->CP CALL (an `ocpp.v16.call.*` object); return the library's result object.

        Raises the library's OCPPError subclass for a CALLERROR, TimeoutError when no answer
        comes in time, ConnectionError when the link drops first.
        """
        session = self._session(cp_id)
        limit = self.response_timeout if timeout is None else timeout
        async with session.call_lock:
            unique_id = str(uuid.uuid4())
            session.peer.pending_id = unique_id
            task = asyncio.ensure_future(
                session.peer.call(payload, suppress=False, unique_id=unique_id)
            )
            try:
                done, _ = await asyncio.wait(
                    {task, session.closed}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
                )
                if task not in done and self._answered(cp_id, unique_id):
                    # The answer was read before the close (route_message queued it), but the
                    # library's call() needs a few more loop turns to pick it up: a CP that
                    # answers and then closes (a security-profile raise) has answered.
                    done, _ = await asyncio.wait({task}, timeout=limit)
            finally:
                session.peer.pending_id = None
                if not task.done():
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            if task in done:
                return task.result()
            if session.closed.done():
                raise ConnectionError(f"{cp_id} disconnected before answering {unique_id}")
            raise TimeoutError(f"{cp_id} did not answer {type(payload).__name__} within {limit}s")

    def _answered(self, cp_id: str, unique_id: str) -> bool:
        return any(
            f.cp_id == cp_id
            and f.direction is Direction.CP_TO_CS
            and f.unique_id == unique_id
            and (f.is_result or f.is_error)
            for f in reversed(self.frames)
        )

    async def send_raw(self, cp_id: str, text: str) -> None:
        """Send any text frame, well-formed or not; answers are only recorded."""
        await self._session(cp_id).peer._send(text)

    # ------------------------------------------------------------ waiting

    def mark(self) -> int:
        """The seq the next frame will get: pass it as `since` to wait only for newer frames."""
        return len(self.frames)

    async def wait_for(
        self,
        predicate: Callable[[Frame], bool],
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Frame:
        """The first recorded frame (seq >= since) matching `predicate`, waiting if needed."""
        position = since

        def scan() -> Frame | None:
            nonlocal position
            while position < len(self.frames):
                frame = self.frames[position]
                position += 1
                if predicate(frame):
                    return frame
            return None

        try:
            return await self._wait_until(scan, timeout)
        except TimeoutError:
            tail = "\n".join(f"  {f.direction} {f.raw[:120]}" for f in self.frames[-8:])
            raise TimeoutError(
                f"no matching frame within {timeout}s; last frames:\n{tail}"
            ) from None

    async def wait_for_call(
        self,
        action: str,
        cp_id: str | None = None,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Frame:
        """The first CP->CS CALL of `action` (from `cp_id`, if given)."""
        return await self.wait_for(
            lambda f: (
                f.is_call
                and f.direction is Direction.CP_TO_CS
                and f.action == action
                and (cp_id is None or f.cp_id == cp_id)
            ),
            timeout,
            since=since,
        )

    async def wait_for_reply(
        self,
        unique_id: str,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Frame:
        """The CP's CALLRESULT or CALLERROR for a CALL the CS sent with `unique_id`."""
        return await self.wait_for(
            lambda f: (
                f.direction is Direction.CP_TO_CS
                and f.message_type in (3, 4)
                and f.unique_id == unique_id
            ),
            timeout,
            since=since,
        )

    async def wait_connected(self, cp_id: str, timeout: float = 5.0) -> None:
        await self._wait_until(lambda: cp_id in self._sessions, timeout)

    async def wait_disconnected(self, cp_id: str, timeout: float = 5.0) -> None:
        await self._wait_until(lambda: cp_id not in self._sessions, timeout)

    async def wait_handshakes(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` opening handshakes (accepted or refused) have come in."""
        await self._wait_until(lambda: len(self.handshakes) >= count, timeout)

    def frames_of(self, cp_id: str, *, since: int = 0) -> list[Frame]:
        return [f for f in self.frames[since:] if f.cp_id == cp_id]

    # ------------------------------------------------------------ internals

    async def _wait_until(self, check: Callable[[], T | None], timeout: float) -> T:
        found = check()
        if found is not None and found is not False:
            return found
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (check, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiters.remove(entry)

    def _notify(self) -> None:
        for check, future in list(self._waiters):
            if future.done():
                continue
            try:
                found = check()
            except Exception as e:  # a failing predicate fails its own wait, not the CS
                future.set_exception(e)
                continue
            if found is not None and found is not False:
                future.set_result(found)

    def _record(self, cp_id: str, direction: Direction, raw: str) -> None:
        fields: dict[str, Any] = {}
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, list) and len(message) >= 2 and type(message[0]) is int:
            fields["message_type"] = message[0]
            unique_id = message[1] if isinstance(message[1], str) else None
            fields["unique_id"] = unique_id
            if message[0] == 2 and len(message) >= 3 and isinstance(message[2], str):
                fields["action"] = message[2]
                fields["payload"] = message[3] if len(message) > 3 else None
                if unique_id is not None:
                    self._actions[(cp_id, direction, unique_id)] = message[2]
            elif message[0] in (3, 4) and unique_id is not None:
                answered = (
                    Direction.CS_TO_CP if direction is Direction.CP_TO_CS else Direction.CP_TO_CS
                )
                fields["action"] = self._actions.get((cp_id, answered, unique_id))
                if message[0] == 3:
                    fields["payload"] = message[2] if len(message) > 2 else None
                else:
                    fields["error_code"] = message[2] if len(message) > 2 else None
                    fields["error_description"] = message[3] if len(message) > 3 else None
                    fields["error_details"] = message[4] if len(message) > 4 else None
        self.frames.append(
            Frame(
                seq=next(self._seq),
                cp_id=cp_id,
                direction=direction,
                monotonic=time.monotonic(),
                raw=raw,
                **fields,
            )
        )
        self._notify()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session(self, cp_id: str) -> _Session:
        try:
            return self._sessions[cp_id]
        except KeyError:
            raise ConnectionError(f"{cp_id} is not connected") from None

    @staticmethod
    def _cp_id(path: str) -> str:
        return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])

    def _authorised(self, cp_id: str, header: str | None) -> bool:
        if self.passwords is None:
            return True
        expected = self.passwords.get(cp_id)
        if expected is None or header is None:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == cp_id and hmac.compare_digest(password.encode(), expected.encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = self._cp_id(request.path)
        authorization = request.headers.get("Authorization")
        response: Response | None = None
        if self._offline or self._refusing:
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "offline\n")
        elif not cp_id:
            response = connection.respond(HTTPStatus.NOT_FOUND, "no charge point id in path\n")
        elif not self._authorised(cp_id, authorization):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorised\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        status = HTTPStatus.SWITCHING_PROTOCOLS if response is None else response.status_code
        self.handshakes.append(Handshake(cp_id, request.path, authorization, int(status)))
        self._notify()
        return response

    async def _handle_connection(self, ws: ServerConnection) -> None:
        cp_id = self._cp_id(ws.request.path if ws.request else "")
        peer = _CentralSystemPeer(cp_id, _RecordingConnection(ws, self, cp_id), self)
        session = _Session(cp_id, ws, peer, asyncio.get_running_loop().create_future())
        previous = self._sessions.get(cp_id)
        if previous is not None:  # a CP reconnecting replaces its stale link
            previous.ws.transport.abort()
            with suppress(TimeoutError):
                async with asyncio.timeout(self.response_timeout):
                    await asyncio.shield(previous.closed)
        self._sessions[cp_id] = session
        self.connect_counts[cp_id] += 1
        self._notify()
        try:
            await peer.start()
        except ConnectionClosed:
            pass
        except Exception:
            LOGGER.exception("%s: session failed", cp_id)
        finally:
            if self._sessions.get(cp_id) is session:
                del self._sessions[cp_id]
            session.closed.set_result(None)
            self._notify()


# ---------------------------------------------------------------- demo / CLI


async def run_central_system(
    host: str = "127.0.0.1",
    port: int = 9000,
    tags: Mapping[str, str | TagInfo] | None = None,
    *,
    ready: Callable[[CentralSystem], None] | None = None,
) -> None:
    """Serve until cancelled; `ready` gets the running CS (its `url` and recordings)."""
    async with CentralSystem(host=host, port=port, tags=tags) as cs:
        if ready is not None:
            ready(cs)
        await asyncio.Future()  # forever, until the caller cancels


PROG = "python -m evsed.hwmocks.central_system"  # what hw-mocks/README.md runs
STATUSES = tuple(status.value for status in AuthorizationStatus)  # the five of OCPP 1.6


def _tag(text: str) -> tuple[str, str]:
    """`IDTAG[=STATUS]`, STATUS one of OCPP 1.6's AuthorizationStatus values, spelt as the
    spec does: anything else made the first Authorize fail the CS's own schema."""
    id_tag, _, status = text.partition("=")
    if not id_tag:
        raise argparse.ArgumentTypeError(f"{text!r}: no idTag before the '='")
    if "=" not in text:
        return id_tag, AuthorizationStatus.accepted.value
    if status not in STATUSES:
        near = [s for s in STATUSES if s.casefold() == status.casefold()]
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise argparse.ArgumentTypeError(
            f"{text!r}: status {status!r} is not an OCPP 1.6 AuthorizationStatus{hint}; "
            f"choose from {', '.join(STATUSES)}"
        )
    return id_tag, status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embedded OCPP 1.6J test Central System: answers a charge point's "
        "messages on ws://HOST:PORT/<ChargePointId> (it sends no command of its own).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=9000, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        type=_tag,
        metavar="IDTAG[=STATUS]",
        help="an idTag the CS knows, STATUS one of " + ", ".join(STATUSES) + " (Accepted "
        "when not given; a tag not given is Invalid); repeatable",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tags = dict(args.tag)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        with suppress(KeyboardInterrupt):
            asyncio.run(
                run_central_system(
                    args.host,
                    args.port,
                    tags,
                    ready=lambda cs: print(
                        f"Central System at {cs.url}/<ChargePointId>", flush=True
                    ),
                )
            )
    except OSError as exc:  # the listening socket: the rest runs inside the server
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = "the port is in use (another Central System running? --port 0 picks a free one)"
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
