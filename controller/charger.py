"""The whole charge point: connectors with their sensors, meters, limiter, reader and balancer.

It wires hardware events to the connectors, routes cards to the right connector and feeds
each connector the current its limiter allows. It decides nothing about energy itself:
that is the connector's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from evsed.controller.charger_reservation import ChargerReservation
from evsed.controller.clock import Clock, SystemClock
from evsed.controller.config import Config
from evsed.controller.config import Connector as ConnectorConfig
from evsed.controller.connector.core import SafetyCore
from evsed.controller.connector.faults import Fault, most_serious
from evsed.controller.connector.hooks import ConnectorHooks, Transaction
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.phases import Phase
from evsed.controller.connector.sampler import Rates, Sampler
from evsed.controller.connector.settings import Settings
from evsed.controller.connector.status import (
    ChargePointStatus,
    ConnectorStatus,
    ErrorCode,
    StopReason,
)
from evsed.controller.connector.view import ConnectorView
from evsed.controller.limiter import (
    Allowance,
    Budget,
    CurrentLimiter,
    Electrical,
    LimiterConfig,
    LimitInputs,
    Reason,
    SmartChargingLimit,
    limit,
    minimum_current,
)
from evsed.controller.loadbalance import (
    ConnectorDemand,
    LoadBalanceConfig,
    LoadBalancer,
    Mode,
    SharedCap,
)
from evsed.controller.masking import mask_tag
from evsed.controller.snapshot import Metering, Reservation
from evsed.hal.interfaces import (
    Contactor,
    EnergyMeter,
    LockActuator,
    PhaseSwitch,
    PilotOutput,
    PilotSensor,
    ProximitySensor,
    ResidualCurrentMonitor,
    TagReader,
    TemperatureSensor,
)
from evsed.hal.meters.poller import MeterPoller
from evsed.hal.types import DeviceFault, MeterSample, PilotState, TagPresented

log = logging.getLogger(__name__)


@dataclass
class ConnectorParts:
    pilot: PilotOutput
    sensor: PilotSensor
    contactor: Contactor
    rcd: ResidualCurrentMonitor | None = None
    proximity: ProximitySensor | None = None
    lock: LockActuator | None = None
    temperature: TemperatureSensor | None = None
    meter: EnergyMeter | None = None
    phase_switch: PhaseSwitch | None = None


@dataclass
class Parts:
    connectors: list[ConnectorParts]
    reader: TagReader | None = None
    grid_meter: EnergyMeter | None = None

    def shutdown(self) -> None:
        """Release every device in its safe state; contactors first, and a socket lock only
        once its contactor reads open: a stop (Reset, systemctl stop, an update) must not
        let a plug be pulled while the contacts still carry current. A contactor that stays
        closed (welded) keeps its lock as it is, and its phase relay too (released, it would
        switch L2/L3 under load). (A hold-solenoid lock still drops when the
        process ends and its GPIO is released: only a motor lock stays locked without us.)"""
        for c in self.connectors:
            _quietly(c.contactor.deenergize)
        opened = _wait_open([c.contactor for c in self.connectors])
        for c in self.connectors:
            _quietly(c.contactor.shutdown)
        for i, c in enumerate(self.connectors):
            if c.phase_switch is None:
                continue
            # Released, the relay drops to three phases: not while the contacts carry current.
            if opened[i]:
                _quietly(c.phase_switch.shutdown)
            else:
                log.critical(
                    "a contactor still reads closed at shutdown: its phase relay is left as it is"
                )
        for i, c in enumerate(self.connectors):
            for dev in (c.pilot, c.sensor, c.rcd, c.proximity, c.temperature):
                if dev is not None:
                    _quietly(dev.shutdown)
            if c.lock is None:
                continue
            if opened[i]:
                _quietly(c.lock.shutdown)
            else:
                log.critical(
                    "a contactor still reads closed at shutdown: its socket lock is left locked"
                )
        if self.reader is not None:
            _quietly(self.reader.shutdown)


#: Beyond a meter poll interval, how long a stop waits for the reading that closes it.
STOP_READING_MARGIN_S = 2.0
#: When the charger stops: the bound on the meter reading taken after the cut (real time:
#: the meter answers over its own link, whatever clock the charger runs on).
FINAL_READING_S = 2.0


#: How long a stop waits for the contactors' feedback to read open before it gives up on
#: releasing their locks (a relay drops out in tens of milliseconds).
LOCK_RELEASE_WAIT_S = 0.5
#: Without feedback: the drop-out time assumed before a lock is released.
DROP_OUT_S = 0.05


def _wait_open(contactors: list[Contactor]) -> list[bool]:
    """Per contactor: whether it reads open (no feedback: assumed, after `DROP_OUT_S`)."""

    def reads(c: Contactor) -> bool | None:
        try:
            return c.feedback()
        except Exception:
            return True  # unreadable: not known to be open

    deadline = time.monotonic() + LOCK_RELEASE_WAIT_S
    if any(reads(c) is None for c in contactors):
        time.sleep(DROP_OUT_S)
    while any(reads(c) is True for c in contactors) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [reads(c) is not True for c in contactors]


def _isolated(fn: Callable[..., object], *args: object) -> None:
    """An observer's exception is logged, never passed on to what reported the event."""
    try:
        fn(*args)
    except Exception:
        log.exception("a charger observer (%r) raised; ignored", fn)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("shutting a device down failed")


@dataclass
class _Slot:
    """Everything the charger keeps per connector."""

    connector: Connector
    config: ConnectorConfig
    parts: ConnectorParts
    sampler: Sampler
    limiter: CurrentLimiter
    poller: MeterPoller | None = None
    smart: SmartChargingLimit | None = None
    budget: Budget | None = None
    started_at: float = 0.0
    # Whose start `started_at` is (the transaction's own started_at): the core may open a
    # transaction before its phase event reaches the charger, and a grid poll in between
    # must not rank the newcomer by the last session's (or no) start.
    started_for: datetime | None = None
    invalid_id: bool = False  # StopTransactionOnInvalidId=false suspension (own limit slot)
    # 1/3-phase switching (set_phases): the phases wanted, the task that gets there, and
    # whether the contactor is known open (from the connector's own notes).
    phases_wanted: int | None = None
    phase_task: asyncio.Task[None] | None = None
    phase_pause: bool = False
    contactor_open: asyncio.Event = field(default_factory=asyncio.Event)
    allowance: Allowance | None = None  # the last one the limiter gave
    noted: tuple[Allowance, Fault | None] | None = None  # what the log last said


@dataclass
class ChargerEvents:
    """Charge-point-level observers (connector 0 status, timelines)."""

    reader_fault: list[Callable[[bool, str], None]] = field(default_factory=list)
    tag: list[Callable[[str], None]] = field(default_factory=list)
    grid: list[Callable[[MeterSample], None]] = field(default_factory=list)
    #: Every connector meter reading, as listener(connector_id, sample), on the loop.
    meter: list[Callable[[int, MeterSample], None]] = field(default_factory=list)


class Charger:
    def __init__(
        self,
        config: Config,
        parts: Parts,
        hooks: ConnectorHooks,
        clock: Clock,
        *,
        rates: Rates | None = None,
        limiter_config: LimiterConfig | None = None,
        safety_thread: bool | None = None,
    ) -> None:
        """`safety_thread`: run the safety core on its own thread; by default it does when
        the clock is the world's (`SystemClock`), and runs inline, stepped by the clock,
        when time is simulated."""
        self.config = config
        self.parts = parts
        self.clock = clock
        self.events = ChargerEvents()
        self._hooks = hooks
        self.reader_faulted = False
        #: How often each supervised task had to be restarted.
        self.restarts: dict[str, int] = {}
        self._slots: dict[int, _Slot] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._supervised: dict[str, Callable[[], Awaitable[None]]] = {}
        self._stopping = False
        if safety_thread is None:
            safety_thread = isinstance(clock, SystemClock)
        self.core = SafetyCore(clock, threaded=safety_thread)
        self._grid_poller: MeterPoller | None = None
        self._zero = ChargerReservation(lambda: self.connectors, clock)
        self._balancer: LoadBalancer | None = None
        # The Central System's cap for the whole charge point (ChargePointMaxProfile),
        # shared among the connectors by the balancer, grid meter or not.
        self._cap: SharedCap | None = None
        if config.grid.enabled:
            self._balancer = LoadBalancer(
                LoadBalanceConfig(
                    fuse_a=config.grid.main_fuse_a,
                    margin_a=config.grid.margin_a,
                    mode=Mode.SOLAR if config.grid.solar else Mode.FUSE,
                )
            )
        self._cp_reported: ConnectorStatus | None = None
        for index, (cfg, hw) in enumerate(zip(config.connectors, parts.connectors, strict=True)):
            cid = index + 1
            connector = Connector(
                Settings(
                    connector_id=cid,
                    rated_current_a=cfg.rated_current_a,
                    max_current_a=cfg.max_current_a,
                    phases=cfg.phases,
                    nominal_voltage_v=cfg.nominal_voltage_v,
                    free_vend=config.authorization.free_vend,
                    free_vend_id_tag=config.authorization.free_vend_id_tag,
                    pwm_resolution=getattr(hw.pilot, "resolution", 0.001),
                    has_meter=hw.meter is not None,
                    # A stop waits for the next poll after the contactor opened, and a
                    # slow answer (an RTU timeout and its retry).
                    stop_meter_wait_s=cfg.meter.poll_interval_s + STOP_READING_MARGIN_S,
                ),
                pilot=hw.pilot,
                contactor=hw.contactor,
                hooks=hooks,
                clock=clock,
                lock=hw.lock,
            )
            sampler = Sampler(
                connector,
                hw.sensor,
                clock,
                proximity=hw.proximity if cfg.proximity.enabled else None,
                temperature=hw.temperature,
                rcd=hw.rcd,
                max_temperature_c=cfg.temperature.max_c,
                rates=rates or Rates(),
                duty=lambda p=hw.pilot: p.duty,
            )
            electrical = Electrical(nominal_v=cfg.nominal_voltage_v, phases=cfg.phases)
            lim_cfg = limiter_config or LimiterConfig()
            limiter = CurrentLimiter(
                LimiterConfig(
                    resume_a=lim_cfg.resume_a,
                    resume_after_s=lim_cfg.resume_after_s,
                    electrical=electrical,
                )
            )
            slot = _Slot(connector, cfg, hw, sampler, limiter)
            if hw.meter is not None:
                slot.poller = MeterPoller(
                    hw.meter,
                    lambda ev, s=slot: self._on_meter(s, ev),
                    clock,
                    interval_s=cfg.meter.poll_interval_s,
                )
            if hw.rcd is not None:
                connector.add_probe(Fault.RCD, lambda r=hw.rcd: r.tripped)
            connector.on_change(lambda what, fields, s=slot: self._on_change(s, what, fields))
            connector.add_listener(self._on_connector_note)
            connector.charger_wide = self._zero
            if hw.phase_switch is not None:
                connector.add_listener(
                    lambda kind, fields, s=slot: self._on_contactor_note(s, kind, fields)
                )
            self.core.add(connector, sampler)
            self._slots[cid] = slot
            self.recompute(cid)
        # Connector 0's status as last reported through the hooks.
        self._cp_reported = self.charge_point_status()

    # ------------------------------------------------------------------ access

    @property
    def connectors(self) -> dict[int, Connector]:
        return {cid: s.connector for cid, s in self._slots.items()}

    def connector(self, connector_id: int) -> Connector:
        return self._slots[connector_id].connector

    def safety_tick_age(self) -> float:
        """Seconds (real monotonic time) since the oldest connector's last completed safety
        tick; `math.inf` while the safety core is not running. The watchdog pings only
        while this is small."""
        return self.core.tick_age()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        for cid, slot in self._slots.items():
            rcd = slot.parts.rcd
            if rcd is not None:
                rcd.start(lambda ev, c=slot.connector: self._on_rcd(c, ev))
                passed = await rcd.self_test()
                log.info("connector %s RCD self-test %s", cid, "passed" if passed else "FAILED")
                slot.connector.on_rcd_self_test(passed)
            else:
                slot.connector.on_rcd_self_test(True)
            slot.sampler.calibrate()
        self.core.start()
        for slot in self._slots.values():
            if slot.poller is not None:
                self._supervise(f"meter-poller-{slot.connector.id}", slot.poller)
        if self.parts.reader is not None:
            self.parts.reader.start(self._on_reader)
        if self.parts.grid_meter is not None and self._balancer is not None:
            self._grid_poller = MeterPoller(
                self.parts.grid_meter,
                self._on_grid,
                self.clock,
                interval_s=min(1.0, self.config.grid.meter.poll_interval_s),
                device="grid_meter",
            )
            self._supervise("grid-meter-poller", self._grid_poller)
        self._supervise("limits", self._tick)

    async def stop(self, reason: StopReason = StopReason.REBOOT) -> None:
        """Stop transactions with `reason`, open contactors, release the hardware."""
        # Every connector safe first: no connector's outputs wait on another's disk write.
        for slot in self._slots.values():
            slot.connector.cut_outputs()
        for slot in self._slots.values():
            slot.connector.shutdown(reason)
        self._stopping = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for slot in self._slots.values():
            if slot.poller is not None:
                await slot.poller.stop()
        await self._final_readings()
        # The core stops before the devices close under it.
        await self.core.stop()
        if self._grid_poller is not None:
            await self._grid_poller.stop()
        # In a worker: it waits (bounded) for the contactors to read open before a lock
        # goes, and nothing else drives the devices once the core has stopped.
        await asyncio.to_thread(self.parts.shutdown)

    async def _final_readings(self) -> None:
        """The stops just made carry the energy up to the cut: one more meter reading per
        connector with a stop pending (its outputs are cut already), bounded, then each such
        stop is recorded with the newest reading known."""

        async def read(slot: _Slot) -> None:
            poller = slot.poller
            if poller is None or not slot.connector.stop_pending:
                return
            try:
                await asyncio.wait_for(poller.poll_once(), FINAL_READING_S)
            except Exception:  # a timeout or a meter failure: the newest reading known
                log.warning("connector %s: no meter reading after the stop", slot.connector.id)
            finally:
                await poller.stop()  # closes the link poll_once opened again

        await asyncio.gather(*(read(slot) for slot in self._slots.values()))
        for slot in self._slots.values():
            slot.connector.take_pending_stop()

    # ------------------------------------------------------------------ supervision

    #: Restart delays for a long-running task that ended unexpectedly (growing, capped).
    RESTART_DELAYS_S = (0.0, 1.0, 5.0, 30.0)

    def _supervise(self, name: str, what: MeterPoller | Callable[[], Awaitable[None]]) -> None:
        """Run a long-running task for the charger's life: if it ends or raises, log it and
        start it again (after a growing delay), until `stop()`."""
        self._tasks.append(
            asyncio.get_running_loop().create_task(self._keep(name, what), name=name)
        )

    async def _keep(self, name: str, what: MeterPoller | Callable[[], Awaitable[None]]) -> None:
        restarts = 0
        while not self._stopping:
            try:
                if isinstance(what, MeterPoller):
                    what.start()
                    task = what.task
                    assert task is not None
                    await asyncio.shield(task)  # stop() cancels the poller itself
                else:
                    await what()
                log.error("%s ended unexpectedly; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it", name)
            delay = self.RESTART_DELAYS_S[min(restarts, len(self.RESTART_DELAYS_S) - 1)]
            restarts += 1
            self.restarts[name] = restarts
            await self.clock.sleep(delay)

    async def _tick(self) -> None:
        # A suspended limiter's resume delay only advances when it is asked; without a
        # meter nothing else would ask it.
        while True:
            await self.clock.sleep(1.0)
            if self._cap is not None and self._grid_poller is None:
                # Without grid polls nothing else re-shares a cap: a connector whose own
                # limit rose (a cable read, a pause lifted) had only what the others left.
                self._rebalance()
            for cid, slot in self._slots.items():
                if slot.limiter.suspended:
                    self.recompute(cid)

    # ------------------------------------------------------------------ limits

    def set_smart_charging_limit(self, connector_id: int, value: SmartChargingLimit | None) -> None:
        """Connector 0: the cap for the whole charge point (shared among the connectors)."""
        if connector_id == 0:
            self._set_shared_cap(value)
            return
        slot = self._slots[connector_id]
        if value != slot.smart:
            slot.smart = value
            if self._balancer is not None:
                # The budget was computed with the old limit as the connector's own cap (a
                # paused connector got its 0 A passed through): share anew before the
                # limiter sees the new limit, or the stale 0 A would look like a
                # balancer's dip and hold the resume.
                self._rebalance()
            else:
                self.recompute(connector_id)

    def _set_shared_cap(self, value: SmartChargingLimit | None) -> None:
        cap = None if value is None else SharedCap(value.value, value.unit)
        if cap == self._cap:
            return
        self._cap = cap
        if not self.config.grid.enabled:
            if cap is None:
                self._balancer = None
                for cid, slot in self._slots.items():
                    slot.budget = None
                    self.recompute(cid)
                return
            if self._balancer is None:
                self._balancer = LoadBalancer(LoadBalanceConfig(metered=False))
        self._rebalance()

    # ------------------------------------------------------------------ 1/3-phase switching

    def phases(self, connector_id: int) -> int:
        """The phases the connector gives the EV now."""
        return self._slots[connector_id].connector.settings.phases

    def set_phases(self, connector_id: int, phases: int) -> bool:
        """Switch to 1 or 3 phases (a schedule period's numberPhases) with the safe sequence:
        pause (offer nothing), wait until the contactor is open, wait, move the phase relay,
        wait, resume. Never under load. False without a phase relay: numberPhases then only
        changes the A<->W conversion (the caller's business)."""
        slot = self._slots[connector_id]
        if slot.parts.phase_switch is None or phases not in (1, 3):
            return False
        slot.phases_wanted = phases
        if phases != slot.connector.settings.phases and (
            slot.phase_task is None or slot.phase_task.done()
        ):
            slot.phase_pause = True  # at once: the pilot stops offering in this call
            self.recompute(connector_id)
            slot.phase_task = asyncio.get_running_loop().create_task(
                self._switch_phases(slot), name=f"phase-switch-{connector_id}"
            )
            self._tasks.append(slot.phase_task)
        return True

    async def _switch_phases(self, slot: _Slot) -> None:
        relay = slot.parts.phase_switch
        assert relay is not None
        settle = slot.config.phase_switch.settle_s
        cid = slot.connector.id
        try:
            while slot.phases_wanted is not None and slot.phases_wanted != (
                slot.connector.settings.phases
            ):
                target = slot.phases_wanted
                slot.phase_pause = True
                self.recompute(cid)  # PWM off: the EV stops, then the connector opens
                if slot.connector.energized:
                    slot.contactor_open.clear()
                    await slot.contactor_open.wait()
                await self.clock.sleep(settle)
                if slot.connector.energized:
                    continue  # closed again meanwhile: never switch under load
                # The command is not the contact: a welded contactor reads closed although
                # commanded open. Never move the relay then (nor on any fault): stay on the
                # phases the relay has, and the limits count those.
                refusal = slot.connector.phase_relay_refusal()
                if refusal is not None:
                    log.warning(
                        "connector %s: phase switch to %d given up (%s); staying on %d",
                        cid,
                        target,
                        refusal,
                        relay.phases,
                    )
                    slot.phases_wanted = None
                    if relay.phases != slot.connector.settings.phases:
                        self._use_phases(slot, relay.phases)
                    break
                relay.set_phases(target)
                self._use_phases(slot, target)
                log.info("connector %s switched to %d phase(s)", cid, target)
                await self.clock.sleep(settle)
        finally:
            slot.phase_pause = False
            self.recompute(cid)

    def _use_phases(self, slot: _Slot, phases: int) -> None:
        connector = slot.connector
        connector.settings = replace(connector.settings, phases=phases)
        cfg = slot.limiter.config
        slot.limiter.config = replace(cfg, electrical=replace(cfg.electrical, phases=phases))

    def _inputs(
        self, slot: _Slot, with_budget: bool = True, view: ConnectorView | None = None
    ) -> LimitInputs:
        """`view`: the connector's fields as one reading (else each is read as it is)."""
        cfg = slot.config
        connector = slot.connector
        if cfg.proximity.fixed_cable_a is not None:
            cable: float | None = cfg.proximity.fixed_cable_a
        elif cfg.proximity.enabled and slot.parts.proximity is not None:
            cable = connector.cable_a if view is None else view.cable_a
        else:
            cable = cfg.rated_current_a
        return LimitInputs(
            hardware_a=cfg.rated_current_a,
            cable_a=cable,
            config_a=cfg.max_current_a or cfg.rated_current_a,
            smart_charging=slot.smart,
            budget=slot.budget if with_budget else None,
            invalid_id_suspended=slot.invalid_id,
            phase_switching=slot.phase_pause,
            meter=connector.last_sample if view is None else view.last_sample,
        )

    def recompute(self, connector_id: int) -> None:
        slot = self._slots[connector_id]
        if slot.connector.transaction is None:
            # The resume delay protects a running session from flapping; a new session
            # starts on the present limits, not on the history of an idle connector.
            slot.limiter.reset()
        inputs = self._inputs(slot)
        allowance = slot.limiter.update(inputs, self.clock.monotonic())
        slot.connector.set_allowed_current(allowance.amps)
        self._note_allowance(slot, allowance, no_cable=inputs.cable_a is None)

    def _note_session(self, slot: _Slot, view: ConnectorView | None = None) -> None:
        """The first time the charger sees the connector's transaction it ranks newest."""
        tx = slot.connector.transaction if view is None else view.transaction
        if tx is not None and slot.started_for != tx.started_at:
            slot.started_for = tx.started_at
            slot.started_at = self.clock.monotonic()

    def _demand(self, cid: int, slot: _Slot) -> ConnectorDemand:
        # An EV that paused (back to B) draws nothing: it keeps the minimum, so the PWM
        # stays on and it can resume, and the rest goes to the others. An EV starts in B
        # too, so an idle connector looks ahead at that minimum (unless its EV already
        # asks, C/D): its first allowance is then what the re-share at its start gives.
        # One reading of the connector: the pilot state and the transaction it is asked
        # with agree (a core step between two reads: an EV "asking" on an idle connector).
        view = slot.connector.view()
        asking = view.pilot_state in (PilotState.C, PilotState.D)
        idle = view.transaction is None
        self._note_session(slot, view)  # a transaction ahead of its phase event: the newest
        own = self._inputs(slot, with_budget=False, view=view)
        return ConnectorDemand(
            connector_id=cid,
            started_at=slot.started_at,
            max_a=limit(own).amps,
            min_a=minimum_current(own, slot.limiter.config.electrical),
            meter=view.last_sample,
            grid_phases=(0, 1, 2)[: slot.config.phases],
            voltage_v=slot.config.nominal_voltage_v,
            demand_a=0.0 if (not asking if idle else view.pilot_state == PilotState.B) else None,
        )

    def _rebalance(self, grid: MeterSample | None = None) -> None:
        if self._balancer is None:
            return
        charging = {c: s for c, s in self._slots.items() if s.connector.transaction is not None}
        # Idle connectors get the budget they would have as the newest starter, so a
        # newcomer's first allowance is already its share: never a placeholder 0 A (a
        # "dip" that held its resume 30 s), never above what the fuse leaves (issue 11).
        budgets = self._balancer.update(
            self.clock.monotonic(),
            [self._demand(cid, slot) for cid, slot in charging.items()],
            grid,
            prospective=[
                self._demand(cid, slot) for cid, slot in self._slots.items() if cid not in charging
            ],
            cap=self._cap,
        )

        # Decreases first: a shared cap is never exceeded between two of these calls.
        def change(item: tuple[int, _Slot]) -> float:
            cid, slot = item
            old = math.inf if slot.budget is None else slot.budget.amps
            return budgets[cid].amps - old

        for cid, slot in sorted(self._slots.items(), key=change):
            slot.budget = budgets[cid]
            self.recompute(cid)

    # ------------------------------------------------------------------ events

    def _on_contactor_note(self, slot: _Slot, kind: str, fields: dict[str, object]) -> None:
        # The phase switch waits for this (the connector's own word that it opened).
        if kind == "contactor":
            if fields.get("closed"):
                slot.contactor_open.clear()
            else:
                slot.contactor_open.set()

    def _on_change(self, slot: _Slot, kind: str, fields: dict[str, object]) -> None:
        if kind == "cable":
            if self._cap is not None:
                self._rebalance()  # a shared cap: its share, not what the others left
            else:
                self.recompute(slot.connector.id)
        elif kind == "stop_reading":
            if slot.poller is not None:
                slot.poller.poll_soon()
        elif kind == "phase":
            if (
                fields.get("phase") == Phase.TRANSACTION
                and fields.get("previous") != Phase.TRANSACTION
            ):
                self._note_session(slot)
                # The core may be ahead of this event (the transaction already open when the
                # cable note came): a new session starts on the present limits, not on the
                # suspension history of the idle connector.
                slot.limiter.reset()
            if self._balancer is not None:
                self._rebalance()  # recomputes every connector, this one included
            else:
                self.recompute(slot.connector.id)

    def _on_meter(self, slot: _Slot, event: MeterSample | DeviceFault) -> None:
        if isinstance(event, MeterSample):
            polled = slot.poller.last_poll_started_at if slot.poller is not None else None
            slot.connector.on_meter_sample(event, polled)
            self.recompute(slot.connector.id)
            for listener in list(self.events.meter):
                _isolated(listener, slot.connector.id, event)
        elif event.active:
            slot.connector.raise_fault(Fault.METER, event.detail)
        else:
            slot.connector.recover(Fault.METER)

    def _on_grid(self, event: MeterSample | DeviceFault) -> None:
        if isinstance(event, MeterSample):
            self._rebalance(event)
            for listener in self.events.grid:
                _isolated(listener, event)
        elif event.active:
            log.warning("grid meter silent: %s", event.detail)

    def _on_rcd(self, connector: Connector, event: object) -> None:
        if isinstance(event, DeviceFault) and event.active:
            connector.raise_fault(Fault.RCD, event.detail or "residual current")

    def _on_reader(self, event: object) -> None:
        if isinstance(event, TagPresented):
            log.info("card %s on reader %s", mask_tag(event.id_tag), event.reader)
            for listener in self.events.tag:
                _isolated(listener, event.id_tag)
            self.present_tag(event.id_tag)
        elif isinstance(event, DeviceFault):
            self.reader_faulted = event.active
            for fault_listener in self.events.reader_fault:
                _isolated(fault_listener, event.active, event.detail)
            # The reader belongs to the charge point, not to a connector: connector 0.
            self._report_charge_point()

    def _on_connector_note(self, kind: str, fields: dict[str, object]) -> None:
        if kind == "status":
            # The last connector made Unavailable (ChangeAvailability on it, not on 0) makes
            # the charge point Unavailable: the CS hears it on connector 0 as well.
            self._report_charge_point()

    def _report_charge_point(self) -> None:
        status = self.charge_point_status()
        if status != self._cp_reported:
            self._cp_reported = status
            _isolated(self._hooks.status_changed, 0, status)

    def present_tag(self, id_tag: str) -> None:
        """Route a card: to the session it stops, else to a connector waiting, else a free one."""
        connectors = [s.connector for s in self._slots.values()]
        # One reading per connector: `c.transaction` read twice could be a transaction, then
        # None (the core ended it in between: AttributeError, the card lost).
        views = [(c, c.view()) for c in connectors]
        for c, v in views:
            if v.transaction is not None and v.transaction.id_tag.upper() == id_tag.upper():
                c.present_tag(id_tag)
                return
        for c, v in views:
            if v.phase == Phase.PLUGGED:
                c.present_tag(id_tag)
                return
        for c, v in views:
            if v.transaction is None and v.operative:
                c.present_tag(id_tag)
                return
        if len(connectors) == 1:
            connectors[0].present_tag(id_tag)  # a group card stopping the running session

    # ------------------------------------------------------------------ ChargePointPort
    # What the OCPP layer may read and ask (evsed.controller.ocpp16.port); nothing else.

    def _note_allowance(self, slot: _Slot, allowance: Allowance, no_cable: bool = False) -> None:
        # After the pilot took the new current: the log line never delays it.
        slot.allowance = allowance
        # Any active fault blocks the outputs whatever the limits allow: "may offer 32.0 A"
        # beside a Faulted status read as the fault being ignored. Read as it stands, not
        # through view(): a log line is no reason for the loop to wait on the core at every
        # recompute (each meter sample), and a step's lag shows at the next one.
        fault = most_serious(slot.connector.faults)
        note = (allowance, fault)
        if note == slot.noted:
            return
        slot.noted = note
        if fault is not None:
            log.info(
                "connector %s offers nothing while faulted (%s); the limits allow %.1f A "
                "(bound by %s)",
                slot.connector.id,
                fault.value,
                allowance.amps,
                allowance.reason.value,
            )
            return
        if no_cable and allowance.suspended and allowance.reason is Reason.CABLE:
            # Nothing in the socket: "0.0 A (suspended) (bound by cable)" read as a cable
            # fault to the people who saw it at every start-up.
            log.info("connector %s offers nothing: no cable plugged", slot.connector.id)
            return
        log.info(
            "connector %s may offer %.1f A%s (bound by %s)",
            slot.connector.id,
            allowance.amps,
            " (suspended)" if allowance.suspended else "",
            allowance.reason.value,
        )

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self._slots)

    def status(self, connector_id: int) -> ConnectorStatus:
        return self._slots[connector_id].connector.status

    def charge_point_status(self) -> ConnectorStatus:
        """Connector 0: Unavailable when every connector is, ReaderFailure while the reader
        fails (OCPP 1.6 §4.9: connector 0 is the charge point's main controller)."""
        every_one_unavailable = all(
            s.connector.status.status is ChargePointStatus.UNAVAILABLE for s in self._slots.values()
        )
        return ConnectorStatus(
            ChargePointStatus.UNAVAILABLE if every_one_unavailable else ChargePointStatus.AVAILABLE,
            ErrorCode.READER_FAILURE if self.reader_faulted else ErrorCode.NO_ERROR,
        )

    def transaction(self, connector_id: int) -> Transaction | None:
        return self._slots[connector_id].connector.transaction

    def operative(self, connector_id: int) -> bool:
        return self._slots[connector_id].connector.operative

    def start_refusal(
        self, connector_id: int, id_tag: str, parent_id_tag: str | None
    ) -> str | None:
        return self._slots[connector_id].connector.start_refusal(id_tag, parent_id_tag)

    def reservation(self, connector_id: int) -> Reservation | None:
        if connector_id == 0:
            return self._zero.held
        held = self._slots[connector_id].connector.reservation
        return None if held is None else Reservation(held[0], held[1], held[2])

    def metering(self, connector_id: int) -> Metering:
        c = self._slots[connector_id].connector
        v = c.view()  # the offer and the temperature of one moment, with the sample
        return Metering(
            v.last_sample, v.last_energy_wh, v.offered_a, v.temperature_c, c.settings.phases
        )

    def view(self, connector_id: int) -> ConnectorView:
        """The connector's status, pilot state, faults, transaction and readings as one
        consistent reading (`Connector.view`), for a snapshot of it (`evsed status`)."""
        return self._slots[connector_id].connector.view()

    def has_meter(self, connector_id: int) -> bool:
        return self._slots[connector_id].poller is not None

    def watch_meters(self, listener: Callable[[int, float], None]) -> Callable[[], None]:
        def on_meter(connector_id: int, sample: MeterSample) -> None:
            if sample.energy_import_wh is not None:
                listener(connector_id, sample.energy_import_wh)

        self.events.meter.append(on_meter)
        return lambda: self.events.meter.remove(on_meter)

    def allowance(self, connector_id: int) -> Allowance:
        slot = self._slots[connector_id]
        if slot.allowance is None:  # recompute() runs in __init__, so only before that
            self.recompute(connector_id)
        assert slot.allowance is not None
        return slot.allowance

    def change_availability(self, connector_id: int, operative: bool) -> str:
        return self._slots[connector_id].connector.change_availability(operative)

    def set_maintenance(self, reason: str | None) -> None:
        for slot in self._slots.values():
            slot.connector.set_maintenance(reason)

    def start_remote(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> bool:
        return self._slots[connector_id].connector.authorize_remote(id_tag, parent_id_tag)

    def reserve(
        self,
        connector_id: int,
        reservation_id: int,
        id_tag: str,
        parent_id_tag: str | None,
        expiry: datetime,
    ) -> str:
        if connector_id == 0:
            return self._zero.reserve(Reservation(reservation_id, id_tag, parent_id_tag), expiry)
        connector = self._slots[connector_id].connector
        return connector.reserve(reservation_id, id_tag, parent_id_tag, expiry.timestamp())

    def cancel_reservation(self, connector_id: int, reservation_id: int) -> bool:
        if connector_id == 0:
            return self._zero.cancel(reservation_id)
        return self._slots[connector_id].connector.cancel_reservation(reservation_id)

    def request_stop(self, connector_id: int, reason: StopReason) -> bool:
        return self._slots[connector_id].connector.request_stop(reason)

    #: How often an unlock waiting for the contactor looks again (simulated or real time).
    UNLOCK_POLL_S = 0.02

    async def unlock(self, connector_id: int) -> str:
        """UnlockConnector's answer, once known: what the lock's position switch reads after
        the unlock (a running session ends first; its IEC soft stop gives the EV time to
        stop drawing before the contactor opens, and only then may the lock open). The
        connector bounds each wait itself; this bound is a second line."""
        connector = self._slots[connector_id].connector
        result = connector.unlock()
        deadline = self.clock.monotonic() + connector.unlock_bound_s() + self.UNLOCK_POLL_S
        while result == "Pending":
            if self.clock.monotonic() >= deadline:
                # Answered UnlockFailed: the lock must not open later behind that answer.
                connector.withdraw_unlock()
                log.warning("connector %s: unlock not done in time, lock shut", connector_id)
                return "UnlockFailed"
            await self.clock.sleep(self.UNLOCK_POLL_S)
            result = connector.unlock_result()
        return result

    def set_invalid_id_suspension(self, connector_id: int, suspended: bool) -> None:
        slot = self._slots[connector_id]
        if suspended != slot.invalid_id:
            slot.invalid_id = suspended
            self.recompute(connector_id)

    def set_transaction_parent(self, connector_id: int, local_id: int, parent_id_tag: str) -> bool:
        # A command: the transaction belongs to the safety core.
        return self._slots[connector_id].connector.adopt_parent_id_tag(local_id, parent_id_tag)

    def apply_session_settings(
        self,
        *,
        connection_timeout_s: float,
        stop_on_ev_disconnect: bool,
        unlock_on_ev_disconnect: bool,
    ) -> None:
        for slot in self._slots.values():
            slot.connector.settings = replace(
                slot.connector.settings,
                connection_timeout_s=connection_timeout_s,
                stop_on_ev_disconnect=stop_on_ev_disconnect,
                unlock_on_ev_disconnect=unlock_on_ev_disconnect,
            )
