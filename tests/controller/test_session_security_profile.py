"""SecurityProfile tells the truth (issue 14 item 7; Security Whitepaper ed. 2 §2): it reads
the profile in effect, a downgrade is Rejected, and an accepted raise reconnects with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evsed.controller.clock import SystemClock
from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.config import Config
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.protocol import StrictChargePoint
from evsed.controller.ocpp16.session import OcppSession
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem
from tests.support.session_rig import CP, Events, fast_backoff

KEY = "0123456789abcdef-secret"


class KeysCP(StrictChargePoint):
    """GetConfiguration / ChangeConfiguration answered from the session's keys."""

    keys: ConfigurationKeys

    @on(Action.get_configuration)
    def on_get(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        found, unknown = self.keys.get(key)
        return call_result.GetConfiguration(configuration_key=found, unknown_key=unknown)

    @on(Action.change_configuration)
    def on_change(self, key: str, value: str) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status=self.keys.change(key, value).value)


def keys_for(store: Store, profile: int) -> ConfigurationKeys:
    return ConfigurationKeys(
        store, number_of_connectors=1, supported_feature_profiles=["Core"], security_profile=profile
    )


@asynccontextmanager
async def session_at(
    tmp_path: Path, cs: CentralSystem, profile: int, key: str = ""
) -> AsyncIterator[tuple[OcppSession, ConfigurationKeys, Events]]:
    cfg = CentralSystemConfig(
        url=cs.url, charge_point_id=CP, security_profile=profile, authorization_key=key
    )
    store = Store(tmp_path / "evsed.db")
    keys = keys_for(store, profile)
    clock = SystemClock()
    ctx = OcppContext(
        config=Config(central_system=cfg),
        clock=clock,
        store=store,
        keys=keys,
        txqueue=TxQueue.from_keys(store, keys),
    )
    events = Events(clock)
    ctx.observers.append(events)

    def factory(cp_id: str, connection: Any) -> StrictChargePoint:
        cp = KeysCP(cp_id, connection, response_timeout=30)
        cp.keys = keys
        return cp

    session = OcppSession(ctx, factory, backoff=fast_backoff(), response_timeout=2.0)
    session.start()
    try:
        yield session, keys, events
    finally:
        await session.stop()
        store.close()


async def security_profile_read(cs: CentralSystem) -> str:
    result = await cs.call(CP, call.GetConfiguration(key=["SecurityProfile"]))
    [entry] = result.configuration_key
    return str(entry["value"])


async def test_security_profile_reads_the_profile_in_effect_and_refuses_a_downgrade(
    tmp_path: Path,
) -> None:
    async with CentralSystem(passwords={CP: KEY}) as cs:
        async with session_at(tmp_path, cs, 1, KEY) as (session, _keys, _events):
            await session.wait_online(5)
            assert session.profile_in_use == 1
            assert await security_profile_read(cs) == "1"
            for lower in ("0", "1"):
                answer = await cs.call(
                    CP, call.ChangeConfiguration(key="SecurityProfile", value=lower)
                )
                expected = "Rejected" if lower == "0" else "Accepted"  # "1" changes nothing
                assert answer.status == expected
            assert await security_profile_read(cs) == "1"
            assert session.online and cs.connect_counts[CP] == 1


def test_a_configuration_raised_since_wins_over_a_lower_stored_value(tmp_path: Path) -> None:
    store = Store(tmp_path / "evsed.db")
    try:
        keys = keys_for(store, 0)
        assert keys.change("AuthorizationKey", KEY).value == "Accepted"
        assert keys.change("SecurityProfile", "1").value == "Accepted"
        assert keys_for(store, 0).value("SecurityProfile") == "1"  # the CS's raise is kept
        # The operator raised the configuration to 2 out of band: 2 is in effect.
        assert keys_for(store, 2).value("SecurityProfile") == "2"
        assert keys_for(store, 2).change("SecurityProfile", "1").value == "Rejected"
    finally:
        store.close()


async def test_an_accepted_raise_reconnects_with_the_new_profile(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        async with session_at(tmp_path, cs, 0) as (session, _keys, events):
            await session.wait_online(5)
            assert await security_profile_read(cs) == "0"
            answer = await cs.call(CP, call.ChangeConfiguration(key="AuthorizationKey", value=KEY))
            assert answer.status == "Accepted"
            cs.passwords = {CP: KEY}  # from now on the CS wants Basic auth
            answer = await cs.call(CP, call.ChangeConfiguration(key="SecurityProfile", value="1"))
            assert answer.status == "Accepted"
            await events.wait(lambda: len(events.named("online")) == 2)
            assert session.profile_in_use == 1
            assert cs.handshakes[-1].authorization is not None
            assert cs.handshakes[-1].status == 101
            assert await security_profile_read(cs) == "1"
            assert len(cs.boots) == 1  # a reconnect, not a reboot
            answer = await cs.call(CP, call.ChangeConfiguration(key="SecurityProfile", value="0"))
            assert answer.status == "Rejected"
