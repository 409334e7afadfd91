"""What the OCPP session, its handlers and the connector hooks share.

One object, built once by `evsed.controller.ocpp16.app`, so that no module reaches into another's
internals: the session owns the link, the handlers answer the CS, the hooks carry the
connectors' transactions into the persistent queue.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from evsed.controller.clock import Clock
from evsed.controller.config import Config
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store

log = logging.getLogger(__name__)


def _idle() -> str:
    return "Idle"


if TYPE_CHECKING:
    from evsed.controller.diagnostics.upload import DiagnosticsUploader
    from evsed.controller.firmware.update import FirmwareUpdater
    from evsed.controller.ocpp16.auth import Authorizer
    from evsed.controller.ocpp16.expiry import ExpiryTimers
    from evsed.controller.ocpp16.port import ChargePointPort
    from evsed.controller.ocpp16.profiles.smart_charging import SmartChargingService


class TransactionReactions(Protocol):
    """What the connector hooks must hear by an explicit call, not as a timeline event
    (an observer may fail or be missing; these carry control flow)."""

    def start_transaction_result(self, local_id: int | None, id_tag_info: dict[str, Any]) -> None:
        """The CS answered a queued StartTransaction (StopTransactionOnInvalidId)."""
        ...

    def tx_profile_applied(self, connector_id: int) -> None:
        """A RemoteStart's TxProfile now limits the connector, until its session ends."""
        ...

    async def send_meter_values_now(self, connector_id: int | None = None) -> int:
        """TriggerMessage(MeterValues): the newest reading, context Trigger."""
        ...


class SessionControl(Protocol):
    """What the rest of the OCPP layer may ask of the session."""

    @property
    def online(self) -> bool:
        """Connected and the BootNotification was Accepted."""
        ...

    async def call(self, payload: Any, *, timeout: float | None = None) -> Any | None:
        """Send one CP->CS CALL (an `ocpp.v16.call.*` object) and return the result object.

        Returns None when offline, on timeout or on CALLERROR: callers fall back to their
        offline behaviour. Never raises for a transport problem. Not for transaction
        messages: those go through `TxQueue` and are delivered by the session in order.
        """
        ...

    def wake_delivery(self) -> None:
        """A transaction message was queued: deliver it now if the link is up."""
        ...

    def status_changed(self, connector_id: int) -> None:
        """Connector `connector_id`'s status changed: notify the CS (MinimumStatusDuration)."""
        ...

    def request_reset(self, kind: str) -> None:
        """Reset (Soft/Hard) accepted: stop transactions, then restart the process."""
        ...

    async def send_boot_now(self) -> str | None:
        """TriggerMessage(BootNotification): one now; its answer's status or None."""
        ...

    async def send_heartbeat_now(self) -> bool:
        """TriggerMessage(Heartbeat): one now (the timer starts again); True if answered."""
        ...

    async def send_status_now(self, connector_id: int | None) -> int:
        """TriggerMessage(StatusNotification): the current status of one connector, or of
        every one (connector 0 first) when None; how many were answered."""
        ...


@dataclass
class OcppContext:
    config: Config
    clock: Clock
    store: Store
    keys: ConfigurationKeys
    txqueue: TxQueue
    # The charger, seen only through its port: what the OCPP layer may read and ask.
    charger: ChargePointPort | None = None
    authorizer: Authorizer | None = None
    session: SessionControl | None = None
    reactions: TransactionReactions | None = None  # the connector hooks (bridge)
    # Firmware Management's services (profiles/firmware.py), one per process.
    firmware: FirmwareUpdater | None = None
    diagnostics: DiagnosticsUploader | None = None
    # The installed charging profiles and their runner (profiles/smart_charging.py).
    smart_charging: SmartChargingService | None = None
    # One timer per held reservation, ending it at its expiryDate (profiles/reservation.py).
    reservation_timers: ExpiryTimers | None = None
    # Called with (event, fields) for the demo's timeline and the tests; never on a safety path.
    observers: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    # Vendor DataTransfer handlers: vendorId -> async fn(message_id, data) -> (status, data)
    vendor_handlers: dict[
        str, Callable[[str | None, str | None], Awaitable[tuple[str, str | None]]]
    ] = field(default_factory=dict)

    # The Firmware Management profile's state for TriggerMessage and its notifications:
    # FirmwareStatusNotification / DiagnosticsStatusNotification values ("Idle" when
    # nothing goes on). The firmware and diagnostics jobs set these when they run.
    firmware_status: Callable[[], str] = field(default=_idle)
    diagnostics_status: Callable[[], str] = field(default=_idle)

    #: Observer calls that raised (each is logged; none reaches the emitter).
    observer_failures: int = 0

    def emit(self, event: str, **fields: Any) -> None:
        for observer in list(self.observers):
            try:
                observer(event, fields)
            except Exception:
                # Observation only: a bad observer must not stop what emitted the event
                # (the delivery loop, a status change, the session going online).
                self.observer_failures += 1
                log.exception("observer %r failed on %r", observer, event)
