"""Every hardware failure reaches the Central System (issue 14): each fault the bench can
inject shows as a StatusNotification with its errorCode, and the recovery as another one.

The whole stack on the bench against the embedded Central System; what moves in real time
(the reader's thread, the meter's socket) is waited for with a timeout, never slept on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig

RDM6300_CARD = "0700673158"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted", RDM6300_CARD: "Accepted"}) as central:
        yield central


def status_of(connector_id: int, error_code: str | None = None) -> Callable[[Frame], bool]:
    def matches(f: Frame) -> bool:
        return (
            f.is_call
            and f.direction is Direction.CP_TO_CS
            and f.cp_id == CP_ID
            and f.action == "StatusNotification"
            and f.payload["connectorId"] == connector_id
            and (error_code is None or f.payload["errorCode"] == error_code)
        )

    return matches


async def status_sent(
    rig: OcppRig, pred: Callable[[Frame], bool], since: int, timeout: float = 8.0
) -> Frame:
    """The first StatusNotification matching `pred` after `since`; simulated time moves on
    meanwhile (a MinimumStatusDuration, the meter's poll) while the reader works in real time."""
    waiting = asyncio.ensure_future(rig.central.wait_for(pred, timeout, since=since))
    while not waiting.done():
        await rig.clock.advance(0.05)
        await asyncio.wait([waiting], timeout=0.02)
    return waiting.result()


def statuses(rig: OcppRig, connector_id: int, since: int) -> list[tuple[str, str]]:
    return [
        (f.payload["status"], f.payload["errorCode"])
        for f in rig.central.frames_of(CP_ID, since=since)
        if status_of(connector_id)(f)
    ]


# ---------------------------------------------------------------- the RFID reader (#6)

READER_FAULTS = [
    ("rdm6300", "reader_unplugged"),
    ("rdm6300", "reader_garbage"),
    ("pn532", "reader_unplugged"),
    ("pn532", "reader_silent"),
    ("pn532", "reader_garbage"),
]


@pytest.mark.parametrize(("model", "fault"), READER_FAULTS)
async def test_a_failed_reader_is_reported_on_connector_0_and_cleared(
    cs: CentralSystem, tmp_path: Path, model: str, fault: str
) -> None:
    async with ocpp_rig(cs, tmp_path, reader={"model": model}) as rig:
        first = await status_sent(rig, status_of(0), since=0)
        assert first.payload["errorCode"] == "NoError"
        mark = cs.mark()
        await rig.bench.inject_fault(fault, 1, True)
        failed = await status_sent(rig, status_of(0, "ReaderFailure"), since=mark)
        assert failed.payload["status"] == "Available"  # the connectors still work
        assert rig.status == "Available"
        mark = cs.mark()
        await rig.bench.inject_fault(fault, 1, False)
        if model == "rdm6300" and fault == "reader_garbage":
            # It never speaks unasked: a valid frame is how it says it is well again.
            await rig.bench.present_card(RDM6300_CARD, reader="rdm6300")
        await status_sent(rig, status_of(0, "NoError"), since=mark)
        assert statuses(rig, 0, since=mark) == [("Available", "NoError")]


# ---------------------------------------------------------------- a welded contactor (#8)


@pytest.mark.parametrize("how", ["unplug", "remote stop"])
async def test_a_welded_contactor_goes_straight_to_faulted(
    cs: CentralSystem, tmp_path: Path, how: str
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        transaction_id = await rig.start_transaction()
        await rig.bench.inject_fault("contactor_welded", 1, True)
        mark = cs.mark()
        if how == "unplug":
            await rig.bench.unplug(1)
        else:
            reply = await rig.command(call.RemoteStopTransaction(transaction_id=transaction_id))
            assert reply.status == "Accepted"
        faulted = await status_sent(rig, status_of(1, "PowerSwitchFailure"), since=mark)
        assert faulted.payload["status"] == "Faulted"
        await rig.run(2)
        sent = statuses(rig, 1, since=mark)
        # Whatever came before the fault (Finishing, SuspendedEVSE), never an Available.
        assert ("Available", "NoError") not in sent, sent
        assert sent[-1] == ("Faulted", "PowerSwitchFailure")


# ---------------------------------------------------------------- the lock and the contactor (#10)

LOCKED = {"lock": {"enabled": True}, "meter": {"port": 0, "poll_interval_s": 1.0}}
SAMPLE_S = 0.005  # simulated time between two looks at the bench's pins


async def sampled_while(rig: OcppRig, payload: Any) -> tuple[Any, list[tuple[float, bool, bool]]]:
    """Send `payload` from the CS and look at the bench's lock and contactor every
    SAMPLE_S of simulated time until it is answered and the contactor reads open (bounded):
    the answer and the samples (t, locked, contactor closed)."""
    pins = rig.sim.pins
    answer = asyncio.ensure_future(rig.command(payload))
    samples: list[tuple[float, bool, bool]] = []
    start = rig.clock.monotonic()
    while not (answer.done() and not pins.contactor_closed):
        samples.append((rig.clock.monotonic() - start, pins.locked, pins.contactor_closed))
        assert rig.clock.monotonic() - start < 15, "not answered, or contactor never opened"
        await rig.clock.advance(SAMPLE_S)
        await asyncio.wait([answer], timeout=0.001)
    samples.append((rig.clock.monotonic() - start, pins.locked, pins.contactor_closed))
    return answer.result(), samples


def opened_under_load(samples: list[tuple[float, bool, bool]]) -> list[float]:
    return [t for t, locked, closed in samples if closed and not locked]


@pytest.mark.parametrize("command", ["UnlockConnector", "RemoteStopTransaction"])
async def test_the_lock_never_opens_while_the_contactor_is_closed(
    cs: CentralSystem, tmp_path: Path, command: str
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys, connectors=[LOCKED]) as rig:
        transaction_id = await rig.start_transaction()
        assert rig.sim.pins.locked and rig.sim.pins.contactor_closed
        mark = cs.mark()
        payload: Any = (
            call.UnlockConnector(connector_id=1)
            if command == "UnlockConnector"
            else call.RemoteStopTransaction(transaction_id=transaction_id)
        )
        answer, samples = await sampled_while(rig, payload)
        assert answer.status == ("Unlocked" if command == "UnlockConnector" else "Accepted")
        closed_for = max(t for t, _locked, closed in samples if closed)
        assert closed_for > 0.05, samples[-3:]  # the soft stop kept it closed a while
        assert opened_under_load(samples) == []
        await rig.until(lambda: not rig.sim.pins.locked, within_s=3)
        stop = await rig.call_of("StopTransaction", since=mark)
        expected = "UnlockCommand" if command == "UnlockConnector" else "Remote"
        assert stop.payload["reason"] == expected


# ---------------------------------------------------------------- meterStart after a restart (#11)


def start_transaction(f: Frame) -> bool:
    return f.is_call and f.direction is Direction.CP_TO_CS and f.action == "StartTransaction"


async def test_a_start_before_the_first_meter_reading_waits_for_it(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        rig.sim.meter.energy_wh = 25.0  # what the meter held when evsed restarted
        await rig.bench.inject_fault("meter_silent", 1, True)
        rig.connector.last_energy_wh = None  # just restarted: nothing read yet
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        await rig.run(0.5)
        assert rig.calls("StartTransaction", since=mark) == []
        assert not rig.sim.pins.relay_energized  # nothing offered before the start is recorded
        await rig.bench.inject_fault("meter_silent", 1, False)
        start = await status_sent(rig, start_transaction, since=mark)
        assert start.payload["meterStart"] == 25
        await rig.charging()


# A start whose meter never answers is refused (tests/controller/test_meter_start.py).


# ---------------------------------------------------------------- the other fault paths (audit)

CONNECTOR_FAULTS = [
    ("meter_silent", "PowerMeterFailure"),
    ("meter_garbage", "PowerMeterFailure"),
    ("over_temperature", "HighTemperature"),
]


@pytest.mark.parametrize(("fault", "error_code"), CONNECTOR_FAULTS)
async def test_a_connector_fault_reaches_the_cs_and_clears(
    cs: CentralSystem, tmp_path: Path, fault: str, error_code: str
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        mark = cs.mark()
        await rig.bench.inject_fault(fault, 1, True)
        failed = await status_sent(rig, status_of(1, error_code), since=mark, timeout=15)
        assert failed.payload["status"] == "Faulted"
        mark = cs.mark()
        await rig.bench.inject_fault(fault, 1, False)
        cleared = await status_sent(rig, status_of(1, "NoError"), since=mark, timeout=15)
        assert cleared.payload["status"] == "Available"


async def test_a_lock_that_does_not_engage_reaches_the_cs(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys, connectors=[LOCKED]) as rig:
        await rig.bench.inject_fault("lock_jammed", 1, True)
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        failed = await status_sent(rig, status_of(1, "ConnectorLockFailure"), since=mark)
        assert failed.payload["status"] == "Faulted"
        assert not rig.sim.pins.relay_energized
        await rig.bench.inject_fault("lock_jammed", 1, False)
        mark = cs.mark()
        await rig.bench.unplug(1)
        cleared = await status_sent(rig, status_of(1, "NoError"), since=mark)
        assert cleared.payload["status"] == "Available"
