"""UnlockConnector tells what the lock did, never does it later, and never holds up the
session (second safety review of issue 14).

The bench's motor lock here moves as a real one does: its position switch changes when
the pulse ends (0.5 s), not when it starts. Everything runs against the embedded Central
System on a FakeClock; what crosses the websocket is waited for in real time, bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig
from tests.support.stopping import call_advancing

LOCKED = {"lock": {"enabled": True}, "meter": {"port": 0, "poll_interval_s": 1.0}}
KEYS = {"AuthorizeRemoteTxRequests": "false"}
STEP_S = 0.005  # simulated time between two looks at the bench's pins


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def send_unlock(rig: OcppRig, unique_id: str) -> None:
    """UnlockConnector as a raw frame: the CS may then send other CALLs meanwhile."""
    frame = [2, unique_id, "UnlockConnector", {"connectorId": 1}]
    await rig.central.send_raw(CP_ID, json.dumps(frame))


def answer_to(rig: OcppRig, unique_id: str) -> Frame | None:
    for f in rig.central.frames_of(CP_ID):
        if f.direction is Direction.CP_TO_CS and f.unique_id == unique_id and not f.is_call:
            return f
    return None


async def unlock_sampled(rig: OcppRig, unique_id: str = "unlock-1") -> tuple[str, list[Any]]:
    """Send UnlockConnector, step simulated time until it is answered (bounded), looking at
    the lock, the contactor and the answer every STEP_S: (status, [(t, locked, closed,
    answered)])."""
    pins = rig.sim.pins
    await send_unlock(rig, unique_id)
    start = rig.clock.monotonic()
    samples: list[tuple[float, bool, bool, bool]] = []
    while (answer := answer_to(rig, unique_id)) is None:
        samples.append((rig.clock.monotonic() - start, pins.locked, pins.contactor_closed, False))
        assert rig.clock.monotonic() - start < 15, "UnlockConnector never answered"
        await rig.clock.advance(STEP_S)
        await asyncio.sleep(0.001)
    samples.append((rig.clock.monotonic() - start, pins.locked, pins.contactor_closed, True))
    return str(answer.payload["status"]), samples


# ---------------------------------------------------------------- the answer is the truth (1)


async def test_a_motor_lock_is_answered_unlocked_once_its_switch_moved(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """Idle, locked (a card stopped the session: a Local stop keeps the lock)."""
    async with ocpp_rig(cs, tmp_path, keys=KEYS, connectors=[LOCKED]) as rig:
        rig.sim.pins.lock_moves_at_pulse_end = True
        await rig.start_transaction()
        assert rig.sim.pins.locked
        rig.connector.present_tag(CARD)  # Local stop: the lock stays
        await rig.until(lambda: not rig.sim.pins.contactor_closed, within_s=8)
        await rig.run(1)
        assert rig.sim.pins.locked
        status, samples = await unlock_sampled(rig)
        assert status == "Unlocked"
        assert not rig.sim.pins.locked
        took = samples[-1][0]
        assert 0.4 <= took <= 1.0, took  # the pulse's 0.5 s: read after the lock moved


async def test_unlock_during_a_session_answers_after_the_lock_moved(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS, connectors=[LOCKED]) as rig:
        rig.sim.pins.lock_moves_at_pulse_end = True
        await rig.start_transaction()
        mark = cs.mark()
        status, samples = await unlock_sampled(rig)
        assert status == "Unlocked"
        # Never open under load, and open (not merely commanded open) when answered.
        assert [s for s in samples if s[2] and not s[1]] == []
        assert samples[-1][1:3] == (False, False)
        stop = await rig.call_of("StopTransaction", since=mark)
        assert stop.payload["reason"] == "UnlockCommand"


async def test_a_jammed_motor_lock_is_answered_unlock_failed(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS, connectors=[LOCKED]) as rig:
        rig.sim.pins.lock_moves_at_pulse_end = True
        await rig.start_transaction()
        rig.sim.pins.lock_jam(True)
        status, samples = await unlock_sampled(rig)
        assert status == "UnlockFailed"
        assert rig.sim.pins.locked
        assert samples[-1][0] < 6 + 1 + 2 + 0.5  # soft stop + margin + lock timeout, at most


# ---------------------------------------------------------------- no unlock later (1)


async def test_an_unlock_answered_failed_never_opens_the_lock_later(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The contactor welds under the session: UnlockFailed. When the contact later reads
    open after all (the weld lets go), the lock still stays shut: the CS was told so."""
    async with ocpp_rig(cs, tmp_path, keys=KEYS, connectors=[LOCKED]) as rig:
        await rig.start_transaction()
        await rig.bench.inject_fault("contactor_welded", 1, True)
        status, _samples = await unlock_sampled(rig)
        assert status == "UnlockFailed"
        assert rig.sim.pins.locked
        await rig.bench.inject_fault("contactor_welded", 1, False)
        await rig.run(12)
        assert not rig.sim.pins.contactor_closed
        assert rig.sim.pins.locked, "the lock opened after UnlockFailed was answered"


# ---------------------------------------------------------------- the session flows on (4)


async def test_other_calls_are_answered_while_an_unlock_waits_for_the_soft_stop(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS, connectors=[LOCKED]) as rig:
        await rig.start_transaction()
        mark = cs.mark()
        await send_unlock(rig, "unlock-2")
        # The stop starts (PWM withdrawn); the soft stop keeps the contactor closed while
        # simulated time stands still, so the unlock stays pending.
        await rig.until(lambda: rig.connector.transaction is None, within_s=1)
        assert rig.sim.pins.contactor_closed and answer_to(rig, "unlock-2") is None
        # A CALL of the CS's own is answered meanwhile...
        reply = await rig.command(call.GetConfiguration(key=["HeartbeatInterval"]))
        assert reply.configuration_key[0]["key"] == "HeartbeatInterval"
        assert answer_to(rig, "unlock-2") is None  # still waiting for the contactor
        # Then time passes and the unlock is answered when known.
        while answer_to(rig, "unlock-2") is None:
            assert rig.clock.monotonic() < 10_000
            await rig.clock.advance(0.05)
            await asyncio.sleep(0.001)
        answer = answer_to(rig, "unlock-2")
        assert answer is not None and answer.payload["status"] == "Unlocked"
        assert not rig.sim.pins.locked
        # ...and the CS's answer to our StopTransaction (recorded once the contactor had
        # opened and the meter was read after it) is read: nothing left queued.
        stop = await call_advancing(rig, "StopTransaction", since=mark)
        await rig.answered(stop)
        for _ in range(200):
            if not len(rig.ocpp.txqueue):
                break
            await asyncio.sleep(0.01)
        assert not len(rig.ocpp.txqueue), "StopTransaction.conf not read by the charge point"
