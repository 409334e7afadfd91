"""One small interface per part. Drivers implement these; the controller uses only these.

Conventions:
- Synchronous methods are fast (a GPIO write, one short ADC burst); they may be called
  from the event loop.
- Drivers that must block (serial reads, gpiozero callbacks) own a thread and deliver
  events with `loop.call_soon_threadsafe(sink, event)`, capturing the running loop in
  `start()`. The sink therefore always runs on the event-loop thread.
- `shutdown()` releases the hardware in its safe state (relay de-energised, pilot at
  steady +12 V or off, lock released only where configured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from evsed.hal.types import (
    ContactorFault,
    DeviceFault,
    MeterSample,
    PilotReading,
    ProximityReading,
    TagPresented,
)

EventSink = Callable[[object], None]


@runtime_checkable
class PilotOutput(Protocol):
    """1 kHz PWM generator behind the ±12 V pilot driver.

    duty 1.0 = steady +12 V (no PWM, states A1/B1/C1); 0.0 = steady -12 V (state F).
    """

    @property
    def duty(self) -> float: ...

    def set_duty(self, duty: float) -> None: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class PilotSensor(Protocol):
    def read(self, samples: int) -> PilotReading:
        """Take `samples` ADC readings of CP and classify them (blocks ~samples x one read)."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class ProximitySensor(Protocol):
    def read(self) -> ProximityReading: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class Contactor(Protocol):
    @property
    def energized(self) -> bool: ...

    def energize(self) -> None: ...

    def deenergize(self) -> None: ...

    def feedback(self) -> bool | None:
        """Auxiliary contact: True closed, False open, None when none is fitted."""
        ...

    def fault(self) -> ContactorFault | None:
        """Weld / failed-to-close, judged after the configured settle time."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class PhaseSwitch(Protocol):
    """1/3-phase relay on a three-phase connector; only moved with the contactor open."""

    @property
    def phases(self) -> int: ...

    def set_phases(self, phases: int) -> None: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class ResidualCurrentMonitor(Protocol):
    def start(self, sink: EventSink) -> None:
        """Deliver DeviceFault("rcd", active=True) on a trip (on the loop thread)."""
        ...

    @property
    def tripped(self) -> bool: ...

    async def self_test(self) -> bool:
        """Drive the test output and prove the trip input follows; True when it does."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class LockActuator(Protocol):
    def lock(self) -> None: ...

    def unlock(self) -> None: ...

    def locked(self) -> bool | None:
        """Feedback: True locked, False unlocked, None when no feedback is fitted."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class TemperatureSensor(Protocol):
    def read_celsius(self) -> float: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class TagReader(Protocol):
    name: str

    def start(self, sink: EventSink) -> None:
        """Deliver TagPresented and DeviceFault("reader", ...) events on the loop thread."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class EnergyMeter(Protocol):
    async def connect(self) -> None: ...

    async def poll(self) -> MeterSample:
        """Read one sample. Raises evsed.hal.meters.MeterError when silent or answering garbage."""
        ...

    async def close(self) -> None: ...


__all__ = [
    "Contactor",
    "ContactorFault",
    "DeviceFault",
    "EnergyMeter",
    "EventSink",
    "LockActuator",
    "MeterSample",
    "PilotOutput",
    "PilotReading",
    "PilotSensor",
    "ProximityReading",
    "ProximitySensor",
    "ResidualCurrentMonitor",
    "TagPresented",
    "TagReader",
    "TemperatureSensor",
]
