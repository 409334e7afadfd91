"""`evsed status --json` gives readings as a meter resolves them, and valid JSON always.

The bench's three phase powers summed to 22080.000000000004 W in the snapshot; a meter that
could not read a value (NaN) made `json.dumps` write `NaN`, which no JSON parser reads."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import pytest

from evsed.controller import status
from evsed.controller.run import Stack
from evsed.hal.types import MeterSample
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    stack = Stack(bench_config(), clock=FakeClock(), control=False)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def _connector_json(stack: Stack) -> dict[str, object]:
    snap = status.snapshot(stack, status.LinkTracker(stack.config, stack.clock))
    # As `evsed status --json` sends it: strict JSON, parsed back.
    return json.loads(json.dumps(snap, allow_nan=False))["connectors"][0]


async def test_readings_are_rounded_to_what_a_meter_resolves(stack: Stack) -> None:
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    connector.on_meter_sample(
        MeterSample(
            current_a=(0.1 + 0.2, 0.3, 0.29),
            power_w=(7360.1, 7360.2, 7360.3),
            power_total_w=7360.1 + 7360.2 + 7360.3,  # 22080.600000000002
            energy_import_wh=1000.1 + 0.2,  # 1000.3000000000001
        )
    )
    one = _connector_json(stack)
    assert one["power_w"] == 22080.6
    assert one["energy_wh"] == 1000.3
    assert one["drawn_a"] == 0.3


async def test_a_value_the_meter_could_not_read_is_null_not_nan(stack: Stack) -> None:
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    connector.on_meter_sample(MeterSample(current_a=(math.nan, 6.0, None), power_total_w=math.nan))
    one = _connector_json(stack)  # allow_nan=False: raises on a NaN
    assert one["power_w"] is None
    assert one["drawn_a"] == 6.0
