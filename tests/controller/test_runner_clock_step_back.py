"""The smart-charging runner finds a wall-clock step nobody reported, also with no boundary
pending, and applies what the profiles say at the new time.

A Pi whose clock ran ahead (booted with a wrong time) saw a profile's validTo pass and lifted
its limit; NTP then steps the clock back to before validTo: the profile is valid again. No
boundary was pending (nothing after validTo), so the runner had no timer and the limit
stayed lifted until some unrelated change (a new profile, a transaction) made it look
again. Its naps now watch the wall clock against the monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.smartcharging.composite import ElectricalContext, limit_at
from evsed.controller.smartcharging.model import Purpose
from evsed.controller.smartcharging.profileset import ProfileSet
from evsed.controller.smartcharging.runner import Evaluate, Evaluation, SmartChargingRunner
from tests.support.clock import FakeClock
from tests.support.smartcharging import profile

EL = ElectricalContext(phases=3, voltage_v=230.0)


@dataclass
class Sink:
    applied: dict[int, SmartChargingLimit | None] = field(default_factory=dict)

    def set_smart_charging_limit(self, connector_id: int, value: SmartChargingLimit | None) -> None:
        self.applied[connector_id] = value


def evaluator(profiles: ProfileSet) -> Evaluate:
    def evaluate(cid: int, now: datetime) -> Evaluation:
        got = limit_at(profiles, cid, now, transaction=None, electrical=EL, connector_ids=(1,))
        limit = None if got.limit is None else SmartChargingLimit(got.limit)
        return Evaluation(limit, got.next_change)

    return evaluate


async def test_a_step_back_before_valid_to_applies_the_limit_again() -> None:
    clock = FakeClock()
    profiles = ProfileSet()
    until = clock.now() + timedelta(minutes=10)
    profiles.install(
        profile(
            1,
            Purpose.TX_DEFAULT,
            0,
            [(0, 6.0)],
            start=clock.now() - timedelta(hours=1),
            valid_to=until,
        )
    )
    sink = Sink()
    runner = SmartChargingRunner(sink, clock, evaluator(profiles), connector_ids=[1])
    runner.start()
    try:
        assert sink.applied[1] == SmartChargingLimit(6.0)
        await clock.advance(15 * 60)  # validTo passed: the limit is lifted
        assert sink.applied[1] is None
        assert runner.next_change is None  # nothing pending after validTo
        clock.offset_s -= 10 * 60  # NTP: the clock was 10 minutes ahead; nobody reports it
        assert clock.now() < until
        await clock.advance(31)  # one nap
        assert sink.applied[1] == SmartChargingLimit(6.0)
        evaluations = runner.evaluations
        await clock.advance(3 * 60)  # no step: the naps evaluate nothing
        assert runner.evaluations == evaluations
    finally:
        await runner.stop()
