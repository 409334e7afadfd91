"""`evsed demo --json` rounds its meter readings as `evsed status --json` does.

A new user saw `"power_w": 22066.19921875` and `"energy_wh": 0.1397440064465627` in the
demo's lines while `evsed status --json` showed 22066.2 and 0.1: one rule, shared."""

from __future__ import annotations

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
