"""The session's parts on their own: each "send now" (for TriggerMessage), the boot rules
(one BootNotification per start-up, a CS-set HeartbeatInterval kept), the capped back-off
on the injected clock, and supervision of the session's tasks.

Against the embedded Central System on loopback; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus
from evsed.controller.ocpp16.boot import HeartbeatReporter
from evsed.controller.ocpp16.link import Backoff
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.clock import FakeClock
from tests.support.link import cut_and_hold
from tests.support.session_rig import CP, FakeCharger, rig

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={"AABBCCDD": "Accepted"}) as central:
        yield central


def calls(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    return [
        f
        for f in cs.frames[since:]
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]


def statuses(cs: CentralSystem, since: int = 0) -> list[tuple[int, str]]:
    return [
        (f.payload["connectorId"], f.payload["status"])
        for f in calls(cs, "StatusNotification", since)
    ]


async def all_statuses_sent(cs: CentralSystem, since: int = 0) -> None:
    await cs.wait_for(lambda f: f.is_call and f.payload.get("connectorId") == 2, since=since)


async def flush(r: Any) -> None:
    """A CALL through the session's lock: whatever it sent before has been answered."""
    assert await r.session.heartbeat.send_now()


def mv(wh: int) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-01-01T12:00:00Z", "sampledValue": [{"value": str(wh)}]}]


def queue_transaction(r: Any, meter_values: int = 2) -> int:
    local = r.txqueue.start_transaction(1, "AABBCCDD", 100, T0)
    for i in range(meter_values):
        r.txqueue.meter_values(1, mv(100 + i), local)
    r.txqueue.stop_transaction(local, 900, T0 + timedelta(hours=1), "Local", id_tag="AABBCCDD")
    return int(local)


# ---------------------------------------------------------------- send now


async def test_send_now_is_a_no_op_while_offline(tmp_path: Path, cs: CentralSystem) -> None:
    async with rig(tmp_path, cs, start=False, charger=FakeCharger()) as r:
        assert await r.session.boot.send_now() is None
        assert await r.session.heartbeat.send_now() is False
        assert await r.session.status.send_now() == 0
        r.session.delivery.send_now()  # only a wake-up: nothing to send on
        assert cs.frames == []


async def test_boot_send_now_sends_one_and_keeps_a_heartbeat_interval_the_cs_set(
    tmp_path: Path, cs: CentralSystem
) -> None:
    cs.heartbeat_interval = 1440
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        assert r.keys.int("HeartbeatInterval") == 1440  # the first boot's answer is adopted
        r.keys.change("HeartbeatInterval", "10")  # what ChangeConfiguration from the CS does
        mark = cs.mark()
        assert await r.session.boot.send_now() == "Accepted"
        assert len(calls(cs, "BootNotification", mark)) == 1
        assert r.keys.int("HeartbeatInterval") == 10
        assert r.session.online and not r.session.boot.needed


async def test_a_triggered_boot_not_accepted_means_the_next_connection_boots_again(
    tmp_path: Path, cs: CentralSystem
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        cs.boot_status = "Pending"
        assert await r.session.boot.send_now() == "Pending"
        assert r.session.boot.needed
        cs.boot_status = "Accepted"
        mark = cs.mark()
        await cut_and_hold(cs, r)
        cs.refuse_handshakes(False)
        await r.session.wait_online(5)
        assert len(calls(cs, "BootNotification", mark)) == 1


async def test_heartbeat_send_now_sends_and_restarts_the_timer(
    tmp_path: Path, cs: CentralSystem
) -> None:
    clock = FakeClock()
    cs.heartbeat_interval = 100
    async with rig(tmp_path, cs, clock=clock) as r:
        await r.session.wait_online(5)
        await clock.advance(60)
        mark = cs.mark()
        assert await r.session.heartbeat.send_now()
        # Other CALLs (the start-up StatusNotifications) may interleave: count Heartbeats only.
        (triggered,) = calls(cs, "Heartbeat", mark)
        await clock.advance(99)  # 159 s after online: the old timer would have fired at 100
        assert calls(cs, "Heartbeat", triggered.seq + 1) == []
        await clock.advance(1)
        await cs.wait_for_call("Heartbeat", CP, since=triggered.seq + 1)


async def test_status_send_now_one_connector_or_all_even_when_unchanged(
    tmp_path: Path, cs: CentralSystem
) -> None:
    charger = FakeCharger()
    async with rig(tmp_path, cs, charger=charger) as r:
        await r.session.wait_online(5)
        await all_statuses_sent(cs)
        mark = cs.mark()
        assert await r.session.status.send_now(2) == 1
        assert statuses(cs, mark) == [(2, "Available")]
        charger.connectors[1].status = ConnectorStatus(ChargePointStatus.PREPARING)
        mark = cs.mark()
        assert await r.session.status.send_now() == 3
        assert statuses(cs, mark) == [(0, "Available"), (1, "Preparing"), (2, "Available")]
        # The triggered one counts as sent: the change it carried is not sent twice.
        r.session.status_changed(1)
        await flush(r)
        assert statuses(cs, mark) == [(0, "Available"), (1, "Preparing"), (2, "Available")]


async def test_delivery_send_now_delivers_what_was_queued(
    tmp_path: Path, cs: CentralSystem
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        queue_transaction(r)
        r.session.delivery.send_now()
        await r.events.wait(lambda: len(r.txqueue) == 0)
        assert len(calls(cs, "MeterValues")) == 2


# ---------------------------------------------------------------- boot rules


async def test_link_flap_boots_once_and_sends_the_current_statuses_each_time(
    tmp_path: Path, cs: CentralSystem
) -> None:
    charger = FakeCharger()
    cs.heartbeat_interval = 1440
    async with rig(tmp_path, cs, charger=charger) as r:
        await r.session.wait_online(5)
        await all_statuses_sent(cs)
        r.keys.change("HeartbeatInterval", "10")  # set by the CS
        for flap in range(25):
            # Offline until the status has changed (it failed twice in the loop when the CP
            # was back before the test looked).
            await cut_and_hold(cs, r, abrupt=flap % 2 == 0)
            status = ("Preparing", "Charging", "SuspendedEV")[flap % 3]
            charger.connectors[1].status = ConnectorStatus(ChargePointStatus(status))
            r.session.status_changed(1)
            mark = cs.mark()
            cs.refuse_handshakes(False)
            await r.session.wait_online(5)
            await all_statuses_sent(cs, mark)
            assert statuses(cs, mark) == [(0, "Available"), (1, status), (2, "Available")]
        assert cs.connect_counts[CP] == 26
        assert len(calls(cs, "BootNotification")) == 1
        assert r.keys.int("HeartbeatInterval") == 10


async def test_back_off_is_capped_so_the_charger_is_back_within_the_cap(
    tmp_path: Path, cs: CentralSystem
) -> None:
    clock = FakeClock()
    # The highest jitter every time: the worst case for the cap.
    backoff = Backoff(rng=lambda: 1.0)
    async with rig(tmp_path, cs, clock=clock, backoff=backoff) as r:
        await r.session.wait_online(5)
        cs.set_offline(True)
        await r.session.wait_offline(5)
        # Ten minutes of outage on the clock, each attempt refused over the real socket.
        outage_end = clock.monotonic() + 600
        while clock.monotonic() < outage_end:
            waits = len(r.events.named("reconnect_wait"))
            await r.events.wait(lambda w=waits: len(r.events.named("reconnect_wait")) > w)
            await clock.advance(r.session.reconnect_delays[-1])
        assert max(r.session.reconnect_delays) == pytest.approx(30.0)
        assert r.session.reconnect_delays[-3:] == pytest.approx([30.0] * 3)
        # The network comes back: online again within 30 s of clock time.
        await r.events.wait(lambda: len(r.events.named("reconnect_wait")) > waits + 1)
        cs.set_offline(False)
        back = clock.monotonic()
        online = asyncio.ensure_future(r.session.wait_online())
        while not online.done():
            assert clock.monotonic() - back <= 30.0, "not back within the cap"
            await clock.advance(1.0)
            await asyncio.wait([online], timeout=0.02)
        assert len(calls(cs, "BootNotification")) == 1


async def test_back_off_cap_comes_from_the_configuration(tmp_path: Path, cs: CentralSystem) -> None:
    cfg = CentralSystemConfig(url=cs.url, charge_point_id=CP, reconnect_backoff_max_s=12)
    async with rig(tmp_path, cs, cs_config=cfg, backoff=None, start=False) as r:
        assert r.session.backoff.max_s == 12
        assert max(r.session.backoff.next() for _ in range(10)) <= 12
    default = CentralSystemConfig(url=cs.url, charge_point_id=CP)
    assert default.reconnect_backoff_max_s == 30


# ---------------------------------------------------------------- supervision


async def test_a_heartbeat_loop_that_raises_is_logged_and_restarted(
    tmp_path: Path, cs: CentralSystem, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    clock = FakeClock()
    cs.heartbeat_interval = 50
    failures = iter([True])
    real = HeartbeatReporter.interval

    def interval(self: HeartbeatReporter) -> int:
        if next(failures, False):
            raise RuntimeError("injected")
        return real(self)

    monkeypatch.setattr(HeartbeatReporter, "interval", interval)
    async with rig(tmp_path, cs, clock=clock) as r:
        await r.session.wait_online(5)
        await r.events.wait(lambda: r.session.task_failures["session: heartbeat loop"] == 1)
        assert "injected" in caplog.text
        mark = cs.mark()
        await clock.advance(1)  # the restart pause
        await clock.advance(50)
        await cs.wait_for_call("Heartbeat", CP, since=mark)
        assert r.session.online


async def test_a_dead_delivery_loop_takes_the_link_down_and_the_reconnect_restarts_it(
    tmp_path: Path, cs: CentralSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)
        real = r.txqueue.next_due
        broken = iter([True])

        def next_due(now: float) -> Any:
            if next(broken, False):
                raise RuntimeError("injected: the queue could not be read")
            return real(now)

        monkeypatch.setattr(r.txqueue, "next_due", next_due)
        queue_transaction(r)
        r.session.delivery.send_now()
        await r.session.wait_offline(5)
        assert r.session.task_failures["session: delivery loop"] == 1
        await r.session.wait_online(5)
        await r.events.wait(lambda: len(r.txqueue) == 0)
        assert cs.connect_counts[CP] == 2
        assert [f.action for f in calls(cs, "StopTransaction")] == ["StopTransaction"]
        assert len(calls(cs, "BootNotification")) == 1


async def test_a_raising_observer_does_not_stop_transaction_delivery(
    tmp_path: Path, cs: CentralSystem
) -> None:
    async with rig(tmp_path, cs) as r:
        await r.session.wait_online(5)

        def bad_observer(event: str, _fields: dict[str, Any]) -> None:
            if event in ("tx_message", "start_transaction_result", "frame"):
                raise ValueError("observer bug")

        r.ctx.observers.insert(0, bad_observer)
        queue_transaction(r, meter_values=3)
        r.session.wake_delivery()
        await r.events.wait(lambda: len(r.txqueue) == 0)
        assert [f.action for f in cs.frames if f.is_call and "Transaction" in f.action] == [
            "StartTransaction",
            "StopTransaction",
        ]
        assert r.ctx.observer_failures >= 5
        # the other observers still saw every outcome
        assert len([e for e in r.events.named("tx_message") if e["outcome"] == "confirmed"]) == 5
        assert r.session.online and cs.connect_counts[CP] == 1
        assert r.session.task_failures == {}
