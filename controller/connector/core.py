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
from evsed.controller.connector.faults import Fault
from evsed.hal.interfaces import Contactor, PilotOutput
from evsed.hal.types import ContactorFault

if TYPE_CHECKING:
    from evsed.controller.connector.machine import Connector
    from evsed.controller.connector.sampler import Sampler

log = logging.getLogger(__name__)

#: How long a stop waits for the core thread's last step before it cuts the outputs itself.
STOP_JOIN_S = 5.0
#: How long that cut may take (a driver may be what froze the core).
STOP_CUT_WAIT_S = 1.0

#: Commands waiting for the core; a full queue means the core is stuck, not busy.
QUEUE_SIZE = 64
#: How long the loop waits for the core's answer to one command before giving up on it.
CALL_TIMEOUT_S = 2.0
#: A core whose last tick is older than this is frozen: the loop's freeze guard cuts the
#: outputs (watchdog.FreezeGuard), and a command waits for its answer at most until the
#: tick is this old (then none at all), so that the loop it blocks gets to the cut in time.
FROZEN_AFTER_S = 1.5
#: The interpreter's thread switch interval while the core runs (see `start`).
SWITCH_INTERVAL_S = 0.001
#: The core thread's nice value (Linux, per thread), where the process may raise it
#: (root or CAP_SYS_NICE): on a busy CPU the scheduler wakes it before the rest.
CORE_NICE = -10
#: How long the loop's freeze cut waits for an output the frozen core may be writing to
#: (the latch's lock) before it drives the safe level without it.
LATCH_WAIT_S = 0.2
#: How long the freeze cut waits for each output's trip (every output in a daemon thread
#: of its own, all at once): past LATCH_WAIT_S (a trip that had to wait for the latch's
#: lock still answers in time), below the freeze guard's and the stop's wait for the cut.
TRIP_WAIT_S = 0.5
#: An output that keeps failing its trip while a core stays frozen (the freeze guard drives
#: it again at every check) logs its traceback once per episode, then a line at most this
#: often; the freeze guard's CRITICALs follow the same bound (watchdog.FREEZE_LOG_EVERY_S).
CUT_LOG_EVERY_S = 10.0
#: The pilot levels that offer nothing: steady +12 V (no PWM) and steady -12 V (state F).
SAFE_DUTIES = (1.0, 0.0)


class OutputsLatched(RuntimeError):
    """An output move refused: the loop cut the outputs of a frozen safety core, and the
    core (woken up mid-step) may not undo that until it has recorded the fault itself."""


class _Latched:
    """One output between a connector and its driver, with a latch the loop can close.

    A move that could offer energy (closing the relay, a PWM duty) runs under the latch's
    lock and is refused while the latch is closed; opening and the safe pilot levels always
    pass. The loop's `trip` takes the same lock (bounded: a core frozen *inside* this very
    driver holds it) so that no move checked before the trip lands after it."""

    def __init__(self, device: Any, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._lock = threading.Lock()
        self.tripped = False
        self._trip_run: _TripRun | None = None  # the last trip in a thread of its own
        self._monotonic = monotonic
        # This episode's failed trips (an episode lasts until `release`): the first is
        # logged with its traceback, the rest in a line at most every CUT_LOG_EVERY_S.
        self._failures = 0
        self._failure_logged_at = -math.inf

    def __getattr__(self, name: str) -> Any:  # the driver's extras (resolution, frequency)
        if name == "device":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.device, name)

    def _move(
        self, fn: Callable[[], object], *, safe: bool, undo: Callable[[], object] | None = None
    ) -> None:
        with self._lock:
            if self.tripped and not safe:
                raise OutputsLatched("outputs cut by the loop: the safety core froze")
            fn()
            if not safe and self.tripped:
                # Tripped while `fn` ran: the core was frozen inside this very driver, the
                # loop's cut went ahead without the lock, and `fn`'s write landed after it.
                if undo is not None:
                    undo()
                raise OutputsLatched("outputs cut by the loop while this move was in flight")

    def trip(self, safe_level: Callable[[], object]) -> None:
        locked = self._lock.acquire(timeout=LATCH_WAIT_S)
        try:
            self.tripped = True
            safe_level()  # without the lock if the core is stuck inside this driver
        finally:
            if locked:
                self._lock.release()

    def begin_trip(self, name: str, safe_level: Callable[[], object]) -> _TripRun:
        """`trip` in a daemon thread of its own (a driver the frozen core holds may block
        it), so that no other output waits behind this one; `_TripRun.outcome` says how it
        went. Never a second thread while the last one is still blocked in the driver:
        that one is reported instead (threads piling up behind a stuck driver help no one).
        The latch closes here, before the thread runs: a move checked after this returns is
        refused, one in flight is undone (`_move`)."""
        self.tripped = True
        last = self._trip_run
        if last is not None and not last.done.is_set():
            return _TripRun.blocked(name)
        run = _TripRun(name, lambda: self.trip(safe_level), self._note_failure)
        self._trip_run = run
        run.start()
        return run

    def _note_failure(self, name: str, exc: BaseException) -> None:
        """From the trip's thread, in its `except`: a trip that raised, logged seldom."""
        self._failures += 1
        now = self._monotonic()
        if self._failures == 1:
            self._failure_logged_at = now
            log.exception("freeze cut: the %s could not be driven safe", name)
        elif now - self._failure_logged_at >= CUT_LOG_EVERY_S:
            self._failure_logged_at = now
            log.error(
                "freeze cut: the %s still cannot be driven safe: %s (%d failed trips)",
                name,
                exc,
                self._failures,
            )

    def release(self) -> None:
        with self._lock:
            self.tripped = False
            self._failures = 0  # the episode is over: the next one's first says it all
            self._failure_logged_at = -math.inf

    def shutdown(self) -> None:
        self.device.shutdown()


class _TripRun:
    """One output driven safe in a daemon thread of its own (`_Latched.begin_trip`)."""

    def __init__(
        self,
        name: str,
        trip: Callable[[], object] | None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._trip = trip
        self._on_error = on_error
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.problem: str | None = None  # why it is not safe without having run

    @classmethod
    def blocked(cls, name: str) -> _TripRun:
        run = cls(name, None)
        run.problem = "its last trip is still blocked in the driver"
        return run

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name=f"trip-{self.name}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread: the next cut tries again
            self.problem = f"its trip could not start: {exc}"
            self.done.set()

    def _run(self) -> None:
        assert self._trip is not None
        try:
            self._trip()
        except BaseException as exc:  # a SystemExit from a driver did not drive it safe either
            self.error = exc
            if self._on_error is not None:
                self._on_error(self.name, exc)
        finally:
            self.done.set()

    def outcome(self, deadline: float, wait_s: float) -> str | None:
        """None: driven safe; else why not (waits until `deadline`, time.monotonic(), the
        end of the `wait_s` all trips begun together were given)."""
        if self.problem is not None:
            return f"{self.name}: {self.problem}"
        if not self.done.wait(max(0.0, deadline - time.monotonic())):
            return f"{self.name}: did not return within {wait_s} s"
        if self.error is not None:
            if isinstance(self.error, Exception):
                return f"{self.name}: {self.error}"
            # A SystemExit's text is its exit code alone ("1"): name what it was.
            return f"{self.name}: {type(self.error).__name__} {self.error}".rstrip()
        return None


def _await_trips(runs: list[tuple[str, _TripRun]], wait_s: float) -> list[str]:
    """What the trips begun together could not make safe within `wait_s` (one bound for
    them all: they run at once)."""
    deadline = time.monotonic() + wait_s
    failed: list[str] = []
    for prefix, run in runs:
        problem = run.outcome(deadline, wait_s)
        if problem is not None:
            failed.append(prefix + problem)
    return failed


class LatchedContactor(_Latched):
    @property
    def energized(self) -> bool:
        return bool(self.device.energized)

    def energize(self) -> None:
        self._move(self.device.energize, safe=False, undo=self.device.deenergize)

    def deenergize(self) -> None:
        self._move(self.device.deenergize, safe=True)

    def feedback(self) -> bool | None:
        result: bool | None = self.device.feedback()
        return result

    def fault(self) -> ContactorFault | None:
        result: ContactorFault | None = self.device.fault()
        return result


class LatchedPilot(_Latched):
    @property
    def duty(self) -> float:
        return float(self.device.duty)

    def set_duty(self, duty: float) -> None:
        self._move(
            lambda: self.device.set_duty(duty),
            safe=duty in SAFE_DUTIES,
            undo=lambda: self.device.set_duty(0.0),  # state F, as the cut leaves it
        )


@dataclass
class OutputLatch:
    """A connector's relay and pilot, latched (see `_Latched`): build the connector on
    `contactor` and `pilot`, and hand the latch to `SafetyCore.latch_outputs`."""

    contactor: LatchedContactor
    pilot: LatchedPilot

    @classmethod
    def around(
        cls,
        contactor: Contactor,
        pilot: PilotOutput,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> OutputLatch:
        return cls(
            LatchedContactor(contactor, monotonic=monotonic),
            LatchedPilot(pilot, monotonic=monotonic),
        )

    def begin_trip(self) -> list[_TripRun]:
        """Relay open and the pilot at state F (-12 V: EVSE not available), each in a
        thread of its own (`_Latched.begin_trip`): state F never waits for the relay."""
        return [
            self.contactor.begin_trip("relay", self.contactor.device.deenergize),
            self.pilot.begin_trip("pilot", lambda: self.pilot.device.set_duty(0.0)),
        ]

    def trip(self, wait_s: float = TRIP_WAIT_S) -> list[str]:
        """Both outputs driven safe at once; what did not become safe within `wait_s`."""
        return _await_trips([("", run) for run in self.begin_trip()], wait_s)

    def release(self) -> None:
        self.contactor.release()
        self.pilot.release()


@dataclass
class _Unit:
    connector: Connector
    sampler: Sampler
    due: float = 0.0  # clock.monotonic() of the next tick
    last_tick_at: float | None = None  # time.monotonic() (real) of the last completed tick

    def tick(self, clock: Clock) -> float:
        try:
            interval = self.connector.run_guarded(self.sampler.tick)
        except KeyboardInterrupt:  # only ever inline, on the main thread: a person's ^C
            raise
        except BaseException:
            # A SystemExit from a driver: the connector's guard has cut its outputs and
            # recorded the fault (logged once) before it went on up. It ends here, as an
            # Exception does: this connector's tick is planned, the others run on. Passed
            # up, the thread's last resort cut every connector without a fault and began
            # again at once, and a healthy one's relay cycled under load at every step.
            interval = None
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
        # The loop's freeze cut (`cut_frozen`): the latches it closes, and why, until the
        # core wakes up and records the fault itself (`_acknowledge_freeze`).
        self._latches: list[OutputLatch] = []
        self._freeze_lock = threading.Lock()
        self._frozen: str | None = None

    def add(self, connector: Connector, sampler: Sampler) -> None:
        self._units.append(_Unit(connector, sampler))
        connector.attach(self)

    def latch_outputs(self, latches: list[OutputLatch]) -> None:
        """The connectors' outputs as latched (`OutputLatch`), in the order they were
        added: what `cut_frozen` drives."""
        self._latches = list(latches)

    # ------------------------------------------------------------------ a frozen core

    @property
    def frozen(self) -> str | None:
        """Why the loop cut the outputs (the core had stopped ticking), until the core has
        recorded the fault itself; None otherwise. Any thread may read it."""
        return self._frozen

    def cut_frozen(self, detail: str) -> list[str]:
        """From a thread other than the core (the loop's freeze guard): relay open and pilot
        at state F on every connector, through the latches, taking no lock the frozen core
        may hold beyond each output's own (bounded). Every output is driven in a daemon
        thread of its own, all at once, waited for at most TRIP_WAIT_S: a driver that
        blocks (the core may have frozen inside it) holds up nothing but itself. Returns
        what could not be made safe (an output not back in time among it).

        The latches stay closed until the core runs again: its next step records an
        internal fault on every connector (Faulted, the transaction stopped; it clears on
        unplug or reset) and only then opens them."""
        with self._freeze_lock:
            runs = [
                (f"connector {n} ", run)
                for n, latch in enumerate(self._latches, 1)
                for run in latch.begin_trip()
            ]
            failed = _await_trips(runs, TRIP_WAIT_S)
            # After the trips: a core that woke in between finds them closed, and its
            # next step, seeing this, records the fault and opens them.
            self._frozen = detail
        return failed

    def _cut_bounded(self, detail: str) -> list[str]:
        """`cut_frozen` from a daemon thread of its own, waited for at most
        STOP_CUT_WAIT_S: a driver the frozen core is stuck in must not hold the stop too."""
        result: list[list[str]] = []

        def cut() -> None:
            try:
                result.append(self.cut_frozen(detail))
            except BaseException as exc:  # the stop reports it, not "did not return"
                result.append([f"the cut raised {exc!r}"])

        worker = threading.Thread(target=cut, name="stop-cut", daemon=True)
        worker.start()
        worker.join(STOP_CUT_WAIT_S)
        return result[0] if result else [f"the cut did not return within {STOP_CUT_WAIT_S} s"]

    def _acknowledge_freeze(self) -> None:
        with self._freeze_lock:
            detail = self._frozen
            if detail is None:
                return
            for unit in self._units:
                connector = unit.connector
                connector.run_guarded(lambda c=connector: c.raise_fault(Fault.INTERNAL, detail))
            for latch in self._latches:
                latch.release()
            self._frozen = None
        log.warning("the safety core runs again; connectors stay Faulted until unplug or reset")

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
            deadline = time.monotonic() + STOP_JOIN_S
            try:
                # Bounded: a frozen core with its queue full must not hang the stop here,
                # before the cut below.
                self._queue.put(_STOP, timeout=STOP_JOIN_S)
            except queue.Full:
                pass  # the core takes nothing: the join runs out and the stop cuts
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                # Frozen during the stop: the freeze guard cannot look while the loop waits
                # here, so the stop cuts the outputs itself before it goes on.
                log.critical(
                    "the safety core did not stop within %s s: the loop opens the relay and "
                    "sets the pilot to state F",
                    STOP_JOIN_S,
                )
                for line in self._cut_bounded(f"safety core did not stop within {STOP_JOIN_S} s"):
                    log.critical("stop: NOT SAFE: %s", line)
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
            return answer.result(timeout=self._answer_wait())
        except (queue.Full, TimeoutError):
            self._stuck = True
            log.error(
                "the safety core did not answer a command (last tick %.2f s ago); it is at:\n%s",
                self.tick_age(),
                self._where(),
            )
            # The caller answers with `default` (a Central System hears Rejected): the
            # command must then never run later behind its back. Once it is running it
            # cannot be withdrawn, so its own answer is awaited a little longer instead.
            if answer.cancel():
                return default
            try:
                return answer.result(timeout=self._answer_wait())
            except TimeoutError:
                return default

    def _answer_wait(self) -> float:
        """CALL_TIMEOUT_S, but no longer than until the core counts as frozen: the loop
        waiting here must not sit out the freeze guard's bound (a frozen core got every
        command of the loop's, meter samples included, 2 s each, and the cut came after
        them); a core frozen already gets no wait at all. Before the first tick: the
        whole timeout (nothing to judge by yet)."""
        age = self.tick_age()
        if not math.isfinite(age):
            return CALL_TIMEOUT_S
        return min(CALL_TIMEOUT_S, max(0.0, FROZEN_AFTER_S - age))

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
        if self._frozen is not None:
            self._acknowledge_freeze()
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
