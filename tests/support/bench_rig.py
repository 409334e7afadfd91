"""A whole charger on the simulated bench, driven by a FakeClock: deterministic and fast."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from evsed.controller.config import Config, parse
from evsed.controller.connector.machine import Connector
from evsed.controller.run import Stack
from tests.support.clock import FakeClock

TICK_S = 0.01
#: Real seconds `Rig.until` gives a predicate once its simulated bound has passed.
REAL_GRACE_S = 5.0
#: How often that grace looks at the predicate (real time; no clock moves meanwhile).
GRACE_POLL_S = 0.005


def bench_config(**sections: Any) -> Config:
    data: dict[str, Any] = {
        "bench": {"control_port": 0, "ev_delay_s": 0.5},
        "connectors": [{"meter": {"port": 0, "poll_interval_s": 1.0}}],
        "authorization": {"local_tags": ["AABBCCDDEE"]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse(data)


async def first_meter_readings(stack: Stack, timeout: float = 5.0) -> None:
    """Wait (real time, bounded) until every connector with a meter has its first reading.

    A start before it waits for one (and is refused without one), while the meter answers
    over a real socket: a test that starts a session at once would race its simulated
    clock against that socket. A rig starts from a charger that has read its meters."""
    assert stack.charger is not None
    for connector in stack.charger.connectors.values():
        if not connector.settings.has_meter or connector.last_energy_wh is not None:
            continue
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def listener(kind: str, fields: dict[str, object], fut: asyncio.Future[None] = fut) -> None:
            if kind == "meter" and fields.get("energy_wh") is not None and not fut.done():
                fut.set_result(None)

        connector.add_listener(listener)
        await asyncio.wait_for(fut, timeout)


@dataclass
class Rig:
    stack: Stack
    clock: FakeClock
    notes: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    @property
    def bench(self) -> Any:
        return self.stack.bench

    @property
    def connector(self) -> Connector:
        assert self.stack.charger is not None
        return self.stack.charger.connector(1)

    @property
    def sim(self) -> Any:
        return self.bench.sim(1)

    @property
    def status(self) -> str:
        return str(self.connector.status.status)

    async def run(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass (sampler, limiter, EV all follow)."""
        await self.clock.advance(seconds)

    async def until(self, pred: Callable[[], bool], within_s: float = 5.0) -> float:
        """Advance simulated time tick by tick until `pred()`; returns the time it took.

        Simulated time stops at `within_s`; what `pred` still waits for then can only be
        real (a socket, a thread: the Central System's answer crossing loopback), so it gets
        up to `REAL_GRACE_S` of real time at that simulated instant before this fails. Under
        load, 100 ticks of a few loop turns each passed before an answer on loopback was
        read: test_http_download_then_install failed 5 runs in 24 with load 6."""
        start = self.clock.monotonic()
        while not pred():
            if self.clock.monotonic() - start > within_s:
                await _real_grace(pred)
                if not pred():
                    raise AssertionError(f"not within {within_s} s of simulated time")
                break
            await self.clock.advance(TICK_S)
        return self.clock.monotonic() - start

    async def note(
        self,
        kind: str,
        pred: Callable[[dict[str, object]], bool] = lambda _: True,
        *,
        timeout: float = 3.0,
    ) -> dict[str, object]:
        """Wait (real time) for the connector to report `kind`: for what moves in real time,
        a reader thread or a socket, not the simulated clock."""
        fut: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

        def listener(k: str, fields: dict[str, object]) -> None:
            if k == kind and pred(fields) and not fut.done():
                fut.set_result(fields)

        self.connector.add_listener(listener)
        return await asyncio.wait_for(fut, timeout)

    async def meter_sample(self) -> dict[str, object]:
        """Let the poller's interval pass, then wait for the sample it fetches."""
        waiting = asyncio.ensure_future(self.note("meter"))
        await self.clock.advance(1.0)
        return await waiting

    async def until_note(
        self,
        kind: str,
        pred: Callable[[dict[str, object]], bool] = lambda _: True,
        *,
        step_s: float = 1.0,
        timeout: float = 15.0,
    ) -> dict[str, object]:
        """Advance simulated time step by step until the connector reports `kind`; for what
        needs both simulated time (a poll interval) and real I/O (the meter's socket)."""
        waiting = asyncio.ensure_future(self.note(kind, pred, timeout=timeout))
        while not waiting.done():
            await self.clock.advance(step_s)
            await asyncio.wait([waiting], timeout=0.05)
        return waiting.result()

    def kinds(self, kind: str) -> list[dict[str, object]]:
        return [f for k, f in self.notes if k == kind]


#: Builds a started bench Stack on a FakeClock with `bench_config(**sections)`, as a Rig
#: that records the connector's notes (the `make_rig` fixture of tests/controller/conftest.py).
MakeRig = Callable[..., Awaitable[Rig]]


async def _real_grace(pred: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAL_GRACE_S
    while not pred() and loop.time() < deadline:  # noqa: ASYNC110 (no event to wait on)
        # A bounded look at a predicate that no event announces (the store, a status):
        # the simulated clock stays where the bound put it.
        await asyncio.sleep(GRACE_POLL_S)
