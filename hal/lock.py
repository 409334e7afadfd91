"""Socket cable lock on GPIO.

Two models, chosen by whether `unlock_pin` is given:
- Motor lock through an H-bridge (`unlock_pin` given): lock() pulses `lock_pin` for
  `pulse_s`, unlock() pulses `unlock_pin`. The lock is bistable; outputs rest low. The
  two outputs are never high together (that would short the bridge).
- Hold solenoid (`unlock_pin` None): `lock_pin` stays energised while locked.
`feedback_pin` (optional) is the lock's position switch: active = locked.

Pulses end through `clock.sleep`, on the running event loop (lock()/unlock() must be
called from it), so tests drive them with tests.support.clock.FakeClock.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._pulse: asyncio.Task[None] | None = None

    def _add(self, dev: Any) -> Any:
        self._devices.append(dev)
        return dev

    @property
    def busy(self) -> bool:
        """A pulse is in progress."""
        return self._pulse is not None and not self._pulse.done()

    def _stop_pulse(self) -> None:
        if self._pulse is not None and not self._pulse.done():
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
        loop = asyncio.get_running_loop()  # RuntimeError outside the loop: by design
        self._stop_pulse()  # both bridge legs low before the other one goes high
        out = self._lock_out if locked else self._unlock_out
        out.on()
        self._pulse = loop.create_task(self._pulse_end(out))

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
        if self._pulse is not None and not self._pulse.done():
            self._pulse.cancel()
        self._pulse = None
        for dev in self._devices:
            if isinstance(dev, DigitalOutputDevice) and not dev.closed:
                dev.off()
        self._close_all()


__all__ = ["GpioLock"]
