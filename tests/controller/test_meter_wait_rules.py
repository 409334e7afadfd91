"""The gate holds while a start waits for its first meter reading (issue 14, safety review).

A start that waits for the meter is not yet a transaction at the Central System. Before,
ChangeAvailability(Inoperative) in that wait was answered Scheduled and the start went on
once the meter spoke (the relay closed on a connector the CS had just made Inoperative),
and a maintenance block (a firmware installation) or a fault set meanwhile was not asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.connector.faults import Fault
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig

# The remote start goes straight to the connector (no Authorize round trip in real time).
KEYS = {"AuthorizeRemoteTxRequests": "false"}


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def _waiting_start(rig: OcppRig) -> int:
    """As just after a restart with a silent meter: the start waits for its reading."""
    await rig.bench.inject_fault("meter_silent", 1, True)
    rig.connector.last_energy_wh = None
    mark = rig.central.mark()
    await rig.plug()
    assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
    await rig.until(lambda: rig.connector.transaction is not None, within_s=2)
    assert rig.kinds("transaction_started") == []
    return mark


async def _meter_speaks(rig: OcppRig) -> None:
    await rig.bench.inject_fault("meter_silent", 1, False)
    await rig.until_note("meter", step_s=0.5)
    await rig.run(2)


def _nothing_started(rig: OcppRig, mark: int) -> None:
    assert rig.calls("StartTransaction", since=mark) == []
    assert rig.kinds("transaction_started") == []
    assert not rig.sim.pins.relay_energized
    assert rig.connector.transaction is None


async def test_inoperative_during_the_meter_wait_is_accepted_and_nothing_starts(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        mark = await _waiting_start(rig)
        reply = await rig.command(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert reply.status == "Accepted"  # no transaction the CS knows of to wait for
        await _meter_speaks(rig)
        _nothing_started(rig, mark)
        assert rig.status == "Unavailable"


@pytest.mark.parametrize("rule", ["maintenance", "fault"])
async def test_a_rule_set_during_the_meter_wait_is_asked_before_the_start_is_recorded(
    cs: CentralSystem, tmp_path: Path, rule: str
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=KEYS) as rig:
        mark = await _waiting_start(rig)
        charger = rig.stack.charger
        assert charger is not None
        if rule == "maintenance":
            charger.set_maintenance("Installing")
        else:
            rig.connector.raise_fault(Fault.LOCK, "injected")
        await _meter_speaks(rig)
        _nothing_started(rig, mark)
        assert rig.kinds("start_refused"), "the waiting start ends unrecorded"
