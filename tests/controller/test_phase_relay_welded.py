"""The phase relay never moves while the main contacts read closed (safety review of issue 14):
`_switch_phases` looked only at the commanded state, so with a welded contactor (Faulted/
PowerSwitchFailure) the relay still switched L2/L3 off under load; and `Parts.shutdown`
released the relay (back to three phases) whatever the contacts read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.controller.charger import ConnectorParts, Parts
from evsed.controller.run import Stack
from evsed.hal.contactor import RelayContactor
from evsed.hal.phase_switch import RelayPhaseSwitch
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock

RELAY, FEEDBACK, PHASE_RELAY = 17, 27, 6


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """The bench with a phase relay (as test_phase_switch_bench's)."""
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


async def test_a_welded_contactor_keeps_the_phase_relay_and_the_phase_count(
    rig: Rig,
) -> None:
    charger = rig.stack.charger
    assert charger is not None
    await rig.bench.plug(1)
    await rig.until(lambda: rig.status == "Charging", within_s=5)
    await rig.bench.inject_fault("contactor_welded", 1, True)
    assert charger.set_phases(1, 1)
    moved: list[bool] = []

    def relay_moved() -> bool:
        if rig.sim.pins.phases_switched_to_one:
            moved.append(rig.sim.pins.contactor_closed)
        return bool(moved)

    # The safe sequence (pause, open, settle 2 s, switch) would be done well within this.
    await rig.run(20)
    assert not relay_moved(), f"phase relay moved with the contacts closed: {moved}"
    assert rig.connector.status.status.value == "Faulted"
    assert rig.connector.status.error_code.value == "PowerSwitchFailure"
    assert rig.sim.pins.contactor_closed  # still welded: the relay really has three phases
    assert charger.phases(1) == 3  # and the limits count three
    assert charger.allowance(1).reason.value != "phase_switch"  # the switch was given up


class _Pilot:
    def set_duty(self, duty: float) -> None: ...

    def shutdown(self) -> None: ...


class _Sensor:
    def shutdown(self) -> None: ...


def _parts(factory: MockFactory) -> Parts:
    contactor = RelayContactor(RELAY, FEEDBACK, pin_factory=factory)
    relay = RelayPhaseSwitch(PHASE_RELAY, pin_factory=factory)
    parts = Parts([ConnectorParts(_Pilot(), _Sensor(), contactor, phase_switch=relay)])  # type: ignore[arg-type]
    contactor.energize()
    relay.set_phases(1)
    return parts


def test_a_welded_contactor_keeps_the_phase_relay_at_shutdown(mock_factory: MockFactory) -> None:
    parts = _parts(mock_factory)
    mock_factory.pin(FEEDBACK).drive_high()  # the contacts stay closed: welded
    parts.shutdown()
    assert not mock_factory.pin(RELAY).state  # commanded open
    assert mock_factory.pin(PHASE_RELAY).state  # one phase still: not switched under load


def test_a_contactor_that_opens_releases_the_phase_relay(mock_factory: MockFactory) -> None:
    parts = _parts(mock_factory)
    parts.shutdown()  # no feedback driven: the contact reads open
    assert not mock_factory.pin(PHASE_RELAY).state
