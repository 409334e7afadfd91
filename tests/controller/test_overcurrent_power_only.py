"""Over-current with a meter that gives only the total power (Eastron SDM72D-M v1: no
per-phase current): it was never judged (the largest phase current of none was 0 A), and
nothing said so. Now the total power spread over the connector's phases is judged, and a
warning says once what that cannot see (safety review, round 2)."""

from __future__ import annotations

import logging

import pytest

from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.types import MeterSample, PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot, Relay

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


def totals_only(watts: float) -> MeterSample:
    return MeterSample(power_total_w=watts, energy_import_wh=1000.0)


def charging_at(amps: float, phases: int = 3) -> tuple[Connector, Relay, FakeClock]:
    clock = FakeClock()
    relay = Relay()
    connector = Connector(
        Settings(free_vend=True, phases=phases, has_meter=True),
        pilot=Pilot(),
        contactor=relay,
        hooks=LocalHooks(),
        clock=clock,
    )
    connector.on_rcd_self_test(True)
    connector.set_allowed_current(amps)
    connector.on_meter_sample(totals_only(0.0))  # a start waits for its first reading
    connector.on_pilot(C)
    connector.supervise()
    assert relay.energized and connector.offered_a == amps
    return connector, relay, clock


async def overdraw(connector: Connector, clock: FakeClock, watts: float) -> None:
    for _ in range(9):  # past the 7 s grace
        connector.on_meter_sample(totals_only(watts))
        await clock.advance(1.0)
        connector.supervise()


async def test_a_three_phase_overdraw_seen_in_the_total_power_trips(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector, relay, clock = charging_at(16.0)
    with caplog.at_level(logging.WARNING, logger="evsed.controller.connector.machine"):
        await overdraw(connector, clock, 3 * 230.0 * 22.0)  # 22 A a phase, 16 A offered
    assert Fault.OVER_CURRENT in connector.faults, "over-current never judged"
    assert not relay.energized
    warnings = [r.getMessage() for r in caplog.records if "per-phase current" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not at every reading


async def test_a_draw_within_the_offer_never_trips() -> None:
    connector, relay, clock = charging_at(16.0)
    await overdraw(connector, clock, 3 * 230.0 * 16.0)
    # A one-phase EV at its 16 A on a three-phase connector: a third of the even share.
    await overdraw(connector, clock, 230.0 * 16.0)
    assert connector.faults == {} and relay.energized


async def test_a_one_phase_connector_judges_the_whole_power_as_its_current() -> None:
    connector, _relay, clock = charging_at(10.0, phases=1)
    await overdraw(connector, clock, 230.0 * 14.0)  # 14 A with 10 A offered (+2 A allowed)
    assert Fault.OVER_CURRENT in connector.faults
