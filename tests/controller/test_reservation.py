"""Reservation end to end with the embedded Central System (OCPP 1.6 §5.13, §5.3): every
ReserveNow and CancelReservation answer, the Reserved status, a reserved connector refusing
another card and starting for the reserved one with the reservationId, expiry on the
injected clock, and a reservation that survives a restart."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.connector.faults import Fault
from evsed.controller.ocpp16.profiles import SUPPORTED_ACTIONS, SUPPORTED_FEATURE_PROFILES
from evsed.controller.run import Stack
from evsed.hwmocks.central_system import CentralSystem, TagInfo
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, CP_ID, OTHER, OcppRig, ocpp_rig

PARENT = "GROUP-1"
MEMBER = "5566778899"  # another card of PARENT


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    tags: dict[str, str | TagInfo] = {
        CARD: "Accepted",
        OTHER: "Accepted",
        MEMBER: TagInfo("Accepted", parent_id_tag=PARENT),
    }
    async with CentralSystem(tags=tags) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path) as r:
        await r.call_of("StatusNotification")  # the start-up ones are out
        yield r


def _in(rig: OcppRig, seconds: float) -> str:
    """As Central Systems write it: UTC with "Z"."""
    at = rig.clock.now() + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def reserve(
    rig: OcppRig,
    reservation_id: int = 1,
    *,
    connector_id: int = 1,
    tag: str = CARD,
    expires_in_s: float = 600,
    **kw: Any,
) -> str:
    result = await rig.command(
        call.ReserveNow(
            connector_id=connector_id,
            expiry_date=_in(rig, expires_in_s),
            id_tag=tag,
            reservation_id=reservation_id,
            **kw,
        )
    )
    return str(result.status)


async def cancel(rig: OcppRig, reservation_id: int) -> str:
    result = await rig.command(call.CancelReservation(reservation_id=reservation_id))
    return str(result.status)


async def reserved_status_sent(rig: OcppRig, status: str, since: int) -> None:
    await rig.central.wait_for(
        lambda f: (
            f.is_call
            and f.action == "StatusNotification"
            and f.payload["connectorId"] == 1
            and f.payload["status"] == status
        ),
        since=since,
    )


def test_reservation_is_a_supported_feature_profile() -> None:
    assert "Reservation" in SUPPORTED_FEATURE_PROFILES
    assert {"ReserveNow", "CancelReservation"} <= SUPPORTED_ACTIONS


async def test_accepted_shows_reserved_and_is_stored_before_the_answer(rig: OcppRig) -> None:
    mark = rig.central.mark()
    assert await reserve(rig, 11, parent_id_tag=PARENT) == "Accepted"
    stored = rig.ocpp.store.reservation_get(11)
    assert stored is not None and (stored.connector_id, stored.id_tag) == (1, CARD)
    assert stored.parent_id_tag == PARENT
    assert rig.status == "Reserved"
    await reserved_status_sent(rig, "Reserved", mark)


async def test_rejected_for_connector_zero_an_unknown_connector_and_a_past_expiry(
    rig: OcppRig,
) -> None:
    answer = await rig.command(call.GetConfiguration(key=["ReserveConnectorZeroSupported"]))
    keys = {k["key"]: k["value"] for k in answer.configuration_key}
    assert keys["ReserveConnectorZeroSupported"] == "false"
    assert await reserve(rig, 1, connector_id=0) == "Rejected"
    assert await reserve(rig, 2, connector_id=2) == "Rejected"
    assert await reserve(rig, 3, expires_in_s=-1) == "Rejected"
    assert rig.ocpp.store.reservations() == []
    assert rig.status == "Available"


async def test_occupied_while_an_ev_is_plugged_or_another_reservation_holds_it(
    rig: OcppRig,
) -> None:
    assert await reserve(rig, 1) == "Accepted"
    assert await reserve(rig, 2, tag=OTHER) == "Occupied"
    assert await reserve(rig, 1, tag=OTHER) == "Accepted"  # the same id replaces it
    assert rig.connector.reservation is not None and rig.connector.reservation[1] == OTHER
    assert [r.reservation_id for r in rig.ocpp.store.reservations()] == [1]
    assert await cancel(rig, 1) == "Accepted"
    await rig.plug()
    assert await reserve(rig, 3) == "Occupied"


async def test_faulted(rig: OcppRig) -> None:
    rig.connector.raise_fault(Fault.WELDED, "test")
    assert await reserve(rig, 1) == "Faulted"
    assert rig.ocpp.store.reservations() == []


async def test_unavailable(rig: OcppRig) -> None:
    answer = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
    assert answer.status == "Accepted"
    assert await reserve(rig, 1) == "Unavailable"
    assert rig.ocpp.store.reservations() == []


async def test_another_card_is_refused_and_the_reserved_one_starts_with_the_reservation_id(
    rig: OcppRig,
) -> None:
    assert await reserve(rig, 42) == "Accepted"
    mark = rig.central.mark()
    await rig.plug()
    refused = rig.note("start_refused", lambda f: f["id_tag"] == OTHER)
    await rig.bench.present_card(OTHER)
    assert (await refused)["reason"] == "reserved for another idTag"
    await rig.run(3)
    assert rig.calls("StartTransaction", since=mark) == []
    await rig.bench.present_card(CARD)
    start = await rig.call_of("StartTransaction", since=mark)
    assert start.payload["idTag"] == CARD
    assert start.payload["reservationId"] == 42
    await rig.charging()
    assert rig.connector.reservation is None
    assert rig.ocpp.store.reservations() == []  # used up: a restart does not bring it back
    assert await cancel(rig, 42) == "Rejected"


async def test_a_card_of_the_reserved_parent_starts(rig: OcppRig) -> None:
    assert await reserve(rig, 5, tag=OTHER, parent_id_tag=PARENT) == "Accepted"
    mark = rig.central.mark()
    await rig.plug()
    await rig.bench.present_card(MEMBER)
    start = await rig.call_of("StartTransaction", since=mark)
    assert (start.payload["idTag"], start.payload["reservationId"]) == (MEMBER, 5)


async def test_expiry_frees_the_connector(rig: OcppRig) -> None:
    assert await reserve(rig, 7, expires_in_s=60) == "Accepted"
    await rig.run(30)
    assert rig.status == "Reserved"
    mark = rig.central.mark()
    await rig.run(31)
    assert rig.status == "Available"
    await reserved_status_sent(rig, "Available", mark)
    assert await cancel(rig, 7) == "Rejected"  # nothing left to cancel
    assert rig.ocpp.store.reservations() == []
    assert await reserve(rig, 8, tag=OTHER) == "Accepted"  # the connector takes a new one


async def test_cancel_reservation_accepted_then_rejected(rig: OcppRig) -> None:
    assert await reserve(rig, 9) == "Accepted"
    mark = rig.central.mark()
    assert await cancel(rig, 9) == "Accepted"
    assert rig.connector.reservation is None
    assert rig.status == "Available"
    await reserved_status_sent(rig, "Available", mark)
    assert rig.ocpp.store.reservations() == []
    assert await cancel(rig, 9) == "Rejected"
    assert await cancel(rig, 1234) == "Rejected"


@pytest.mark.parametrize("stopped_s", [60, 700], ids=["kept", "expired while stopped"])
async def test_a_reservation_survives_a_restart_unless_it_expired(
    cs: CentralSystem, tmp_path: Path, stopped_s: float
) -> None:
    clock = FakeClock()
    expiry: datetime
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert await reserve(rig, 21, expires_in_s=600, parent_id_tag=PARENT) == "Accepted"
        expiry = rig.clock.now() + timedelta(seconds=600)
    await clock.advance(stopped_s)
    mark = cs.mark()
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        if stopped_s < 600:
            assert rig.connector.reservation is not None
            assert rig.connector.reservation[:3] == (21, CARD, PARENT)
            assert abs(rig.connector.reservation[3] - expiry.timestamp()) < 1
            await reserved_status_sent(rig, "Reserved", mark)
            assert await cancel(rig, 21) == "Accepted"
        else:
            assert rig.connector.reservation is None
            assert rig.status == "Available"
            assert rig.ocpp.store.reservations() == []
            assert await cancel(rig, 21) == "Rejected"


async def test_becoming_unavailable_ends_the_reservation(rig: OcppRig) -> None:
    assert await reserve(rig, 31) == "Accepted"
    answer = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
    assert answer.status == "Accepted"
    await rig.run(1)
    assert rig.connector.reservation is None
    answer = await rig.command(call.ChangeAvailability(connector_id=1, type="Operative"))
    assert answer.status == "Accepted"
    await rig.run(1)
    assert rig.status == "Available"  # not Reserved again
    assert await cancel(rig, 31) == "Rejected"


async def test_a_fault_ends_the_reservation(rig: OcppRig) -> None:
    assert await reserve(rig, 32) == "Accepted"
    rig.connector.raise_fault(Fault.WELDED, "test")
    await rig.run(1)
    assert rig.connector.reservation is None
    assert rig.status == "Faulted"
    assert await cancel(rig, 32) == "Rejected"
    assert rig.ocpp.store.reservations() == []


async def test_a_remote_start_for_another_tag_is_rejected_and_for_the_reserved_one_starts(
    rig: OcppRig,
) -> None:
    assert await reserve(rig, 33) == "Accepted"
    assert await rig.remote_start(OTHER, connector_id=1) == "Rejected"
    mark = rig.central.mark()
    await rig.plug()
    assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
    start = await rig.call_of("StartTransaction", since=mark)
    assert (start.payload["idTag"], start.payload["reservationId"]) == (CARD, 33)


async def test_the_same_reservation_id_on_another_connector_moves_it(
    cs: CentralSystem, tmp_path: Path
) -> None:
    example = Path(__file__).parents[2] / "config" / "sim-two-connectors.toml"
    connectors = tomllib.loads(example.read_text(encoding="utf-8"))["connectors"]
    for connector in connectors:
        connector["meter"]["port"] = 0
    async with ocpp_rig(cs, tmp_path, connectors=connectors) as rig:
        charger = rig.stack.charger
        assert charger is not None
        assert await reserve(rig, 51) == "Accepted"
        assert await reserve(rig, 51, connector_id=2, tag=OTHER) == "Accepted"
        assert charger.connector(1).reservation is None
        assert str(charger.connector(1).status.status) == "Available"
        held = charger.connector(2).reservation
        assert held is not None and held[:2] == (51, OTHER)
        assert str(charger.connector(2).status.status) == "Reserved"
        assert [(r.reservation_id, r.connector_id) for r in rig.ocpp.store.reservations()] == [
            (51, 2)
        ]
        assert await cancel(rig, 51) == "Accepted"
        assert charger.connector(2).reservation is None


async def test_the_production_start_up_order_restores_it_too(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """`Stack(ocpp=True)` attaches the OCPP side before the charger (and its safety core)
    starts: the reservation is restored then, and holds once the core runs."""
    clock = FakeClock()
    async with ocpp_rig(cs, tmp_path, clock=clock) as rig:
        assert await reserve(rig, 61) == "Accepted"
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    stack = Stack(config, clock=clock, control=False, ocpp=True, state_dir=tmp_path)
    await stack.start()
    try:
        assert stack.charger is not None
        connector = stack.charger.connector(1)
        await clock.advance(1)
        assert connector.reservation is not None and connector.reservation[0] == 61
        assert str(connector.status.status) == "Reserved"
    finally:
        await stack.stop()
