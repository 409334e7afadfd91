from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.adc import AdcChannel
from evsed.hal.interfaces import TemperatureSensor
from evsed.hal.temperature import AdcNtcTemperature, SensorError, W1Ds18b20
from evsed.hwmocks.pins import BenchPins


@pytest.fixture
def ntc(mock_factory: MockFactory) -> Iterator[tuple[BenchPins, AdcNtcTemperature]]:
    bench = BenchPins(mock_factory, adc_bits=12)
    sensor = AdcNtcTemperature(AdcChannel("MCP3208", 2, select_pin=8))
    yield bench, sensor
    sensor.shutdown()
    bench.close()


@pytest.mark.parametrize("celsius", [-20.0, 0.0, 25.0, 60.0, 85.0])
def test_ntc_follows_bench(ntc: tuple[BenchPins, AdcNtcTemperature], celsius: float) -> None:
    bench, sensor = ntc
    assert isinstance(sensor, TemperatureSensor)
    bench.set_temperature(celsius)
    assert sensor.read_celsius() == pytest.approx(celsius, abs=0.5)


@pytest.mark.parametrize("volts", [0.0, 3.3])
def test_ntc_open_or_short(ntc: tuple[BenchPins, AdcNtcTemperature], volts: float) -> None:
    bench, sensor = ntc
    bench.adc.set_channel(2, volts)
    with pytest.raises(SensorError):
        sensor.read_celsius()


def test_ntc_adc_failure() -> None:
    class Broken:
        def read_volts(self) -> float:
            raise OSError("spi")

        def close(self) -> None:
            pass

    with pytest.raises(SensorError):
        AdcNtcTemperature(Broken()).read_celsius()


def _w1(tmp_path: Path, text: str | None) -> W1Ds18b20:
    d = tmp_path / "28-00000abcdef0"
    d.mkdir()
    if text is not None:
        (d / "temperature").write_text(text)
    return W1Ds18b20("28-00000abcdef0", root=tmp_path)


def test_ds18b20_reads_millidegrees(tmp_path: Path) -> None:
    sensor = _w1(tmp_path, "23562\n")
    assert isinstance(sensor, TemperatureSensor)
    assert sensor.read_celsius() == pytest.approx(23.562)
    (tmp_path / "28-00000abcdef0" / "temperature").write_text("-1250\n")
    assert sensor.read_celsius() == pytest.approx(-1.25)


@pytest.mark.parametrize("text", [None, "", "garbage", "85000", "200000", "\xff"])
def test_ds18b20_errors(tmp_path: Path, text: str | None) -> None:
    with pytest.raises(SensorError):
        _w1(tmp_path, text).read_celsius()
