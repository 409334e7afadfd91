"""The reservation of connector 0 (OCPP 1.6 §5.13): any connector of the charger for one
idTag (or its group), until it expires, is cancelled or that tag starts a transaction.

While it holds, the charger keeps at least one connector free for it: every connector's
start gate asks `refusal`, which refuses another idTag the last Available connector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from evsed.controller.clock import Clock
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.status import RESERVED_FOR_ANOTHER, ChargePointStatus
from evsed.controller.snapshot import Reservation


def _matches(held: Reservation, id_tag: str, parent_id_tag: str | None) -> bool:
    if id_tag.casefold() == held.id_tag.casefold():
        return True
    return (
        held.parent_id_tag is not None
        and parent_id_tag is not None
        and held.parent_id_tag.casefold() == parent_id_tag.casefold()
    )


class ChargerReservation:
    """Implements `ChargerWideReservation`; set from the loop, asked on the safety core."""

    def __init__(
        self,
        connectors: Callable[[], Mapping[int, Connector]],
        clock: Clock,
    ) -> None:
        self._connectors = connectors
        self._clock = clock
        self._lock = threading.Lock()
        self._held: Reservation | None = None
        self._expiry: datetime | None = None

    def _current(self) -> Reservation | None:
        """The reservation, None once its expiryDate came (it ends then, §5.13)."""
        if self._held is not None and self._expiry is not None:
            if self._clock.now() >= self._expiry:
                self._held = self._expiry = None
        return self._held

    @property
    def held(self) -> Reservation | None:
        with self._lock:
            return self._current()

    def _available(self) -> list[int]:
        return [
            cid
            for cid, c in self._connectors().items()
            if c.status.status == ChargePointStatus.AVAILABLE
        ]

    def reserve(self, reservation: Reservation, expiry: datetime) -> str:
        """ReserveNow(0): Accepted while a connector is Available; else what keeps them."""
        with self._lock:
            held = self._current()
            if held is not None and held.reservation_id != reservation.reservation_id:
                return "Occupied"
            if not self._available():
                statuses = {c.status.status for c in self._connectors().values()}
                if statuses == {ChargePointStatus.FAULTED}:
                    return "Faulted"
                if statuses == {ChargePointStatus.UNAVAILABLE}:
                    return "Unavailable"
                return "Occupied"
            self._held, self._expiry = reservation, expiry
            return "Accepted"

    def cancel(self, reservation_id: int) -> bool:
        with self._lock:
            held = self._current()
            if held is None or held.reservation_id != reservation_id:
                return False
            self._held = self._expiry = None
            return True

    # ------------------------------------------------------------ ChargerWideReservation

    def refusal(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> str | None:
        with self._lock:
            held = self._current()
            if held is None or _matches(held, id_tag, parent_id_tag):
                return None
            others = [cid for cid in self._available() if cid != connector_id]
            return None if others else RESERVED_FOR_ANOTHER

    def claim(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> int | None:
        with self._lock:
            held = self._current()
            if held is None or not _matches(held, id_tag, parent_id_tag):
                return None
            self._held = self._expiry = None
            return held.reservation_id
