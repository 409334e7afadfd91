"""1/3-phase switching on the bench: the optional phase relay, the safe sequence (pause,
contactor open, wait, switch, wait, resume) and the EV drawing on the phases it is given."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from evsed.controller.config import parse
from evsed.controller.limiter import Reason
from evsed.controller.ocpp16.app import OcppApp
from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    config = bench_config(
        authorization={"free_vend": True},
        connectors=[
            {
                "meter": {"port": 0, "poll_interval_s": 1.0},
                "phase_switch": {"enabled": True, "relay_pin": 6, "settle_s": 2.0},
            }
        ],
    )
    stack = Stack(config, clock=clock, control=False)
    await stack.start()
    try:
        yield Rig(stack, clock)
    finally:
        await stack.stop()


def drawn_phases(rig: Rig) -> int:
    return sum(1 for a in rig.sim.ev.phase_currents_a() if a > 1.0)


async def until_watching(rig: Rig, pred: Callable[[], bool], within_s: float) -> list[str]:
    """`rig.until`, checking at every tick that the phase relay never moves under load."""
    violations: list[str] = []
    pins = rig.sim.pins
    last = pins.phases_switched_to_one

    def check() -> bool:
        nonlocal last
        now = pins.phases_switched_to_one
        if now != last and (pins.contactor_closed or any(rig.sim.ev.phase_currents_a())):
            violations.append(f"relay moved under load at {rig.clock.monotonic()}")
        last = now
        return pred()

    await rig.until(check, within_s=within_s)
    return violations


async def test_switch_to_one_phase_and_back_under_a_running_transaction(rig: Rig) -> None:
    charger = rig.stack.charger
    assert charger is not None
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    await rig.until(lambda: drawn_phases(rig) == 3, within_s=10)
    tx = rig.connector.transaction
    assert charger.phases(1) == 3

    assert charger.set_phases(1, 1)
    assert charger.allowance(1).reason is Reason.PHASE_SWITCH  # the pause comes first
    assert rig.sim.pins.pilot_duty == 1.0
    assert await until_watching(rig, lambda: rig.sim.pins.phases_switched_to_one, 15) == []
    assert not rig.sim.pins.contactor_closed
    assert rig.status == "SuspendedEVSE"
    assert await until_watching(rig, lambda: rig.status == "Charging", 10) == []
    await rig.until(lambda: drawn_phases(rig) == 1, within_s=10)
    assert charger.phases(1) == 1
    assert rig.connector.transaction == tx  # one transaction throughout

    assert charger.set_phases(1, 3)
    assert await until_watching(rig, lambda: not rig.sim.pins.phases_switched_to_one, 15) == []
    await rig.until(lambda: rig.status == "Charging", within_s=10)
    await rig.until(lambda: drawn_phases(rig) == 3, within_s=10)
    assert rig.connector.transaction == tx


async def test_without_a_phase_relay_nothing_switches(tmp_path: Path) -> None:
    clock = FakeClock()
    stack = Stack(bench_config(authorization={"free_vend": True}), clock=clock, control=False)
    await stack.start()
    try:
        assert stack.charger is not None
        assert stack.charger.set_phases(1, 1) is False
        assert stack.charger.phases(1) == 3
    finally:
        await stack.stop()


def test_the_key_says_whether_the_charger_can_switch(tmp_path: Path) -> None:
    with_relay = bench_config(connectors=[{"phase_switch": {"enabled": True}}])
    app = OcppApp(with_relay, FakeClock(), tmp_path / "a")
    try:
        assert app.keys._defaults["ConnectorSwitch3to1PhaseSupported"] == "true"
    finally:
        app.close()
    app = OcppApp(bench_config(), FakeClock(), tmp_path / "b")
    try:
        assert app.keys._defaults["ConnectorSwitch3to1PhaseSupported"] == "false"
    finally:
        app.close()


def test_a_phase_relay_needs_three_phases() -> None:
    with pytest.raises(Exception, match="three-phase"):
        parse({"connectors": [{"phases": 1, "phase_switch": {"enabled": True}}]})
