"""Core (OCPP 1.6 §3.1, §4, §5, §9.1): its actions, its configuration keys and `CoreHandlers`,
which answers what the Central System may ask.

The handlers only *ask* the charger, through `ChargePointPort` (DESIGN: "the OCPP layer
only asks, the connector decides"). Anything that must call the CS, or that should reach
the CS after our answer (a StopTransaction after RemoteStopTransaction.conf), runs in an
`@after` hook: the receive loop must never await a CS call (LIBRARY-NOTES §4).

One `CoreHandlers` exists per websocket connection; whatever must outlive a reconnect lives
in the `OcppContext` (store, keys, charger), never on the instance, except the few per-CALL
notes an `@on` hands to its `@after` (keyed by the CALL's id).

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
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import OccurrenceConstraintViolationError
from ocpp.routing import after, on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.connector.status import (
    RESERVED_FOR_ANOTHER,
    ChargePointStatus,
    StopReason,
)
from evsed.controller.masking import mask_tag
from evsed.controller.ocpp16.profiles.base import Access, KeyType, TooManyKeys, declare, key
from evsed.controller.ocpp16.profiles.smart_charging import remote_start_profile
from evsed.controller.ocpp16.protocol import answered_in_background

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext
    from evsed.controller.ocpp16.port import ChargePointPort

log = logging.getLogger(__name__)

NAME = "Core"

#: Private store key (not an OCPP configuration key: ConfigurationKeys ignores it).
AVAILABILITY_KEY = "evsed.availability"

_FREE = (ChargePointStatus.AVAILABLE, ChargePointStatus.PREPARING)
_B, _I, _C = KeyType.BOOL, KeyType.INT, KeyType.CSL
_R, _RW = Access.R, Access.RW
_DAY = 86400


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
    charger = ctx.charger
    if charger is None:
        return
    for cid, operative in stored_availability(ctx).items():
        if cid in charger.connector_ids and not operative:
            charger.change_availability(cid, False)


# ---------------------------------------------------------------- the handlers


class CoreHandlers:
    """The Core profile's CS->CP handlers (`@on` / `@after`, routed by the library)."""

    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx
        # CALL id -> the connector an @on chose, for its @after.
        self._chosen: dict[str, int] = {}

    @property
    def _ids(self) -> tuple[int, ...]:
        return () if self.ctx.charger is None else self.ctx.charger.connector_ids

    def _port(self, connector_id: int | None) -> ChargePointPort | None:
        """The charger, if `connector_id` names one of its connectors."""
        charger = self.ctx.charger
        if charger is None or connector_id not in charger.connector_ids:
            return None
        return charger

    # ------------------------------------------------------------ ChangeAvailability §5.2

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str
    ) -> call_result.ChangeAvailability:
        charger = self.ctx.charger
        ids = self._ids
        if charger is None or (connector_id != 0 and connector_id not in ids):
            return call_result.ChangeAvailability(status="Rejected")
        operative = type == "Operative"
        targets = list(ids) if connector_id == 0 else [connector_id]
        states = stored_availability(self.ctx)
        for cid in targets:
            states[cid] = operative
        # Stored first: a Scheduled change must still happen after a restart (§5.2).
        _store_availability(self.ctx, states)
        answers = [charger.change_availability(cid, operative) for cid in targets]
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

    def _free_for(self, charger: ChargePointPort, cid: int, id_tag: str) -> bool:
        if charger.transaction(cid) is not None:
            return False
        refusal = charger.start_refusal(cid, id_tag, None)
        if refusal == RESERVED_FOR_ANOTHER:
            # A tag of the reservation's group is known as one only after its Authorize:
            # accepted here, the connector's gate decides with the parentIdTag.
            reservation = charger.reservation(cid)
            return (
                reservation is not None
                and reservation.parent_id_tag is not None
                and self._authorize_remote()
            )
        if refusal is not None:
            return False
        return charger.status(cid).status in (*_FREE, ChargePointStatus.RESERVED)

    def _choose(self, connector_id: int | None, id_tag: str) -> int | None:
        charger = self.ctx.charger
        if charger is None:
            return None
        if connector_id is not None:
            ok = self._port(connector_id) is not None and self._free_for(
                charger, connector_id, id_tag
            )
            return connector_id if ok else None
        candidates = [c for c in charger.connector_ids if self._free_for(charger, c, id_tag)]
        # An EV already plugged in (Preparing) is the one the user is standing at.
        candidates.sort(key=lambda c: (charger.status(c).status != ChargePointStatus.PREPARING, c))
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
        chosen = self._choose(connector_id, id_tag)
        if chosen is None:
            self.ctx.emit(
                "remote_start", id_tag=id_tag, connector_id=connector_id, status="Rejected"
            )
            return call_result.RemoteStartTransaction(status="Rejected")
        self._chosen[call_unique_id] = chosen
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
        charger = self._port(cid)
        if charger is None or cid is None:
            return
        parent: str | None = None
        if self._authorize_remote() and self.ctx.authorizer is not None:
            result = await self.ctx.authorizer.authorize(id_tag)
            if not result.accepted:
                log.info("RemoteStart for %s not authorised: %s", mask_tag(id_tag), result.status)
                self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status=result.status)
                return
            parent = result.parent_id_tag
        if not charger.start_remote(cid, id_tag, parent):
            self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status="Refused")
            return
        self.ctx.emit("remote_start", id_tag=id_tag, connector_id=cid, status="Started")
        if charging_profile is not None:
            self._apply_tx_profile(charger, cid, charging_profile)

    def _authorize_remote(self) -> bool:
        try:
            return self.ctx.keys.bool("AuthorizeRemoteTxRequests")
        except (KeyError, ValueError):
            return True

    def _apply_tx_profile(
        self, charger: ChargePointPort, connector_id: int, profile: dict[str, Any]
    ) -> None:
        # The transaction's TxProfile, its whole schedule (Relative: from the start).
        installed = remote_start_profile(self.ctx, connector_id, profile)
        # The bridge ends it when the transaction (or the wait for the EV) ends.
        if installed and self.ctx.reactions is not None:
            self.ctx.reactions.tx_profile_applied(connector_id)
        self.ctx.emit("tx_profile", connector_id=connector_id, installed=installed)

    # ------------------------------------------------------------ RemoteStopTransaction §5.12

    def _connector_of(self, transaction_id: int) -> int | None:
        tx = self.ctx.store.transaction_by_cs_id(transaction_id)
        if tx is None:
            return None
        charger = self._port(tx.connector_id)
        if charger is None:
            return None
        running = charger.transaction(tx.connector_id)
        if running is None or running.local_id != tx.local_id:
            return None
        return int(tx.connector_id)

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int) -> call_result.RemoteStopTransaction:
        ok = self._connector_of(transaction_id) is not None
        return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.remote_stop_transaction)
    def after_remote_stop_transaction(self, transaction_id: int) -> None:
        # After the answer, so that the CS sees RemoteStopTransaction.conf first.
        cid = self._connector_of(transaction_id)
        if cid is not None and self.ctx.charger is not None:
            self.ctx.charger.request_stop(cid, StopReason.REMOTE)

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
        charger = self.ctx.charger
        for cid in self._ids:
            assert charger is not None
            charger.request_stop(cid, reason)  # each stop wakes the delivery itself

    # ------------------------------------------------------------ UnlockConnector §5.17

    @on(Action.unlock_connector)
    @answered_in_background
    async def on_unlock_connector(self, connector_id: int) -> call_result.UnlockConnector:
        charger = self._port(connector_id)
        if charger is None:
            return call_result.UnlockConnector(status="NotSupported")
        # Answered once the lock has moved (or could not): the spec's answer says whether it
        # unlocked. The wait is bounded (the soft stop, the lock's travel) and awaits no CS
        # answer; it runs beside the receive loop, which reads on meanwhile.
        return call_result.UnlockConnector(status=await charger.unlock(connector_id))


# ---------------------------------------------------------------- the declaration

PROFILE = declare(
    NAME,
    cs_to_cp={
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "DataTransfer",
        "GetConfiguration",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "UnlockConnector",
    },
    cp_to_cs={
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
    },
    # Defaults suit the simulated bench. "0" intervals mean "off" where the spec says so.
    keys=(
        key("AllowOfflineTxForUnknownId", _B, _RW, "false"),
        key("AuthorizationCacheEnabled", _B, _RW, "true"),
        key("AuthorizeRemoteTxRequests", _B, _RW, "true"),
        key("BlinkRepeat", _I, _RW, "3", min=0, max=100, supported=False),
        key("ClockAlignedDataInterval", _I, _RW, "0", min=0, max=_DAY),
        key("ConnectionTimeOut", _I, _RW, "60", min=1, max=3600),
        key(
            "ConnectorPhaseRotation",
            _C,
            _RW,
            "0.Unknown",
            max_items_key="ConnectorPhaseRotationMaxLength",
        ),
        key("ConnectorPhaseRotationMaxLength", _I, _R, None),  # NumberOfConnectors + 1
        key("GetConfigurationMaxKeys", _I, _R, "64"),
        key("HeartbeatInterval", _I, _RW, "300", min=0, max=_DAY),
        key("LightIntensity", _I, _RW, "100", min=0, max=100, supported=False),
        key("LocalAuthorizeOffline", _B, _RW, "true"),
        key("LocalPreAuthorize", _B, _RW, "false"),
        key("MaxEnergyOnInvalidId", _I, _RW, "0", min=0, max=1_000_000),
        key(
            "MeterValuesAlignedData",
            _C,
            _RW,
            "Energy.Active.Import.Register",
            max_items_key="MeterValuesAlignedDataMaxLength",
        ),
        key("MeterValuesAlignedDataMaxLength", _I, _R, "8"),
        key(
            "MeterValuesSampledData",
            _C,
            _RW,
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import",
            max_items_key="MeterValuesSampledDataMaxLength",
        ),
        key("MeterValuesSampledDataMaxLength", _I, _R, "8"),
        key("MeterValueSampleInterval", _I, _RW, "60", min=0, max=_DAY),
        key("MinimumStatusDuration", _I, _RW, "0", min=0, max=3600),
        key("NumberOfConnectors", _I, _R, None),  # given at construction
        key("ResetRetries", _I, _RW, "3", min=0, max=10),
        key("StopTransactionOnEVSideDisconnect", _B, _RW, "true"),
        key("StopTransactionOnInvalidId", _B, _RW, "true"),
        key("StopTxnAlignedData", _C, _RW, "", max_items_key="StopTxnAlignedDataMaxLength"),
        key("StopTxnAlignedDataMaxLength", _I, _R, "8"),
        key("StopTxnSampledData", _C, _RW, "", max_items_key="StopTxnSampledDataMaxLength"),
        key("StopTxnSampledDataMaxLength", _I, _R, "8"),
        # Its value and its allowed items come from the profile declarations (keys.py).
        key(
            "SupportedFeatureProfiles",
            _C,
            _R,
            None,
            max_items_key="SupportedFeatureProfilesMaxLength",
        ),
        key("SupportedFeatureProfilesMaxLength", _I, _R, "6"),
        key("TransactionMessageAttempts", _I, _RW, "3", min=1, max=100),
        key("TransactionMessageRetryInterval", _I, _RW, "60", min=1, max=_DAY),
        key("UnlockConnectorOnEVSideDisconnect", _B, _RW, "true"),
        key("WebSocketPingInterval", _I, _RW, "30", min=0, max=3600),
    ),
    handlers=CoreHandlers,
)
