"""Closing and rebuilding ADC channels on the same SPI pins, as a Reset does.

gpiozero's SharedMixin caches shared SPI interfaces and buses in a class-wide dict and
wraps each instance's `close` in a closure that refers to the instance: every such
instance sits in a reference cycle, so the cyclic garbage collector frees it at an
arbitrary later moment. Its `__del__` then calls that `close` once more, and the
wrapper's `finally` deletes the cache entry for its key, whichever instance holds it by
then: a newer, open interface or bus of a rebuild. The next channel of that rebuild then
builds a second bus on the same clock pin and fails with GPIOPinInUse (GPIO11 on the
mock factory's SPI0)."""

from __future__ import annotations

import gc

from gpiozero.pins.mock import MockFactory

from evsed.hal.adc import AdcChannel


def _channels(factory: MockFactory, *numbers: int) -> list[AdcChannel]:
    return [AdcChannel("MCP3008", n, pin_factory=factory) for n in numbers]


def test_a_collection_of_closed_channels_during_a_rebuild_leaves_the_rebuild_intact(
    mock_factory: MockFactory,
) -> None:
    gc.disable()  # the collection below stands for one that runs at any allocation
    try:
        for channel in _channels(mock_factory, 0, 1, 2):
            channel.close()
        first = _channels(mock_factory, 0)
        gc.collect()  # frees the old, closed interface and bus (reference cycles)
        rest = _channels(mock_factory, 1, 2)  # raised GPIOPinInUse on GPIO11
    finally:
        gc.enable()
    for channel in first + rest:
        channel.close()
    # Everything closed: the pins are free again for the next build.
    for channel in _channels(mock_factory, 0, 1):
        channel.close()


def test_a_soft_spi_channel_rebuild_survives_a_collection(mock_factory: MockFactory) -> None:
    gc.disable()
    try:
        for channel in [
            AdcChannel("MCP3208", n, select_pin=7, pin_factory=mock_factory) for n in (0, 1)
        ]:
            channel.close()
        first = AdcChannel("MCP3208", 0, select_pin=7, pin_factory=mock_factory)
        gc.collect()
        second = AdcChannel("MCP3208", 1, select_pin=7, pin_factory=mock_factory)
    finally:
        gc.enable()
    first.close()
    second.close()
