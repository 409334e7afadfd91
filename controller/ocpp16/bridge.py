"""The connectors' hooks towards OCPP: authorisation, transactions into the persistent
queue, meter values, status, and the reactions to what the CS says about a transaction.

Everything a transaction produces goes through `TxQueue` (committed before the hook
returns), so an outage or a kill -9 loses nothing; the session delivers it in order.

- Sampled meter values (MeterValueSampleInterval, MeterValuesSampledData, Sample.Periodic):
  one task per running transaction, queued as transaction MeterValues.
- Clock-aligned meter values (ClockAlignedDataInterval, MeterValuesAlignedData, Sample.Clock):
  one task for the charger, on midnight-UTC boundaries. With a transaction they are
  transaction messages (queued); without one they are sent only while online and dropped
  otherwise: a stale idle reading replayed later is of no use to anyone.
- StopTxnSampledData / StopTxnAlignedData: collected per transaction (Transaction.Begin,
  every periodic/aligned reading, Transaction.End) into StopTransaction.transactionData.
- StopTransactionOnInvalidId: on the session's explicit `start_transaction_result` call.
  Suspending (key false) sets the connector's invalid-id suspension (a limit slot of its
  own: a smart-charging limit underneath stays) until the transaction ends;
  MaxEnergyOnInvalidId > 0 lets that much energy through first.
- Groups: the parentIdTag of StartTransaction.conf's idTagInfo becomes the running
  transaction's group, so a card of that group can stop it (§3.10, §4.8).
- Power loss: `recover_open_transactions()` stops, once, every transaction left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ocpp.v16 import call

from evsed.controller.connector.hooks import AuthResult, Transaction, TransactionStop
from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus, StopReason
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.masking import mask_tag
from evsed.controller.ocpp16.auth import ID_TOKEN_MAX_LEN, AuthSource
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.metering import (
    ClockAlignedSchedule,
    MeterValueBuilder,
    SampledSchedule,
    TransactionData,
)
from evsed.controller.ocpp16.profiles.reservation import reservation_used
from evsed.controller.ocpp16.supervise import keep_running

log = logging.getLogger(__name__)

#: Where a refusal came from, as the card's log line says it.
_REFUSED_BY: dict[AuthSource, str] = {
    AuthSource.CENTRAL_SYSTEM: "by the Central System",
    AuthSource.LOCAL_LIST: "by the local list",
    AuthSource.CACHE: "by the authorisation cache",
    AuthSource.NONE: (
        "no answer from the Central System, and the card is in neither the local list nor "
        "the authorisation cache (AllowOfflineTxForUnknownId is false)"
    ),
}

#: How often the last meter register of a running transaction is stored when no MeterValues
#: stored it since (sampling off or slower): what a stop after a kill -9 is billed with, so
#: at most this old. One light commit a connector per tick (about 0.3 MB/h written).
METER_RECORD_INTERVAL_S = 30.0


@dataclass
class _Running:
    """What the bridge keeps for one open transaction."""

    tx: Transaction
    data: TransactionData = field(default_factory=TransactionData)
    sampler: asyncio.Task[None] | None = None
    suspended: bool = False
    suspend_after_wh: float | None = None  # MaxEnergyOnInvalidId: energy still allowed


class OcppHooks:
    """`ConnectorHooks` for every connector of the charger, backed by `OcppContext`."""

    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx
        self._running: dict[int, _Running] = {}  # connector id -> open transaction
        self._tasks: set[asyncio.Task[Any]] = set()
        self._aligned_task: asyncio.Task[None] | None = None
        #: Supervised tasks that ended or raised, by name.
        self.task_failures: Counter[str] = Counter()
        self._recorder_task: asyncio.Task[None] | None = None
        #: Connectors whose reading a MeterValues stored since the recorder's last tick.
        self._stored_since_tick: set[int] = set()
        self._profile_limited: set[int] = set()  # connectors with a RemoteStart TxProfile
        self._started = False
        ctx.reactions = self  # explicit calls, not timeline events
        ctx.keys.on_change("MeterValueSampleInterval", lambda _k, _v: self._restart_samplers())
        ctx.keys.on_change("ClockAlignedDataInterval", lambda _k, _v: self._restart_aligned())

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the charger-wide tasks (clock-aligned values, meter recorder)."""
        self._started = True
        self._restart_aligned()
        if self._recorder_task is None:
            self._recorder_task = self._spawn(self._record_meters(), "meter-recorder")

    async def stop(self) -> None:
        self._started = False
        for running in self._running.values():
            if running.sampler is not None:
                running.sampler.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._aligned_task = self._recorder_task = None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bridge task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------ ConnectorHooks

    async def authorize(self, connector_id: int, id_tag: str) -> AuthResult:
        result, why = await self._authorize(id_tag)
        self.ctx.emit("authorize", connector_id=connector_id, id_tag=id_tag, status=result.status)
        if result.status != "Accepted":
            # The card's one line: otherwise a refused tap leaves only "card ... on reader".
            # Who refused it too: an "Invalid" offline read as the Central System's verdict.
            log.info(
                "connector %d: %s refused (%s)%s",
                connector_id,
                mask_tag(id_tag),
                result.status,
                f": {why}" if why else "",
            )
        return result

    async def _authorize(self, id_tag: str) -> tuple[AuthResult, str]:
        """The answer, and for a refusal where it came from (for the log)."""
        if self.ctx.session is None:
            # No Central System configured: the operator's local tags first.
            tags = {t.casefold() for t in self.ctx.config.authorization.local_tags}
            if id_tag.casefold() in tags:
                return AuthResult("Accepted"), ""
        if self.ctx.authorizer is None:
            return AuthResult("Invalid"), "not in [authorization] local_tags"
        decision = await self.ctx.authorizer.decide(id_tag)
        if not 0 < len(id_tag) <= ID_TOKEN_MAX_LEN:
            return decision.result, f"not an idTag of 1 to {ID_TOKEN_MAX_LEN} characters"
        return decision.result, _REFUSED_BY.get(decision.source, "")

    def transaction_started(self, tx: Transaction) -> Transaction:
        q = self.ctx.txqueue
        args = (tx.connector_id, tx.id_tag, tx.meter_start_wh, tx.started_at, tx.reservation_id)
        try:
            local_id = q.start_transaction(*args)
        except sqlite3.IntegrityError:
            # A transaction of this connector was left open (recovery did not run): close
            # it the way a power loss would, then record the new one.
            stale = self.ctx.store.open_transaction_on(tx.connector_id)
            if stale is not None:
                self._stop_stale(stale, StopReason.POWER_LOSS.value)
            local_id = q.start_transaction(*args)
        # Recorded (committed and synced): from here on the StartTransaction will be sent, so
        # the connector must be told it is recorded whatever a later step does. Raising past
        # this point made it disown a session the CS was then told of, with no stop ever.
        tx = replace(tx, local_id=local_id)
        running = _Running(tx)
        self._running[tx.connector_id] = running
        self._wake()
        cid = tx.connector_id
        # The recorder's next tick writes this session's reading (not skipped for a
        # MeterValues of the last session).
        self._stored_since_tick.discard(cid)
        if tx.reservation_id is not None:
            # The start used the reservation up (§5.13): a restart must not bring it back.
            self._after_start(local_id, reservation_used, self.ctx, tx.reservation_id)
        self._after_start(local_id, self._begin_reading, running)
        self._after_start(local_id, self._start_sampler, running)
        if self.ctx.smart_charging is not None:
            # TxProfiles and Relative schedules start with the transaction.
            self._after_start(local_id, self.ctx.smart_charging.reevaluate, cid)
        self._after_start(
            local_id,
            functools.partial(
                self.ctx.emit,
                "transaction_started",
                connector_id=cid,
                local_id=local_id,
                id_tag=tx.id_tag,
                meter_start_wh=tx.meter_start_wh,
            ),
        )
        return tx

    def _after_start(self, local_id: int, step: Callable[..., object], *args: Any) -> None:
        try:
            step(*args)
        except Exception:
            self.task_failures["after-start"] += 1
            log.exception(
                "transaction (local %s): %r raised after its start was recorded", local_id, step
            )

    def _begin_reading(self, running: _Running) -> None:
        cid = running.tx.connector_id
        running.data.add(self._reading(cid, "StopTxnSampledData", "Transaction.Begin"))

    def transaction_stopped(self, stop: TransactionStop) -> None:
        tx = stop.transaction
        running = self._running.pop(tx.connector_id, None)
        data: list[dict[str, Any]] | None = None
        if running is not None and running.tx.local_id == tx.local_id:
            if running.sampler is not None:
                running.sampler.cancel()
            end = self._reading(
                tx.connector_id, "StopTxnSampledData", "Transaction.End", at=stop.stopped_at
            )
            running.data.add(end)
            data = running.data.to_list()
            if running.suspended and self.ctx.charger is not None:
                self.ctx.charger.set_invalid_id_suspension(tx.connector_id, False)
        try:
            self.ctx.txqueue.stop_transaction(
                tx.local_id,
                stop.meter_stop_wh,
                stop.stopped_at,
                stop.reason.value,
                data,
                stop.id_tag,
            )
        finally:
            # Also when the sync after its commit failed: the stop is queued (a kill -9
            # keeps it) and must be delivered now, not after the next message's wake.
            self._wake()
            self._clear_tx_profile(tx.connector_id)
        self.ctx.emit(
            "transaction_stopped",
            connector_id=tx.connector_id,
            local_id=tx.local_id,
            reason=stop.reason.value,
            meter_stop_wh=stop.meter_stop_wh,
        )

    def status_changed(self, connector_id: int, status: ConnectorStatus) -> None:
        if connector_id != 0 and status.status == ChargePointStatus.AVAILABLE:
            # A RemoteStart whose EV never came: its TxProfile must not reach the next session.
            # (Connector 0, the charge point itself, holds no transaction.)
            self._clear_tx_profile(connector_id)
        if self.ctx.session is not None:
            self.ctx.session.status_changed(connector_id)
        self.ctx.emit(
            "status",
            connector_id=connector_id,
            status=status.status.value,
            error_code=status.error_code.value,
        )

    # ------------------------------------------------------------ power loss recovery

    def recover_open_transactions(
        self, live: Mapping[int, float] | None = None, only: Collection[int] | None = None
    ) -> int:
        """At start-up: stop every transaction the last run left open (``only`` these local
        ids when given: the ones open before the connectors ran), with the planned reason
        (Reboot, HardReset, SoftReset) or PowerLoss, and the newest reading known: ``live``
        (connector id -> the meter's register read at this start, see `first_readings`) or
        the last one stored. Returns how many were stopped."""
        reason = self.ctx.store.take_pending_stop_reason() or StopReason.POWER_LOSS.value
        stopped = 0
        for tx in self.ctx.txqueue.open_transactions():
            if only is not None and tx.local_id not in only:
                continue  # started by this run (during the wait for the meters)
            if self._stop_stale(tx, reason, (live or {}).get(tx.connector_id)):
                stopped += 1
        if stopped:
            self._wake()
        return stopped

    def _stop_stale(self, tx: Any, reason: str, live: float | None = None) -> bool:
        # The newest energy known and its time: the live meter read at this start when it
        # reads at least the stored reading (it kept counting until the power went, and it
        # is a reading of now, after the start); else the reading stored with the last
        # MeterValues or meter record (at most one interval old); the start's only if none.
        reading = self.ctx.store.last_meter(tx.connector_id)
        meter_stop = tx.meter_start_wh
        at: datetime = tx.start_time
        if reading is not None and reading.at >= tx.start_time:
            meter_stop = max(tx.meter_start_wh, round(reading.energy_wh))
            at = reading.at
        if live is None:
            live = self._energy(tx.connector_id)
        if live is not None and round(live) > meter_stop:
            # Energy flowed after the last record: the live reading carries it, at its time.
            meter_stop, at = round(live), self.ctx.clock.now()
        elif live is not None and round(live) == meter_stop and at <= tx.start_time:
            # Nothing flowed, and the only reading stored is the start's (killed before the
            # first record): the live one is the first reading after the start. Otherwise the
            # stored one keeps its time: the session may have ended any time after it, and
            # a restart hours later must not stretch it.
            at = self.ctx.clock.now()
        msg = self.ctx.txqueue.stop_transaction(tx.local_id, meter_stop, at, reason)
        log.warning(
            "transaction (local %s) on connector %s left open: stopped (%s, %d Wh)",
            tx.local_id,
            tx.connector_id,
            reason,
            meter_stop,
        )
        self.ctx.emit(
            "transaction_stopped",
            connector_id=tx.connector_id,
            local_id=tx.local_id,
            reason=reason,
            meter_stop_wh=meter_stop,
        )
        return msg is not None

    # ------------------------------------------------------------ explicit reactions

    def start_transaction_result(self, local_id: int | None, id_tag_info: dict[str, Any]) -> None:
        self._on_start_result(local_id, id_tag_info)

    def tx_profile_applied(self, connector_id: int) -> None:
        self._profile_limited.add(connector_id)

    def _on_start_result(self, local_id: Any, id_tag_info: Any) -> None:
        if not isinstance(id_tag_info, dict):
            return
        info = id_tag_info  # the session hands over the wire's camelCase
        status = info.get("status")
        running = next((r for r in self._running.values() if r.tx.local_id == local_id), None)
        stored = self.ctx.store.transaction(local_id) if isinstance(local_id, int) else None
        id_tag = running.tx.id_tag if running is not None else None
        if id_tag is None:
            id_tag = stored.id_tag if stored is not None else None
        if stored is not None and stored.cs_transaction_id is not None:
            # The id the Central System (its UI, its bills) knows the session by; the
            # connector's own line said only evsed's local record id.
            log.info(
                "connector %s transaction %s (local %s): Central System answered %s",
                stored.connector_id,
                stored.cs_transaction_id,
                local_id,
                status,
            )
        if id_tag is not None and self.ctx.authorizer is not None:
            # The session has already put this answer in the cache.
            action = self.ctx.authorizer.on_start_transaction_conf(
                id_tag, info, update_cache=False
            ).value
        elif status == "Accepted" or status is None:
            action = "continue"
        else:
            action = "stop" if self._flag("StopTransactionOnInvalidId") else "suspend"
        charger = self.ctx.charger
        if running is None or charger is None:
            return
        cid = running.tx.connector_id
        parent = info.get("parentIdTag")
        if isinstance(parent, str) and parent:
            # The group the CS gives in StartTransaction.conf: a card of it may stop this one.
            charger.set_transaction_parent(cid, running.tx.local_id, parent)
        if action == "continue":
            return
        log.info(
            "transaction (local %s): idTag %s answered %s: %s",
            local_id,
            mask_tag(id_tag),
            status,
            action,
        )
        if action == "stop":
            charger.request_stop(cid, StopReason.DE_AUTHORIZED)
            return
        allowance = self._int("MaxEnergyOnInvalidId")
        energy = self._energy_so_far(cid, running.tx)
        if allowance > 0 and energy < allowance:
            running.suspend_after_wh = running.tx.meter_start_wh + allowance
        else:
            self._suspend(running)

    def _suspend(self, running: _Running) -> None:
        running.suspended = True
        running.suspend_after_wh = None
        cid = running.tx.connector_id
        charger = self.ctx.charger
        if charger is None:
            return
        charger.set_invalid_id_suspension(cid, True)
        self.ctx.emit(
            "suspended",
            connector_id=cid,
            local_id=running.tx.local_id,
            reason=charger.allowance(cid).reason.value,
        )

    # ------------------------------------------------------------ sampled meter values

    def _restart_samplers(self) -> None:
        for running in self._running.values():
            if running.sampler is not None:
                running.sampler.cancel()
            self._start_sampler(running)

    def _start_sampler(self, running: _Running) -> None:
        running.sampler = None
        interval = self._int("MeterValueSampleInterval")
        if interval > 0:
            name = f"sampled-values-{running.tx.local_id}"
            running.sampler = self._spawn(self._sample(running, interval), name)

    async def _sample(self, running: _Running, interval: int) -> None:
        schedule = SampledSchedule(interval)
        started = self.ctx.clock.monotonic()
        cid = running.tx.connector_id
        while True:
            await schedule.wait_next(self.ctx.clock, started)
            if self._transaction(cid) is None:
                return
            at = self.ctx.clock.now()
            value = self._reading(cid, "MeterValuesSampledData", "Sample.Periodic", at=at)
            if value is not None:
                self._queue_meter_values(cid, value, running.tx.local_id, at)
            running.data.add(self._reading(cid, "StopTxnSampledData", "Sample.Periodic", at=at))

    # ------------------------------------------------------------ clock-aligned meter values

    def _restart_aligned(self) -> None:
        if self._aligned_task is not None:
            self._aligned_task.cancel()
            self._aligned_task = None
        if self._started and self._int("ClockAlignedDataInterval") > 0:
            # Supervised: a reading that raises must not end clock-aligned values for good.
            aligned = keep_running(
                "clock-aligned meter values",
                self._aligned,
                clock=self.ctx.clock,
                failures=self.task_failures,
            )
            self._aligned_task = self._spawn(aligned, "aligned-values")

    async def _aligned(self) -> None:
        schedule = ClockAlignedSchedule(self._int("ClockAlignedDataInterval"), self.ctx.clock)
        while True:
            boundary = await schedule.wait_next()
            self.aligned_tick(boundary)

    def aligned_tick(self, boundary: datetime) -> None:
        """One clock-aligned reading of every connector, stamped with the boundary."""
        for cid in self._ids():
            value = self._reading(cid, "MeterValuesAlignedData", "Sample.Clock", at=boundary)
            running = self._running.get(cid)
            if running is not None:
                # Open until its stop is recorded: also while the stop waits for the contactor
                # and the meter's closing reading (the connector has let go of it already),
                # the energy still counts towards its meterStop. Sent as a plain MeterValues
                # then, it reached the CS without transactionId, before the StopTransaction.
                if value is not None:
                    self._queue_meter_values(cid, value, running.tx.local_id, boundary)
                running.data.add(
                    self._reading(cid, "StopTxnAlignedData", "Sample.Clock", at=boundary)
                )
            elif value is not None and self.ctx.session is not None and self.ctx.session.online:
                payload = call.MeterValues(connector_id=cid, meter_value=[value])
                self._spawn(self.ctx.session.call(payload), f"aligned-send-{cid}")

    async def send_meter_values_now(self, connector_id: int | None = None) -> int:
        """TriggerMessage(MeterValues): the newest MeterValuesSampledData reading of
        ``connector_id`` (every connector when None), context Trigger. During a transaction
        it is queued as one of its messages (its transactionId, in order); otherwise sent at
        once while online. Returns how many were queued or answered."""
        ids = sorted(self._ids()) if connector_id is None else [connector_id]
        done = 0
        for cid in ids:
            value = self._reading(cid, "MeterValuesSampledData", "Trigger")
            if value is None:
                continue
            running = self._running.get(cid)
            if running is not None:  # open until its stop is recorded (see aligned_tick)
                self.ctx.txqueue.meter_values(cid, [value], running.tx.local_id)
                self._wake()
                done += 1
            elif self.ctx.session is not None and self.ctx.session.online:
                payload = call.MeterValues(connector_id=cid, meter_value=[value])
                done += await self.ctx.session.call(payload) is not None
        return done

    # ------------------------------------------------------------ meter register for recovery

    def _queue_meter_values(
        self, cid: int, value: dict[str, Any], local_id: int | None, at: datetime
    ) -> None:
        # The MeterValues' commit stores the reading too: the recorder need not this tick.
        energy = self._energy(cid)
        self.ctx.txqueue.meter_values(cid, [value], local_id, energy_wh=energy, at=at)
        if energy is not None:
            self._stored_since_tick.add(cid)
        self._wake()

    async def _record_meters(self) -> None:
        while True:
            await self.ctx.clock.sleep(METER_RECORD_INTERVAL_S)
            at = self.ctx.clock.now()
            for cid in self._ids():
                self._record(cid, at)
                self._check_allowance(cid)

    def _record(self, cid: int, at: datetime) -> None:
        # At the recorder's own tick, not the store's 300 s throttle: with sampling off it
        # is the only writer of the reading a stop after a kill -9 is billed with (a 280 s
        # session of 1.7 kWh was billed 0 Wh). Skipped when a MeterValues stored it since.
        if cid in self._stored_since_tick:
            self._stored_since_tick.discard(cid)
            return
        energy = self._energy(cid)
        if self._transaction(cid) is not None and energy is not None:
            self.ctx.store.record_meter(cid, energy, at, force=True)

    def _check_allowance(self, cid: int) -> None:
        running = self._running.get(cid)
        if running is None or running.suspend_after_wh is None:
            return
        if (self._energy(cid) or 0.0) >= running.suspend_after_wh:
            self._suspend(running)

    # ------------------------------------------------------------ helpers

    def _reading(
        self, cid: int, key: str, context: str, *, at: datetime | None = None
    ) -> dict[str, Any] | None:
        charger = self.ctx.charger
        if charger is None or cid not in charger.connector_ids:
            return None
        measurands = self._csl(key)
        if not measurands:
            return None
        metering = charger.metering(cid)
        if metering.sample is None and metering.energy_wh is None:
            return None
        try:
            return _builder(tuple(measurands), metering.phases).build(
                metering.sample,
                context,
                timestamp=at or self.ctx.clock.now(),
                offered_a=metering.offered_a,
                temperature_c=metering.temperature_c,
            )
        except ValueError:
            log.exception("%s could not be built", key)
            return None

    def _ids(self) -> tuple[int, ...]:
        return () if self.ctx.charger is None else self.ctx.charger.connector_ids

    def _transaction(self, cid: int) -> Transaction | None:
        charger = self.ctx.charger
        if charger is None or cid not in charger.connector_ids:
            return None
        return charger.transaction(cid)

    def _energy(self, cid: int) -> float | None:
        charger = self.ctx.charger
        if charger is None or cid not in charger.connector_ids:
            return None
        return charger.metering(cid).energy_wh

    def _energy_so_far(self, cid: int, tx: Transaction) -> float:
        return (self._energy(cid) or tx.meter_start_wh) - tx.meter_start_wh

    def _set_limit(self, connector_id: int, value: SmartChargingLimit | None) -> None:
        if self.ctx.charger is not None:
            self.ctx.charger.set_smart_charging_limit(connector_id, value)

    def _clear_tx_profile(self, connector_id: int) -> None:
        if connector_id in self._profile_limited:
            self._profile_limited.discard(connector_id)
            if self.ctx.smart_charging is None:
                self._set_limit(connector_id, None)
        if self.ctx.smart_charging is not None and connector_id in self._ids():
            # TxProfiles end with their transaction; the runner applies what is left.
            # (Connector 0's status, e.g. a ReaderFailure, names no connector of ours.)
            self.ctx.smart_charging.end_transaction(connector_id)

    def _wake(self) -> None:
        if self.ctx.session is not None:
            self.ctx.session.wake_delivery()

    def _int(self, key: str) -> int:
        try:
            return self.ctx.keys.int(key)
        except (KeyError, ValueError):
            return 0

    def _flag(self, key: str) -> bool:
        try:
            return self.ctx.keys.bool(key)
        except (KeyError, ValueError):
            return False

    def _csl(self, key: str) -> list[str]:
        try:
            return self.ctx.keys.csl(key)
        except KeyError:
            return []


@functools.lru_cache(maxsize=16)
def _builder(measurands: tuple[str, ...], phases: int) -> MeterValueBuilder:
    """One builder per (measurands, phases): the list was validated when it was set."""
    return MeterValueBuilder(list(measurands), phases)
