"""The 1/3-phase switch: a relay that takes L2 and L3 off a three-phase connector (as
SmartEVSE-3's second contactor C2). Energised = one phase.

It is a plain output: the controller switches it only while the main contactor is open
(the safe sequence lives in the charger), so this driver never breaks a load itself.
"""

from __future__ import annotations

from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice


class RelayPhaseSwitch:
    """Starts de-energised (three phases, the wiring's normal state), or with
    `keep_present=True` at whatever level the line has now.

    Keep it when the main contactor may be carrying current (its feedback reads closed,
    e.g. welded, after a crash while on one phase): moving this relay then would switch
    L2/L3 under load, which is what the charger's sequence exists to prevent."""

    def __init__(
        self,
        relay_pin: int | str,
        active_high: bool = True,
        pin_factory: Any = None,
        *,
        keep_present: bool = False,
    ):
        energised = False
        if keep_present:
            energised = present_level(relay_pin, pin_factory) == active_high
        self._relay = DigitalOutputDevice(
            relay_pin, active_high=active_high, initial_value=energised, pin_factory=pin_factory
        )

    @property
    def phases(self) -> int:
        return 1 if self._relay.value else 3

    def set_phases(self, phases: int) -> None:
        if phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, not {phases!r}")
        if phases == 1:
            self._relay.on()
        else:
            self._relay.off()

    def shutdown(self) -> None:
        self._relay.off()
        self._relay.close()


def present_level(pin: int | str, pin_factory: Any = None) -> bool:
    """The line's level now, without driving it. (gpiozero's `initial_value=None` does not
    keep it on lgpio, whose output claim drives 0.) Claimed as an input without a pull for
    the read: the relay driver cannot drop out in the microseconds until it is an output."""
    probe = DigitalInputDevice(pin, pull_up=None, active_state=True, pin_factory=pin_factory)
    try:
        return bool(probe.value)
    finally:
        probe.close()
