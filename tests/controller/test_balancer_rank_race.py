"""A newcomer ranks newest in the load balancer's order even when a grid poll lands between
the safety core opening its transaction and the phase event reaching the charger (safety
review of issue 14): `started_at` was set by that event only, so a poll in between ranked
the newcomer by a stale value (0, or its last session's start) as the oldest; crowded, the
older connector then paused and waited out the 30 s resume hold.

The race is made deterministic: the start hook runs when the core has opened the
transaction and before its phase event is delivered; a grid poll is let in right there.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

from evsed.controller.config import parse
from evsed.controller.connector.hooks import Transaction
from evsed.controller.run import Stack
from evsed.hal.types import MeterSample
from tests.support.clock import FakeClock

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "sim-two-connectors.toml"


def two_connectors(state_dir: Path) -> Stack:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["state_dir"] = str(state_dir)
    data["authorization"] = {"free_vend": True}
    data["bench"].update(control_port=0, ev_delay_s=0.5)
    data["grid"]["meter"]["port"] = 0
    for connector in data["connectors"]:
        connector["meter"]["port"] = 0
    return Stack(parse(data), clock=FakeClock(), control=False)


async def test_a_grid_poll_before_the_phase_event_ranks_the_newcomer_newest(
    tmp_path: Path,
) -> None:
    stack = two_connectors(tmp_path)
    clock = stack.clock
    assert isinstance(clock, FakeClock)
    await stack.start()
    try:
        charger = stack.charger
        assert charger is not None and stack.bench is not None
        await stack.bench.plug(1)
        for _ in range(500):
            if charger.connector(1).transaction is not None:
                break
            await clock.advance(0.01)
        await clock.advance(5)
        ranks: list[dict[int, float]] = []
        hooks = charger._hooks
        real = hooks.transaction_started

        def started(tx: Transaction) -> Transaction:
            if tx.connector_id == 2:
                # A grid poll lands now: the core has opened the transaction, the charger
                # has not heard of its phase yet.
                charger._on_grid(MeterSample(current_a=(10.0, 10.0, 10.0)))
                ranks.append({c: charger._slots[c].started_at for c in (1, 2)})
            return real(tx)

        hooks.transaction_started = started  # type: ignore[method-assign]
        await stack.bench.plug(2)
        for _ in range(500):
            if ranks:
                break
            await clock.advance(0.01)
            await asyncio.sleep(0)
        assert ranks, "connector 2 never started"
        assert ranks[0][2] > ranks[0][1]  # the newcomer is the newest, not the oldest
        assert charger._slots[2].started_at == ranks[0][2]  # and stays so after its event
    finally:
        await stack.stop()
