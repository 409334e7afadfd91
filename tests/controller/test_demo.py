"""`evsed demo --json` end to end: one real subprocess, every line JSON, the session right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_lines() -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", "demo", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def first(lines: list[dict[str, Any]], kind: str, after: int = -1, **match: Any) -> int:
    for i, line in enumerate(lines):
        if i > after and line["kind"] == kind and all(line.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {kind} {match} in the timeline")


def test_every_line_is_an_event_with_time_and_kind(demo_lines: list[dict[str, Any]]) -> None:
    assert all(isinstance(line["t"], float | int) and line["kind"] for line in demo_lines)
    times = [line["t"] for line in demo_lines]
    assert times == sorted(times)


def test_summary(demo_lines: list[dict[str, Any]]) -> None:
    summary = demo_lines[-1]
    assert summary["kind"] == "summary"
    assert summary["energy_wh"] > 0
    assert summary["transactions"] == 1
    assert summary["max_reaction_ms"] < 100
    assert len(summary["reactions_ms"]) == 2  # the EV's pause and the unplug


def test_session_order(demo_lines: list[dict[str, Any]]) -> None:
    card = first(demo_lines, "card")
    started = first(demo_lines, "transaction_started")
    charging = first(demo_lines, "status", status="Charging")
    limit = first(demo_lines, "step", what="smart-charging limit 10 A")
    duty_10 = first(demo_lines, "duty", amps=10.0)
    stopped = first(demo_lines, "transaction_stopped")
    assert card < started < charging < limit < duty_10 < stopped
    # The EV's own pause, then charging again before the unplug.
    paused = first(demo_lines, "status", after=duty_10, status="SuspendedEV")
    assert paused < first(demo_lines, "status", after=paused, status="Charging") < stopped
    assert demo_lines[stopped]["reason"] == "EVDisconnected"
    assert first(demo_lines, "status", status="Available") > stopped


def test_the_ev_follows_the_lower_limit(demo_lines: list[dict[str, Any]]) -> None:
    duty_10 = first(demo_lines, "duty", amps=10.0)
    after = [
        line["current_a"]
        for line in demo_lines[duty_10:]
        if line["kind"] == "meter" and line.get("current_a")
    ]
    assert after and max(after) <= 10.5
    before = [
        line["current_a"]
        for line in demo_lines[:duty_10]
        if line["kind"] == "meter" and line.get("current_a")
    ]
    assert before and max(before) > 30


def test_the_ocpp_exchange_is_on_the_timeline(demo_lines: list[dict[str, Any]]) -> None:
    frames = [line for line in demo_lines if line["kind"] == "ocpp"]
    assert all(isinstance(f["raw"], str) for f in frames)  # --json carries the raw frames
    calls = [f["action"] for f in frames if f["direction"] == "cp->cs" and f["type"] == 2]
    assert calls[0] == "BootNotification"
    order = [a for a in calls if a in ("Authorize", "StartTransaction", "StopTransaction")]
    assert order == ["Authorize", "StartTransaction", "StopTransaction"]
    assert "MeterValues" in calls
    start_result = next(f for f in frames if f["action"] == "StartTransaction" and f["type"] == 3)
    stop = next(f for f in frames if f["action"] == "StopTransaction" and f["type"] == 2)
    assert stop["payload"]["transactionId"] == start_result["payload"]["transactionId"]
    assert stop["payload"]["reason"] == "EVDisconnected"
    summary = demo_lines[-1]
    start = next(f for f in frames if f["action"] == "StartTransaction" and f["type"] == 2)
    # Wh, not kWh: the billed energy is what the StopTransaction says.
    assert summary["energy_wh"] == stop["payload"]["meterStop"] - start["payload"]["meterStart"]
    assert summary["cs_transaction_ids"] == [start_result["payload"]["transactionId"]]
