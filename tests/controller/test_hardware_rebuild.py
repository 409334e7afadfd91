"""A Reset rebuilds every device on the same pins (hardware.build after Parts.shutdown).

The garbage collector may run at any allocation of the rebuild; when it frees the
previous build's closed shared SPI interface and bus (gpiozero keeps them in reference
cycles), the rebuild must still get one bus per SPI clock pin (see hal/adc.py)."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.controller import hardware
from evsed.hal.adc import AdcChannel
from tests.support.bench_rig import bench_config
from tests.support.clock import FakeClock


def test_a_rebuild_survives_a_collection_between_its_adc_channels(
    mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = bench_config()
    clock = FakeClock()
    hardware.build(config, clock, pin_factory=mock_factory).shutdown()

    opened: list[AdcChannel] = []

    def channel(*args: Any, **kwargs: Any) -> AdcChannel:
        made = AdcChannel(*args, **kwargs)
        opened.append(made)
        if len(opened) == 1:
            gc.collect()  # here: after the rebuild's first channel opened the bus
        return made

    monkeypatch.setattr(hardware, "AdcChannel", channel)
    gc.disable()  # no collection before the one above
    try:
        parts = hardware.build(config, clock, pin_factory=mock_factory)  # GPIOPinInUse
    finally:
        gc.enable()
    assert len(opened) >= 2  # pilot sense and at least one more channel on the bus
    parts.shutdown()
