"""A failed pilot ADC reaches the Central System (second safety review of issue 14: every
hardware failure does). The bench's ADC chip dies (every conversion reads 0, as an
unpowered chip or a MISO held low does): the pilot then reads -12 V (state F) although
evsed drives +12 V or the PWM, which only a broken pilot generator or ADC can do. The
connector is Faulted/InternalError at the CS, the contactor open, a running session ended;
when the chip answers again the fault clears.

Also here: connector 0's status when ChangeAvailability makes every connector Unavailable
(OCPP 1.6 §4.9: connector 0 is the charge point's main controller; §5.2 ChangeAvailability
with connectorId 0 applies to the whole charge point).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def status_of(connector_id: int, error_code: str | None = None) -> Callable[[Frame], bool]:
    return lambda f: (
        f.is_call
        and f.direction is Direction.CP_TO_CS
        and f.cp_id == CP_ID
        and f.action == "StatusNotification"
        and f.payload["connectorId"] == connector_id
        and (error_code is None or f.payload["errorCode"] == error_code)
    )


async def sent(rig: OcppRig, pred: Callable[[Frame], bool], since: int) -> Frame:
    """The first frame matching `pred` after `since`, simulated time moving on meanwhile."""
    waiting = asyncio.ensure_future(rig.central.wait_for(pred, 10, since=since))
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


# ---------------------------------------------------------------- the pilot ADC


async def test_a_dead_adc_on_an_idle_connector_is_faulted_at_the_cs(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.run(1)
        mark = cs.mark()
        await rig.bench.inject_fault("adc_dead", 1, True)
        failed = await sent(rig, status_of(1, "InternalError"), since=mark)
        assert failed.payload["status"] == "Faulted"
        assert not rig.sim.pins.relay_energized
        mark = cs.mark()
        await rig.bench.inject_fault("adc_dead", 1, False)
        cleared = await sent(rig, status_of(1, "NoError"), since=mark)
        assert cleared.payload["status"] == "Available"


async def test_a_dead_adc_while_charging_ends_the_session_and_is_faulted(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}) as rig:
        await rig.start_transaction()
        assert rig.sim.pins.relay_energized
        mark = cs.mark()
        await rig.bench.inject_fault("adc_dead", 1, True)
        opened = await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=1)
        assert opened <= 0.5, opened  # blind for a bounded time, then cut
        failed = await sent(rig, status_of(1, "InternalError"), since=mark)
        assert failed.payload["status"] == "Faulted"
        stop = await rig.call_of("StopTransaction", since=mark)
        assert stop.payload["reason"] == "Other"
        assert ("Charging", "NoError") not in statuses(rig, 1, since=failed.seq)


async def test_an_unreadable_temperature_sensor_reaches_the_cs(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """The NTC's wire open (its ADC channel at the rail): fail safe as too hot (Faulted,
    nothing offered), but not reported as HighTemperature: OCPP 1.6 has no code for a failed
    sensor, so OtherError with the sensor named (vendorErrorCode, info), and a CS can tell
    a broken sensor from a hot socket. A real over-temperature stays HighTemperature
    (test_hardware_faults_cs)."""
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.run(1)
        mark = cs.mark()
        rig.sim.pins.adc.set_channel(2, 3.3)  # the bench's NTC channel, open circuit
        failed = await sent(rig, status_of(1, "OtherError"), since=mark)
        assert failed.payload["status"] == "Faulted"
        assert failed.payload["vendorErrorCode"] == "TemperatureSensor"
        info = failed.payload.get("info", "")
        assert "temperature sensor unreadable" in info and "NTC open" in info, failed.payload
        assert ("Faulted", "HighTemperature") not in statuses(rig, 1, since=mark)
        assert rig.connector.offered_a == 0
        mark = cs.mark()
        rig.sim.pins.set_temperature(25.0)
        cleared = await sent(rig, status_of(1, "NoError"), since=mark)
        assert cleared.payload["status"] == "Available"


# ---------------------------------------------------------------- connector 0 (§4.9)


@pytest.mark.parametrize("connector_id", [0, 1])
async def test_connector_0_is_unavailable_when_every_connector_is(
    cs: CentralSystem, tmp_path: Path, connector_id: int
) -> None:
    """ChangeAvailability(0 or the last connector, Inoperative): connector 0 Unavailable
    reaches the CS; Operative again: Available."""
    async with ocpp_rig(cs, tmp_path) as rig:
        await sent(rig, status_of(1), since=0)  # the statuses sent at connect are in
        mark = cs.mark()
        reply = await rig.command(
            call.ChangeAvailability(connector_id=connector_id, type="Inoperative")
        )
        assert reply.status == "Accepted"
        zero = await sent(rig, status_of(0), since=mark)
        assert (zero.payload["status"], zero.payload["errorCode"]) == ("Unavailable", "NoError")
        one = await sent(rig, status_of(1), since=mark)
        assert one.payload["status"] == "Unavailable"
        mark = cs.mark()
        reply = await rig.command(
            call.ChangeAvailability(connector_id=connector_id, type="Operative")
        )
        assert reply.status == "Accepted"
        zero = await sent(rig, status_of(0), since=mark)
        assert zero.payload["status"] == "Available"
