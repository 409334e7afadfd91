"""The per-connector state machine: when energy may flow, and what the connector shows.

Facts come in as events (pilot state, authorisation, faults, allowed current, commands);
the session phase changes by the explicit table in `_transition`; after every event the
outputs (pilot duty, contactor) and the OCPP status are derived again from the facts.

Safety reactions happen first, synchronously, in the handler of the event that demands
them: nothing on that path awaits the network, the disk, a log line or a callback.

The connector lives in the safety core (`core.py`): its commands run on the core's thread
(the `@command` methods route themselves there), and what it has to tell the rest of the
charger (notes, status, transactions to record, tags to authorise) goes into an outbox that
`deliver()` empties on the asyncio loop, where hooks and listeners run, each isolated: a
callback that raises is logged and counted, and the connector never hears of it. Any
exception inside the connector itself, a driver's included, cuts the outputs and shows
Faulted/InternalError until the fault's clearing rule (unplug, reset) is met.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from evsed.controller.clock import Clock
from evsed.controller.connector.faults import RULES, Clear, Fault, most_serious
from evsed.controller.connector.hooks import (
    AuthResult,
    ConnectorHooks,
    Transaction,
    TransactionStop,
)
from evsed.controller.connector.phases import (
    NO_EV_STATES,
    PLUGGED_STATES,
    Authorized,
    AuthTimedOut,
    Event,
    EvPlugged,
    EvUnplugged,
    Phase,
    StopRequested,
)
from evsed.controller.connector.settings import Settings
from evsed.controller.connector.status import (
    RESERVED_FOR_ANOTHER,
    ChargePointStatus,
    ConnectorStatus,
    ErrorCode,
    StopReason,
)
from evsed.controller.connector.view import ConnectorView
from evsed.controller.masking import mask_tag
from evsed.hal.interfaces import Contactor, LockActuator, PilotOutput
from evsed.hal.pilot.duty import MIN_CURRENT_A, NO_PWM, current_to_duty
from evsed.hal.types import ContactorFault, MeterSample, PilotReading, PilotState

if TYPE_CHECKING:
    from evsed.controller.connector.core import SafetyCore

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def command(default: Any = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A method that changes the connector: it runs on the safety core, guarded.

    Called from elsewhere (the loop), it is queued to the core and its answer awaited, then
    what it caused is delivered; called on the core, it runs at once. If it raises, the
    outputs are cut and the caller gets `default`.
    """

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            self = args[0]
            assert isinstance(self, Connector)
            return self._command(functools.partial(fn, *args, **kwargs), default)  # type: ignore[no-any-return]

        return run

    return wrap


WELDED_DETAIL = "auxiliary contact closed while commanded open"
#: A meter reading at or below this shows the contactor open (what remains is the charger's
#: own electronics where the meter sits upstream of the contactor).
STOPPED_POWER_W = 100.0
#: A reading polled this long after the contactor was commanded open is no longer the
#: registers of before (meters refresh every 0.5-1 s): load in it means welded contacts.
WELD_BY_METER_S = 3.0
#: That many such readings in a row raise Fault.WELDED (one glitch clears only by a reset).
WELD_BY_METER_READINGS = 2
#: ... and where the meter counts energy, the import register must have grown by more than
#: this between them: a Modbus-TCP gateway that serves a cached copy of the registers for
#: seconds shows the old load, but its energy stands still (a weld that lasts makes it grow).
WELD_ENERGY_WH = 0.5
#: Current that flows through the plug (a lock stays shut on it; with the relay commanded
#: open, a weld): well above anything the charger's own electronics draw through a meter
#: upstream of the contactor, which must never trap a cable or need a reset (2 A, 460 W).
FLOWING_A = 2.0
FLOWING_W = 460.0
#: A session's lock that reads open this long (a position switch's bounce is shorter; a
#: plug pulled out takes longer) is a lock failure: the relay is cut.
LOCK_LOST_S = 0.05

DUTY_OFF = NO_PWM  # steady +12 V: no current offered (A1/B1/C1)
DUTY_F = 0.0  # steady -12 V: state F


@dataclass(slots=True)
class _PendingStop:
    """A transaction that ended whose meter reading is not taken yet: current may still
    flow (the soft stop, the contactor dropping out) and it is this session's energy."""

    tx: Transaction
    reason: StopReason
    id_tag: str | None
    requested: float  # monotonic
    requested_at: datetime
    open_since: float | None = None  # monotonic: when the contactor was first read open


#: A core that has completed no tick for this long (real seconds) is stuck, not stepping:
#: `Connector.view` then reads the fields itself rather than wait 2 s per read for it.
STUCK_CORE_S = 1.0


def _flowing(sample: MeterSample, phases: int = 3) -> bool:
    """Whether a meter reading shows current through the plug (FLOWING_A, FLOWING_W) on the
    connector's own phases (L1 first): a one-phase connector on a three-phase meter whose L2
    and L3 carry other loads must not read as welded. The total power only where the meter
    gives nothing per phase."""
    own = range(max(1, min(phases, 3)))
    currents = [a for a in (sample.current_a[i] for i in own) if a is not None]
    if currents:
        return any(abs(a) > FLOWING_A for a in currents)
    powers = [w for w in (sample.power_w[i] for i in own) if w is not None]
    if powers:
        return sum(abs(w) for w in powers) > FLOWING_W
    power = sample.power_total_w
    return power is not None and abs(power) > FLOWING_W


class ChargerWideReservation(Protocol):
    """A reservation of the whole charger (ReserveNow on connector 0), asked on the safety
    core, where all connectors' states are consistent."""

    def refusal(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> str | None:
        """Why this start would leave no connector for the reserved idTag, or None."""
        ...

    def claim(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> int | None:
        """The reservationId the starting transaction uses up, if it is the reserved tag's."""
        ...


class Connector:
    def __init__(
        self,
        settings: Settings,
        *,
        pilot: PilotOutput,
        contactor: Contactor,
        hooks: ConnectorHooks,
        clock: Clock,
        lock: LockActuator | None = None,
    ) -> None:
        self.settings = settings
        self.id = settings.connector_id
        self._pilot = pilot
        self._contactor = contactor
        self._lock = lock
        self._hooks = hooks
        self._clock = clock

        self.phase = Phase.IDLE
        self.pilot_state = PilotState.A
        self.faults: dict[Fault, str] = {}
        self.transaction: Transaction | None = None
        self.operative = True
        self._pending_operative: bool | None = None  # Scheduled until the transaction ends
        #: The charger's, not the CS's: why no transaction may start now (a firmware
        #: installation), None when starts are allowed. Idle, the connector reads Unavailable.
        self.maintenance: str | None = None
        self.allowed_a = settings.max_current_a or settings.rated_current_a
        # The limiter's latest wish, written by the loop before its command: a command the
        # core never ran (stuck: answered with its default, dropped) is not lost, the core
        # takes the wish at its next step (`supervise`), a lower current above all.
        self._wanted_a = self.allowed_a
        self.cable_a: int | None = None  # from PP; None = unknown/fixed cable
        self.last_sample: MeterSample | None = None
        self.last_energy_wh: float | None = None
        self._energy_at: datetime | None = None  # when `last_energy_wh` came
        # The highest register seen since the transaction started: its stop never reports
        # less than a reading the Central System already has (a meter glitch after it).
        self._peak_energy_wh: float | None = None
        self._pending_stop: _PendingStop | None = None
        self.temperature_c: float | None = None  # the socket's, when a sensor is fitted
        self.rcd_tested = False
        self.reservation: tuple[int, str, str | None, float] | None = None
        #: The charger's reservation of connector 0, which every connector's gate asks.
        self.charger_wide: ChargerWideReservation | None = None
        self._authorized: Authorized | None = None
        self._auth_deadline: float | None = None
        self._authorizing = False
        self._f_until: float | None = None
        self._soft_off_since: float | None = None
        self._lock_since: float | None = None  # lock commanded, not yet confirmed
        self._lock_open_since: float | None = None  # a confirmed lock first read open
        self._lock_kept = False  # a Local stop kept the lock: it goes when the EV leaves
        self._overcurrent_since: float | None = None
        self._power_only_said = False  # the over-current check's warning for such a meter
        self._status: ConnectorStatus | None = None
        self._listeners: list[Callable[[str, dict[str, object]], None]] = []
        # What the charger must act on (cable rating, phase): explicit, not a timeline note.
        self._on_change: list[Callable[[str, dict[str, object]], None]] = []
        self._core: SafetyCore | None = None
        self._depth = 0  # commands nested on the core (only the outermost one is guarded)
        self._driver_errors: list[BaseException] = []  # driver calls that raised this step
        self._outbox: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._delivering = False
        self._delivery_pending = False
        self._recorded: tuple[Transaction, Transaction | None] | None = None  # loop side
        self._tx_recorded = False  # the start hook returned: the lock may engage
        self._status_held = False  # a change waits for the contactor to have opened
        self._unlock_pending = False  # an unlock waits for the contactor to have opened
        self._unlock_deadline: float | None = None  # UnlockConnector's bound on that wait
        self._unlock_given_up = False  # that unlock was withdrawn, never driven: UnlockFailed
        self._unlocking_since: float | None = None  # unlock driven, position not yet read
        self._start_waits_since: float | None = None  # a start waits for a meter reading
        self._f_read_since: float | None = None  # the pilot reads F that evsed does not drive
        self._open_seen_at: float | None = None  # the contactor first seen commanded open
        self._load_after_open = 0  # readings in a row with load well after it opened
        self._weld_energy_from: float | None = None  # the import register at the first one
        self._sample_polled_at = -math.inf  # when the poll of `last_sample` began
        # Whether `pilot_state` was read since evsed last drove state F: during the F the CP
        # shows evsed's own -12 V (`on_pilot` ignores it), so the EV may have opened S2 or
        # left unseen. The relay closes only on a state read with the F over.
        self._pilot_seen = False
        #: Callbacks (listeners, hooks) that raised, and internal errors the core survived.
        self.callback_errors = 0
        self.internal_errors = 0
        # Whether a fault's cause is still there; such a fault survives its clearing event.
        self._probes: dict[Fault, Callable[[], bool]] = {
            Fault.WELDED: lambda: self._contactor.fault() == ContactorFault.WELDED
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self.offered_a = 0.0

    # ------------------------------------------------------------------ observers

    @property
    def energized(self) -> bool:
        return self._contactor.energized

    def phase_relay_refusal(self) -> str | None:
        """Why the phase relay must not move now, or None: only with the contactor commanded
        open, its auxiliary contact reading open and no fault (a welded or unjudged contact
        carries current; the relay would break or make the load on L2/L3). A read only."""
        if self._contactor.energized:
            return "contactor commanded closed"
        if self._contactor.feedback() is True:
            return "contactor reads closed"
        if self._contactor.fault() is not None:
            return f"contactor fault ({self._contactor.fault()})"
        fault = self._blocking_fault()
        if fault is not None:
            return f"faulted ({fault})"
        return None

    @property
    def status(self) -> ConnectorStatus:
        frozen = self._core.frozen if self._core is not None else None
        if frozen is not None:
            # The loop cut the outputs of a frozen core (SafetyCore.cut_frozen): what the
            # connector last derived is stale until the core wakes and records the fault.
            return ConnectorStatus(ChargePointStatus.FAULTED, ErrorCode.INTERNAL_ERROR, frozen[:50])
        if self._status is not None:
            return self._status
        if self._contactor_opening():
            # Nothing published yet (start-up) and the contactor reads closed although it
            # was never closed: until the driver has judged it, it is what it most likely
            # is, welded; never Available (the session may ask before the judgement).
            return ConnectorStatus(
                ChargePointStatus.FAULTED, RULES[Fault.WELDED].error_code, WELDED_DETAIL
            )
        return self._derive_status()

    def view(self) -> ConnectorView:
        """The core-written fields in one consistent piece, for the loop (and any thread).

        On a threaded core the loop's reads of `status`, `transaction`, `faults` ... one by
        one may fall between two writes of one step (a fault noted, the status not derived
        yet; the pilot read B, the contactor still opening): the view is taken on the core
        instead, between its steps, as a command is (the loop waits on the core, never the
        reverse). Inline (simulated time), on the core, or with the core stopped or stuck
        (no tick for `STUCK_CORE_S`), the fields are read at once: then nothing writes them
        meanwhile, or waiting would block the loop for nothing."""
        core = self._core
        if core is not None and not core.on_core() and core.tick_age() < STUCK_CORE_S:
            got = core.call(self._read_view, None)
            if isinstance(got, ConnectorView):
                return got
        return self._read_view()

    def _read_view(self) -> ConnectorView:
        return ConnectorView(
            status=self.status,
            pilot_state=self.pilot_state,
            phase=self.phase,
            transaction=self.transaction,
            faults=tuple(self.faults.items()),
            offered_a=self.offered_a,
            cable_a=self.cable_a,
            temperature_c=self.temperature_c,
            last_sample=self.last_sample,
            last_energy_wh=self.last_energy_wh,
            operative=self.operative,
        )

    def add_listener(self, listener: Callable[[str, dict[str, object]], None]) -> None:
        """Called as listener(kind, fields) for transitions and output changes (timelines),
        on the loop, after the fact; an exception it raises is logged and counted."""
        self._listeners.append(listener)

    def on_change(self, callback: Callable[[str, dict[str, object]], None]) -> None:
        """The charger's: called (on the loop) as callback(what, fields) when the cable
        rating ("cable") or the session phase ("phase") changed, so it recomputes limits,
        or when a stop waits for a meter reading ("stop_reading"), so it reads the meter."""
        self._on_change.append(callback)

    def _note(self, kind: str, **fields: object) -> None:
        self._emit("note", kind, {"connector": self.id, **fields})

    # ------------------------------------------------------------------ the core

    def attach(self, core: SafetyCore) -> None:
        self._core = core

    def _command(self, fn: Callable[[], Any], default: Any) -> Any:
        core = self._core
        if core is not None and not core.on_core():
            result = core.call(lambda: self._guarded(fn, default), default)
            self.deliver()
            return result
        if self._depth:
            return fn()  # inside another command: its guard covers this one
        result = self._guarded(fn, default)
        if core is None or core.on_loop():
            self.deliver()
        return result

    def run_guarded(self, fn: Callable[[], R]) -> R | None:
        """Run one step of the core (a sampler tick) under the connector's guard."""
        if self._depth:
            return fn()
        return self._guarded(fn, None)  # type: ignore[no-any-return]

    def _guarded(self, fn: Callable[[], Any], default: Any) -> Any:
        self._depth += 1
        try:
            result = fn()
        except Exception as exc:
            self._internal_error(exc)
            return default
        except BaseException as exc:  # SystemExit from a driver, KeyboardInterrupt inline:
            self._internal_error(exc)  # the outputs are cut before it goes on up
            raise
        finally:
            self._depth -= 1
        if self._driver_errors:
            errors, self._driver_errors = self._driver_errors, []
            self._internal_error(errors[0])
            for error in errors:
                if not isinstance(error, Exception):
                    raise error  # a driver's SystemExit goes on up too, after the cut
        return result

    def _internal_error(self, exc: BaseException) -> None:
        """Something in the core raised: outputs cut, Faulted/InternalError, go on sampling."""
        self.internal_errors += 1
        self._depth += 1  # what follows runs its own steps unguarded: no recursion
        try:
            first = Fault.INTERNAL not in self.faults
            if first:
                log.error(
                    "connector %s internal error, outputs cut", self.id, exc_info=exc
                )  # the traceback once; repeats until it clears are only counted
            # The outputs first, each driver call on its own: one failing must not keep
            # the others from their safe state.
            self._safely(self._contactor.deenergize)
            self._pilot_seen = False
            self._safely(lambda: self._pilot.set_duty(DUTY_F))
            self._soft_off_since = None
            if first:
                detail = f"{type(exc).__name__}: {exc}"
                self.faults[Fault.INTERNAL] = detail
                self._f_until = self._clock.monotonic() + self.settings.fault_state_f_s
                self._safely(lambda: self._after_internal_error(detail))
            # A stop waiting for its reading is still recorded, by its bound at the latest,
            # while every step fails (a feedback input that raises).
            self._safely(self._settle_stop)
            self._safely(self._publish_status)
        finally:
            self._depth -= 1
            self._driver_errors.clear()

    def _after_internal_error(self, detail: str) -> None:
        self._note("fault", fault=str(Fault.INTERNAL), active=True, detail=detail)
        if self.transaction is not None:
            self._dispatch(StopRequested(StopReason.OTHER))
        self._apply()

    @staticmethod
    def _safely(fn: Callable[[], object]) -> None:
        # BaseException too: a relay driver's SystemExit must not keep the pilot from its
        # safe level (the guard that called this raises what it caught once it is done).
        try:
            fn()
        except BaseException:
            log.debug("ignored while cutting after an internal error", exc_info=True)

    def _drive(self, fn: Callable[[], object]) -> bool:
        """A driver call on the path of a reaction: if it raises, the rest of the reaction
        still runs, and the step ends with an internal error (outputs cut). True if it ran."""
        try:
            fn()
            return True
        except BaseException as exc:  # a SystemExit too: the pilot after a relay that raised
            self._driver_errors.append(exc)
            return False

    def _emit(self, kind: str, *args: Any) -> None:
        self._outbox.append((kind, args))
        core = self._core
        if core is not None and not core.on_loop() and not self._delivery_pending:
            self._delivery_pending = True
            core.deliver_soon(self)

    # ------------------------------------------------------------------ the loop side

    def deliver(self) -> None:
        """On the loop: hand what the core said to the hooks and listeners, in order."""
        core = self._core
        if core is not None and not core.on_loop():
            return
        self._delivery_pending = False
        if self._delivering:
            return  # a callback issued a command: the outer delivery carries on
        self._delivering = True
        try:
            while self._outbox:
                kind, args = self._outbox.popleft()
                self._deliver_one(kind, args)
        finally:
            self._delivering = False

    def _deliver_one(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "note":
            note, fields = args
            for listener in list(self._listeners):
                self._isolated(listener, note, fields)
        elif kind == "change":
            what, fields = args
            for callback in list(self._on_change):
                self._isolated(callback, what, fields)
        elif kind == "status":
            self._isolated(self._hooks.status_changed, self.id, args[0])
        elif kind == "start":
            self._record_start(args[0])
        elif kind == "stop":
            self._record_stop(args[0])
        elif kind == "authorize":
            self._spawn(self._authorize(args[0]))

    def _isolated(self, fn: Callable[..., object], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except (Exception, SystemExit):  # a listener's sys.exit must not stop the loop either
            self.callback_errors += 1
            log.exception("connector %s: a callback (%r) raised; ignored", self.id, fn)
            return False

    def _record_start(self, tx: Transaction) -> None:
        try:
            recorded = self._hooks.transaction_started(tx)
        except (Exception, SystemExit) as exc:  # as `_isolated`: sys.exit stops no loop
            self.callback_errors += 1
            log.exception("connector %s: the start of a transaction was not recorded", self.id)
            self._recorded = (tx, None)
            self._start_not_recorded(tx, f"start not recorded: {type(exc).__name__}")
            return
        self._recorded = (tx, recorded)
        self._start_recorded(tx, recorded)

    def _record_stop(self, stop: TransactionStop) -> None:
        if self._recorded is not None and stop.transaction is self._recorded[0]:
            recorded = self._recorded[1]
            if recorded is None:
                return  # its start never made it to the record: there is nothing to stop
            stop = replace(stop, transaction=recorded)
        self._isolated(self._hooks.transaction_stopped, stop)

    # ------------------------------------------------------------------ safety inputs

    @command()
    def on_pilot(self, reading: PilotReading) -> None:
        if self._pilot.duty == DUTY_F:
            self._pilot_seen = False  # (also when the loop's freeze cut drove it)
            return  # the CP shows our own -12 V, not the EV
        if reading.diode_fault and self._pilot.duty < DUTY_OFF:
            self.raise_fault(Fault.DIODE_MISSING, f"CP low level {reading.low_v:.1f} V")
            return
        state = reading.state
        if state is None:
            return
        if not self._pilot_seen:
            self._pilot_seen = True
            if state == self.pilot_state:
                self._apply()  # the state it had before the F, read again: it may close now
                return
        if state == self.pilot_state:
            return
        previous, self.pilot_state = self.pilot_state, state
        self._f_read_since = self._clock.monotonic() if state == PilotState.F else None
        # C -> B/A/E/F: open at once, before anything else (IEC 61851-1: <= 100 ms); with
        # no EV the PWM goes too. Notes, logs and the transaction's disk write come after.
        opened = self._cut(DUTY_OFF if state in NO_EV_STATES else None)
        if state == PilotState.E:
            self.raise_fault(Fault.PILOT_SHORT, "CP shorted to PE (state E)")
        if opened:
            self._note("contactor", closed=False)
        log.debug("connector %s pilot %s -> %s", self.id, previous, state)
        self._note("pilot", state=str(state), previous=str(previous))
        if state == PilotState.E:
            return
        if Fault.PILOT_SHORT in self.faults and state != PilotState.F:
            self._clear_fault(Fault.PILOT_SHORT, Clear.RECOVERY)
        if Fault.PILOT_SENSE in self.faults and state != PilotState.F:
            self._clear_fault(Fault.PILOT_SENSE, Clear.RECOVERY)
        if state in PLUGGED_STATES and previous not in PLUGGED_STATES:
            self._dispatch(EvPlugged())
        elif state == PilotState.A:
            self._clear_by(Clear.UNPLUG)
            self._dispatch(EvUnplugged())
            if (
                self._lock is not None
                and self.transaction is None
                and self.settings.unlock_on_ev_disconnect
                and (self._lock_kept or self._lock.locked() is True)
            ):
                # A Local stop kept the lock while the car held the plug: it goes now (once
                # the contactor reads open, as every unlock).
                self._unlock_pending = True
                self._release_lock_when_safe()
            # PP is read only with an EV (the next one is read before the core hears of
            # it): the rating of the cable that left is no longer known, not still 32 A.
            self._set_cable(None)
        self._apply()

    @command()
    def raise_fault(self, fault: Fault, detail: str = "") -> None:
        if fault in self.faults:
            return
        self.faults[fault] = detail
        rule = RULES[fault]
        if fault == Fault.METER and self._start_waits_since is not None:
            # Judged failed before it ever answered: the start waiting for it is refused.
            self._refuse_waiting_start(f"meter failed before a first reading ({detail})")
        self._cut(DUTY_F)
        self._f_until = self._clock.monotonic() + self.settings.fault_state_f_s
        log.warning("connector %s fault %s: %s", self.id, fault, detail)
        self._note("fault", fault=str(fault), active=True, detail=detail)
        if rule.ends_transaction and self.transaction is not None:
            self._dispatch(StopRequested(StopReason.OTHER))
        self._apply()

    @command()
    def recover(self, fault: Fault) -> None:
        """The source of a RECOVERY-clearable fault reports it is well again."""
        self._clear_fault(fault, Clear.RECOVERY)
        self._apply()

    @command()
    def reset_faults(self) -> None:
        self._clear_by(Clear.RESET)
        # A weld judged afresh after the reset: not one loaded reading away from the fault.
        self._load_after_open = 0
        self._weld_energy_from = None
        self._apply()

    @command()
    def on_contactor_fault(self, fault: ContactorFault | None) -> None:
        if fault == ContactorFault.WELDED:
            self.raise_fault(Fault.WELDED, WELDED_DETAIL)
        elif fault == ContactorFault.FAILED_TO_CLOSE:
            self.raise_fault(Fault.FAILED_TO_CLOSE, "auxiliary contact open while commanded closed")

    @command()
    def on_rcd_self_test(self, passed: bool) -> None:
        self.rcd_tested = passed
        if passed:
            self._clear_fault(Fault.RCD_SELF_TEST, Clear.RECOVERY)
            self._apply()
        else:
            self.raise_fault(Fault.RCD_SELF_TEST, "RCD self-test did not trip")

    @command()
    def on_cable(self, cable_a: int | None, short: bool = False) -> None:
        if short:
            self.raise_fault(Fault.CABLE, "PP shorted")
            return
        if Fault.CABLE in self.faults:
            self._clear_fault(Fault.CABLE, Clear.RECOVERY)
        self._set_cable(cable_a)

    def _set_cable(self, cable_a: int | None) -> None:
        if cable_a != self.cable_a:
            self.cable_a = cable_a
            # The charger hears of it and hands the connector the new allowed current.
            self._note("cable", cable_a=cable_a)
            self._emit("change", "cable", {"connector": self.id, "cable_a": cable_a})

    @command()
    def on_meter_sample(self, sample: MeterSample, polled_at: float | None = None) -> None:
        """A meter reading; `polled_at` (monotonic) is when its poll began, if known: a
        reading whose poll began before the contactor read open does not close a stop."""
        self.last_sample = sample
        self._sample_polled_at = self._clock.monotonic() if polled_at is None else polled_at
        if sample.energy_import_wh is not None:
            self.last_energy_wh = sample.energy_import_wh
            self._energy_at = self._clock.now()
            if self.transaction is not None or self._pending_stop is not None:
                peak = self._peak_energy_wh
                self._peak_energy_wh = (
                    sample.energy_import_wh if peak is None else max(peak, sample.energy_import_wh)
                )
            pending = self._pending_stop
            if (
                pending is not None
                and pending.open_since is not None
                and (polled_at is None or polled_at >= pending.open_since)
                and (sample.power_total_w is None or sample.power_total_w <= STOPPED_POWER_W)
            ):
                # The first reading taken after the contactor read open, and that the meter
                # updated since (it shows no load: meters refresh their registers every
                # 0.5-1 s): the stop's. One still showing load waits for the next poll.
                self._take_stop()
            if Fault.METER in self.faults:
                # It answers: a meter fault (the poller's, or a start's wait) is over.
                self._clear_fault(Fault.METER, Clear.RECOVERY)
                self._apply()
            if self._start_waits_since is not None:
                self._start_waiting_for_meter()
                self._apply()
        self._check_overcurrent(sample)
        self._check_weld_by_meter(sample, polled_at)
        self._note("meter", energy_wh=sample.energy_import_wh, power_w=sample.power_total_w)

    def _note_open(self, now: float) -> None:
        """When the contactor was first seen commanded open (None while commanded closed)."""
        if self._contactor.energized:
            self._open_seen_at = None
            self._load_after_open = 0
            self._weld_energy_from = None
        elif self._open_seen_at is None:
            self._open_seen_at = now

    def _check_weld_by_meter(self, sample: MeterSample, polled_at: float | None) -> None:
        """The meter as the weld detector of a contactor that cannot say (no auxiliary
        contact, or one that reads open all the same): load measured in readings polled
        well after the relay was commanded open."""
        now = self._clock.monotonic()
        self._note_open(now)
        since = self._open_seen_at
        if since is None or Fault.WELDED in self.faults:
            return
        at = polled_at if polled_at is not None else now
        if at - since < WELD_BY_METER_S or not _flowing(sample, self.settings.phases):
            self._load_after_open = 0
            self._weld_energy_from = None
            return
        self._load_after_open += 1
        energy = sample.energy_import_wh
        if energy is not None and math.isfinite(energy):
            if self._weld_energy_from is None:
                self._weld_energy_from = energy  # the first loaded reading: counting from it
            if energy - self._weld_energy_from <= WELD_ENERGY_WH:
                return  # load shown, no energy counted: registers served from a cache
        if self._load_after_open >= WELD_BY_METER_READINGS:
            drawn = max((abs(a) for a in sample.current_a if a is not None), default=0.0)
            self.raise_fault(
                Fault.WELDED,
                f"meter measures {drawn:.1f} A, {sample.power_total_w or 0.0:.0f} W "
                "with the contactor open",
            )

    def _check_overcurrent(self, sample: MeterSample) -> None:
        if not self._contactor.energized:
            self._overcurrent_since = None
            return
        limit = self.offered_a + max(
            self.settings.overcurrent_tolerance_a,
            self.offered_a * self.settings.overcurrent_tolerance_ratio,
        )
        drawn = max((a for a in sample.current_a if a is not None), default=None)
        if drawn is None:
            drawn = self._current_from_power(sample)
        now = self._clock.monotonic()
        if drawn <= limit:
            self._overcurrent_since = None
        elif self._overcurrent_since is None:
            self._overcurrent_since = now
        elif now - self._overcurrent_since >= self.settings.overcurrent_grace_s:
            self.raise_fault(
                Fault.OVER_CURRENT, f"EV drew {drawn:.1f} A with {self.offered_a:.1f} A offered"
            )

    def _current_from_power(self, sample: MeterSample) -> float:
        """A meter with no per-phase current (SDM72D-M v1 gives totals only): the current
        of the total power spread evenly over the connector's phases. An EV drawing on all
        of them is supervised; one that overdraws on one phase of three is not seen below
        three times its offer, never a false trip. Said once, not silently skipped."""
        if not self._power_only_said:
            self._power_only_said = True
            log.warning(
                "connector %s: the meter gives no per-phase current; over-current is judged "
                "on its total power spread over %d phase(s) (an overdraw on one phase of "
                "several goes unseen)",
                self.id,
                self.settings.phases,
            )
        power = sample.power_total_w
        if power is None or not math.isfinite(power):
            return 0.0
        volts = [v for v in sample.voltage_v if v is not None and v > 0]
        voltage = sum(volts) / len(volts) if volts else self.settings.nominal_voltage_v
        return abs(power) / (voltage * max(1, self.settings.phases))

    # ------------------------------------------------------------------ limits

    def set_allowed_current(self, amps: float) -> None:
        """From the limiter: the current this connector may offer now (< 6 A suspends).

        Kept as the wish first (one attribute written: any thread), then given to the core
        as a command; should the core be stuck and drop the command, its next step takes
        the latest wish anyway, so a reduction is never lost (the EV would draw the old,
        higher current until something else recomputed the limits)."""
        self._wanted_a = amps
        self._take_wanted_current()

    @command()
    def _take_wanted_current(self) -> None:
        if self._take_wish():
            self._apply()

    def _take_wish(self) -> bool:
        """On the core: the limiter's latest wish becomes the allowed current; True if it
        changed."""
        wanted = self._wanted_a
        if wanted == self.allowed_a:
            return False
        self.allowed_a = wanted
        return True

    # ------------------------------------------------------------------ people and the CS

    @command()
    def present_tag(self, id_tag: str) -> None:
        """A card at the reader meant for this connector."""
        tx = self.transaction
        if tx is not None and id_tag.upper() == tx.id_tag.upper():
            self.request_stop(StopReason.LOCAL, id_tag)
            return
        if self._authorizing:
            return
        self._authorizing = True
        self._emit("authorize", id_tag)  # the hooks answer on the loop, by `authorized`

    async def _authorize(self, id_tag: str) -> None:
        """On the loop: ask the hooks, then tell the core."""
        try:
            result = await self._hooks.authorize(self.id, id_tag)
        except (Exception, SystemExit):  # the hooks' failure must not kill the connector
            self.callback_errors += 1
            log.exception("authorisation of a tag failed")
            result = AuthResult("Invalid")
        self.authorized(id_tag, result)

    @command()
    def authorized(self, id_tag: str, result: AuthResult) -> None:
        """The hooks' answer to a tag presented here."""
        self._authorizing = False
        self._note("authorized", id_tag=id_tag, status=result.status)
        tx = self.transaction
        if tx is not None:
            same_group = (
                result.accepted
                and result.parent_id_tag is not None
                and result.parent_id_tag.upper() == (tx.parent_id_tag or "").upper()
            )
            if same_group:
                self.request_stop(StopReason.LOCAL, id_tag)
            return
        if not result.accepted:
            return
        refusal = self._start_refusal(id_tag, result.parent_id_tag)
        if refusal is not None:
            self._refuse_start(id_tag, refusal)
            return
        self._dispatch(Authorized(id_tag, result.parent_id_tag))
        self._apply()

    @command(False)
    def authorize_remote(self, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """RemoteStartTransaction (already authorised by the caller if it had to be)."""
        if self.transaction is not None:
            return False
        refusal = self._start_refusal(id_tag, parent_id_tag)
        if refusal is not None:
            self._refuse_start(id_tag, refusal)
            return False
        self._dispatch(Authorized(id_tag, parent_id_tag))
        self._apply()
        return True

    @command(False)
    def request_stop(self, reason: StopReason, id_tag: str | None = None) -> bool:
        if self.transaction is None:
            return False
        self._dispatch(StopRequested(reason, id_tag))
        self._apply()
        return True

    @command(False)
    def adopt_parent_id_tag(self, local_id: int, parent_id_tag: str) -> bool:
        """The CS named the running transaction's group (the parentIdTag of its
        StartTransaction.conf): a card of that group may now stop it (OCPP 1.6 §3.10)."""
        tx = self.transaction
        if tx is None or tx.local_id != local_id or not self._tx_recorded:
            return False
        if tx.parent_id_tag != parent_id_tag:
            self.transaction = replace(tx, parent_id_tag=parent_id_tag)
        return True

    @command("Rejected")
    def change_availability(self, operative: bool) -> str:
        """ChangeAvailability: Accepted, or Scheduled while a transaction runs."""
        if self._start_waits_since is not None and not operative:
            # The start still waits for its meter: the CS knows of no transaction, so
            # there is none to wait for. It ends unrecorded and Inoperative holds now.
            self._refuse_waiting_start("unavailable")
        if self.transaction is not None and not operative:
            self._pending_operative = operative
            return "Scheduled"
        self._pending_operative = None
        self.operative = operative
        self._apply()
        return "Accepted"

    @command(None)
    def set_maintenance(self, reason: str | None) -> None:
        """Block new starts (``reason``) or allow them again (None). A transaction running
        goes on; an idle connector is Unavailable meanwhile, as after a scheduled
        ChangeAvailability, without touching what the CS asked (`operative`)."""
        self.maintenance = reason
        self._apply()

    @command("Rejected")
    def reserve(self, reservation_id: int, id_tag: str, parent: str | None, expiry: float) -> str:
        if self._blocking_fault() is not None:
            return "Faulted"
        if not self.operative or self.maintenance is not None:
            return "Unavailable"
        if self.transaction is not None or self.phase != Phase.IDLE:
            return "Occupied"
        self.reservation = (reservation_id, id_tag, parent, expiry)
        self._apply()
        return "Accepted"

    @command(False)
    def cancel_reservation(self, reservation_id: int) -> bool:
        if self.reservation is None or self.reservation[0] != reservation_id:
            return False
        self.reservation = None
        self._apply()
        return True

    def start_refusal(self, id_tag: str, parent_id_tag: str | None) -> str | None:
        """The gate, asked from the loop (RemoteStart's choice of connector): a read only."""
        return self._start_refusal(id_tag, parent_id_tag)

    def _start_refusal(self, id_tag: str, parent: str | None) -> str | None:
        """Why a transaction for `id_tag` may not start here now, or None: the one gate
        every start path passes (card, remote start, free vend, local list and cache,
        offline), both when the tag is taken and again when the transaction would start,
        since availability, faults and reservations may change in between."""
        if not self.operative or self._pending_operative is False:
            return "unavailable"
        if self.maintenance is not None:
            return f"unavailable ({self.maintenance})"
        fault = self._blocking_fault()
        if fault is not None:
            return f"faulted ({fault})"
        if not self._reservation_allows(id_tag, parent):
            return RESERVED_FOR_ANOTHER
        if self.charger_wide is not None:
            return self.charger_wide.refusal(self.id, id_tag, parent)
        return None

    def _refuse_start(self, id_tag: str, refusal: str) -> None:
        log.info("connector %s: no transaction: %s", self.id, refusal)
        self._note("start_refused", id_tag=id_tag, reason=refusal)

    def _reservation_allows(self, id_tag: str, parent: str | None) -> bool:
        if self.reservation is None:
            return True
        _, tag, res_parent, _ = self.reservation
        if id_tag.upper() == tag.upper():
            return True
        return (
            res_parent is not None and parent is not None and parent.upper() == res_parent.upper()
        )

    @command("UnlockFailed")
    def unlock(self) -> str:
        """UnlockConnector: stops a running transaction, then releases the lock once the
        contactor has opened ("Pending" until then and until the lock's position switch
        has moved: ask `unlock_result`).

        Without a lock (a tethered cable) there is nothing to release: NotSupported, and a
        running session is left alone rather than ended for nothing.
        """
        if self._lock is None:
            return "NotSupported"
        if self.transaction is not None:
            self.request_stop(StopReason.UNLOCK_COMMAND)
        self._unlock_pending = True
        self._unlock_given_up = False
        self._unlock_deadline = self._clock.monotonic() + self._unlock_wait_s()
        self._release_lock_when_safe()
        return self.unlock_result()

    def _unlock_wait_s(self) -> float:
        """How long an UnlockConnector waits for the unlock to be safe: the soft stop, the
        margin for the contactor to read open, and with a meter (a witness of the open, see
        `_current_measured`) the stop's reading: the one polled at the open may still show
        the load in registers not yet refreshed, and the next poll is the one that counts."""
        s = self.settings
        meter = s.stop_meter_wait_s if s.has_meter else 0.0
        return s.power_off_under_load_s + s.unlock_margin_s + meter

    def unlock_bound_s(self) -> float:
        """The longest an UnlockConnector can stay "Pending": the wait for the unlock to be
        safe (`_unlock_wait_s`), and the lock's travel."""
        return self._unlock_wait_s() + self.settings.lock_timeout_s

    @command("UnlockFailed")
    def unlock_result(self) -> str:
        """ "Pending" while the unlock waits for the contactor to open and then for the
        lock's position switch to move (bounded by `lock_timeout_s`), then "Unlocked" or
        "UnlockFailed" by what the switch reads; "NotSupported" without a lock."""
        if self._lock is None:
            return "NotSupported"
        if self._unlock_pending:
            return "Pending"
        locked = self._lock.locked()
        if self._unlock_given_up and locked is not False:
            # Withdrawn, never driven (a weld, the contactor or meter past the bound): a lock
            # with no position switch (None) must not read "Unlocked" while it holds the plug.
            return "UnlockFailed"
        if locked is True and self._unlock_travelling():
            return "Pending"  # a motor lock takes its pulse to move: not failed yet
        return "Unlocked" if locked is not True else "UnlockFailed"

    def _unlock_travelling(self) -> bool:
        since = self._unlocking_since
        return since is not None and (
            self._clock.monotonic() - since < self.settings.lock_timeout_s
        )

    @command()
    def withdraw_unlock(self) -> None:
        """The caller gave up on the unlock (answered UnlockFailed): it must not happen later."""
        if self._unlock_pending:
            self._unlock_given_up = True
        self._withdraw_unlock()

    def _withdraw_unlock(self) -> None:
        self._unlock_pending = False
        self._unlock_deadline = None

    def _release_lock_when_safe(self) -> None:
        # The lock never opens while current may flow: an unlock (UnlockConnector, the end of
        # a transaction) waits until the contactor is commanded open and reads open.
        if not self._unlock_pending or self._lock is None:
            return
        if Fault.WELDED in self.faults:
            # A welded contactor keeps its lock until someone has looked (a reset): the
            # unlock is withdrawn, not carried out if the contact ever reads open.
            self._unlock_given_up = True
            self._withdraw_unlock()
            return
        if self._contactor.energized or self._contactor.feedback() is True:
            return
        if self._current_measured():
            return  # the meter still sees current: a contact without feedback may be welded
        self._withdraw_unlock()
        self._lock_kept = False
        if self._drive(self._lock.unlock):
            self._unlocking_since = self._clock.monotonic()

    def _current_measured(self) -> bool:
        """Whether the meter (where one is fitted and answers) says current may flow.

        A contactor without an auxiliary contact reads open when welded: the meter is then
        the only witness, and until it has spoken since the relay opened (the stop still
        waits for that reading) current may flow; after that, the newest reading says. One
        whose auxiliary contact reads open has opened: only a reading polled since then
        that shows current flowing (the two disagree: the safe side) keeps the lock."""
        if not self.settings.has_meter or Fault.METER in self.faults:
            return False
        sample = self.last_sample
        if self._contactor.feedback() is not None:
            opened = self._open_seen_at
            return (
                sample is not None
                and opened is not None
                and self._sample_polled_at >= opened
                and _flowing(sample, self.settings.phases)
            )
        if self._pending_stop is not None:
            return True
        return sample is not None and _flowing(sample, self.settings.phases)

    def _lock_lost(self) -> bool:
        """A running session's lock, confirmed locked since its start, that reads open."""
        return (
            self._lock is not None
            and self.transaction is not None
            and self._tx_recorded
            and self._lock_since is None
            and not self._lock_travelling()  # what its switch reads mid-travel is no loss
            and self._lock.locked() is False
        )

    def _lock_travelling(self) -> bool:
        """A motor lock whose pulse still runs: it is not known to hold the plug before the
        pulse is over. Without a position switch nothing says; a switch may make early in
        the travel and open again (overtravel, bounce) before the latch has settled."""
        lock = self._lock
        return lock is not None and bool(getattr(lock, "busy", False))

    def _supervise_unlock(self, now: float) -> None:
        """An UnlockConnector past its bound is withdrawn (it was answered UnlockFailed, so it
        must not open the lock later, when the contactor at last reads open); an unlock
        whose position switch has moved, or not within `lock_timeout_s`, is done."""
        deadline = self._unlock_deadline
        if self._unlock_pending and deadline is not None and now >= deadline:
            log.warning(
                "connector %s: the unlock is withdrawn, the lock stays shut (the contactor "
                "still reads closed, or the meter measures current)",
                self.id,
            )
            self._unlock_given_up = True
            self._withdraw_unlock()
        if self._unlocking_since is not None and self._lock is not None:
            if self._lock.locked() is not True:
                self._unlocking_since = None
            elif not self._unlock_travelling():
                self._unlocking_since = None
                log.warning("connector %s: the lock still reads locked after an unlock", self.id)

    @command()
    def cut_outputs(self) -> None:
        """Contactor open and pilot at steady +12 V, now, with nothing else done first."""
        self._cut(DUTY_OFF)

    def _cut(self, duty: float | None) -> bool:
        """The one place a safety reaction touches the outputs: the contactor opens (always
        with a `duty`, else only when the pilot state forbids drawing), then the pilot takes
        `duty` if one is given. True if the contactor opened."""
        opened = False
        if self._contactor.energized and (duty is not None or not self._may_draw(self.pilot_state)):
            opened = self._drive(self._contactor.deenergize)
        if duty is not None and self._pilot.duty != duty:
            if duty == DUTY_F:
                self._pilot_seen = False
            self._drive(lambda: self._pilot.set_duty(duty))
        return opened

    def shutdown(self, reason: StopReason) -> None:
        """Stop any transaction with `reason`, open the contactor, pilot to +12 V."""
        self._shutdown(reason)
        for task in self._tasks:
            task.cancel()

    @command()
    def _shutdown(self, reason: StopReason) -> None:
        self._cut(DUTY_OFF)
        if self.transaction is not None:
            self._dispatch(StopRequested(reason))
        self._publish_status()

    # ------------------------------------------------------------------ time

    def wake_at(self) -> float | None:
        """The next moment `supervise()` has something to do (monotonic), if any."""
        deadlines = [self._f_until, self._auth_deadline]
        if self._lock_since is not None:
            deadlines.append(self._lock_since + self.settings.lock_timeout_s)
        if self._unlocking_since is not None:
            deadlines.append(self._unlocking_since + self.settings.lock_timeout_s)
        if self._lock_open_since is not None:
            deadlines.append(self._lock_open_since + LOCK_LOST_S)
        if self._unlock_pending and self._unlock_deadline is not None:
            deadlines.append(self._unlock_deadline)
        if self._soft_off_since is not None:
            deadlines.append(self._soft_off_since + self.settings.power_off_under_load_s)
        if self._start_waits_since is not None:
            deadlines.append(self._start_waits_since + self.settings.meter_wait_s)
        if self._pending_stop is not None:
            deadlines.append(self._stop_deadline(self._pending_stop))
        if self._f_read_since is not None and Fault.PILOT_SENSE not in self.faults:
            deadlines.append(self._f_read_since + self.settings.pilot_f_fault_s)
        return min((d for d in deadlines if d is not None), default=None)

    @command()
    def supervise(self) -> None:
        """Deadlines and contactor feedback; the sampler calls this every tick."""
        now = self._clock.monotonic()
        # A limit whose command the core dropped (stuck): taken now, applied below.
        self._take_wish()
        self._note_open(now)
        self.on_contactor_fault(self._contactor.fault())
        self._supervise_unlock(now)
        self._release_lock_when_safe()
        if self._start_waits_since is not None:
            self._start_waiting_for_meter()
        self._settle_stop()
        if self._status_held:
            self._publish_status()
        since = self._f_read_since
        if (
            since is not None
            and self.pilot_state == PilotState.F
            and self._pilot.duty != DUTY_F
            and now - since >= self.settings.pilot_f_fault_s
        ):
            self.raise_fault(Fault.PILOT_SENSE, "pilot reads -12 V: generator or ADC failed")
        if self._lock_since is not None and self.transaction is not None:
            if self._lock is not None and self._lock.locked() is not False:
                self._lock_since = None
            elif now - self._lock_since >= self.settings.lock_timeout_s:
                self._lock_since = None
                self.raise_fault(Fault.LOCK, "lock did not engage")
        if not self._lock_lost():
            self._lock_open_since = None
        elif self._lock_open_since is None:
            self._lock_open_since = now  # one reading may be a switch's bounce
        elif now - self._lock_open_since >= LOCK_LOST_S:
            # Confirmed locked, now read open: the plug is not held, maybe under load.
            # Not a withdrawn offer (the soft stop would keep the relay closed for seconds).
            self._lock_open_since = None
            self.raise_fault(Fault.LOCK, "lock reads open during the session")
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self._dispatch(AuthTimedOut())
        if self.reservation is not None:
            ended = self._reservation_ended(self.reservation[3])
            if ended is not None:
                log.info("connector %s reservation %s %s", self.id, self.reservation[0], ended)
                self.reservation = None
        self._apply()

    def _reservation_ended(self, expiry: float) -> str | None:
        """Why the reservation ends now, or None (§5.13: its expiryDate came, or the connector
        became Unavailable or Faulted: what `reserve` would refuse, it does not keep)."""
        if self._clock.now().timestamp() >= expiry:
            return "expired"
        if not self.operative:
            return "ended: connector unavailable"
        if self._blocking_fault() is not None:
            return "ended: connector faulted"
        return None

    # ------------------------------------------------------------------ the table

    def _dispatch(self, event: Event) -> None:
        before = self.phase
        self.phase = self._transition(self.phase, event)
        if self.phase != before:
            log.debug("connector %s %s --%s--> %s", self.id, before, event, self.phase)
            fields = {"previous": str(before), "phase": str(self.phase), "event": repr(event)}
            self._note("phase", **fields)
            self._emit("change", "phase", {"connector": self.id, **fields})

    def _transition(self, phase: Phase, event: Event) -> Phase:
        match phase, event:
            case Phase.IDLE, EvPlugged():
                if self.settings.free_vend:
                    tag = self.settings.free_vend_id_tag
                    refusal = self._start_refusal(tag, None)
                    if refusal is None:
                        self._start_transaction(Authorized(tag))
                        return Phase.TRANSACTION
                    self._refuse_start(tag, refusal)
                return Phase.PLUGGED
            case Phase.IDLE, Authorized() as auth:
                self._authorized = auth
                self._auth_deadline = self._clock.monotonic() + self.settings.connection_timeout_s
                return Phase.AUTHORIZED
            case Phase.AUTHORIZED, Authorized() as auth:
                self._authorized = auth
                return Phase.AUTHORIZED
            case Phase.AUTHORIZED, EvPlugged():
                assert self._authorized is not None
                auth = self._authorized
                refusal = self._start_refusal(auth.id_tag, auth.parent_id_tag)
                if refusal is not None:  # made unavailable, faulted or reserved meanwhile
                    self._refuse_start(auth.id_tag, refusal)
                    self._authorized = None
                    self._auth_deadline = None
                    return Phase.PLUGGED
                self._start_transaction(auth)
                return Phase.TRANSACTION
            case Phase.AUTHORIZED, AuthTimedOut():
                self._authorized = None
                self._auth_deadline = None
                return Phase.IDLE
            case Phase.PLUGGED, Authorized() as auth:
                refusal = self._start_refusal(auth.id_tag, auth.parent_id_tag)
                if refusal is not None:
                    self._refuse_start(auth.id_tag, refusal)
                    return Phase.PLUGGED
                self._start_transaction(auth)
                return Phase.TRANSACTION
            case Phase.PLUGGED, EvUnplugged():
                return Phase.IDLE
            case Phase.TRANSACTION, EvUnplugged():
                if self.settings.stop_on_ev_disconnect:
                    self._stop_transaction(StopReason.EV_DISCONNECTED)
                    return Phase.IDLE
                return Phase.TRANSACTION
            case Phase.TRANSACTION, StopRequested(reason=reason, id_tag=tag):
                self._stop_transaction(reason, tag)
                return Phase.FINISHING if self.pilot_state in PLUGGED_STATES else Phase.IDLE
            case Phase.TRANSACTION, EvPlugged():
                return Phase.TRANSACTION  # re-plug with StopTransactionOnEVSideDisconnect=false
            case Phase.FINISHING, EvUnplugged():
                return Phase.IDLE
            case _:
                return phase

    # ------------------------------------------------------------------ transactions

    def _start_transaction(self, auth: Authorized) -> None:
        if self._pending_stop is not None:
            # The last session's stop goes first, with the newest reading: the record of one
            # connector's transactions stays in order, and this start begins where it ended.
            self._take_stop()
        self._peak_energy_wh = self.last_energy_wh
        self._authorized = None
        self._auth_deadline = None
        reservation_id = None
        if self.reservation is not None:
            reservation_id = self.reservation[0]
            self.reservation = None
        elif self.charger_wide is not None:
            reservation_id = self.charger_wide.claim(self.id, auth.id_tag, auth.parent_id_tag)
        tx = Transaction(
            connector_id=self.id,
            id_tag=auth.id_tag,
            parent_id_tag=auth.parent_id_tag,
            meter_start_wh=self._meter_wh(),
            started_at=self._clock.now(),
            reservation_id=reservation_id,
        )
        # Nothing is offered, and the lock stays open, until the start is durably recorded:
        # the loop runs the hook and answers with `_start_recorded`.
        self.transaction = tx
        self._tx_recorded = False
        if self.settings.has_meter and self.last_energy_wh is None:
            # Not recorded (so nothing offered, the lock open) until the meter has spoken.
            self._start_waits_since = self._clock.monotonic()
            return
        self._emit("start", tx)

    def _start_waiting_for_meter(self) -> None:
        """Record a start that waited for a first meter reading once one came; refuse it if
        none came within `meter_wait_s`.

        Refused, not recorded with the last reading persisted before the restart: that one
        may be older than the meter's register (the tail of the last session after its last
        sample), so the new session would be billed for energy it did not take, and a
        meter that does not answer cannot bill this session either. A billing charger does
        not charge on a meter it cannot read: the connector shows Faulted/PowerMeterFailure
        (the Central System hears why) until the meter answers; the driver starts again then.
        """
        since = self._start_waits_since
        tx = self.transaction
        if since is None or tx is None:
            self._start_waits_since = None
            return
        if self.last_energy_wh is None:
            if self._clock.monotonic() - since < self.settings.meter_wait_s:
                return
            reason = f"no meter reading within {self.settings.meter_wait_s:.0f} s"
            self._refuse_waiting_start(reason)
            self.raise_fault(Fault.METER, reason)
            return
        # The gate again: availability, maintenance or a fault may have changed while the
        # start waited (the reservation it used is already its own).
        refusal = self._start_refusal(tx.id_tag, tx.parent_id_tag)
        if refusal is not None:
            self._refuse_waiting_start(refusal)
            return
        self._start_waits_since = None
        tx = replace(tx, meter_start_wh=self._meter_wh())
        self.transaction = tx
        self._emit("start", tx)

    def _refuse_waiting_start(self, reason: str) -> None:
        """The waiting start ends unrecorded and the connector waits for a card again."""
        self._drop_waiting_start(reason)
        before = self.phase
        self.phase = Phase.PLUGGED if self.pilot_state in PLUGGED_STATES else Phase.IDLE
        if self.phase != before:
            self._note("phase", previous=str(before), phase=str(self.phase), event=reason)
            fields = {"previous": str(before), "phase": str(self.phase), "event": reason}
            self._emit("change", "phase", {"connector": self.id, **fields})

    def _drop_waiting_start(self, reason: str) -> None:
        """A start that waited for the meter ends unrecorded: nothing was offered, the lock
        never engaged, the Central System never heard of it (no StartTransaction, no stop)."""
        tx = self.transaction
        self._start_waits_since = None
        self.transaction = None
        self._tx_recorded = False
        if tx is not None:
            log.warning("connector %s: no transaction: %s", self.id, reason)
            self._note("start_refused", id_tag=tx.id_tag, reason=reason)
        if self._pending_operative is not None:
            self.operative, self._pending_operative = self._pending_operative, None

    @command()
    def _start_recorded(self, tx: Transaction, recorded: Transaction) -> None:
        if self.transaction is not tx:
            return  # it ended before the record came back; the stop carries the record
        self.transaction = recorded
        self._tx_recorded = True
        if self._lock is not None:
            # A motor lock takes a pulse to move: `supervise` judges it after lock_timeout_s,
            # and until it reports locked `_apply` offers nothing.
            self._withdraw_unlock()
            self._unlocking_since = None
            self._lock_kept = False
            self._drive(self._lock.lock)
            self._lock_since = self._clock.monotonic()
        log.info(
            # evsed's record id: the Central System's transactionId comes with its
            # StartTransaction.conf, and the OCPP layer logs it then.
            "connector %s transaction (local %s) started: idTag %s, meter %d Wh",
            self.id,
            recorded.local_id,
            mask_tag(tx.id_tag),
            tx.meter_start_wh,
        )
        self._note("transaction_started", id_tag=tx.id_tag, meter_start_wh=tx.meter_start_wh)
        self._apply()

    @command()
    def _start_not_recorded(self, tx: Transaction, detail: str) -> None:
        """No durable start: no energy and no lock for it; the connector shows InternalError
        until the EV leaves (or a reset)."""
        if self._lock is not None:
            self._drive(self._lock.unlock)
            self._lock_since = None
        if self.transaction is tx:
            self.transaction = None
            self._tx_recorded = False
            before = self.phase
            self.phase = Phase.FINISHING if self.pilot_state in PLUGGED_STATES else Phase.IDLE
            self._note("phase", previous=str(before), phase=str(self.phase), event="not recorded")
        self.raise_fault(Fault.INTERNAL, detail)

    def _stop_transaction(self, reason: StopReason, id_tag: str | None = None) -> None:
        if self._start_waits_since is not None:
            # Stopped while the start still waited for its first meter reading: it never
            # started (no energy, no record), so there is nothing to stop either.
            self._drop_waiting_start(f"stopped ({reason}) before the meter was read")
            return
        tx = self.transaction
        if tx is None:
            return
        self.transaction = None
        self._tx_recorded = False
        self._lock_since = None
        # Not recorded yet: its meter reading is taken once the contactor has opened (see
        # `_settle_stop`). Until then the connector behaves as stopped (nothing offered).
        self._pending_stop = _PendingStop(
            tx, reason, id_tag, self._clock.monotonic(), self._clock.now()
        )
        log.info("connector %s transaction (local %s) stopping: %s", self.id, tx.local_id, reason)
        self._settle_stop()
        if self._lock is not None and reason != StopReason.LOCAL:
            self._unlock_pending = True
            self._release_lock_when_safe()
        elif self._lock is not None:
            self._lock_kept = True  # until the EV side is unplugged (or an UnlockConnector)
        if self._pending_operative is not None:
            self.operative, self._pending_operative = self._pending_operative, None

    def _meter_wh(self) -> int:
        return round(self.last_energy_wh) if self.last_energy_wh is not None else 0

    def _contactor_reads_open(self) -> bool:
        if self._contactor.energized:
            return False
        try:
            return self._contactor.feedback() is not True
        except Exception:  # unreadable: not known to be open; a pending stop's bound holds
            return False

    def _stop_deadline(self, pending: _PendingStop) -> float:
        """When a stop is recorded with the newest reading known, whatever else happened."""
        s = self.settings
        if pending.open_since is not None:
            return pending.open_since + s.stop_meter_wait_s
        # A contactor that never reads open (welded): the soft stop, the margin for the
        # contact to drop out, then the wait for a reading.
        return (
            pending.requested + s.power_off_under_load_s + s.unlock_margin_s + s.stop_meter_wait_s
        )

    def _settle_stop(self) -> None:
        """A pending stop: note when the contactor reads open; without a meter that is the
        moment of the stop; past its deadline it is taken with the newest reading known."""
        pending = self._pending_stop
        if pending is None:
            return
        now = self._clock.monotonic()
        if pending.open_since is None and self._contactor_reads_open():
            pending.open_since = now
            if not self.settings.has_meter:
                self._take_stop()
                return
            # The charger has the meter read now rather than at its next poll.
            self._emit("change", "stop_reading", {"connector": self.id})
        if now >= self._stop_deadline(pending):
            log.warning(
                "connector %s: no meter reading after the contactor opened; the stop takes "
                "the newest one known",
                self.id,
            )
            self._take_stop()

    @command()
    def take_pending_stop(self) -> None:
        """Record a pending stop now, with the newest reading known (the charger stopping:
        it has just read the meter once more after cutting the outputs)."""
        if self._pending_stop is not None:
            self._take_stop()
        # No tick may come before the core stops: the unlock the stop waits for is judged
        # now, on that newest reading (load in it keeps the lock shut).
        self._release_lock_when_safe()

    @property
    def stop_pending(self) -> bool:
        """A transaction ended and its stop waits for the meter reading that closes it."""
        return self._pending_stop is not None

    def _take_stop(self) -> None:
        pending, self._pending_stop = self._pending_stop, None
        if pending is None:
            return
        tx = pending.tx
        energy = self.last_energy_wh
        if energy is not None and self._peak_energy_wh is not None:
            energy = max(energy, self._peak_energy_wh)
        meter_stop = round(energy) if energy is not None else 0
        at = pending.requested_at
        if self._energy_at is not None and self._energy_at > at:
            at = self._energy_at  # the time of the reading the stop carries
        stop = TransactionStop(tx, pending.reason, meter_stop, at, pending.id_tag)
        self._emit("stop", stop)
        log.info(
            "connector %s transaction (local %s) stopped: %s, %d Wh",
            self.id,
            tx.local_id,
            pending.reason,
            stop.meter_stop_wh - tx.meter_start_wh,
        )
        self._note(
            "transaction_stopped",
            reason=str(pending.reason),
            energy_wh=stop.meter_stop_wh - tx.meter_start_wh,
        )
        if self._status_held:
            self._publish_status()  # the status it held back, after the stop

    # ------------------------------------------------------------------ outputs

    def _blocking_fault(self) -> Fault | None:
        return most_serious(self.faults)

    def _may_draw(self, state: PilotState) -> bool:
        return state == PilotState.C or (
            state == PilotState.D and self.settings.ventilation_available
        )

    def _apply(self) -> None:
        now = self._clock.monotonic()
        offering = (
            self.transaction is not None
            and self._tx_recorded
            and self.pilot_state in PLUGGED_STATES
            and self._blocking_fault() is None
            and self.rcd_tested
            and (self._lock is None or self._lock.locked() is not False)
            and not self._lock_travelling()
        )
        # The limiter already took the minimum of rating, cable, configuration, schedule
        # and budget, and rounded it to what a duty can say.
        limit = self.allowed_a if offering else 0.0
        in_f = self._f_until is not None and now < self._f_until
        if not in_f:
            self._f_until = None
        if limit < MIN_CURRENT_A or in_f:
            # Nothing is offered in state F: a fault that cleared within it (a meter that
            # answered again) must not close the relay under evsed's own -12 V.
            limit = 0.0
        duty = (
            DUTY_F
            if in_f
            else (current_to_duty(limit, self.settings.pwm_resolution) if limit else DUTY_OFF)
        )
        duty_ok = True
        if duty != self._pilot.duty:
            if duty == DUTY_F:
                self._pilot_seen = False
            duty_ok = self._drive(lambda: self._pilot.set_duty(duty))
            if duty_ok:
                self._note("duty", duty=duty, amps=limit)
        self.offered_a = limit

        # A duty that could not be written is no offer: never close on it (the guard then
        # cuts for the driver error; closing first would click the contactor on the EV).
        # And never on a pilot state read before the last state F (`_pilot_seen`).
        want = duty_ok and limit > 0 and self._pilot_seen and self._may_draw(self.pilot_state)
        if want:
            self._soft_off_since = None
            if not self._contactor.energized and self._drive(self._contactor.energize):
                self._note("contactor", closed=True)
        elif self._contactor.energized:
            hard = (
                not self._may_draw(self.pilot_state)
                or self._blocking_fault() is not None
                or (self.transaction is None and self.phase != Phase.FINISHING)
            )
            if self._soft_off_since is None:
                self._soft_off_since = now
            # PWM withdrawn (C2 -> C1): give the EV time to stop drawing and open S2 first.
            if hard or now - self._soft_off_since >= self.settings.power_off_under_load_s:
                self._drive(self._contactor.deenergize)
                self._soft_off_since = None
                self._note("contactor", closed=False)
        self._release_lock_when_safe()
        self._publish_status()

    def _derive_status(self) -> ConnectorStatus:
        fault = self._blocking_fault()
        error = RULES[fault].error_code if fault else ErrorCode.NO_ERROR
        info = self.faults.get(fault, "") if fault else ""
        if fault is not None and RULES[fault].faulted:
            vendor = RULES[fault].vendor_error_code
            return ConnectorStatus(ChargePointStatus.FAULTED, error, info[:50], vendor)
        if self.transaction is not None and not self._tx_recorded:
            status = ChargePointStatus.PREPARING  # not started until its start is recorded
        elif self.transaction is not None:
            # Offering nothing (limit 0, a pause) is SuspendedEVSE at once, also during the
            # seconds the contactor stays closed for the EV to stop drawing (§7.7).
            if (
                self.offered_a > 0
                and self._contactor.energized
                and self._may_draw(self.pilot_state)
            ):
                status = ChargePointStatus.CHARGING
            elif self.offered_a > 0 and self.pilot_state == PilotState.B:
                status = ChargePointStatus.SUSPENDED_EV
            else:
                status = ChargePointStatus.SUSPENDED_EVSE
        elif not self.operative or self.maintenance is not None:
            status = ChargePointStatus.UNAVAILABLE
        elif self.phase == Phase.FINISHING:
            status = ChargePointStatus.FINISHING
        elif self.phase in (Phase.PLUGGED, Phase.AUTHORIZED):
            status = ChargePointStatus.PREPARING
        elif self.reservation is not None:
            status = ChargePointStatus.RESERVED
        else:
            status = ChargePointStatus.AVAILABLE
        return ConnectorStatus(status, error, info[:50])

    def _contactor_opening(self) -> bool:
        """Commanded open, its auxiliary contact still closed, not yet judged welded."""
        return not self._contactor.energized and self._contactor.feedback() is True

    def _publish_status(self) -> None:
        status = self._derive_status()
        if status.status is not ChargePointStatus.FAULTED and self._pending_stop is not None:
            # The status that follows a stop (Finishing, Available) comes after its
            # StopTransaction, as the CS expects: until the stop's reading is taken.
            self._status_held = True
            return
        if status.status is not ChargePointStatus.FAULTED and self._contactor_opening():
            # Until the contact has opened (or is judged welded) the connector is not free:
            # a welded one goes straight to Faulted, never through Available (issue 14 #8);
            # the first status after start-up too (a weld from before evsed started).
            self._status_held = True
            return
        self._status_held = False
        if status != self._status:
            self._status = status
            self._note("status", status=str(status.status), error_code=str(status.error_code))
            self._emit("status", status)

    # ------------------------------------------------------------------ faults

    def add_probe(self, fault: Fault, still_present: Callable[[], bool]) -> None:
        self._probes[fault] = still_present

    def _clear_fault(self, fault: Fault, how: Clear) -> None:
        probe = self._probes.get(fault)
        if probe is not None and probe():
            return
        if fault in self.faults and how in RULES[fault].clears_on:
            del self.faults[fault]
            log.info("connector %s fault %s cleared by %s", self.id, fault, how)
            self._note("fault", fault=str(fault), active=False, cleared_by=str(how))

    def _clear_by(self, how: Clear) -> None:
        for fault in list(self.faults):
            self._clear_fault(fault, how)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
