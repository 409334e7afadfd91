"""Clock-aligned meter values at the edges of a transaction belong to it (OCPP 1.6 §3.16.2:
a transaction's meter values carry its transactionId; StopTxnAlignedData collects them).

Two edges, each made deterministic by taking the reading (`OcppHooks.aligned_tick`, what the
aligned schedule calls at each boundary) inside the window:
- the StartTransaction is sent but its answer (the transactionId) is held at the CS;
- the stop is requested but not recorded yet (the contactor opening, the meter's closing
  reading awaited): the connector no longer has the transaction, the bridge still does.
  Such a reading used to go out as a plain MeterValues, without transactionId, before the
  StopTransaction (a loop failure of test_clock_aligned_values_in_a_transaction_and_stop_
  txn_data: KeyError 'transactionId').
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig
from tests.support.stopping import call_advancing

KEYS = {
    "AuthorizeRemoteTxRequests": "false",
    # Off: the readings are taken by the test, at the instant it chooses.
    "ClockAlignedDataInterval": "0",
    "MeterValueSampleInterval": "0",
    "MeterValuesAlignedData": "Energy.Active.Import.Register",
    "StopTxnAlignedData": "Energy.Active.Import.Register",
    "StopTxnSampledData": "Energy.Active.Import.Register",
}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[OcppRig]:
    clock = FakeClock()
    async with (
        CentralSystem(tags={CARD: "Accepted"}, now=clock.now) as central,
        ocpp_rig(central, tmp_path, keys=KEYS, clock=clock) as r,
    ):
        await r.meter_sample()
        yield r


def contexts(meter_values: list[dict[str, Any]]) -> list[str]:
    return [mv["sampledValue"][0]["context"] for mv in meter_values]


async def test_a_reading_while_the_stop_is_pending_is_the_transactions(rig: OcppRig) -> None:
    cs = rig.central
    before = cs.mark()
    tx_id = await rig.start_transaction()
    assert (await rig.command(call.RemoteStopTransaction(transaction_id=tx_id))).status
    await rig.until(lambda: rig.connector.stop_pending, within_s=1)
    assert rig.connector.transaction is None  # the connector is done with it, the CS is not
    rig.ocpp.hooks.aligned_tick(rig.clock.now())
    stop = await call_advancing(rig, "StopTransaction", since=before)
    start = await rig.call_of("StartTransaction", since=before)
    values = [f for f in rig.calls("MeterValues", start.seq) if f.seq < stop.seq]
    assert len(values) == 1
    assert values[0].payload.get("transactionId") == tx_id
    assert contexts(stop.payload["transactionData"]) == [
        "Transaction.Begin",
        "Sample.Clock",
        "Transaction.End",
    ]


async def test_a_reading_before_the_start_is_answered_gets_its_transaction_id(
    rig: OcppRig,
) -> None:
    cs = rig.central
    held = asyncio.Event()
    cs.reply_delays["StartTransaction"] = held
    mark = cs.mark()
    await rig.plug()
    assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
    start = await rig.call_of("StartTransaction", since=mark)
    rig.ocpp.hooks.aligned_tick(rig.clock.now())  # the transactionId is not known yet
    held.set()
    reply = await rig.answered(start)
    tx_id = reply.payload["transactionId"]
    value = await rig.call_of("MeterValues", since=start.seq)
    assert value.payload.get("transactionId") == tx_id
    assert contexts(value.payload["meterValue"]) == ["Sample.Clock"]
