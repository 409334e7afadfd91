"""The first status after start-up tells the truth (safety review of issue 14 #8).

A contactor welded before evsed starts reads closed although evsed never closed it. Until
the driver has judged it (its settle time), the connector must not be Available: the
Central System's first StatusNotification for it is Faulted/PowerSwitchFailure, with no
Available before it. The session connects before the simulated clock moves, so the
status read at connect is the one from before the judgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.run import Stack
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CP_ID


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as central:
        yield central


def statuses_of(cs: CentralSystem, connector_id: int) -> list[tuple[str, str]]:
    return [
        (f.payload["status"], f.payload["errorCode"])
        for f in cs.frames_of(CP_ID)
        if is_status(f, connector_id)
    ]


def is_status(f: Frame, connector_id: int) -> bool:
    return (
        f.is_call
        and f.direction is Direction.CP_TO_CS
        and f.action == "StatusNotification"
        and f.payload["connectorId"] == connector_id
    )


async def started_with(cs: CentralSystem, tmp_path: Path, clock: FakeClock, fault: str) -> Stack:
    config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
    holder: dict[str, Stack] = {}

    def before_the_charger(_app: Any) -> None:
        # The bench exists, the drivers and the charger do not yet: the fault is there
        # "at power-up", as a weld that happened while evsed was not running.
        holder["stack"].bench.sim(1).faults.add(fault)
        holder["stack"].bench.sim(1).pins.weld(True)

    stack = Stack(
        config,
        clock=clock,
        control=False,
        ocpp=True,
        ocpp_setup=before_the_charger,
        state_dir=tmp_path,
    )
    holder["stack"] = stack
    await stack.start()
    return stack


async def test_a_contactor_welded_at_start_up_is_faulted_from_the_first_status(
    cs: CentralSystem, tmp_path: Path
) -> None:
    clock = FakeClock()
    stack = await started_with(cs, tmp_path, clock, "contactor_welded")
    try:
        # No simulated time passes: the driver has not judged the weld yet.
        first = await cs.wait_for(lambda f: is_status(f, 1), timeout=5)
        assert (first.payload["status"], first.payload["errorCode"]) == (
            "Faulted",
            "PowerSwitchFailure",
        )
        for _ in range(20):  # 1 s of simulated time: judged, still Faulted, never Available
            await clock.advance(0.05)
            await asyncio.sleep(0.01)
        assert stack.charger is not None
        assert str(stack.charger.connector(1).status.status) == "Faulted"
        sent = statuses_of(cs, 1)
        assert ("Available", "NoError") not in sent, sent
        assert sent[-1] == ("Faulted", "PowerSwitchFailure")
    finally:
        await stack.stop()
