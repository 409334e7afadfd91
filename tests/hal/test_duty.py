from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evsed.hal.pilot.duty import current_to_duty, duty_to_current


@pytest.mark.parametrize(
    ("amps", "percent"),
    [
        (6, 10.0),
        (10, 16.6),
        (13, 21.6),
        (16, 26.6),
        (20, 33.3),
        (32, 53.3),
        (51, 85.0),
        (63, 89.2),
        (80, 96.0),
    ],
)
def test_reference_table_at_0_1_percent(amps: float, percent: float) -> None:
    assert current_to_duty(amps, 0.001) == pytest.approx(percent / 100, abs=1e-12)


def test_no_pwm_below_6a_and_for_nan() -> None:
    for amps in (0.0, 5.99, -3.0, math.nan):
        assert current_to_duty(amps) == 1.0


def test_gap_clamps_to_51a_and_cap_at_80a() -> None:
    for amps in (51.01, 52.0, 52.49):
        assert current_to_duty(amps) == pytest.approx(0.85)
        assert duty_to_current(current_to_duty(amps)) == 51.0
    assert current_to_duty(52.5) == pytest.approx(0.85)
    assert current_to_duty(500) == pytest.approx(0.96)


def test_lgpio_whole_percent_floors() -> None:
    assert current_to_duty(16, 0.01) == pytest.approx(0.26)
    assert duty_to_current(0.26) == pytest.approx(15.6)


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (0.0, None),
        (0.02, None),
        (0.05, None),
        (0.075, None),
        (0.08, 6.0),
        (0.095, 6.0),
        (0.10, 6.0),
        (0.5, 30.0),
        (0.85, 51.0),
        (0.9, 65.0),
        (0.96, 80.0),
        (0.965, 80.0),
        (0.975, None),
        (1.0, None),
        (math.nan, None),
    ],
)
def test_ev_reading_table(duty: float, amps: float | None) -> None:
    got = duty_to_current(duty)
    assert got == (None if amps is None else pytest.approx(amps))


@given(
    amps=st.floats(min_value=6.0, max_value=80.0),
    resolution=st.sampled_from([0.001, 0.01, 0.005, 1e-6]),
)
def test_ev_never_reads_more_and_at_most_one_step_less(amps: float, resolution: float) -> None:
    duty = current_to_duty(amps, resolution)
    got = duty_to_current(duty)
    assert got is not None
    assert got <= amps
    # 85 % reads back as 51 A (the low formula owns it), so from 51 A up to one high-range
    # step above 52.5 A the best the EVSE can signal is 51 A.
    high_step_a = resolution * 100 * 2.5
    if 51.0 < amps < 52.5 + high_step_a:
        target, step_a = 51.0, 0.0
    else:
        target, step_a = amps, resolution * 100 * (0.6 if amps <= 51.0 else 2.5)
    assert target - got <= step_a + 1e-9
