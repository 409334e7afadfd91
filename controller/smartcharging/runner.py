"""Hands each connector's limiter the smart-charging limit in force, and wakes exactly when it
next changes: a timer on the injected clock, no polling loop.

    runner = SmartChargingRunner(charger, clock, evaluate, connector_ids=(1, 2))
    runner.start()
    ...  # a profile installed or cleared, a transaction started or stopped:
    runner.reevaluate()          # (or reevaluate(connector_id))
    ...
    await runner.stop()

`evaluate(connector_id, now)` answers what the composite schedule says at `now` (wall-clock
UTC): the limit (None: no profile applies, the connector's own limits rule) and when that
answer next changes (None: never, as far as the installed profiles go). The runner keeps one
timer for the earliest change of any connector; when it fires, or when `reevaluate` is
called, every connector (or the one named) is evaluated anew and the charger told only what
changed. A profile change therefore reaches the pilot in the same loop turn as its answer,
and a period boundary within one timer wake-up of it (well inside the 1 s the issue allows).

Time: `now` is the clock's wall time, because schedules are written in it; the wait is
taken on the same clock (`clock.sleep`), so a FakeClock runs a day of periods in
milliseconds. If the wall clock is set (the BootNotification's time), call `reevaluate()`:
the timer is then made anew from the new time. A step nobody reports (NTP correcting a Pi
that booted with a wrong time) is found within one nap: the timer sleeps in naps of at most
30 s, also with no boundary pending, and after each compares how far the wall clock moved
with the monotonic clock; a difference of more than 2 s is a step, and every connector is
evaluated anew. A step back matters most: a profile whose validTo had passed on a clock
that ran ahead is valid again, and its limit must be applied again, not only at some later
boundary (there may be none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from evsed.controller.clock import Clock
from evsed.controller.limiter import SmartChargingLimit

log = logging.getLogger(__name__)

# A timer's wake-up and the boundary it waits for may differ by float rounding of the
# clock: a boundary this close counts as reached (no second wake-up a microsecond later).
_ROUNDING = timedelta(milliseconds=1)
#: The longest sleep before the wall clock is looked at again (as ocpp16/expiry.py does).
_NAP_S = 30.0
#: Over one nap, the wall clock moving this much more or less than the monotonic clock is a
#: step of it (NTP slews a drift by at most 0.5 ms/s: 15 ms a nap).
_STEP_S = 2.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the schedule says for one connector at one moment."""

    limit: SmartChargingLimit | None
    next_change: datetime | None
    number_phases: int | None = None


#: (connector_id, now) -> what the composite schedule says then.
Evaluate = Callable[[int, datetime], Evaluation]


class LimitSink(Protocol):
    def set_smart_charging_limit(
        self, connector_id: int, value: SmartChargingLimit | None
    ) -> None: ...


class SmartChargingRunner:
    def __init__(
        self,
        charger: LimitSink,
        clock: Clock,
        evaluate: Evaluate,
        *,
        connector_ids: Iterable[int],
        set_phases: Callable[[int, int], bool] | None = None,
    ) -> None:
        """`set_phases(connector_id, phases)`: the charger's 1/3-phase switch, told a
        period's numberPhases when it changes (None: the charger has none)."""
        self._charger = charger
        self._clock = clock
        self._evaluate = evaluate
        self._ids = tuple(connector_ids)
        self._set_phases = set_phases
        self._phases: dict[int, int | None] = {}
        self._applied: dict[int, SmartChargingLimit | None] = {}
        self._next: dict[int, datetime | None] = {}
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: datetime | None = None
        self._running = False
        #: Evaluations made (for tests and the benchmark: no polling means few of these).
        self.evaluations = 0

    @property
    def next_change(self) -> datetime | None:
        """When the timer fires next (None: nothing scheduled)."""
        return self._timer_at

    def applied(self, connector_id: int) -> SmartChargingLimit | None:
        return self._applied.get(connector_id)

    def start(self) -> None:
        """Evaluate every connector now (profiles restored from the store) and arm the timer."""
        self._running = True
        self.reevaluate()

    async def stop(self) -> None:
        self._running = False
        await self._cancel_timer()

    def reevaluate(self, connector_id: int | None = None) -> None:
        """A profile was installed or cleared, a transaction started or stopped, the wall
        clock was set: apply what the schedule says now, and re-arm the timer."""
        if not self._running:
            return
        ids = self._ids if connector_id is None else (connector_id,)
        now = self._clock.now()
        for cid in ids:
            self._apply(cid, now)
        # Always a new timer: the wall clock may have been set since the old one began its
        # sleep, which was computed from the old time (a boundary would fire late by the step).
        self._arm(renew=True)

    def _apply(self, cid: int, now: datetime) -> None:
        self.evaluations += 1
        try:
            result = self._evaluate(cid, now)
        except Exception:
            # A schedule the pure code cannot evaluate must not leave an old, higher limit
            # in force: offer nothing until the profiles change (fail safe).
            log.exception("smart-charging evaluation of connector %s failed: pausing it", cid)
            result = Evaluation(SmartChargingLimit(0.0), None)
        self._next[cid] = result.next_change
        if cid not in self._applied or self._applied[cid] != result.limit:
            self._applied[cid] = result.limit
            self._charger.set_smart_charging_limit(cid, result.limit)
        if cid != 0 and self._set_phases is not None:
            # No numberPhases (no profile, or one that says none) means three (OCPP 1.6
            # §7.12): a connector switched to one phase goes back once that period ends.
            wanted = 1 if result.number_phases == 1 else 3
            if self._phases.get(cid) != wanted:
                self._phases[cid] = wanted
                self._set_phases(cid, wanted)

    def _arm(self, *, renew: bool = False) -> None:
        pending = [t for t in self._next.values() if t is not None]
        at = min(pending) if pending else None
        running = self._timer is not None and not self._timer.done()
        if not renew and at == self._timer_at and running:
            return
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        # Also with nothing pending: the naps watch the wall clock for a step.
        self._timer = asyncio.get_running_loop().create_task(
            self._fire_at(at), name="smart-charging-timer"
        )

    async def _fire_at(self, at: datetime | None) -> None:
        # Naps of at most _NAP_S, the wall clock looked at after each: a step of it that
        # nobody reported (reevaluate) is found within one nap, and every connector is
        # evaluated anew from the new time.
        while True:
            wall, mono = self._clock.now(), self._clock.monotonic()
            delay = _NAP_S if at is None else (at - wall).total_seconds()
            if delay <= 0:
                break
            await self._clock.sleep(min(delay, _NAP_S))
            moved = (self._clock.now() - wall).total_seconds() - (self._clock.monotonic() - mono)
            if abs(moved) > _STEP_S:
                log.info("wall clock stepped %+.0f s: smart-charging limits evaluated anew", moved)
                self._timer, self._timer_at = None, None  # reevaluate arms a new timer
                self.reevaluate()
                return
        assert at is not None
        # Only the connectors whose answer was due change; the others keep theirs.
        now = self._clock.now()
        self._timer = None
        self._timer_at = None
        now = max(now, at) if at - now <= _ROUNDING else now
        for cid, due in list(self._next.items()):
            if due is not None and due <= now + _ROUNDING:
                self._apply(cid, now)
        self._arm()

    async def _cancel_timer(self) -> None:
        timer, self._timer, self._timer_at = self._timer, None, None
        if timer is not None and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
