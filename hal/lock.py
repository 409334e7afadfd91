"""Socket cable lock on GPIO.

Two models, chosen by whether `unlock_pin` is given:
- Motor lock through an H-bridge (`unlock_pin` given): lock() pulses `lock_pin` for
  `pulse_s`, unlock() pulses `unlock_pin`. The lock is bistable; outputs rest low. The
  two outputs are never high together (that would short the bridge).
- Hold solenoid (`unlock_pin` None): `lock_pin` stays energised while locked.
`feedback_pin` (optional) is the lock's position switch: active = locked.

Pulses end through `clock.sleep` when lock()/unlock() are called on the running event
loop (so tests drive them with tests.support.clock.FakeClock), and by a real-time timer
when called from another thread (the safety core's, which owns this output).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from evsed.hal.clock import Sleeper, SystemClock


class GpioLock:
    """LockActuator. shutdown(): outputs low; a motor lock stays where it is, a hold
    solenoid releases (that is what de-energising a hold output means)."""

    def __init__(
        self,
        lock_pin: int | str,
        unlock_pin: int | str | None = None,
        feedback_pin: int | str | None = None,
        *,
        pulse_s: float = 0.5,
        active_high: bool = True,
        feedback_active_high: bool = True,
        clock: Sleeper | None = None,
        pin_factory: Any = None,
    ) -> None:
        self._clock: Sleeper = clock or SystemClock()
        self._pulse_s = pulse_s
        self._devices: list[DigitalOutputDevice | DigitalInputDevice] = []
        try:
            self._lock_out = self._add(
                DigitalOutputDevice(
                    lock_pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                )
            )
            self._unlock_out = (
                None
                if unlock_pin is None
                else self._add(
                    DigitalOutputDevice(
                        unlock_pin,
                        active_high=active_high,
                        initial_value=False,
                        pin_factory=pin_factory,
                    )
                )
            )
            self._fb = (
                None
                if feedback_pin is None
                else self._add(
                    DigitalInputDevice(
                        feedback_pin,
                        pull_up=None,
                        active_state=feedback_active_high,
                        pin_factory=pin_factory,
                    )
                )
            )
        except Exception:
            self._close_all()
            raise
        self._pulse: asyncio.Task[None] | threading.Timer | None = None

    def _add(self, dev: Any) -> Any:
        self._devices.append(dev)
        return dev

    @property
    def busy(self) -> bool:
        """A pulse is in progress."""
        return self._pulse is not None and _running(self._pulse)

    def _stop_pulse(self) -> None:
        if self._pulse is not None and _running(self._pulse):
            self._pulse.cancel()
        self._pulse = None
        self._lock_out.off()
        if self._unlock_out is not None:
            self._unlock_out.off()

    async def _pulse_end(self, out: DigitalOutputDevice) -> None:
        try:
            await self._clock.sleep(self._pulse_s)
        finally:
            if not out.closed:
                out.off()

    def _drive(self, locked: bool) -> None:
        if self._unlock_out is None:
            if locked:
                self._lock_out.on()
            else:
                self._lock_out.off()
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # the safety core's thread
        self._stop_pulse()  # both bridge legs low before the other one goes high
        out = self._lock_out if locked else self._unlock_out
        out.on()
        if loop is not None:
            self._pulse = loop.create_task(self._pulse_end(out))
        else:
            timer = threading.Timer(self._pulse_s, _off, (out,))
            timer.daemon = True
            timer.start()
            self._pulse = timer

    def lock(self) -> None:
        self._drive(True)

    def unlock(self) -> None:
        self._drive(False)

    def locked(self) -> bool | None:
        if self._fb is None or self._fb.closed:
            return None
        return bool(self._fb.is_active)

    def _close_all(self) -> None:
        for dev in self._devices:
            with contextlib.suppress(Exception):
                dev.close()

    def shutdown(self) -> None:
        if self._pulse is not None and _running(self._pulse):
            self._pulse.cancel()
        self._pulse = None
        for dev in self._devices:
            if isinstance(dev, DigitalOutputDevice) and not dev.closed:
                dev.off()
        self._close_all()


__all__ = ["GpioLock"]


def _running(pulse: asyncio.Task[None] | threading.Timer) -> bool:
    return pulse.is_alive() if isinstance(pulse, threading.Timer) else not pulse.done()


def _off(out: DigitalOutputDevice) -> None:
    if not out.closed:
        out.off()
