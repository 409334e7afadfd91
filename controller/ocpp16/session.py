"""The OCPP 1.6J session: one websocket to the Central System, kept up for ever.

`OcppSession` implements `SessionControl` (context.py) and puts the parts together:

- the link (link.py): URL, security profile, TLS, Basic auth, pings, back-off, the call
  channel (one CP->CS CALL at a time);
- boot and heartbeat (boot.py): BootNotification after start-up only, not on a reconnect;
- the status reporter (status_reporter.py): current statuses when online, then changes
  debounced by MinimumStatusDuration;
- transaction delivery (delivery.py) from the persistent queue (txqueue.py).

Each part has a public ``send_now`` for TriggerMessage: ``session.boot.send_now()``,
``session.heartbeat.send_now()``, ``session.status.send_now(connector_id | None)``,
``session.delivery.send_now()``.

Rules it keeps (OCPP 1.6 §4.2, §4.6, §4.9, §3.7; OCPP-J 1.6 §3, §5; Security Whitepaper §2):

- Reconnects for ever with the back-off, reset once online again (unless the link was
  brought down because one of its tasks failed: then the wait keeps growing).
- ``online`` is true only while connected, the boot of this process was Accepted, and the
  delivery loop runs. While Pending or Rejected nothing but BootNotification is sent
  (CS->CP calls are still answered by the charge point's handlers).
- Supervised: the heartbeat and status loops are restarted if they end or raise (logged,
  counted in ``task_failures``); if the delivery loop ends while its link is up, the
  session goes offline at once and brings the link down, so the reconnect restarts it.
- ``call()`` never outlives its timeout, and a dropped link ends it at once.

Timers of the protocol (heartbeat, boot retry, back-off, MinimumStatusDuration, retry
intervals, restarts) run on the injected clock; network timeouts (response timeout, pings)
are real time, since they are about a real socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from ocpp.exceptions import OCPPError
from websockets.exceptions import ConnectionClosed

from evsed.controller.ocpp16.boot import DEFAULT_BOOT_RETRY_S, BootReporter, HeartbeatReporter
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.delivery import TxDelivery
from evsed.controller.ocpp16.link import (
    Backoff,
    Channel,
    ConnectSettings,
    FrameTap,
    Link,
    LinkLost,
    close_connection,
    connect_settings,
    open_connection,
    security_profile,
)
from evsed.controller.ocpp16.protocol import StrictChargePoint
from evsed.controller.ocpp16.redaction import FILTER, redact
from evsed.controller.ocpp16.status_reporter import StatusReporter
from evsed.controller.ocpp16.supervise import keep_running, watch

__all__ = ["Backoff", "ConnectSettings", "OcppSession", "redact"]

log = logging.getLogger(__name__)
log.addFilter(FILTER)

ChargePointFactory = Callable[[str, Any], StrictChargePoint]
ResetCallback = Callable[[str], Awaitable[None]]


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session: %s failed", task.get_name(), exc_info=task.exception())


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
        cs = ctx.config.central_system
        self.backoff = backoff or Backoff(max_s=cs.reconnect_backoff_max_s)
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval_s
        self._ping_timeout = ping_timeout_s
        # After a ping timeout websockets still waits this long for the close handshake,
        # which a dead link never completes: it is part of the detection time.
        self._close_timeout = close_timeout_s
        self.charge_point_id = cs.charge_point_id

        self._channel = Channel(response_timeout)
        self.boot = BootReporter(ctx, self._channel, retry_s=boot_retry_s)
        self.heartbeat = HeartbeatReporter(ctx, self._channel)
        self.status = StatusReporter(ctx, self._channel)
        self.delivery = TxDelivery(ctx, self._channel)
        #: Supervised tasks that ended or raised, by name (tests and diagnostics read it).
        self.task_failures: Counter[str] = Counter()
        self._online = False
        self._online_event = asyncio.Event()
        self._offline_event = asyncio.Event()
        self._offline_event.set()
        self._hold_backoff = False
        self._main: asyncio.Task[None] | None = None
        self._reset_task: asyncio.Task[None] | None = None
        #: Back-off delays waited so far (tests and the timeline read them).
        self.reconnect_delays: list[float] = []
        #: The security profile of the current (or last) connection.
        self.profile_in_use: int | None = None
        ctx.keys.on_change("SecurityProfile", lambda _k, _v: self._profile_changed())
        if ctx.session is None:
            ctx.session = self

    # ------------------------------------------------------------ SessionControl

    @property
    def online(self) -> bool:
        return self._online

    @property
    def connected(self) -> bool:
        link = self._channel.link
        return link is not None and link.up

    @property
    def response_timeout(self) -> float:
        return self._channel.response_timeout

    @response_timeout.setter
    def response_timeout(self, value: float) -> None:
        self._channel.response_timeout = value

    @property
    def boot_result(self) -> Any:
        return self.boot.result

    def security_profile(self) -> int:
        """The profile the next connection uses (the configured one or the raised key)."""
        return security_profile(self._ctx.config.central_system, self._ctx.keys)

    def connect_settings(self) -> ConnectSettings:
        return connect_settings(self._ctx.config.central_system, self._ctx.keys)

    async def call(self, payload: Any, *, timeout: float | None = None) -> Any | None:
        limit = self._channel.response_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                async with self._channel.lock:
                    link = self._channel.link
                    if not self._online or link is None:
                        return None
                    return await link.exchange(payload, limit)
        except OCPPError as e:
            log.warning("%s answered with CALLERROR %s", type(payload).__name__, e.code)
        except (TimeoutError, LinkLost) as e:
            log.warning("%s got no answer: %s", type(payload).__name__, type(e).__name__)
        except Exception:
            log.exception("%s could not be sent", type(payload).__name__)
        return None

    def wake_delivery(self) -> None:
        self.delivery.send_now()

    async def send_boot_now(self) -> str | None:
        return await self.boot.send_now()

    async def send_heartbeat_now(self) -> bool:
        return await self.heartbeat.send_now()

    async def send_status_now(self, connector_id: int | None) -> int:
        return await self.status.send_now(connector_id)

    def status_changed(self, connector_id: int) -> None:
        self.status.changed(connector_id)

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
        async with asyncio.timeout(timeout):
            await self._online_event.wait()

    async def wait_offline(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._offline_event.wait()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._main is None or self._main.done():
            self._main = asyncio.ensure_future(self._run())
            self._main.set_name("ocpp-session")

    async def stop(self) -> None:
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            # wait(), not `await main` under suppress(CancelledError): that would also
            # swallow a cancel of stop()'s own caller.
            await asyncio.wait({main})
            if not main.cancelled() and main.exception() is not None:
                log.error("session: ended with an error", exc_info=main.exception())
        self._set_offline()

    # ------------------------------------------------------------ the connection loop

    async def _run(self) -> None:
        me = asyncio.current_task()
        while True:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session: connection attempt failed unexpectedly")
            if me is not None and me.cancelling():
                # A stop() whose CancelledError a library swallowed (wait_for on 3.11 does,
                # in a race): honour it here rather than sleep until a reconnect forever.
                raise asyncio.CancelledError
            delay = self.backoff.next()
            self.reconnect_delays.append(delay)
            self._ctx.emit("reconnect_wait", seconds=delay)
            await self._ctx.clock.sleep(delay)

    async def _connect_once(self) -> None:
        opened = await open_connection(
            self._ctx,
            open_timeout=self._open_timeout,
            close_timeout=self._close_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
        )
        if opened is None:
            return
        ws, settings = opened
        self.profile_in_use = settings.profile
        try:
            await self._serve(FrameTap(ws, self._ctx))
        finally:
            self._set_offline()
            await close_connection(ws, self._close_timeout)

    async def _serve(self, tap: FrameTap) -> None:
        cp = self._factory(self.charge_point_id, tap)
        cp.logger.addFilter(FILTER)
        reader = asyncio.ensure_future(cp.start())
        reader.set_name("ocpp-reader")
        link = Link(tap, cp, reader)
        reader.add_done_callback(
            lambda _t: self._set_offline() if self._channel.link is link else None
        )
        self._channel.link = link
        driver = asyncio.ensure_future(self._drive(link))
        driver.set_name("ocpp-driver")
        try:
            await asyncio.wait({reader, driver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._channel.link = None
            self._set_offline()
            for task in (driver, *link.tasks, reader):
                task.cancel()
            cp.cancel_background_tasks()
            await asyncio.gather(driver, *link.tasks, reader, return_exceptions=True)
        if driver.done() and not driver.cancelled():
            error = driver.exception()
            if error is not None and not isinstance(error, LinkLost):
                log.error("session: driver failed", exc_info=error)
        log.info("session: link closed (%s)", _why_closed(reader))

    # ------------------------------------------------------------ boot, then online

    async def _drive(self, link: Link) -> None:
        if self.boot.needed:
            await self.boot.until_accepted(link)
        self.status.new_link()
        if not self._hold_backoff:
            self.backoff.reset()
        self._hold_backoff = False
        clock, failures = self._ctx.clock, self.task_failures
        delivery = link.spawn(self.delivery.run(link), "ocpp-delivery")
        watch(
            delivery,
            "session: delivery loop",
            lambda: self._task_failed(link),
            failures,
            expected=lambda: not link.up,
        )
        self._set_online()
        link.spawn(
            keep_running(
                "session: status loop",
                lambda: self.status.run(link),
                clock=clock,
                failures=failures,
            ),
            "ocpp-status",
        )
        await keep_running(
            "session: heartbeat loop",
            lambda: self.heartbeat.run(link),
            clock=clock,
            failures=failures,
        )

    def _profile_changed(self) -> None:
        """SecurityProfile raised (Whitepaper §2: accepted, then reconnect with it)."""
        link = self._channel.link
        if link is None or self.profile_in_use is None:
            return
        if self.security_profile() > self.profile_in_use:
            link.tap.answered.clear()
            link.spawn(self._reconnect_after_answer(link), "ocpp-profile-reconnect")

    async def _reconnect_after_answer(self, link: Link) -> None:
        # The ChangeConfiguration answer is sent after the listener returned: close once it
        # is out, so the CS hears Accepted before the link goes.
        with suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await link.tap.answered.wait()
        log.info("session: security profile %d now: reconnecting", self.security_profile())
        self._set_offline()
        await close_connection(link.ws, self._close_timeout)

    def _task_failed(self, link: Link) -> None:
        """A task the link cannot do without died: offline now, and reconnect."""
        if self._channel.link is not link:
            return
        self._set_offline()
        self._hold_backoff = True
        link.bring_down()

    def _set_online(self) -> None:
        self._online = True
        self._offline_event.clear()
        self._online_event.set()
        self._ctx.emit("online")
        log.info("session: online")

    def _set_offline(self) -> None:
        if not self._online:
            return
        self._online = False
        self._online_event.clear()
        self._offline_event.set()
        self._ctx.emit("offline")
        log.info("session: offline")


def _why_closed(reader: asyncio.Task[Any]) -> str:
    """What ended a link, for the log line that says it closed: the close code and reason
    (1006: the connection was cut without a close frame), our own side, or a receive loop
    that failed (logged with its traceback: a link must never go down without a trace)."""
    if not reader.done():
        return "closed by evsed"
    if reader.cancelled():
        return "brought down by evsed"
    error = reader.exception()
    if isinstance(error, ConnectionClosed):
        frame = error.rcvd
        if frame is None:
            return "cut without a close frame (1006)"
        reason = f" ({frame.reason})" if frame.reason else ""
        return f"closed by the Central System: code {frame.code}{reason}"
    if error is None:
        return "the receive loop ended"
    log.error("session: the receive loop failed", exc_info=error)
    return f"the receive loop failed: {type(error).__name__}"
