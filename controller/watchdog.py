"""systemd notifications, and a watchdog that pings only while evsed is really alive.

`WATCHDOG=1` goes to systemd only when both halves of evsed are working:
- the safety core: every connector's last safety tick is at most `max_tick_age_s` old
  (`Charger.safety_tick_age()`, math.inf while a connector's core is not running);
- the application loop: the pinger is a task on that loop, so a blocked loop sends nothing,
  and a wake-up later than `max_loop_lag_s` past its due time (a loop that only turns now
  and then) sends nothing either.
When either stalls, the pings stop; systemd (`WatchdogSec`) kills and restarts the service,
and the unit's `ExecStopPost=evsed safe-off` leaves relay and pilot safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: A safety tick older than this means a frozen safety core (the sampler ticks every
#: 10-200 ms, so one second is several missed ticks, not jitter).
MAX_TICK_AGE_S = 1.0
#: A pinger that wakes this much later than due means the application loop is not turning.
MAX_LOOP_LAG_S = 1.0


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
        try:
            age = self.safety_tick_age()
        except Exception:
            log.exception("watchdog: safety_tick_age() failed")
            age = math.inf
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
