"""200 bad or unexpected CS frames in the middle of a charge: each answered as OCPP-J 1.6
says (or ignored), and the charge goes on and ends normally.

The whole stack runs against the embedded Central System (see test_offline.py). The frames
come from `tests.support.malformed_frames.MALFORMED_FRAMES` plus well-formed but unexpected ones:
answers to nothing, actions nobody knows, actions of profiles this build does not support.
Every frame gets its own uniqueId, so each answer is matched to the frame that caused it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evsed.controller.ocpp16.profiles import SUPPORTED_ACTIONS
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.malformed_frames import MALFORMED_FRAMES
from tests.support.ocpp_stack import CARD, CP_ID, OcppRig, calls, delivered, ocpp_rig

FRAMES = 200
BATCH = 20  # frames between two simulated seconds of charging
KEYS = {"AuthorizeRemoteTxRequests": "false", "MeterValueSampleInterval": "1"}


@dataclass(frozen=True)
class Bad:
    name: str
    unique_id: str | None  # the id an answer must carry (None: no readable id)
    text: str
    expected: str | None  # CALLERROR code, or None: no answer at all


_NOT_SUPPORTED = {
    # Well-formed CALLs of the profiles this build leaves out (Core only).
    "SetChargingProfile": {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 9,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}],
            },
        },
    },
    "ClearChargingProfile": {},
    "GetCompositeSchedule": {"connectorId": 1, "duration": 60},
    "ReserveNow": {
        "connectorId": 1,
        "expiryDate": "2030-01-01T00:00:00Z",
        "idTag": "AABB",
        "reservationId": 3,
    },
    "CancelReservation": {"reservationId": 3},
    "SendLocalList": {"listVersion": 2, "updateType": "Full"},
    "GetLocalListVersion": {},
    "TriggerMessage": {"requestedMessage": "Heartbeat"},
    "GetDiagnostics": {"location": "ftp://127.0.0.1/diag"},
    "UpdateFirmware": {"location": "ftp://127.0.0.1/fw", "retrieveDate": "2030-01-01T00:00:00Z"},
}


def _unexpected(n: int) -> list[Bad]:
    """Well-formed frames no charge point expects; `n` makes their ids unique."""
    out = [
        Bad("result-for-nothing", f"u{n}-r", f'[3,"u{n}-r",{{"status":"Accepted"}}]', None),
        Bad("error-for-nothing", f"u{n}-e", f'[4,"u{n}-e","GenericError","",{{}}]', None),
        Bad("unknown-action-2", f"u{n}-a", f'[2,"u{n}-a","SelfDestruct",{{}}]', "NotImplemented"),
    ]
    for action, payload in _NOT_SUPPORTED.items():
        if action in SUPPORTED_ACTIONS:  # its profile has landed: no longer a stray frame
            continue
        uid = f"u{n}-{action}"
        text = json.dumps([2, uid, action, payload], separators=(",", ":"))
        out.append(Bad(f"unsupported-{action}", uid, text, "NotSupported"))
    return out


def _renamed(i: int, frame: Bad) -> Bad:
    """The table's frame with an id of its own (the table's ids repeat when it cycles)."""
    uid = frame.unique_id
    if uid is None or frame.name.startswith("unique-id-"):
        if frame.name == "unique-id-37-chars":
            new = f"{i:05d}".ljust(37, "x")
            return Bad(frame.name, new, frame.text.replace(uid or "", new, 1), frame.expected)
        return frame  # unreadable, or the empty id: matched by position instead
    new = f"r{i}-{uid}"
    return Bad(frame.name, new, frame.text.replace(f'"{uid}"', f'"{new}"', 1), frame.expected)


def _barrage() -> list[Bad]:
    table = [Bad(m.name, m.unique_id, m.text, m.expected) for m in MALFORMED_FRAMES]
    frames: list[Bad] = []
    round_ = 0
    while len(frames) < FRAMES:
        for frame in [*table, *_unexpected(round_)]:
            frames.append(_renamed(len(frames), frame))
            if len(frames) == FRAMES:
                break
        round_ += 1
    return frames


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as r:
        yield r


def _answers(cs: CentralSystem, since: int) -> list[Frame]:
    return [
        f
        for f in cs.frames_of(CP_ID, since=since)
        if f.direction is Direction.CP_TO_CS and f.message_type in (3, 4)
    ]


async def test_bad_frames_are_answered_and_the_charge_goes_on(
    cs: CentralSystem, rig: OcppRig
) -> None:
    async with asyncio.timeout(10):
        tx_id = await rig.start_transaction()
        frames = _barrage()
        assert len(frames) == FRAMES
        assert {f.name for f in frames} >= {m.name for m in MALFORMED_FRAMES}
        begin = cs.mark()
        expected: dict[str, str] = {}  # unique id -> CALLERROR code
        ignored_ids: set[str] = set()

        for i, frame in enumerate(frames):
            sent_at = cs.mark()
            await cs.send_raw(CP_ID, frame.text)
            if frame.expected is not None:
                uid = frame.unique_id
                assert uid is not None
                answer = await cs.wait_for_reply(uid, since=sent_at)
                assert answer.is_error, f"{frame.name}: {answer.raw}"
                assert answer.error_code == frame.expected, f"{frame.name}: {answer.raw}"
                assert isinstance(answer.error_description, str)
                assert isinstance(answer.error_details, dict)
                if uid:
                    expected[uid] = frame.expected
            elif frame.unique_id:
                ignored_ids.add(frame.unique_id)
            if (i + 1) % BATCH == 0:
                # The charge goes on between batches: a simulated second with a meter poll.
                values = asyncio.ensure_future(delivered(rig, "MeterValues"))
                await rig.meter_sample()
                await values
                assert rig.status == "Charging"
                assert rig.connector.energized
                assert rig.sim.ev.contactor_closed

        # A CALL the CP answers after everything sent before it (one receive loop, in order).
        probe = '[2,"probe","GetConfiguration",{"key":["HeartbeatInterval"]}]'
        await cs.send_raw(CP_ID, probe)
        assert (await cs.wait_for_reply("probe", since=begin)).is_result

        answers = _answers(cs, begin)
        ids = [a.unique_id for a in answers]
        empty = [f for f in frames if f.unique_id == "" and f.expected is not None]
        assert ids.count("") == len(empty), "the empty id is answered once per frame"
        named = [i for i in ids if i]
        assert sorted(named) == sorted([*expected, "probe"]), "one answer per frame, no more"
        assert not ignored_ids & set(named), "ignored frames got an answer"
        assert rig.resets == []
        values_during = [
            f for f in calls(cs, "MeterValues", begin) if f.payload["transactionId"] == tx_id
        ]
        assert len(values_during) >= FRAMES // BATCH

        # ...and the session ends normally.
        mark = cs.mark()
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.status == "Available", within_s=5)
        stop = await cs.wait_for_call("StopTransaction", CP_ID, since=mark)
        assert stop.payload["transactionId"] == tx_id
        assert stop.payload["reason"] == "EVDisconnected"
        reply = await rig.answered(stop)
        assert reply.is_result
        await cs.wait_for(
            lambda f: (
                f.is_call
                and f.direction is Direction.CP_TO_CS
                and f.action == "StatusNotification"
                and f.payload["connectorId"] == 1
                and f.payload["status"] == "Available"
            ),
            since=mark,
        )
        assert cs.transactions[tx_id].stop_reason == "EVDisconnected"
