"""The link to the Central System: how to reach it (URL, security profile, TLS, Basic
auth, pings), the back-off between attempts, and one connection with its call path.

- URL ``<central_system.url>/<charge_point_id>``, or the url with ``{charge_point_id}``
  replaced (a trailing slash and a query string kept), subprotocol ``ocpp1.6``; a server
  that picks no subprotocol is refused. An HTTP answer to the handshake is logged with
  what it most likely means (`http_hint`); every failure waits out the bounded back-off.
- ``tls_without_auth``: wss with the server verified and no Basic auth (profile 0).
  Frames are bounded by ``websocket_options()``.
- Security profile in effect: the higher of the configured level and the SecurityProfile
  key (the CS may only raise it). 1: HTTP Basic over ws (user = charge point id, password =
  AuthorizationKey as changed by the CS, else the configured key). 2: the same over TLS >=
  1.2 verified against ``ca_file``. 3: TLS with the client certificate, no Basic auth.
  Passwords and Authorization headers never reach a log line or a "frame" event.
- Back-off: 1 s doubling, +-20 % jitter, and never more than ``max_s`` (30 s by default,
  ``central_system.reconnect_backoff_max_s``): the charger is back at most that long after
  the network is. Jitter spreads chargers out below the cap, never above it.
- One CP->CS CALL at a time on the link (OCPP-J §4.1.1): every call takes the channel's
  lock. A call never outlives its timeout, and a dropped link ends it at once instead of
  waiting for the library's response timeout.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import random
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
)

from evsed.controller import tls
from evsed.controller.clock import Clock
from evsed.controller.config import CP_ID_PLACEHOLDER, mask_url
from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.protocol import (
    OFFLOAD_FRAME_BYTES,
    SUBPROTOCOL,
    StrictChargePoint,
    websocket_options,
)
from evsed.controller.ocpp16.redaction import FILTER, redact

log = logging.getLogger(__name__)
# Given to websockets: at DEBUG it logs every handshake header, Authorization included.
ws_log = logging.getLogger(__name__ + ".ws")
ws_log.addFilter(FILTER)
log.addFilter(FILTER)

DEFAULT_BACKOFF_MAX_S = 30.0


# ---------------------------------------------------------------- back-off


@dataclass
class Backoff:
    """Exponential back-off with jitter: ``initial_s`` doubling, +-``jitter``, at most ``max_s``."""

    initial_s: float = 1.0
    max_s: float = DEFAULT_BACKOFF_MAX_S
    jitter: float = 0.2
    rng: Any = random.random
    _base: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._base = self.initial_s

    def next(self) -> float:
        base = self._base
        self._base = min(self.max_s, self._base * 2)
        jittered = base * (1.0 + self.jitter * (2.0 * self.rng() - 1.0))
        return min(self.max_s, max(0.0, jittered))

    def reset(self) -> None:
        self._base = self.initial_s


# ---------------------------------------------------------------- waiting


class Wake:
    """An asyncio.Event that resolves its waiters' futures directly (see `sleep_or`)."""

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


async def sleep_or(clock: Clock, wake: Wake, seconds: float | None) -> bool:
    """Wait until ``wake`` is set (True) or ``seconds`` pass on the clock (False).

    One future and callbacks, not a task per waiter: a FakeClock test that advances
    time right after a wake-up must find the new timer already registered."""
    if wake.is_set():
        return True
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    wake.waiters.add(done)
    sleeper = None
    if seconds is not None:
        sleeper = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
        sleeper.add_done_callback(lambda _t: done.done() or done.set_result(False))
    try:
        return await done
    finally:
        wake.waiters.discard(done)
        if sleeper is not None:
            sleeper.cancel()


# ---------------------------------------------------------------- one connection


class LinkLost(Exception):
    """The websocket closed while a CALL was outstanding."""


class FrameTap:
    """The connection as the charge point sees it: every frame also becomes a "frame" event.

    A frame above OFFLOAD_FRAME_BYTES is redacted in a worker thread: three regular
    expressions over a megabyte cost the loop tens of milliseconds."""

    def __init__(self, ws: ClientConnection, ctx: OcppContext) -> None:
        self.ws = ws
        self._ctx = ctx
        #: Set after each CALLRESULT the charge point sent (an answer is out on the wire).
        self.answered = asyncio.Event()

    async def recv(self) -> str | bytes:
        message = await self.ws.recv()
        if self._ctx.observers:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            await self._emit("cs->cp", text)
        return message

    async def send(self, message: str) -> None:
        if self._ctx.observers:
            await self._emit("cp->cs", message)
        await self.ws.send(message)
        if message.startswith("[3"):
            self.answered.set()

    async def _emit(self, direction: str, text: str) -> None:
        if len(text) > OFFLOAD_FRAME_BYTES:
            clean = await asyncio.to_thread(redact, text, FILTER.secrets)
        else:
            clean = redact(text, FILTER.secrets)
        self._ctx.emit("frame", direction=direction, raw=clean)


@dataclass
class Link:
    """One open connection: the websocket, the charge point reading it, and its tasks."""

    tap: FrameTap
    cp: StrictChargePoint
    reader: asyncio.Task[Any]
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def ws(self) -> ClientConnection:
        return self.tap.ws

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    @property
    def up(self) -> bool:
        return not self.reader.done()

    def bring_down(self) -> None:
        """End the connection from our side: the session's reconnect takes over."""
        self.reader.cancel()

    async def exchange(self, payload: Any, timeout: float, *, validated: bool = False) -> Any:
        """One CALL; the caller holds the channel's lock.

        Returns the library's result object; raises OCPPError (CALLERROR), TimeoutError
        or LinkLost. Racing the link's reader stops a dropped link from costing the full
        response timeout. ``validated``: the caller validates request and answer itself."""
        if self.reader.done():
            raise LinkLost()
        unique_id = str(uuid.uuid4())
        self.cp.expect_answer(unique_id)
        pending = asyncio.ensure_future(
            self.cp.call(
                payload, suppress=False, unique_id=unique_id, skip_schema_validation=validated
            )
        )
        try:
            done, _ = await asyncio.wait(
                {pending, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not pending.done():
                pending.cancel()
                # gather, not suppress(CancelledError): a cancel aimed at us must go through.
                await asyncio.gather(pending, return_exceptions=True)
            # Here in the caller's task: what the caller does with the answer up to its next
            # await comes before the receive loop routes the frame behind the answer.
            self.cp.answer_taken()
        if pending in done:
            try:
                return pending.result()
            except ConnectionClosed:
                # The send failed because the link dropped in the same loop turn as the
                # reader noticed: a lost link, not a failure of the CS to process.
                raise LinkLost() from None
        if self.reader.done():
            raise LinkLost()
        raise TimeoutError()


class Channel:
    """The one CP->CS call path of the session: one CALL at a time, on the current link."""

    def __init__(self, response_timeout: float) -> None:
        self.lock = asyncio.Lock()
        self.link: Link | None = None
        self.response_timeout = response_timeout

    async def exchange(
        self,
        link: Link,
        payload: Any,
        *,
        validated: bool = False,
        on_sent: Callable[[], object] | None = None,
    ) -> Any:
        """A CALL on ``link`` under the lock; raises as `Link.exchange` does. ``on_sent``
        is called with the lock held, just before the CALL goes out (a round trip's start:
        the wait for the lock is not part of it)."""
        async with self.lock:
            if on_sent is not None:
                on_sent()
            return await link.exchange(payload, self.response_timeout, validated=validated)

    async def send_quietly(
        self, link: Link | None, payload: Any, *, on_sent: Callable[[], object] | None = None
    ) -> Any | None:
        """A non-transaction message: the answer, or None (logged) when there is none."""
        if link is None:
            return None
        try:
            return await self.exchange(link, payload, on_sent=on_sent)
        except OCPPError as e:
            log.warning("session: %s got CALLERROR %s", type(payload).__name__, e.code)
        except TimeoutError:
            log.warning("session: %s not answered", type(payload).__name__)
        except LinkLost:
            pass
        return None


# ---------------------------------------------------------------- how to connect


@dataclass(frozen=True)
class ConnectSettings:
    """How to reach the CS; built fresh for every connection attempt."""

    url: str
    profile: int
    headers: dict[str, str]
    ssl: ssl.SSLContext | None
    password: str


def security_profile(cs: CentralSystemConfig, keys: ConfigurationKeys) -> int:
    """The profile in effect: the configured one, or higher if the CS raised the key."""
    level = cs.security_profile
    if keys.is_supported("SecurityProfile"):
        with suppress(ValueError, KeyError):
            level = max(level, keys.int("SecurityProfile"))
    return level


def _password(cs: CentralSystemConfig, keys: ConfigurationKeys) -> str:
    if keys.is_supported("AuthorizationKey"):
        with suppress(KeyError):
            changed = keys.value("AuthorizationKey")
            if changed:
                return changed
    return cs.authorization_key.get_secret_value()


def client_ssl_context(cs: CentralSystemConfig, profile: int) -> ssl.SSLContext:
    """The TLS context for ``wss://`` (profiles 2 and 3), built once at start-up with the
    key material (controller/tls.py): nothing is read, nor any passphrase asked, here."""
    return tls.client_context(cs, profile)


def central_system_url(template: str, charge_point_id: str, scheme: str | None = None) -> str:
    """The URL to open: the id where the template says {charge_point_id}, else appended as
    the last path segment; a trailing slash or a query string stays where it was written."""
    quoted = quote(charge_point_id, safe="")
    parts = urlsplit(template)
    if CP_ID_PLACEHOLDER in parts.path:
        path = parts.path.replace(CP_ID_PLACEHOLDER, quoted)
    elif CP_ID_PLACEHOLDER in parts.query:
        path = parts.path
    else:
        path = f"{parts.path.rstrip('/')}/{quoted}"
    query = parts.query.replace(CP_ID_PLACEHOLDER, quoted)
    return urlunsplit((scheme or parts.scheme, parts.netloc, path, query, ""))


def connect_settings(cs: CentralSystemConfig, keys: ConfigurationKeys) -> ConnectSettings:
    profile = security_profile(cs, keys)
    scheme = "wss" if profile >= 2 or cs.tls_without_auth else urlsplit(cs.url).scheme
    url = central_system_url(cs.url, cs.charge_point_id, scheme)
    headers: dict[str, str] = {}
    password = ""
    if profile in (1, 2):
        password = _password(cs, keys)
        token = base64.b64encode(f"{cs.charge_point_id}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = client_ssl_context(cs, profile) if scheme == "wss" else None
    return ConnectSettings(url, profile, headers, context, password)


def ping_settings(
    keys: ConfigurationKeys, interval: float | None, timeout: float | None
) -> tuple[float | None, float | None]:
    """(ping interval, ping timeout) for websockets: WebSocketPingInterval unless overridden;
    0 turns pings off. The new value applies to the next connection."""
    if interval is None:
        try:
            interval = float(keys.int("WebSocketPingInterval"))
        except (KeyError, ValueError):
            interval = 0.0
    if not interval or interval <= 0:
        return None, None
    return interval, interval if timeout is None else timeout


async def open_connection(
    ctx: OcppContext,
    *,
    open_timeout: float,
    close_timeout: float,
    ping_interval: float | None,
    ping_timeout: float | None,
) -> tuple[ClientConnection, ConnectSettings] | None:
    """Connect once; None (logged, "connect_failed" emitted) when it did not work."""
    cs = ctx.config.central_system
    try:
        settings = connect_settings(cs, ctx.keys)
    except (OSError, ssl.SSLError, ValueError) as e:
        log.error("session: cannot prepare the connection: %s", e)
        return None
    FILTER.secrets = (settings.password,) if settings.password else ()
    pi, pt = ping_settings(ctx.keys, ping_interval, ping_timeout)
    where = mask_url(settings.url)
    try:
        ws = await connect(
            settings.url,
            additional_headers=settings.headers or None,
            ssl=settings.ssl,
            open_timeout=open_timeout,
            ping_interval=pi,
            ping_timeout=pt,
            close_timeout=close_timeout,
            proxy=None,
            logger=ws_log,
            **websocket_options(cs.max_frame_bytes),
        )
    except InvalidStatus as e:
        status = e.response.status_code
        log.warning(
            "session: %s refused the connection: HTTP %d %s%s",
            where,
            status,
            e.response.reason_phrase,
            http_hint(status, settings.profile),
        )
        ctx.emit("connect_failed", url=where, http_status=status)
        return None
    except NegotiationError as e:
        log.warning("session: %s: %s (%s)", where, SUBPROTOCOL_REFUSED, e)
        ctx.emit("connect_failed", url=where, error="subprotocol")
        return None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ssl.SSLError) as e:
        reason, hint = connect_failure(e, settings.url, open_timeout)
        log.warning("session: cannot connect to %s: %s%s", where, reason, hint)
        ctx.emit("connect_failed", url=where, error=type(e).__name__, reason=reason)
        return None
    if ws.subprotocol != SUBPROTOCOL:
        log.warning("session: %s: %s, closing", where, SUBPROTOCOL_REFUSED)
        ctx.emit("connect_failed", url=where, error="subprotocol")
        await close_connection(ws, close_timeout)
        return None
    log.info("session: connected to %s (security profile %d)", where, settings.profile)
    return ws, settings


def connect_failure(e: BaseException, url: str, open_timeout: float) -> tuple[str, str]:
    """(what happened, what to check) for a connection that failed before any HTTP answer,
    in words: a new user read "ConnectionRefusedError: [Errno 111] Connect call failed
    ('127.0.0.1', 9000)" at every retry, and `evsed status` said "ConnectionRefusedError"."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        port = None
    host = parts.hostname or "?"
    where = f"{host}:{port}" if port else host
    if isinstance(e, ssl.SSLCertVerificationError):
        return (
            f"the server's TLS certificate is not trusted ({e.verify_message or e})",
            ": ca_file must name the CA that signed it",
        )
    if isinstance(e, ssl.SSLError):
        try:
            reason = e.reason
        except AttributeError:  # set by the ssl module's C code, not by SSLError(...)
            reason = None
        return (
            f"the TLS handshake failed ({reason or e})",
            ": is this a wss:// server?",
        )
    if isinstance(e, ConnectionRefusedError):
        return (
            f"connection refused: nothing listens on {where}",
            ": is the Central System running, and are the url's host and port right?",
        )
    if isinstance(e, socket.gaierror):
        return (
            f"the host name {host} is not known ({e.strerror or e})",
            ": check the url's host (and this machine's DNS)",
        )
    if isinstance(e, TimeoutError):
        return (
            f"no answer from {where} within {open_timeout:g} s",
            ": is the host up, the port right, a firewall dropping the connection?",
        )
    if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where} cannot be reached ({e.strerror})", ": is this machine's network up?"
    if isinstance(e, InvalidURI):
        return "the url is not a websocket URL", ': [central_system] url = "ws://host:port/path"'
    if isinstance(e, ConnectionError):
        return (
            f"the connection to {where} was closed during the handshake ({e.strerror or e})",
            ": a proxy or a server that is not OCPP 1.6J?",
        )
    if isinstance(e, InvalidHandshake):  # an answer that is no websocket handshake at all
        return (
            f"{where} did not answer as a websocket server ({e})",
            ": is the url's port the Central System's (not a web page or another service)?",
        )
    detail = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
    return f"{type(e).__name__}: {detail}", ""


SUBPROTOCOL_REFUSED = (
    f"the server did not accept the websocket subprotocol {SUBPROTOCOL}: "
    "is this URL an OCPP 1.6J endpoint (not 2.0.1, not a web page)?"
)


def http_hint(status: int, profile: int) -> str:
    """What an HTTP answer to the websocket handshake most likely means, for the log."""
    if status == 401:
        if profile in (1, 2):
            return ": the server refused the password (check authorization_key)"
        return ": the server wants a password (security_profile 1 or 2 with authorization_key)"
    if status == 403:
        return ": the server does not accept this charge point id (register it there)"
    if status == 404:
        return (
            ": no OCPP endpoint at this path (check the url and charge_point_id; "
            f"put {CP_ID_PLACEHOLDER} in the url where the server expects the id)"
        )
    if status >= 500:
        return (
            ": the server failed (some want a trailing slash after the id: "
            f'url = ".../{CP_ID_PLACEHOLDER}/")'
        )
    return ""


async def close_connection(ws: ClientConnection, close_timeout: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result when the
    # close completes in the same turn as a cancel of the caller, and the cancel is lost
    # (a session stop() then waited forever on the reconnect sleep that followed).
    with suppress(Exception):
        async with asyncio.timeout(close_timeout):
            await ws.close()
    with suppress(Exception):
        ws.transport.abort()
