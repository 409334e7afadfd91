"""Reservation (OCPP 1.6 §3.12, §5.1, §5.13, §9.3): declared, not implemented.

Its actions answer NotSupported and it is not in SupportedFeatureProfiles until a handler
class lands here; reservations are kept by the store (reservation repository) and the
connector already honours one (`ChargePointPort.reservation`).
"""

from __future__ import annotations

from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key

NAME = "Reservation"

PROFILE = declare(
    NAME,
    cs_to_cp={"CancelReservation", "ReserveNow"},
    keys=(key("ReserveConnectorZeroSupported", KeyType.BOOL, Access.R, "false"),),
)
