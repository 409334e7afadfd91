"""BootNotification and Heartbeat (OCPP 1.6 §4.2, §4.6, §9.1.10).

Boot: once after start-up (a Reset restarts the process, so after a reset too), and again
only while the last answer was not Accepted. A reconnect of a charger whose boot was
Accepted goes straight back online: a CS may take a second BootNotification for a reboot
and close the open transactions. While Pending or Rejected the boot is retried after the
interval the CS gave (or ``retry_s``); nothing else is sent meanwhile.

HeartbeatInterval: an Accepted boot's interval becomes the key's value, unless the CS has
set HeartbeatInterval itself (ChangeConfiguration) since this process started: the CS's
explicit choice wins over any later boot answer (a triggered BootNotification, say).
After a restart the first boot's interval applies again.

Both answers carry the CS's time, which becomes the clock's offset.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.link import Channel, Link, LinkLost, Wake, sleep_or
from evsed.controller.ocpp16.redaction import FILTER

log = logging.getLogger(__name__)
log.addFilter(FILTER)

DEFAULT_HEARTBEAT_S = 300
DEFAULT_BOOT_RETRY_S = 60


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def learn_time(ctx: OcppContext, current_time: Any, sent_at: float | None = None) -> None:
    """CS time minus local time, into the clock (SystemClock/FakeClock have offset_s).

    ``sent_at``: our wall time (``clock.now().timestamp()``) when the request went out. The
    CS read its clock at some instant between then and now: a time it gives inside that
    round trip agrees with ours, and ours is kept (taken as of the answer's arrival, every
    late answer stepped the clock back by its latency and moved the schedules' boundaries);
    one outside it is taken as of the middle of the round trip."""
    cs_time = parse_time(current_time)
    clock = ctx.clock
    if cs_time is None or not hasattr(clock, "offset_s"):
        return
    shown = clock.now().timestamp()
    sent = shown if sent_at is None else min(sent_at, shown)
    local = shown - float(clock.offset_s)
    cs_s = cs_time.timestamp()
    # Whole seconds: the CS's clock read somewhere in [cs_s, cs_s + 1); taking cs_s itself
    # put every timestamp half a second behind on average.
    resolution = 1.0 if cs_time.microsecond == 0 else 0.0
    if cs_s <= shown and sent <= cs_s + resolution:
        cs_s = shown  # the two clocks agree within what the answer can tell
    else:
        cs_s += resolution / 2 + (shown - sent) / 2
    offset = cs_s - local
    moved = abs(offset - float(clock.offset_s)) >= 1.0
    clock.offset_s = offset
    if moved and ctx.smart_charging is not None:
        # Schedules are written in the CS's time: the next boundary is due anew.
        ctx.smart_charging.reevaluate()


class BootReporter:
    """BootNotification: `until_accepted` when the session connects and `needed` says so;
    `send_now` for TriggerMessage(BootNotification)."""

    def __init__(
        self, ctx: OcppContext, channel: Channel, *, retry_s: float = DEFAULT_BOOT_RETRY_S
    ) -> None:
        self._ctx = ctx
        self._channel = channel
        self.retry_s = retry_s
        #: The last answer (the library's result object), None before one came.
        self.result: Any = None
        self._status: str | None = None
        self._writing_interval = False
        self._interval_from_cs = False
        ctx.keys.on_change("HeartbeatInterval", self._heartbeat_interval_changed)

    @property
    def needed(self) -> bool:
        """True until a BootNotification of this process was Accepted (and again if a
        later one was not)."""
        return self._status != "Accepted"

    def payload(self) -> call.BootNotification:
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

    async def until_accepted(self, link: Link) -> None:
        """BootNotification on ``link`` until Accepted; raises LinkLost if the link goes."""
        while True:
            status, interval = await self._send(link)
            if status == "Accepted":
                return
            await self._ctx.clock.sleep(interval if interval > 0 else self.retry_s)

    async def send_now(self) -> str | None:
        """One BootNotification now on the current link; the answer's status, or None
        (offline, no answer, CALLERROR). An answer other than Accepted makes the next
        connection boot again."""
        link = self._channel.link
        if link is None:
            return None
        with suppress(LinkLost):
            status, _ = await self._send(link)
            return status
        return None

    async def _send(self, link: Link) -> tuple[str | None, int]:
        result = None
        sent: list[float] = []
        try:
            result = await self._channel.exchange(
                link, self.payload(), on_sent=lambda: sent.append(self._ctx.clock.now().timestamp())
            )
        except OCPPError as e:
            log.warning("session: BootNotification answered with CALLERROR %s", e.code)
        except TimeoutError:
            log.warning("session: BootNotification not answered")
        self.result = result
        status = getattr(result, "status", None)
        interval = int(getattr(result, "interval", 0) or 0)
        if status is not None:
            self._status = str(status)
            learn_time(self._ctx, getattr(result, "current_time", None), *sent)
        self._ctx.emit("boot", status=status, interval=interval)
        if status == "Accepted":
            log.info("session: boot accepted (heartbeat interval %ss)", interval or "default")
            self._adopt_interval(interval)
        elif status is not None:
            log.warning("session: boot %s, retrying in %ss", status, interval or "default")
        return status, interval

    def _adopt_interval(self, interval: int) -> None:
        if interval <= 0 or self._interval_from_cs:
            return
        self._writing_interval = True
        try:
            self._ctx.keys.change("HeartbeatInterval", str(interval))
        finally:
            self._writing_interval = False

    def _heartbeat_interval_changed(self, _key: str, _value: str) -> None:
        if not self._writing_interval:
            self._interval_from_cs = True


class HeartbeatReporter:
    """Heartbeat every HeartbeatInterval seconds while online; a change of the key restarts
    the timer. `send_now` for TriggerMessage(Heartbeat), which restarts the timer too."""

    def __init__(self, ctx: OcppContext, channel: Channel) -> None:
        self._ctx = ctx
        self._channel = channel
        self._restart = Wake()
        ctx.keys.on_change("HeartbeatInterval", lambda _k, _v: self._restart.set())

    def interval(self) -> int:
        with suppress(KeyError, ValueError):
            value = self._ctx.keys.int("HeartbeatInterval")
            if value > 0:
                return value
        return DEFAULT_HEARTBEAT_S

    async def run(self, link: Link) -> None:
        """Heartbeats on ``link``, for ever (cancelled with the link)."""
        self._restart.clear()
        while True:
            if await sleep_or(self._ctx.clock, self._restart, self.interval()):
                self._restart.clear()
                continue  # the timer starts again with the (new) interval
            await self._send(link)

    async def send_now(self) -> bool:
        """A Heartbeat now on the current link; True when the CS answered."""
        link = self._channel.link
        if link is None:
            return False
        self._restart.set()
        return await self._send(link)

    async def _send(self, link: Link) -> bool:
        sent: list[float] = []
        result = await self._channel.send_quietly(
            link, call.Heartbeat(), on_sent=lambda: sent.append(self._ctx.clock.now().timestamp())
        )
        if result is None:
            return False
        learn_time(self._ctx, getattr(result, "current_time", None), *sent)
        return True
