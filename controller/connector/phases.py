"""The charging session's phases and the events that move it from one to the next (the
table is `Connector._transition`), apart from the IEC pilot states that feed them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from evsed.controller.connector.status import StopReason
from evsed.hal.types import PilotState


class Phase(StrEnum):
    IDLE = "idle"  # no EV, nobody authorised
    AUTHORIZED = "authorized"  # a card was accepted, waiting for the EV (ConnectionTimeOut)
    PLUGGED = "plugged"  # EV connected, waiting for authorisation
    TRANSACTION = "transaction"  # a transaction is open
    FINISHING = "finishing"  # the transaction ended, the EV is still connected


# Events (the "event" half of (phase, event) in `_transition`).
@dataclass(frozen=True, slots=True)
class EvPlugged:
    pass


@dataclass(frozen=True, slots=True)
class EvUnplugged:
    pass


@dataclass(frozen=True, slots=True)
class Authorized:
    id_tag: str
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class StopRequested:
    reason: StopReason
    id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class AuthTimedOut:
    pass


Event = EvPlugged | EvUnplugged | Authorized | StopRequested | AuthTimedOut

PLUGGED_STATES = frozenset({PilotState.B, PilotState.C, PilotState.D})
NO_EV_STATES = frozenset({PilotState.A, PilotState.E, PilotState.F})
