"""The OCPP session alone against the embedded Central System: `rig` builds an OcppContext
(store, keys, queue) and an OcppSession with a minimal charge point, no charger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.clock import SystemClock
from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.config import Config
from evsed.controller.connector.status import ChargePointStatus, ConnectorStatus
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.ocpp16.protocol import StrictChargePoint
from evsed.controller.ocpp16.session import Backoff, OcppSession
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem

CP = "CP_SESSION"


class MiniCP(StrictChargePoint):
    """Just enough CS->CP handling to show the session answers the CS while Pending."""

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(configuration_key=[], unknown_key=key or [])


def mini_factory(cp_id: str, connection: Any) -> StrictChargePoint:
    return MiniCP(cp_id, connection, response_timeout=30)


@dataclass
class FakeConnector:
    status: ConnectorStatus = field(
        default_factory=lambda: ConnectorStatus(ChargePointStatus.AVAILABLE)
    )


@dataclass
class FakeCharger:
    connectors: dict[int, FakeConnector] = field(
        default_factory=lambda: {1: FakeConnector(), 2: FakeConnector()}
    )
    reader_faulted: bool = False

    # The ChargePointPort members the session reads (with reader_faulted).
    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self.connectors)

    def status(self, connector_id: int) -> ConnectorStatus:
        return self.connectors[connector_id].status


class FakeAuthorizer:
    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, Any]]] = []

    def update_from(self, id_tag: str, info: dict[str, Any]) -> None:
        self.updates.append((id_tag, dict(info)))


class Events:
    """ctx observer: every emitted event, awaitable."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.items: list[tuple[str, dict[str, Any], float]] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        self.items.append((name, fields, self.clock.monotonic()))
        self._changed.set()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for n, f, _ in self.items if n == name]

    async def wait(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Rig:
    cs: CentralSystem
    clock: Any
    store: Store
    keys: ConfigurationKeys
    txqueue: TxQueue
    ctx: OcppContext
    session: OcppSession
    events: Events
    charger: FakeCharger | None


def make_context(
    tmp_path: Path,
    cs_config: CentralSystemConfig,
    *,
    clock: Any = None,
    keys: dict[str, str] | None = None,
    charger: FakeCharger | None = None,
    authorizer: Any = None,
) -> OcppContext:
    store = Store(tmp_path / "evsed.db")
    ckeys = ConfigurationKeys(
        store,
        number_of_connectors=2,
        supported_feature_profiles=["Core"],
        overrides=keys or {},
    )
    return OcppContext(
        config=Config(central_system=cs_config),
        clock=clock or SystemClock(),
        store=store,
        keys=ckeys,
        txqueue=TxQueue.from_keys(store, ckeys),
        charger=charger,  # type: ignore[arg-type]
        authorizer=authorizer,
    )


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.01, max_s=0.08, jitter=0.2, rng=lambda: 0.5)


@asynccontextmanager
async def rig(
    tmp_path: Path,
    cs: CentralSystem,
    *,
    clock: Any = None,
    keys: dict[str, str] | None = None,
    charger: FakeCharger | None = None,
    authorizer: Any = None,
    start: bool = True,
    cs_config: CentralSystemConfig | None = None,
    **options: Any,
) -> AsyncIterator[Rig]:
    cfg = cs_config or CentralSystemConfig(url=cs.url, charge_point_id=CP)
    ctx = make_context(
        tmp_path, cfg, clock=clock, keys=keys, charger=charger, authorizer=authorizer
    )
    events = Events(ctx.clock)
    ctx.observers.append(events)
    options.setdefault("backoff", fast_backoff())
    options.setdefault("response_timeout", 2.0)
    session = OcppSession(ctx, mini_factory, **options)
    r = Rig(cs, ctx.clock, ctx.store, ctx.keys, ctx.txqueue, ctx, session, events, charger)
    if start:
        session.start()
    try:
        yield r
    finally:
        await session.stop()
        ctx.store.close()
