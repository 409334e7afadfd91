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


def _reserved(factory: MockFactory) -> set[str]:
    """The pins some open device still holds."""
    return {
        pin.name
        for pin, reservers in factory._reservations.items()
        if any(ref() is not None for ref in reservers)
    }


def test_a_connector_that_fails_halfway_releases_what_it_opened(
    mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ADC channels, contactor and pilot of a connector whose meter fails to build are
    closed again: left open, the shared SPI interface (a reference cycle) would be
    closed by the collector in the middle of the next build, and the pins stay taken."""

    def no_meter(*_: Any) -> None:
        raise OSError("no such serial port")

    monkeypatch.setattr(hardware, "meter", no_meter)
    with pytest.raises(OSError) as failure:
        hardware.build(bench_config(), FakeClock(), pin_factory=mock_factory)
    assert _reserved(mock_factory) == set()  # while the traceback still holds the frames
    del failure
    monkeypatch.undo()
    hardware.build(bench_config(), FakeClock(), pin_factory=mock_factory).shutdown()
