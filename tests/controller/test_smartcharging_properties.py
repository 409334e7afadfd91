"""Hypothesis properties of the composite schedule, against an oracle written from §3.13.

The oracle evaluates one instant at a time by brute force (every occurrence of a Recurring
profile counted from its startSchedule), straight from the text: TxProfile of the
transaction over TxDefaultProfile by stack level (a connector's own TxDefault replacing
connector 0's at the same level), the minimum with the prevailing ChargePointMaxProfile.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from evsed.controller.smartcharging.composite import (
    CompositeSchedule,
    ElectricalContext,
    TxContext,
    composite,
    limit_at,
)
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

T = at("2026-12-06T22:00")  # Sunday evening: Daily and Weekly profiles cross both boundaries
DAY = 86_400
CONNECTORS = (1, 2)


@st.composite
def profiles(draw: st.DrawFn) -> ChargingProfile:
    purpose = draw(st.sampled_from(list(Purpose)))
    connector_id = {
        Purpose.CHARGE_POINT_MAX: 0,
        Purpose.TX: 1,
        Purpose.TX_DEFAULT: draw(st.sampled_from((0, 1, 2))),
    }[purpose]
    kind = draw(st.sampled_from(list(Kind)))
    recurrency = draw(st.sampled_from(list(Recurrency))) if kind is Kind.RECURRING else None
    gaps = draw(st.lists(st.integers(1, 6 * 3600), min_size=0, max_size=4))
    starts = [0]
    for gap in gaps:
        starts.append(starts[-1] + gap)
    unit = draw(st.sampled_from(list(RateUnit)))
    scale = 690.0 if unit is RateUnit.W else 1.0
    periods = [
        (s, draw(st.integers(0, 32)) * scale, draw(st.sampled_from((None, 1, 3)))) for s in starts
    ]

    def instant() -> datetime:
        return T + timedelta(seconds=draw(st.integers(-8 * DAY, 2 * DAY)))

    valid_from = draw(st.none() | st.builds(instant))
    valid_to = draw(st.none() | st.builds(instant))
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        valid_from, valid_to = valid_to - timedelta(seconds=1), valid_from
    start = None if kind is Kind.RELATIVE and draw(st.booleans()) else instant()
    return profile(
        draw(st.integers(1, 8)),
        purpose,
        draw(st.integers(0, 3)),
        periods,
        connector_id=connector_id,
        kind=kind,
        recurrency=recurrency,
        start=start,
        duration_s=draw(st.none() | st.integers(0, 2 * DAY)),
        unit=unit,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=draw(st.sampled_from((None, 5, 6))) if purpose is Purpose.TX else None,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[ProfileSet, TxContext, ElectricalContext, int]:
    ps = ProfileSet(max_stack_level=3)
    for p in draw(st.lists(profiles(), max_size=6)):
        try:
            ps.install(p)
        except InvalidProfile:
            pass
    tx = TxContext(5, T - timedelta(seconds=draw(st.integers(0, 2 * DAY))))
    electrical = ElectricalContext(
        phases=draw(st.sampled_from((1, 3))), voltage_v=230.0, phase_switch=draw(st.booleans())
    )
    return ps, tx, electrical, draw(st.integers(1, 2 * DAY))


# ------------------------------------------------------------------------------ the oracle


def _ts(value: datetime) -> int:
    return math.floor(value.timestamp())


def _period_value(p: ChargingProfile, t: int, tx_start: int) -> tuple[float, int | None] | None:
    if p.valid_from is not None and t < _ts(p.valid_from):
        return None
    if p.valid_to is not None and t >= _ts(p.valid_to):
        return None
    s = p.schedule
    length = math.inf if s.duration_s is None else s.duration_s
    if p.kind is Kind.RECURRING:
        every = p.recurrency.seconds
        first = _ts(s.start)
        if t < first:
            return None
        occurrence = first
        while occurrence + every <= t:
            occurrence += every
        length = min(length, every)
    elif p.kind is Kind.RELATIVE or s.start is None:
        occurrence = tx_start
    else:
        occurrence = _ts(s.start)
    offset = t - occurrence
    if offset < 0 or offset >= length:
        return None
    running = [period for period in s.periods if period.start_s <= offset][-1]
    return running.limit, running.number_phases


def _in(value: tuple[float, int | None], unit: RateUnit, asked: RateUnit, el) -> float:
    limit, phases = value
    if unit is asked:
        return limit
    # numberPhases counts only where a phase relay makes the EV draw on that many.
    used = el.phases if phases is None or not el.phase_switch else min(phases, el.phases)
    return limit * 230.0 * used if unit is RateUnit.A else limit / (230.0 * used)


def _prevailing(candidates, t, tx_start, el) -> float:
    for p in sorted(candidates, key=lambda p: -p.stack_level):
        value = _period_value(p, t, tx_start)
        if value is not None:
            return _in(value, p.schedule.unit, RateUnit.A, el)
    return math.inf


def oracle(
    ps: ProfileSet, t: int, tx: TxContext, el, *, whole: bool = False
) -> tuple[float, float]:
    """(the prevailing Tx/TxDefault limit on connector 1, the prevailing ChargePointMax).

    A Relative ChargePointMax runs from connector 1's transaction start, or, for the whole
    charge point (`whole`), which has no transaction of its own, from the window's start.
    """
    installed = ps.profiles()
    start = _ts(tx.started)
    tx_profiles = [
        p
        for p in installed
        if p.purpose is Purpose.TX and p.transaction_id in (None, tx.transaction_id)
    ]
    own = [p for p in installed if p.purpose is Purpose.TX_DEFAULT and p.connector_id == 1]
    shared = [
        p
        for p in installed
        if p.purpose is Purpose.TX_DEFAULT
        and p.connector_id == 0
        and p.stack_level not in {o.stack_level for o in own}
    ]
    winner = _prevailing(tx_profiles, t, start, el)
    if math.isinf(winner):
        winner = _prevailing(own + shared, t, start, el)
    cp_max = [p for p in installed if p.purpose is Purpose.CHARGE_POINT_MAX]
    return winner, _prevailing(cp_max, t, _ts(T) if whole else start, el)


def value_at(schedule: CompositeSchedule, offset: int) -> float:
    return [p for p in schedule.periods if p.start_s <= offset][-1].limit


def close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9)


def instants(schedule: CompositeSchedule, duration: int, extra: list[int]) -> list[int]:
    """Every boundary, the second before it, and some drawn offsets."""
    points = set(extra)
    for p in schedule.periods:
        points.update((p.start_s, p.start_s - 1))
    return sorted(o for o in points if 0 <= o < duration)


# ------------------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(cases(), st.lists(st.integers(0, 2 * DAY), max_size=10))
def test_composite_is_the_minimum_of_the_prevailing_profiles(case, drawn) -> None:
    ps, tx, el, duration = case
    result = composite(
        ps, 1, T, duration, RateUnit.A, transaction=tx, electrical=el, connector_ids=CONNECTORS
    )
    # Sorted, starting at 0, inside the window, piecewise constant with no repeated value.
    starts = [p.start_s for p in result.periods]
    assert starts[0] == 0 and starts == sorted(set(starts)) and starts[-1] < duration
    for before, after in zip(result.periods, result.periods[1:], strict=False):
        assert (before.limit, before.number_phases) != (after.limit, after.number_phases)
    for offset in instants(result, duration, drawn):
        winner, cp_max = oracle(ps, _ts(T) + offset, tx, el)
        got = value_at(result, offset)
        assert got <= winner or close(got, winner)
        assert got <= cp_max or close(got, cp_max)
        assert close(got, min(winner, cp_max)), (offset, got, winner, cp_max)


@settings(max_examples=300, deadline=None)
@given(cases(), st.lists(st.integers(0, 2 * DAY), min_size=1, max_size=6))
def test_limit_at_agrees_with_composite_and_holds_until_next_change(case, drawn) -> None:
    ps, tx, el, duration = case
    result = composite(
        ps, 1, T, duration, RateUnit.A, transaction=tx, electrical=el, connector_ids=CONNECTORS
    )
    for offset in instants(result, duration, drawn):
        now = T + timedelta(seconds=offset)
        answer = limit_at(ps, 1, now, transaction=tx, electrical=el)
        expected = value_at(result, offset)
        if math.isinf(expected):
            assert answer.limit is None
        else:
            assert answer.limit is not None and close(answer.limit, expected)
        # Nothing changes before next_change.
        horizon = duration if answer.next_change is None else _ts(answer.next_change) - _ts(T)
        assert horizon > offset
        for later in (offset + 1, (offset + horizon) // 2, horizon - 1):
            if offset < later < min(horizon, duration):
                assert close(value_at(result, later), expected)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_connector_zero_never_exceeds_charge_point_max_nor_the_sum(case) -> None:
    ps, tx, el, duration = case
    whole = composite(
        ps,
        0,
        T,
        duration,
        RateUnit.A,
        transaction=None,
        electrical=el,
        connector_ids=CONNECTORS,
        transactions={1: tx},
    )
    per = [
        composite(
            ps,
            cid,
            T,
            duration,
            RateUnit.A,
            transaction=tx if cid == 1 else None,
            electrical=el,
            connector_ids=CONNECTORS,
        )
        for cid in CONNECTORS
    ]
    for offset in instants(whole, duration, [p.start_s for s in per for p in s.periods]):
        _, cp_max = oracle(ps, _ts(T) + offset, tx, el, whole=True)
        got = value_at(whole, offset)
        assert got <= cp_max or close(got, cp_max)
        # Each connector alone is capped by ChargePointMax too, so the sum bounds the whole.
        total = sum(value_at(s, offset) for s in per)
        assert got <= total or close(got, total)
