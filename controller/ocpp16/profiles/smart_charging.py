"""Smart Charging (OCPP 1.6 §3.13, §5.7, §5.16, §5.5, §9.4): declared, not implemented yet.

Its actions answer NotSupported and it is not in SupportedFeatureProfiles until its handlers
land here (the composite schedule itself goes in `evsed.controller.smartcharging`, which
knows nothing of the wire; the handler only translates and hands the limit to the charger
through `ChargePointPort.set_smart_charging_limit`).

Until then, `tx_profile_limit` is the interim reading of a RemoteStartTransaction's
TxProfile (Core accepts one, §5.11).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key

NAME = "SmartCharging"

PROFILE = declare(
    NAME,
    cs_to_cp={"ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile"},
    keys=(
        key("ChargeProfileMaxStackLevel", KeyType.INT, Access.R, "8"),
        key(
            "ChargingScheduleAllowedChargingRateUnit",
            KeyType.CSL,
            Access.R,
            "Current,Power",
            allowed=frozenset({"Current", "Power"}),
        ),
        key("ChargingScheduleMaxPeriods", KeyType.INT, Access.R, "24"),
        key("ConnectorSwitch3to1PhaseSupported", KeyType.BOOL, Access.R, "false"),
        key("MaxChargingProfilesInstalled", KeyType.INT, Access.R, "16"),
    ),
)


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
