"""ReserveNow on connector 0 (OCPP 1.6 §5.13, ReserveConnectorZeroSupported): the charger
keeps one connector free for the reserved idTag and its group. From the embedded Central
System to the bench, on a FakeClock (test_reservation.py holds the per-connector cases).
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.connector.phases import Phase
from evsed.hwmocks.central_system import CentralSystem, TagInfo
from tests.support.clock import FakeClock
from tests.support.ocpp_stack import CARD, OTHER, OcppRig, calls, ocpp_rig, payload_of

GROUP = "GROUP00001"
MEMBER = "1122334455"  # CARD's group
STRANGER = "5566778899"  # accepted by the CS, in no group
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEYS = {"AuthorizeRemoteTxRequests": "true"}


class CsTime:
    """The Central System's time follows the charger's FakeClock from `base` on: the boot's
    time sync then leaves the charger's clock where the test put it, across restarts."""

    def __init__(self) -> None:
        self.base = START
        self.clock: FakeClock | None = None

    def __call__(self) -> datetime:
        if self.clock is None:
            return self.base
        return self.base + timedelta(seconds=self.clock.monotonic() - self._mono0)

    def start(self, at: datetime) -> FakeClock:
        self.base = at
        self.clock = FakeClock(at)
        self._mono0 = self.clock.monotonic()
        return self.clock


CS_TIME = CsTime()


def _rig(cs: CentralSystem, tmp_path: Path, at: datetime = START, **sections: Any) -> Any:
    return ocpp_rig(cs, tmp_path, keys=KEYS, clock=CS_TIME.start(at), **sections)


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(
        now=CS_TIME,
        tags={
            CARD: TagInfo("Accepted", GROUP),
            MEMBER: TagInfo("Accepted", GROUP),
            OTHER: "Accepted",
            STRANGER: "Accepted",
        },
    ) as central:
        yield central


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def _reserve(
    rig: OcppRig,
    connector_id: int = 1,
    *,
    reservation_id: int = 5,
    tag: str = CARD,
    parent: str | None = None,
    minutes: float = 30,
) -> str:
    expiry = rig.clock.now() + timedelta(minutes=minutes)
    result = await rig.command(
        call.ReserveNow(
            connector_id=connector_id,
            expiry_date=_iso(expiry),
            id_tag=tag,
            reservation_id=reservation_id,
            parent_id_tag=parent,
        )
    )
    return str(result.status)


async def _cancel(rig: OcppRig, reservation_id: int) -> str:
    return str((await rig.command(call.CancelReservation(reservation_id=reservation_id))).status)


async def _status_sent(rig: OcppRig, status: str, since: int, connector_id: int = 1) -> None:
    await rig.central.wait_for(
        lambda f: (
            f.is_call
            and f.action == "StatusNotification"
            and payload_of(f)["connectorId"] == connector_id
            and payload_of(f)["status"] == status
        ),
        since=since,
    )


async def _present(rig: OcppRig, tag: str, connector_id: int = 1) -> None:
    """A card at the reader; waits (real time) for the connector's decision."""
    charger = rig.stack.charger
    assert charger is not None
    decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def listener(kind: str, fields: dict[str, object]) -> None:
        if kind == "authorized" and fields.get("id_tag") == tag and not decided.done():
            decided.set_result(None)

    charger.connector(connector_id).add_listener(listener)
    charger.present_tag(tag)
    await asyncio.wait_for(decided, 5)


async def _unavailable(rig: OcppRig) -> None:
    answer = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
    assert answer.status == "Accepted"


async def _plug(rig: OcppRig) -> None:
    await rig.bench.plug(1)
    await rig.until(lambda: rig.connector.phase != Phase.IDLE, within_s=3)


async def _started(rig: OcppRig, since: int) -> dict[str, Any]:
    await rig.until(lambda: rig.connector.transaction is not None and rig.connector.energized)
    return payload_of(await rig.call_of("StartTransaction", since=since))


async def _refused(rig: OcppRig, since: int) -> None:
    await rig.run(3)
    assert rig.connector.transaction is None
    assert not rig.connector.energized
    assert calls(rig.central, "StartTransaction", since) == []


# ---------------------------------------------------------------- connector 0


ZERO = {"authorization": {"reserve_connector_zero": True}}


async def test_connector_zero_keeps_a_connector_free_for_the_tag(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with _rig(cs, tmp_path, **ZERO) as rig:
        assert rig.ocpp.keys.bool("ReserveConnectorZeroSupported")
        assert await _reserve(rig, 0, reservation_id=3, tag=CARD, parent=GROUP) == "Accepted"
        assert rig.ocpp.store.reservations()[0].connector_id == 0
        mark = cs.mark()
        await _plug(rig)
        # The only connector is the last one free: another tag may not take it.
        await _present(rig, STRANGER)
        await _refused(rig, mark)
        await _present(rig, MEMBER)
        start = await _started(rig, mark)
        assert start["reservationId"] == 3
        assert rig.ocpp.store.reservations() == []


async def test_connector_zero_answers(cs: CentralSystem, tmp_path: Path) -> None:
    async with _rig(cs, tmp_path, **ZERO) as rig:
        await _plug(rig)
        assert await _reserve(rig, 0) == "Occupied", "no connector is Available"
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.status == "Available")
        assert await _reserve(rig, 0, reservation_id=3) == "Accepted"
        assert await _reserve(rig, 0, reservation_id=4) == "Occupied"
        assert await _cancel(rig, 3) == "Accepted"
        await _unavailable(rig)
        assert await _reserve(rig, 0) == "Unavailable"


async def test_connector_zero_is_rejected_unless_configured(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with _rig(cs, tmp_path) as rig:
        assert not rig.ocpp.keys.bool("ReserveConnectorZeroSupported")
        assert await _reserve(rig, 0) == "Rejected"
        assert rig.ocpp.store.reservations() == []


def _two_connectors() -> list[dict[str, Any]]:
    example = Path(__file__).parents[2] / "config" / "sim-two-connectors.toml"
    connectors: list[dict[str, Any]] = tomllib.loads(example.read_text(encoding="utf-8"))[
        "connectors"
    ]
    for connector in connectors:
        connector["meter"]["port"] = 0
    return connectors


async def test_with_two_connectors_the_last_free_one_waits_for_the_tag(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with _rig(cs, tmp_path, connectors=_two_connectors(), **ZERO) as rig:
        charger = rig.stack.charger
        assert charger is not None
        assert await _reserve(rig, 0, reservation_id=3, tag=CARD, parent=GROUP) == "Accepted"
        mark = cs.mark()
        await rig.bench.plug(1)
        await rig.until(lambda: charger.connector(1).phase != Phase.IDLE)
        await _present(rig, STRANGER)  # connector 2 stays free: this one may charge
        await rig.until(lambda: charger.connector(1).energized)
        first = payload_of(await rig.call_of("StartTransaction", since=mark))
        assert first["connectorId"] == 1 and "reservationId" not in first
        await rig.bench.plug(2)
        await rig.until(lambda: charger.connector(2).phase != Phase.IDLE)
        await _present(rig, OTHER, 2)  # the last free connector: kept for the group
        await rig.run(3)
        assert charger.connector(2).transaction is None
        assert not charger.connector(2).energized
        assert len(calls(cs, "StartTransaction", mark)) == 1
        await _present(rig, MEMBER, 2)
        await rig.until(lambda: charger.connector(2).energized)
        second = calls(cs, "StartTransaction", mark)[1]
        assert payload_of(second)["connectorId"] == 2
        assert payload_of(second)["reservationId"] == 3
        assert await _cancel(rig, 3) == "Rejected", "used up"
        assert rig.ocpp.store.reservations() == []


async def test_a_connector_zero_reservation_survives_a_restart_and_expires(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with _rig(cs, tmp_path, **ZERO) as rig:
        assert await _reserve(rig, 0, reservation_id=3, tag=CARD, minutes=30) == "Accepted"
    async with _rig(cs, tmp_path, START + timedelta(minutes=10), **ZERO) as rig:
        mark = cs.mark()
        await _plug(rig)
        await _present(rig, STRANGER)
        await _refused(rig, mark)
        await rig.run(20 * 60 + 1)  # past its expiryDate: anyone may charge
        await _present(rig, STRANGER)
        assert (await _started(rig, mark)).get("reservationId") is None
        assert await _cancel(rig, 3) == "Rejected"
        assert rig.ocpp.store.reservations() == []
