"""The OCPP session against the embedded Central System on loopback.

Protocol timers run on a FakeClock where a test needs them (heartbeat, boot retry,
MinimumStatusDuration, retry intervals); back-off uses tiny real delays. Nothing sleeps to
wait: tests await the CS's recording or the session's events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import GenericError
from ocpp.routing import on
from ocpp.v16 import call
from ocpp.v16.enums import Action

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus, ErrorCode
from evsed.controller.ocpp16.session import Backoff, redact
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import TxState
from evsed.hwmocks import central_system as cs_module
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.clock import FakeClock
from tests.support.link import cut_and_hold
from tests.support.session_rig import CP, FakeAuthorizer, FakeCharger, rig

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={"AABBCCDD": "Accepted", "BLOCKED1": "Blocked"}) as central:
        yield central


def calls(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    return [
        f
        for f in cs.frames[since:]
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]


def mv(wh: int) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-01-01T12:00:00Z", "sampledValue": [{"value": str(wh)}]}]


async def advance_until(clock: FakeClock, cs: CentralSystem, action: str, since: int) -> Frame:
    """Move the fake clock in 1 s steps until the CP sends `action` (the session reacts to
    each step over a real socket, so each step waits briefly for the frame)."""
    for _ in range(120):
        try:
            return await cs.wait_for_call(action, CP, timeout=0.05, since=since)
        except TimeoutError:
            await clock.advance(1.0)
    raise AssertionError(f"{action} never sent")


# ---------------------------------------------------------------- boot


async def test_boot_accepted_goes_online_with_identity_and_time(
    tmp_path: Path, cs: CentralSystem
) -> None:
    cs.heartbeat_interval = 120
    cs_now = datetime.now(UTC) + timedelta(hours=2)
    cs._now = lambda: cs_now
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        boot = await cs.wait_for_call("BootNotification", CP)
        assert boot.payload == {
            "chargePointVendor": "evsed",
            "chargePointModel": "evsed-sim",
            "chargePointSerialNumber": "SIM-0001",
            "chargeBoxSerialNumber": "SIM-0001",
            "firmwareVersion": r.ctx.config.identity.firmware_version,
            "meterType": "SDM630",
        }
        assert r.keys.int("HeartbeatInterval") == 120
        assert abs(r.clock.offset_s - 7200) < 5
        assert r.session.online and r.events.named("online")
        # connected on <url>/<id> with the ocpp1.6 subprotocol
        assert cs.handshakes[-1].path == f"/{CP}"


async def round_trip(cs: CentralSystem) -> None:
    """A CS call answered by the CP: whatever it sent before is recorded by now."""
    result = await cs.call(CP, call.GetConfiguration(key=["X"]))
    assert result.unknown_key == ["X"]


@pytest.mark.parametrize("status", ["Pending", "Rejected"])
async def test_boot_not_accepted_retries_at_interval_and_stays_offline(
    tmp_path: Path, cs: CentralSystem, status: str
) -> None:
    clock = FakeClock()
    cs.boot_status, cs.heartbeat_interval = status, 40
    async with rig(tmp_path, cs, clock=clock, charger=FakeCharger()) as r:
        await cs.wait_for_call("BootNotification", CP)
        await r.events.wait(lambda: bool(r.events.named("boot")))
        assert not r.session.online and r.session.connected
        # Only BootNotification may be sent meanwhile; the CP still answers the CS.
        assert await r.session.call(call.Authorize(id_tag="AABBCCDD")) is None
        if status == "Pending":
            result = await cs.call(CP, call.GetConfiguration(key=["X"]))
            assert result.unknown_key == ["X"]
        await clock.advance(39)
        await round_trip(cs)
        assert len(calls(cs, "BootNotification")) == 1
        cs.boot_status = "Accepted"
        await clock.advance(1)
        await r.session.wait_online(5)
        assert len(calls(cs, "BootNotification")) == 2
        status = await cs.wait_for_call("StatusNotification", CP)
        others = [
            f
            for f in cs.frames
            if f.is_call and f.direction is Direction.CP_TO_CS and f.action != "BootNotification"
        ]
        assert others[0] is status
        assert status.seq > calls(cs, "BootNotification")[1].seq


async def test_boot_interval_zero_uses_default_retry(tmp_path: Path, cs: CentralSystem) -> None:
    clock = FakeClock()
    cs.boot_status, cs.heartbeat_interval = "Rejected", 0
    async with rig(tmp_path, cs, clock=clock, boot_retry_s=25) as r:
        await r.events.wait(lambda: bool(r.events.named("boot")))
        await clock.advance(24)
        await round_trip(cs)
        assert len(calls(cs, "BootNotification")) == 1
        await clock.advance(1)
        await cs.wait_for(
            lambda f: f.is_call and f.action == "BootNotification",
            since=cs.frames.index(calls(cs, "BootNotification")[0]) + 1,
        )


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_at_interval_restarts_on_key_change_and_learns_time(
    tmp_path: Path, cs: CentralSystem
) -> None:
    clock = FakeClock()
    cs.heartbeat_interval = 100
    async with rig(tmp_path, cs, clock=clock) as r:
        await r.session.wait_online(5)
        mark = cs.mark()
        await clock.advance(99)
        await round_trip(cs)
        assert calls(cs, "Heartbeat", mark) == []
        await clock.advance(1)
        await cs.wait_for_call("Heartbeat", CP, since=mark)
        # One more CALL through the lock: the heartbeat's answer has been handled.
        assert await r.session.call(call.Heartbeat()) is not None
        # The CS changes the interval: the timer restarts with the new value.
        await clock.advance(50)
        mark = cs.mark()
        r.keys.change("HeartbeatInterval", "30")
        await clock.advance(29)
        await round_trip(cs)
        assert calls(cs, "Heartbeat", mark) == []
        cs_now = datetime.now(UTC) - timedelta(days=3)
        cs._now = lambda: cs_now
        await clock.advance(1)
        await cs.wait_for_call("Heartbeat", CP, since=mark)
        assert await r.session.call(call.Heartbeat()) is not None  # the answer was handled
        assert abs(clock.now() - cs_now) < timedelta(seconds=5)


# ---------------------------------------------------------------- reconnect


async def test_reconnects_after_the_cs_drops_the_link(tmp_path: Path, cs: CentralSystem) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        await cut_and_hold(cs, r)
        assert not r.session.online
        cs.refuse_handshakes(False)
        await r.session.wait_online(5)
        assert cs.connect_counts[CP] == 2
        # OCPP 1.6 §4.2: a BootNotification after start-up, not after a reconnect.
        assert len(cs.boots) == 1
        assert r.session.reconnect_delays[0] == pytest.approx(0.01)


async def test_offline_cs_back_off_doubles_to_cap_then_reconnects(
    tmp_path: Path, cs: CentralSystem
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        cs.set_offline(True)
        await r.session.wait_offline(5)
        await r.events.wait(lambda: len(r.events.named("reconnect_wait")) >= 6)
        assert not r.session.online
        assert r.events.named("connect_failed")[0]["http_status"] == 503
        assert r.session.reconnect_delays[:6] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
        cs.set_offline(False)
        await r.session.wait_online(5)
        # A successful boot resets the back-off.
        before = len(r.session.reconnect_delays)
        await cut_and_hold(cs, r, abrupt=True)
        cs.refuse_handshakes(False)
        await r.session.wait_online(5)
        assert r.session.reconnect_delays[before] == pytest.approx(0.01)


def test_backoff_jitter_is_bounded_and_injectable() -> None:
    lows = Backoff(initial_s=1, max_s=60, jitter=0.2, rng=lambda: 0.0)
    highs = Backoff(initial_s=1, max_s=60, jitter=0.2, rng=lambda: 1.0)
    assert [round(lows.next(), 3) for _ in range(8)] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 48, 48]
    # The cap is a hard cap: jitter never takes a wait above it.
    assert [round(highs.next(), 3) for _ in range(8)] == [1.2, 2.4, 4.8, 9.6, 19.2, 38.4, 60, 60]
    lows.reset()
    assert lows.next() == pytest.approx(0.8)


async def test_dead_link_is_noticed_by_ping_timeout(tmp_path: Path, cs: CentralSystem) -> None:
    async with rig(tmp_path, cs, ping_interval_s=0.1, ping_timeout_s=0.1, close_timeout_s=0.1) as r:
        await r.session.wait_online(5)
        # The CS stops reading: no pong comes back, as on a dead link without a FIN.
        cs._sessions[CP].ws.transport.pause_reading()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await r.session.wait_offline(2)
        assert loop.time() - started < 1.0
        await r.session.wait_online(5)
        assert cs.connect_counts[CP] == 2


async def test_refuses_a_server_without_the_subprotocol(
    tmp_path: Path, cs: CentralSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        cfg = CentralSystemConfig(url=f"ws://127.0.0.1:{port}", charge_point_id=CP)
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.events.wait(lambda: len(r.events.named("connect_failed")) >= 2)
            assert {e["error"] for e in r.events.named("connect_failed")} == {"subprotocol"}
            assert not r.session.online


# ---------------------------------------------------------------- status notifications


def statuses(cs: CentralSystem, since: int = 0) -> list[tuple[int, str, str]]:
    return [
        (f.payload["connectorId"], f.payload["status"], f.payload["errorCode"])
        for f in calls(cs, "StatusNotification", since)
    ]


async def test_status_after_boot_is_current_and_changes_follow(
    tmp_path: Path, cs: CentralSystem
) -> None:
    charger = FakeCharger()
    charger.connectors[2].status = ConnectorStatus(
        ChargePointStatus.FAULTED, ErrorCode.POWER_METER_FAILURE, "meter silent", "M01"
    )
    charger.reader_faulted = True
    async with rig(tmp_path, cs, charger=charger) as r:
        await r.session.wait_online(5)
        await cs.wait_for(lambda f: f.is_call and f.payload.get("connectorId") == 2)
        assert statuses(cs) == [
            (0, "Available", "ReaderFailure"),
            (1, "Available", "NoError"),
            (2, "Faulted", "PowerMeterFailure"),
        ]
        faulted = calls(cs, "StatusNotification")[2].payload
        assert (faulted["info"], faulted["vendorErrorCode"]) == ("meter silent", "M01")
        assert faulted["timestamp"].endswith("Z")
        mark = cs.mark()
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.PREPARING)
        r.session.status_changed(1)
        await cs.wait_for_call("StatusNotification", CP, since=mark)
        assert statuses(cs, mark) == [(1, "Preparing", "NoError")]


async def test_after_reconnect_only_the_current_status_is_sent(
    tmp_path: Path, cs: CentralSystem
) -> None:
    charger = FakeCharger()
    async with rig(tmp_path, cs, charger=charger) as r:
        await r.session.wait_online(5)
        await cs.wait_for(lambda f: f.is_call and f.payload.get("connectorId") == 2)
        cs.set_offline(True)
        await r.session.wait_offline(5)
        for status in ("Preparing", "Charging", "SuspendedEV"):
            charger.connectors[1].status = ConnectorStatus(ChargePointStatus(status))
            r.session.status_changed(1)
        mark = cs.mark()
        cs.set_offline(False)
        await r.session.wait_online(5)
        await cs.wait_for(lambda f: f.is_call and f.payload.get("connectorId") == 2, since=mark)
        assert statuses(cs, mark) == [
            (0, "Available", "NoError"),
            (1, "SuspendedEV", "NoError"),
            (2, "Available", "NoError"),
        ]


async def test_minimum_status_duration_hides_short_states(
    tmp_path: Path, cs: CentralSystem
) -> None:
    clock = FakeClock()
    charger = FakeCharger()
    async with rig(
        tmp_path, cs, clock=clock, charger=charger, keys={"MinimumStatusDuration": "10"}
    ) as r:
        await r.session.wait_online(5)
        await cs.wait_for(lambda f: f.is_call and f.payload.get("connectorId") == 2)
        mark = cs.mark()
        t0 = clock.monotonic()
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.PREPARING)
        r.session.status_changed(1)
        await clock.advance(5)
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.CHARGING)
        r.session.status_changed(1)
        await advance_until(clock, cs, "StatusNotification", mark)
        assert statuses(cs, mark) == [(1, "Charging", "NoError")]
        sent_at = next(
            t
            for n, f, t in r.events.items
            if n == "frame" and f["direction"] == "cp->cs" and '"Charging"' in f["raw"]
        )
        assert sent_at >= t0 + 15
        # A change that comes back to the reported state is not sent at all.
        mark = cs.mark()
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.SUSPENDED_EV)
        r.session.status_changed(1)
        await clock.advance(3)
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.CHARGING)
        r.session.status_changed(1)
        await clock.advance(20)
        assert await r.session.call(call.Heartbeat()) is not None  # flushes the link
        assert statuses(cs, mark) == []


# ---------------------------------------------------------------- transaction messages


def queue_transaction(txq: TxQueue, meter_values: int = 3, connector: int = 1) -> int:
    local = txq.start_transaction(connector, "AABBCCDD", 100, T0)
    for i in range(meter_values):
        txq.meter_values(connector, mv(100 + i), local)
    txq.stop_transaction(local, 900, T0 + timedelta(hours=1), "Local", id_tag="AABBCCDD")
    return local


async def test_offline_queue_is_delivered_in_order_with_real_ids(
    tmp_path: Path, cs: CentralSystem
) -> None:
    authorizer = FakeAuthorizer()
    cs._transaction_ids = iter(range(500, 600))
    async with rig(tmp_path, cs, authorizer=authorizer, start=False) as r:
        first = queue_transaction(r.txqueue, 3)
        second = queue_transaction(r.txqueue, 1, connector=2)
        r.session.start()
        await r.session.wait_online(5)
        await r.events.wait(lambda: len(r.txqueue) == 0)
        sent = [
            f
            for f in cs.frames
            if f.is_call and f.action in ("StartTransaction", "MeterValues", "StopTransaction")
        ]
        assert [f.action for f in sent] == (
            ["StartTransaction"] + ["MeterValues"] * 3 + ["StopTransaction"]
        ) + ["StartTransaction", "MeterValues", "StopTransaction"]
        assert [f.payload.get("transactionId") for f in sent] == [
            None,
            500,
            500,
            500,
            500,
            None,
            501,
            501,
        ]
        assert [m["meter_value"][0]["sampled_value"][0]["value"] for _, m in cs.meter_values] == [
            "100",
            "101",
            "102",
            "100",
        ]
        assert r.store.transaction(first).state is TxState.STOPPED
        results = r.events.named("start_transaction_result")
        assert [(e["local_id"], e["transaction_id"]) for e in results] == [
            (first, 500),
            (second, 501),
        ]
        assert results[0]["id_tag_info"] == {"status": "Accepted"}
        assert authorizer.updates[0] == ("AABBCCDD", {"status": "Accepted"})


async def test_messages_queued_while_online_are_sent_at_once(
    tmp_path: Path, cs: CentralSystem
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        local = r.txqueue.start_transaction(1, "BLOCKED1", 0, T0)
        r.session.wake_delivery()
        await cs.wait_for_call("StartTransaction", CP)
        await r.events.wait(lambda: bool(r.events.named("start_transaction_result")))
        result = r.events.named("start_transaction_result")[0]
        assert result["local_id"] == local
        assert result["id_tag_info"]["status"] == "Blocked"


async def test_link_lost_mid_delivery_keeps_the_message(tmp_path: Path, cs: CentralSystem) -> None:
    clock = FakeClock()
    cs.silent_actions = {"StartTransaction"}
    async with rig(tmp_path, cs, clock=clock, response_timeout=30) as r:
        await r.session.wait_online(5)
        queue_transaction(r.txqueue, 1)
        r.session.wake_delivery()
        await cs.wait_for_call("StartTransaction", CP)
        cs.silent_actions = set()
        mark = cs.mark()
        await cs.disconnect(CP, abrupt=True)
        await r.session.wait_offline(1)  # not the 30 s response timeout
        await advance_until(clock, cs, "StopTransaction", mark)
        sent = [f.action for f in cs.frames[mark:] if f.is_call and f.action != "Heartbeat"]
        assert [a for a in sent if a != "StatusNotification" and a != "BootNotification"] == [
            "StartTransaction",
            "MeterValues",
            "StopTransaction",
        ]
        await r.events.wait(lambda: len(r.txqueue) == 0)


@on(Action.meter_values)
def _failing_meter_values(self: Any, **payload: Any) -> Any:
    raise GenericError(description="cannot digest this")


async def test_callerror_counts_attempts_then_drops_meter_values(
    tmp_path: Path, cs: CentralSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cs_module._CentralSystemPeer, "_on_meter_values", _failing_meter_values)
    clock = FakeClock()
    keys = {"TransactionMessageAttempts": "3", "TransactionMessageRetryInterval": "2"}
    async with rig(tmp_path, cs, clock=clock, keys=keys, start=False) as r:
        queue_transaction(r.txqueue, 1)
        r.session.start()
        await r.session.wait_online(5)
        await advance_until(clock, cs, "StopTransaction", 0)
        errors = [f for f in cs.frames if f.is_error and f.direction is Direction.CS_TO_CP]
        assert len(errors) == 3 and len(calls(cs, "MeterValues")) == 3
        mv_times = [
            t
            for n, f, t in r.events.items
            if n == "frame" and f["direction"] == "cp->cs" and '"MeterValues"' in f["raw"]
        ]
        # Retry interval times the number of failures so far: 2 s, then 4 s.
        assert mv_times[1] - mv_times[0] >= 2 and mv_times[2] - mv_times[1] >= 4
        await r.events.wait(lambda: len(r.txqueue) == 0)


async def test_silent_cs_costs_a_timeout_and_a_retry_not_a_hang(
    tmp_path: Path, cs: CentralSystem
) -> None:
    clock = FakeClock()
    cs.silent_actions = {"MeterValues"}
    keys = {"TransactionMessageRetryInterval": "5"}
    async with rig(tmp_path, cs, clock=clock, keys=keys, response_timeout=0.2) as r:
        await r.session.wait_online(5)
        r.txqueue.meter_values(1, mv(1), None)
        r.session.wake_delivery()
        first = await cs.wait_for_call("MeterValues", CP)
        # call() from others waits for the lock but never beyond its own timeout.
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await r.session.call(call.Heartbeat(), timeout=0.05) is None
        assert loop.time() - started < 0.5
        cs.silent_actions = set()
        await advance_until(clock, cs, "MeterValues", first.seq + 1)
        await r.events.wait(lambda: len(r.txqueue) == 0)
        assert r.session.online
        assert r.txqueue.parked() == []


async def test_call_returns_result_or_none_when_offline(tmp_path: Path, cs: CentralSystem) -> None:
    async with rig(tmp_path, cs, start=False) as r:
        assert await r.session.call(call.Authorize(id_tag="AABBCCDD")) is None
        r.session.start()
        await r.session.wait_online(5)
        result = await r.session.call(call.Authorize(id_tag="AABBCCDD"))
        assert result.id_tag_info["status"] == "Accepted"


async def test_request_reset_records_the_reason_and_calls_back(
    tmp_path: Path, cs: CentralSystem
) -> None:
    kinds: list[str] = []
    called = asyncio.Event()

    async def on_reset(kind: str) -> None:
        kinds.append(kind)
        called.set()

    async with rig(tmp_path, cs, start=False, on_reset=on_reset) as r:
        r.session.request_reset("Soft")
        await asyncio.wait_for(called.wait(), 1)
        assert r.store.take_pending_stop_reason() == "SoftReset"
        called.clear()
        r.session.request_reset("Hard")
        await asyncio.wait_for(called.wait(), 1)
        assert r.store.take_pending_stop_reason() == "HardReset"
        assert kinds == ["Soft", "Hard"]


def test_redact_hides_authorization_key_and_headers() -> None:
    frame = json.dumps([2, "1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": "s3"}])
    assert "s3" not in redact(frame)
    assert "dXNlcjpwdw" not in redact("> Authorization: Basic dXNlcjpwdw==")
    assert redact("password hunter2 here", ("hunter2",)) == "password *** here"
