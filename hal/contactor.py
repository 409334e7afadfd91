"""Contactor driven by a relay output, optionally checked by an auxiliary contact."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from evsed.hal.types import ContactorFault


class RelayContactor:
    """Contactor on a relay GPIO with an optional feedback (auxiliary contact) input.

    The relay starts de-energised. A mismatch between command and feedback becomes a
    fault only after it has lasted `settle_s` (the contactor's own close/open time),
    counted from the later of the last command and the last feedback edge:
    feedback closed while commanded open -> WELDED; open while commanded closed ->
    FAILED_TO_CLOSE. The feedback input is configured floating: the auxiliary contact
    circuit (usually an optocoupler) must provide its own pull resistor.
    """

    def __init__(
        self,
        relay_pin: int | str,
        feedback_pin: int | str | None = None,
        active_high: bool = True,
        feedback_active_high: bool = True,
        settle_s: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
        pin_factory: Any = None,
    ) -> None:
        self._mono = monotonic
        self._settle_s = settle_s
        self._relay = DigitalOutputDevice(
            relay_pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )
        self._fb: DigitalInputDevice | None = None
        self._commanded = False
        self._changed_at = monotonic()
        if feedback_pin is not None:
            try:
                self._fb = DigitalInputDevice(
                    feedback_pin,
                    pull_up=None,
                    active_state=feedback_active_high,
                    pin_factory=pin_factory,
                )
            except Exception:
                self._relay.close()
                raise
            # Runs in gpiozero's callback thread on a Pi: one float store, no locking needed.
            self._fb.when_activated = self._feedback_edge
            self._fb.when_deactivated = self._feedback_edge

    def _feedback_edge(self) -> None:
        self._changed_at = max(self._changed_at, self._mono())

    @property
    def energized(self) -> bool:
        return self._commanded

    def energize(self) -> None:
        self._command(True)

    def deenergize(self) -> None:
        self._command(False)

    def _command(self, on: bool) -> None:
        if self._relay.closed:
            return
        if on:
            self._relay.on()
        else:
            self._relay.off()
        if on != self._commanded:
            self._commanded = on
            self._changed_at = self._mono()

    def feedback(self) -> bool | None:
        if self._fb is None or self._fb.closed:
            return None
        return bool(self._fb.is_active)

    def fault(self) -> ContactorFault | None:
        fb = self.feedback()
        if fb is None or fb == self._commanded:
            return None
        if self._mono() - self._changed_at <= self._settle_s:
            return None
        return ContactorFault.WELDED if fb else ContactorFault.FAILED_TO_CLOSE

    def shutdown(self) -> None:
        if not self._relay.closed:
            try:
                self._relay.off()  # de-energise before releasing the GPIO
                self._commanded = False
            finally:
                self._relay.close()
        if self._fb is not None:
            self._fb.close()


__all__ = ["RelayContactor"]
