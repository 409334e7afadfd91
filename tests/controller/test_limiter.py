"""Current limiter: min() of all limits, watt->amp conversion, suspend/resume hysteresis."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from evsed.controller.limiter import (
    Allowance,
    Budget,
    CurrentLimiter,
    Electrical,
    LimiterConfig,
    LimitInputs,
    Reason,
    SmartChargingLimit,
    active_phases,
    limit,
    representable_current,
    watts_to_amps,
)
from evsed.hal.types import MeterSample
from tests.support.clock import FakeClock


def inputs(**kw: object) -> LimitInputs:
    base: dict[str, object] = {"hardware_a": 32.0, "cable_a": 32, "config_a": 32.0}
    base.update(kw)
    return LimitInputs(**base)  # type: ignore[arg-type]


def sample(
    amps: tuple[float | None, float | None, float | None],
    volts: tuple[float | None, float | None, float | None] = (230.0, 230.0, 230.0),
) -> MeterSample:
    return MeterSample(voltage_v=volts, current_a=amps)


# --- min() and the reported reason ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "amps", "reason"),
    [
        ({"hardware_a": 10.0}, 10.0, Reason.HARDWARE),
        ({"cable_a": 13}, 13.0, Reason.CABLE),
        ({"config_a": 16.0}, 16.0, Reason.CONFIG),
        ({"smart_charging": SmartChargingLimit(8.0)}, 8.0, Reason.SMART_CHARGING),
        ({"budget": Budget(7.5)}, 7.5, Reason.LOAD_BALANCING),
        ({"budget": Budget(9.0, Reason.SOLAR)}, 9.0, Reason.SOLAR),
    ],
)
def test_smallest_limit_wins_and_is_named(kw: dict[str, object], amps: float, reason: Reason):
    lim = limit(inputs(**kw))
    assert (lim.amps, lim.reason) == (amps, reason)
    allowance = CurrentLimiter().update(inputs(**kw), now=0.0)
    assert allowance == Allowance(amps, False, reason)


def test_no_cable_means_zero_and_suspends_with_reason_cable():
    allowance = CurrentLimiter().update(inputs(cable_a=None), now=0.0)
    assert allowance == Allowance(0.0, True, Reason.CABLE)


def test_invalid_id_suspension_is_its_own_slot():
    # A smart-charging limit and the invalid-id suspension stand side by side.
    both = inputs(smart_charging=SmartChargingLimit(10.0), invalid_id_suspended=True)
    assert CurrentLimiter().update(both, now=0.0) == Allowance(0.0, True, Reason.INVALID_ID)
    lifted = limit(replace(both, invalid_id_suspended=False))
    assert (lifted.amps, lifted.reason) == (10.0, Reason.SMART_CHARGING)


def test_tie_reports_first_in_reason_order():
    assert limit(inputs(hardware_a=16.0, config_a=16.0)).reason is Reason.HARDWARE
    assert limit(inputs(config_a=16.0, budget=Budget(16.0))).reason is Reason.CONFIG


def test_broken_inputs_never_raise_the_current():
    assert limit(inputs(budget=Budget(math.nan))).amps == 0.0
    assert limit(inputs(smart_charging=SmartChargingLimit(-5.0))).amps == 0.0
    assert limit(inputs(config_a=math.nan)).reason is Reason.CONFIG


limits = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(
    hw=limits,
    cable=st.none() | st.sampled_from([13, 20, 32, 63]),
    cfg=limits,
    sc=st.none() | limits,
    lb=st.none() | limits,
)
def test_limit_is_the_minimum_of_every_input(hw, cable, cfg, sc, lb):
    ins = LimitInputs(
        hardware_a=hw,
        cable_a=cable,
        config_a=cfg,
        smart_charging=None if sc is None else SmartChargingLimit(sc, "A"),
        budget=None if lb is None else Budget(lb),
    )
    values = {
        Reason.HARDWARE: hw,
        Reason.CABLE: 0.0 if cable is None else float(cable),
        Reason.CONFIG: cfg,
    }
    if sc is not None:
        values[Reason.SMART_CHARGING] = sc
    if lb is not None:
        values[Reason.LOAD_BALANCING] = lb
    lim = limit(ins)
    assert lim.amps == min(values.values())
    assert values[lim.reason] == lim.amps
    allowance = CurrentLimiter().update(ins, now=0.0)
    assert allowance.amps <= lim.amps
    assert allowance.suspended == (lim.amps < 6.0)
    assert allowance.reason is lim.reason


# --- watts -> amps from measured voltage and phases ------------------------------------------


def test_watts_three_measured_phases_use_measured_voltages():
    s = sample((10.0, 10.0, 10.0), volts=(240.0, 235.0, 245.0))
    assert watts_to_amps(7200.0, s) == pytest.approx(7200.0 / 720.0)  # 10 A, not 10.43 A


def test_watts_one_measured_phase_even_if_three_are_wired():
    s = sample((15.8, 0.2, 0.0), volts=(220.0, 231.0, 229.0))
    assert active_phases(s, 3) == (0,)
    assert watts_to_amps(3520.0, s) == pytest.approx(16.0)  # 3520 / 220
    lim = limit(inputs(smart_charging=SmartChargingLimit(3520.0, "W"), meter=s))
    assert lim.amps == pytest.approx(16.0)
    assert lim.reason is Reason.SMART_CHARGING


def test_watts_on_phase_two_only_uses_that_phase_voltage():
    s = sample((None, 12.0, 0.1), volts=(250.0, 200.0, 250.0))
    assert watts_to_amps(2000.0, s) == pytest.approx(10.0)


def test_watts_without_measurement_use_nominal_and_configured_phases():
    assert watts_to_amps(11040.0, None) == pytest.approx(16.0)  # 3 x 230 V
    one_phase = Electrical(nominal_v=230.0, phases=1)
    assert watts_to_amps(3680.0, None, one_phase) == pytest.approx(16.0)


def test_watts_before_the_ev_draws_assume_all_wired_phases():
    idle = sample((0.0, 0.3, None), volts=(240.0, 240.0, 240.0))
    assert watts_to_amps(7200.0, idle) == pytest.approx(10.0)


def test_missing_voltage_of_a_drawn_phase_falls_back_to_nominal():
    s = sample((16.0, 16.0, 16.0), volts=(240.0, None, 0.0))
    assert watts_to_amps(7000.0, s) == pytest.approx(7000.0 / (240.0 + 230.0 + 230.0))


def test_watt_limit_goes_through_limiter_config_electrical():
    limiter = CurrentLimiter(LimiterConfig(electrical=Electrical(nominal_v=120.0, phases=1)))
    allowance = limiter.update(inputs(smart_charging=SmartChargingLimit(1200.0, "W")), now=0.0)
    assert allowance == Allowance(10.0, False, Reason.SMART_CHARGING)


# --- what the duty cycle can express -----------------------------------------------------------


@pytest.mark.parametrize(
    ("amps", "offered"),
    [
        (0.0, 0.0),
        (5.99, 0.0),
        (6.0, 6.0),
        (16.0, 16.0),
        (51.0, 51.0),
        (51.7, 51.0),
        (52.49, 51.0),
        (52.5, 51.0),  # 85 % is read on the lower formula
        (52.6, 52.6),
        (80.0, 80.0),
        (125.0, 80.0),
        (math.nan, 0.0),
    ],
)
def test_representable_current(amps: float, offered: float):
    assert representable_current(amps) == offered


def test_limiter_offers_only_representable_current():
    limiter = CurrentLimiter()
    assert limiter.update(inputs(hardware_a=63.0, cable_a=63, config_a=52.0), 0.0).amps == 51.0
    assert limiter.update(inputs(hardware_a=100.0, cable_a=None, config_a=100.0), 1.0).amps == 0.0


@given(st.floats(min_value=0, max_value=200, allow_nan=False))
def test_representable_never_exceeds_and_agrees_with_duty(amps: float):
    offered = representable_current(amps)
    assert offered <= amps
    assert offered == 0.0 or 6.0 <= offered <= 80.0
    assert not 51.0 < offered <= 52.5


@given(st.floats(min_value=0, max_value=120, allow_nan=False))
@example(52.625)  # between the gap and the first high-range duty: reads back as 51 A
def test_representable_agrees_with_the_duty_module(amps: float):
    from evsed.hal.pilot.duty import current_to_duty, duty_to_current

    # Rounding first changes nothing, and the duty never reads back more than we allow.
    assert current_to_duty(representable_current(amps)) == current_to_duty(amps)
    read_back = duty_to_current(current_to_duty(amps))
    offered = representable_current(amps)
    if offered == 0.0:
        assert read_back is None
    else:
        assert read_back is not None
        assert read_back <= offered + 1e-9  # never more than allowed
        if 51.0 < amps < 52.75:
            # Below the first high-range duty a 0.1 % PWM can make (85.1 % = 52.75 A), the
            # duty floors to 85.0 %, which the EV reads as 51 A: the safe side.
            assert read_back == 51.0
        else:
            # One 0.1 % step is 0.06 A up to 51 A and 0.25 A above.
            assert offered - 0.25 - 1e-9 <= read_back


# --- suspend at < 6 A, resume with hysteresis ----------------------------------------------------


def test_zero_amps_pauses_and_keeps_the_session():
    allowance = CurrentLimiter().update(inputs(smart_charging=SmartChargingLimit(0.0)), 0.0)
    assert allowance == Allowance(0.0, True, Reason.SMART_CHARGING)
    # The only output is "suspended": there is nothing that would end a transaction.
    assert set(Allowance.__dataclass_fields__) == {"amps", "suspended", "reason"}


def test_below_six_amps_suspends_at_once():
    limiter = CurrentLimiter()
    assert not limiter.update(inputs(budget=Budget(16.0)), 0.0).suspended
    allowance = limiter.update(inputs(budget=Budget(5.9)), 0.5)
    assert allowance == Allowance(0.0, True, Reason.LOAD_BALANCING)


def test_resumes_only_after_limit_held_for_resume_after_s():
    clock = FakeClock()
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    limiter.update(inputs(budget=Budget(3.0)), clock.monotonic())
    t0 = clock.monotonic()
    ok = inputs(budget=Budget(10.0))
    for t in (0.0, 10.0, 29.9):
        assert limiter.update(ok, t0 + t) == Allowance(0.0, True, Reason.LOAD_BALANCING)
    assert limiter.update(ok, t0 + 30.0) == Allowance(10.0, False, Reason.LOAD_BALANCING)


def test_dip_during_the_wait_restarts_it():
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    limiter.update(inputs(budget=Budget(0.0)), 0.0)
    limiter.update(inputs(budget=Budget(8.0)), 1.0)
    limiter.update(inputs(budget=Budget(5.0)), 25.0)  # restart
    assert limiter.update(inputs(budget=Budget(8.0)), 40.0).suspended
    assert limiter.update(inputs(budget=Budget(8.0)), 54.9).suspended
    assert not limiter.update(inputs(budget=Budget(8.0)), 70.0).suspended


def test_resume_margin_above_six_amps():
    limiter = CurrentLimiter(LimiterConfig(resume_a=8.0, resume_after_s=0.0))
    limiter.update(inputs(budget=Budget(0.0)), 0.0)
    assert limiter.update(inputs(budget=Budget(7.0)), 1.0).suspended  # 6 <= 7 < 8: stay
    assert limiter.update(inputs(budget=Budget(8.0)), 2.0) == Allowance(
        8.0, False, Reason.LOAD_BALANCING
    )
    # Once running, anything >= 6 A keeps it running (that is the hysteresis band).
    assert limiter.update(inputs(budget=Budget(6.5)), 3.0).amps == 6.5


def test_reset_forgets_a_suspension():
    limiter = CurrentLimiter()
    limiter.update(inputs(cable_a=None), 0.0)
    limiter.reset()
    assert not limiter.update(inputs(), 1.0).suspended


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="resume_a"):
        LimiterConfig(resume_a=5.0)


async def test_no_flapping_when_limit_oscillates_around_six_amps():
    clock = FakeClock()
    config = LimiterConfig(resume_after_s=30.0)
    limiter = CurrentLimiter(config)
    transitions: list[float] = []
    previous = False
    for k in range(3600):  # one hour, one sample a second
        amps = 5.8 if k % 7 in (0, 3) else 6.3  # dips below 6 A every few seconds
        allowance = limiter.update(inputs(budget=Budget(amps)), clock.monotonic())
        assert allowance.amps in (0.0, 6.3)
        if allowance.suspended != previous:
            transitions.append(clock.monotonic())
            previous = allowance.suspended
        await clock.advance(1.0)
    # It suspends on the first dip and never resumes: the limit is never held for 30 s.
    assert len(transitions) == 1


@given(
    st.lists(
        st.tuples(st.floats(0.1, 20.0), st.floats(min_value=0.0, max_value=12.0)),
        min_size=1,
        max_size=200,
    )
)
def test_resumes_are_at_least_resume_after_s_apart(steps: list[tuple[float, float]]):
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    now = 0.0
    last_suspend: float | None = None
    was_suspended = False
    for dt, amps in steps:
        now += dt
        allowance = limiter.update(inputs(budget=Budget(amps)), now)
        if amps < 6.0:
            assert allowance.suspended  # never offer current we may not give
        if allowance.suspended and not was_suspended:
            last_suspend = now
        if was_suspended and not allowance.suspended:
            assert last_suspend is not None and now - last_suspend >= 30.0
        was_suspended = allowance.suspended


# --- a Central System's command resumes at once; the hold is for budgets ------------------------


def test_a_raised_profile_resumes_on_the_same_update():
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    assert limiter.update(inputs(smart_charging=SmartChargingLimit(0.0)), 0.0).suspended
    raised = limiter.update(inputs(smart_charging=SmartChargingLimit(16.0)), 0.1)
    assert raised == Allowance(16.0, False, Reason.SMART_CHARGING)


def test_a_cleared_profile_resumes_on_the_same_update():
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    assert limiter.update(inputs(smart_charging=SmartChargingLimit(3.0)), 0.0).suspended
    assert limiter.update(inputs(), 0.5) == Allowance(32.0, False, Reason.HARDWARE)


def test_a_passed_through_budget_is_not_a_dip():
    # The balancer hands a connector its own (paused) limit back as the budget: when the
    # Central System raises the profile, the balancer's new share is taken at once.
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    paused = inputs(smart_charging=SmartChargingLimit(0.0), budget=Budget(0.0))
    assert limiter.update(paused, 0.0).suspended
    assert limiter.update(paused, 10.0).suspended
    raised = inputs(smart_charging=SmartChargingLimit(16.0), budget=Budget(12.0))
    assert limiter.update(raised, 10.2) == Allowance(12.0, False, Reason.LOAD_BALANCING)


def test_the_budgets_hold_still_applies_under_a_raised_profile():
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    limiter.update(inputs(smart_charging=SmartChargingLimit(16.0), budget=Budget(2.0)), 0.0)
    # The Central System pauses too; the budget is back at 3 s; the profile rises at 20 s:
    # the budget's hold runs from 3 s, whatever the profile did meanwhile.
    limiter.update(inputs(smart_charging=SmartChargingLimit(0.0), budget=Budget(12.0)), 3.0)
    held = inputs(smart_charging=SmartChargingLimit(16.0), budget=Budget(12.0))
    assert limiter.update(held, 20.0).suspended
    assert limiter.update(held, 32.9).suspended
    assert limiter.update(held, 33.0) == Allowance(12.0, False, Reason.LOAD_BALANCING)


def test_a_profile_that_rises_while_the_budget_is_short_waits_for_the_budget():
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    limiter.update(inputs(smart_charging=SmartChargingLimit(0.0), budget=Budget(12.0)), 0.0)
    limiter.update(inputs(smart_charging=SmartChargingLimit(16.0), budget=Budget(4.0)), 1.0)
    ok = inputs(smart_charging=SmartChargingLimit(16.0), budget=Budget(12.0))
    assert limiter.update(ok, 2.0).suspended
    assert not limiter.update(ok, 32.0).suspended


@given(
    st.lists(
        st.tuples(st.floats(0.01, 20.0), st.floats(min_value=0.0, max_value=40.0)),
        min_size=1,
        max_size=100,
    )
)
def test_without_a_budget_the_offer_is_always_the_limit_now(steps: list[tuple[float, float]]):
    limiter = CurrentLimiter(LimiterConfig(resume_after_s=30.0))
    now = 0.0
    for dt, amps in steps:
        now += dt
        got = limiter.update(inputs(smart_charging=SmartChargingLimit(amps)), now)
        assert got.amps == representable_current(min(amps, 32.0))
        assert got.suspended == (amps < 6.0)
