"""MeterPoller: samples on the injected clock, fault after N failures, back-off, recovery."""

from __future__ import annotations

import asyncio

import pytest

from evsed.hal.meters import MeterError
from evsed.hal.meters.modbus import ModbusMeter, TcpTransport
from evsed.hal.meters.poller import MeterPoller
from evsed.hal.types import DeviceFault, MeterSample
from evsed.hwmocks.meter import MeterFault, SimMeter
from tests.support.clock import FakeClock


class ScriptedMeter:
    """An EnergyMeter whose answers the test decides; records when it was asked."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.failing: Exception | None = None
        self.polled_at: list[float] = []
        self.connects = 0
        self.closes = 0
        self.power = 0.0

    async def connect(self) -> None:
        self.connects += 1

    async def poll(self) -> MeterSample:
        self.polled_at.append(self.clock.monotonic())
        if self.failing is not None:
            raise self.failing
        self.power += 1.0
        return MeterSample(power_total_w=self.power)

    async def close(self) -> None:
        self.closes += 1


def faults(events: list[object]) -> list[DeviceFault]:
    return [e for e in events if isinstance(e, DeviceFault)]


def samples(events: list[object]) -> list[MeterSample]:
    return [e for e in events if isinstance(e, MeterSample)]


async def test_polls_every_interval_and_keeps_the_last_sample() -> None:
    clock = FakeClock()
    meter = ScriptedMeter(clock)
    events: list[object] = []
    poller = MeterPoller(meter, events.append, clock, interval_s=2.0)
    poller.start()
    await clock.advance(10.0)
    await poller.stop()
    t0 = meter.polled_at[0]
    assert [t - t0 for t in meter.polled_at] == [0, 2, 4, 6, 8, 10]
    assert [s.power_total_w for s in samples(events)] == [1, 2, 3, 4, 5, 6]
    assert poller.last_sample == samples(events)[-1]
    assert poller.last_sample_at == meter.polled_at[-1]
    assert faults(events) == []
    assert meter.connects == 1 and meter.closes == 1  # closed by stop()


async def test_fault_once_after_n_failures_backoff_then_recovery() -> None:
    clock = FakeClock()
    meter = ScriptedMeter(clock)
    events: list[object] = []
    poller = MeterPoller(meter, events.append, clock, interval_s=1.0, max_backoff_s=8.0)
    poller.start()
    await clock.advance(0.5)
    meter.failing = MeterError("no answer")
    await clock.advance(1.0)  # failure 1 at t=1
    await clock.advance(1.0)  # failure 2 at t=2
    assert faults(events) == []
    await clock.advance(1.0)  # failure 3 at t=3: fault
    assert faults(events) == [DeviceFault("meter", active=True, detail="no answer")]
    assert poller.faulted
    await clock.advance(60.0)
    assert len(faults(events)) == 1  # reported once, not per failure
    t0 = meter.polled_at[0]
    gaps = [b - a for a, b in zip(meter.polled_at, meter.polled_at[1:], strict=False)]
    # Healthy and counting failures: 1 s; faulted: 2, 4, 8 s, then capped at 8 s.
    assert gaps[:6] == [1, 1, 1, 2, 4, 8]
    assert set(gaps[6:]) == {8}
    assert meter.connects > 3  # reconnects after failures
    meter.failing = None
    next_try = meter.polled_at[-1] + 8.0
    await clock.advance(next_try - clock.monotonic())
    assert meter.polled_at[-1] == next_try
    assert faults(events)[-1] == DeviceFault("meter", active=False, detail="meter answers again")
    assert samples(events)[-1] == poller.last_sample
    assert not poller.faulted and poller.failures == 0
    await clock.advance(3.0)
    assert meter.polled_at[-3:] == [next_try + 1, next_try + 2, next_try + 3]  # normal interval
    assert len(faults(events)) == 2
    await poller.stop()
    assert t0 == 1000.0


async def test_unexpected_exceptions_and_a_broken_sink_do_not_kill_the_poller() -> None:
    clock = FakeClock()
    meter = ScriptedMeter(clock)
    received: list[object] = []

    def sink(event: object) -> None:
        received.append(event)
        raise RuntimeError("consumer bug")

    poller = MeterPoller(meter, sink, clock, interval_s=1.0, fault_after=1)
    meter.failing = KeyError("driver bug")
    poller.start()
    await clock.advance(0.0)
    assert isinstance(received[0], DeviceFault) and "driver bug" in received[0].detail
    meter.failing = None
    await clock.advance(2.0)
    await poller.stop()
    assert any(isinstance(e, MeterSample) for e in received)
    assert poller._task is None


def test_rejects_nonsense_settings() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        MeterPoller(ScriptedMeter(clock), print, clock, interval_s=0)
    with pytest.raises(ValueError):
        MeterPoller(ScriptedMeter(clock), print, clock, fault_after=0)


async def test_real_meter_fault_and_recovery_through_the_bench() -> None:
    clock = FakeClock()
    sim = SimMeter("sdm630", clock=clock)
    await sim.start()
    events: list[object] = []
    meter = ModbusMeter("sdm630", TcpTransport("127.0.0.1", sim.port), timeout_s=0.2)
    poller = MeterPoller(meter, events.append, clock, interval_s=1.0, fault_after=2)
    try:
        sim.set_load((230.0, 230.0, 230.0), (10.0, 10.0, 10.0))
        await sim.update()
        assert await poller.poll_once() is not None
        sim.fault = MeterFault.SILENT
        assert await asyncio.wait_for(poller.poll_once(), 2) is None
        sim.fault = MeterFault.EXCEPTION
        assert await poller.poll_once() is None
        sim.fault = None
        sample = await poller.poll_once()
    finally:
        await poller.stop()
        await sim.stop()
    assert sample is not None and sample.power_total_w == pytest.approx(6900.0)
    fs = faults(events)
    assert [f.active for f in fs] == [True, False]
    assert "exception response 4" in fs[0].detail
    assert not meter.connected


async def test_stop_works_when_the_driver_swallows_the_cancellation() -> None:
    """pymodbus turns a CancelledError inside a request into an I/O error: stop() must
    still end the poller rather than wait for ever."""
    import asyncio

    from evsed.hal.meters import MeterError
    from evsed.hal.meters.poller import MeterPoller

    in_request = asyncio.Event()

    class Swallowing:
        async def connect(self) -> None:
            pass

        async def poll(self):  # type: ignore[no-untyped-def]
            in_request.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise MeterError("request cancelled") from None

        async def close(self) -> None:
            pass

    poller = MeterPoller(Swallowing(), lambda _e: None, FakeClock(), interval_s=1.0)  # type: ignore[arg-type]
    poller.start()
    await asyncio.wait_for(in_request.wait(), 2)
    await asyncio.wait_for(poller.stop(), 2)
