"""The simulated EV answers the pilot like a car: states, levels, current following the duty."""

from __future__ import annotations

import pytest

from evsed.hwmocks.ev import EvConfig, SimEv, offered_current_a, requests_digital_communication
from tests.support.clock import FakeClock

DUTY_16A = 16 / 0.6 / 100  # 26.67 %
DUTY_10A = 10 / 0.6 / 100
NO_PWM = 1.0


def make_ev(**cfg: object) -> tuple[FakeClock, SimEv]:
    clock = FakeClock()
    return clock, SimEv(clock, EvConfig(**cfg))  # type: ignore[arg-type]


async def start_charging(clock: FakeClock, ev: SimEv, duty: float = DUTY_16A) -> None:
    ev.plug()
    ev.set_duty(duty)
    ev.set_contactor(True)
    await clock.advance(ev.config.response_s)


@pytest.mark.parametrize(
    ("duty_pct", "amps"),
    [
        (0.0, 0.0),
        (2.9, 0.0),
        (5.0, 0.0),  # digital communication, not a current
        (7.5, 0.0),
        (8.0, 6.0),
        (9.9, 6.0),
        (10.0, 6.0),
        (16.6, 9.96),
        (26.6, 15.96),
        (53.3, 31.98),
        (85.0, 51.0),
        (89.2, 63.0),
        (96.0, 80.0),
        (96.5, 80.0),
        (97.0, 80.0),
        (97.1, 0.0),
        (100.0, 0.0),
    ],
)
def test_ev_reads_duty_per_iec_table(duty_pct: float, amps: float) -> None:
    assert offered_current_a(duty_pct / 100) == pytest.approx(amps)


def test_five_percent_asks_for_digital_communication() -> None:
    assert requests_digital_communication(0.05)
    assert not requests_digital_communication(0.10)


def test_levels_unplugged_plugged_and_charging() -> None:
    _, ev = make_ev()
    assert ev.state == "A"
    assert (ev.cp_high_volts(), ev.cp_low_volts()) == (12.0, -12.0)
    ev.plug()
    assert ev.state == "B"
    assert (ev.cp_high_volts(), ev.cp_low_volts()) == (9.0, -12.0)
    ev.set_duty(DUTY_16A)
    assert ev.state == "C"
    assert ev.cp_high_volts() == 6.0
    assert ev.cp_high_volts(generator_high_v=11.0) == pytest.approx(5.5)


def test_ventilation_gives_state_d_at_3_volts() -> None:
    _, ev = make_ev(needs_ventilation=True)
    ev.plug()
    ev.set_duty(DUTY_16A)
    assert ev.state == "D"
    assert ev.cp_high_volts() == 3.0


def test_waits_for_pwm_of_at_least_6a_before_closing_s2() -> None:
    _, ev = make_ev()
    ev.plug()
    ev.set_duty(NO_PWM)
    assert ev.state == "B"
    ev.set_duty(0.05)  # 5 %: digital communication, no current
    assert ev.state == "B"
    ev.set_duty(0.075)  # 7.5 %: no charging
    assert ev.state == "B"
    ev.set_duty(0.08)  # 6 A
    assert ev.state == "C"


def test_higher_minimum_offer_is_configurable() -> None:
    _, ev = make_ev(min_offer_a=10.0)
    ev.plug()
    ev.set_duty(0.10)  # 6 A
    assert ev.state == "B"
    ev.set_duty(DUTY_16A)
    assert ev.state == "C"


def test_eager_car_goes_to_c_at_once_and_waits_in_c1() -> None:
    _, ev = make_ev(waits_for_pwm=False)
    ev.set_contactor(True)
    ev.plug()
    assert ev.state == "C"
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)


async def test_no_current_while_contactor_open() -> None:
    clock, ev = make_ev()
    ev.plug()
    ev.set_duty(DUTY_16A)
    await clock.advance(10)
    assert ev.state == "C"
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    assert ev.energy_delivered_wh == 0.0


async def test_follows_offer_within_delay_three_phases() -> None:
    clock, ev = make_ev(response_s=2.0)
    ev.plug()
    ev.set_duty(DUTY_16A)
    ev.set_contactor(True)
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)  # the charger starts from zero
    await clock.advance(1.0)
    assert ev.phase_currents_a() == pytest.approx((8.0, 8.0, 8.0), abs=0.01)
    await clock.advance(1.0)
    assert ev.phase_currents_a() == pytest.approx((16.0, 16.0, 16.0), abs=0.01)
    ev.set_duty(DUTY_10A)
    await clock.advance(1.0)
    assert ev.phase_currents_a()[0] == pytest.approx(13.0, abs=0.01)
    await clock.advance(1.0)
    assert ev.phase_currents_a() == pytest.approx((10.0, 10.0, 10.0), abs=0.01)
    await clock.advance(60.0)
    assert ev.phase_currents_a() == pytest.approx((10.0, 10.0, 10.0), abs=0.01)


async def test_draws_min_of_offer_and_car_limit_on_one_phase() -> None:
    clock, ev = make_ev(phases=1, max_current_a=13.0)
    await start_charging(clock, ev, duty=DUTY_16A)
    assert ev.phase_currents_a() == (13.0, 0.0, 0.0)
    assert ev.power_w() == pytest.approx(230.0 * 13.0)


async def test_overdraw_for_over_current_tests() -> None:
    clock, ev = make_ev(overdraw_a=2.0)
    await start_charging(clock, ev, duty=DUTY_10A)
    assert ev.phase_currents_a()[0] == pytest.approx(12.0, abs=0.01)


async def test_contactor_opening_stops_current_immediately() -> None:
    clock, ev = make_ev()
    await start_charging(clock, ev)
    ev.set_contactor(False)
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    assert ev.state == "C"


async def test_energy_is_integrated_exactly() -> None:
    clock, ev = make_ev(phases=1, max_current_a=10.0, response_s=0.0, capacity_kwh=100.0)
    await start_charging(clock, ev, duty=DUTY_16A)
    await clock.advance(3600.0)
    assert ev.energy_delivered_wh == pytest.approx(2300.0)
    assert ev.soc == pytest.approx(20.0 + 2.3)


async def test_pause_and_resume() -> None:
    clock, ev = make_ev()
    await start_charging(clock, ev)
    ev.pause()
    assert ev.state == "B"
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    await clock.advance(5.0)
    assert ev.state == "B"
    ev.resume()
    assert ev.state == "C"
    await clock.advance(2.0)
    assert ev.phase_currents_a()[0] == pytest.approx(16.0, abs=0.01)


async def test_full_battery_goes_back_to_b() -> None:
    # 1 phase, 10 A, 230 V = 2.3 kW; 1 kWh battery from 50 % to 80 % takes 300 Wh = 469.6 s.
    clock, ev = make_ev(
        phases=1, max_current_a=10.0, response_s=0.0, capacity_kwh=1.0, soc=50.0, target_soc=80.0
    )
    await start_charging(clock, ev, duty=DUTY_16A)
    await clock.advance(469.0)
    assert ev.state == "C"
    await clock.advance(1.0)
    assert ev.state == "B"
    assert ev.soc == pytest.approx(80.0)
    assert ev.energy_delivered_wh == pytest.approx(300.0)
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    await clock.advance(600.0)
    assert ev.state == "B"
    ev.configure(target_soc=90.0)
    assert ev.state == "C"


async def test_full_during_ramp_is_found_in_one_big_step() -> None:
    clock, ev = make_ev(response_s=2.0, capacity_kwh=1.0, soc=99.9)
    await start_charging(clock, ev)
    await clock.advance(3600.0)
    assert ev.state == "B"
    assert ev.soc == pytest.approx(100.0)
    assert ev.energy_delivered_wh == pytest.approx(1.0)


async def test_unplug_goes_to_a() -> None:
    clock, ev = make_ev()
    await start_charging(clock, ev)
    ev.unplug()
    assert ev.state == "A"
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    assert ev.cp_high_volts() == 12.0


async def test_pwm_stop_stops_drawing_then_goes_back_to_b() -> None:
    clock, ev = make_ev(response_s=2.0, pwm_loss_to_b_s=3.0)
    await start_charging(clock, ev)
    ev.set_duty(NO_PWM)
    await clock.advance(1.0)
    assert ev.phase_currents_a()[0] == pytest.approx(8.0, abs=0.01)
    await clock.advance(1.0)
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    assert ev.state == "C"
    await clock.advance(0.9)
    assert ev.state == "C"
    await clock.advance(0.2)
    assert ev.state == "B"
    # Back in B it waits for a fresh offer, even if it is an eager car.
    ev.set_duty(DUTY_16A)
    assert ev.state == "C"


async def test_eager_car_backs_off_after_pwm_loss_until_offer_returns() -> None:
    clock, ev = make_ev(waits_for_pwm=False)
    await start_charging(clock, ev)
    ev.set_duty(NO_PWM)
    await clock.advance(10.0)
    assert ev.state == "B"
    ev.set_duty(DUTY_16A)
    assert ev.state == "C"


async def test_short_offer_gap_keeps_charging() -> None:
    clock, ev = make_ev(pwm_loss_to_b_s=3.0)
    await start_charging(clock, ev)
    ev.set_duty(NO_PWM)
    await clock.advance(2.0)
    ev.set_duty(DUTY_16A)
    await clock.advance(5.0)
    assert ev.state == "C"
    assert ev.phase_currents_a()[0] == pytest.approx(16.0, abs=0.01)


async def test_pilot_short_is_state_e() -> None:
    clock, ev = make_ev()
    await start_charging(clock, ev)
    ev.set_fault("pilot_short", True)
    assert ev.state == "E"
    assert (ev.cp_high_volts(), ev.cp_low_volts()) == (0.0, 0.0)
    assert ev.phase_currents_a() == (0.0, 0.0, 0.0)
    ev.set_fault("pilot_short", False)
    assert ev.state == "C"


def test_missing_diode_mirrors_the_high_level() -> None:
    _, ev = make_ev()
    ev.set_fault("diode_missing", True)
    assert ev.cp_low_volts() == -12.0  # no EV, nothing to load the line
    ev.plug()
    assert (ev.cp_high_volts(), ev.cp_low_volts()) == (9.0, -9.0)
    ev.set_duty(DUTY_16A)
    assert (ev.cp_high_volts(), ev.cp_low_volts()) == (6.0, -6.0)


def test_cp_volts_at_follows_the_pwm_period() -> None:
    _, ev = make_ev()
    ev.plug()
    ev.set_duty(0.25)
    assert ev.cp_volts_at(0.1) == 6.0
    assert ev.cp_volts_at(0.5) == -12.0


def test_voltages_nominal_with_fixed_offsets() -> None:
    _, ev = make_ev(voltage_offsets_v=(1.5, -2.0, 0.0))
    assert ev.phase_voltages_v() == (231.5, 228.0, 230.0)


def test_bad_inputs_are_clear_errors() -> None:
    _, ev = make_ev()
    with pytest.raises(ValueError, match="duty"):
        ev.set_duty(26.6)
    with pytest.raises(ValueError, match="phases"):
        ev.configure(phases=2)
    with pytest.raises(ValueError, match="unknown EV field"):
        ev.configure(colour="red")
    with pytest.raises(TypeError, match="wants_energy"):
        ev.configure(wants_energy="yes")
    with pytest.raises(ValueError, match="unknown EV fault"):
        ev.set_fault("flat_tyre", True)
    assert ev.config.phases == 3  # unchanged after the failed calls


async def test_configure_soc_and_capacity() -> None:
    clock, ev = make_ev(soc=40.0)
    ev.configure(capacity_kwh=30.0)
    assert ev.soc == pytest.approx(40.0)
    ev.configure(soc=75.0)
    assert ev.soc == pytest.approx(75.0)
    assert ev.config.soc == pytest.approx(75.0)
    ev.configure(wants_energy=False)
    await start_charging(clock, ev)
    assert ev.state == "B"
    snap = ev.snapshot()
    assert snap["state"] == "B"
    assert snap["soc"] == pytest.approx(75.0)


async def test_result_does_not_depend_on_how_often_it_is_read() -> None:
    script = [(0.0, DUTY_16A), (7.3, DUTY_10A), (15.1, NO_PWM), (16.0, 0.5), (40.0, NO_PWM)]
    results = []
    for step in (0.1, None):
        clock, ev = make_ev(capacity_kwh=0.05, soc=50.0, response_s=2.0)
        ev.plug()
        ev.set_contactor(True)
        t = 0.0
        for at, duty in script:
            if step is not None:
                while t + step < at:
                    t += step
                    await clock.advance(step)
                    ev.phase_currents_a()  # looking must not change anything
            await clock.advance(at - t)
            t = at
            ev.set_duty(duty)
        await clock.advance(100.0)
        results.append((ev.state, ev.soc, ev.energy_delivered_wh))
    assert results[0][0] == results[1][0] == "B"
    assert results[0][1] == pytest.approx(results[1][1])
    assert results[0][2] == pytest.approx(results[1][2])
