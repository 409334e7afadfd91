"""systemd notifications, and a watchdog that pings only while evsed is really alive.

`WATCHDOG=1` goes to systemd only when both halves of evsed are working:
- the safety core: every connector's last safety tick is at most `max_tick_age_s` old
  (`Charger.safety_tick_age()`, math.inf while a connector's core is not running);
- the application loop: the pinger is a task on that loop, so a blocked loop sends nothing,
  and a wake-up later than `max_loop_lag_s` past its due time (a loop that only turns now
  and then) sends nothing either.
When either stalls, the pings stop; systemd (`WatchdogSec`) kills and restarts the service,
and the unit's `ExecStopPost=evsed safe-off` leaves relay and pilot safe.

A frozen safety core does not wait for that (8 s, and never outside systemd): the
`FreezeGuard`, also a task on the loop, cuts the outputs itself once the tick is older than
`FREEZE_CUT_AGE_S` (`SafetyCore.cut_frozen`: relay open, pilot at state F, the connectors
Faulted), and the pings stop as above.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from evsed.controller.connector.core import CUT_LOG_EVERY_S, FROZEN_AFTER_S

log = logging.getLogger(__name__)

#: A safety tick older than this means a frozen safety core (the sampler ticks every
#: 10-200 ms, so one second is several missed ticks, not jitter).
MAX_TICK_AGE_S = 1.0
#: A pinger that wakes this much later than due means the application loop is not turning.
MAX_LOOP_LAG_S = 1.0
#: A safety tick older than this: the loop cuts the outputs itself. Past the watchdog's
#: 1 s (its withheld ping comes first, and a tick that is merely slow, as a busy Pi's
#: under a big frame, never breaks a charge off) and far below systemd's WatchdogSec=8.
#: The core bounds the loop's waits for it by the same age (core.FROZEN_AFTER_S).
FREEZE_CUT_AGE_S = FROZEN_AFTER_S
#: How often the guard looks: the cut comes at most this long after the age bound.
FREEZE_CHECK_S = 0.1
#: How long the guard waits for its cut (in a thread of its own: a driver the frozen core
#: holds may block it too) before it reports the cut as not confirmed and goes on.
FREEZE_CUT_WAIT_S = 1.0
#: While the core stays frozen, the guard drives the safe levels again this often (at its
#: next check instead when the last cut left a line unsafe or did not answer).
FREEZE_REDRIVE_S = 2.0
#: A re-drive that still leaves a line unsafe says so at most this often (not every check);
#: the same bound as an output's own failed trips (core.CUT_LOG_EVERY_S).
FREEZE_LOG_EVERY_S = CUT_LOG_EVERY_S


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about readiness and liveness; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False
    return True


def ping_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """How often to check and ping: a quarter of systemd's WATCHDOG_USEC (so one or two
    withheld pings after a short hiccup do not get the service killed); None: no watchdog."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0") or 0)
    except ValueError:
        return None
    return usec / 4e6 if usec > 0 else None


def read_tick_age(safety_tick_age: Callable[[], float], who: str) -> float:
    """The safety tick's age, math.inf when asking raised (logged): an age that cannot be
    read never passes for a fresh tick."""
    try:
        return float(safety_tick_age())
    except Exception:
        log.exception("%s: safety_tick_age() failed", who)
        return math.inf


class Watchdog:
    """Run `await watchdog.run()` as a task on the application loop."""

    def __init__(
        self,
        safety_tick_age: Callable[[], float],
        interval_s: float,
        *,
        max_tick_age_s: float = MAX_TICK_AGE_S,
        max_loop_lag_s: float = MAX_LOOP_LAG_S,
        notify: Callable[[str], bool] = sd_notify,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.safety_tick_age = safety_tick_age
        self.interval_s = interval_s
        self.max_tick_age_s = max_tick_age_s
        self.max_loop_lag_s = max_loop_lag_s
        self._notify = notify
        self._monotonic = monotonic
        self.pings = 0
        self.withheld = 0
        self._unhealthy: str | None = None  # why the last check withheld its ping

    def check(self, loop_lag_s: float) -> str | None:
        """None when healthy, else why not (for the log)."""
        age = read_tick_age(self.safety_tick_age, "watchdog")
        if not age <= self.max_tick_age_s:  # also catches NaN
            return f"safety tick {age:.2f} s old"
        if loop_lag_s > self.max_loop_lag_s:
            return f"application loop {loop_lag_s:.2f} s late"
        return None

    def beat(self, loop_lag_s: float = 0.0) -> bool:
        """One check; pings systemd when healthy. Returns whether it pinged."""
        problem = self.check(loop_lag_s)
        if problem is None:
            if self._unhealthy is not None:
                log.warning("watchdog: healthy again, pinging (was: %s)", self._unhealthy)
                self._unhealthy = None
            self._notify("WATCHDOG=1")
            self.pings += 1
            return True
        if self._unhealthy is None:
            # Once per episode: systemd will restart us if this lasts WatchdogSec.
            log.error("watchdog: withholding WATCHDOG=1: %s", problem)
        self._unhealthy = problem
        self.withheld += 1
        return False

    async def run(self) -> None:
        due = self._monotonic()
        while True:
            self.beat(max(0.0, self._monotonic() - due))
            due = self._monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)


class FreezeGuard:
    """Run `await guard.run()` as a task on the application loop (whether or not systemd
    watches): once the safety tick is older than `max_tick_age_s`, `cut(detail)` runs (in a
    thread of its own; it returns what it could not make safe), then `on_cut()` on the loop
    (tell the Central System), once per episode. A tick of `math.inf` (no core running:
    start-up, a Reset, a stop) is no freeze. Healthy again, it re-arms.

    While the core stays frozen the cut runs again (`redrives`): at the next check when the
    last one left a line unsafe (or raised), else every `redrive_s` (the core may be frozen
    in a state that undoes a level, a driver may have failed silently). Never two cuts at
    once: one that has not returned (a driver that blocks) is awaited, not joined by another
    thread stuck behind it; once it returns, its answer decides. The log says what is unsafe
    at most every `log_every_s`."""

    def __init__(
        self,
        safety_tick_age: Callable[[], float],
        cut: Callable[[str], list[str]],
        *,
        on_cut: Callable[[], None] = lambda: None,
        max_tick_age_s: float = FREEZE_CUT_AGE_S,
        interval_s: float = FREEZE_CHECK_S,
        cut_wait_s: float = FREEZE_CUT_WAIT_S,
        redrive_s: float = FREEZE_REDRIVE_S,
        log_every_s: float = FREEZE_LOG_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.safety_tick_age = safety_tick_age
        self._cut = cut
        self._on_cut = on_cut
        self.max_tick_age_s = max_tick_age_s
        self.interval_s = interval_s
        self.cut_wait_s = cut_wait_s
        self.redrive_s = redrive_s
        self.log_every_s = log_every_s
        self._monotonic = monotonic
        #: Episodes cut (one per freeze, whatever the re-drives).
        self.cuts = 0
        #: Cuts run again while a core stayed frozen (every episode).
        self.redrives = 0
        #: The cut running now, or the last one (done): its answer, None if it raised.
        self.cut_in_flight: asyncio.Future[list[str]] | None = None
        self._tripped = False
        self._episode_redrives = 0
        self._detail = ""
        self._last_cut_at = -math.inf
        self._safe = False  # the episode's last answered cut left every line safe
        self._logged_at = -math.inf  # the last CRITICAL of a re-drive

    async def check(self) -> bool:
        """One look; True if it cut the outputs now for a new episode (a re-drive while the
        same freeze lasts counts in `redrives`)."""
        age = read_tick_age(self.safety_tick_age, "freeze guard")
        if not math.isfinite(age):
            return False
        if age <= self.max_tick_age_s:
            if self._tripped:
                log.warning(
                    "freeze guard: the safety core ticks again (the cut re-driven %d times)",
                    self._episode_redrives,
                )
                self._tripped = False
            return False
        if self._tripped:
            await self._redrive(age)
            return False
        self._tripped = True
        self._episode_redrives = 0
        self._logged_at = -math.inf
        self.cuts += 1
        self._detail = detail = f"safety core froze: no tick for {age:.1f} s"
        log.critical("%s; the loop opens the relay and sets the pilot to state F", detail)
        failed = await self._drive()
        if failed is None:
            log.critical("freeze guard: the cut did not return within %s s", self.cut_wait_s)
        for line in failed or ():
            log.critical("freeze guard: NOT SAFE: %s", line)
        if not self._safe:  # the re-drives' CRITICALs count from this one
            self._logged_at = self._monotonic()
        try:
            self._on_cut()
        except Exception:
            log.exception("freeze guard: reporting the cut failed")
        return True

    async def _redrive(self, age: float) -> None:
        """The core is still frozen after its cut: drive the safe levels again when due."""
        pending = self.cut_in_flight
        if pending is not None and not pending.done():
            # A driver blocks the last cut: a second thread would only block behind it.
            self._log_unsafe(f"the cut has not returned ({age:.1f} s without a tick)")
            return
        if self._safe and self._monotonic() - self._last_cut_at < self.redrive_s:
            return
        was_safe = self._safe
        self.redrives += 1
        self._episode_redrives += 1
        failed = await self._drive()
        if failed is None:
            self._log_unsafe(f"the cut re-driven did not return within {self.cut_wait_s} s")
        elif failed:
            self._log_unsafe("; ".join(failed))
        elif not was_safe:
            log.warning(
                "freeze guard: the cut re-driven made every output safe (attempt %d)",
                self._episode_redrives + 1,
            )
        else:
            log.debug("freeze guard: safe levels re-driven (core frozen %.1f s)", age)

    def _log_unsafe(self, what: str) -> None:
        now = self._monotonic()
        if now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            log.critical(
                "freeze guard: NOT SAFE, the safety core still frozen: %s (re-driven %d times)",
                what,
                self._episode_redrives,
            )

    async def _drive(self) -> list[str] | None:
        """The episode's cut once more; what it could not make safe (None: no answer in
        time). Notes when, and whether every line is safe."""
        self._last_cut_at = self._monotonic()
        self._safe = False
        failed = await self._run_cut(self._detail, traceback=self._episode_redrives == 0)
        self._safe = failed == []
        return failed

    async def _run_cut(self, detail: str, *, traceback: bool = True) -> list[str] | None:
        """The cut in a daemon thread of its own (never the loop, never the default
        executor, which a blocked driver could hold); None if it did not answer in time.
        `traceback`: log it if the cut raises (the episode's first cut; not every re-drive)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[str]] = loop.create_future()
        # An answer that comes after the wait gave up is not awaited by anyone: its
        # exception is read here, so it is never reported as "never retrieved".
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.cut_in_flight = done

        def settle(result: list[str] | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def work() -> None:
            result: list[str] | BaseException
            try:
                result = self._cut(detail)
            except BaseException as exc:
                result = exc
            try:
                loop.call_soon_threadsafe(settle, result)
            except RuntimeError:  # the loop closed meanwhile
                pass

        try:
            threading.Thread(target=work, name="freeze-cut", daemon=True).start()
        except RuntimeError as exc:  # can't start new thread (a memory or pids limit)
            done.cancel()  # no answer will come: the next check may cut again
            return [f"the cut's thread could not start: {exc}"]
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result when
            # the answer and a cancel (the stop's) come in the same loop turn, swallowing
            # the cancel; the guard's task then never ended and the stop hung on it.
            async with asyncio.timeout(self.cut_wait_s):
                return await asyncio.shield(done)
        except TimeoutError:
            return None
        except Exception as exc:
            if traceback:
                log.exception("freeze guard: the cut raised")
            return [f"cut raised: {exc}"]

    async def run(self) -> None:
        """Check every `interval_s` for as long as evsed runs: a check that fails is
        logged (its traceback once per run of failures, then a line at most every
        `log_every_s`) and the guard looks again at the next interval, never ends."""
        failing_since: float | None = None
        logged_at = -math.inf
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception as exc:
                now = self._monotonic()
                if failing_since is None:
                    failing_since = logged_at = now
                    log.exception("freeze guard: a check failed; looking again")
                elif now - logged_at >= self.log_every_s:
                    logged_at = now
                    log.error(
                        "freeze guard: checks still failing (for %.0f s): %r",
                        now - failing_since,
                        exc,
                    )
            else:
                failing_since = None
