"""The connector's two outputs as the plainest doubles: a pilot that keeps its duty and a
relay without an auxiliary contact, for tests that build a `Connector` by hand."""

from __future__ import annotations


class Pilot:
    """A PWM output at +12 V (no PWM) until set."""

    def __init__(self) -> None:
        self.duty = 1.0

    def set_duty(self, duty: float) -> None:
        self.duty = duty

    def shutdown(self) -> None:
        pass


class Relay:
    """A contactor without feedback (no auxiliary contact) and without faults."""

    energized = False

    def energize(self) -> None:
        self.energized = True

    def deenergize(self) -> None:
        self.energized = False

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass
