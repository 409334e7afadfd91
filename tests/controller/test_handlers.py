"""Core CS->CP messages end to end: bench CS -> websocket -> EvsedChargePoint -> charger.

The whole OCPP stack runs (OcppApp, OcppSession, the bench charger with its EV and meter);
the charger's timers run on a FakeClock, the websocket in real time. Waits are on CS frames
(futures) or on simulated time, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from evsed.controller.ocpp16.auth import Authorizer
from evsed.controller.ocpp16.chargepoint import EvsedChargePoint
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import (
    REGISTRY,
    Access,
    ConfigurationKeys,
    KeySpec,
    KeyType,
)
from evsed.controller.ocpp16.profiles import (
    ALWAYS_ON_KEY_PROFILES,
    PROFILES,
    SUPPORTED_ACTIONS,
)
from evsed.controller.ocpp16.protocol import websocket_options
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, CP_ID, OTHER, OcppRig, ocpp_rig
from tests.support.stopping import call_advancing


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted", OTHER: "Accepted"}) as central:
        yield central


@pytest.fixture
async def rig(cs: CentralSystem, tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}) as r:
        yield r


# ---------------------------------------------------------------- a bare charge point


@dataclass
class Bare:
    """EvsedChargePoint over a real websocket with the OCPP context but no charger: for the
    messages that only touch keys, cache and vendor handlers."""

    ctx: OcppContext
    cp: EvsedChargePoint
    cs: CentralSystem

    async def command(self, payload: Any) -> Any:
        return await self.cs.call(CP_ID, payload, timeout=5)


@pytest.fixture
async def bare(cs: CentralSystem, tmp_path: Path) -> AsyncIterator[Bare]:
    clock = FakeClock()
    store = Store(tmp_path / "evsed.db")
    keys = ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"])
    ctx = OcppContext(
        config=bench_config(),
        clock=clock,
        store=store,
        keys=keys,
        txqueue=TxQueue.from_keys(store, keys),
    )

    async def no_cs(_tag: str) -> None:
        return None

    ctx.authorizer = Authorizer(store, keys, clock, online=lambda: False, send_authorize=no_cs)
    async with connect(f"{cs.url}/{CP_ID}", **websocket_options()) as ws:
        cp = EvsedChargePoint(CP_ID, ws, ctx, response_timeout=2)
        task = asyncio.create_task(cp.start())
        await cs.wait_connected(CP_ID)
        try:
            yield Bare(ctx, cp, cs)
        finally:
            task.cancel()
            cp.cancel_background_tasks()
            with suppress(asyncio.CancelledError, ConnectionClosed):
                await task
    store.close()


# ---------------------------------------------------------------- ChangeConfiguration


def _cases() -> list[tuple[str, str, str]]:
    """(key, value, expected status) for every key of the registry: a valid and an invalid
    value, as ConfigurationKeys with only the Core profile must judge them."""
    out: list[tuple[str, str, str]] = []
    for spec in REGISTRY:
        good, bad = _values(spec)
        # The fixture's keys support Core only, whatever else this build implements.
        on = spec.profile == "Core" or spec.profile in ALWAYS_ON_KEY_PROFILES
        supported = spec.supported and on
        if not supported:
            out.append((spec.name, good, "NotSupported"))
        elif spec.access is Access.R:
            out.append((spec.name, good, "Rejected"))
        else:
            out.append((spec.name, good, "Accepted"))
            out.append((spec.name, bad, "Rejected"))
    out.append(("NoSuchKey", "1", "NotSupported"))
    out.append(("heartbeatinterval", "120", "Accepted"))  # CiString: any case
    return out


def _values(spec: KeySpec) -> tuple[str, str]:
    if spec.name == "SecurityProfile":
        return "0", "4"  # 0 is the current level (Accepted); above 3 never
    if spec.name == "ConnectorPhaseRotation":
        return "0.RST,1.RST", "1.XYZ"
    if spec.name.startswith(("MeterValues", "StopTxn")) and spec.type is KeyType.CSL:
        return "Energy.Active.Import.Register,Voltage", "Energy.Banana"
    if spec.type is KeyType.BOOL:
        return "false", "maybe"
    if spec.type is KeyType.INT:
        low = spec.min if spec.min is not None else 1
        high = spec.max + 1 if spec.max is not None else None
        return str(low), str(high) if high is not None else "twelve"
    if spec.type is KeyType.STRING:
        return "A" * (spec.min or 4), "\x01" * max(spec.min or 1, 1)
    return "Core", "Nope"


@pytest.mark.parametrize(("key", "value", "expected"), _cases())
async def test_change_configuration_validates_every_key(
    bare: Bare, key: str, value: str, expected: str
) -> None:
    result = await bare.command(call.ChangeConfiguration(key=key, value=value))
    assert result.status == expected
    if expected == "Accepted":
        got = await bare.command(call.GetConfiguration(key=[key]))
        if key == "AuthorizationKey":  # write-only: never read back
            assert got.configuration_key in (None, []) and got.unknown_key == [key]
        else:
            assert got.configuration_key[0]["value"].lower() == value.lower()


async def test_change_configuration_reaches_the_connector(rig: OcppRig) -> None:
    result = await rig.command(call.ChangeConfiguration(key="ConnectionTimeOut", value="30"))
    assert result.status == "Accepted"
    assert rig.connector.settings.connection_timeout_s == 30.0
    result = await rig.command(
        call.ChangeConfiguration(key="StopTransactionOnEVSideDisconnect", value="false")
    )
    assert result.status == "Accepted"
    assert rig.connector.settings.stop_on_ev_disconnect is False
    # The lock's release when the EV leaves after a card's stop (advertised true).
    assert rig.connector.settings.unlock_on_ev_disconnect is True
    result = await rig.command(
        call.ChangeConfiguration(key="UnlockConnectorOnEVSideDisconnect", value="false")
    )
    assert result.status == "Accepted"
    assert rig.connector.settings.unlock_on_ev_disconnect is False


# ---------------------------------------------------------------- GetConfiguration


async def test_get_configuration_all_known_and_unknown(bare: Bare) -> None:
    everything = await bare.command(call.GetConfiguration())
    names = {kv["key"] for kv in everything.configuration_key}
    assert {"HeartbeatInterval", "NumberOfConnectors", "SupportedFeatureProfiles"} <= names
    assert "AuthorizationKey" not in names  # write-only
    assert "LocalAuthListEnabled" not in names  # its profile is not supported
    some = await bare.command(call.GetConfiguration(key=["HeartbeatInterval", "Bogus"]))
    assert [kv["key"] for kv in some.configuration_key] == ["HeartbeatInterval"]
    assert some.configuration_key[0]["readonly"] is False
    assert some.unknown_key == ["Bogus"]


async def test_get_configuration_too_many_keys_is_occurence_violation(bare: Bare) -> None:
    limit = bare.ctx.keys.int("GetConfigurationMaxKeys")
    mark = bare.cs.mark()
    with pytest.raises(OCPPError):
        await bare.command(call.GetConfiguration(key=[f"K{i}" for i in range(limit + 1)]))
    error = next(f for f in bare.cs.frames[mark:] if f.is_error)
    assert error.error_code == "OccurenceConstraintViolation"
    # The session goes on.
    assert (await bare.command(call.GetConfiguration(key=["Bogus"]))).unknown_key == ["Bogus"]


# ---------------------------------------------------------------- ClearCache, DataTransfer


async def test_clear_cache_empties_the_authorisation_cache(bare: Bare) -> None:
    bare.ctx.store.cache_put("TAG1", {"status": "Accepted"}, None)
    assert (await bare.command(call.ClearCache())).status == "Accepted"
    assert bare.ctx.store.cache_get("TAG1") is None


async def test_clear_cache_rejected_without_an_authoriser(bare: Bare) -> None:
    bare.ctx.authorizer = None
    assert (await bare.command(call.ClearCache())).status == "Rejected"


async def test_data_transfer_vendors_and_message_ids(bare: Bare) -> None:
    async def acme(message_id: str | None, data: str | None) -> tuple[str, str | None]:
        if message_id == "echo":
            return "Accepted", data
        return "UnknownMessageId", None

    async def broken(message_id: str | None, data: str | None) -> tuple[str, str | None]:
        raise RuntimeError("vendor bug")

    bare.ctx.vendor_handlers.update({"com.acme": acme, "com.broken": broken})
    ok = await bare.command(call.DataTransfer(vendor_id="COM.ACME", message_id="echo", data="hi"))
    assert (ok.status, ok.data) == ("Accepted", "hi")
    unknown_msg = await bare.command(call.DataTransfer(vendor_id="com.acme", message_id="nope"))
    assert unknown_msg.status == "UnknownMessageId"
    unknown_vendor = await bare.command(call.DataTransfer(vendor_id="org.other"))
    assert unknown_vendor.status == "UnknownVendorId"
    assert (await bare.command(call.DataTransfer(vendor_id="com.broken"))).status == "Rejected"


async def test_other_profiles_are_not_supported(bare: Bare) -> None:
    # Whatever CS->CP action no landed profile handles yet (profiles land one by one).
    pending = sorted(a for p in PROFILES if not p.implemented for a in p.cs_to_cp)
    if not pending:
        pytest.skip("every profile is implemented")
    action = pending[0]
    assert action not in SUPPORTED_ACTIONS
    mark = bare.cs.mark()
    await bare.cs.send_raw(CP_ID, f'[2,"x1","{action}",{{}}]')
    reply = await bare.cs.wait_for_reply("x1", since=mark)
    assert reply.error_code == "NotSupported"


# ---------------------------------------------------------------- ChangeAvailability


async def test_change_availability_connector_persists_across_restart(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        mark = cs.mark()
        result = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert result.status == "Accepted"
        assert rig.status == "Unavailable"
        note = await cs.wait_for(
            lambda f: (
                f.action == "StatusNotification"
                and f.is_call
                and f.payload["connectorId"] == 1
                and f.payload["status"] == "Unavailable"
            ),
            since=mark,
        )
        assert note is not None
        bad = await rig.command(call.ChangeAvailability(connector_id=7, type="Inoperative"))
        assert bad.status == "Rejected"
    async with ocpp_rig(cs, tmp_path) as rig:
        assert rig.status == "Unavailable"  # §5.2: persists a reboot
        await rig.bench.plug(1)
        await rig.run(2)  # would be Preparing if it were available
        assert rig.status == "Unavailable"
        ok = await rig.command(call.ChangeAvailability(connector_id=0, type="Operative"))
        assert ok.status == "Accepted"
        await rig.until(lambda: rig.status == "Preparing")


async def test_change_availability_scheduled_during_a_transaction(rig: OcppRig) -> None:
    tx_id = await rig.start_transaction()
    result = await rig.command(call.ChangeAvailability(connector_id=0, type="Inoperative"))
    assert result.status == "Scheduled"
    assert rig.status == "Charging"
    mark = rig.central.mark()
    assert (await rig.command(call.RemoteStopTransaction(transaction_id=tx_id))).status == (
        "Accepted"
    )
    await call_advancing(rig, "StopTransaction", since=mark)
    await rig.until(lambda: rig.status == "Unavailable")


# ---------------------------------------------------------------- RemoteStartTransaction


async def test_remote_start_with_connector_id_without_authorisation(rig: OcppRig) -> None:
    mark = rig.central.mark()
    tx_id = await rig.start_transaction()
    assert rig.calls("Authorize", since=mark) == []  # AuthorizeRemoteTxRequests false
    assert rig.central.transactions[tx_id].id_tag == CARD
    assert rig.connector.transaction is not None


async def test_remote_start_authorises_first_when_asked_to(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "true"}) as rig:
        await rig.plug()
        mark = cs.mark()
        assert await rig.remote_start(OTHER, connector_id=1) == "Accepted"
        authorize = await rig.call_of("Authorize", since=mark)
        start = await rig.call_of("StartTransaction", since=mark)
        assert authorize.seq < start.seq
        assert authorize.payload == {"idTag": OTHER}


async def test_remote_start_refused_tag_starts_nothing(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "true"}) as rig:
        await rig.plug()
        mark = cs.mark()
        assert await rig.remote_start("DEADBEEF", connector_id=1) == "Accepted"
        await rig.call_of("Authorize", since=mark)
        # The CS's answer is read by the charge point in real time, not in simulated time.
        refused = await rig.event("remote_start", lambda f: f["id_tag"] == "DEADBEEF")
        assert refused == {"id_tag": "DEADBEEF", "connector_id": 1, "status": "Invalid"}
        await rig.run(1)
        assert rig.connector.transaction is None
        assert rig.calls("StartTransaction", since=mark) == []


async def test_remote_start_without_connector_id_picks_a_free_connector(rig: OcppRig) -> None:
    await rig.plug()
    mark = rig.central.mark()
    assert await rig.remote_start() == "Accepted"
    start = await rig.call_of("StartTransaction", since=mark)
    assert start.payload["connectorId"] == 1


@pytest.mark.parametrize("connector_id", [0, 2])
async def test_remote_start_on_connector_0_or_unknown_is_rejected(
    rig: OcppRig, connector_id: int
) -> None:
    assert await rig.remote_start(connector_id=connector_id) == "Rejected"


async def test_remote_start_rejected_while_busy_or_unavailable(rig: OcppRig) -> None:
    await rig.start_transaction()
    assert await rig.remote_start(OTHER, connector_id=1) == "Rejected"
    assert await rig.remote_start(OTHER) == "Rejected"  # no free connector left


async def test_remote_start_before_the_ev_waits_for_it(rig: OcppRig) -> None:
    assert await rig.remote_start(connector_id=1) == "Accepted"
    await rig.until(lambda: rig.status == "Preparing")
    mark = rig.central.mark()
    await rig.bench.plug(1)
    await rig.charging()
    await rig.call_of("StartTransaction", since=mark)


async def test_remote_start_tx_profile_limits_the_offer(rig: OcppRig) -> None:
    await rig.plug()
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
        },
    }
    assert await rig.remote_start(connector_id=1, charging_profile=profile) == "Accepted"
    await rig.charging()
    await rig.until(lambda: rig.connector.offered_a == 10.0)
    assert rig.sim.pins.pilot_duty == pytest.approx(10 / 60, abs=0.001)


async def test_remote_start_profile_with_wrong_purpose_is_rejected(rig: OcppRig) -> None:
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
        },
    }
    assert await rig.remote_start(connector_id=1, charging_profile=profile) == "Rejected"


# ---------------------------------------------------------------- RemoteStopTransaction


async def test_remote_stop_stops_with_reason_remote(rig: OcppRig) -> None:
    tx_id = await rig.start_transaction()
    mark = rig.central.mark()
    result = await rig.command(call.RemoteStopTransaction(transaction_id=tx_id))
    assert result.status == "Accepted"
    stop = await call_advancing(rig, "StopTransaction", since=mark)
    assert stop.payload["reason"] == "Remote"
    assert stop.payload["transactionId"] == tx_id
    conf = next(
        f for f in rig.central.frames[mark:] if f.action == "RemoteStopTransaction" and f.is_result
    )
    assert conf.seq < stop.seq  # the answer first, then the StopTransaction


async def test_remote_stop_unknown_transaction_is_rejected(rig: OcppRig) -> None:
    await rig.start_transaction()
    result = await rig.command(call.RemoteStopTransaction(transaction_id=424242))
    assert result.status == "Rejected"
    assert rig.connector.transaction is not None


# ---------------------------------------------------------------- Reset


@pytest.mark.parametrize(("kind", "reason"), [("Soft", "SoftReset"), ("Hard", "HardReset")])
async def test_reset_stops_transactions_then_restarts(rig: OcppRig, kind: str, reason: str) -> None:
    tx_id = await rig.start_transaction()
    mark = rig.central.mark()
    assert (await rig.command(call.Reset(type=kind))).status == "Accepted"
    stop = await call_advancing(rig, "StopTransaction", since=mark)
    assert (stop.payload["transactionId"], stop.payload["reason"]) == (tx_id, reason)
    await rig.central.wait_for(lambda f: f.action == "StopTransaction" and f.is_result, since=mark)
    assert rig.resets == [kind]


# ---------------------------------------------------------------- UnlockConnector


async def test_unlock_without_a_lock_is_not_supported(rig: OcppRig) -> None:
    assert (await rig.command(call.UnlockConnector(connector_id=1))).status == "NotSupported"
    assert (await rig.command(call.UnlockConnector(connector_id=5))).status == "NotSupported"


async def answered_as_time_passes(rig: OcppRig, payload: Any) -> Any:
    """The CS's command answered while simulated time moves on (an unlock waits for the
    soft stop to open the contactor)."""
    answer = asyncio.ensure_future(rig.command(payload))
    while not answer.done():
        await rig.clock.advance(0.05)
        await asyncio.wait([answer], timeout=0.01)
    return answer.result()


async def test_unlock_stops_the_transaction_and_releases(cs: CentralSystem, tmp_path: Path) -> None:
    lock = {"lock": {"enabled": True}, "meter": {"port": 0, "poll_interval_s": 1.0}}
    async with ocpp_rig(
        cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}, connectors=[lock]
    ) as rig:
        await rig.start_transaction()
        assert rig.sim.pins.locked
        mark = cs.mark()
        result = await answered_as_time_passes(rig, call.UnlockConnector(connector_id=1))
        assert result.status == "Unlocked"
        stop = await rig.call_of("StopTransaction", since=mark)
        assert stop.payload["reason"] == "UnlockCommand"
        assert not rig.sim.pins.locked


async def test_unlock_jammed_lock_fails(cs: CentralSystem, tmp_path: Path) -> None:
    lock = {"lock": {"enabled": True}, "meter": {"port": 0, "poll_interval_s": 1.0}}
    async with ocpp_rig(
        cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}, connectors=[lock]
    ) as rig:
        await rig.start_transaction()
        assert rig.sim.pins.locked
        rig.sim.pins.lock_jam(True)
        result = await answered_as_time_passes(rig, call.UnlockConnector(connector_id=1))
        assert result.status == "UnlockFailed"
        assert rig.sim.pins.locked
