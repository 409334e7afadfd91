"""A simulated electric vehicle on the far end of the control pilot (IEC 61851-1, REFERENCE §1).

The model is pure: no pins, no threads, no event loop. The bench feeds it the EVSE's
outputs (`set_duty`, `set_contactor`) and reads back what a real car would present:
the CP levels its resistors and diode make (`cp_high_volts`, `cp_low_volts`) and the
current it draws (`phase_currents_a`).

Time comes only from the injected clock. Every public call first advances the model to
`clock.monotonic()`, integrating energy exactly over the piecewise-linear current, so a
test with `FakeClock` gets the same answer however often (or rarely) it looks.

Behaviour (times are `EvConfig` fields, defaults in brackets):
- unplugged → A; plugged → B.
- B → C (D when `needs_ventilation`) once the car wants energy AND the duty offers at least
  `min_offer_a` [6 A] — a real car waits for PWM (B2) before closing S2. With
  `waits_for_pwm=False` it closes S2 at once and waits in C1.
- In C/D with the contactor closed it draws min(offered, max_current_a) + overdraw_a on
  1 or 3 phases. After any change of that target the draw ramps linearly from its present
  value to the new target over `response_s` [2 s] (the car's charger "following the duty").
- Contactor open, S2 open (pause, full battery, unplug) or pilot short: no current at once.
- PWM stops (no valid current in the duty) while charging: the draw ramps to 0 over
  `response_s`, and `pwm_loss_to_b_s` [3 s] after the PWM went away the car opens S2 (→ B)
  and waits for a fresh offer of at least `min_offer_a` before closing S2 again.
- Battery full (SoC reaches `target_soc`) → B. `pause()` → B, `resume()` → C again.
- Fault modes: `pilot_short` (CP shorted to PE → E, both plateaus 0 V) and `diode_missing`
  (the low plateau becomes -(high level) instead of the generator's -12 V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

__all__ = [
    "EV_FAULTS",
    "EvConfig",
    "MonotonicClock",
    "SimEv",
    "offered_current_a",
    "requests_digital_communication",
]

EV_FAULTS = ("pilot_short", "diode_missing")

# Nominal CP high level per state with a 12 V generator (REFERENCE §1.1). The plain
# 1 kΩ divider would give 8.8/5.6/2.4 V; the standard's nominal levels are what every
# classifier is centred on, so the model presents those, scaled with the generator.
_NOMINAL_HIGH_V = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0}

# Below this many Wh the battery counts as full; avoids float round-trip chatter.
_FULL_EPS_WH = 1e-6


class MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


def _duty_percent(duty: float) -> float:
    # Rounded so that 0.1 * 100 lands on the 10 % boundary rather than just past it.
    return round(duty * 100.0, 6)


def offered_current_a(duty: float) -> float:
    """Current per phase an EV reads from a PWM duty (fraction 0..1), REFERENCE §1.2 "EV reads".

    0.0 means "no charging": below 3 %, the 3-7 % digital-communication band, 7-8 %,
    and above 97 % (1.0 = steady +12 V, no PWM).
    """
    d = _duty_percent(duty)
    if 8.0 <= d < 10.0:
        amps = 6.0
    elif 10.0 <= d <= 85.0:
        amps = d * 0.6
    elif 85.0 < d <= 96.0:
        amps = (d - 64.0) * 2.5
    elif 96.0 < d <= 97.0:
        amps = 80.0
    else:
        return 0.0
    return round(amps, 6)


def requests_digital_communication(duty: float) -> bool:
    """3-7 % (5 % nominal): the EVSE asks for ISO 15118 / DIN 70121 instead of offering current."""
    return 3.0 <= _duty_percent(duty) < 7.0


@dataclass(slots=True)
class EvConfig:
    """The car and its driver's wishes. All fields can be changed later with `SimEv.configure`."""

    max_current_a: float = 32.0  # the on-board charger's limit per phase
    phases: int = 3  # 1 or 3
    capacity_kwh: float = 60.0
    soc: float = 20.0  # start state of charge, percent
    target_soc: float = 100.0  # percent; reaching it ends charging ("finish when full")
    wants_energy: bool = True
    paused: bool = False
    needs_ventilation: bool = False  # C → D
    waits_for_pwm: bool = True  # False: closes S2 as soon as it wants energy
    min_offer_a: float = 6.0  # offer needed before closing S2
    response_s: float = 2.0  # ramp time to a new current target
    pwm_loss_to_b_s: float = 3.0  # PWM gone while charging → S2 opens after this
    overdraw_a: float = 0.0  # draws this much above the offer (over-current tests)
    nominal_voltage_v: float = 230.0
    # Fixed per-phase deviation from nominal: deterministic "realistic" mains for the meter.
    voltage_offsets_v: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        _validate_config(self)


_BOOL_FIELDS = {"wants_energy", "paused", "needs_ventilation", "waits_for_pwm"}


def _validate_config(cfg: EvConfig) -> None:
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if isinstance(cfg.phases, bool) or cfg.phases not in (1, 3):
        raise ValueError(f"phases must be 1 or 3, got {cfg.phases!r}")
    numbers = {
        "max_current_a": (0.0, 80.0),
        "capacity_kwh": (1e-3, 1000.0),
        "soc": (0.0, 100.0),
        "target_soc": (0.0, 100.0),
        "min_offer_a": (0.0, 80.0),
        "response_s": (0.0, 60.0),
        "pwm_loss_to_b_s": (0.0, 600.0),
        "overdraw_a": (0.0, 80.0),
        "nominal_voltage_v": (1.0, 1000.0),
    }
    for name, (lo, hi) in numbers.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    offsets = cfg.voltage_offsets_v
    if len(offsets) != 3 or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in offsets
    ):
        raise ValueError(f"voltage_offsets_v must be three numbers, got {offsets!r}")


class SimEv:
    """One simulated EV. Not thread-safe: call it from the event-loop thread."""

    def __init__(self, clock: MonotonicClock, config: EvConfig | None = None) -> None:
        self._clock = clock
        self._cfg = replace(config) if config is not None else EvConfig()
        self._t = clock.monotonic()
        self._plugged = False
        self._duty = 1.0  # steady +12 V until the EVSE says otherwise
        self._contactor = False
        self._s2_closed = False
        self._faults: set[str] = set()
        self._battery_wh = self._cfg.capacity_kwh * 1000.0 * self._cfg.soc / 100.0
        self._delivered_wh = 0.0
        # Current draw: linear from (_t_from, _i_from) to (_t_to, _i_to), flat afterwards.
        self._i_from = self._i_to = 0.0
        self._t_from = self._t_to = self._t
        self._had_offer = False  # an offer was seen during this C session
        self._loss_deadline: float | None = None
        self._backed_off = False  # left C because PWM stopped: wait for a fresh offer

    # ----------------------------------------------------------------- inputs

    def update(self, now: float | None = None) -> None:
        """Advance the model to `now` (default: the clock). Time never runs backwards."""
        self._advance(self._clock.monotonic() if now is None else now)

    def plug(self) -> None:
        self._input(lambda: setattr(self, "_plugged", True))

    def unplug(self) -> None:
        self._input(lambda: setattr(self, "_plugged", False))

    def set_duty(self, duty: float) -> None:
        """PWM duty the EVSE generates, as a fraction: 1.0 = steady +12 V (no PWM), 0.0 = -12 V."""
        if isinstance(duty, bool) or not isinstance(duty, int | float):
            raise TypeError(f"duty must be a number, got {duty!r}")
        if not (math.isfinite(duty) and 0.0 <= duty <= 1.0):
            raise ValueError(f"duty must be a fraction between 0 and 1, got {duty!r}")
        self._input(lambda: setattr(self, "_duty", float(duty)))

    def set_contactor(self, closed: bool) -> None:
        self._input(lambda: setattr(self, "_contactor", bool(closed)))

    def pause(self) -> None:
        self.configure(paused=True)

    def resume(self) -> None:
        self.configure(paused=False)

    def set_fault(self, name: str, on: bool) -> None:
        if name not in EV_FAULTS:
            raise ValueError(f"unknown EV fault {name!r}; known: {', '.join(EV_FAULTS)}")
        self._input(lambda: (self._faults.add if on else self._faults.discard)(name))

    def configure(self, **changes: Any) -> None:
        """Change `EvConfig` fields (e.g. `soc=80, wants_energy=False`); validated as a whole.

        `soc` sets the battery content; changing `capacity_kwh` keeps the SoC percentage.
        Raises TypeError/ValueError naming the field, leaving the EV unchanged.
        """
        known = {f.name for f in fields(EvConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown EV field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        self.update()
        current = {name: getattr(self._cfg, name) for name in known}
        current["soc"] = self.soc
        new_cfg = EvConfig(**(current | changes))  # validates

        def apply() -> None:
            self._cfg = new_cfg
            self._battery_wh = new_cfg.capacity_kwh * 1000.0 * new_cfg.soc / 100.0

        self._input(apply)

    # ---------------------------------------------------------------- outputs

    @property
    def config(self) -> EvConfig:
        """A copy of the present configuration, with the present SoC."""
        return replace(self._cfg, soc=min(100.0, max(0.0, self.soc)))

    @property
    def state(self) -> str:
        """IEC 61851 state the EV presents: "A"-"E"."""
        self.update()
        return self._state()

    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def duty(self) -> float:
        return self._duty

    @property
    def contactor_closed(self) -> bool:
        return self._contactor

    @property
    def faults(self) -> frozenset[str]:
        return frozenset(self._faults)

    @property
    def soc(self) -> float:
        """State of charge, percent."""
        self.update()
        return self._battery_wh / (self._cfg.capacity_kwh * 1000.0) * 100.0

    @property
    def energy_delivered_wh(self) -> float:
        """Energy drawn through the contactor since creation (a meter's import register)."""
        self.update()
        return self._delivered_wh

    def offered_current_a(self) -> float:
        """What the car reads from the present duty, per phase."""
        return offered_current_a(self._duty)

    def cp_high_volts(self, generator_high_v: float = 12.0) -> float:
        """CP level during the generator's positive half (or steady +12 V)."""
        self.update()
        return generator_high_v * _NOMINAL_HIGH_V[self._state()] / 12.0

    def cp_low_volts(self, generator_low_v: float = -12.0) -> float:
        """CP level during the generator's negative half.

        The EV's diode blocks it, so normally the full generator level; without the diode
        the EV's resistors load it exactly as in the positive half: -(high level).
        """
        self.update()
        state = self._state()
        if state == "E":
            return 0.0
        if "diode_missing" in self._faults and state != "A":
            return generator_low_v * _NOMINAL_HIGH_V[state] / 12.0
        return generator_low_v

    def cp_volts_at(
        self, position: float, generator_high_v: float = 12.0, generator_low_v: float = -12.0
    ) -> float:
        """CP voltage at `position` (0..1) within one PWM period of the present duty."""
        if position < self._duty:
            return self.cp_high_volts(generator_high_v)
        return self.cp_low_volts(generator_low_v)

    def phase_currents_a(self) -> tuple[float, float, float]:
        """Current on L1, L2, L3 (0 when the contactor is open)."""
        self.update()
        amps = self._current_at(self._t)
        if self._cfg.phases == 1:
            return (amps, 0.0, 0.0)
        return (amps, amps, amps)

    def phase_voltages_v(self) -> tuple[float, float, float]:
        """Mains voltage L-N per phase (present whether or not the contactor is closed)."""
        nominal = self._cfg.nominal_voltage_v
        o1, o2, o3 = self._cfg.voltage_offsets_v
        return (nominal + o1, nominal + o2, nominal + o3)

    def phase_powers_w(self) -> tuple[float, float, float]:
        v = self.phase_voltages_v()
        i = self.phase_currents_a()
        return (v[0] * i[0], v[1] * i[1], v[2] * i[2])

    def power_w(self) -> float:
        return sum(self.phase_powers_w())

    def snapshot(self) -> dict[str, Any]:
        """Everything a status report wants, JSON-ready."""
        self.update()
        return {
            "state": self._state(),
            "plugged": self._plugged,
            "wants_energy": self._cfg.wants_energy,
            "paused": self._cfg.paused,
            "needs_ventilation": self._cfg.needs_ventilation,
            "soc": round(self.soc, 3),
            "target_soc": self._cfg.target_soc,
            "capacity_kwh": self._cfg.capacity_kwh,
            "max_current_a": self._cfg.max_current_a,
            "phases": self._cfg.phases,
            "offered_current_a": self.offered_current_a(),
            "current_a": list(self.phase_currents_a()),
            "power_w": round(self.power_w(), 3),
            "energy_delivered_wh": round(self._delivered_wh, 3),
            "faults": sorted(self._faults),
        }

    # --------------------------------------------------------------- internals

    def _state(self) -> str:
        if "pilot_short" in self._faults:
            return "E"
        if not self._plugged:
            return "A"
        if self._s2_closed:
            return "D" if self._cfg.needs_ventilation else "C"
        return "B"

    def _input(self, change: Any) -> None:
        self.update()  # the old inputs held until now
        change()
        self._settle()

    def _target_wh(self) -> float:
        return self._cfg.capacity_kwh * 1000.0 * self._cfg.target_soc / 100.0

    def _wants_now(self) -> bool:
        return (
            self._plugged
            and self._cfg.wants_energy
            and not self._cfg.paused
            and "pilot_short" not in self._faults
            and self._battery_wh < self._target_wh() - _FULL_EPS_WH
        )

    def _circuit_closed(self) -> bool:
        return self._s2_closed and self._contactor and "pilot_short" not in self._faults

    def _current_at(self, t: float) -> float:
        if t >= self._t_to or self._t_to <= self._t_from:
            return self._i_to
        frac = (t - self._t_from) / (self._t_to - self._t_from)
        return self._i_from + (self._i_to - self._i_from) * max(0.0, frac)

    def _open_s2(self) -> None:
        self._s2_closed = False
        self._had_offer = False
        self._loss_deadline = None

    def _settle(self) -> None:
        """Apply the state rules at `self._t` and retarget the current draw."""
        t = self._t
        offered = offered_current_a(self._duty)
        if not self._plugged:
            self._backed_off = False
        if self._s2_closed:
            if not self._wants_now():
                self._open_s2()
            elif offered > 0.0:
                self._had_offer = True
                self._loss_deadline = None
            elif self._had_offer:
                if self._loss_deadline is None:
                    self._loss_deadline = t + self._cfg.pwm_loss_to_b_s
                if t >= self._loss_deadline:
                    self._open_s2()
                    self._backed_off = True
        else:
            if offered >= self._cfg.min_offer_a and offered > 0.0:
                self._backed_off = False
            enough = offered >= self._cfg.min_offer_a and offered > 0.0
            eager = not self._cfg.waits_for_pwm and not self._backed_off
            if self._wants_now() and (enough or eager):
                self._s2_closed = True
                self._had_offer = offered > 0.0
                self._loss_deadline = None

        if self._circuit_closed() and offered > 0.0:
            target = min(offered, self._cfg.max_current_a) + self._cfg.overdraw_a
        else:
            target = 0.0
        if not self._circuit_closed():
            # No circuit, no current: nothing to ramp.
            self._i_from = self._i_to = 0.0
            self._t_from = self._t_to = t
        elif target != self._i_to:
            self._i_from = self._current_at(t)
            self._t_from = t
            self._i_to = target
            self._t_to = t + self._cfg.response_s

    def _advance(self, now: float) -> None:
        while self._t < now:
            end = now
            for event in (self._t_to, self._loss_deadline):
                if event is not None and self._t < event < end:
                    end = event
            self._t = self._integrate(self._t, end)
            self._settle()

    def _integrate(self, t0: float, t1: float) -> float:
        """Add the energy drawn over [t0, t1] (current linear there); stop early when full."""
        i0, i1 = self._current_at(t0), self._current_at(t1)
        if i0 == 0.0 and i1 == 0.0:
            return t1
        volts = self.phase_voltages_v()
        v_sum = volts[0] if self._cfg.phases == 1 else sum(volts)
        dt = t1 - t0
        energy_wh = v_sum * (i0 + i1) / 2.0 * dt / 3600.0
        room_wh = self._target_wh() - self._battery_wh
        if self._s2_closed and energy_wh >= room_wh > 0.0:
            tau = _time_to_energy(v_sum, i0, i1, dt, room_wh)
            self._battery_wh = self._target_wh()
            self._delivered_wh += room_wh
            return t0 + tau
        self._battery_wh += energy_wh
        self._delivered_wh += energy_wh
        return t1


def _time_to_energy(v_sum: float, i0: float, i1: float, dt: float, wh: float) -> float:
    """Time into a linear-current segment at which `wh` has been drawn."""
    # E(τ) = v·(i0·τ + (i1-i0)/(2·dt)·τ²)/3600
    a = (i1 - i0) / (2.0 * dt)
    b = i0
    c = -wh * 3600.0 / v_sum
    if abs(a) < 1e-12:
        tau = -c / b
    else:
        tau = (-b + math.sqrt(max(0.0, b * b - 4.0 * a * c))) / (2.0 * a)
    return min(max(tau, 0.0), dt)
