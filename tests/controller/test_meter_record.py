"""The reading a stop after a kill -9 is billed with stays fresh with sampling off, and the
recorder costs no commit of its own while MeterValues store it (safety review of issue 14,
F1b: the recorder's write was throttled to once per 300 s by the store, so a 280 s session
of 1.7 kWh with MeterValueSampleInterval=0 had a stored reading of 0 Wh)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.ocpp16.bridge import METER_RECORD_INTERVAL_S
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def _second(rig: OcppRig) -> None:
    await rig.clock.advance(1)
    await asyncio.sleep(0.002)  # the meter answers over a real loopback socket


async def test_stored_reading_is_one_record_interval_old_at_most_without_sampling(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {"MeterValueSampleInterval": "0", "ClockAlignedDataInterval": "0"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await rig.start_transaction()
        store = rig.ocpp.ctx.store
        worst_age = worst_wh = power_w = 0.0
        for _ in range(280):
            await _second(rig)
            stored = store.last_meter(1)
            assert stored is not None
            live = rig.connector.last_energy_wh or 0.0
            worst_age = max(worst_age, (rig.clock.now() - stored.at).total_seconds())
            worst_wh = max(worst_wh, live - stored.energy_wh)
            sample = rig.connector.last_sample
            if sample is not None and sample.power_total_w is not None:
                power_w = max(power_w, sample.power_total_w)
        assert live > 500  # it charged (about 22 kW)
        assert worst_age <= METER_RECORD_INTERVAL_S + 1
        # What flowed since the last record: one record interval (and a poll) at most.
        assert worst_wh < power_w * (METER_RECORD_INTERVAL_S + 2) / 3600


async def test_the_recorder_adds_no_write_while_meter_values_store_the_reading(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """At 10 s sampling every MeterValues' commit stores the reading: the recorder's tick
    writes nothing more (the disk budget of issue 14 is measured at 10 s sampling)."""
    keys = {"MeterValueSampleInterval": "10", "ClockAlignedDataInterval": "0"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await rig.start_transaction()
        store = rig.ocpp.ctx.store
        txqueue = rig.ocpp.ctx.txqueue
        counts = {"record": 0, "meter_values": 0}
        real_record, real_mv = store.record_meter, txqueue.meter_values

        def record(*args: Any, **kwargs: Any) -> bool:
            counts["record"] += 1
            return real_record(*args, **kwargs)

        def meter_values(*args: Any, **kwargs: Any) -> int:
            if kwargs.get("energy_wh") is not None:
                counts["meter_values"] += 1
            return real_mv(*args, **kwargs)

        store.record_meter = record  # type: ignore[method-assign]
        txqueue.meter_values = meter_values  # type: ignore[method-assign]
        for _ in range(120):
            await _second(rig)
        assert counts["meter_values"] >= 11
        assert counts["record"] == counts["meter_values"]
