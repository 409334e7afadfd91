"""Reservation (OCPP 1.6 §3.12, §5.1, §5.13, §9.3): ReserveNow and CancelReservation.

The connector holds the reservation and decides (`ChargePointPort.reserve`): Faulted,
Unavailable or Occupied (a transaction, an EV plugged or a card waiting), and its start gate
refuses every idTag but the reserved one or one of the reserved parentIdTag. It frees the
reservation itself when the reserved transaction starts (whose StartTransaction carries the
reservationId). The store keeps what was Accepted, durably before the answer, so that a
restart gives the connector back its reservation (`restore_reservations`).

Expiry: a timer (`ExpiryTimers`, on the injected clock) is armed for each Accepted or
restored reservation and fires at its expiryDate: the connector is told to drop it (its
StatusNotification Available follows), the stored row goes, and "reservation_expired" is
emitted, without waiting for any other message. CancelReservation, the reserved
transaction's start (`reservation_used`) and a connector that ended the reservation itself
(Unavailable, Faulted: `forget_freed`) cancel the timer. One that expired while evsed was
stopped is dropped at start-up, before the connectors are reserved, so they come up
Available. (The connector also drops a reservation past its expiry on its own tick and a
start after expiryDate is not held back by it: the timer is not what keeps it safe, only
what ends it on time.)

Choices where the spec is silent:
- connectorId 0: Rejected unless ReserveConnectorZeroSupported, which the configuration sets
  (`[authorization] reserve_connector_zero`). Then the charger holds it (any connector for
  the idTag or its group) and keeps one connector free for it: another idTag may not take
  the last Available connector. Accepted while a connector is Available, else Occupied
  (Faulted or Unavailable when every connector is so); it ends like the others.
- A connectorId that does not exist, or an expiryDate not in the future: Rejected.
- The same reservationId on another connector: the new connector is asked first; only if it
  accepts is the old reservation released (a refusal leaves the old one as it was).
- A connector reserved under another reservationId: Occupied (§5.13 "reserved for the same
  or another idTag").
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.ocpp16.expiry import ExpiryTimers
from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key
from evsed.controller.store.reservations import Reservation as StoredReservation

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext

log = logging.getLogger(__name__)

NAME = "Reservation"


def _parse_expiry(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # §3.14: times are UTC
    return parsed.astimezone(UTC)


def _reservable(ctx: OcppContext, connector_id: int) -> bool:
    """A connector that may hold a reservation: one of the charger's, or 0 (the whole
    charger) when ReserveConnectorZeroSupported."""
    charger = ctx.charger
    if charger is None:
        return False
    if connector_id == 0:
        try:
            return ctx.keys.bool("ReserveConnectorZeroSupported")
        except (KeyError, ValueError):
            return False
    return connector_id in charger.connector_ids


def timers(ctx: OcppContext) -> ExpiryTimers:
    """The context's reservation timers (made on first use; `OcppApp.stop` closes them)."""
    if ctx.reservation_timers is None:
        ctx.reservation_timers = ExpiryTimers(
            ctx.clock, lambda reservation_id: _expired(ctx, reservation_id), name="reservation"
        )
    return ctx.reservation_timers


def _expired(ctx: OcppContext, reservation_id: int) -> None:
    """The timer of `reservation_id` fired: its expiryDate came (§5.13)."""
    stored = ctx.store.reservation_get(reservation_id)
    if stored is None:
        return
    if stored.expiry > ctx.clock.now():  # replaced by a later one meanwhile
        timers(ctx).arm(reservation_id, stored.expiry)
        return
    if ctx.charger is not None:
        # False when the connector already let it go on its tick: nothing left to end.
        ctx.charger.cancel_reservation(stored.connector_id, reservation_id)
    ctx.store.reservation_delete(reservation_id)
    log.info("reservation %s on connector %s expired", reservation_id, stored.connector_id)
    ctx.emit("reservation_expired", reservation_id=reservation_id, connector_id=stored.connector_id)


def reservation_used(ctx: OcppContext, reservation_id: int) -> None:
    """The reserved transaction started (§5.13): the reservation is used up, and a restart
    must not bring it back."""
    timers(ctx).cancel(reservation_id)
    ctx.store.reservation_delete(reservation_id)


def forget_freed(ctx: OcppContext) -> None:
    """Drop the stored reservations the connectors no longer hold (the reserved transaction
    started, or the connector let it expire)."""
    charger = ctx.charger
    if charger is None:
        return
    for stored in ctx.store.reservations():
        held = (
            charger.reservation(stored.connector_id)
            if _reservable(ctx, stored.connector_id)
            else None
        )
        if held is None or held.reservation_id != stored.reservation_id:
            timers(ctx).cancel(stored.reservation_id)
            ctx.store.reservation_delete(stored.reservation_id)


def restore_reservations(ctx: OcppContext) -> None:
    """At start-up: give each connector back the reservation it held, but not one that
    expired meanwhile, nor one the connector can no longer take (§5.13: a reservation ends
    when its connector becomes Unavailable or Faulted)."""
    charger = ctx.charger
    if charger is None:
        return
    for gone in ctx.store.reservations_expire(ctx.clock.now()):
        log.info("reservation %s expired while evsed was stopped", gone.reservation_id)
    for stored in ctx.store.reservations():
        status = "Rejected"
        if _reservable(ctx, stored.connector_id):
            status = charger.reserve(
                stored.connector_id,
                stored.reservation_id,
                stored.id_tag,
                stored.parent_id_tag,
                stored.expiry,
            )
        if status == "Accepted":
            timers(ctx).arm(stored.reservation_id, stored.expiry)
            log.info(
                "reservation %s restored on connector %s",
                stored.reservation_id,
                stored.connector_id,
            )
        else:
            log.warning(
                "reservation %s on connector %s dropped at start-up: %s",
                stored.reservation_id,
                stored.connector_id,
                status,
            )
            ctx.store.reservation_delete(stored.reservation_id)


class ReservationHandlers:
    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx

    @on(Action.reserve_now)
    def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        parent_id_tag: str | None = None,
    ) -> call_result.ReserveNow:
        status = self._reserve(connector_id, expiry_date, id_tag, reservation_id, parent_id_tag)
        log.info("ReserveNow %s on connector %s: %s", reservation_id, connector_id, status)
        self.ctx.emit(
            "reserve_now", connector_id=connector_id, reservation_id=reservation_id, status=status
        )
        return call_result.ReserveNow(status=status)

    def _reserve(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        parent_id_tag: str | None,
    ) -> str:
        charger = self.ctx.charger
        if charger is None or not _reservable(self.ctx, connector_id):
            return "Rejected"  # connector 0 unless supported: see the module's docstring
        expiry = _parse_expiry(expiry_date)
        if expiry is None or expiry <= self.ctx.clock.now():
            return "Rejected"
        forget_freed(self.ctx)
        held = charger.reservation(connector_id)
        if held is not None and held.reservation_id != reservation_id:
            return "Occupied"
        previous = self.ctx.store.reservation_get(reservation_id)
        status = charger.reserve(connector_id, reservation_id, id_tag, parent_id_tag, expiry)
        if status != "Accepted":
            return status
        if previous is not None and previous.connector_id != connector_id:
            charger.cancel_reservation(previous.connector_id, reservation_id)
        try:
            self.ctx.store.reservation_put(
                StoredReservation(reservation_id, connector_id, id_tag, expiry, parent_id_tag)
            )
        except Exception:
            # Not durable, so not held: a restart would hand the connector to anyone.
            charger.cancel_reservation(connector_id, reservation_id)
            raise
        timers(self.ctx).arm(reservation_id, expiry)
        return "Accepted"

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int) -> call_result.CancelReservation:
        charger = self.ctx.charger
        status = "Rejected"
        if charger is not None:
            forget_freed(self.ctx)
            stored = self.ctx.store.reservation_get(reservation_id)
            if stored is not None:
                timers(self.ctx).cancel(reservation_id)
                charger.cancel_reservation(stored.connector_id, reservation_id)
                self.ctx.store.reservation_delete(reservation_id)
                status = "Accepted"
        log.info("CancelReservation %s: %s", reservation_id, status)
        self.ctx.emit("cancel_reservation", reservation_id=reservation_id, status=status)
        return call_result.CancelReservation(status=status)


PROFILE = declare(
    NAME,
    cs_to_cp={"CancelReservation", "ReserveNow"},
    keys=(key("ReserveConnectorZeroSupported", KeyType.BOOL, Access.R, "false"),),
    handlers=ReservationHandlers,
)
