"""Charging profiles as values (OCPP 1.6 §7.8-7.14), read from and written to the wire's dicts.

`ChargingProfile.from_ocpp` accepts the csChargingProfiles object with camelCase keys (as on
the wire) or snake_case keys (as the `ocpp` library hands nested payloads to handlers) and
raises `InvalidProfile` for anything the specification makes inconsistent, so that the OCPP
layer can answer Rejected with the reason in its log line. Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from typing import Any, TypeVar


class InvalidProfile(ValueError):
    """A profile the Charge Point must not install; `reason` says why, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Purpose(StrEnum):
    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"

    @property
    def seconds(self) -> int:
        return 86_400 if self is Recurrency.DAILY else 7 * 86_400


class RateUnit(StrEnum):
    A = "A"
    W = "W"


@dataclass(frozen=True, slots=True)
class Period:
    start_s: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    unit: RateUnit
    periods: tuple[Period, ...]
    duration_s: int | None = None
    start: datetime | None = None
    min_rate: float | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    id: int
    connector_id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    recurrency: Recurrency | None
    valid_from: datetime | None
    valid_to: datetime | None
    transaction_id: int | None
    schedule: Schedule

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_ocpp(cls, cs_charging_profiles: dict[str, Any], connector_id: int) -> ChargingProfile:
        """The model of a csChargingProfiles (or RemoteStart chargingProfile) object."""
        raw = cs_charging_profiles
        if not isinstance(raw, dict):
            raise InvalidProfile("the charging profile is not an object")
        schedule_raw = _field(raw, "chargingSchedule", required=True)
        if not isinstance(schedule_raw, dict):
            raise InvalidProfile("chargingSchedule is not an object")
        periods_raw = _field(schedule_raw, "chargingSchedulePeriod", required=True)
        if not isinstance(periods_raw, list) or not periods_raw:
            raise InvalidProfile("chargingSchedulePeriod must list at least one period")
        periods = tuple(_period(p) for p in periods_raw)
        recurrency = _field(raw, "recurrencyKind")
        schedule = Schedule(
            unit=_enum(RateUnit, _field(schedule_raw, "chargingRateUnit", required=True)),
            periods=periods,
            duration_s=_int(_field(schedule_raw, "duration"), "duration"),
            start=_datetime(_field(schedule_raw, "startSchedule"), "startSchedule"),
            min_rate=_number(_field(schedule_raw, "minChargingRate"), "minChargingRate"),
        )
        return cls(
            id=_int(_field(raw, "chargingProfileId", required=True), "chargingProfileId"),
            connector_id=_int(connector_id, "connectorId"),
            stack_level=_int(_field(raw, "stackLevel", required=True), "stackLevel"),
            purpose=_enum(Purpose, _field(raw, "chargingProfilePurpose", required=True)),
            kind=_enum(Kind, _field(raw, "chargingProfileKind", required=True)),
            recurrency=None if recurrency is None else _enum(Recurrency, recurrency),
            valid_from=_datetime(_field(raw, "validFrom"), "validFrom"),
            valid_to=_datetime(_field(raw, "validTo"), "validTo"),
            transaction_id=_int(_field(raw, "transactionId"), "transactionId"),
            schedule=schedule,
        )

    def to_ocpp(self) -> dict[str, Any]:
        """The csChargingProfiles object (camelCase), for persistence and the wire."""
        schedule: dict[str, Any] = {
            "chargingRateUnit": self.schedule.unit.value,
            "chargingSchedulePeriod": [_period_ocpp(p) for p in self.schedule.periods],
        }
        if self.schedule.duration_s is not None:
            schedule["duration"] = self.schedule.duration_s
        if self.schedule.start is not None:
            schedule["startSchedule"] = format_datetime(self.schedule.start)
        if self.schedule.min_rate is not None:
            schedule["minChargingRate"] = self.schedule.min_rate
        out: dict[str, Any] = {
            "chargingProfileId": self.id,
            "stackLevel": self.stack_level,
            "chargingProfilePurpose": self.purpose.value,
            "chargingProfileKind": self.kind.value,
        }
        if self.transaction_id is not None:
            out["transactionId"] = self.transaction_id
        if self.recurrency is not None:
            out["recurrencyKind"] = self.recurrency.value
        if self.valid_from is not None:
            out["validFrom"] = format_datetime(self.valid_from)
        if self.valid_to is not None:
            out["validTo"] = format_datetime(self.valid_to)
        out["chargingSchedule"] = schedule
        return out

    def with_transaction(self, transaction_id: int) -> ChargingProfile:
        """A RemoteStart TxProfile bound to the transaction the Central System numbered."""
        return replace(self, transaction_id=transaction_id)


def format_datetime(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def _check(p: ChargingProfile) -> None:
    if p.connector_id < 0:
        raise InvalidProfile(f"connectorId {p.connector_id} is negative")
    if p.stack_level < 0:
        raise InvalidProfile(f"stackLevel {p.stack_level} is negative")
    if p.purpose is Purpose.CHARGE_POINT_MAX and p.connector_id != 0:
        raise InvalidProfile("a ChargePointMaxProfile is only set on connector 0")
    if p.purpose is Purpose.TX and p.connector_id == 0:
        raise InvalidProfile("a TxProfile is only set on a connector > 0")
    if p.transaction_id is not None and p.purpose is not Purpose.TX:
        raise InvalidProfile("transactionId is only valid for a TxProfile")
    if p.kind is Kind.RECURRING:
        if p.recurrency is None:
            raise InvalidProfile("a Recurring profile needs recurrencyKind")
        if p.schedule.start is None:
            raise InvalidProfile("a Recurring profile needs startSchedule (its first occurrence)")
    for name in ("valid_from", "valid_to"):
        _check_aware(getattr(p, name), name)
    _check_aware(p.schedule.start, "startSchedule")
    if p.valid_from is not None and p.valid_to is not None and p.valid_to <= p.valid_from:
        raise InvalidProfile("validTo is not after validFrom")
    s = p.schedule
    if not s.periods:
        raise InvalidProfile("chargingSchedulePeriod must list at least one period")
    if s.periods[0].start_s != 0:
        raise InvalidProfile("the first period's startPeriod must be 0")
    for before, after in pairwise(s.periods):
        if after.start_s <= before.start_s:
            raise InvalidProfile("startPeriod values must be strictly ascending")
    for period in s.periods:
        if not period.limit >= 0:
            raise InvalidProfile(f"limit {period.limit} is negative")
        if period.number_phases is not None and period.number_phases not in (1, 2, 3):
            raise InvalidProfile(f"numberPhases {period.number_phases} is not 1, 2 or 3")
    if s.duration_s is not None and s.duration_s < 0:
        raise InvalidProfile(f"duration {s.duration_s} is negative")
    if s.min_rate is not None and not s.min_rate >= 0:
        raise InvalidProfile(f"minChargingRate {s.min_rate} is negative")


def _check_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise InvalidProfile(f"{name} has no time zone")


_E = TypeVar("_E", bound=StrEnum)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _field(raw: dict[str, Any], camel: str, *, required: bool = False) -> Any:
    if camel in raw:
        return raw[camel]
    snake = _CAMEL.sub("_", camel).lower()
    if snake in raw:
        return raw[snake]
    if required:
        raise InvalidProfile(f"{camel} is missing")
    return None


def _period(raw: Any) -> Period:
    if not isinstance(raw, dict):
        raise InvalidProfile("a chargingSchedulePeriod entry is not an object")
    return Period(
        start_s=_int(_field(raw, "startPeriod", required=True), "startPeriod"),
        limit=_number(_field(raw, "limit", required=True), "limit"),
        number_phases=_int(_field(raw, "numberPhases"), "numberPhases"),
    )


def _period_ocpp(p: Period) -> dict[str, Any]:
    out: dict[str, Any] = {"startPeriod": p.start_s, "limit": p.limit}
    if p.number_phases is not None:
        out["numberPhases"] = p.number_phases
    return out


def _enum(enum: type[_E], value: Any) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise InvalidProfile(f"{value!r} is not a {enum.__name__}") from None


def _int(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidProfile(f"{name} {value!r} is not an integer")
    return value


def _number(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidProfile(f"{name} {value!r} is not a number")
    return float(value)


def _datetime(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidProfile(f"{name} {value!r} is not a date-time") from None
    else:
        raise InvalidProfile(f"{name} {value!r} is not a date-time")
    if parsed.utcoffset() is None:
        # OCPP-J dates are UTC; a Central System that leaves out the zone means UTC.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
