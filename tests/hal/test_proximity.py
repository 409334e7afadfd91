from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.adc import AdcChannel
from evsed.hal.interfaces import ProximitySensor
from evsed.hal.proximity import AdcProximity, cable_rating
from evsed.hwmocks.pins import BenchPins


@pytest.fixture
def pp(mock_factory: MockFactory) -> Iterator[tuple[BenchPins, AdcProximity]]:
    bench = BenchPins(mock_factory, adc_bits=12)
    sensor = AdcProximity(AdcChannel("MCP3208", 1, select_pin=8))
    yield bench, sensor
    sensor.shutdown()
    bench.close()


@pytest.mark.parametrize(
    ("ohms", "amps"),
    [(100, 63), (80, 63), (220, 32), (160, 32), (680, 20), (340, 20), (1500, 13), (2100, 13)],
)
def test_every_range_through_the_adc(
    pp: tuple[BenchPins, AdcProximity], ohms: float, amps: int
) -> None:
    bench, sensor = pp
    assert isinstance(sensor, ProximitySensor)
    bench.set_pp_ohms(ohms)
    r = sensor.read()
    assert r.cable_a == amps and not r.short
    assert r.ohms == pytest.approx(ohms, rel=0.02)


def test_open_means_no_cable(pp: tuple[BenchPins, AdcProximity]) -> None:
    bench, sensor = pp
    bench.set_pp_ohms(None)
    r = sensor.read()
    assert (r.cable_a, r.short, math.isinf(r.ohms)) == (None, False, True)
    bench.set_pp_ohms(3000)
    assert sensor.read().cable_a is None


def test_short(pp: tuple[BenchPins, AdcProximity]) -> None:
    bench, sensor = pp
    for ohms in (0, 50):
        bench.set_pp_ohms(ohms)
        r = sensor.read()
        assert r.short and r.cable_a is None


def test_boundaries_take_the_lower_rating() -> None:
    assert cable_rating(74.9).short
    assert cable_rating(75).cable_a == 63
    assert cable_rating(150).cable_a == 32
    assert cable_rating(330).cable_a == 20
    assert cable_rating(1000).cable_a == 13
    assert cable_rating(2200).cable_a == 13
    assert cable_rating(2200.1).cable_a is None


def test_adc_failure_reads_as_no_cable() -> None:
    class Broken:
        def read_volts(self) -> float:
            raise OSError("spi")

        def close(self) -> None:
            pass

    r = AdcProximity(Broken()).read()
    assert r.cable_a is None and math.isnan(r.ohms)
