"""Helpers for the end-to-end OCPP tests: the whole stack against the embedded CS.

The rig itself is `tests.support.ocpp_rig.ocpp_rig` (bench, drivers, charger,
OcppApp and OcppSession on a FakeClock, the websocket in real time). What is added here:
taking the link down and up again, letting simulated charging time pass while the meter
answers over its real socket, and reading the recording of the CS by action.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from evsed.controller.ocpp16.session import OcppSession
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OTHER, OcppRig, ocpp_rig

__all__ = [
    "CARD",
    "CP_ID",
    "OTHER",
    "OcppRig",
    "calls",
    "charge_for",
    "cut_link",
    "ocpp_rig",
    "restore_link",
    "session_of",
]


def session_of(rig: OcppRig) -> OcppSession:
    session = rig.ocpp.session
    assert isinstance(session, OcppSession)
    return session


def calls(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    """The CP->CS CALLs of `action` recorded from `since` on, in wire order."""
    return [
        f
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]


def results(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    """The CS's CALLRESULTs to the CP's CALLs of `action`."""
    return [
        f
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_result and f.direction is Direction.CS_TO_CP and f.action == action
    ]


async def cut_link(rig: OcppRig) -> None:
    """The CS goes away (no close handshake) and refuses to come back until restored."""
    rig.central.set_offline(True)
    await session_of(rig).wait_offline(5)


async def restore_link(rig: OcppRig, *, step_s: float = 2.0, timeout: float = 15.0) -> None:
    """The CS accepts handshakes again; simulated time passes (the back-off runs on the
    clock) in steps, each followed by a short real-time wait for the reconnection."""
    rig.central.set_offline(False)
    online = asyncio.ensure_future(session_of(rig).wait_online())
    try:
        async with asyncio.timeout(timeout):
            while not online.done():
                await rig.clock.advance(step_s)
                await asyncio.wait([online], timeout=0.05)
    finally:
        online.cancel()


async def charge_for(rig: OcppRig, seconds: int) -> None:
    """Let `seconds` of charging pass, one meter poll (real socket) per simulated second."""
    for _ in range(seconds):
        await rig.meter_sample()


async def event(
    rig: OcppRig, name: str, pred: Callable[[dict[str, Any]], bool] = lambda _: True
) -> dict[str, Any]:
    """The next OCPP event `name` (ctx.emit) matching `pred`, awaited in real time."""
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def observer(kind: str, fields: dict[str, Any]) -> None:
        if kind == name and not fut.done() and pred(fields):
            fut.set_result(fields)

    rig.ocpp.ctx.observers.append(observer)
    try:
        return await asyncio.wait_for(fut, 5)
    finally:
        rig.ocpp.ctx.observers.remove(observer)


async def delivered(rig: OcppRig, action: str) -> dict[str, Any]:
    """Wait until the session has had the CS confirm a queued `action` (acked on disk)."""
    return await event(
        rig, "tx_message", lambda f: f["action"] == action and f["outcome"] == "confirmed"
    )


def payload_of(frame: Frame) -> dict[str, Any]:
    assert isinstance(frame.payload, dict), frame.raw
    return frame.payload
