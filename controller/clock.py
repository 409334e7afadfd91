"""Injected time for the controller: the clock is defined in the lowest layer
(`evsed.hal.clock`, since drivers wait too) and re-exported here for the layers above."""

from __future__ import annotations

from evsed.hal.clock import Clock, SystemClock

__all__ = ["Clock", "SystemClock"]
