"""`evsed status` as a new user reads it: nothing shown as measured that is not known, every
fault with the way it clears, and times in a readable form."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from evsed.controller import status
from evsed.controller.connector.faults import RULES, Fault
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


def _snap(stack: Stack) -> dict:
    snap = status.snapshot(stack, status.LinkTracker(stack.config, stack.clock))
    return json.loads(json.dumps(snap, allow_nan=False))


async def test_drawn_current_and_power_are_unknown_while_the_meter_is_faulted(
    stack: Stack,
) -> None:
    """Fails without the change: the meter's last sample (16 A, 11 kW) was shown as what
    the EV draws while the meter did not answer."""
    assert stack.charger is not None
    connector = stack.charger.connector(1)
    connector.on_meter_sample(
        MeterSample(current_a=(16.0, 16.0, 16.0), power_total_w=11040.0, energy_import_wh=500.0)
    )
    assert _snap(stack)["connectors"][0]["drawn_a"] == 16.0
    connector.raise_fault(Fault.METER, "no answer")
    c1 = _snap(stack)["connectors"][0]
    assert c1["faults"] == ["meter"]
    assert c1["drawn_a"] is None and c1["power_w"] is None
    assert c1["energy_wh"] == 500.0  # the register last read: still the transaction's
    table = status.format_table(_snap(stack))
    row = next(line for line in table.splitlines() if line.startswith("1 "))
    assert "16.0 A" not in row and "11040 W" not in row
    assert "while the meter does not answer: unknown" in table


def _table_with(faults: list[str], **cs: object) -> str:
    return status.format_table(
        {
            "time": "2026-12-04T19:27:50.100000+00:00",
            "central_system": {
                "configured": True,
                "online": False,
                "connected": False,
                "since": "2026-12-04T19:24:45.758599+00:00",
                "last_error": "connection refused",
                "url": "ws://127.0.0.1:9000/ocpp/CP-SIM-1",
                **cs,
            },
            "queue_depth": 0,
            "connectors": [
                {
                    "id": 1,
                    "status": "Faulted" if faults else "Available",
                    "error_code": "GroundFailure" if faults else "NoError",
                    "pilot": "B",
                    "offered_a": 0.0,
                    "drawn_a": None,
                    "power_w": None,
                    "energy_wh": 0.0,
                    "faults": faults,
                    "transaction": None,
                    "limit": {"amps": 32.0, "suspended": False, "reason": "hardware"},
                }
            ],
        }
    )


def test_each_fault_says_how_it_clears() -> None:
    """Fails without the change: "connector 1 faults: meter, rcd", and the user waited
    for the rcd fault to go away by itself (it clears on unplug or a reset)."""
    table = _table_with(["contactor_welded", "meter", "rcd"])
    lines = table.splitlines()
    assert "  meter: clears by itself when the meter answers again" in lines
    assert (
        "  rcd: clears when the EV is unplugged, or by a Reset from the Central System or a "
        "restart of evsed" in lines
    )
    assert (
        "  contactor_welded: clears only by a Reset from the Central System or a restart of "
        "evsed" in lines
    )


@pytest.mark.parametrize("fault", list(Fault))
def test_every_fault_has_a_clearing_text(fault: Fault) -> None:
    text = status.how_it_clears(str(fault))
    assert text.startswith("clears "), text
    assert ("unplugged" in text) == any(str(c) == "unplug" for c in RULES[fault].clears_on)


def test_since_is_a_readable_time_with_how_long_ago() -> None:
    """Fails without the change: "offline since 2026-12-04T19:24:45.758599+00:00"."""
    first = _table_with([]).splitlines()[0]
    assert first == (
        "Central System: offline since 2026-12-04 19:24:45 UTC (3 min 4 s ago) "
        "(last error: connection refused)"
    )
    other_zone = _table_with([], since="2026-12-04T20:24:45+01:00").splitlines()[0]
    assert "since 2026-12-04 19:24:45 UTC (3 min 5 s ago)" in other_zone
    assert status.readable_since("2026-12-01T19:24:45+00:00", "2026-12-04T19:24:45+00:00") == (
        "2026-12-01 19:24:45 UTC (3 days ago)"
    )
