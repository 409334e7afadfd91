"""The OCPP 1.6J session: one websocket to the Central System, kept up for ever.

`OcppSession` implements `SessionControl` (context.py). Per connection it builds the charge
point with the factory it was given, runs the library's receive loop, boots, and while the
boot is Accepted sends heartbeats, status notifications and the queued transaction messages.

Rules it keeps (OCPP 1.6 §4.2, §4.6, §4.9, §3.7; OCPP-J 1.6 §3, §5; Security Whitepaper §2):

- URL ``<central_system.url>/<charge_point_id>``, subprotocol ``ocpp1.6``; a server that
  picks no subprotocol is refused. Frames are bounded by ``websocket_options()``.
- Security profile: the higher of the configured level and the SecurityProfile key (the CS
  may only raise it). 1: HTTP Basic over ws (user = charge point id, password =
  AuthorizationKey as changed by the CS, else the configured key). 2: the same over TLS >= 1.2
  verified against ``ca_file``. 3: TLS with the client certificate, no Basic auth.
  Passwords and Authorization headers never reach a log line or a "frame" event.
- Reconnects for ever with exponential back-off (1 s doubling to 60 s, +-20 % jitter),
  reset by an Accepted boot. WebSocket pings every WebSocketPingInterval seconds (0: off)
  notice a dead link within the interval plus the ping timeout; the new value applies to
  the next connection.
- ``online`` is true only while connected AND the boot was Accepted. While Pending or
  Rejected nothing but BootNotification is sent (CS->CP calls are still answered by the
  charge point's handlers); the boot is retried after the interval the CS gave.
- One CP->CS CALL at a time on the link (OCPP-J §4.1.1): every call of the session and of
  ``call()`` takes one lock. A call never outlives its timeout, and a dropped link ends it
  at once instead of waiting for the library's response timeout.
- Transaction messages: delivered from ``ctx.txqueue`` oldest first, never two in flight;
  a CALLERROR counts as a failed attempt, a timeout or a dropped link does not.
- Status: after each Accepted boot the CS gets connector 0 and every connector's *current*
  status (no stale history is replayed); later changes once they have lasted
  MinimumStatusDuration. Only a status different from the last one sent is sent.

Timers of the protocol (heartbeat, boot retry, back-off, MinimumStatusDuration, retry
intervals) run on the injected clock; network timeouts (response timeout, pings) are real
time, since they are about a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ocpp.v16
from ocpp.charge_point import camel_to_snake_case, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from evsed.controller.config import mask_url
from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus, ErrorCode
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.protocol import (
    SUBPROTOCOL,
    CallErrorReply,
    StrictChargePoint,
    validate_payload,
    websocket_options,
)
from evsed.controller.ocpp16.txqueue import (
    START,
    STOP,
    QueuedMessage,
    UnresolvedTransaction,
    ocpp_timestamp,
)

log = logging.getLogger(__name__)
# Given to websockets: at DEBUG it logs every handshake header, Authorization included.
_ws_log = logging.getLogger(__name__ + ".ws")

ChargePointFactory = Callable[[str, Any], StrictChargePoint]
ResetCallback = Callable[[str], Awaitable[None]]

DEFAULT_HEARTBEAT_S = 300
DEFAULT_BOOT_RETRY_S = 60
_CI_STRING_50 = 50


# ---------------------------------------------------------------- secrets stay out of logs

_SECRET_PATTERNS = (
    # ChangeConfiguration of the AuthorizationKey, in either property order.
    re.compile(r'("key"\s*:\s*"AuthorizationKey"\s*,\s*"value"\s*:\s*")[^"]*', re.IGNORECASE),
    re.compile(r'("value"\s*:\s*")[^"]*("\s*,\s*"key"\s*:\s*"AuthorizationKey")', re.IGNORECASE),
    re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without AuthorizationKey values, Authorization headers or any of ``secrets``."""
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
    text = _SECRET_PATTERNS[2].sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record whose text carries a secret; attached to the loggers the session feeds."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is the logging module's business
            return True
        clean = redact(text, self.secrets)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()
_ws_log.addFilter(_FILTER)
log.addFilter(_FILTER)


# ---------------------------------------------------------------- back-off


@dataclass
class Backoff:
    """Exponential back-off with jitter: initial, doubling up to ``max_s``, +-``jitter``."""

    initial_s: float = 1.0
    max_s: float = 60.0
    jitter: float = 0.2
    rng: Callable[[], float] = random.random
    _base: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._base = self.initial_s

    def next(self) -> float:
        base = self._base
        self._base = min(self.max_s, self._base * 2)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * self.rng() - 1.0)))

    def reset(self) -> None:
        self._base = self.initial_s


# ---------------------------------------------------------------- the link


class _Wake:
    """An asyncio.Event that resolves its waiters' futures directly (see `_sleep_or`)."""

    def __init__(self) -> None:
        self._flag = False
        self.waiters: set[asyncio.Future[bool]] = set()

    def set(self) -> None:
        self._flag = True
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag


class LinkLost(Exception):
    """The websocket closed while a CALL was outstanding."""


class _FrameTap:
    """The connection as the charge point sees it: every frame also becomes a "frame" event."""

    def __init__(self, ws: ClientConnection, ctx: OcppContext) -> None:
        self.ws = ws
        self._ctx = ctx

    async def recv(self) -> str | bytes:
        message = await self.ws.recv()
        if self._ctx.observers:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            self._ctx.emit("frame", direction="cs->cp", raw=redact(text, _FILTER.secrets))
        return message

    async def send(self, message: str) -> None:
        if self._ctx.observers:
            self._ctx.emit("frame", direction="cp->cs", raw=redact(message, _FILTER.secrets))
        await self.ws.send(message)


@dataclass
class _Link:
    ws: ClientConnection
    cp: StrictChargePoint
    reader: asyncio.Task[Any]
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


@dataclass(frozen=True)
class ConnectSettings:
    """How to reach the CS; built fresh for every connection attempt."""

    url: str
    profile: int
    headers: dict[str, str]
    ssl: ssl.SSLContext | None
    password: str


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _as_camel(result: Any) -> dict[str, Any]:
    """A call_result object (nested dicts in snake_case) as the wire's camelCase dict."""
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return snake_to_camel_case(dict(result))
    return snake_to_camel_case(
        {k: v for k, v in serialize_as_dict(result).items() if v is not None}
    )


def _schema_property_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names.update(value)
            names |= _schema_property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _schema_property_names(value)
    return names


@functools.cache
def _nested_names_survive(action: str) -> bool:
    """True if the library's snake->camel conversion leaves every property name of the
    action's request schema as it is (no "_", no "soc"/"csms"/"url" it would rewrite)."""
    path = Path(ocpp.v16.__file__).parent / "schemas" / f"{action}.json"
    schema = json.loads(path.read_text(encoding="utf-8-sig"))
    names = _schema_property_names(schema)
    return all(snake_to_camel_case({n: None}) == {n: None} for n in names)


def _request(action: str, payload: dict[str, Any]) -> Any:
    """The `ocpp.v16.call` object for a queued camelCase payload.

    Only the top-level names need snake_case (they are the dataclass fields); nested
    objects stay camelCase when the library's way back to camelCase leaves them unchanged,
    which saves a deep camel->snake walk per message (checked once per action)."""
    cls = getattr(call, action)
    if _nested_names_survive(action):
        snake_names = camel_to_snake_case(dict.fromkeys(payload))  # keys only, same order
        return cls(**dict(zip(snake_names, payload.values(), strict=True)))
    return cls(**camel_to_snake_case(payload))


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session: %s failed", task.get_name(), exc_info=task.exception())


# ---------------------------------------------------------------- the session


class OcppSession:
    """See the module docstring. Build once; ``start()``, later ``await stop()``."""

    def __init__(
        self,
        ctx: OcppContext,
        chargepoint_factory: ChargePointFactory,
        *,
        on_reset: ResetCallback | None = None,
        response_timeout: float = 30.0,
        backoff: Backoff | None = None,
        boot_retry_s: float = DEFAULT_BOOT_RETRY_S,
        open_timeout: float = 10.0,
        ping_interval_s: float | None = None,
        ping_timeout_s: float | None = None,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._ctx = ctx
        self._factory = chargepoint_factory
        self._on_reset = on_reset
        self.response_timeout = response_timeout
        self.backoff = backoff or Backoff()
        self._boot_retry_s = boot_retry_s
        self._open_timeout = open_timeout
        self._ping_interval_override = ping_interval_s
        self._ping_timeout_override = ping_timeout_s
        # After a ping timeout websockets still waits this long for the close handshake,
        # which a dead link never completes: it is part of the detection time.
        self._close_timeout = close_timeout_s
        cs = ctx.config.central_system
        self.charge_point_id = cs.charge_point_id

        self._call_lock = asyncio.Lock()
        self._link: _Link | None = None
        self._online = False
        self._online_event = asyncio.Event()
        self._offline_event = asyncio.Event()
        self._offline_event.set()
        self._delivery_wake = _Wake()
        self._status_wake = _Wake()
        self._heartbeat_changed = _Wake()
        self._main: asyncio.Task[None] | None = None
        self._reset_task: asyncio.Task[None] | None = None
        # connector id -> (monotonic time of the latest change, wall time it happened)
        self._changed: dict[int, tuple[float, datetime]] = {}
        self._since: dict[int, datetime] = {}
        self._last_sent: dict[int, ConnectorStatus] = {}
        #: Back-off delays waited so far (tests and the timeline read them).
        self.reconnect_delays: list[float] = []
        self.boot_result: Any = None

        ctx.keys.on_change("HeartbeatInterval", lambda _k, _v: self._heartbeat_changed.set())
        if ctx.session is None:
            ctx.session = self

    # ------------------------------------------------------------ SessionControl

    @property
    def online(self) -> bool:
        return self._online

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and not link.reader.done()

    async def call(self, payload: Any, *, timeout: float | None = None) -> Any | None:
        limit = self.response_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                async with self._call_lock:
                    link = self._link
                    if not self._online or link is None:
                        return None
                    return await self._exchange(link, payload, limit)
        except OCPPError as e:
            log.warning("%s answered with CALLERROR %s", type(payload).__name__, e.code)
        except (TimeoutError, LinkLost) as e:
            log.warning("%s got no answer: %s", type(payload).__name__, type(e).__name__)
        except Exception:
            log.exception("%s could not be sent", type(payload).__name__)
        return None

    def wake_delivery(self) -> None:
        self._delivery_wake.set()

    def status_changed(self, connector_id: int) -> None:
        self._changed[connector_id] = (self._ctx.clock.monotonic(), self._ctx.clock.now())
        self._since[connector_id] = self._ctx.clock.now()
        self._status_wake.set()

    def request_reset(self, kind: str) -> None:
        reason = "HardReset" if kind.lower().startswith("hard") else "SoftReset"
        self._ctx.store.set_pending_stop_reason(reason)
        self._ctx.emit("reset", kind=kind, reason=reason)
        if self._on_reset is None:
            log.warning("%s reset accepted but no restart callback is set", kind)
            return
        # Not cancelled by stop(): the callback is what stops us on its way to a restart.
        self._reset_task = asyncio.ensure_future(self._on_reset(kind))
        self._reset_task.add_done_callback(_log_failure)

    # ------------------------------------------------------------ waiting (tests, app)

    async def wait_online(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._online_event.wait(), timeout)

    async def wait_offline(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._offline_event.wait(), timeout)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._main is None or self._main.done():
            self._main = asyncio.ensure_future(self._run())
            self._main.set_name("ocpp-session")

    async def stop(self) -> None:
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            with suppress(asyncio.CancelledError):
                await main
        self._set_offline()

    # ------------------------------------------------------------ connection settings

    def _security_profile(self) -> int:
        level = self._ctx.config.central_system.security_profile
        keys = self._ctx.keys
        if keys.is_supported("SecurityProfile"):
            with suppress(ValueError, KeyError):
                level = max(level, keys.int("SecurityProfile"))
        return level

    def _password(self) -> str:
        keys = self._ctx.keys
        if keys.is_supported("AuthorizationKey"):
            with suppress(KeyError):
                changed = keys.value("AuthorizationKey")
                if changed:
                    return changed
        return self._ctx.config.central_system.authorization_key.get_secret_value()

    def connect_settings(self) -> ConnectSettings:
        cs = self._ctx.config.central_system
        profile = self._security_profile()
        parts = urlsplit(cs.url.rstrip("/"))
        scheme = "wss" if profile >= 2 else parts.scheme
        url = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
        url = f"{url}/{cs.charge_point_id}"
        headers: dict[str, str] = {}
        password = ""
        if profile in (1, 2):
            password = self._password()
            token = base64.b64encode(f"{cs.charge_point_id}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        context: ssl.SSLContext | None = None
        if scheme == "wss":
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(cs.ca_file) if cs.ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if profile == 3:
                if cs.client_cert is None or cs.client_key is None:
                    raise ValueError("security profile 3 needs client_cert and client_key")
                context.load_cert_chain(Path(cs.client_cert), Path(cs.client_key))
        return ConnectSettings(url, profile, headers, context, password)

    def _ping_settings(self) -> tuple[float | None, float | None]:
        interval: float | None = self._ping_interval_override
        if interval is None:
            try:
                interval = float(self._ctx.keys.int("WebSocketPingInterval"))
            except (KeyError, ValueError):
                interval = 0.0
        if not interval or interval <= 0:
            return None, None
        timeout = self._ping_timeout_override
        return interval, interval if timeout is None else timeout

    # ------------------------------------------------------------ the connection loop

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session: connection attempt failed unexpectedly")
            delay = self.backoff.next()
            self.reconnect_delays.append(delay)
            self._ctx.emit("reconnect_wait", seconds=delay)
            await self._ctx.clock.sleep(delay)

    async def _connect_once(self) -> None:
        try:
            settings = self.connect_settings()
        except (OSError, ssl.SSLError, ValueError) as e:
            log.error("session: cannot prepare the connection: %s", e)
            return
        _FILTER.secrets = (settings.password,) if settings.password else ()
        ping_interval, ping_timeout = self._ping_settings()
        where = mask_url(settings.url)
        try:
            ws = await connect(
                settings.url,
                additional_headers=settings.headers or None,
                ssl=settings.ssl,
                open_timeout=self._open_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=self._close_timeout,
                proxy=None,
                logger=_ws_log,
                **websocket_options(self._ctx.config.central_system.max_frame_bytes),
            )
        except InvalidStatus as e:
            status = e.response.status_code
            hint = " (check the AuthorizationKey)" if status == 401 else ""
            log.warning("session: %s refused the connection: HTTP %d%s", where, status, hint)
            self._ctx.emit("connect_failed", url=where, http_status=status)
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ssl.SSLError) as e:
            log.warning("session: cannot connect to %s: %s", where, type(e).__name__)
            self._ctx.emit("connect_failed", url=where, error=type(e).__name__)
            return
        try:
            if ws.subprotocol != SUBPROTOCOL:
                log.error("session: %s did not agree to %s, closing", where, SUBPROTOCOL)
                self._ctx.emit("connect_failed", url=where, error="subprotocol")
                return
            log.info("session: connected to %s (security profile %d)", where, settings.profile)
            await self._serve(ws)
        finally:
            self._set_offline()
            with suppress(Exception):
                await asyncio.wait_for(ws.close(), self._close_timeout)
            with suppress(Exception):
                ws.transport.abort()

    async def _serve(self, ws: ClientConnection) -> None:
        cp = self._factory(self.charge_point_id, _FrameTap(ws, self._ctx))
        cp.logger.addFilter(_FILTER)
        reader = asyncio.ensure_future(cp.start())
        reader.set_name("ocpp-reader")
        link = _Link(ws, cp, reader)
        reader.add_done_callback(lambda _t: self._set_offline() if self._link is link else None)
        self._link = link
        driver = asyncio.ensure_future(self._drive(link))
        driver.set_name("ocpp-driver")
        try:
            await asyncio.wait({reader, driver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._link = None
            self._set_offline()
            for task in (driver, *link.tasks, reader):
                task.cancel()
            cp.cancel_background_tasks()
            await asyncio.gather(driver, *link.tasks, reader, return_exceptions=True)
        if driver.done() and not driver.cancelled() and driver.exception() is not None:
            log.error("session: driver failed", exc_info=driver.exception())
        log.info("session: link closed")

    # ------------------------------------------------------------ boot, then online

    async def _drive(self, link: _Link) -> None:
        interval = await self._boot(link)
        self._last_sent.clear()
        self._changed.clear()
        self.backoff.reset()
        self._online = True
        self._offline_event.clear()
        self._online_event.set()
        self._ctx.emit("online")
        log.info("session: online")
        link.spawn(self._status_loop(link), "ocpp-status")
        link.spawn(self._delivery_loop(link), "ocpp-delivery")
        await self._heartbeat_loop(link, interval)

    def _boot_payload(self) -> call.BootNotification:
        ident = self._ctx.config.identity
        return call.BootNotification(
            charge_point_vendor=ident.vendor,
            charge_point_model=ident.model,
            charge_point_serial_number=ident.charge_point_serial or None,
            charge_box_serial_number=ident.charge_box_serial or None,
            firmware_version=ident.firmware_version or None,
            meter_type=ident.meter_type or None,
            meter_serial_number=ident.meter_serial or None,
        )

    async def _boot(self, link: _Link) -> int:
        """BootNotification until Accepted; returns the heartbeat interval to use."""
        while True:
            result = None
            try:
                async with self._call_lock:
                    result = await self._exchange(link, self._boot_payload(), self.response_timeout)
            except OCPPError as e:
                log.warning("session: BootNotification answered with CALLERROR %s", e.code)
            except TimeoutError:
                log.warning("session: BootNotification not answered")
            self.boot_result = result
            status = getattr(result, "status", None)
            interval = getattr(result, "interval", 0) or 0
            self._ctx.emit("boot", status=status, interval=interval)
            if status == "Accepted":
                self._learn_time(getattr(result, "current_time", None))
                if interval > 0:
                    self._ctx.keys.change("HeartbeatInterval", str(int(interval)))
                    self._heartbeat_changed.clear()
                return self._heartbeat_interval()
            if status is not None:
                log.warning("session: boot %s, retrying in %ss", status, interval or "default")
                self._learn_time(getattr(result, "current_time", None))
            await self._ctx.clock.sleep(interval if interval > 0 else self._boot_retry_s)

    def _heartbeat_interval(self) -> int:
        with suppress(KeyError, ValueError):
            value = self._ctx.keys.int("HeartbeatInterval")
            if value > 0:
                return value
        return DEFAULT_HEARTBEAT_S

    def _learn_time(self, current_time: Any) -> None:
        """CS time minus local time, into the clock (SystemClock/FakeClock have offset_s)."""
        cs_time = _parse_time(current_time)
        clock = self._ctx.clock
        if cs_time is None or not hasattr(clock, "offset_s"):
            return
        local = clock.now().timestamp() - float(clock.offset_s)
        clock.offset_s = cs_time.timestamp() - local

    async def _heartbeat_loop(self, link: _Link, interval: int) -> None:
        while True:
            if await self._sleep_or(self._heartbeat_changed, interval):
                self._heartbeat_changed.clear()
                interval = self._heartbeat_interval()
                continue  # the timer starts again with the new interval
            interval = self._heartbeat_interval()
            result = await self._send_quietly(link, call.Heartbeat())
            if result is not None:
                self._learn_time(getattr(result, "current_time", None))

    # ------------------------------------------------------------ status notifications

    def _current_status(self, connector_id: int) -> ConnectorStatus:
        charger = self._ctx.charger
        if connector_id == 0:
            error = ErrorCode.NO_ERROR
            status = ChargePointStatus.AVAILABLE
            if charger is not None:
                if getattr(charger, "reader_faulted", False):
                    error = ErrorCode.READER_FAILURE
                statuses = [c.status.status for c in charger.connectors.values()]
                if statuses and all(s is ChargePointStatus.UNAVAILABLE for s in statuses):
                    status = ChargePointStatus.UNAVAILABLE
            return ConnectorStatus(status, error)
        assert charger is not None
        return charger.connectors[connector_id].status

    def _connector_ids(self) -> list[int]:
        charger = self._ctx.charger
        return [0] + ([] if charger is None else sorted(charger.connectors))

    def _status_payload(self, connector_id: int, st: ConnectorStatus) -> call.StatusNotification:
        since = self._since.get(connector_id)
        return call.StatusNotification(
            connector_id=connector_id,
            error_code=str(st.error_code),
            status=str(st.status),
            info=st.info[:_CI_STRING_50] or None,
            vendor_error_code=st.vendor_error_code[:_CI_STRING_50] or None,
            timestamp=ocpp_timestamp(since or self._ctx.clock.now()),
        )

    async def _send_status(self, link: _Link, connector_id: int) -> None:
        try:
            st = self._current_status(connector_id)
        except (KeyError, AssertionError):
            log.warning("session: status of unknown connector %d not sent", connector_id)
            return
        if self._last_sent.get(connector_id) == st:
            return
        # Recorded before sending: a CS that refuses it is not asked again and again.
        self._last_sent[connector_id] = st
        await self._send_quietly(link, self._status_payload(connector_id, st))

    async def _status_loop(self, link: _Link) -> None:
        for connector_id in self._connector_ids():
            await self._send_status(link, connector_id)
        while True:
            now = self._ctx.clock.monotonic()
            minimum = self._minimum_status_duration()
            wait: float | None = None
            for connector_id, entry in list(self._changed.items()):
                left = entry[0] + minimum - now
                if left <= 0:
                    if self._changed.get(connector_id) == entry:
                        del self._changed[connector_id]
                    await self._send_status(link, connector_id)
                else:
                    wait = left if wait is None else min(wait, left)
            if not self._changed or wait is not None:
                await self._sleep_or(self._status_wake, wait)
                self._status_wake.clear()

    def _minimum_status_duration(self) -> int:
        with suppress(KeyError, ValueError):
            return max(0, self._ctx.keys.int("MinimumStatusDuration"))
        return 0

    # ------------------------------------------------------------ transaction messages

    async def _delivery_loop(self, link: _Link) -> None:
        queue = self._ctx.txqueue
        clock = self._ctx.clock
        while True:
            self._delivery_wake.clear()
            msg = queue.next_due(clock.monotonic())
            if msg is None:
                await self._sleep_or(self._delivery_wake, queue.due_in(clock.monotonic()))
                continue
            if not await self._deliver(link, msg):
                return  # the link is gone; the next connection starts a new loop

    async def _deliver(self, link: _Link, msg: QueuedMessage) -> bool:
        queue = self._ctx.txqueue
        clock = self._ctx.clock
        try:
            payload = queue.resolve_payload(msg)
            # Validated here, in the loop, against the cached 1.6 schema: the library would
            # do it in a worker thread, and two thread hops per message were most of the
            # replay time after an outage. The answer is validated below the same way.
            validate_payload(msg.action, payload)
            request = _request(msg.action, payload)
        except (UnresolvedTransaction, CallErrorReply, TypeError) as e:
            queue.mark_attempt(msg.id, clock.monotonic(), f"cannot send: {e}")
            self._delivered(msg, "invalid", str(e))
            return True
        try:
            async with self._call_lock:
                result = await self._exchange(link, request, self.response_timeout, validated=True)
            answer = _as_camel(result)
            validate_payload(msg.action, answer, response=True)
        except (OCPPError, CallErrorReply) as e:
            error = f"CALLERROR {e.code}: {e.description}"
            if isinstance(e, CallErrorReply):
                error = f"invalid CALLRESULT ({e.code}): {e.description}"
            retry = queue.mark_attempt(msg.id, clock.monotonic(), error)
            self._delivered(msg, "callerror" if retry else "given_up", error)
            return True
        except TimeoutError:
            queue.mark_attempt(msg.id, clock.monotonic(), "timeout", failed_to_process=False)
            self._delivered(msg, "timeout")
            return True
        except LinkLost:
            # Not the CS's failure, and not a reason to wait after reconnecting: the message
            # stays at the head, due as soon as the link is back.
            self._delivered(msg, "link_lost")
            return False
        except Exception as e:  # e.g. a CALLRESULT with properties the library cannot take
            log.exception("session: %s %d failed", msg.action, msg.id)
            retry = queue.mark_attempt(msg.id, clock.monotonic(), f"failed: {e!r}")
            self._delivered(msg, "callerror" if retry else "given_up", repr(e))
            return True
        queue.ack(msg.id, answer)
        self._after_ack(msg, payload, answer)
        self._delivered(msg, "confirmed")
        return True

    def _delivered(self, msg: QueuedMessage, outcome: str, error: str | None = None) -> None:
        if self._ctx.observers:
            self._ctx.emit("tx_message", id=msg.id, action=msg.action, outcome=outcome, error=error)

    def _after_ack(
        self, msg: QueuedMessage, payload: dict[str, Any], answer: dict[str, Any]
    ) -> None:
        info = answer.get("idTagInfo")
        id_tag = payload.get("idTag")
        authorizer = self._ctx.authorizer
        if msg.action in (START, STOP) and isinstance(info, dict) and id_tag:
            if authorizer is not None:
                try:
                    authorizer.update_from(id_tag, info)
                except Exception:
                    log.exception("session: authorisation cache update failed")
        if msg.action == START:
            self._ctx.emit(
                "start_transaction_result",
                local_id=msg.tx_local_id,
                transaction_id=answer.get("transactionId"),
                id_tag=id_tag,
                id_tag_info=info if isinstance(info, dict) else {},
            )

    # ------------------------------------------------------------ plumbing

    async def _exchange(
        self, link: _Link, payload: Any, timeout: float, *, validated: bool = False
    ) -> Any:
        """One CALL on ``link``; the caller holds the call lock.

        Returns the library's result object; raises OCPPError (CALLERROR), TimeoutError
        or LinkLost. Racing the link's reader stops a dropped link from costing the full
        response timeout. ``validated``: the caller validates request and answer itself."""
        if link.reader.done():
            raise LinkLost()
        pending = asyncio.ensure_future(
            link.cp.call(payload, suppress=False, skip_schema_validation=validated)
        )
        try:
            done, _ = await asyncio.wait(
                {pending, link.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not pending.done():
                pending.cancel()
                # gather, not suppress(CancelledError): a cancel aimed at us must go through.
                await asyncio.gather(pending, return_exceptions=True)
        if pending in done:
            try:
                return pending.result()
            except ConnectionClosed:
                # The send failed because the link dropped in the same loop turn as the
                # reader noticed: a lost link, not a failure of the CS to process.
                raise LinkLost() from None
        if link.reader.done():
            raise LinkLost()
        raise TimeoutError()

    async def _send_quietly(self, link: _Link, payload: Any) -> Any | None:
        """A non-transaction message: the answer, or None (logged) when there is none."""
        try:
            async with self._call_lock:
                return await self._exchange(link, payload, self.response_timeout)
        except OCPPError as e:
            log.warning("session: %s got CALLERROR %s", type(payload).__name__, e.code)
        except TimeoutError:
            log.warning("session: %s not answered", type(payload).__name__)
        except LinkLost:
            pass
        return None

    async def _sleep_or(self, wake: _Wake, seconds: float | None) -> bool:
        """Wait until ``wake`` is set (True) or ``seconds`` pass on the clock (False).

        One future and callbacks, not a task per waiter: a FakeClock test that advances
        time right after a wake-up must find the new timer already registered."""
        if wake.is_set():
            return True
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        wake.waiters.add(done)
        sleeper = None
        if seconds is not None:
            sleeper = asyncio.ensure_future(self._ctx.clock.sleep(max(0.0, seconds)))
            sleeper.add_done_callback(lambda _t: done.done() or done.set_result(False))
        try:
            return await done
        finally:
            wake.waiters.discard(done)
            if sleeper is not None:
                sleeper.cancel()

    def _set_offline(self) -> None:
        if not self._online:
            return
        self._online = False
        self._online_event.clear()
        self._offline_event.set()
        self._ctx.emit("offline")
        log.info("session: offline")
