"""The composite schedule (OCPP 1.6 §3.13, §5.7) and the limit at one instant.

Per connector, at every instant:
- the TxProfile with the highest stackLevel that applies (valid, its schedule running, and
  bound to the running transaction or to none) prevails; where none applies, the prevailing
  TxDefaultProfile does (§3.13.1). The TxDefaultProfiles of a connector are its own plus
  those of connector 0 at stack levels it has none of: a connector's profile replaces the
  connector-0 one "only for that specific connector" (§3.13.1), stacking decides the rest;
- a profile applies from its validFrom (inclusive) to its validTo (exclusive) and only while
  its schedule runs: Absolute from startSchedule, Recurring from startSchedule and every day or
  week after it (never before: the first occurrence is startSchedule), Relative (and a
  schedule without startSchedule, §7.13) from the transaction's start, or from the start of
  the question when there is no transaction (as if one started then); a schedule ends after
  `duration`, a Recurring one at the latest at its next occurrence (errata §3.43/§3.44);
  where a profile does not run, the next lower stack level does (errata §3.43);
- the result is capped by the prevailing ChargePointMaxProfile (§3.13.3). Connector 0 is the
  whole charge point: the sum of the connectors' limits (each capped by the
  ChargePointMaxProfile as it runs for that connector: a Relative one from the connector's
  own transaction start), capped once more as it runs for the whole (from the window's
  start), so the whole never exceeds what its connectors apply.

A connector under a ChargePointMaxProfile several connectors share reports the whole cap
where the cap binds, not its present share of it, on purpose. The composite schedule is "the
result of the calculation of all active schedules" (§3.13.5, §5.7) over the whole window
asked, and §3.13.4 caps each connector's Tx/TxDefaultProfile with the ChargePointMaxProfile
as it is. The share is the local load balancer's decision (`evsed.controller.loadbalance`,
`SharedCap`): it changes with every start, stop and grid poll, so no schedule can state it
beyond the instant asked; the local limits taken into account (§5.7 "might be") are the
static ones (`ElectricalContext.max_current_a`, the rating). What a connector offers now is
its Current.Offered MeterValue. evcc reads the first period as "enabled" (>0: Enabled()'s
fallback GetScheduleLimit, when the status and the offered values do not tell): a connector
the balancer pauses under a cap too small for two, reported at its 0 A share, would read as
disabled to the CS that enabled it ("charger out of sync", and an Enable(true) during a
phase switch). Connector 0 stays the cap (the sum of the
connectors, each capped, capped once more), which is what the connectors together apply.

Limits are compared in the unit asked for: W = A x V x phases, where phases is the period's
numberPhases (3 when absent, §7.12) but never more than the connector uses (errata §3.34),
and only where a phase relay makes the EV draw on that many: without one it draws on all
the connector's phases whatever numberPhases says (`ElectricalContext.phase_switch`), so
that is what is applied and reported.
Instants are whole seconds (the wire's startPeriod is an integer).

minChargingRate (§7.13: "minimum charging rate supported by the electric vehicle ... to be
used by a local smart charging algorithm ... in the case a charging process is inefficient at
lower charging rates") describes the EV, so it comes from the Tx/TxDefaultProfile in force,
never from a ChargePointMaxProfile: `limit_at` gives the prevailing one's, the composite the
highest of those prevailing anywhere in its window (what the EV needs at least whenever it
charges), both in the unit asked for; connector 0 (no one EV) has none.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from evsed.controller.smartcharging.model import (
    ChargingProfile,
    Kind,
    Period,
    Purpose,
    RateUnit,
    format_datetime,
)
from evsed.controller.smartcharging.profileset import ProfileSet

INF = math.inf

# (start, end, limit in the asked unit, numberPhases): half-open [start, end) in epoch seconds.
_Piece = tuple[int, int, float, int | None]


class UnknownConnector(ValueError):
    """GetCompositeSchedule for a connector the charge point does not have: Rejected."""


@dataclass(frozen=True, slots=True)
class ElectricalContext:
    """How the connector is supplied: phases in use (1-3) and the nominal voltage.

    `max_current_a`, when given, is a local limit (the connector's rating) that the composite
    schedule takes into account (§5.7 "Local Limits might be taken into account") and that
    fills the instants no profile limits; without it those instants are `math.inf`.
    """

    phases: int
    voltage_v: float
    max_current_a: float | None = None
    # A phase relay ([connectors.phase_switch]): a period's numberPhases is how many phases
    # the EV then draws. Without one the EV draws on every phase of the connector whatever
    # a period says, so numberPhases changes nothing (a 4140 W, numberPhases 1 limit on a
    # three-phase connector is 6 A, not 18 A drawn on three phases: 12420 W).
    phase_switch: bool = False

    def __post_init__(self) -> None:
        if self.phases not in (1, 2, 3):
            raise ValueError(f"phases {self.phases} is not 1, 2 or 3")
        if not self.voltage_v > 0:
            raise ValueError(f"voltage {self.voltage_v} V is not positive")
        if self.max_current_a is not None and not self.max_current_a >= 0:
            raise ValueError(f"max_current_a {self.max_current_a} is negative")


@dataclass(frozen=True, slots=True)
class TxContext:
    transaction_id: int
    started: datetime


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    start: datetime
    duration_s: int
    unit: RateUnit
    periods: tuple[Period, ...]
    min_rate: float | None = None  # minChargingRate, in `unit` (see the module docstring)

    def to_ocpp(self) -> dict[str, Any]:
        """The chargingSchedule object of GetCompositeSchedule.conf.

        Limits are rounded down to the wire's one decimal, so the answer never promises more
        than is applied; an unlimited instant needs `ElectricalContext.max_current_a`.
        """
        periods = []
        for p in self.periods:
            if not math.isfinite(p.limit):
                raise ValueError("an unlimited period: give ElectricalContext.max_current_a")
            entry: dict[str, Any] = {
                "startPeriod": p.start_s,
                "limit": math.floor(p.limit * 10 + 1e-6) / 10,
            }
            if p.number_phases is not None:
                entry["numberPhases"] = p.number_phases
            periods.append(entry)
        out: dict[str, Any] = {
            "duration": self.duration_s,
            "startSchedule": format_datetime(self.start),
            "chargingRateUnit": self.unit.value,
            "chargingSchedulePeriod": periods,
        }
        if self.min_rate is not None:
            # At most one decimal (§7.13); rounded up: the EV needs at least this much.
            out["minChargingRate"] = math.ceil(self.min_rate * 10 - 1e-6) / 10
        return out


@dataclass(frozen=True, slots=True)
class LimitAt:
    """The limit now. `limit` None: no profile limits; `next_change` None: none is coming.

    `next_change` is the next instant at which the limit can change (never later than the
    change; it may be an instant at which it turns out not to change).
    """

    limit: float | None
    unit: RateUnit
    number_phases: int | None
    next_change: datetime | None
    profile_id: int | None = None
    purpose: Purpose | None = None
    min_rate: float | None = None  # the prevailing Tx/TxDefaultProfile's, in `unit`


def convert(
    limit: float,
    from_unit: RateUnit,
    to_unit: RateUnit,
    number_phases: int | None,
    electrical: ElectricalContext,
) -> float:
    if from_unit is to_unit or math.isinf(limit):
        return limit
    phases = electrical.phases
    if number_phases is not None and electrical.phase_switch:
        phases = min(number_phases, electrical.phases)
    factor = electrical.voltage_v * phases
    return limit * factor if from_unit is RateUnit.A else limit / factor


def composite(
    profiles: ProfileSet,
    connector_id: int,
    start: datetime,
    duration_s: int,
    unit: RateUnit,
    *,
    transaction: TxContext | None,
    electrical: ElectricalContext,
    connector_ids: tuple[int, ...],
    transactions: Mapping[int, TxContext] | None = None,
) -> CompositeSchedule:
    """GetCompositeSchedule(connector_id, duration_s, unit) asked at `start`.

    `transaction` is the one running on `connector_id`; for connector 0, `transactions` maps
    each connector to its running transaction.
    """
    if connector_id != 0 and connector_id not in connector_ids:
        raise UnknownConnector(f"no connector {connector_id}")
    if duration_s < 0:
        raise ValueError(f"duration {duration_s} is negative")
    w0 = _ts(start)
    w1 = w0 + duration_s
    transaction = _started_by(transaction, w0)
    transactions = {c: _started_by(tx, w0) for c, tx in (transactions or {}).items()}
    installed = profiles.profiles()
    cap = _cap(electrical, unit)
    if connector_id == 0:
        running = dict(transactions or {})
        cp_profiles = _of(installed, Purpose.CHARGE_POINT_MAX, 0)
        layers = []
        for cid in connector_ids:
            tx = running.get(cid)
            layer = _tx_layer(installed, cid, tx, w0, w1, unit, electrical, cap)
            # What the connector applies is also capped by the ChargePointMaxProfile as it
            # runs for that connector (a Relative one from its own transaction's start), so
            # the whole never exceeds the sum of what the connectors apply.
            own = _ts(tx.started) if tx is not None else w0
            capped = _merge([layer, _stack(cp_profiles, w0, w1, own, unit, electrical)], _min)
            layers.append(_fill(capped, w0, w1, INF))
        tx_level = _merge(layers, _sum) if layers else []
    else:
        tx_level = _tx_layer(installed, connector_id, transaction, w0, w1, unit, electrical, cap)
    anchor = _ts(transaction.started) if transaction is not None and connector_id else w0
    cp_max = _stack(_of(installed, Purpose.CHARGE_POINT_MAX, 0), w0, w1, anchor, unit, electrical)
    pieces = _fill(_merge([tx_level, cp_max], _min), w0, w1, INF)
    periods: list[Period] = []
    for a, _b, limit, phases in pieces:
        if periods and periods[-1].limit == limit and periods[-1].number_phases == phases:
            continue
        periods.append(Period(a - w0, limit, phases))
    if not periods:
        periods.append(Period(0, cap, None))
    min_rate = None
    if connector_id != 0:
        min_rate = _min_rate_in(installed, connector_id, transaction, w0, w1, unit, electrical)
    return CompositeSchedule(_dt(w0), duration_s, unit, tuple(periods), min_rate)


def limit_at(
    profiles: ProfileSet,
    connector_id: int,
    now: datetime,
    *,
    transaction: TxContext | None,
    electrical: ElectricalContext,
    unit: RateUnit = RateUnit.A,
    connector_ids: tuple[int, ...] = (),
    transactions: Mapping[int, TxContext] | None = None,
) -> LimitAt:
    """The limit the profiles set on `connector_id` at `now`, and when it may next change.

    Local limits (`max_current_a`) are not applied: the limiter takes the minimum itself and
    says which one binds. Connector 0: the sum over `connector_ids`, capped by the
    ChargePointMaxProfile, as `composite` computes it.
    """
    t = _ts(now)
    transaction = _started_by(transaction, t)
    transactions = {c: _started_by(tx, t) for c, tx in (transactions or {}).items()}
    installed = profiles.profiles()
    horizon: list[float] = [INF]
    if connector_id == 0:
        running = dict(transactions or {})
        cp_profiles = _of(installed, Purpose.CHARGE_POINT_MAX, 0)
        total = 0.0
        total_phases: int | None = None
        for cid in connector_ids:
            tx = running.get(cid)
            v = _tx_at(installed, cid, tx, t, unit, electrical, horizon)
            # Capped by the ChargePointMaxProfile as it runs for this connector, as in
            # `composite`.
            own = _ts(tx.started) if tx is not None else t
            c = _first_at(cp_profiles, t, own, tx is None, unit, electrical, horizon)
            if c is not None and (v is None or c[0] < v[0]):
                v = (c[0], _min_phases(c[1], v[1] if v else None), *c[2:])
            if v is None:
                total = INF
            else:
                total += v[0]
                total_phases = _max_phases(total_phases, v[1])
        tx_value = None if math.isinf(total) else (total, total_phases, None, None)
        anchor = t
    else:
        tx_value = _tx_at(installed, connector_id, transaction, t, unit, electrical, horizon)
        anchor = _ts(transaction.started) if transaction is not None else t
    moving = anchor == t and (connector_id == 0 or transaction is None)
    cp_max = _first_at(
        _of(installed, Purpose.CHARGE_POINT_MAX, 0), t, anchor, moving, unit, electrical, horizon
    )
    chosen = tx_value
    if cp_max is not None and (chosen is None or cp_max[0] < chosen[0]):
        chosen = (cp_max[0], _min_phases(cp_max[1], chosen[1] if chosen else None), *cp_max[2:])
    elif cp_max is not None and chosen is not None:
        chosen = (chosen[0], _min_phases(chosen[1], cp_max[1]), *chosen[2:])
    nxt = min(horizon)
    min_rate = None
    if connector_id != 0 and tx_value is not None and tx_value[2] is not None:
        prevailing = next(p for p in installed if p.id == tx_value[2])
        min_rate = _min_rate_of(prevailing, tx_value[1], unit, electrical)
    return LimitAt(
        limit=None if chosen is None else chosen[0],
        unit=unit,
        number_phases=None if chosen is None else chosen[1],
        next_change=None if math.isinf(nxt) else _dt(int(nxt)),
        profile_id=None if chosen is None else chosen[2],
        purpose=None if chosen is None else chosen[3],
        min_rate=min_rate,
    )


@dataclass(frozen=True, slots=True)
class Rate:
    """One prevailing period's limit, in its own profile's unit (nothing converted)."""

    limit: float
    unit: RateUnit
    profile_id: int
    min_rate: float | None = None  # the profile's minChargingRate (> 0), same unit


@dataclass(frozen=True, slots=True)
class Enforced:
    """What the charger must enforce at one instant, each limit in its own unit.

    `tx`: the prevailing Tx/TxDefaultProfile's period; `cap`: the prevailing
    ChargePointMaxProfile's period as it runs for this connector (for connector 0: as it runs
    for the whole charge point, which the connectors share). Neither is converted: A<->W
    needs the phases the EV really draws, which only the limiter knows (from the meter).
    """

    tx: Rate | None
    cap: Rate | None
    number_phases: int | None
    next_change: datetime | None


def enforced_at(
    profiles: ProfileSet,
    connector_id: int,
    now: datetime,
    *,
    transaction: TxContext | None,
) -> Enforced:
    """The limits in force on `connector_id` at `now` (0: the ChargePointMaxProfile for the
    whole charge point only), and when they may next change (as `limit_at`)."""
    t = _ts(now)
    transaction = _started_by(transaction, t)
    installed = profiles.profiles()
    horizon: list[float] = [INF]
    tx_found = None
    if connector_id == 0:
        anchor, moving = t, True
    else:
        anchor = _ts(transaction.started) if transaction is not None else t
        moving = transaction is None
        ordered = _tx_profiles(installed, connector_id, transaction) + _tx_defaults(
            installed, connector_id
        )
        tx_found = _prevailing(ordered, t, anchor, moving, horizon)
    cp_found = _prevailing(_of(installed, Purpose.CHARGE_POINT_MAX, 0), t, anchor, moving, horizon)
    nxt = min(horizon)
    return Enforced(
        tx=None if tx_found is None else _rate(*tx_found, with_min_rate=True),
        cap=None if cp_found is None else _rate(*cp_found, with_min_rate=False),
        number_phases=_min_phases(
            None if tx_found is None else tx_found[1].number_phases,
            None if cp_found is None else cp_found[1].number_phases,
        ),
        next_change=None if math.isinf(nxt) else _dt(int(nxt)),
    )


def _rate(p: ChargingProfile, period: Period, *, with_min_rate: bool) -> Rate:
    rate = p.schedule.min_rate
    keep = with_min_rate and rate is not None and rate > 0
    return Rate(period.limit, p.schedule.unit, p.id, rate if keep else None)


# ------------------------------------------------------------------------------ minChargingRate


def _min_rate_of(
    p: ChargingProfile, number_phases: int | None, unit: RateUnit, electrical: ElectricalContext
) -> float | None:
    rate = p.schedule.min_rate
    if rate is None or not rate > 0:
        return None
    return convert(rate, p.schedule.unit, unit, number_phases, electrical)


def _min_rate_in(
    installed: Sequence[ChargingProfile],
    cid: int,
    tx: TxContext | None,
    w0: int,
    w1: int,
    unit: RateUnit,
    electrical: ElectricalContext,
) -> float | None:
    """The highest minChargingRate of the Tx/TxDefaultProfiles prevailing somewhere in
    [w0, w1): the stack is laid out again with each profile's rank instead of its limit."""
    ordered = _tx_profiles(installed, cid, tx) + _tx_defaults(installed, cid)
    if not any(p.schedule.min_rate for p in ordered):
        return None  # the usual case costs nothing
    anchor = _ts(tx.started) if tx is not None else w0
    ranked: list[_Piece] = []
    for rank, p in enumerate(ordered):
        pieces = _pieces(p, w0, w1, anchor, unit, electrical)
        ranked = _overlay(ranked, [(a, b, float(rank), ph) for a, b, _limit, ph in pieces])
    rates = [
        _min_rate_of(ordered[int(rank)], phases, unit, electrical)
        for _a, _b, rank, phases in ranked
    ]
    known = [r for r in rates if r is not None]
    return max(known) if known else None


# ------------------------------------------------------------------------------ selection


def _of(installed: Sequence[ChargingProfile], purpose: Purpose, cid: int) -> list[ChargingProfile]:
    """The profiles of `purpose` on `cid`, highest stack level first."""
    return sorted(
        (p for p in installed if p.purpose is purpose and p.connector_id == cid),
        key=lambda p: -p.stack_level,
    )


def _tx_defaults(installed: Sequence[ChargingProfile], cid: int) -> list[ChargingProfile]:
    own = _of(installed, Purpose.TX_DEFAULT, cid)
    levels = {p.stack_level for p in own}
    shared = [p for p in _of(installed, Purpose.TX_DEFAULT, 0) if p.stack_level not in levels]
    return sorted(own + shared, key=lambda p: -p.stack_level)


def _tx_profiles(
    installed: Sequence[ChargingProfile], cid: int, tx: TxContext | None
) -> list[ChargingProfile]:
    if tx is None:
        return []
    return [
        p
        for p in _of(installed, Purpose.TX, cid)
        if p.transaction_id is None or p.transaction_id == tx.transaction_id
    ]


# ------------------------------------------------------------------------------ over a window


def _tx_layer(
    installed: Sequence[ChargingProfile],
    cid: int,
    tx: TxContext | None,
    w0: int,
    w1: int,
    unit: RateUnit,
    electrical: ElectricalContext,
    cap: float,
) -> list[_Piece]:
    anchor = _ts(tx.started) if tx is not None else w0
    chosen = _stack(
        _tx_profiles(installed, cid, tx) + _tx_defaults(installed, cid),
        w0,
        w1,
        anchor,
        unit,
        electrical,
    )
    if math.isinf(cap):
        return chosen
    return _merge([chosen, [(w0, w1, cap, None)]], _min) if w1 > w0 else []


def _stack(
    ordered: Sequence[ChargingProfile],
    w0: int,
    w1: int,
    anchor: int,
    unit: RateUnit,
    electrical: ElectricalContext,
) -> list[_Piece]:
    """Where any of `ordered` applies, the first one that does."""
    out: list[_Piece] = []
    for profile in ordered:
        out = _overlay(out, _pieces(profile, w0, w1, anchor, unit, electrical))
    return out


def _pieces(
    p: ChargingProfile,
    w0: int,
    w1: int,
    anchor: int,
    unit: RateUnit,
    electrical: ElectricalContext,
) -> list[_Piece]:
    lo = w0 if p.valid_from is None else max(w0, _ts(p.valid_from))
    hi = w1 if p.valid_to is None else min(w1, _ts(p.valid_to))
    if lo >= hi:
        return []
    s = p.schedule
    length: float = INF if s.duration_s is None else s.duration_s
    if p.kind is Kind.RECURRING:
        assert p.recurrency is not None and s.start is not None
        every = p.recurrency.seconds
        length = min(length, every)
        first = _ts(s.start)
        starts: Sequence[int] = range(first + max(0, (lo - first) // every) * every, hi, every)
    else:
        starts = (_anchor(p, anchor),)
    periods = s.periods
    n = len(periods)
    out: list[_Piece] = []
    for occurrence in starts:
        end = occurrence + length
        for i, period in enumerate(periods):
            a = occurrence + period.start_s
            if a >= end or a >= hi:
                break
            b = occurrence + periods[i + 1].start_s if i + 1 < n else end
            a, b = max(a, lo), min(b, end, hi)
            if a < b:
                limit = convert(period.limit, s.unit, unit, period.number_phases, electrical)
                out.append((a, int(b), limit, period.number_phases))
    return out


def _overlay(top: list[_Piece], under: list[_Piece]) -> list[_Piece]:
    """`top` where it has pieces, `under` in its gaps (both sorted and non-overlapping)."""
    if not top:
        return under
    if not under:
        return top
    out = list(top)
    j, n = 0, len(top)
    for a, b, limit, phases in under:
        while j < n and top[j][1] <= a:
            j += 1
        k, cur = j, a
        while k < n and top[k][0] < b:
            if top[k][0] > cur:
                out.append((cur, top[k][0], limit, phases))
            cur = max(cur, top[k][1])
            k += 1
        if cur < b:
            out.append((cur, b, limit, phases))
    out.sort(key=lambda piece: piece[0])
    return out


def _merge(
    layers: Sequence[list[_Piece]], combine: Callable[[list[_Piece]], tuple[float, int | None]]
) -> list[_Piece]:
    """Cut all layers at every boundary; where any layer has a piece, combine those present."""
    cuts = sorted({t for layer in layers for piece in layer for t in (piece[0], piece[1])})
    index = [0] * len(layers)
    out: list[_Piece] = []
    for x, y in pairwise(cuts):
        present = []
        for li, layer in enumerate(layers):
            k = index[li]
            while k < len(layer) and layer[k][1] <= x:
                k += 1
            index[li] = k
            if k < len(layer) and layer[k][0] <= x:
                present.append(layer[k])
        if present:
            limit, phases = combine(present)
            out.append((x, y, limit, phases))
    return out


def _min(present: list[_Piece]) -> tuple[float, int | None]:
    phases: int | None = None
    for piece in present:
        phases = _min_phases(phases, piece[3])
    return min(piece[2] for piece in present), phases


def _sum(present: list[_Piece]) -> tuple[float, int | None]:
    phases: int | None = None
    for piece in present:
        phases = _max_phases(phases, piece[3])
    return sum(piece[2] for piece in present), phases


def _fill(pieces: list[_Piece], w0: int, w1: int, value: float) -> list[_Piece]:
    out: list[_Piece] = []
    cur = w0
    for piece in pieces:
        if piece[0] > cur:
            out.append((cur, piece[0], value, None))
        out.append(piece)
        cur = piece[1]
    if cur < w1:
        out.append((cur, w1, value, None))
    return out


# ------------------------------------------------------------------------------ at an instant

# (limit in the asked unit, numberPhases, profile id, purpose)
_Value = tuple[float, int | None, int | None, Purpose | None]


def _tx_at(
    installed: Sequence[ChargingProfile],
    cid: int,
    tx: TxContext | None,
    t: int,
    unit: RateUnit,
    electrical: ElectricalContext,
    horizon: list[float],
) -> _Value | None:
    anchor = _ts(tx.started) if tx is not None else t
    moving = tx is None
    ordered = _tx_profiles(installed, cid, tx) + _tx_defaults(installed, cid)
    return _first_at(ordered, t, anchor, moving, unit, electrical, horizon)


def _first_at(
    ordered: Sequence[ChargingProfile],
    t: int,
    anchor: int,
    moving: bool,
    unit: RateUnit,
    electrical: ElectricalContext,
    horizon: list[float],
) -> _Value | None:
    """The first of `ordered` that applies at `t`, converted to `unit`; every change instant
    seen goes to `horizon`."""
    found = _prevailing(ordered, t, anchor, moving, horizon)
    if found is None:
        return None
    p, period = found
    limit = convert(period.limit, p.schedule.unit, unit, period.number_phases, electrical)
    return (limit, period.number_phases, p.id, p.purpose)


def _prevailing(
    ordered: Sequence[ChargingProfile],
    t: int,
    anchor: int,
    moving: bool,
    horizon: list[float],
) -> tuple[ChargingProfile, Period] | None:
    """The first of `ordered` that applies at `t` and its period; every change instant seen
    goes to `horizon`. Lower profiles are looked at too (a higher one can end before a lower
    one changes)."""
    found: tuple[ChargingProfile, Period] | None = None
    for p in ordered:
        period, nxt = _period_at(p, t, anchor, moving)
        horizon.append(nxt)
        if found is None and period is not None:
            found = (p, period)
    return found


def _period_at(
    p: ChargingProfile, t: int, anchor: int, moving: bool
) -> tuple[Period | None, float]:
    """The period of `p` running at `t` (None: it does not apply) and its next change after t.

    `moving`: the schedule is relative to a start that is always "now" (no transaction), so
    only validFrom/validTo bound it.
    """
    nxt: float = INF
    if p.valid_to is not None:
        valid_to = _ts(p.valid_to)
        if t >= valid_to:
            return None, INF
        nxt = valid_to
    if p.valid_from is not None and t < _ts(p.valid_from):
        return None, _ts(p.valid_from)
    s = p.schedule
    length: float = INF if s.duration_s is None else s.duration_s
    if p.kind is Kind.RECURRING:
        assert p.recurrency is not None and s.start is not None
        every = p.recurrency.seconds
        first = _ts(s.start)
        if t < first:
            return None, min(nxt, first)
        occurrence = first + (t - first) // every * every
        length = min(length, every)
        nxt = min(nxt, occurrence + every)
    else:
        occurrence = t if moving and _relative(p) else _anchor(p, anchor)
        if t < occurrence:
            return None, min(nxt, occurrence)
    offset = t - occurrence
    if offset >= length:
        return None, nxt
    if moving and _relative(p):
        return p.schedule.periods[0], nxt
    nxt = min(nxt, occurrence + length)
    starts = [period.start_s for period in s.periods]
    i = bisect_right(starts, offset) - 1
    if i + 1 < len(starts):
        nxt = min(nxt, occurrence + starts[i + 1])
    return s.periods[i], nxt


# ------------------------------------------------------------------------------ helpers


def _relative(p: ChargingProfile) -> bool:
    return p.kind is Kind.RELATIVE or (p.kind is Kind.ABSOLUTE and p.schedule.start is None)


def _anchor(p: ChargingProfile, relative_start: int) -> int:
    if _relative(p):
        return relative_start
    assert p.schedule.start is not None
    return _ts(p.schedule.start)


def _cap(electrical: ElectricalContext, unit: RateUnit) -> float:
    if electrical.max_current_a is None:
        return INF
    return convert(electrical.max_current_a, RateUnit.A, unit, None, electrical)


def _min_phases(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _max_phases(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _started_by(tx: TxContext | None, t: int) -> TxContext | None:
    """A transaction has started by the instant asked. One that started "later" started
    before a wall-clock step back (NTP correcting a clock that ran ahead, a Central System's
    time behind ours learnt from a Heartbeat): its Relative schedules run from `t`, from
    their first period, until the clock has caught up with its start. Anchored on the start
    as it reads, they would not have begun, and their limits would be lifted (Home
    Assistant's maximum current is a Relative ChargePointMaxProfile: the connector would
    offer its full rating). A one-period schedule, the usual kind, is exact so; a longer one
    stays in its first period for the length of the step."""
    if tx is None or _ts(tx.started) <= t:
        return tx
    return TxContext(tx.transaction_id, _dt(t))


def _ts(value: datetime) -> int:
    if value.utcoffset() is None:
        raise ValueError(f"{value!r} has no time zone")
    return math.floor(value.timestamp())


def _dt(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
