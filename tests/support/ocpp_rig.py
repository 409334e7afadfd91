"""The whole OCPP stack on the bench: `ocpp_rig` (bench, drivers, charger, OcppApp and
OcppSession on a FakeClock, the websocket in real time) and its `OcppRig` helpers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocpp.v16 import call

from evsed.controller.connector.sampler import Rates
from evsed.controller.ocpp16.app import OcppApp
from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.session import OcppSession
from evsed.controller.run import Stack
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.bench_rig import Rig, bench_config, first_meter_readings
from tests.support.clock import FakeClock

CP_ID = "CP-SIM-1"
CARD = "AABBCCDDEE"
OTHER = "0011223344"


@dataclass
class OcppRig(Rig):
    app: OcppApp | None = None
    cs: CentralSystem | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    emitted: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def central(self) -> CentralSystem:
        assert self.cs is not None
        return self.cs

    @property
    def ocpp(self) -> OcppApp:
        assert self.app is not None
        return self.app

    async def command(self, payload: Any) -> Any:
        return await self.central.call(CP_ID, payload, timeout=5)

    async def plug(self) -> None:
        await self.bench.plug(1)
        await self.until(lambda: self.status == "Preparing", within_s=3)

    async def charging(self) -> None:
        await self.until(lambda: self.status == "Charging", within_s=5)

    async def call_of(self, action: str, since: int = 0) -> Frame:
        return await self.central.wait_for_call(action, CP_ID, since=since)

    def calls(self, action: str, since: int = 0) -> list[Frame]:
        return [
            f
            for f in self.central.frames_of(CP_ID, since=since)
            if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
        ]

    async def answered(self, frame: Frame) -> Frame:
        """The CS's CALLRESULT to one of our CALLs."""
        return await self.central.wait_for(
            lambda f: (
                f.direction is Direction.CS_TO_CP and f.is_result and f.unique_id == frame.unique_id
            ),
            since=frame.seq,
        )

    async def event(
        self, name: str, pred: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """Wait (real time, bounded) for the OCPP layer to emit `name`: a CS frame seen at the
        CS has not necessarily been read by the charge point yet."""

        async def seen() -> dict[str, Any]:
            while True:
                for event, fields in self.events:
                    if event == name and pred(fields):
                        return fields
                self.emitted.clear()
                await self.emitted.wait()

        return await asyncio.wait_for(seen(), timeout=5)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, fields))
        self.emitted.set()

    async def remote_start(self, tag: str = CARD, **kw: Any) -> str:
        result = await self.command(call.RemoteStartTransaction(id_tag=tag, **kw))
        return str(result.status)

    async def start_transaction(self, tag: str = CARD) -> int:
        """EV plugged, remote start, StartTransaction answered: the CS's transactionId."""
        mark = self.central.mark()
        await self.plug()
        assert await self.remote_start(tag, connector_id=1) == "Accepted"
        start = await self.call_of("StartTransaction", since=mark)
        reply = await self.answered(start)
        await self.charging()
        return int(reply.payload["transactionId"])


@asynccontextmanager
async def ocpp_rig(
    cs: CentralSystem,
    state_dir: Path,
    *,
    keys: dict[str, str] | None = None,
    clock: FakeClock | None = None,
    online: bool = True,
    app_options: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[OcppRig]:
    clock = clock or FakeClock()
    central = {"url": cs.url, "charge_point_id": CP_ID, **sections.pop("central_system", {})}
    config = bench_config(central_system=central, **sections)
    # Pilot sampling at 0.1 s while charging: the safety timing is tested with the
    # connector; here it would only make an hour of charging slow to simulate.
    rates = Rates(charging_interval_s=0.1, pwm_interval_s=0.1)
    rig = OcppRig(Stack(config, clock=clock, control=False, rates=rates), clock, cs=cs)

    async def on_reset(kind: str) -> None:
        rig.resets.append(kind)

    def session(ctx: OcppContext, factory: Any, reset: Any) -> OcppSession:
        return OcppSession(ctx, factory, on_reset=reset, response_timeout=5)

    app = OcppApp(
        config, clock, state_dir, on_reset=on_reset, session_factory=session, **(app_options or {})
    )
    rig.app = app
    app.ctx.observers.append(rig.observe)
    for key, value in (keys or {}).items():
        assert app.keys.change(key, value).value == "Accepted", key
    rig.stack.hooks = app.hooks
    await rig.stack.start()
    try:
        assert rig.stack.charger is not None
        app.attach(rig.stack.charger)
        rig.connector.add_listener(lambda kind, fields: rig.notes.append((kind, fields)))
        await first_meter_readings(rig.stack)
        mark = cs.mark()
        await app.start()
        if online:
            assert isinstance(app.session, OcppSession)
            await app.session.wait_online(5)
            await _initial_statuses_answered(rig, mark)
        yield rig
    finally:
        await app.stop()
        await rig.stack.stop()
        app.close()


async def _initial_statuses_answered(rig: OcppRig, since: int) -> None:
    """Online, the session reports every connector's current status, one CALL after the
    other: a test that changed a status meanwhile raced that sequence. The reservation made
    while connector 1's first report was on its way, then cancelled before the reporter
    looked again, was never reported (the CS saw Available throughout; the test waited for
    Reserved's Available: test_cancel_reservation_accepted_then_rejected, 1 run in 9 of the
    20-run loop). The rig starts once each first report is answered. A CS that holds them
    back (reply_delays, silent_actions) is waited for no longer than a short bound."""
    assert rig.stack.charger is not None
    for cid in [0, *sorted(rig.stack.charger.connector_ids)]:
        try:
            sent = await rig.central.wait_for(
                lambda f, cid=cid: (
                    f.is_call
                    and f.direction is Direction.CP_TO_CS
                    and f.action == "StatusNotification"
                    and isinstance(f.payload, dict)
                    and f.payload.get("connectorId") == cid
                ),
                timeout=5.0,
                since=since,
            )
            await rig.central.wait_for(
                lambda f, sent=sent: (
                    f.direction is Direction.CS_TO_CP and f.unique_id == sent.unique_id
                ),
                timeout=5.0,
                since=sent.seq,
            )
        except TimeoutError:
            return  # a CS of the test's own that answers them late, or not at all


async def exchange(rig: OcppRig, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One CS->CP CALL sent as raw text, as a Central System tool writes it (camelCase, no
    library object); the CP's CALLRESULT payload."""
    unique_id = str(uuid.uuid4())
    mark = rig.central.mark()
    await rig.central.send_raw(CP_ID, json.dumps([2, unique_id, action, payload]))
    reply = await rig.central.wait_for_reply(unique_id, since=mark)
    assert reply.is_result, (action, reply.raw)
    result: dict[str, Any] = reply.payload
    return result
