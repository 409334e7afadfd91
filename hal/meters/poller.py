"""Poll an energy meter on an injected clock; report samples and turn failures into faults.

Events go to one sink (the evsed.hal.interfaces.EventSink convention): every good `MeterSample`,
`DeviceFault("meter", active=True, ...)` once after `fault_after` consecutive failures, and
`DeviceFault("meter", active=False)` on the first good poll after that. While faulted, polls
back off exponentially (capped at `max_backoff_s`). After any failure the client is closed and
reconnected on the next attempt, which also flushes a stream left dirty by a timed-out request.
"""

from __future__ import annotations

import asyncio
import logging

from evsed.hal.clock import Clock
from evsed.hal.interfaces import EnergyMeter, EventSink
from evsed.hal.meters import MeterError
from evsed.hal.types import DeviceFault, MeterSample

log = logging.getLogger(__name__)


class MeterPoller:
    def __init__(
        self,
        meter: EnergyMeter,
        sink: EventSink,
        clock: Clock,
        *,
        interval_s: float = 1.0,
        fault_after: int = 3,
        max_backoff_s: float = 30.0,
        device: str = "meter",
    ) -> None:
        if interval_s <= 0 or fault_after < 1:
            raise ValueError("interval_s must be > 0 and fault_after >= 1")
        self.meter = meter
        self.sink = sink
        self.clock = clock
        self.interval_s = interval_s
        self.fault_after = fault_after
        self.max_backoff_s = max(max_backoff_s, interval_s)
        self.device = device
        self.last_sample: MeterSample | None = None
        self.last_sample_at: float | None = None  # clock.monotonic() of last_sample
        #: clock.monotonic() when the poll that gave `last_sample` began: the sample shows
        #: the meter as it was at that moment or later, never earlier.
        self.last_poll_started_at: float | None = None
        self.failures = 0  # consecutive
        self.faulted = False
        self.last_error = ""
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        self._soon = asyncio.Event()  # poll_soon(): cut the wait before the next poll short

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="meter-poller")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The polling task while it runs (a supervisor awaits it to see it end)."""
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not `await task` under suppress(CancelledError): a cancel aimed at
            # the caller of stop() must go through, not be swallowed with the poller's.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("meter poller ended with %r", task.exception())
        await self._close()

    def poll_soon(self) -> None:
        """Poll now rather than after the interval (a transaction's stop waits for a
        reading taken after its contactor opened); a poll under way is not disturbed."""
        self._soon.set()

    async def _pause(self, seconds: float) -> None:
        if self._soon.is_set():
            self._soon.clear()
            return
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        woken = asyncio.ensure_future(self._soon.wait())
        try:
            await asyncio.wait({sleeping, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()
        self._soon.clear()

    async def poll_once(self) -> MeterSample | None:
        """One attempt: connect if needed, poll, emit events. Returns the sample or None."""
        started = self.clock.monotonic()
        try:
            if not self._connected:
                await self.meter.connect()
                self._connected = True
            sample = await self.meter.poll()
        except MeterError as exc:
            self._failed(str(exc) or type(exc).__name__)
            await self._close()
            return None
        except Exception as exc:  # a driver bug must not kill the poller: it is a fault too
            log.exception("meter driver raised unexpectedly")
            self._failed(f"driver error: {exc!r}")
            await self._close()
            return None
        self.failures = 0
        self.last_sample = sample
        self.last_sample_at = self.clock.monotonic()
        self.last_poll_started_at = started
        if self.faulted:
            self.faulted = False
            self._emit(DeviceFault(self.device, active=False, detail="meter answers again"))
        self._emit(sample)
        return sample

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt, given the current failure count."""
        if not self.faulted:
            return self.interval_s
        over = self.failures - self.fault_after
        return min(self.max_backoff_s, self.interval_s * 2.0 ** min(over + 1, 32))

    async def _run(self) -> None:
        task = asyncio.current_task()
        while True:
            started = self.clock.monotonic()
            await self.poll_once()
            if task is not None and task.cancelling():
                # pymodbus turns a CancelledError that lands inside a request into an I/O
                # error; without this the poller would take stop() for a failed poll and
                # go round again, and stop() would wait for ever.
                raise asyncio.CancelledError
            elapsed = self.clock.monotonic() - started
            await self._pause(max(0.0, self.next_delay() - elapsed))

    def _failed(self, detail: str) -> None:
        self.failures += 1
        self.last_error = detail
        log.debug("meter poll failed (%d in a row): %s", self.failures, detail)
        if not self.faulted and self.failures >= self.fault_after:
            self.faulted = True
            self._emit(DeviceFault(self.device, active=True, detail=detail))

    def _emit(self, event: object) -> None:
        try:
            self.sink(event)
        except Exception:  # a broken consumer must not stop the polling
            log.exception("meter event sink raised")

    async def _close(self) -> None:
        self._connected = False
        try:
            await self.meter.close()
        except Exception as exc:
            log.debug("meter close failed: %r", exc)
