"""A reservation ends at its expiryDate by itself (OCPP 1.6 §5.13): a timer on the injected
clock, armed when the reservation is made, cancelled by CancelReservation and by the reserved
transaction's start, re-armed after a restart from the stored reservations; one that expired
while evsed was stopped ends at start-up (StatusNotification Available). No sleeps: the
manual clock drives the timers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.ocpp16.expiry import ExpiryTimers
from evsed.hwmocks.central_system import CentralSystem, Frame
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig

# -- the timers alone -------------------------------------------------------------------------


async def test_a_timer_fires_at_its_time_not_before() -> None:
    clock = FakeClock()
    fired: list[tuple[int, datetime]] = []
    timers = ExpiryTimers(clock, lambda key: fired.append((key, clock.now())))
    at = clock.now() + timedelta(seconds=100)
    timers.arm(1, at)
    timers.arm(2, clock.now() + timedelta(seconds=10))
    await clock.advance(9.9)
    assert fired == []
    await clock.advance(0.2)
    assert [k for k, _ in fired] == [2]
    await clock.advance(89.7)
    assert [k for k, _ in fired] == [2]
    await clock.advance(0.2)
    assert fired[1][0] == 1 and at <= fired[1][1] < at + timedelta(seconds=0.2)
    assert timers.armed() == {}


async def test_cancel_and_re_arm() -> None:
    clock = FakeClock()
    fired: list[int] = []
    timers = ExpiryTimers(clock, fired.append)
    timers.arm(1, clock.now() + timedelta(seconds=10))
    assert timers.cancel(1) and not timers.cancel(1)
    timers.arm(2, clock.now() + timedelta(seconds=10))
    timers.arm(2, clock.now() + timedelta(seconds=50))  # replaces, does not add
    await clock.advance(20)
    assert fired == []
    await clock.advance(31)
    assert fired == [2]
    timers.arm(3, clock.now() - timedelta(seconds=1))  # already due: fires at once
    await clock.advance(0)
    assert fired == [2, 3]
    await timers.close()


async def test_a_wall_clock_step_is_noticed_within_a_nap() -> None:
    """The clock takes the CS's time at BootNotification (offset) while a timer waits."""
    clock = FakeClock()
    fired: list[int] = []
    timers = ExpiryTimers(clock, fired.append, max_nap_s=30)
    timers.arm(1, clock.now() + timedelta(hours=1))
    await clock.advance(1)
    clock.offset_s = 3600  # the wall clock jumps an hour ahead
    await clock.advance(30)
    assert fired == [1]


async def test_a_failing_callback_is_logged_and_the_others_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    fired: list[int] = []

    def on_expiry(key: int) -> None:
        if key == 1:
            raise RuntimeError("boom")
        fired.append(key)

    timers = ExpiryTimers(clock, on_expiry, name="reservation")
    timers.arm(1, clock.now() + timedelta(seconds=1))
    timers.arm(2, clock.now() + timedelta(seconds=2))
    with caplog.at_level(logging.ERROR):
        await clock.advance(3)
    assert fired == [2]
    assert "reservation timer 1 failed" in caplog.text


# -- end to end with the embedded Central System ----------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cs(clock: FakeClock) -> AsyncIterator[CentralSystem]:
    # The CS's time is the charge point's: the session takes the CS's time at each
    # BootNotification and Heartbeat, and a CS on real time would step the clock back over
    # the simulated minutes (and an expiryDate with it).
    async with CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as central:
        yield central


def _in(clock: FakeClock, seconds: float) -> str:
    at = clock.now() + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _reserve(rig: OcppRig, reservation_id: int, expires_in_s: float, cid: int = 1) -> str:
    result = await rig.command(
        call.ReserveNow(
            connector_id=cid,
            expiry_date=_in(rig.clock, expires_in_s),
            id_tag=CARD,
            reservation_id=reservation_id,
        )
    )
    return str(result.status)


def _status_frames(rig: OcppRig, since: int) -> list[str]:
    return [
        f.payload["status"]
        for f in rig.calls("StatusNotification", since=since)
        if f.payload["connectorId"] == 1
    ]


async def _status_sent(rig: OcppRig, status: str, since: int) -> Frame:
    return await rig.central.wait_for(
        lambda f: (
            f.is_call
            and f.action == "StatusNotification"
            and f.payload["connectorId"] == 1
            and f.payload["status"] == status
        ),
        since=since,
    )


def _timers(rig: OcppRig) -> dict[int, datetime]:
    timers = rig.ocpp.ctx.reservation_timers
    return {} if timers is None else timers.armed()


async def test_the_reservation_ends_at_its_expiry_date_without_any_other_message(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        await rig.call_of("StatusNotification")
        assert await _reserve(rig, 7, 60) == "Accepted"
        assert list(_timers(rig)) == [7]
        await rig.run(59.9)
        assert rig.status == "Reserved"
        assert rig.ocpp.store.reservation_get(7) is not None
        mark = cs.mark()
        await rig.run(0.2)
        # Within the same step of the clock: the connector is free, the stored row gone
        # (before, it stayed until the next ReserveNow or CancelReservation read the store).
        expired = await rig.event("reservation_expired")
        assert expired == {"reservation_id": 7, "connector_id": 1}
        assert rig.status == "Available"
        assert rig.ocpp.store.reservations() == []
        assert _timers(rig) == {}
        frame = await _status_sent(rig, "Available", mark)
        assert frame.payload["errorCode"] == "NoError"


async def test_cancel_and_the_reserved_start_cancel_the_timer(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert await _reserve(rig, 1, 600) == "Accepted"
        result = await rig.command(call.CancelReservation(reservation_id=1))
        assert result.status == "Accepted"
        assert _timers(rig) == {}
        assert await _reserve(rig, 2, 600) == "Accepted"
        assert list(_timers(rig)) == [2]
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        start = await rig.call_of("StartTransaction", since=mark)
        assert start.payload["reservationId"] == 2
        await rig.charging()
        assert _timers(rig) == {}
        assert rig.ocpp.store.reservations() == []
        await rig.run(601)  # past the old expiryDate: nothing fires, the session goes on
        assert not any(name == "reservation_expired" for name, _ in rig.events)
        assert rig.status == "Charging"


async def test_after_a_restart_the_timer_is_armed_again_and_ends_it(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert await _reserve(rig, 21, 120) == "Accepted"
        expiry = rig.ocpp.store.reservations()[0].expiry
    await clock.advance(60)  # stopped for a minute
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert _timers(rig) == {21: expiry}
        assert rig.status == "Reserved"
        mark = cs.mark()
        await rig.run(60.2)
        await rig.event("reservation_expired")
        assert rig.status == "Available"
        assert rig.ocpp.store.reservations() == []
        await _status_sent(rig, "Available", mark)


async def test_one_that_expired_while_stopped_ends_at_start_up_available(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert await _reserve(rig, 22, 120) == "Accepted"
        assert rig.status == "Reserved"
    await clock.advance(300)
    mark = cs.mark()
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert _timers(rig) == {}
        assert rig.ocpp.store.reservations() == []
        frame = await _status_sent(rig, "Available", mark)
        assert frame.payload["errorCode"] == "NoError"
        assert "Reserved" not in _status_frames(rig, mark)
        result = await rig.command(call.CancelReservation(reservation_id=22))
        assert result.status == "Rejected"


async def test_a_connector_zero_reservation_ends_by_its_timer_too(
    cs: CentralSystem, clock: FakeClock, tmp_path: Path
) -> None:
    zero = {"authorization": {"reserve_connector_zero": True}}
    async with ocpp_rig(cs, tmp_path, clock=clock, **zero) as rig:
        charger = rig.stack.charger
        assert charger is not None
        assert await _reserve(rig, 3, 30, cid=0) == "Accepted"
        assert charger.reservation(0) is not None
        await rig.run(30.2)
        assert await rig.event("reservation_expired") == {"reservation_id": 3, "connector_id": 0}
        assert charger.reservation(0) is None
        assert rig.ocpp.store.reservations() == []
