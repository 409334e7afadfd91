"""`evsed demo --json` rounds its meter readings as `evsed status --json` does.

A new user saw `"power_w": 22066.19921875` and `"energy_wh": 0.1397440064465627` in the
demo's lines while `evsed status --json` showed 22066.2 and 0.1: one rule, shared."""

from __future__ import annotations

import io
import json
import math

from evsed.controller import demo
from evsed.hal.types import MeterSample


def test_meter_lines_are_rounded_to_what_a_meter_resolves() -> None:
    sample = MeterSample(current_a=(31.98 + 1e-9, 0.1 + 0.2, None), power_total_w=22066.19921875)
    data = demo.meter_event(
        {"connector": 1, "energy_wh": 0.1397440064465627, "power_w": 22066.19921875}, sample
    )
    assert data == {"connector": 1, "energy_wh": 0.1, "power_w": 22066.2, "current_a": 31.98}


def test_a_reading_the_meter_could_not_make_is_null_not_nan() -> None:
    sample = MeterSample(current_a=(math.nan, math.nan, math.nan), power_total_w=math.nan)
    data = demo.meter_event({"energy_wh": math.nan, "power_w": math.nan}, sample)
    assert json.loads(json.dumps(data, allow_nan=False)) == {
        "energy_wh": None,
        "power_w": None,
        "current_a": None,
    }


def test_a_reading_with_load_just_after_the_contactor_opened_says_so() -> None:
    """Fails without the change: "contactor open", then "meter 6.87 kW" with no word, read
    as current still flowing after the unplug."""
    out = io.StringIO()
    emit = demo.text_printer(out)
    emit(demo.Event(10.15, "contactor", {"connector": 1, "closed": False}))
    emit(demo.Event(10.16, "meter", {"energy_wh": 23.7, "power_w": 6870.0, "current_a": 10.0}))
    emit(demo.Event(11.16, "meter", {"energy_wh": 23.8, "power_w": 6870.0, "current_a": 10.0}))
    emit(demo.Event(12.0, "contactor", {"connector": 1, "closed": True}))
    emit(demo.Event(12.1, "meter", {"energy_wh": 23.8, "power_w": 6870.0, "current_a": 10.0}))
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("23.7 Wh  (read as the contactor opened)")
    assert not any(line.endswith("opened)") for line in lines[2:])
