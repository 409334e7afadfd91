"""MeterValues "send now" (for TriggerMessage) and the supervised clock-aligned values, on
the bench charger with the whole OCPP stack against the embedded Central System."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from evsed.controller.ocpp16.bridge import OcppHooks
from evsed.hwmocks.central_system import CentralSystem, Frame
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig

SAMPLED = {"MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import"}


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def contexts(frame: Frame) -> set[str]:
    return {sv["context"] for mv in frame.payload["meterValue"] for sv in mv["sampledValue"]}


async def n_calls(rig: OcppRig, action: str, n: int, since: int) -> list[Frame]:
    await rig.central.wait_for(lambda _f: len(rig.calls(action, since)) >= n, since=since)
    return rig.calls(action, since)


async def test_meter_values_now_without_a_transaction_is_sent_at_once(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=SAMPLED) as rig:
        await rig.meter_sample()
        mark = cs.mark()
        assert await rig.ocpp.hooks.send_meter_values_now(1) == 1
        [frame] = rig.calls("MeterValues", mark)
        assert frame.payload["connectorId"] == 1
        assert "transactionId" not in frame.payload
        assert contexts(frame) == {"Trigger"}
        names = {sv["measurand"] for sv in frame.payload["meterValue"][0]["sampledValue"]}
        assert names == {"Energy.Active.Import.Register", "Power.Active.Import"}
        # Every connector when none is named (the bench has one).
        assert await rig.ocpp.hooks.send_meter_values_now() == 1


async def test_meter_values_now_in_a_transaction_goes_through_the_queue(
    cs: CentralSystem, tmp_path: Path
) -> None:
    keys = {**SAMPLED, "AuthorizeRemoteTxRequests": "false", "MeterValueSampleInterval": "0"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        await rig.meter_sample()
        tx_id = await rig.start_transaction()
        mark = cs.mark()
        assert await rig.ocpp.hooks.send_meter_values_now(1) == 1
        [frame] = await n_calls(rig, "MeterValues", 1, mark)
        assert frame.payload["transactionId"] == tx_id
        assert contexts(frame) == {"Trigger"}


async def test_meter_values_now_offline_and_idle_sends_nothing(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path, keys=SAMPLED) as rig:
        await rig.meter_sample()
        cs.set_offline(True)
        await rig.ocpp.session.wait_offline(5)  # type: ignore[union-attr]
        assert await rig.ocpp.hooks.send_meter_values_now(1) == 0


async def test_clock_aligned_values_survive_a_reading_that_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {
        "ClockAlignedDataInterval": "60",
        "MeterValuesAlignedData": "Energy.Active.Import.Register",
    }
    clock = FakeClock()
    real = OcppHooks.aligned_tick
    failures = iter([True])

    def aligned_tick(self: OcppHooks, boundary: datetime) -> None:
        if next(failures, False):
            raise RuntimeError("injected: a reading that raises")
        real(self, boundary)

    monkeypatch.setattr(OcppHooks, "aligned_tick", aligned_tick)
    async with (
        CentralSystem(now=clock.now) as central,
        ocpp_rig(central, tmp_path, keys=keys, clock=clock) as rig,
    ):
        await rig.meter_sample()
        mark = central.mark()
        await rig.run(125)  # the first boundary raises, the task restarts, the next is sent
        frames = await n_calls(rig, "MeterValues", 1, mark)
        assert rig.ocpp.hooks.task_failures["clock-aligned meter values"] == 1
        assert frames[0].payload["meterValue"][0]["timestamp"] == "2026-01-01T00:02:00Z"
