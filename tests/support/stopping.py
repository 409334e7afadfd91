"""Waiting for a transaction's stop on a simulated clock.

A stop is recorded (StopTransaction queued) once its contactor has opened and the meter
has been read after that: the EV's reaction to the withdrawn PWM runs on simulated time,
the meter answers over a real socket. These helpers move both on while they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from evsed.hwmocks.central_system import Frame
from tests.support.bench_rig import Rig
from tests.support.ocpp_rig import CP_ID, OcppRig


async def advancing(
    rig: Rig, pred: Callable[[], bool], *, step_s: float = 0.05, within_s: float = 20.0
) -> float:
    """Advance simulated time in small steps, letting real I/O through, until `pred()`;
    the simulated seconds it took (AssertionError beyond `within_s` of them)."""
    start = rig.clock.monotonic()
    while not pred():
        if rig.clock.monotonic() - start > within_s:
            raise AssertionError(f"not within {within_s} s of simulated time")
        await rig.clock.advance(step_s)
        await asyncio.sleep(0.002)  # the meter's socket answers in real time
    return rig.clock.monotonic() - start


async def stop_note(rig: Rig, count: int = 1) -> dict[str, object]:
    """The connector's `count`-th transaction_stopped note, once it is recorded."""
    await advancing(rig, lambda: len(rig.kinds("transaction_stopped")) >= count)
    return rig.kinds("transaction_stopped")[count - 1]


async def call_advancing(rig: OcppRig, action: str, since: int = 0) -> Frame:
    """The first CALL of `action` since `since`, simulated time moving on meanwhile."""
    await advancing(rig, lambda: bool(rig.calls(action, since)))
    return await rig.central.wait_for_call(action, CP_ID, since=since)
