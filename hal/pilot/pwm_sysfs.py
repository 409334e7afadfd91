"""Pilot PWM through the kernel PWM sysfs ABI (hardware-timed, 1 ns resolution).

Pi: `dtoverlay=pwm-2chan` (GPIO18/19 = channels 0/1 on Pi <= 4); the chip number varies
by kernel. Values are ASCII nanoseconds; duty_cycle > period is rejected with EINVAL, so
the write order depends on the direction of the change.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class SysfsPwmPilot:
    """PilotOutput on /sys/class/pwm/pwmchip<chip>/pwm<channel>.

    Construction exports the channel if needed and polls (bounded by export_timeout_s)
    until udev has made the files writable; it blocks, so build it at start-up, before
    the event loop runs. Starts at duty 1.0 (steady +12 V, no current offered).

    `shutdown()` sets steady +12 V (duty_cycle = period) and leaves the channel exported
    and enabled: the kernel keeps driving that level after the process exits, so the EV
    sees "no current offered" rather than a floating pin. Write errors raise OSError:
    a pilot that cannot be driven must stop charging.
    """

    def __init__(
        self,
        chip: int,
        channel: int,
        root: Path = Path("/sys/class/pwm"),
        frequency: float = 1000,
        *,
        export_timeout_s: float = 2.0,
        poll_s: float = 0.01,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if frequency <= 0:
            raise ValueError("frequency must be positive")
        self._chip_dir = Path(root) / f"pwmchip{chip}"
        self._dir = self._chip_dir / f"pwm{channel}"
        self.period_ns = round(1e9 / frequency)
        self.frequency = frequency
        self.resolution: float = 1.0 / self.period_ns
        self._duty = 1.0
        self._closed = False
        self._export(channel, export_timeout_s, poll_s, monotonic, sleep)
        self._set_period_and_duty(self.period_ns, self.period_ns)
        self._write("enable", 1)

    # -- sysfs plumbing -------------------------------------------------------------------

    def _export(
        self,
        channel: int,
        timeout_s: float,
        poll_s: float,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        if not self._dir.exists():
            (self._chip_dir / "export").write_text(f"{channel}\n", encoding="ascii")
        deadline = monotonic() + timeout_s
        files = [self._dir / name for name in ("period", "duty_cycle", "enable")]
        while not all(f.exists() and os.access(f, os.W_OK) for f in files):
            if monotonic() >= deadline:
                raise TimeoutError(f"{self._dir}: PWM files not writable after {timeout_s} s")
            sleep(poll_s)

    def _write(self, name: str, value: int) -> None:
        with open(self._dir / name, "w", encoding="ascii") as f:
            f.write(f"{value}\n")

    def _read_int(self, name: str) -> int:
        try:
            return int((self._dir / name).read_text(encoding="ascii").strip() or 0)
        except ValueError:
            return 0

    def _set_period_and_duty(self, period_ns: int, duty_ns: int) -> None:
        # duty_cycle must never exceed the period in force at the time of the write.
        if period_ns >= self._read_int("duty_cycle"):
            self._write("period", period_ns)
            self._write("duty_cycle", duty_ns)
        else:
            self._write("duty_cycle", duty_ns)
            self._write("period", period_ns)

    # -- PilotOutput ----------------------------------------------------------------------

    @property
    def duty(self) -> float:
        return self._duty

    def set_duty(self, duty: float) -> None:
        if self._closed:
            raise RuntimeError("pilot PWM is shut down")
        nan = math.isnan(duty)
        duty = 1.0 if nan else min(max(duty, 0.0), 1.0)
        # Floor: never offer more than asked. The product is not exact in floating point
        # (0.253333 * 1e6 = 253332.99999999997): a duty that is a whole number of ns must
        # give that number, or it reads back 1 ns short and the controller writes it again
        # at every step. 1e-6 ns is far below any real step and far above the float error.
        duty_ns = math.floor(duty * self.period_ns + 1e-6)
        self._write("duty_cycle", duty_ns)
        self._duty = duty_ns / self.period_ns
        if nan:  # logged after the safe level is written, never before
            log.error("pilot duty NaN requested; driving steady +12 V instead")

    def shutdown(self) -> None:
        if self._closed:
            return
        try:
            self._write("duty_cycle", self.period_ns)
            self._duty = 1.0
        finally:
            self._closed = True


__all__ = ["SysfsPwmPilot"]
