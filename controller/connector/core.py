"""The safety core: every connector's pilot sampling and output reactions, on one thread.

The core owns the outputs (contactor, PWM, lock). It runs each connector's sampler tick
and every command that may move an output, one at a time, on its own thread, so that
nothing the asyncio loop does (a 1.4 MiB frame, a slow SQLite commit, a callback that
sleeps) delays opening a contactor. The loop talks to it through a bounded queue of
commands and waits for each answer (a state-machine step takes microseconds; the loop may
wait on the core, never the reverse). What the core has to say (status, notes,
transactions to record, tags to authorise) goes into each connector's outbox and is
delivered on the loop (`loop.call_soon_threadsafe`), where hooks and listeners run.

Time stays injected: with a clock that runs in the world's time (`SystemClock`) the core
has its thread; with a simulated one (tests) the same ticks and commands run inline on the
loop, stepped by the clock, so an hour of charging still takes milliseconds and every
ordering is deterministic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evsed.controller.clock import Clock

if TYPE_CHECKING:
    from evsed.controller.connector.machine import Connector
    from evsed.controller.connector.sampler import Sampler

log = logging.getLogger(__name__)

#: Commands waiting for the core; a full queue means the core is stuck, not busy.
QUEUE_SIZE = 64
#: How long the loop waits for the core's answer to one command before giving up on it.
CALL_TIMEOUT_S = 2.0
#: The interpreter's thread switch interval while the core runs (see `start`).
SWITCH_INTERVAL_S = 0.001
#: The core thread's nice value (Linux, per thread), where the process may raise it
#: (root or CAP_SYS_NICE): on a busy CPU the scheduler wakes it before the rest.
CORE_NICE = -10


@dataclass
class _Unit:
    connector: Connector
    sampler: Sampler
    due: float = 0.0  # clock.monotonic() of the next tick
    last_tick_at: float | None = None  # time.monotonic() (real) of the last completed tick

    def tick(self, clock: Clock) -> float:
        interval = self.connector.run_guarded(self.sampler.tick)
        if not isinstance(interval, float | int):  # the tick raised: outputs cut, go on fast
            interval = self.sampler.rates.charging_interval_s
        self.last_tick_at = time.monotonic()
        return float(interval)


@dataclass
class _Command:
    fn: Callable[[], Any]
    answer: concurrent.futures.Future[Any]


_STOP = object()


class SafetyCore:
    def __init__(self, clock: Clock, *, threaded: bool, queue_size: int = QUEUE_SIZE) -> None:
        self.clock = clock
        self.threaded = threaded
        self._units: list[_Unit] = []
        self._queue: queue.Queue[_Command | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._running = False
        # Set once every connector has completed a tick since `start`: until then the
        # core is not yet guarding anything (and `tick_age` is inf).
        self._ticking = threading.Event()
        # Set when a command waited CALL_TIMEOUT_S in vain, cleared by the core's next
        # completed step: while set, commands are answered with their default at once.
        self._stuck = False

    def add(self, connector: Connector, sampler: Sampler) -> None:
        self._units.append(_Unit(connector, sampler))
        connector.attach(self)

    # ------------------------------------------------------------------ where we are

    def on_core(self) -> bool:
        """Whether the caller may touch the state machines directly."""
        if not self.threaded or not self._running:
            return True  # inline (simulated time), or before start / after stop
        return threading.get_ident() == self._thread_id

    def on_loop(self) -> bool:
        return self._loop_thread_id is None or threading.get_ident() == self._loop_thread_id

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        now = self.clock.monotonic()
        for unit in self._units:
            unit.due = now
        if self.threaded:
            # The core waits for the GIL whenever the loop runs Python code (a big frame's
            # schema check): at most one switch interval per hand-over. The default 5 ms
            # would be paid several times per tick; 1 ms keeps a cut within its budget.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            self._running = True
            self._thread = threading.Thread(target=self._run, name="safety-core", daemon=True)
            self._thread.start()
        else:
            for unit in self._units:
                name = f"safety-core-{unit.connector.id}"
                self._tasks.append(self._loop.create_task(self._run_inline(unit), name=name))

    async def stop(self) -> None:
        if self._thread is not None:
            # Joined on the loop, not in a worker: while the core finishes its last step
            # (a tick at most) nothing on the loop may queue a command behind the stop.
            self._queue.put(_STOP)
            self._thread.join(5.0)
            if self._thread.is_alive():
                log.error("the safety core did not stop within 5 s")
            self._thread = None
        self._running = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        self._ticking.clear()
        for unit in self._units:
            unit.last_tick_at = None
            unit.sampler.stop_workers()

    @property
    def running(self) -> bool:
        if self.threaded:
            return self._running and self._thread is not None and self._thread.is_alive()
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    def wait_ticking(self, timeout: float) -> bool:
        """Block (a worker thread, never the loop) until every connector has ticked once
        since `start`; False if that took longer than `timeout`."""
        return self._ticking.wait(timeout)

    def tick_age(self) -> float:
        """Real seconds since the oldest connector's last completed tick; inf if not running."""
        if not self.running or not self._units:
            return math.inf
        ticks = [u.last_tick_at for u in self._units]
        if any(t is None for t in ticks):
            return math.inf
        return max(0.0, time.monotonic() - min(t for t in ticks if t is not None))

    # ------------------------------------------------------------------ commands

    def call(self, fn: Callable[[], Any], default: Any = None) -> Any:
        """Run `fn` on the core and return its answer (`default` if the core is stuck)."""
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:  # not started, or stopped: the caller is the core
            return fn()
        if not self._thread.is_alive():
            # Never run an output-moving command with nobody sampling the pilot after it.
            log.error("the safety core's thread is gone; command refused, outputs cut")
            self._cut_all()
            return default
        if self._stuck:
            # The core is known not to answer: waiting CALL_TIMEOUT_S again for the same
            # default would block the loop (the watchdog's pinger, the frozen-core cut, the
            # Central System's answers) for as long, once per command, while the relay
            # may be closed.
            return default
        try:
            self._queue.put(_Command(fn, answer), timeout=CALL_TIMEOUT_S)
            return answer.result(timeout=CALL_TIMEOUT_S)
        except (queue.Full, TimeoutError):
            self._stuck = True
            log.error(
                "the safety core did not take a command within %s s; it is at:\n%s",
                CALL_TIMEOUT_S,
                self._where(),
            )
            # The caller answers with `default` (a Central System hears Rejected): the
            # command must then never run later behind its back. Once it is running it
            # cannot be withdrawn, so its own answer is awaited a little longer instead.
            if answer.cancel():
                return default
            try:
                return answer.result(timeout=CALL_TIMEOUT_S)
            except TimeoutError:
                return default

    def _where(self) -> str:
        frame = sys._current_frames().get(self._thread_id or -1)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(not running)"

    def deliver_soon(self, connector: Connector) -> None:
        """From the core thread: have the loop deliver `connector`'s outbox."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(connector.deliver)
        except RuntimeError:  # the loop closed meanwhile: nobody left to tell
            pass

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        _raise_priority()
        log.debug("safety core running (%d connectors)", len(self._units))
        stopped = False
        try:
            while True:
                try:
                    if not self._step():
                        stopped = True
                        return
                except BaseException:  # a bug of the core, or a SystemExit from a driver:
                    # nothing may end this thread while it owns the outputs.
                    log.exception("the safety core failed a step; cutting every output")
                    self._cut_all()
        finally:
            if not stopped:  # whatever ended it: nothing samples the pilot from here on
                log.critical("the safety core's thread ends; cutting every output")
                self._cut_all()

    def _cut_all(self) -> None:
        for unit in self._units:
            try:
                unit.connector.run_guarded(unit.connector.cut_outputs)
            except BaseException:
                log.exception("connector %s: outputs could not be cut", unit.connector.id)

    def _step(self) -> bool:
        """Commands first, then every tick that is due; False once told to stop."""
        due = min(u.due for u in self._units) if self._units else math.inf
        timeout = max(0.0, due - self.clock.monotonic())
        try:
            item = self._queue.get(timeout=min(timeout, 1.0))
        except queue.Empty:
            item = None
        while item is not None:
            if item is _STOP:
                return False
            assert isinstance(item, _Command)
            self._execute(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        now = self.clock.monotonic()
        for unit in self._units:
            if now >= unit.due:
                unit.due = now + unit.tick(self.clock)
        self._note_ticking()
        self._stuck = False
        return True

    def _note_ticking(self) -> None:
        if not self._ticking.is_set() and all(u.last_tick_at is not None for u in self._units):
            self._ticking.set()

    def _execute(self, command: _Command) -> None:
        if not command.answer.set_running_or_notify_cancel():
            return  # its caller gave up on it and answered without it
        try:
            result = command.fn()
        except BaseException as exc:  # the connector's guard already cut: hand it back
            self._stuck = False
            command.answer.set_exception(exc)
        else:
            self._stuck = False  # before the answer: its caller may send the next at once
            command.answer.set_result(result)

    async def _run_inline(self, unit: _Unit) -> None:
        while True:
            interval = unit.tick(self.clock)
            self._note_ticking()
            unit.connector.deliver()
            await self.clock.sleep(interval)


def _raise_priority() -> None:
    """Best effort: a higher scheduling priority for the calling thread only."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CORE_NICE)
    except (OSError, AttributeError) as exc:  # not permitted, or not Linux
        log.debug("safety core keeps its priority: %s", exc)
