"""The Core profile's CS->CP handlers (OCPP 1.6 §5): what the Central System may ask.

The handlers only *ask* the connectors (DESIGN: "the OCPP layer only asks, the connector
decides"). Anything that must call the CS, or that should reach the CS after our answer
(a StopTransaction after RemoteStopTransaction.conf), runs in an `@after` hook: the
receive loop must never await a CS call (LIBRARY-NOTES §4).

One `EvsedChargePoint` exists per websocket connection; whatever must outlive a
reconnect lives in the `OcppContext` (store, keys, charger), never on the instance,
except the few per-CALL notes an `@on` hands to its `@after` (keyed by the CALL's id).

Choices where the spec is silent (each also noted at its handler):
- ChangeAvailability for a connector id that does not exist: Rejected. Connector 0 applies
  to every connector; Scheduled when any of them has a transaction. The requested state is
  stored (even when Scheduled) and restored at start-up (§5.2 "persistent states").
- RemoteStartTransaction: Accepted means "a connector is free and we will try" (§5.11);
  with AuthorizeRemoteTxRequests the authorisation runs after the answer, and a refusal is
  only visible in the timeline (no transaction starts). connectorId 0, an unknown id, a
  busy / unavailable / faulted connector, or a chargingProfile whose purpose is not
  TxProfile: Rejected.
- UnlockConnector for an unknown connector (or 0): NotSupported.
- DataTransfer: vendorId compares case-insensitively (CiString255); a vendor handler that
  raises answers Rejected.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from ocpp.exceptions import OccurrenceConstraintViolationError
from ocpp.routing import after, on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.connector.machine import Connector
from evsed.controller.connector.status import ChargePointStatus, StopReason
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import TooManyKeys
from evsed.controller.ocpp16.protocol import StrictChargePoint

log = logging.getLogger(__name__)

#: The Core profile's CS->CP actions (OCPP 1.6 §3.1). The other profiles join in later.
CORE_ACTIONS = frozenset(
    {
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "DataTransfer",
        "GetConfiguration",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "UnlockConnector",
    }
)

#: Private store key (not an OCPP configuration key: ConfigurationKeys ignores it).
AVAILABILITY_KEY = "evsed.availability"

_FREE = (ChargePointStatus.AVAILABLE, ChargePointStatus.PREPARING)


# ---------------------------------------------------------------- availability persistence


def stored_availability(ctx: OcppContext) -> dict[int, bool]:
    """Connector id -> operative, as last requested by the CS (missing: operative)."""
    raw = ctx.store.config_values().get(AVAILABILITY_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(k): bool(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("stored availability %r unreadable, ignored", raw)
        return {}


def _store_availability(ctx: OcppContext, states: dict[int, bool]) -> None:
    ctx.store.set_config(AVAILABILITY_KEY, json.dumps({str(k): v for k, v in states.items()}))


def restore_availability(ctx: OcppContext) -> None:
    """At start-up: put every connector back in the availability the CS last asked for."""
    if ctx.charger is None:
        return
    for cid, operative in stored_availability(ctx).items():
        if cid in ctx.charger.connectors and not operative:
            ctx.charger.connector(cid).change_availability(False)


# ---------------------------------------------------------------- TxProfile (interim)


def tx_profile_limit(
    profile: dict[str, Any], started: datetime, now: datetime
) -> SmartChargingLimit | None:
    """The limit of the period of a TxProfile that is active at `now`, or None.

    Interim: the Smart Charging issue replaces this with composite schedules. `profile` is
    in the library's snake_case form. A Relative schedule starts with the transaction
    (`started`), an Absolute/Recurring one at its startSchedule (Recurring is not repeated
    here).
    """
    schedule = profile.get("charging_schedule") or {}
    periods = sorted(
        schedule.get("charging_schedule_period") or [], key=lambda p: p.get("start_period", 0)
    )
    if not periods:
        return None
    origin = started
    if profile.get("charging_profile_kind") != "Relative" and schedule.get("start_schedule"):
        try:
            origin = datetime.fromisoformat(str(schedule["start_schedule"]).replace("Z", "+00:00"))
        except ValueError:
            origin = started
    elapsed = (now - origin).total_seconds()
    duration = schedule.get("duration")
    if elapsed < 0 or (duration is not None and elapsed >= duration):
        return None
    active = None
    for period in periods:
        if period.get("start_period", 0) <= elapsed:
            active = period
    if active is None:
        return None
    unit = "W" if schedule.get("charging_rate_unit") == "W" else "A"
    return SmartChargingLimit(float(active["limit"]), unit)


# ---------------------------------------------------------------- the charge point


class EvsedChargePoint(StrictChargePoint):
    supported_actions = CORE_ACTIONS

    def __init__(self, cp_id: str, connection: Any, ctx: OcppContext, **kw: Any) -> None:
        super().__init__(cp_id, connection, **kw)
        self.ctx = ctx
        # CALL id -> the connector an @on chose, for its @after.
        self._chosen: dict[str, int] = {}

    # ------------------------------------------------------------ helpers

    def _connectors(self) -> dict[int, Connector]:
        return {} if self.ctx.charger is None else self.ctx.charger.connectors

    def _connector(self, connector_id: int | None) -> Connector | None:
        if connector_id is None:
            return None
        return self._connectors().get(connector_id)

    # ------------------------------------------------------------ ChangeAvailability §5.2

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str
    ) -> call_result.ChangeAvailability:
        connectors = self._connectors()
        if connector_id != 0 and connector_id not in connectors:
            return call_result.ChangeAvailability(status="Rejected")
        operative = type == "Operative"
        targets = list(connectors) if connector_id == 0 else [connector_id]
        states = stored_availability(self.ctx)
        for cid in targets:
            states[cid] = operative
        # Stored first: a Scheduled change must still happen after a restart (§5.2).
        _store_availability(self.ctx, states)
        answers = [connectors[cid].change_availability(operative) for cid in targets]
        status = "Scheduled" if "Scheduled" in answers else "Accepted"
        self.ctx.emit("availability", connector_id=connector_id, type=type, status=status)
        if connector_id == 0 and self.ctx.session is not None:
            self.ctx.session.status_changed(0)
        return call_result.ChangeAvailability(status=status)

    # ------------------------------------------------------------ ChangeConfiguration §5.3

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        status = self.ctx.keys.change(key, value)
        return call_result.ChangeConfiguration(status=status.value)

    # ------------------------------------------------------------ ClearCache §5.4

    @on(Action.clear_cache)
    def on_clear_cache(self) -> call_result.ClearCache:
        auth = self.ctx.authorizer
        ok = auth is not None and auth.clear_cache()
        return call_result.ClearCache(status="Accepted" if ok else "Rejected")

    # ------------------------------------------------------------ DataTransfer §5.6

    @on(Action.data_transfer)
    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> call_result.DataTransfer:
        handler = next(
            (
                h
                for v, h in self.ctx.vendor_handlers.items()
                if v.casefold() == vendor_id.casefold()
            ),
            None,
        )
        if handler is None:
            return call_result.DataTransfer(status="UnknownVendorId")
        try:
            # A vendor handler must not call the CS (it runs inside the receive loop).
            status, reply = await handler(message_id, data)
        except Exception:
            log.exception("DataTransfer handler for %s failed", vendor_id)
            return call_result.DataTransfer(status="Rejected")
        return call_result.DataTransfer(status=status, data=reply)

    # ------------------------------------------------------------ GetConfiguration §5.8

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        try:
            found, unknown = self.ctx.keys.get(key)
        except TooManyKeys as e:
            raise OccurrenceConstraintViolationError(description=str(e)) from e
        return call_result.GetConfiguration(
            configuration_key=found or None, unknown_key=unknown or None
        )

    # ------------------------------------------------------------ RemoteStartTransaction §5.11

    def _free_for(self, connector: Connector, id_tag: str) -> bool:
        if connector.transaction is not None or not connector.operative:
            return False
        status = connector.status.status
        if status == ChargePointStatus.RESERVED and connector.reservation is not None:
            return connector.reservation[1].casefold() == id_tag.casefold()
        return status in _FREE

    def _choose(self, connector_id: int | None, id_tag: str) -> Connector | None:
        if connector_id is not None:
            connector = self._connector(connector_id)
            return (
                connector if connector is not None and self._free_for(connector, id_tag) else None
            )
        candidates = [c for c in self._connectors().values() if self._free_for(c, id_tag)]
        # An EV already plugged in (Preparing) is the one the user is standing at.
        candidates.sort(key=lambda c: (c.status.status != ChargePointStatus.PREPARING, c.id))
        return candidates[0] if candidates else None

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(
        self,
        id_tag: str,
        call_unique_id: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
    ) -> call_result.RemoteStartTransaction:
        if charging_profile is not None and (
            charging_profile.get("charging_profile_purpose") != "TxProfile"
        ):
            return call_result.RemoteStartTransaction(status="Rejected")
        if connector_id == 0:
            return call_result.RemoteStartTransaction(status="Rejected")
        connector = self._choose(connector_id, id_tag)
        if connector is None:
            self.ctx.emit(
                "remote_start", id_tag=id_tag, connector_id=connector_id, status="Rejected"
            )
            return call_result.RemoteStartTransaction(status="Rejected")
        self._chosen[call_unique_id] = connector.id
        return call_result.RemoteStartTransaction(status="Accepted")

    @after(Action.remote_start_transaction)
    async def after_remote_start_transaction(
        self,
        id_tag: str,
        call_unique_id: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
    ) -> None:
        cid = self._chosen.pop(call_unique_id, None)
        connector = self._connector(cid)
        if connector is None:
            return
        parent: str | None = None
        if self._authorize_remote() and self.ctx.authorizer is not None:
            result = await self.ctx.authorizer.authorize(id_tag)
            if not result.accepted:
                log.info("RemoteStart for %s not authorised: %s", id_tag, result.status)
                self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status=result.status)
                return
            parent = result.parent_id_tag
        if not connector.authorize_remote(id_tag, parent):
            self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status="Refused")
            return
        self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status="Started")
        if charging_profile is not None:
            self._apply_tx_profile(connector.id, charging_profile)

    def _authorize_remote(self) -> bool:
        try:
            return self.ctx.keys.bool("AuthorizeRemoteTxRequests")
        except (KeyError, ValueError):
            return True

    def _apply_tx_profile(self, connector_id: int, profile: dict[str, Any]) -> None:
        if self.ctx.charger is None:
            return
        now = self.ctx.clock.now()
        limit = tx_profile_limit(profile, now, now)
        self.ctx.charger.set_smart_charging_limit(connector_id, limit)
        # The bridge clears it when the transaction (or the wait for the EV) ends.
        if self.ctx.reactions is not None:
            self.ctx.reactions.tx_profile_applied(connector_id)
        self.ctx.emit("tx_profile", connector_id=connector_id, limit=limit)

    # ------------------------------------------------------------ RemoteStopTransaction §5.12

    def _connector_of(self, transaction_id: int) -> Connector | None:
        tx = self.ctx.store.transaction_by_cs_id(transaction_id)
        if tx is None:
            return None
        connector = self._connector(tx.connector_id)
        if connector is None or connector.transaction is None:
            return None
        return connector if connector.transaction.local_id == tx.local_id else None

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int) -> call_result.RemoteStopTransaction:
        ok = self._connector_of(transaction_id) is not None
        return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.remote_stop_transaction)
    def after_remote_stop_transaction(self, transaction_id: int) -> None:
        # After the answer, so that the CS sees RemoteStopTransaction.conf first.
        connector = self._connector_of(transaction_id)
        if connector is not None:
            connector.request_stop(StopReason.REMOTE)

    # ------------------------------------------------------------ Reset §5.14

    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, type: str) -> None:
        reason = StopReason.HARD_RESET if type == "Hard" else StopReason.SOFT_RESET
        if self.ctx.session is not None:
            # Records the reason for whatever is still open at the next start, then restarts.
            self.ctx.session.request_reset(type)
        for connector in self._connectors().values():
            connector.request_stop(reason)  # each stop wakes the delivery itself

    # ------------------------------------------------------------ UnlockConnector §5.17

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int) -> call_result.UnlockConnector:
        connector = self._connector(connector_id)
        if connector is None:
            return call_result.UnlockConnector(status="NotSupported")
        return call_result.UnlockConnector(status=connector.unlock())
