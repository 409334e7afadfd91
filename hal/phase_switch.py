"""The 1/3-phase switch: a relay that takes L2 and L3 off a three-phase connector (as
SmartEVSE-3's second contactor C2). Energised = one phase.

It is a plain output: the controller switches it only while the main contactor is open
(the safe sequence lives in the charger), so this driver never breaks a load itself.
"""

from __future__ import annotations

from typing import Any

from gpiozero import DigitalOutputDevice


class RelayPhaseSwitch:
    """Starts de-energised: three phases, the wiring's normal state."""

    def __init__(self, relay_pin: int | str, active_high: bool = True, pin_factory: Any = None):
        self._relay = DigitalOutputDevice(
            relay_pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
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
