"""What a connector needs from the rest of the charger, and a stand-alone implementation.

The connector decides; through these hooks it asks for authorisation and reports
transactions and status. The OCPP layer implements them against a Central System;
`LocalHooks` implements them with no Central System at all (free vend or a list of tags),
so the connector is right on its own.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from evsed.controller.connector.status import ConnectorStatus, StopReason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The answer to "may this idTag charge?" (OCPP AuthorizationStatus spelling)."""

    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx
    parent_id_tag: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


@dataclass(frozen=True, slots=True)
class Transaction:
    connector_id: int
    id_tag: str
    meter_start_wh: int
    started_at: datetime
    parent_id_tag: str | None = None
    reservation_id: int | None = None
    local_id: int = 0  # set by the hooks when the transaction is recorded


@dataclass(frozen=True, slots=True)
class TransactionStop:
    transaction: Transaction
    reason: StopReason
    meter_stop_wh: int
    stopped_at: datetime
    id_tag: str | None = None  # the tag that stopped it, when a person did


class ConnectorHooks(Protocol):
    """Called on the asyncio loop, after the fact, never inside the safety core: the core
    asks (a tag to authorise, a start to record) through its outbox and hears the answer
    as a command. An exception a hook raises is logged and counted; a start hook that
    raises means no energy and no lock for that start (InternalError until unplug)."""

    async def authorize(self, connector_id: int, id_tag: str) -> AuthResult: ...

    def transaction_started(self, tx: Transaction) -> Transaction:
        """Record the start (durably) and return it with its local id."""
        ...

    def transaction_stopped(self, stop: TransactionStop) -> None: ...

    def status_changed(self, connector_id: int, status: ConnectorStatus) -> None: ...


@dataclass
class LocalHooks:
    """No Central System: tags from the configuration's local list, transactions in memory."""

    tags: Iterable[str] = ()
    listeners: list[Callable[[str, object], None]] = field(default_factory=list)
    started: list[Transaction] = field(default_factory=list)
    stopped: list[TransactionStop] = field(default_factory=list)
    statuses: dict[int, ConnectorStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tags = {t.upper() for t in self.tags}
        self._ids = itertools.count(1)

    async def authorize(self, connector_id: int, id_tag: str) -> AuthResult:
        status = "Accepted" if id_tag.upper() in self._tags else "Invalid"
        self._emit("authorize", {"connector": connector_id, "id_tag": id_tag, "status": status})
        return AuthResult(status)

    def transaction_started(self, tx: Transaction) -> Transaction:
        tx = replace(tx, local_id=next(self._ids))
        self.started.append(tx)
        self._emit("transaction_started", tx)
        return tx

    def transaction_stopped(self, stop: TransactionStop) -> None:
        self.stopped.append(stop)
        self._emit("transaction_stopped", stop)

    def status_changed(self, connector_id: int, status: ConnectorStatus) -> None:
        self.statuses[connector_id] = status
        self._emit("status", (connector_id, status))

    def _emit(self, kind: str, payload: object) -> None:
        for listener in self.listeners:
            listener(kind, payload)
