"""The feature-profile declarations and what is derived from them: SupportedFeatureProfiles,
the NotSupported / NotImplemented routing and the key registry's profile tags."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from ocpp.routing import create_route_map, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from evsed.controller.ocpp16 import keys as keys_module
from evsed.controller.ocpp16.auth import Authorizer
from evsed.controller.ocpp16.chargepoint import EvsedChargePoint
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.profiles import (
    FEATURE_PROFILE_NAMES,
    KEY_REGISTRY,
    KNOWN_ACTIONS,
    PROFILES,
    SUPPORTED_ACTIONS,
    SUPPORTED_FEATURE_PROFILES,
    core,
)
from evsed.controller.ocpp16.protocol import StrictChargePoint, websocket_options
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock

CP_ID = "CP-PROFILES"

MODULES = {
    "core": "Core",
    "smart_charging": "SmartCharging",
    "firmware": "FirmwareManagement",
    "local_list": "LocalAuthListManagement",
    "reservation": "Reservation",
    "remote_trigger": "RemoteTrigger",
    "security": "Security",
}


def test_one_module_per_profile_and_nothing_else_declares() -> None:
    import evsed.controller.ocpp16.profiles as package

    assert [p.name for p in PROFILES] == list(MODULES.values())
    for module, name in MODULES.items():
        assert getattr(package, module).PROFILE.name == name


def test_every_action_is_declared_by_exactly_one_profile_per_direction() -> None:
    assert {a.value for a in Action} == KNOWN_ACTIONS
    for direction in ("cs_to_cp", "cp_to_cs"):
        seen: dict[str, str] = {}
        for profile in PROFILES:
            for action in getattr(profile, direction):
                assert action not in seen, f"{action} in {seen.get(action)} and {profile.name}"
                seen[action] = profile.name
    # DataTransfer is the one action both sides send (OCPP 1.6 §4.3, §5.6).
    both = set.intersection(
        set().union(*(p.cs_to_cp for p in PROFILES)), set().union(*(p.cp_to_cs for p in PROFILES))
    )
    assert both == {"DataTransfer"}


def test_exactly_the_profiles_with_handlers_are_supported() -> None:
    implemented = [p for p in PROFILES if p.implemented and p.advertised]
    assert SUPPORTED_FEATURE_PROFILES == tuple(p.name for p in implemented)
    assert SUPPORTED_FEATURE_PROFILES[0] == "Core"
    assert "RemoteTrigger" in SUPPORTED_FEATURE_PROFILES
    assert SUPPORTED_ACTIONS == frozenset().union(*(p.cs_to_cp for p in PROFILES if p.implemented))
    assert core.PROFILE.cs_to_cp <= SUPPORTED_ACTIONS
    for p in PROFILES:
        if not p.implemented:  # declared only: none of its actions is routed
            assert not (p.cs_to_cp & SUPPORTED_ACTIONS)
    assert FEATURE_PROFILE_NAMES == set(MODULES.values()) - {"Security"}


def test_key_registry_is_the_union_of_the_declarations_with_their_tags() -> None:
    assert keys_module.REGISTRY == KEY_REGISTRY
    names = [k.name for k in KEY_REGISTRY]
    assert len(names) == len(set(names))
    for profile in PROFILES:
        for spec in profile.keys:
            assert spec.profile == profile.name
    by_profile = {p.name: {k.name for k in p.keys} for p in PROFILES}
    assert by_profile["RemoteTrigger"] == set()
    assert "LocalAuthListEnabled" in by_profile["LocalAuthListManagement"]
    assert "ChargeProfileMaxStackLevel" in by_profile["SmartCharging"]
    assert "SecurityProfile" in by_profile["Security"]


def test_each_handler_object_routes_exactly_its_profiles_actions(tmp_path: Path) -> None:
    for profile in PROFILES:
        if profile.handlers is None:
            continue
        handler = profile.handlers(_ctx(tmp_path))
        routed = {a for a, r in create_route_map(handler).items() if "_on_action" in r}
        assert routed == profile.cs_to_cp, profile.name


def test_add_handlers_refuses_an_action_routed_twice() -> None:
    class Twice:
        @on(Action.reset)
        def on_reset(self, type: str) -> call_result.Reset:
            return call_result.Reset(status="Accepted")

    cp = StrictChargePoint("x", connection=None)
    cp.add_handlers(Twice())
    assert cp.is_supported("Reset")
    with pytest.raises(ValueError, match="Reset is routed twice"):
        cp.add_handlers(Twice())


def test_configuration_keys_derive_supported_feature_profiles(tmp_path: Path) -> None:
    keys = ConfigurationKeys(Store(tmp_path / "k.db"), number_of_connectors=1)
    assert keys.value("SupportedFeatureProfiles") == ",".join(SUPPORTED_FEATURE_PROFILES)
    off = [p for p in PROFILES if p.advertised and not p.implemented and p.keys]
    for p in off:  # declared, its profile is off: its keys are not
        assert not keys.is_supported(p.keys[0].name)
    assert keys.is_supported("SecurityProfile")  # the extension's keys are always on
    with pytest.raises(ValueError, match="SupportedFeatureProfiles"):
        ConfigurationKeys(
            Store(tmp_path / "k2.db"),
            number_of_connectors=1,
            supported_feature_profiles=["Core", "Security"],  # not a feature profile
        )


# ---------------------------------------------------------------- on the wire


def _ctx(tmp_path: Path) -> OcppContext:
    clock = FakeClock()
    store = Store(tmp_path / f"evsed-{id(clock)}.db")
    keys = ConfigurationKeys(store, number_of_connectors=1)

    async def no_cs(_tag: str) -> None:
        return None

    ctx = OcppContext(
        config=bench_config(),
        clock=clock,
        store=store,
        keys=keys,
        txqueue=TxQueue.from_keys(store, keys),
    )
    ctx.authorizer = Authorizer(store, keys, clock, online=lambda: False, send_authorize=no_cs)
    return ctx


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as cs:
        ctx = _ctx(tmp_path)
        async with connect(f"{cs.url}/{CP_ID}", **websocket_options()) as ws:
            cp = EvsedChargePoint(CP_ID, ws, ctx, response_timeout=2)
            task = asyncio.create_task(cp.start())
            await cs.wait_connected(CP_ID)
            try:
                yield cs
            finally:
                task.cancel()
                cp.cancel_background_tasks()
                with suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
        ctx.store.close()


async def _reply(cs: CentralSystem, action: str, payload: str = "{}") -> Any:
    mark = cs.mark()
    uid = f"u-{action}"[:36]
    await cs.send_raw(CP_ID, f'[2,"{uid}","{action}",{payload}]')
    return await cs.wait_for_reply(uid, since=mark)


DECLARED_ONLY = sorted(a for p in PROFILES if not p.implemented for a in p.cs_to_cp) + sorted(
    core.PROFILE.cp_to_cs - {"DataTransfer"}
)


@pytest.mark.parametrize("action", DECLARED_ONLY)
async def test_declared_but_unimplemented_actions_answer_not_supported(
    wire: CentralSystem, action: str
) -> None:
    reply = await _reply(wire, action)
    assert reply.is_error and reply.error_code == "NotSupported"


async def test_an_action_no_profile_declares_is_not_implemented(wire: CentralSystem) -> None:
    reply = await _reply(wire, "GetVariables")  # OCPP 2.0.1, not 1.6
    assert reply.is_error and reply.error_code == "NotImplemented"


async def test_supported_feature_profiles_on_the_wire(wire: CentralSystem) -> None:
    got = await wire.call(CP_ID, call.GetConfiguration(key=["SupportedFeatureProfiles"]), timeout=5)
    assert got.configuration_key[0]["value"] == ",".join(SUPPORTED_FEATURE_PROFILES)
