"""Composite schedules worked out by hand from OCPP 1.6 §3.13, §5.7, §5.16.4 and the errata.

Each case writes the expected periods as (startPeriod, limit[, numberPhases]) with the
working beside it. T is Thursday 2026-12-03 10:00 UTC unless a case says otherwise.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from evsed.controller.smartcharging.composite import (
    CompositeSchedule,
    ElectricalContext,
    TxContext,
    UnknownConnector,
    composite,
    limit_at,
)
from evsed.controller.smartcharging.model import Kind, Purpose, RateUnit, Recurrency
from evsed.controller.smartcharging.profileset import ProfileSet
from tests.support.smartcharging import at, profile

T = at("2026-12-03T10:00")
H = 3600
THREE_PHASE = ElectricalContext(phases=3, voltage_v=230.0)
RATED_40 = ElectricalContext(phases=3, voltage_v=230.0, max_current_a=40.0)
CONNECTORS = (1, 2)


def periods(schedule: CompositeSchedule) -> list[tuple]:
    return [
        (p.start_s, p.limit) if p.number_phases is None else (p.start_s, p.limit, p.number_phases)
        for p in schedule.periods
    ]


def run(
    profiles: ProfileSet,
    duration_s: int,
    *,
    connector_id: int = 1,
    start=T,
    unit: RateUnit = RateUnit.A,
    transaction: TxContext | None = None,
    electrical: ElectricalContext = RATED_40,
    transactions=None,
) -> list[tuple]:
    result = composite(
        profiles,
        connector_id,
        start,
        duration_s,
        unit,
        transaction=transaction,
        electrical=electrical,
        connector_ids=CONNECTORS,
        transactions=transactions,
    )
    assert result.start == start and result.duration_s == duration_s and result.unit is unit
    return periods(result)


def test_a_higher_stack_level_prevails_while_it_runs() -> None:
    # stack 0: 16 A from T-1h, no duration; stack 1: 10 A from T+1h for 2 h.
    # [T, T+1h) 16 (only stack 0), [T+1h, T+3h) 10 (stack 1), [T+3h, T+4h) 16 again.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T - timedelta(hours=1)))
    ps.install(
        profile(2, Purpose.TX_DEFAULT, 1, [(0, 10)], start=T + timedelta(hours=1), duration_s=2 * H)
    )
    assert run(ps, 4 * H) == [(0, 16), (H, 10), (3 * H, 16)]


def test_a_tx_profile_overrules_tx_default_and_falls_back_after_its_duration() -> None:
    # Transaction started T-10 min. TxProfile (Relative to it): 8 A, 12 A from +30 min, 1 h long.
    # At T the transaction is 600 s old: 8 A until offset 1800 = T+1200, 12 A until
    # offset 3600 = T+3000, then the TxDefault's 16 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 5, [(0, 16)], start=T - timedelta(days=1)))
    ps.install(
        profile(
            2,
            Purpose.TX,
            0,
            [(0, 8), (1800, 12)],
            kind=Kind.RELATIVE,
            duration_s=H,
            transaction_id=7,
        )
    )
    tx = TxContext(7, T - timedelta(minutes=10))
    assert run(ps, 2 * H, transaction=tx) == [(0, 8), (1200, 12), (3000, 16)]
    # Another transaction on the connector: a TxProfile bound to 7 does not apply.
    assert run(ps, 2 * H, transaction=TxContext(8, T)) == [(0, 16)]
    # No transaction: no TxProfile applies at all.
    assert run(ps, 2 * H) == [(0, 16)]


def test_charge_point_max_caps_from_the_instant_it_starts() -> None:
    # TxDefault 16 A; ChargePointMax 10 A from T+30 min: min(16, -) = 16, then min(16, 10) = 10.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    ps.install(profile(2, Purpose.CHARGE_POINT_MAX, 0, [(0, 10)], start=T + timedelta(minutes=30)))
    assert run(ps, H) == [(0, 16), (1800, 10)]


def test_recurring_daily_across_midnight() -> None:
    # Daily from 2026-12-01 22:00: 6 A, 32 A from +2 h (= 00:00), 8 h long (until 06:00).
    # Window Thu 21:00 for 10 h: 21:00-22:00 nothing runs (yesterday's ended 06:00) -> rated
    # 40; 22:00-00:00 6; 00:00-06:00 32; 06:00-07:00 40 again.
    ps = ProfileSet()
    ps.install(
        profile(
            1,
            Purpose.TX_DEFAULT,
            0,
            [(0, 6), (2 * H, 32)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.DAILY,
            start=at("2026-12-01T22:00"),
            duration_s=8 * H,
        )
    )
    start = at("2026-12-03T21:00")
    assert run(ps, 10 * H, start=start) == [(0, 40), (H, 6), (3 * H, 32), (9 * H, 40)]
    # At 23:59 the occurrence that started at 22:00 the same day runs; at 00:30 as well.
    assert run(ps, 60, start=at("2026-12-03T23:59")) == [(0, 6)]
    assert run(ps, 60, start=at("2026-12-04T00:30")) == [(0, 32)]


def test_recurring_daily_without_duration_runs_until_the_next_occurrence() -> None:
    # Daily from 2026-12-01 08:00: 10 A, 20 A from +12 h (= 20:00), no duration: the last
    # period lasts until the next day's 08:00. Window Thu 19:00 for 14 h (to Fri 09:00):
    # 19:00 10, 20:00 20, Fri 08:00 10.
    ps = ProfileSet()
    ps.install(
        profile(
            1,
            Purpose.TX_DEFAULT,
            0,
            [(0, 10), (12 * H, 20)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.DAILY,
            start=at("2026-12-01T08:00"),
        )
    )
    assert run(ps, 14 * H, start=at("2026-12-03T19:00")) == [(0, 10), (H, 20), (13 * H, 10)]


def test_recurring_weekly_across_the_week_boundary() -> None:
    # Weekly from Sunday 2026-11-29 20:00: 10 A, 20 A from +4 h (= Monday 00:00), 10 h long
    # (until Monday 06:00). Window Sunday 2026-12-06 18:00 for 14 h (to Monday 08:00):
    # 18:00 40 (rated), 20:00 (+2 h) 10, Mon 00:00 (+6 h) 20, Mon 06:00 (+12 h) 40.
    ps = ProfileSet()
    ps.install(
        profile(
            1,
            Purpose.TX_DEFAULT,
            0,
            [(0, 10), (4 * H, 20)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.WEEKLY,
            start=at("2026-11-29T20:00"),
            duration_s=10 * H,
        )
    )
    start = at("2026-12-06T18:00")
    assert run(ps, 14 * H, start=start) == [(0, 40), (2 * H, 10), (6 * H, 20), (12 * H, 40)]
    # Mid-week nothing of it runs.
    assert run(ps, H, start=at("2026-12-02T12:00")) == [(0, 40)]


def test_recurring_never_runs_before_its_first_occurrence() -> None:
    # Daily from T+1 h: 12 A for 1 h. Window T for 3 h: 40, 12 at +1 h, 40 at +2 h; the
    # "occurrence" a day before the first one does not exist.
    ps = ProfileSet()
    ps.install(
        profile(
            1,
            Purpose.TX_DEFAULT,
            0,
            [(0, 12)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.DAILY,
            start=T + timedelta(hours=1),
            duration_s=H,
        )
    )
    assert run(ps, 3 * H) == [(0, 40), (H, 12), (2 * H, 40)]


def test_relative_runs_from_the_transaction_start_or_from_now_without_one() -> None:
    # Relative TxDefault: 6 A, 16 A from +15 min. Transaction started T-5 min: 6 A until
    # T+10 min (600 s), then 16. Without a transaction it runs as if one started at T.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 6), (900, 16)], kind=Kind.RELATIVE))
    tx = TxContext(3, T - timedelta(minutes=5))
    assert run(ps, H, transaction=tx) == [(0, 6), (600, 16)]
    assert run(ps, H) == [(0, 6), (900, 16)]


def test_valid_from_is_inclusive_and_valid_to_exclusive() -> None:
    # stack 1: 10 A valid [T+600, T+1200); stack 0: 16 A. 16, 10 at 600, 16 at 1200.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    ps.install(
        profile(
            2,
            Purpose.TX_DEFAULT,
            1,
            [(0, 10)],
            start=T - timedelta(days=1),
            valid_from=T + timedelta(seconds=600),
            valid_to=T + timedelta(seconds=1200),
        )
    )
    assert run(ps, H) == [(0, 16), (600, 10), (1200, 16)]

    def now(s: int):
        return limit_at(ps, 1, T + timedelta(seconds=s), transaction=None, electrical=THREE_PHASE)

    assert (now(599).limit, now(599).next_change) == (16, T + timedelta(seconds=600))
    assert (now(600).limit, now(600).next_change) == (10, T + timedelta(seconds=1200))
    assert (now(1200).limit, now(1200).next_change) == (16, None)
    assert now(600).profile_id == 2 and now(600).purpose is Purpose.TX_DEFAULT


def test_a_profile_valid_from_ahead_takes_over_exactly_then() -> None:
    # Relative TxProfile of a running transaction with validFrom T+20 min: the 10 A of its
    # first hour (the transaction started T-30 min) apply from T+20 min (offset 3000 s)
    # to offset 3600 s = T+30 min; then its 6 A. Before T+20 min the TxDefault's 16 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    ps.install(
        profile(
            2,
            Purpose.TX,
            0,
            [(0, 10), (H, 6)],
            kind=Kind.RELATIVE,
            valid_from=T + timedelta(minutes=20),
        )
    )
    tx = TxContext(1, T - timedelta(minutes=30))
    assert run(ps, H, transaction=tx) == [(0, 16), (1200, 10), (1800, 6)]


def test_watts_to_amps_and_amps_to_watts() -> None:
    # 11040 W on 3 phases at 230 V: 11040 / (230 x 3) = 16 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 11040)], start=T, unit=RateUnit.W))
    assert run(ps, H, electrical=THREE_PHASE) == [(0, 16.0)]
    # The same asked in W: as installed.
    assert run(ps, H, unit=RateUnit.W, electrical=THREE_PHASE) == [(0, 11040)]
    # 16 A with numberPhases 1, asked in W, where a phase relay switches to one phase:
    # 16 x 230 x 1 = 3680 W, the phases carried.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16, 1)], start=T))
    switched = ElectricalContext(phases=3, voltage_v=230.0, phase_switch=True)
    assert run(ps, H, unit=RateUnit.W, electrical=switched) == [(0, 3680.0, 1)]
    # Without a phase relay the EV draws 16 A on all three phases whatever numberPhases
    # says: 11040 W is what is applied, and what is reported.
    assert run(ps, H, unit=RateUnit.W, electrical=THREE_PHASE) == [(0, 11040.0, 1)]
    # A 4140 W, numberPhases 1 limit without a relay: 4140 / 690 = 6 A (not 18 A x 3 phases).
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 4140, 1)], start=T, unit=RateUnit.W))
    assert run(ps, H, electrical=THREE_PHASE) == [(0, 6.0, 1)]
    assert run(ps, H, electrical=switched) == [(0, 18.0, 1)]
    # 16 A (3 phases) capped by a 7360 W ChargePointMax: 7360 / 690 = 10.67 A binds.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    ps.install(profile(2, Purpose.CHARGE_POINT_MAX, 0, [(0, 7360)], start=T, unit=RateUnit.W))
    assert run(ps, H, electrical=THREE_PHASE) == [(0, pytest.approx(7360 / 690))]
    # numberPhases 3 on a single-phase connector: the limit as given for the phases used
    # (errata §3.34): 6900 W / (230 x 1) = 30 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 6900, 3)], start=T, unit=RateUnit.W))
    single = ElectricalContext(phases=1, voltage_v=230.0)
    assert run(ps, H, electrical=single) == [(0, 30.0, 3)]


def test_connector_zero_is_the_whole_charge_point() -> None:
    # TxDefault on connector 0 (every connector) 16 A; connector 2 has its own 10 A at the
    # same stack level, which replaces connector 0's there only. ChargePointMax 24 A.
    # Connector 1: min(16, 24) = 16. Connector 2: min(10, 24) = 10.
    # Connector 0: min(16 + 10, 24) = 24. (Each connector's composite is the most it may
    # take alone; what the charger enforces shares the 24 A between them when both charge:
    # tests/controller/test_charge_point_max_shared.py.)
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    ps.install(profile(2, Purpose.TX_DEFAULT, 0, [(0, 10)], start=T, connector_id=2))
    ps.install(profile(3, Purpose.CHARGE_POINT_MAX, 0, [(0, 24)], start=T))
    assert run(ps, H, connector_id=1) == [(0, 16)]
    assert run(ps, H, connector_id=2) == [(0, 10)]
    assert run(ps, H, connector_id=0) == [(0, 24)]
    # Without the ChargePointMax the charge point could draw 16 + 10 = 26 A.
    ps.clear(id=3)
    assert run(ps, H, connector_id=0) == [(0, 26)]
    with pytest.raises(UnknownConnector):
        run(ps, H, connector_id=3)


def test_a_connector_profile_only_shadows_connector_zero_at_its_own_stack_level() -> None:
    # Connector 0 TxDefault stack 2: 8 A; connector 1 TxDefault stack 0: 20 A. Stacking
    # decides: stack 2 prevails on connector 1 too -> 8 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 2, [(0, 8)], start=T))
    ps.install(profile(2, Purpose.TX_DEFAULT, 0, [(0, 20)], start=T, connector_id=1))
    assert run(ps, H) == [(0, 8)]


def test_a_schedule_shorter_than_the_window_falls_back() -> None:
    # stack 1: 10 A for 30 min; stack 0: 16 A. 10, then 16 at 1800. With nothing below it:
    # the rated 40 A (a local limit) after 1800.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 1, [(0, 10)], start=T, duration_s=1800))
    assert run(ps, H) == [(0, 10), (1800, 40)]
    ps.install(profile(2, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    assert run(ps, H) == [(0, 10), (1800, 16)]


def test_a_schedule_starting_later_shapes_the_window() -> None:
    # Absolute from T+1 h: 10 A; before it nothing limits -> rated 40. A second period at
    # +2 h (= T+3 h) lies beyond a 2 h window and does not show.
    ps = ProfileSet()
    ps.install(
        profile(1, Purpose.TX_DEFAULT, 0, [(0, 10), (2 * H, 6)], start=T + timedelta(hours=1))
    )
    assert run(ps, 2 * H) == [(0, 40), (H, 10)]
    assert run(ps, 4 * H) == [(0, 40), (H, 10), (3 * H, 6)]


def test_adjacent_equal_periods_are_merged_and_unlimited_is_infinite() -> None:
    # Two stack levels giving 16 A back to back make one period; with no rating given the
    # instants no profile limits are unlimited.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 1, [(0, 16)], start=T, duration_s=600))
    ps.install(
        profile(
            2, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T + timedelta(seconds=600), duration_s=600
        )
    )
    assert run(ps, H, electrical=THREE_PHASE) == [(0, 16), (1200, float("inf"))]


def test_to_ocpp_rounds_down_and_needs_a_finite_limit() -> None:
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 7360)], start=T, unit=RateUnit.W))
    result = composite(
        ps, 1, T, 600, RateUnit.A, transaction=None, electrical=RATED_40, connector_ids=CONNECTORS
    )
    assert result.to_ocpp() == {
        "duration": 600,
        "startSchedule": "2026-12-03T10:00:00Z",
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.6}],
    }
    unlimited = composite(
        ProfileSet(),
        1,
        T,
        600,
        RateUnit.A,
        transaction=None,
        electrical=THREE_PHASE,
        connector_ids=CONNECTORS,
    )
    with pytest.raises(ValueError, match="max_current_a"):
        unlimited.to_ocpp()


def test_limit_at_gives_the_next_boundary_for_the_runner() -> None:
    # TxDefault 6 A, 16 A from +15 min (Absolute from T); ChargePointMax 10 A from T+1 h.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 6), (900, 16)], start=T))
    ps.install(profile(2, Purpose.CHARGE_POINT_MAX, 0, [(0, 10)], start=T + timedelta(hours=1)))

    def now(s: int):
        return limit_at(ps, 1, T + timedelta(seconds=s), transaction=None, electrical=THREE_PHASE)

    assert (now(0).limit, now(0).next_change) == (6, T + timedelta(seconds=900))
    assert (now(900).limit, now(900).next_change) == (16, T + timedelta(hours=1))
    assert (now(H).limit, now(H).next_change, now(H).purpose) == (
        10,
        None,
        Purpose.CHARGE_POINT_MAX,
    )
    assert limit_at(ProfileSet(), 1, T, transaction=None, electrical=THREE_PHASE).limit is None


def test_a_remote_start_tx_profile_applies_once_bound_to_its_transaction() -> None:
    # RemoteStartTransaction's TxProfile has no transactionId (§5.16.2); bound to the
    # transaction the Central System numbered, it applies to that one: 12 A over 16 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 16)], start=T))
    remote = profile(2, Purpose.TX, 0, [(0, 12)], kind=Kind.RELATIVE)
    ps.install(remote.with_transaction(44))
    assert run(ps, H, transaction=TxContext(44, T)) == [(0, 12)]
    assert run(ps, H, transaction=TxContext(45, T)) == [(0, 16)]


def test_absolute_without_start_schedule_runs_from_the_start_of_charging() -> None:
    # §7.13: "If absent the schedule will be relative to start of charging." 6 A for the
    # first 10 min of the transaction (started T-5 min), then 16 A.
    ps = ProfileSet()
    ps.install(profile(1, Purpose.TX_DEFAULT, 0, [(0, 6), (600, 16)], kind=Kind.ABSOLUTE))
    assert run(ps, H, transaction=TxContext(1, T - timedelta(minutes=5))) == [(0, 6), (300, 16)]


def test_an_empty_window_and_a_bad_electrical_context() -> None:
    assert run(ProfileSet(), 0) == [(0, 40)]
    for bad in ({"phases": 0, "voltage_v": 230.0}, {"phases": 3, "voltage_v": 0.0}):
        with pytest.raises(ValueError):
            ElectricalContext(**bad)
