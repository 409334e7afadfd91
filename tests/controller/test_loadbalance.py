"""Load balancing against the main fuse, fair sharing, and solar surplus charging."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evsed.controller.limiter import (
    Allowance,
    Budget,
    CurrentLimiter,
    LimitInputs,
    Reason,
    SmartChargingLimit,
    limit,
    representable_current,
)
from evsed.controller.loadbalance import (
    ConnectorDemand,
    LoadBalanceConfig,
    LoadBalancer,
    Mode,
    estimate_demand,
)
from evsed.hal.types import MeterSample
from tests.support.clock import FakeClock

FUSE = LoadBalanceConfig(fuse_a=25.0, margin_a=2.0)  # 23 A usable per phase


def grid(a1: float, a2: float, a3: float) -> MeterSample:
    """Grid meter sample: signed currents (export negative), signs also in the power."""
    amps = (a1, a2, a3)
    return MeterSample(
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(abs(a1), abs(a2), abs(a3)),
        power_w=tuple(230.0 * a for a in amps),  # type: ignore[arg-type]
    )


def own(*amps: float) -> MeterSample:
    padded = (*amps, *(0.0,) * (3 - len(amps)))
    return MeterSample(voltage_v=(230.0, 230.0, 230.0), current_a=padded)  # type: ignore[arg-type]


def conn(cid: int, started_at: float = 0.0, max_a: float = 32.0, **kw: object) -> ConnectorDemand:
    return ConnectorDemand(connector_id=cid, started_at=started_at, max_a=max_a, **kw)  # type: ignore[arg-type]


def amps(budgets: dict[int, Budget]) -> dict[int, float]:
    return {i: b.amps for i, b in budgets.items()}


# --- one connector under the fuse --------------------------------------------------------------


def test_budget_is_fuse_minus_margin_minus_other_load():
    lb = LoadBalancer(FUSE)
    out = lb.update(0.0, [conn(1)], grid(10.0, 4.0, 7.0))
    assert out == {1: Budget(13.0, Reason.LOAD_BALANCING)}  # limited by L1
    assert lb.phase_budget_a == (13.0, 19.0, 16.0)


def test_own_draw_is_not_counted_as_other_load():
    lb = LoadBalancer(FUSE)
    # Grid 20 A per phase, of which our EV takes 16 A: others 4 A, budget 19 A.
    out = lb.update(0.0, [conn(1, meter=own(16.0, 16.0, 16.0))], grid(20.0, 20.0, 20.0))
    assert amps(out) == {1: 19.0}


def test_connector_own_limit_caps_and_then_names_itself():
    lb = LoadBalancer(FUSE)
    out = lb.update(0.0, [conn(1, max_a=16.0)], grid(0.0, 0.0, 0.0))
    assert amps(out) == {1: 16.0}
    ins = LimitInputs(hardware_a=32.0, cable_a=32, config_a=16.0, budget=out[1])
    assert limit(ins).reason is Reason.CONFIG  # the tie goes to the connector's own limit


def test_not_enough_for_six_amps_suspends_not_starves():
    lb = LoadBalancer(FUSE)
    out = lb.update(0.0, [conn(1)], grid(18.0, 0.0, 0.0))  # 5 A left on L1
    assert out == {1: Budget(0.0, Reason.LOAD_BALANCING)}
    allowance = CurrentLimiter().update(
        LimitInputs(hardware_a=32.0, cable_a=32, config_a=32.0, budget=out[1]), 0.0
    )
    assert allowance == Allowance(0.0, True, Reason.LOAD_BALANCING)


def test_overloaded_grid_gives_zero_never_negative():
    out = LoadBalancer(FUSE).update(0.0, [conn(1), conn(2)], grid(40.0, 40.0, 40.0))
    assert amps(out) == {1: 0.0, 2: 0.0}


def test_own_limit_below_six_gets_its_joining_share_and_its_reason_shows():
    lb = LoadBalancer(FUSE)
    out = lb.update(0.0, [conn(1, max_a=4.0), conn(2)], grid(0.0, 0.0, 0.0))
    # 1 cannot run anyway, so 2 gets everything; 1's budget is what it would get on
    # resuming (half of 23 A), so a raised profile finds it ready, not a stale 4 A.
    assert amps(out) == {1: 11.5, 2: 23.0}
    ins = LimitInputs(
        hardware_a=32.0,
        cable_a=32,
        config_a=32.0,
        smart_charging=SmartChargingLimit(4.0),
        budget=out[1],
    )
    assert limit(ins).reason is Reason.SMART_CHARGING


def test_single_phase_ev_only_uses_its_phase_budget():
    lb = LoadBalancer(FUSE)
    # The EV draws on L1 only; L2/L3 being loaded does not matter to it.
    out = lb.update(0.0, [conn(1, meter=own(10.0, 0.0, 0.0))], grid(15.0, 22.0, 22.0))
    assert amps(out) == {1: 18.0}  # 23 - (15 - 10)


def test_phase_rotation_maps_connector_phases_to_grid_phases():
    lb = LoadBalancer(FUSE)
    # Single-phase connector wired to grid L3.
    out = lb.update(0.0, [conn(1, grid_phases=(2,))], grid(20.0, 20.0, 3.0))
    assert amps(out) == {1: 20.0}


def test_unsigned_current_without_power_counts_as_import():
    lb = LoadBalancer(FUSE)
    sample = MeterSample(current_a=(5.0, 5.0, 5.0))  # export or import? unknown: import
    assert amps(lb.update(0.0, [conn(1)], sample)) == {1: 18.0}
    exporting = grid(-5.0, -5.0, -5.0)
    assert amps(lb.update(1.0, [conn(1)], exporting)) == {1: 28.0}


# --- fairness --------------------------------------------------------------------------------


def test_two_connectors_share_equally():
    out = LoadBalancer(FUSE).update(0.0, [conn(1), conn(2)], grid(3.0, 3.0, 3.0))
    assert amps(out) == {1: 10.0, 2: 10.0}


def test_three_connectors_share_equally_floored():
    out = LoadBalancer(FUSE).update(0.0, [conn(1), conn(2), conn(3)], grid(3.0, 3.0, 3.0))
    assert amps(out) == {1: 6.66, 2: 6.66, 3: 6.66}


def test_unused_share_goes_to_the_others():
    connectors = [conn(1, max_a=6.0), conn(2), conn(3, demand_a=7.0)]
    out = LoadBalancer(FUSE).update(0.0, connectors, grid(0.0, 0.0, 0.0))
    assert amps(out) == {1: 6.0, 2: 10.0, 3: 7.0}


def test_demand_below_six_still_gets_six():
    out = LoadBalancer(FUSE).update(0.0, [conn(1, demand_a=2.0), conn(2)], grid(0.0, 0.0, 0.0))
    assert amps(out) == {1: 6.0, 2: 17.0}


def test_latest_starter_is_suspended_so_the_others_keep_six():
    connectors = [conn(1, started_at=100.0), conn(2, started_at=300.0), conn(3, started_at=200.0)]
    out = LoadBalancer(FUSE).update(400.0, connectors, grid(8.0, 8.0, 8.0))  # 15 A left
    assert amps(out) == {1: 7.5, 2: 0.0, 3: 7.5}


def test_suspension_only_hits_connectors_sharing_the_crowded_phase():
    connectors = [
        conn(1, started_at=1.0, grid_phases=(0,)),
        conn(2, started_at=3.0, grid_phases=(1,)),  # newest, but on L2 which is fine
        conn(3, started_at=2.0, grid_phases=(0,)),
    ]
    out = LoadBalancer(FUSE).update(5.0, connectors, grid(13.0, 0.0, 0.0))  # 10 A on L1
    assert amps(out) == {1: 10.0, 2: 23.0, 3: 0.0}


def test_mixed_single_and_three_phase():
    connectors = [conn(1, grid_phases=(0,)), conn(2)]
    out = LoadBalancer(FUSE).update(0.0, connectors, grid(9.0, 0.0, 0.0))  # L1: 14 A
    assert amps(out) == {1: 7.0, 2: 7.0}


def test_estimate_demand():
    assert estimate_demand(offered_a=16.0, drawn_a=8.0) == 10.0
    assert estimate_demand(offered_a=16.0, drawn_a=15.0) is None  # takes what it gets


# --- safety property: every phase stays under fuse - margin ------------------------------------

phase_a = st.floats(min_value=0.0, max_value=40.0, allow_nan=False)
wiring = st.sampled_from([(0, 1, 2), (1, 2, 0), (0,), (1,), (2,)])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[ConnectorDemand], tuple[float, float, float]]:
    n = draw(st.integers(1, 3))
    connectors = []
    for cid in range(1, n + 1):
        wires = draw(wiring)
        drawn = [draw(st.sampled_from([0.0, 0.5])) or draw(phase_a) for _ in wires]
        connectors.append(
            conn(
                cid,
                started_at=draw(st.floats(0.0, 1000.0)),
                max_a=draw(st.floats(0.0, 80.0)),
                meter=own(*drawn),
                grid_phases=wires,
                demand_a=draw(st.none() | st.floats(0.0, 40.0)),
            )
        )
    others = (draw(phase_a), draw(phase_a), draw(phase_a))
    return connectors, others


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_phase_exceeds_fuse_minus_margin(scenario):
    connectors, others = scenario
    ours = [0.0, 0.0, 0.0]
    for c in connectors:
        for k, p in enumerate(c.grid_phases):
            ours[p] += c.meter.current_a[k]  # type: ignore[union-attr,operator]
    sample = grid(*(o + a for o, a in zip(others, ours, strict=True)))
    out = LoadBalancer(FUSE).update(0.0, connectors, sample)

    after = list(others)  # each EV now draws its whole budget on the phases it uses
    for c in connectors:
        current = c.meter.current_a  # type: ignore[union-attr]
        used = [p for k, p in enumerate(c.grid_phases) if current[k] > 1.0] or c.grid_phases  # type: ignore[operator]
        for p in used:
            # The limiter offers min(own limit, budget), nothing below 6 A: a connector held
            # below 6 A by its own limit draws nothing, whatever its (joining) budget.
            after[p] += representable_current(min(c.max_a, out[c.connector_id].amps))
    for p in range(3):
        if others[p] <= 23.0:
            assert after[p] <= 23.0 + 1e-9
        else:
            assert after[p] == pytest.approx(others[p])  # nothing of ours on that phase
    for c in connectors:
        a = out[c.connector_id].amps
        assert a == 0.0 or 6.0 <= a <= max(c.max_a, 80.0)
        if c.max_a >= 6.0:
            assert a <= c.max_a


# --- reaction time and a silent grid meter -----------------------------------------------------


async def test_load_step_is_answered_on_the_next_sample():
    clock = FakeClock()
    lb = LoadBalancer(FUSE)
    ev = conn(1, meter=own(16.0, 16.0, 16.0))
    assert amps(lb.update(clock.monotonic(), [ev], grid(18.0, 18.0, 18.0))) == {1: 21.0}
    await clock.advance(1.0)  # next grid sample, 1 s later: an oven switches on, L2 +12 A
    out = lb.update(clock.monotonic(), [ev], grid(18.0, 30.0, 18.0))
    assert amps(out) == {1: 9.0}  # 23 - (30 - 16): well inside the 2 s


async def test_silent_grid_meter_falls_back_after_timeout():
    clock = FakeClock()
    lb = LoadBalancer(FUSE)
    lb.update(clock.monotonic(), [conn(1)], grid(0.0, 0.0, 0.0))
    await clock.advance(2.0)
    assert amps(lb.update(clock.monotonic(), [conn(1)], None)) == {1: 23.0}  # still fresh
    await clock.advance(0.5)
    assert amps(lb.update(clock.monotonic(), [conn(1)], None)) == {1: 0.0}
    cfg = LoadBalanceConfig(fuse_a=25.0, margin_a=2.0, fallback_budget_a=10.0)
    blind = LoadBalancer(cfg)
    # 10 A per phase is not enough for two: the later one (same start, higher id) waits.
    assert amps(blind.update(0.0, [conn(1), conn(2)], None)) == {1: 10.0, 2: 0.0}


def test_missing_phase_in_grid_sample_uses_the_fallback_for_that_phase():
    lb = LoadBalancer(FUSE)
    sample = MeterSample(current_a=(0.0, None, 0.0), power_w=(0.0, None, 0.0))
    assert amps(lb.update(0.0, [conn(1)], sample)) == {1: 0.0}
    assert amps(lb.update(0.0, [conn(2, grid_phases=(0,))], sample)) == {2: 23.0}


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="solar_start_a"):
        LoadBalanceConfig(solar_start_a=4.0)
    with pytest.raises(ValueError, match="fuse_a"):
        LoadBalanceConfig(fuse_a=math.nan)


# --- solar --------------------------------------------------------------------------------------

SOLAR = LoadBalanceConfig(
    fuse_a=25.0,
    margin_a=2.0,
    mode=Mode.SOLAR,
    solar_start_a=7.0,
    solar_start_delay_s=60.0,
    solar_stop_delay_s=300.0,
)


def export(total_a: float) -> MeterSample:
    """Grid sample when the house exports `total_a` phase-amps, spread evenly."""
    return grid(-total_a / 3, -total_a / 3, -total_a / 3)


async def test_solar_starts_only_after_surplus_held_for_start_delay():
    clock = FakeClock()
    lb = LoadBalancer(SOLAR)
    ev = [conn(1)]
    assert lb.update(clock.monotonic(), ev, export(24.0)) == {1: Budget(0.0, Reason.SOLAR)}
    for _ in range(59):  # 24 phase-amps >= 3 x 7 A start threshold, but not long enough
        await clock.advance(1.0)
        assert amps(lb.update(clock.monotonic(), ev, export(24.0))) == {1: 0.0}
    await clock.advance(1.0)
    assert lb.update(clock.monotonic(), ev, export(24.0)) == {1: Budget(8.0, Reason.SOLAR)}


async def test_solar_start_timer_restarts_when_surplus_dips():
    clock = FakeClock()
    lb = LoadBalancer(SOLAR)
    ev = [conn(1)]
    lb.update(clock.monotonic(), ev, export(24.0))
    await clock.advance(50.0)
    lb.update(clock.monotonic(), ev, export(18.0))  # below 3 x 7 A: restart
    await clock.advance(1.0)
    lb.update(clock.monotonic(), ev, export(24.0))
    await clock.advance(59.0)
    assert amps(lb.update(clock.monotonic(), ev, export(24.0))) == {1: 0.0}
    await clock.advance(1.0)
    assert amps(lb.update(clock.monotonic(), ev, export(24.0))) == {1: 8.0}


async def _running_solar(clock: FakeClock) -> LoadBalancer:
    lb = LoadBalancer(SOLAR)
    lb.update(clock.monotonic(), [conn(1)], export(30.0))
    await clock.advance(60.0)
    assert amps(lb.update(clock.monotonic(), [conn(1)], export(30.0))) == {1: 10.0}
    return lb


async def test_solar_follows_the_surplus_and_keeps_six_in_the_hysteresis_band():
    clock = FakeClock()
    lb = await _running_solar(clock)
    ev = [conn(1, meter=own(10.0, 10.0, 10.0))]
    await clock.advance(1.0)  # a cloud: EV takes 10 A/phase, house imports 2 A/phase
    assert lb.update(clock.monotonic(), ev, grid(2.0, 2.0, 2.0)) == {1: Budget(8.0, Reason.SOLAR)}
    assert lb.surplus_a == pytest.approx(24.0)
    await clock.advance(1.0)  # darker: surplus 15 phase-amps < 3 x 6 A, stop delay running
    assert lb.update(clock.monotonic(), ev, grid(5.0, 5.0, 5.0)) == {1: Budget(6.0, Reason.SOLAR)}


async def test_solar_stops_after_stop_delay_below_minimum():
    clock = FakeClock()
    lb = await _running_solar(clock)
    ev = [conn(1, meter=own(6.0, 6.0, 6.0))]
    weak = grid(3.0, 3.0, 3.0)  # EV takes 6 A/phase, 3 A/phase imported: surplus 9 phase-amps
    for _ in range(300):
        await clock.advance(1.0)
        assert amps(lb.update(clock.monotonic(), ev, weak)) == {1: 6.0}
    await clock.advance(1.0)  # 300 s after the first weak sample
    assert lb.update(clock.monotonic(), ev, weak) == {1: Budget(0.0, Reason.SOLAR)}


async def test_solar_stop_timer_resets_when_the_sun_returns():
    clock = FakeClock()
    lb = await _running_solar(clock)
    ev = [conn(1, meter=own(6.0, 6.0, 6.0))]
    weak, fine = grid(3.0, 3.0, 3.0), grid(-1.0, -1.0, -1.0)  # surplus 9 / 21 phase-amps
    await clock.advance(1.0)
    lb.update(clock.monotonic(), ev, weak)
    await clock.advance(290.0)
    lb.update(clock.monotonic(), ev, fine)
    await clock.advance(20.0)
    assert amps(lb.update(clock.monotonic(), ev, weak)) == {1: 6.0}
    await clock.advance(299.0)
    assert amps(lb.update(clock.monotonic(), ev, weak)) == {1: 6.0}
    await clock.advance(1.0)
    assert amps(lb.update(clock.monotonic(), ev, weak)) == {1: 0.0}


async def test_min_solar_always_gives_six_and_adds_the_surplus():
    clock = FakeClock()
    cfg = LoadBalanceConfig(fuse_a=25.0, margin_a=2.0, mode=Mode.MIN_SOLAR)
    lb = LoadBalancer(cfg)
    assert lb.update(clock.monotonic(), [conn(1)], grid(5.0, 5.0, 5.0)) == {
        1: Budget(6.0, Reason.SOLAR)
    }
    await clock.advance(1.0)
    assert amps(lb.update(clock.monotonic(), [conn(1)], export(36.0))) == {1: 12.0}


async def test_solar_shares_the_pool_and_respects_the_fuse():
    clock = FakeClock()
    cfg = LoadBalanceConfig(fuse_a=25.0, margin_a=2.0, mode=Mode.SOLAR, solar_start_delay_s=0.0)
    lb = LoadBalancer(cfg)
    two = [conn(1, started_at=1.0), conn(2, started_at=2.0, grid_phases=(0,))]
    # 60 phase-amps exported: the 3-phase EV and the 1-phase EV rise together to 15 A
    # (3 x 15 + 15 = 60).
    assert amps(lb.update(clock.monotonic(), two, export(60.0))) == {1: 15.0, 2: 15.0}
    # Plenty of sun but L1 carries 15 A of house load as well: the fuse still binds there.
    sunny_but_busy = grid(15.0, -40.0, -40.0)
    out = lb.update(clock.monotonic(), two, sunny_but_busy)
    assert amps(out) == {1: 8.0, 2: 0.0}  # L1: 8 A budget can run only one at >= 6 A
    assert out[1].reason is Reason.LOAD_BALANCING


async def test_solar_oldest_connector_starts_first_when_sun_is_short():
    clock = FakeClock()
    cfg = LoadBalanceConfig(mode=Mode.SOLAR, solar_start_delay_s=0.0)
    lb = LoadBalancer(cfg)
    two = [conn(1, started_at=5.0), conn(2, started_at=1.0)]
    out = lb.update(clock.monotonic(), two, export(27.0))  # enough for one at 9 A
    assert amps(out) == {1: 0.0, 2: 9.0}
    assert out[1].reason is Reason.SOLAR


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(phase_a, phase_a, phase_a), min_size=1, max_size=30))
def test_closed_loop_with_limiters_keeps_every_phase_under_the_fuse(household):
    """Balancer + limiters + EVs that draw what they are offered, one grid sample a second."""
    lb = LoadBalancer(FUSE)
    limiters = {1: CurrentLimiter(), 2: CurrentLimiter(), 3: CurrentLimiter()}
    drawing = {1: 0.0, 2: 0.0, 3: 0.0}
    for now, others in enumerate(household):
        connectors = [conn(i, started_at=float(i), meter=own(a, a, a)) for i, a in drawing.items()]
        sample = grid(*(o + sum(drawing.values()) for o in others))
        budgets = lb.update(float(now), connectors, sample)
        for i, limiter in limiters.items():
            ins = LimitInputs(hardware_a=32.0, cable_a=32, config_a=32.0, budget=budgets[i])
            drawing[i] = limiter.update(ins, float(now)).amps
        for o in others:
            if o <= 23.0:
                assert o + sum(drawing.values()) <= 23.0 + 1e-9
            else:
                assert sum(drawing.values()) == 0.0


def test_bad_wiring_is_refused_and_unlimited_connector_is_capped_at_80():
    with pytest.raises(ValueError, match="grid_phases"):
        conn(1, grid_phases=(0, 0))
    with pytest.raises(ValueError, match="grid_phases"):
        conn(1, grid_phases=(3,))
    big = LoadBalanceConfig(fuse_a=200.0, margin_a=0.0)
    assert amps(LoadBalancer(big).update(0.0, [conn(1, max_a=math.inf)], grid(0, 0, 0))) == {
        1: 80.0
    }
