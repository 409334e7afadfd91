"""How much current a connector may offer: the smallest of its limits, as the pilot can say it.

Pure logic, no I/O. Time is passed in as `now` (monotonic seconds), so the resume delay is
testable without a clock object.

Typical use by the connector state machine, on every input change and every meter sample:

    limiter = CurrentLimiter(LimiterConfig())
    allowance = limiter.update(LimitInputs(hardware_a=32, cable_a=pp.cable_a, config_a=16,
                                           smart_charging=..., budget=..., meter=sample), now)
    if allowance.suspended: -> SuspendedEVSE: pilot 100 % (no PWM), keep the transaction
    else: pilot duty = current_to_duty(allowance.amps)

A limit of 0 A never ends the session: it only suspends (`Allowance.suspended`), and the
transaction stays open until the EV or the user ends it.

Resume rule (anti-flapping): the connector suspends at once when the limit falls below 6 A
(offering 6 A would exceed a limit, so there is no choice). How it resumes depends on what
held it down:

- The load balancer's or the solar controller's budget (`LimitInputs.budget`) flaps with the
  household load and the clouds. A suspension in which the budget dipped below `resume_a`
  (default 6 A) while it was the tighter limit ends only after the budget has stayed at or
  above `resume_a` *continuously* for `resume_after_s` (default 30 s); any dip restarts that
  wait. So however a budget oscillates around 6 A, the contactor closes at most once per
  `resume_after_s`; 30 s is well above the EV's ~5 s reaction to a new duty and several
  meter intervals, and short enough that a user does not wonder why nothing happens.
- Everything else is a decision, not a measurement: a Central System's profile (limit 0 =
  pause, evcc's way of switching off; its ChargePointMaxProfile too, which reaches a
  connector as a budget of reason SMART_CHARGING when the balancer shares it), the cable,
  the configuration, the invalid-id rule.
  When such a limit rises back to 6 A or more, the connector resumes on that very update:
  a Central System that raises or clears a profile must see the EV charge again within a
  second, and a hold would only make it think the charger ignored it.

A budget that is not below the connector's own limit is not a dip: the budget was not
what held it down. (The balancer gives a connector that cannot run, idle or paused by its
own limit, the budget it would get on joining, so its budget is already right when its own
limit rises: a newcomer's first allowance is its share, never a placeholder 0 A.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from evsed.hal.pilot.duty import HIGH_RANGE_MIN_A, LOW_RANGE_MAX_A, MAX_CURRENT_A, MIN_CURRENT_A
from evsed.hal.types import MeterSample

# 51 A < I <= 52.5 A has no duty value of its own: 52.5 A would be 85 %, which the EV reads
# on the lower formula as 51 A (REFERENCE 1.2). So the whole gap floors to 51 A.
_GAP_LOW_A = LOW_RANGE_MAX_A
_GAP_HIGH_A = HIGH_RANGE_MIN_A


class Reason(StrEnum):
    """The constraint that set the allowed current (for logs, StatusNotification info, UI)."""

    HARDWARE = "hardware"
    CABLE = "cable"
    CONFIG = "config"
    SMART_CHARGING = "smart_charging"
    LOAD_BALANCING = "load_balancing"
    SOLAR = "solar"
    # StopTransactionOnInvalidId=false: the CS refused the idTag of a running transaction.
    INVALID_ID = "invalid_id"
    # The 1/3-phase relay is moving: nothing is offered until it has (charger.set_phases).
    PHASE_SWITCH = "phase_switch"


@dataclass(frozen=True, slots=True)
class Allowance:
    """What the connector may offer now. `amps` is 0.0 whenever `suspended` is True."""

    amps: float
    suspended: bool
    reason: Reason


@dataclass(frozen=True, slots=True)
class SmartChargingLimit:
    """The composite-schedule limit in force now, in the CS's unit (OCPP chargingRateUnit).

    `min_rate` is the prevailing profile's minChargingRate in the same unit: the least the EV
    charges at efficiently (§7.13). A limit below it (and above 0) is not offered: the
    connector pauses instead of charging inefficiently (see `limit`).
    """

    value: float
    unit: Literal["A", "W"] = "A"
    min_rate: float | None = None
    # The ChargePointMaxProfile's limit as it runs for this connector, in its own unit: a
    # second limit, converted like the first (a W limit with the phases the EV draws), so
    # which of the two binds is decided in amps, never by a conversion guessed beforehand.
    cap: SmartChargingLimit | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """Current per phase granted by the load balancer (or the solar controller)."""

    amps: float
    reason: Reason = Reason.LOAD_BALANCING


@dataclass(frozen=True, slots=True)
class Electrical:
    """How to turn watts into amps when the meter cannot tell us."""

    nominal_v: float = 230.0
    phases: int = 3  # phases wired to the connector; assumed drawn until a meter shows otherwise
    # A phase counts as drawn when its current exceeds this: above meter noise and a sleeping
    # EV's standby draw, far below the 6 A minimum.
    active_threshold_a: float = 1.0


@dataclass(frozen=True, slots=True)
class LimitInputs:
    """Everything that caps a connector's current, in amps per phase unless stated.

    `cable_a` is the PP rating (None = no cable = 0 A); with a fixed cable pass its rating.
    `smart_charging` and `budget` are None when no profile / no load balancing applies.
    `meter` is the connector's last meter sample, used to convert a watt limit.
    `invalid_id_suspended` is a slot of its own (0 A while set), so a smart-charging limit
    in force underneath is neither overwritten nor lost.
    """

    hardware_a: float
    cable_a: float | None
    config_a: float
    smart_charging: SmartChargingLimit | None = None
    budget: Budget | None = None
    meter: MeterSample | None = None
    invalid_id_suspended: bool = False
    phase_switching: bool = False


@dataclass(frozen=True, slots=True)
class Limit:
    """The raw minimum (not yet rounded to what the pilot can express) and who set it.

    `min_a`: the least current worth offering, 6 A (IEC 61851) or the profile's
    minChargingRate when that is higher; below it the connector suspends.
    """

    amps: float
    reason: Reason
    min_a: float = MIN_CURRENT_A


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    resume_a: float = MIN_CURRENT_A
    resume_after_s: float = 30.0
    electrical: Electrical = field(default_factory=Electrical)

    def __post_init__(self) -> None:
        if not self.resume_a >= MIN_CURRENT_A:
            raise ValueError(f"resume_a must be >= {MIN_CURRENT_A} A, got {self.resume_a}")
        if not self.resume_after_s >= 0:
            raise ValueError(f"resume_after_s must be >= 0, got {self.resume_after_s}")


def representable_current(amps: float) -> float:
    """Floor `amps` to a current a pilot duty cycle can offer; 0.0 means "cannot charge".

    Same rule as `evsed.hal.pilot.duty.current_to_duty` (which further floors to the PWM
    resolution): below 6 A nothing, 51 < I <= 52.5 A -> 51 A, above 80 A -> 80 A. NaN -> 0
    (fail safe).
    """
    if not amps >= MIN_CURRENT_A:
        return 0.0
    if amps > MAX_CURRENT_A:
        return MAX_CURRENT_A
    if _GAP_LOW_A < amps <= _GAP_HIGH_A:
        return _GAP_LOW_A
    return float(amps)


def active_phases(
    sample: MeterSample | None, wired_phases: int, threshold_a: float = 1.0
) -> tuple[int, ...]:
    """Indices (0 = L1) of the phases the EV actually draws, judged from the meter sample.

    Falls back to all wired phases when there is no sample or nothing is drawn yet (EV not
    charging): assuming more phases gives fewer amps per phase, the safe side.
    """
    wired = tuple(range(max(1, min(3, wired_phases))))
    if sample is None:
        return wired
    drawn = tuple(
        i for i in wired if (c := sample.current_a[i]) is not None and abs(c) > threshold_a
    )
    return drawn or wired


def watts_to_amps(
    watts: float, sample: MeterSample | None, electrical: Electrical | None = None
) -> float:
    """Per-phase current that draws `watts` in total: I = P / (sum of phase voltages drawn).

    Uses the measured voltage of each phase actually drawn; the nominal voltage stands in only
    for a phase whose voltage is missing or not positive.
    """
    el = electrical or Electrical()
    volts = 0.0
    for i in active_phases(sample, el.phases, el.active_threshold_a):
        v = None if sample is None else sample.voltage_v[i]
        volts += v if v is not None and math.isfinite(v) and v > 0 else el.nominal_v
    return watts / volts


def _sane(amps: float | None) -> float:
    # A broken input must not raise the current: NaN or negative counts as 0 A (+inf = no limit).
    if amps is None or math.isnan(amps) or amps < 0:
        return 0.0
    return float(amps)


def minimum_current(inputs: LimitInputs, electrical: Electrical | None = None) -> float:
    """The least current worth offering: 6 A, or the profile's minChargingRate if higher (in
    amps per phase, converted like the limit). A broken minChargingRate counts as none."""
    sc = inputs.smart_charging
    if sc is None or sc.min_rate is None or not math.isfinite(sc.min_rate):
        return MIN_CURRENT_A
    rate = _sane(sc.min_rate)
    amps = rate if sc.unit == "A" else watts_to_amps(rate, inputs.meter, electrical)
    # Above what any duty can offer it would pause for ever: the pilot's 80 A is the most.
    return min(max(MIN_CURRENT_A, amps), MAX_CURRENT_A)


def limit(inputs: LimitInputs, electrical: Electrical | None = None) -> Limit:
    """min() of every constraint; on a tie the earlier one in `Reason` order is reported."""
    candidates: list[tuple[float, Reason]] = [
        (_sane(inputs.hardware_a), Reason.HARDWARE),
        (_sane(inputs.cable_a), Reason.CABLE),
        (_sane(inputs.config_a), Reason.CONFIG),
    ]
    sc = inputs.smart_charging
    while sc is not None:
        amps = (
            sc.value if sc.unit == "A" else watts_to_amps(_sane(sc.value), inputs.meter, electrical)
        )
        candidates.append((_sane(amps), Reason.SMART_CHARGING))
        sc = sc.cap
    if inputs.budget is not None:
        candidates.append((_sane(inputs.budget.amps), inputs.budget.reason))
    if inputs.invalid_id_suspended:
        candidates.append((0.0, Reason.INVALID_ID))
    if inputs.phase_switching:
        candidates.append((0.0, Reason.PHASE_SWITCH))
    amps, reason = min(candidates, key=lambda c: c[0])  # min() keeps the first of equals
    return Limit(amps, reason, minimum_current(inputs, electrical))


class CurrentLimiter:
    """One per connector: `limit()` plus the suspend/resume hysteresis (see module docstring)."""

    def __init__(self, config: LimiterConfig | None = None) -> None:
        self.config = config or LimiterConfig()
        self._suspended = False
        # During a suspension: the budget dipped below resume_a (the hold applies), and
        # since when it has been back at or above it (None: not yet, or dipping now).
        self._budget_dipped = False
        self._ok_since: float | None = None

    @property
    def suspended(self) -> bool:
        return self._suspended

    def reset(self) -> None:
        """Forget the suspension history (e.g. when the EV unplugs)."""
        self._suspended = False
        self._budget_dipped = False
        self._ok_since = None

    def _note_budget(self, inputs: LimitInputs, now: float, min_a: float) -> None:
        """While suspended (or suspending): follow the budget for the resume hold."""
        if inputs.budget is None or inputs.budget.reason is Reason.SMART_CHARGING:
            # A budget held down by the Central System's cap for the whole charge point
            # (the balancer shares a ChargePointMaxProfile) is a decision: no hold.
            return
        resume_a = max(self.config.resume_a, min_a)
        budget = representable_current(_sane(inputs.budget.amps))
        own = representable_current(
            limit(replace(inputs, budget=None), self.config.electrical).amps
        )
        if budget < resume_a and budget < own:
            self._budget_dipped = True
            self._ok_since = None
        elif self._budget_dipped and self._ok_since is None and budget >= resume_a:
            self._ok_since = now

    def update(self, inputs: LimitInputs, now: float) -> Allowance:
        lim = limit(inputs, self.config.electrical)
        amps = representable_current(lim.amps)
        # Below 6 A the pilot cannot offer it; below the EV's minChargingRate it would only
        # charge inefficiently (OCPP 1.6 §7.13): either way the connector suspends.
        low = amps < lim.min_a
        if low or self._suspended:
            self._note_budget(inputs, now, lim.min_a)
        if low:
            self._suspended = True
            return Allowance(0.0, True, lim.reason)
        if self._suspended:
            if self._budget_dipped:
                held = self._ok_since is not None and (
                    now - self._ok_since >= self.config.resume_after_s
                )
                if not held:
                    return Allowance(0.0, True, lim.reason)
            self.reset()
        return Allowance(amps, False, lim.reason)
