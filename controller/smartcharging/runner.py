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
the timer is then made anew from the new time. Without that call a step forward delays a
boundary by at most one nap (30 s: the timer sleeps in naps and looks at the wall clock after
each). A timer that wakes early (the wall clock went back) finds the same answer and sets
itself again.
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
        if at is not None:
            self._timer = asyncio.get_running_loop().create_task(
                self._fire_at(at), name="smart-charging-timer"
            )

    async def _fire_at(self, at: datetime) -> None:
        # Naps of at most _NAP_S, the wall clock looked at after each: a step of it that
        # nobody reported (reevaluate) delays a boundary by at most one nap.
        while (delay := (at - self._clock.now()).total_seconds()) > 0:
            await self._clock.sleep(min(delay, _NAP_S))
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
