"""Charging profiles read from the wire, written back, and installed/cleared (§3.13.2, §5.16)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from evsed.controller.smartcharging.model import (
    ChargingProfile,
    InvalidProfile,
    Kind,
    Purpose,
    RateUnit,
    Recurrency,
)
from evsed.controller.smartcharging.profileset import ProfileSet
from tests.support.smartcharging import at, profile

T = at("2026-12-03T10:00")

# evcc's pause: TxDefaultProfile at the top stack level, Absolute from a minute ago, 0 A.
EVCC = {
    "chargingProfileId": 16,
    "stackLevel": 8,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Absolute",
    "chargingSchedule": {
        "chargingRateUnit": "A",
        "startSchedule": "2026-12-03T09:59:00Z",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0.0}],
    },
}
# Home Assistant's "maximum current": a Relative ChargePointMaxProfile on connector 0.
HA = {
    "chargingProfileId": 1000,
    "stackLevel": 8,
    "chargingProfileKind": "Relative",
    "chargingProfilePurpose": "ChargePointMaxProfile",
    "chargingSchedule": {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
    },
}
FULL = {
    "chargingProfileId": 7,
    "transactionId": 42,
    "stackLevel": 2,
    "chargingProfilePurpose": "TxProfile",
    "chargingProfileKind": "Recurring",
    "recurrencyKind": "Weekly",
    "validFrom": "2026-12-01T00:00:00Z",
    "validTo": "2027-01-01T00:00:00+01:00",
    "chargingSchedule": {
        "duration": 86400,
        "startSchedule": "2026-11-30T06:00:00Z",
        "chargingRateUnit": "W",
        "minChargingRate": 1380.0,
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11000.0, "numberPhases": 3},
            {"startPeriod": 3600, "limit": 3680.5, "numberPhases": 1},
        ],
    },
}


def test_evcc_and_home_assistant_profiles_are_read() -> None:
    evcc = ChargingProfile.from_ocpp(EVCC, 1)
    assert (evcc.purpose, evcc.kind, evcc.stack_level, evcc.connector_id) == (
        Purpose.TX_DEFAULT,
        Kind.ABSOLUTE,
        8,
        1,
    )
    assert evcc.schedule.start == datetime(2026, 12, 3, 9, 59, tzinfo=UTC)
    assert evcc.schedule.periods[0].limit == 0.0
    ha = ChargingProfile.from_ocpp(HA, 0)
    assert (ha.purpose, ha.kind, ha.schedule.unit) == (
        Purpose.CHARGE_POINT_MAX,
        Kind.RELATIVE,
        RateUnit.A,
    )


def test_every_field_round_trips_and_times_become_utc() -> None:
    p = ChargingProfile.from_ocpp(FULL, 2)
    assert p.recurrency is Recurrency.WEEKLY and p.transaction_id == 42
    assert p.valid_to == datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert p.schedule.periods[1].number_phases == 1 and p.schedule.min_rate == 1380.0
    wire = p.to_ocpp()
    assert wire["validTo"] == "2026-12-31T23:00:00Z"
    assert ChargingProfile.from_ocpp(wire, 2) == p
    for source in (EVCC, HA):
        assert ChargingProfile.from_ocpp(source, 0 if source is HA else 1).to_ocpp() == source


def test_snake_case_keys_as_the_ocpp_library_hands_them_are_read_too() -> None:
    snake = {
        "charging_profile_id": 16,
        "stack_level": 8,
        "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "start_schedule": "2026-12-03T09:59:00Z",
            "charging_schedule_period": [{"start_period": 0, "limit": 0.0}],
        },
    }
    assert ChargingProfile.from_ocpp(snake, 1) == ChargingProfile.from_ocpp(EVCC, 1)


def _broken(base: dict, connector_id: int, change) -> None:
    raw = copy.deepcopy(base)
    change(raw)
    with pytest.raises(InvalidProfile) as caught:
        ChargingProfile.from_ocpp(raw, connector_id)
    assert caught.value.reason


@pytest.mark.parametrize(
    ("connector_id", "change"),
    [
        (
            1,
            lambda r: r["chargingSchedule"]["chargingSchedulePeriod"].__setitem__(
                0, {"startPeriod": 5, "limit": 1}
            ),
        ),
        (
            1,
            lambda r: r["chargingSchedule"]["chargingSchedulePeriod"].append(
                {"startPeriod": 0, "limit": 1}
            ),
        ),
        (1, lambda r: r["chargingSchedule"].__setitem__("chargingSchedulePeriod", [])),
        (1, lambda r: r["chargingSchedule"]["chargingSchedulePeriod"][0].__setitem__("limit", -1)),
        (
            1,
            lambda r: r["chargingSchedule"]["chargingSchedulePeriod"][0].__setitem__(
                "numberPhases", 4
            ),
        ),
        (1, lambda r: r["chargingSchedule"].__setitem__("duration", -1)),
        (1, lambda r: r["chargingSchedule"].__setitem__("chargingRateUnit", "kW")),
        (1, lambda r: r.__setitem__("chargingProfileKind", "Recurring")),
        (1, lambda r: r.update(chargingProfileKind="Recurring", recurrencyKind="Monthly")),
        (1, lambda r: r.__setitem__("stackLevel", -1)),
        (1, lambda r: r.__setitem__("transactionId", 3)),
        (1, lambda r: r.update(validFrom="2026-12-03T10:00:00Z", validTo="2026-12-03T10:00:00Z")),
        (1, lambda r: r.__setitem__("validFrom", "yesterday")),
        (1, lambda r: r.pop("chargingProfileId")),
        (1, lambda r: r.__setitem__("stackLevel", "1")),
        (0, lambda r: r.__setitem__("chargingProfilePurpose", "TxProfile")),
        (1, lambda r: r.__setitem__("chargingProfilePurpose", "ChargePointMaxProfile")),
        (-1, lambda r: None),
    ],
)
def test_inconsistent_profiles_are_invalid(connector_id: int, change) -> None:
    _broken(EVCC, connector_id, change)


def test_recurring_needs_its_start() -> None:
    _broken(FULL, 2, lambda r: r["chargingSchedule"].pop("startSchedule"))
    _broken(FULL, 2, lambda r: r.pop("recurrencyKind"))


def _txd(id: int, stack: int, connector_id: int = 0, limit: float = 16):
    return profile(id, Purpose.TX_DEFAULT, stack, [(0, limit)], start=T, connector_id=connector_id)


def test_install_replaces_same_id_or_same_stack_level_purpose_and_connector() -> None:
    ps = ProfileSet()
    assert ps.install(_txd(1, 0)) == []
    assert ps.install(_txd(1, 3, limit=10)) == [_txd(1, 0)]  # same id
    assert ps.install(_txd(2, 3)) == [_txd(1, 3, limit=10)]  # same stack level and purpose
    # Same stack level and purpose on another connector: both stay (§3.13.1).
    assert ps.install(_txd(3, 3, connector_id=1)) == []
    cp_max = profile(4, Purpose.CHARGE_POINT_MAX, 3, [(0, 32)], start=T)
    assert ps.install(cp_max) == []
    assert [p.id for p in ps.profiles()] == [4, 2, 3]


def test_install_limits() -> None:
    ps = ProfileSet(max_stack_level=2, max_periods=2, max_installed=2)
    with pytest.raises(InvalidProfile, match="ChargeProfileMaxStackLevel"):
        ps.install(_txd(1, 3))
    three = profile(1, Purpose.TX_DEFAULT, 0, [(0, 1), (60, 2), (120, 3)], start=T)
    with pytest.raises(InvalidProfile, match="ChargingScheduleMaxPeriods"):
        ps.install(three)
    ps.install(_txd(1, 0))
    ps.install(_txd(2, 1))
    with pytest.raises(InvalidProfile, match="MaxChargingProfilesInstalled"):
        ps.install(_txd(3, 2))
    assert ps.install(_txd(3, 1)) == [_txd(2, 1)]  # a replacement fits
    assert len(ps) == 2


def test_clear_by_id_wins_else_by_every_field_given() -> None:
    def fresh() -> ProfileSet:
        ps = ProfileSet()
        for p in (_txd(1, 0), _txd(2, 1), _txd(3, 1, connector_id=1)):
            ps.install(p)
        ps.install(profile(4, Purpose.TX, 1, [(0, 8)], connector_id=1, kind=Kind.RELATIVE))
        ps.install(profile(5, Purpose.CHARGE_POINT_MAX, 1, [(0, 32)], start=T))
        return ps

    def ids(removed) -> list[int]:
        return sorted(p.id for p in removed)

    # id given: every other field is ignored (errata §3.26).
    assert ids(fresh().clear(id=3, connector_id=0, purpose=Purpose.TX)) == [3]
    assert fresh().clear(id=99) == []
    assert ids(fresh().clear(connector_id=1)) == [3, 4]
    assert ids(fresh().clear(stack_level=1)) == [2, 3, 4, 5]
    assert ids(fresh().clear(purpose=Purpose.TX_DEFAULT, stack_level=1)) == [2, 3]
    assert ids(fresh().clear(connector_id=0, purpose=Purpose.TX_DEFAULT, stack_level=1)) == [2]
    assert fresh().clear(connector_id=2) == []
    everything = fresh()
    assert ids(everything.clear()) == [1, 2, 3, 4, 5] and len(everything) == 0


def test_a_transaction_end_drops_its_tx_profiles_only() -> None:
    ps = ProfileSet()
    ps.install(_txd(1, 0, connector_id=1))
    ps.install(profile(2, Purpose.TX, 0, [(0, 8)], connector_id=1, kind=Kind.RELATIVE))
    ps.install(profile(3, Purpose.TX, 0, [(0, 8)], connector_id=2, kind=Kind.RELATIVE))
    assert [p.id for p in ps.end_transaction(1)] == [2]
    assert [p.id for p in ps.profiles()] == [1, 3]
    assert ps.end_transaction(1) == []


def test_expire_drops_what_can_never_apply_again() -> None:
    ps = ProfileSet()
    old = profile(1, Purpose.TX_DEFAULT, 0, [(0, 8)], start=T, valid_to=at("2026-12-03T11:00"))
    ps.install(old)
    ps.install(_txd(2, 1))
    assert ps.expire(at("2026-12-03T10:59")) == []
    assert ps.expire(at("2026-12-03T11:00")) == [old]
