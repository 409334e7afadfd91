"""The embedded Central System, driven by the `ocpp` library's own charge point class."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from evsed.hwmocks.central_system import (
    CentralSystem,
    Direction,
    TagInfo,
    run_central_system,
)
from tests.support.malformed_frames import MALFORMED_FRAMES

CP = "CP_1"


class LibraryCP(ChargePoint):
    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status="Accepted")


@asynccontextmanager
async def charge_point(
    cs: CentralSystem, cp_id: str = CP, **options: Any
) -> AsyncIterator[tuple[LibraryCP, ClientConnection]]:
    async with connect(f"{cs.url}/{cp_id}", subprotocols=["ocpp1.6"], **options) as ws:
        cp = LibraryCP(cp_id, ws, response_timeout=2)
        task = asyncio.create_task(cp.start())
        try:
            yield cp, ws
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError, ConnectionClosed):
                await task


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    tags = {
        "AABBCCDD": TagInfo("Accepted", parent_id_tag="FLEET", expiry_date="2030-01-01T00:00:00Z"),
        "BLOCKED1": "Blocked",
    }
    async with CentralSystem(tags=tags, heartbeat_interval=120) as central:
        yield central


def boot() -> call.BootNotification:
    return call.BootNotification(charge_point_vendor="evsed", charge_point_model="bench")


async def test_url_is_loopback_with_ephemeral_port(cs: CentralSystem) -> None:
    assert cs.url.startswith("ws://127.0.0.1:")
    assert cs.port != 0


async def test_boot_is_accepted_with_configured_interval(cs: CentralSystem) -> None:
    async with charge_point(cs) as (cp, _):
        await cs.wait_connected(CP)
        result = await cp.call(boot())
    assert (result.status, result.interval) == ("Accepted", 120)
    assert result.current_time.endswith("Z")
    assert cs.boots == [(CP, {"charge_point_vendor": "evsed", "charge_point_model": "bench"})]


@pytest.mark.parametrize("status", ["Pending", "Rejected"])
async def test_boot_status_is_configurable(cs: CentralSystem, status: str) -> None:
    cs.boot_status = status
    async with charge_point(cs) as (cp, _):
        assert (await cp.call(boot())).status == status


async def test_authorize_uses_the_tag_table(cs: CentralSystem) -> None:
    async with charge_point(cs) as (cp, _):
        known = await cp.call(call.Authorize(id_tag="AABBCCDD"))
        other_case = await cp.call(call.Authorize(id_tag="aabbccdd"))
        blocked = await cp.call(call.Authorize(id_tag="BLOCKED1"))
        unknown = await cp.call(call.Authorize(id_tag="NOPE"))
    wire = await cs.wait_for(lambda f: f.is_result and f.action == "Authorize")
    assert wire.payload["idTagInfo"] == {
        "status": "Accepted",
        "parentIdTag": "FLEET",
        "expiryDate": "2030-01-01T00:00:00Z",
    }
    assert known.id_tag_info["parent_id_tag"] == "FLEET"  # the library hands it back snake_cased
    assert other_case.id_tag_info["status"] == "Accepted"  # IdToken is case-insensitive
    assert blocked.id_tag_info == {"status": "Blocked"}
    assert unknown.id_tag_info == {"status": "Invalid"}


async def test_transaction_ids_increase_and_stops_are_recorded(cs: CentralSystem) -> None:
    async with charge_point(cs) as (cp, _):
        starts = [
            await cp.call(
                call.StartTransaction(
                    connector_id=1, id_tag=tag, meter_start=100, timestamp="2026-01-01T00:00:00Z"
                )
            )
            for tag in ("AABBCCDD", "BLOCKED1", "NOPE")
        ]
        stop = await cp.call(
            call.StopTransaction(
                meter_stop=900,
                timestamp="2026-01-01T01:00:00Z",
                transaction_id=starts[0].transaction_id,
                id_tag="AABBCCDD",
                reason="EVDisconnected",
            )
        )
    assert [s.transaction_id for s in starts] == [1, 2, 3]
    assert [s.id_tag_info["status"] for s in starts] == ["Accepted", "Blocked", "Invalid"]
    assert stop.id_tag_info["status"] == "Accepted"
    tx = cs.transactions[1]
    assert (tx.cp_id, tx.meter_start, tx.meter_stop, tx.stop_reason) == (
        CP,
        100,
        900,
        "EVDisconnected",
    )
    assert tx.stopped and not cs.transactions[2].stopped


async def test_other_core_and_firmware_messages_are_answered_and_kept(cs: CentralSystem) -> None:
    async with charge_point(cs) as (cp, _):
        assert (await cp.call(call.Heartbeat())).current_time
        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Charging")
        )
        await cp.call(
            call.MeterValues(
                connector_id=1,
                meter_value=[
                    {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "5"}]}
                ],
            )
        )
        assert (await cp.call(call.DataTransfer(vendor_id="evsed"))).status == "Accepted"
        await cp.call(call.DiagnosticsStatusNotification(status="Uploaded"))
        await cp.call(call.FirmwareStatusNotification(status="Installed"))
    assert cs.connector_status[(CP, 1)] == ("Charging", "NoError")
    assert cs.meter_values[0][1]["connector_id"] == 1
    assert cs.data_transfers == [(CP, {"vendor_id": "evsed"})]
    assert cs.diagnostics_status[CP] == "Uploaded"
    assert cs.firmware_status[CP] == "Installed"
    assert not [f for f in cs.frames if f.is_error]


async def test_frames_are_recorded_in_order_with_both_directions(cs: CentralSystem) -> None:
    async with charge_point(cs) as (cp, _):
        await cp.call(boot())
        await cp.call(call.Heartbeat())
        await cs.call(CP, call.Reset(type="Soft"))
    summary = [(f.direction, f.message_type, f.action) for f in cs.frames]
    assert summary == [
        (Direction.CP_TO_CS, 2, "BootNotification"),
        (Direction.CS_TO_CP, 3, "BootNotification"),
        (Direction.CP_TO_CS, 2, "Heartbeat"),
        (Direction.CS_TO_CP, 3, "Heartbeat"),
        (Direction.CS_TO_CP, 2, "Reset"),
        (Direction.CP_TO_CS, 3, "Reset"),
    ]
    assert [f.seq for f in cs.frames] == list(range(6))
    assert all(a.monotonic <= b.monotonic for a, b in zip(cs.frames, cs.frames[1:], strict=False))
    assert cs.frames[0].payload == {"chargePointVendor": "evsed", "chargePointModel": "bench"}
    assert cs.frames[0].raw.startswith("[2,")


async def test_call_round_trip_and_call_error(cs: CentralSystem) -> None:
    async with charge_point(cs):
        await cs.wait_connected(CP)
        assert (await cs.call(CP, call.Reset(type="Hard"))).status == "Accepted"
        with pytest.raises(OcppNotImplemented):  # the library CP has no ClearCache handler
            await cs.call(CP, call.ClearCache())


async def test_call_times_out_when_the_cp_stays_silent(cs: CentralSystem) -> None:
    async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"]):  # reads nothing
        await cs.wait_connected(CP)
        with pytest.raises(TimeoutError):
            await cs.call(CP, call.Reset(type="Hard"), timeout=0.1)


async def test_call_fails_fast_when_the_link_drops(cs: CentralSystem) -> None:
    async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"]) as ws:
        await cs.wait_connected(CP)
        pending = asyncio.create_task(cs.call(CP, call.Reset(type="Hard"), timeout=10))
        await cs.wait_for(lambda f: f.action == "Reset")
        await ws.close()
        with pytest.raises(ConnectionError):
            await pending


async def test_send_raw_answers_are_recorded_not_queued(cs: CentralSystem) -> None:
    async with charge_point(cs):
        await cs.wait_connected(CP)
        mark = cs.mark()
        await cs.send_raw(CP, '[2,"raw-1","Reset",{"type":"Soft"}]')
        reply = await cs.wait_for_reply("raw-1", since=mark)
        assert (reply.message_type, reply.action, reply.payload) == (
            3,
            "Reset",
            {"status": "Accepted"},
        )
        assert (await cs.call(CP, call.Reset(type="Hard"))).status == "Accepted"


async def test_wait_for_times_out_with_a_useful_message(cs: CentralSystem) -> None:
    with pytest.raises(TimeoutError, match="no matching frame"):
        await cs.wait_for(lambda f: False, timeout=0.01)


async def test_set_offline_cuts_the_link_and_refuses_handshakes(cs: CentralSystem) -> None:
    async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"]) as ws:
        await cs.wait_connected(CP)
        cs.set_offline(True)
        await cs.wait_disconnected(CP)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"]):
            pass
    assert refused.value.response.status_code == 503
    cs.set_offline(False)
    async with charge_point(cs) as (cp, _):
        assert (await cp.call(call.Heartbeat())).current_time
    assert cs.connect_counts[CP] == 2
    assert [h.status for h in cs.handshakes] == [101, 503, 101]


async def test_disconnect_closes_one_link(cs: CentralSystem) -> None:
    async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"]) as ws:
        await cs.wait_connected(CP)
        await cs.disconnect(CP)
        assert not cs.is_connected(CP)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
        assert ws.close_code == 1000


async def test_silent_and_delayed_answers(cs: CentralSystem) -> None:
    cs.silent_actions.add("Heartbeat")
    release = asyncio.Event()
    cs.reply_delays["StatusNotification"] = release
    async with charge_point(cs) as (cp, _):
        cp._response_timeout = 0.1
        with pytest.raises(TimeoutError):
            await cp.call(call.Heartbeat())
        cp._response_timeout = 2
        pending = asyncio.create_task(
            cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Available")
            )
        )
        request = await cs.wait_for_call("StatusNotification")
        assert not [f for f in cs.frames if f.is_result and f.unique_id == request.unique_id]
        release.set()
        await pending
    assert cs.connector_status[(CP, 1)] == ("Available", "NoError")


async def test_override_sends_any_payload(cs: CentralSystem) -> None:
    cs.overrides["BootNotification"] = lambda cp_id, payload: {
        "status": "Rejected",
        "currentTime": "2026-01-01T00:00:00Z",
        "interval": 7,
    }
    async with charge_point(cs) as (cp, _):
        result = await cp.call(boot())
    assert (result.status, result.interval) == ("Rejected", 7)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _basic(CP, "wrong-password-0000"),
        _basic("CP_2", "0123456789abcdef"),
        {"Authorization": "Basic !!"},
    ],
    ids=["none", "wrong-password", "wrong-user", "garbage"],
)
async def test_basic_auth_rejects_with_401(cs: CentralSystem, headers: dict[str, str]) -> None:
    cs.passwords = {CP: "0123456789abcdef"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{cs.url}/{CP}", subprotocols=["ocpp1.6"], additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")
    assert not cs.connect_counts[CP]


async def test_basic_auth_accepts_the_right_password(cs: CentralSystem) -> None:
    cs.passwords = {CP: "0123456789abcdef"}
    async with charge_point(cs, additional_headers=_basic(CP, "0123456789abcdef")) as (cp, _):
        assert (await cp.call(boot())).status == "Accepted"
    assert cs.handshakes[-1].authorization is not None


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls_when_given_an_ssl_context(self_signed: tuple[Path, Path]) -> None:
    key, cert = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with CentralSystem(ssl_context=server_ctx) as tls_cs:
        assert tls_cs.url.startswith("wss://")
        async with charge_point(tls_cs, ssl=client_ctx) as (cp, _):
            assert (await cp.call(boot())).status == "Accepted"


async def test_run_central_system_serves_until_cancelled() -> None:
    ready: asyncio.Future[CentralSystem] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_central_system("127.0.0.1", 0, {"T1": "Accepted"}, ready=ready.set_result)
    )
    running = await asyncio.wait_for(ready, 2)
    async with charge_point(running) as (cp, _):
        result = await cp.call(call.Authorize(id_tag="T1"))
    assert result.id_tag_info == {"status": "Accepted"}
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def test_malformed_frame_table_is_large_and_consistent() -> None:
    assert len(MALFORMED_FRAMES) >= 30
    assert len({m.name for m in MALFORMED_FRAMES}) == len(MALFORMED_FRAMES)
    for case in MALFORMED_FRAMES:
        assert (case.unique_id is None) == (case.expected is None), case.name
