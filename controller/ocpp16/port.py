"""`ChargePointPort`: everything the OCPP layer may read from or ask of the charger, and
nothing else (DESIGN: "the OCPP layer only asks, the connector decides").

The OCPP layer never holds a `Connector`: it names a connector by its id and gets values
(snapshots) back, so the safety core may own its connectors in its own thread. Every
request answers with what the charger decided; none of them waits for anything.
`evsed.controller.charger.Charger` implements it; tests check that it does, member by
member (tests/controller/test_port.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, runtime_checkable

from evsed.controller.connector.hooks import Transaction
from evsed.controller.connector.status import ConnectorStatus, StopReason
from evsed.controller.limiter import Allowance, SmartChargingLimit
from evsed.controller.snapshot import Metering, Reservation

__all__ = ["ChargePointPort", "Metering", "Reservation"]


@runtime_checkable
class ChargePointPort(Protocol):
    # ------------------------------------------------------------ reading

    @property
    def connector_ids(self) -> tuple[int, ...]:
        """The connectors, 1..n, in order."""
        ...

    @property
    def reader_faulted(self) -> bool:
        """The RFID reader is failing (StatusNotification ReaderFailure on connector 0)."""
        ...

    def status(self, connector_id: int) -> ConnectorStatus: ...

    def transaction(self, connector_id: int) -> Transaction | None:
        """The running transaction, None when there is none."""
        ...

    def operative(self, connector_id: int) -> bool:
        """Available for charging (ChangeAvailability), a scheduled change not yet applied."""
        ...

    def reservation(self, connector_id: int) -> Reservation | None: ...

    def start_refusal(
        self, connector_id: int, id_tag: str, parent_id_tag: str | None
    ) -> str | None:
        """Why a transaction for `id_tag` may not start on the connector now (faulted,
        inoperative, a scheduled Inoperative, reserved for someone else), None if it may:
        the gate every start goes through."""
        ...

    def metering(self, connector_id: int) -> Metering: ...

    def has_meter(self, connector_id: int) -> bool:
        """Whether the connector has an energy meter (one without never reads)."""
        ...

    def watch_meters(self, listener: Callable[[int, float], None]) -> Callable[[], None]:
        """Call listener(connector_id, energy_wh) on the loop for every meter reading that
        carries the energy register, until the returned function is called (start-up
        recovery waits for the meters' first readings this way)."""
        ...

    def allowance(self, connector_id: int) -> Allowance:
        """The current the connector may offer now and the limit that binds (`reason`)."""
        ...

    # ------------------------------------------------------------ asking

    def change_availability(self, connector_id: int, operative: bool) -> str:
        """ChangeAvailability: "Accepted", or "Scheduled" while a transaction runs."""
        ...

    def set_maintenance(self, reason: str | None) -> None:
        """The charger's own block on new starts (``reason``, e.g. a firmware installation),
        lifted with None: every connector's start gate refuses meanwhile, idle connectors
        read Unavailable; a running transaction goes on."""
        ...

    def start_remote(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> bool:
        """RemoteStartTransaction (already authorised if it had to be): True if the connector
        took it (it then starts when the EV is there)."""
        ...

    def reserve(
        self,
        connector_id: int,
        reservation_id: int,
        id_tag: str,
        parent_id_tag: str | None,
        expiry: datetime,
    ) -> str:
        """ReserveNow on one connector: "Accepted" (it replaces what the connector
        held), "Faulted", "Occupied" or "Unavailable". The connector decides; it frees the
        reservation itself at `expiry` or when the reserved transaction starts. Connector 0
        is the charger's: any connector, one always kept free for the idTag."""
        ...

    def cancel_reservation(self, connector_id: int, reservation_id: int) -> bool:
        """CancelReservation: False if the connector does not hold `reservation_id`."""
        ...

    def request_stop(self, connector_id: int, reason: StopReason) -> bool:
        """Stop the running transaction with `reason`; False when there is none."""
        ...

    async def unlock(self, connector_id: int) -> str:
        """UnlockConnector: "Unlocked", "UnlockFailed" or "NotSupported". A running
        transaction is ended first and the lock opens only once the contactor has (OCPP 1.6
        §5.17); that wait is bounded by the soft stop, after it the answer is UnlockFailed."""
        ...

    def set_smart_charging_limit(self, connector_id: int, value: SmartChargingLimit | None) -> None:
        """The smart-charging limit in force now (None: no profile applies)."""
        ...

    def set_phases(self, connector_id: int, phases: int) -> bool:
        """A schedule period's numberPhases: switch to 1 or 3 phases with the safe sequence.
        False when the connector has no phase relay (nothing switches)."""
        ...

    def set_invalid_id_suspension(self, connector_id: int, suspended: bool) -> None:
        """StopTransactionOnInvalidId=false: offer nothing while `suspended`, whatever the
        other limits say (its own limit slot: it never overwrites the smart-charging one)."""
        ...

    def set_transaction_parent(self, connector_id: int, local_id: int, parent_id_tag: str) -> bool:
        """The Central System named the running transaction's group (its idTagInfo's
        parentIdTag): a card of that group may now stop it. False if `local_id` is not the
        transaction running on the connector."""
        ...

    def apply_session_settings(
        self,
        *,
        connection_timeout_s: float,
        stop_on_ev_disconnect: bool,
        unlock_on_ev_disconnect: bool,
    ) -> None:
        """The configuration keys the connectors honour themselves (ConnectionTimeOut,
        StopTransactionOnEVSideDisconnect, UnlockConnectorOnEVSideDisconnect), for every
        connector."""
        ...
