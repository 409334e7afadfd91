"""A lower current asked while the safety core is stuck reaches the pilot once it steps again.

The limiter's new current goes to the core as a command; a core known stuck (a command
already waited in vain) answers every command with its default at once, and the command
is dropped. Before, nothing sent that limit again unless something else recomputed the
limits (a meter sample, a cable note): on a connector without a meter a smart-charging or
load-balancing reduction was lost and the EV kept the old, higher duty. Now the connector
keeps the latest wish and the core takes it at its next step.

Real threaded core on the bench, free vend, no meter; the core is held in a command until
released (as test_safety_thread does), well below the freeze guard's bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.config import parse
from evsed.controller.connector import core as core_module
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.run import Stack
from evsed.hal.pilot.duty import current_to_duty
from tests.support.realtime import Changes, RelayWatch


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    config = parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": 0.1},
            # No meter: nothing recomputes the limits on its own every poll.
            "connectors": [{"meter": {"transport": "none"}}],
            "authorization": {"free_vend": True},
            "state_dir": str(tmp_path),
        }
    )
    async with Stack(config, control=False) as s:
        yield s


async def test_a_reduction_dropped_by_a_stuck_core_is_applied_when_it_steps_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (A pause, 0 A, was already sent again by the limits task's once-a-second recompute
    # of a suspended limiter; a reduction to a current still offered had nothing.)
    amps = 10.0
    monkeypatch.setattr(core_module, "CALL_TIMEOUT_S", 0.3)  # stuck well before a freeze cut
    charger = stack.charger
    assert charger is not None and charger.core.threaded
    core = charger.core
    connector = charger.connector(1)
    sim = stack.bench.sim(1)
    watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
    changes = Changes()
    sensor = charger.parts.connectors[0].sensor
    read = sensor.read

    def poked_read(samples: int) -> Any:  # every core tick wakes the test's waits
        try:
            return read(samples)
        finally:
            changes.from_thread()

    sensor.read = poked_read
    release, stuck = threading.Event(), threading.Event()

    def freeze() -> None:
        stuck.set()
        release.wait(10)

    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        before = sim.pins.pilot_duty
        resolution = connector.settings.pwm_resolution
        target = current_to_duty(amps, resolution)
        assert before > target

        hang = asyncio.create_task(asyncio.to_thread(core.call, freeze))
        try:
            assert await asyncio.to_thread(stuck.wait, 5)
            # A command waits in vain (from a worker): the core is known stuck.
            assert await asyncio.to_thread(core.call, lambda: True, False) is False
            assert core._stuck
            charger.set_smart_charging_limit(1, SmartChargingLimit(amps))  # dropped
            assert charger.allowance(1).amps == amps
            assert sim.pins.pilot_duty == before  # not yet: the core is held
        finally:
            release.set()
            await hang
        await changes.until(lambda: sim.pins.pilot_duty == pytest.approx(target), timeout=3.0)
        assert core.frozen is None and stack.freeze_guard is not None
        assert stack.freeze_guard.cuts == 0  # the core was stuck, never frozen long enough
        assert connector.view().offered_a == amps
    finally:
        sensor.read = read
        watch.close()


async def test_an_increase_while_stuck_is_taken_too(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The latest wish wins, whichever way it goes: 10 A, then back to 16 A while stuck."""
    monkeypatch.setattr(core_module, "CALL_TIMEOUT_S", 0.3)
    charger = stack.charger
    assert charger is not None
    core, connector = charger.core, charger.connector(1)
    sim = stack.bench.sim(1)
    watch = RelayWatch(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
    changes = Changes()
    connector.add_listener(changes.poke)
    resolution = connector.settings.pwm_resolution
    try:
        await stack.bench.plug(1)
        await watch.wait(True)
        charger.set_smart_charging_limit(1, SmartChargingLimit(10.0))
        await changes.until(lambda: connector.view().offered_a == 10.0)
        release, stuck = threading.Event(), threading.Event()

        def freeze() -> None:
            stuck.set()
            release.wait(10)

        hang = asyncio.create_task(asyncio.to_thread(core.call, freeze))
        try:
            assert await asyncio.to_thread(stuck.wait, 5)
            assert await asyncio.to_thread(core.call, lambda: True, False) is False
            charger.set_smart_charging_limit(1, SmartChargingLimit(16.0))  # dropped
        finally:
            release.set()
            await hang
        await changes.until(lambda: connector.view().offered_a == 16.0)
        assert sim.pins.pilot_duty == pytest.approx(current_to_duty(16.0, resolution))
    finally:
        watch.close()
