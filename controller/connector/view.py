"""One connector as the rest of the charger reads it: in one piece, between two steps of
the safety core (`Connector.view`)."""

from __future__ import annotations

from dataclasses import dataclass

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import Transaction
from evsed.controller.connector.phases import Phase
from evsed.controller.connector.status import ConnectorStatus
from evsed.hal.types import MeterSample, PilotState


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """What the safety core writes of one connector, read in one piece (`Connector.view`):
    between two of the core's steps, so the fields agree with each other (a status with the
    pilot state, the faults and the offer it was derived from; a transaction with the phase
    it is in), where reading them one by one from the loop may see half a step."""

    status: ConnectorStatus
    pilot_state: PilotState
    phase: Phase
    transaction: Transaction | None
    faults: tuple[tuple[Fault, str], ...]
    offered_a: float
    cable_a: int | None
    temperature_c: float | None
    last_sample: MeterSample | None
    last_energy_wh: float | None
    operative: bool
