"""Residual-current monitor (e.g. a 6 mA DC RCM module) on GPIO: trip input, test output."""

from __future__ import annotations

import asyncio
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from evsed.hal.interfaces import EventSink
from evsed.hal.types import DeviceFault


class GpioRcd:
    """ResidualCurrentMonitor with a trip input and an optional test output.

    Events: DeviceFault("rcd", active=True) on a trip, DeviceFault("rcd", active=False)
    when the input clears again; delivered on the loop thread (gpiozero callbacks run in
    lgpio's thread on a Pi, so they hop over with call_soon_threadsafe).

    Self-test: drive the test output, await the trip edge (within timeout_s), release,
    await the clear edge. Edges seen during the test are not reported to the sink. A trip
    input that is already active, or one that stays active after the test, fails the test
    (the latter is then reported as a real trip). Without a test pin nothing can be
    proved: self_test() returns `assume_ok_without_test_pin` (default False) provided the
    input is not tripped, so wiring without a test path must be accepted explicitly.
    """

    def __init__(
        self,
        fault_pin: int | str,
        test_pin: int | str | None = None,
        *,
        fault_active_high: bool = True,
        test_active_high: bool = True,
        assume_ok_without_test_pin: bool = False,
        pin_factory: Any = None,
    ) -> None:
        self._assume_ok = assume_ok_without_test_pin
        self._fault = DigitalInputDevice(
            fault_pin, pull_up=None, active_state=fault_active_high, pin_factory=pin_factory
        )
        self._test: DigitalOutputDevice | None = None
        if test_pin is not None:
            try:
                self._test = DigitalOutputDevice(
                    test_pin,
                    active_high=test_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
            except Exception:
                self._fault.close()
                raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: EventSink | None = None
        self._waiter: asyncio.Future[bool] | None = None  # edge awaited by self_test
        self._in_test = False
        self._fault.when_activated = self._on_activated
        self._fault.when_deactivated = self._on_deactivated

    # -- gpiozero thread ------------------------------------------------------------------

    def _on_activated(self) -> None:
        self._hop(True)

    def _on_deactivated(self) -> None:
        self._hop(False)

    def _hop(self, active: bool) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # Whether the edge belongs to a self-test is decided when it happens, not when
            # the loop gets round to it (the test may have finished by then).
            loop.call_soon_threadsafe(self._on_edge, active, self._in_test)

    # -- loop thread ----------------------------------------------------------------------

    def _on_edge(self, active: bool, during_test: bool) -> None:
        if during_test or self._in_test:
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(active)
            return
        if self._sink is not None:
            self._sink(DeviceFault("rcd", active=active, detail="trip" if active else "cleared"))

    def start(self, sink: EventSink) -> None:
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        if self.tripped:  # tripped before we listened: report it, nobody saw the edge
            sink(DeviceFault("rcd", active=True, detail="tripped at start"))

    @property
    def tripped(self) -> bool:
        return not self._fault.closed and bool(self._fault.is_active)

    async def _await_level(self, drive: bool, want: bool, timeout_s: float) -> bool:
        """Drive the test output and wait until the trip input reads `want`."""
        assert self._test is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        already = self.tripped == want
        if drive:
            self._test.on()
        else:
            self._test.off()
        if already:  # no edge will come
            return True
        try:
            while True:
                async with asyncio.timeout(timeout_s):
                    got = await asyncio.shield(self._waiter)
                if got == want:
                    return True
                self._waiter = loop.create_future()
        except TimeoutError:
            return self.tripped == want

    async def self_test(self, timeout_s: float = 0.5) -> bool:
        if self._test is None:
            return self._assume_ok and not self.tripped
        if self.tripped or self._in_test:
            return False
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._in_test = True
        cleared = False
        try:
            tripped = await self._await_level(True, True, timeout_s)
            cleared = await self._await_level(False, False, timeout_s)
        finally:
            if not self._test.closed:
                self._test.off()
            self._in_test = False
            self._waiter = None
        if not cleared and self._sink is not None:
            self._sink(DeviceFault("rcd", active=True, detail="stuck after self-test"))
        return tripped and cleared

    def shutdown(self) -> None:
        self._loop = None
        self._sink = None
        if self._test is not None:
            if not self._test.closed:
                self._test.off()
            self._test.close()
        self._fault.close()


__all__ = ["GpioRcd"]
