"""Share the main fuse (and, in solar mode, the exported surplus) among our connectors.

Pure logic, no I/O; time comes in as `now` (monotonic seconds).

Call `LoadBalancer.update(now, connectors, grid, prospective=idle)` on every poll of the grid
meter (the meter at the house connection), with `grid=None` when a poll failed, and again
whenever the set of charging connectors changes. Feed each returned `Budget` into that
connector's `LimitInputs.budget`, the idle connectors' too.

`prospective` are the connectors not charging yet: each gets the budget it would have if it
started now, as the newest starter, without changing anyone else's share. A newcomer's limiter
thus has its budget before its first allowance: it never sees a placeholder 0 A (which it
would take for a budget dip and answer with the 30 s resume hold), never starts above the
fuse's budget, and does not wait for the next grid poll to be shared in.

The grid meter should be polled at least once a second: a change in household load is then
answered within one interval (the budget is recomputed in the same call), inside the 2 s the
design allows; `margin_a` must cover the few seconds an EV takes to follow a lower duty. If
no grid sample arrives for `grid_timeout_s` (default 2 s), every phase falls back to
`fallback_budget_a` (default 0 A: everyone suspends, rule "fail safe").

Per grid phase p (currents in A, import positive):
    others[p] = grid[p] - ours[p]                  (household load, PV counted negative)
    budget[p] = fuse_a - margin_a - others[p]      (what all our connectors may draw on p)
`ours[p]` comes from each connector's own meter; a connector without a reading counts as 0,
which puts its draw into `others` and shrinks the budget (the safe side). Grid currents are
signed by the phase's active power when the meter gives it; an unsigned current without power
counts as import (safe for the fuse; in solar mode it just means no surplus).

Fair sharing is max-min fair ("water filling"): all connectors rise together until a phase
budget is used up or a connector reaches its own cap (its `max_a`, or its `demand_a` when the
EV takes less); what one cannot use goes to the others. A connector that would get less than
6 A (or its `min_a`, a profile's minChargingRate) is not starved with the rest: the most
recently started connector sharing a phase with it is suspended (budget 0) and the share
recomputed, until everyone left has at least its minimum.

Solar modes take only the exported surplus, pooled over the phases (a balancing meter bills
the sum): pool = sum over phases of (ours[p] - grid[p]). Each connector needs 6 A x its phases
to run. Going through connectors oldest first: one that is off starts once the pool left for
it has stayed >= `solar_start_a` x phases for `solar_start_delay_s`; one that is on stops once
the pool left has stayed below 6 A x phases for `solar_stop_delay_s` (and gets 6 A meanwhile:
the hysteresis band). Running connectors share the pool fairly, at least 6 A each. MIN_SOLAR
never stops: at least 6 A, more when the sun allows. The fuse limit applies in every mode.

A `SharedCap` (the Central System's ChargePointMaxProfile: a limit for the whole charge point,
OCPP 1.6 §3.13.3) is one more resource shared the same max-min fair way, with or without a
grid meter (`LoadBalanceConfig.metered=False`: no fuse, only the cap): in A it caps each grid
phase, the sum over the connectors drawing on it; in W the total, each connector using its
voltage x drawn phases per amp. Unlike the fuse (whose margin covers an EV's reaction time)
it is a hard limit: a connector not charging yet looks ahead at most at what the charging
ones leave of it, so the offers never add up above the cap, not even while a newcomer joins
(the re-share when it starts lowers the others first; the charger applies decreases first).
The share is a local decision of the moment: GetCompositeSchedule reports the cap, not the
share (`evsed.controller.smartcharging.composite` says why), Current.Offered the share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from evsed.controller.limiter import Budget, Reason, active_phases, representable_current
from evsed.hal.pilot.duty import MAX_CURRENT_A, MIN_CURRENT_A
from evsed.hal.types import MeterSample

_EPS = 1e-9


class Mode(StrEnum):
    FUSE = "fuse"  # as fast as the fuse allows
    SOLAR = "solar"  # exported surplus only; stop when it is too small
    MIN_SOLAR = "min_solar"  # always at least 6 A, surplus on top


@dataclass(frozen=True, slots=True)
class LoadBalanceConfig:
    fuse_a: float = 25.0  # main fuse rating per phase
    margin_a: float = 2.0  # kept free for load steps and the EV's reaction time
    mode: Mode = Mode.FUSE
    grid_timeout_s: float = 2.0
    fallback_budget_a: float = 0.0  # per phase, for all connectors together, while blind
    solar_start_a: float = MIN_CURRENT_A  # surplus per phase needed to start
    solar_start_delay_s: float = 60.0
    solar_stop_delay_s: float = 300.0
    active_threshold_a: float = 1.0  # a phase above this counts as drawn
    # False: no grid meter; nothing but a `SharedCap` is shared (the fuse is not watched)
    # and `ConnectorDemand.demand_a` is not followed.
    metered: bool = True

    def __post_init__(self) -> None:
        if not self.solar_start_a >= MIN_CURRENT_A:
            raise ValueError(f"solar_start_a must be >= {MIN_CURRENT_A} A")
        for name in ("fuse_a", "margin_a", "grid_timeout_s", "fallback_budget_a"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class SharedCap:
    """A limit for all our connectors together: per grid phase in A, or in total in W."""

    value: float
    unit: Literal["A", "W"] = "A"


@dataclass(frozen=True, slots=True)
class ConnectorDemand:
    """One connector whose EV wants energy (pass only those).

    `max_a`: the connector's own limit without the budget, i.e.
    `limiter.limit(inputs without budget).amps`. `grid_phases`: the grid phase (0 = L1) each
    connector phase is wired to, e.g. (1,) for a single-phase connector on L2, (1, 2, 0) for a
    rotated three-phase one. `demand_a`: what the EV takes at most, None if unknown (see
    `estimate_demand`). `meter`: the connector's last own meter sample.
    """

    connector_id: int
    started_at: float
    max_a: float
    meter: MeterSample | None = None
    grid_phases: tuple[int, ...] = (0, 1, 2)
    demand_a: float | None = None
    # The least worth giving it: 6 A, or its profile's minChargingRate when higher
    # (`limiter.minimum_current`). A share below it suspends the newest starter instead.
    min_a: float = MIN_CURRENT_A
    voltage_v: float = 230.0  # nominal, for a SharedCap in W

    def __post_init__(self) -> None:
        p = self.grid_phases
        if not 1 <= len(p) <= 3 or len(set(p)) != len(p) or not set(p) <= {0, 1, 2}:
            raise ValueError(f"grid_phases must be 1-3 distinct indices 0..2, got {p!r}")
        if not MIN_CURRENT_A <= self.min_a <= MAX_CURRENT_A:
            raise ValueError(f"min_a must be within {MIN_CURRENT_A}..{MAX_CURRENT_A} A")


def estimate_demand(offered_a: float, drawn_a: float, headroom_a: float = 2.0) -> float | None:
    """The EV's demand when it clearly takes less than offered, else None (unknown).

    Offering `drawn + headroom` frees the rest for others yet lets the EV show it wants more:
    once it draws up to the offer, the demand is unknown again and it gets its fair share.
    """
    if drawn_a < offered_a - headroom_a:
        return drawn_a + headroom_a
    return None


def _signed_current(sample: MeterSample, i: int) -> float | None:
    c = sample.current_a[i]
    if c is None or not math.isfinite(c):
        return None
    p = sample.power_w[i]
    if p is not None and math.isfinite(p) and p < 0:
        return -abs(c)
    return abs(c) if p is not None else c


def _fill(
    caps: dict[int, float],
    uses: dict[int, dict[Hashable, float]],
    capacity: dict[Hashable, float],
) -> dict[int, float]:
    """Max-min fair progressive filling.

    Every connector i rises at the same rate, consuming `uses[i][r]` of resource r per amp,
    until it reaches `caps[i]` or one of its resources is used up; the rest keep rising.
    """
    alloc = dict.fromkeys(caps, 0.0)
    left = dict(capacity)
    rising = {i for i in caps if caps[i] > _EPS}
    while rising:
        step = min(caps[i] - alloc[i] for i in rising)
        rates = {r: sum(uses[i].get(r, 0.0) for i in rising) for r in left}
        for r, rate in rates.items():
            if rate > 0:
                step = min(step, left[r] / rate)
        step = max(step, 0.0)
        for i in rising:
            alloc[i] += step
        for r, rate in rates.items():
            left[r] -= step * rate
        # Each round freezes at least one connector: one at its cap or on an exhausted resource.
        done = {r for r, rate in rates.items() if rate > 0 and left[r] <= _EPS * max(1.0, rate)}
        rising = {i for i in rising if alloc[i] < caps[i] - _EPS and not done.intersection(uses[i])}
    return alloc


@dataclass(slots=True)
class _Gate:
    on: bool = False
    since: float | None = None  # when the condition for switching began to hold


class LoadBalancer:
    def __init__(self, config: LoadBalanceConfig | None = None) -> None:
        self.config = config or LoadBalanceConfig()
        self._grid: MeterSample | None = None
        self._grid_at: float | None = None
        self._gates: dict[int, _Gate] = {}
        self.phase_budget_a: tuple[float, float, float] = (0.0, 0.0, 0.0)  # last, for logs
        self.surplus_a: float = 0.0  # last solar pool (phase-amps), for logs

    def update(
        self,
        now: float,
        connectors: Sequence[ConnectorDemand],
        grid: MeterSample | None = None,
        *,
        prospective: Sequence[ConnectorDemand] = (),
        cap: SharedCap | None = None,
    ) -> dict[int, Budget]:
        """Recompute every connector's budget; `grid` is a fresh grid sample, if any.

        Each of `prospective` (connectors not charging, none of them in `connectors`), and
        each of `connectors` whose own limit is below 6 A, gets the budget it would get if
        it alone joined now as the newest starter; the others share without them.
        """
        cfg = self.config
        if grid is not None:
            self._grid, self._grid_at = grid, now
        fresh = self._grid_at is not None and now - self._grid_at <= cfg.grid_timeout_s
        sample = self._grid if fresh else None
        budget, pool = self._phase_budgets(connectors, sample)
        self.phase_budget_a = (budget[0], budget[1], budget[2])
        self.surplus_a = pool
        out = self._budgets(now, connectors, budget, pool, self._gates, cap)
        charging = {c.connector_id for c in connectors}
        if any(p.connector_id in charging for p in prospective):
            raise ValueError("a connector is both charging and prospective")
        # A connector that cannot run now (not started, or its own limit below 6 A: no
        # cable, a paused profile, a phase switch) takes no share; its budget is the one
        # it would get on joining, so the moment its own limit rises the budget is right.
        waiting = [c for c in connectors if not c.max_a >= c.min_a] + list(prospective)
        running = {i: b.amps for i, b in out.items()}
        for c in waiting:
            out[c.connector_id] = self._ahead(now, connectors, c, sample, cap, running)
        return out

    def _ahead(
        self,
        now: float,
        connectors: Sequence[ConnectorDemand],
        joining: ConnectorDemand,
        sample: MeterSample | None,
        cap: SharedCap | None = None,
        running: dict[int, float] | None = None,
    ) -> Budget:
        """The budget `joining` would get if it joined now as the newest starter (the one
        that yields first on a crowded phase), the others' shares left as they are."""
        # Its own limit may be about to rise (a cable plugged, a profile raised): look ahead
        # without it; the limiter's min() applies it. A lower cap only lowers its own share,
        # so min(own limit, this budget) never exceeds its share once it runs.
        own = joining.max_a if joining.max_a >= joining.min_a else MAX_CURRENT_A
        newcomer = replace(joining, started_at=math.inf, max_a=own)
        others = [c for c in connectors if c.connector_id != joining.connector_id]
        budget, pool = self._phase_budgets([*others, newcomer], sample)
        # A copy of the solar gates: looking ahead must not start or stop anyone's timers.
        gates = {i: replace(g) for i, g in self._gates.items()}
        ahead = self._budgets(now, [*others, newcomer], budget, pool, gates, cap)
        got = ahead[joining.connector_id]
        if cap is None:
            return got
        # A hard cap: no more than the charging connectors leave of it now (they are lowered
        # to make room only when the newcomer starts, and first).
        left = _cap_left(cap, others, running or {}, self._drawn_grid_phases)
        room = _per_amp_room(cap, newcomer, left, self._drawn_grid_phases)
        if room < got.amps - _EPS:
            amps = representable_current(math.floor(room * 100) / 100)
            return Budget(amps, Reason.SMART_CHARGING)
        return got

    def _phase_budgets(
        self, connectors: Sequence[ConnectorDemand], sample: MeterSample | None
    ) -> tuple[list[float], float]:
        """What all of `connectors` may draw per grid phase, and the solar pool."""
        cfg = self.config
        ours = [0.0, 0.0, 0.0]
        for c in connectors:
            if c.meter is None:
                continue
            for k, p in enumerate(c.grid_phases[:3]):
                cur = c.meter.current_a[k]
                if cur is not None and math.isfinite(cur):
                    ours[p] += abs(cur)

        if not cfg.metered:
            return [math.inf] * 3, 0.0  # no fuse watched: only a SharedCap is shared
        budget = [cfg.fallback_budget_a] * 3
        pool = 0.0
        known = 0
        for p in range(3):
            g = None if sample is None else _signed_current(sample, p)
            if g is not None:
                budget[p] = cfg.fuse_a - cfg.margin_a - (g - ours[p])
                pool += ours[p] - g
                known += 1
        if known < 3:
            pool = 0.0  # a blind phase could be importing: no surplus we can vouch for
        return budget, pool

    def _budgets(
        self,
        now: float,
        connectors: Sequence[ConnectorDemand],
        budget: list[float],
        pool: float,
        gates: dict[int, _Gate],
        cap: SharedCap | None = None,
    ) -> dict[int, Budget]:
        cfg = self.config
        phases = {c.connector_id: self._drawn_grid_phases(c) for c in connectors}
        caps: dict[int, float] = {}
        for c in connectors:
            # Below 6 A it cannot charge anyway; above 80 A no duty can offer more.
            own = min(c.max_a, MAX_CURRENT_A) if c.max_a >= c.min_a else 0.0
            # Without a grid meter nothing re-shares every second, so an EV's demand (an EV
            # in B asks for nothing yet) is not followed: it would hold an EV that just
            # asked (B -> C) at 6 A until the next re-share. Each gets its full share.
            if cfg.metered and c.demand_a is not None and c.demand_a >= 0:
                own = min(own, max(c.demand_a, c.min_a))
            caps[c.connector_id] = own

        solar: dict[int, float] = {}
        if cfg.mode is not Mode.FUSE:
            solar = self._solar_caps(now, connectors, phases, caps, pool, gates)
        else:
            gates.clear()
        final_caps = {i: min(own, solar.get(i, math.inf)) for i, own in caps.items()}

        capacity: dict[Hashable, float] = dict(enumerate(budget))
        uses = {c.connector_id: _uses(c, phases[c.connector_id], cap) for c in connectors}
        if cap is not None:
            capacity.update(_cap_capacity(cap))
        alloc = self._share(connectors, phases, final_caps, capacity, uses)
        # A cap resource used up: the connectors on it are held by the Central System's cap.
        used = {
            r: sum(uses[i].get(r, 0.0) * a for i, a in alloc.items()) for r in _cap_capacity(cap)
        }
        full = {r for r, u in used.items() if u >= capacity[r] - 0.01 * max(1.0, capacity[r])}
        out: dict[int, Budget] = {}
        for c in connectors:
            i = c.connector_id
            a = alloc.get(i, 0.0)
            solar_bound = i in solar and solar[i] < caps[i] - _EPS and a >= solar[i] - 1e-6
            gated_off = i in solar and solar[i] == 0.0 and caps[i] > 0
            reason = Reason.SOLAR if solar_bound or gated_off else Reason.LOAD_BALANCING
            if reason is Reason.LOAD_BALANCING and a < caps[i] - _EPS and full & set(uses[i]):
                reason = Reason.SMART_CHARGING
            out[i] = Budget(a, reason)
        return out

    def _drawn_grid_phases(self, c: ConnectorDemand) -> tuple[int, ...]:
        wired = c.grid_phases[:3]
        drawn = active_phases(c.meter, len(wired), self.config.active_threshold_a)
        return tuple(sorted({wired[k] for k in drawn}))

    def _share(
        self,
        connectors: Sequence[ConnectorDemand],
        phases: dict[int, tuple[int, ...]],
        caps: dict[int, float],
        capacity: dict[Hashable, float],
        uses: dict[int, dict[Hashable, float]],
    ) -> dict[int, float]:
        # Latest starter yields first; the connector id breaks ties deterministically.
        order = {c.connector_id: (c.started_at, c.connector_id) for c in connectors}
        minimum = {c.connector_id: c.min_a for c in connectors}
        present = {i for i, cap in caps.items() if cap > 0}
        while True:
            raw = _fill({i: caps[i] for i in present}, {i: uses[i] for i in present}, capacity)
            # Floor to 0.01 A so float error can never round a phase over its budget.
            alloc = {i: representable_current(math.floor(a * 100) / 100) for i, a in raw.items()}
            starved = {i for i, a in alloc.items() if a < minimum[i]}
            if not starved:
                return alloc
            crowded = {r for i in starved for r in uses[i]}
            candidates = [i for i in present if crowded.intersection(uses[i])]
            present.discard(max(candidates, key=order.__getitem__))

    def _solar_caps(
        self,
        now: float,
        connectors: Sequence[ConnectorDemand],
        phases: dict[int, tuple[int, ...]],
        caps: dict[int, float],
        pool: float,
        gates: dict[int, _Gate],
    ) -> dict[int, float]:
        """Per-connector solar allowance: 0 when gated off, else a fair share (>= 6 A)."""
        cfg = self.config
        ids = {c.connector_id for c in connectors}
        for gone in set(gates) - ids:
            del gates[gone]
        left = pool
        running: list[int] = []
        for c in sorted(connectors, key=lambda c: (c.started_at, c.connector_id)):
            i, n = c.connector_id, len(phases[c.connector_id])
            gate = gates.setdefault(i, _Gate())
            need = c.min_a * n
            if caps[i] <= 0:
                gate.on, gate.since = False, None
                continue
            if cfg.mode is Mode.MIN_SOLAR:
                gate.on, gate.since = True, None
            elif gate.on:
                if left >= need:
                    gate.since = None
                else:
                    gate.since = now if gate.since is None else gate.since
                    if now - gate.since >= cfg.solar_stop_delay_s:
                        gate.on, gate.since = False, None
            elif left >= cfg.solar_start_a * n:
                gate.since = now if gate.since is None else gate.since
                if now - gate.since >= cfg.solar_start_delay_s:
                    gate.on, gate.since = True, None
            else:
                gate.since = None
            if gate.on:
                running.append(i)
                left -= need

        # Everyone running gets its minimum (6 A); what is left of the pool is shared fairly
        # on top.
        minimum = {c.connector_id: c.min_a for c in connectors}
        extra = _fill(
            {i: max(0.0, caps[i] - minimum[i]) for i in running},
            {i: {0: float(len(phases[i]))} for i in running},
            {0: max(0.0, pool - sum(minimum[i] * len(phases[i]) for i in running))},
        )
        out = dict.fromkeys(caps, 0.0)
        for i in running:
            out[i] = minimum[i] + extra[i]
        return out


# ------------------------------------------------------------------------------ a shared cap

_CAP_W = ("cap", "W")


def _cap_key(phase: int) -> tuple[str, int]:
    return ("cap", phase)


def _cap_capacity(cap: SharedCap | None) -> dict[Hashable, float]:
    if cap is None:
        return {}
    value = cap.value if cap.value >= 0 else 0.0  # NaN or negative: nothing (fail safe)
    if cap.unit == "W":
        return {_CAP_W: value}
    return {_cap_key(p): value for p in range(3)}


def _uses(
    c: ConnectorDemand, drawn: tuple[int, ...], cap: SharedCap | None
) -> dict[Hashable, float]:
    """What one amp of `c` takes of each resource: a grid phase per drawn phase, and of the
    cap the same phases (A) or its watts (W)."""
    out: dict[Hashable, float] = dict.fromkeys(drawn, 1.0)
    if cap is not None and cap.unit == "W":
        out[_CAP_W] = c.voltage_v * len(drawn)
    elif cap is not None:
        out.update(dict.fromkeys((_cap_key(p) for p in drawn), 1.0))
    return out


def _cap_left(
    cap: SharedCap,
    others: Sequence[ConnectorDemand],
    running: dict[int, float],
    drawn: Callable[[ConnectorDemand], tuple[int, ...]],
) -> dict[Hashable, float]:
    left = _cap_capacity(cap)
    for c in others:
        for r, per_amp in _uses(c, drawn(c), cap).items():
            if r in left:
                left[r] -= per_amp * running.get(c.connector_id, 0.0)
    return left


def _per_amp_room(
    cap: SharedCap,
    c: ConnectorDemand,
    left: dict[Hashable, float],
    drawn: Callable[[ConnectorDemand], tuple[int, ...]],
) -> float:
    room = math.inf
    for r, per_amp in _uses(c, drawn(c), cap).items():
        if r in left and per_amp > 0:
            room = min(room, left[r] / per_amp)
    return max(0.0, room)
