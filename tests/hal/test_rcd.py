"""RCD through mock pins. gpiozero mock callbacks run synchronously in the thread that
drives the pin; the driver still hops via call_soon_threadsafe, so each test awaits the
sink's event/future (with a timeout) instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.interfaces import ResidualCurrentMonitor
from evsed.hal.rcd import GpioRcd
from evsed.hal.types import DeviceFault
from evsed.hwmocks.pins import BenchPins


class Events:
    def __init__(self) -> None:
        self.items: list[DeviceFault] = []
        self._cond = asyncio.Event()

    def __call__(self, event: object) -> None:
        assert isinstance(event, DeviceFault)
        self.items.append(event)
        self._cond.set()

    async def next(self) -> DeviceFault:
        n = len(self.items)
        while len(self.items) == n:
            self._cond.clear()
            await asyncio.wait_for(self._cond.wait(), 1.0)
        return self.items[n]


@pytest.fixture
def bench(mock_factory: MockFactory) -> Iterator[BenchPins]:
    b = BenchPins(mock_factory)
    yield b
    b.close()


@pytest.fixture
def rcd(bench: BenchPins) -> Iterator[GpioRcd]:
    r = GpioRcd(22, 23)
    yield r
    r.shutdown()


async def _drain() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_trip_event_on_loop(bench: BenchPins, rcd: GpioRcd) -> None:
    assert isinstance(rcd, ResidualCurrentMonitor)
    events = Events()
    rcd.start(events)
    assert not rcd.tripped
    bench.rcd_trip(True)
    ev = await events.next()
    assert (ev.device, ev.active) == ("rcd", True)
    assert rcd.tripped
    bench.rcd_trip(False)
    ev = await events.next()
    assert ev.active is False


async def test_tripped_before_start_is_reported(bench: BenchPins, rcd: GpioRcd) -> None:
    bench.rcd_trip(True)
    events = Events()
    rcd.start(events)
    assert events.items == [DeviceFault("rcd", active=True, detail="tripped at start")]


async def test_self_test_passes_and_reports_nothing(
    bench: BenchPins, rcd: GpioRcd, mock_factory: MockFactory
) -> None:
    events = Events()
    rcd.start(events)
    test_pin = mock_factory.pin(23)
    test_pin.clear_states()
    assert await rcd.self_test(timeout_s=1.0) is True
    assert [bool(s.state) for s in test_pin.states] == [False, True, False]
    await _drain()
    assert events.items == []
    assert not rcd.tripped


async def test_self_test_fails_on_broken_test_path(bench: BenchPins, rcd: GpioRcd) -> None:
    rcd.start(Events())
    bench.set_rcd_test_broken(True)
    assert await rcd.self_test(timeout_s=0.05) is False
    assert not bench.rcd_test.state  # test output released


async def test_self_test_fails_when_already_tripped(bench: BenchPins, rcd: GpioRcd) -> None:
    rcd.start(Events())
    bench.rcd_trip(True)
    assert await rcd.self_test(timeout_s=0.05) is False


async def test_self_test_without_start(bench: BenchPins, rcd: GpioRcd) -> None:
    assert await rcd.self_test(timeout_s=1.0) is True


async def test_without_test_pin(bench: BenchPins) -> None:
    strict = GpioRcd(22)
    assert await strict.self_test() is False
    strict.shutdown()
    lenient = GpioRcd(22, assume_ok_without_test_pin=True)
    assert await lenient.self_test() is True
    bench.rcd_trip(True)
    assert await lenient.self_test() is False
    lenient.shutdown()
