"""Which reading a transaction left open is stopped with: the stored one (written with the
last MeterValues), or the live meter when it already reads more; never the start's when
a later reading exists. Runs the bridge's recovery on the bench with its real meter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from evsed.controller.store import TxState
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import OcppRig, ocpp_rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with CentralSystem() as cs:
        cs.set_offline(True)  # the stops stay queued where the test can read them
        async with ocpp_rig(cs, tmp_path, online=False) as r:
            yield r


def _left_open(rig: OcppRig, meter_start: int, last_wh: float | None) -> tuple[int, datetime]:
    """A transaction as a killed run leaves it (the connector itself knows none)."""
    started = rig.clock.now() - timedelta(minutes=10)
    local = rig.ocpp.txqueue.start_transaction(1, "AABBCCDD", meter_start, started)
    if last_wh is not None:
        rig.ocpp.txqueue.meter_values(
            1, [], local, energy_wh=last_wh, at=started + timedelta(minutes=5)
        )
    return local, started


def _stop(rig: OcppRig, local: int) -> dict[str, object]:
    (stop,) = [m for m in rig.ocpp.txqueue.pending() if m.action == "StopTransaction"]
    tx = rig.ocpp.txqueue.transaction(local)
    assert tx is not None and tx.state is TxState.STOPPING
    return stop.payload


def _time(payload: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(payload["timestamp"]))


async def test_stored_reading_when_the_meter_reads_no_more(rig: OcppRig) -> None:
    await rig.meter_sample()  # the bench meter reads ~0 Wh: less than stored, ignored
    local, started = _left_open(rig, 1000, 1042.6)
    assert rig.ocpp.hooks.recover_open_transactions() == 1
    stop = _stop(rig, local)
    assert stop["meterStop"] == 1043 and stop["reason"] == "PowerLoss"
    assert _time(stop) == started + timedelta(minutes=5)


async def test_live_meter_when_it_already_reads_more(rig: OcppRig) -> None:
    local, _ = _left_open(rig, 1000, 1042.6)
    rig.sim.meter.energy_wh = 1090.0  # it kept counting after the last stored reading
    await rig.meter_sample()
    assert rig.ocpp.hooks.recover_open_transactions() == 1
    stop = _stop(rig, local)
    assert stop["meterStop"] == round(rig.connector.last_energy_wh or 0) >= 1090
    assert _time(stop) == rig.clock.now()  # the time of that (live) reading


async def test_start_reading_only_when_nothing_later_is_known(rig: OcppRig) -> None:
    local, started = _left_open(rig, 1000, None)
    assert rig.ocpp.hooks.recover_open_transactions() == 1
    stop = _stop(rig, local)
    assert stop["meterStop"] == 1000 and _time(stop) == started
