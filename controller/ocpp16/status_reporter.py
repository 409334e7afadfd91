"""StatusNotification (OCPP 1.6 §4.9, §9.1.21 MinimumStatusDuration).

Each time the session goes online (after the first boot, and after every reconnect) the CS
gets connector 0 and every connector's *current* status: what happened while offline is
not replayed. Later changes are sent once they have lasted MinimumStatusDuration, and only
a status different from the last one sent is sent. `send_now` is for
TriggerMessage(StatusNotification): the current status of one connector or of all, sent
whether or not it changed.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime

from ocpp.v16 import call

from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus, ErrorCode
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.link import Channel, Link, Wake, sleep_or
from evsed.controller.ocpp16.txqueue import ocpp_timestamp

log = logging.getLogger(__name__)

_CI_STRING_50 = 50


class StatusReporter:
    def __init__(self, ctx: OcppContext, channel: Channel) -> None:
        self._ctx = ctx
        self._channel = channel
        self._wake = Wake()
        # connector id -> (monotonic time of the latest change, wall time it happened)
        self._changed: dict[int, tuple[float, datetime]] = {}
        self._since: dict[int, datetime] = {}
        self._last_sent: dict[int, ConnectorStatus] = {}

    def changed(self, connector_id: int) -> None:
        """The connector's status changed: report it once it has lasted long enough."""
        clock = self._ctx.clock
        self._changed[connector_id] = (clock.monotonic(), clock.now())
        self._since[connector_id] = clock.now()
        self._wake.set()

    def new_link(self) -> None:
        """Online on a fresh link: the CS is to hear every current status once."""
        self._last_sent.clear()
        self._changed.clear()

    async def run(self, link: Link) -> None:
        """Current statuses, then the debounced changes, on ``link`` (cancelled with it)."""
        for connector_id in self.connector_ids():
            await self._send(link, connector_id)
        while True:
            now = self._ctx.clock.monotonic()
            minimum = self._minimum_duration()
            wait: float | None = None
            for connector_id, entry in list(self._changed.items()):
                left = entry[0] + minimum - now
                if left <= 0:
                    if self._changed.get(connector_id) == entry:
                        del self._changed[connector_id]
                    await self._send(link, connector_id)
                else:
                    wait = left if wait is None else min(wait, left)
            if not self._changed or wait is not None:
                await sleep_or(self._ctx.clock, self._wake, wait)
                self._wake.clear()

    async def send_now(self, connector_id: int | None = None) -> int:
        """The current status of ``connector_id`` (all, connector 0 first, when None), sent
        now even if unchanged. Returns how many the CS answered."""
        link = self._channel.link
        if link is None:
            return 0
        ids = self.connector_ids() if connector_id is None else [connector_id]
        answered = 0
        for cid in ids:
            if await self._send(link, cid, force=True):
                answered += 1
        return answered

    def connector_ids(self) -> list[int]:
        charger = self._ctx.charger
        return [0] + ([] if charger is None else sorted(charger.connector_ids))

    def current(self, connector_id: int) -> ConnectorStatus:
        charger = self._ctx.charger
        if connector_id == 0:
            error = ErrorCode.NO_ERROR
            status = ChargePointStatus.AVAILABLE
            if charger is not None:
                if charger.reader_faulted:
                    error = ErrorCode.READER_FAILURE
                statuses = [charger.status(c).status for c in charger.connector_ids]
                if statuses and all(s is ChargePointStatus.UNAVAILABLE for s in statuses):
                    status = ChargePointStatus.UNAVAILABLE
            return ConnectorStatus(status, error)
        if charger is None or connector_id not in charger.connector_ids:
            raise KeyError(connector_id)
        return charger.status(connector_id)

    def _payload(self, connector_id: int, st: ConnectorStatus) -> call.StatusNotification:
        since = self._since.get(connector_id)
        return call.StatusNotification(
            connector_id=connector_id,
            error_code=str(st.error_code),
            status=str(st.status),
            info=st.info[:_CI_STRING_50] or None,
            vendor_error_code=st.vendor_error_code[:_CI_STRING_50] or None,
            timestamp=ocpp_timestamp(since or self._ctx.clock.now()),
        )

    async def _send(self, link: Link, connector_id: int, *, force: bool = False) -> bool:
        try:
            st = self.current(connector_id)
        except KeyError:
            log.warning("session: status of unknown connector %d not sent", connector_id)
            return False
        if not force and self._last_sent.get(connector_id) == st:
            return False
        # Recorded before sending: a CS that refuses it is not asked again and again.
        self._last_sent[connector_id] = st
        result = await self._channel.send_quietly(link, self._payload(connector_id, st))
        return result is not None

    def _minimum_duration(self) -> int:
        with suppress(KeyError, ValueError):
            return max(0, self._ctx.keys.int("MinimumStatusDuration"))
        return 0
