"""`evsed run` killed with SIGKILL mid-charge: the restart stops the transaction once.

The embedded Central System runs in the test process; `evsed run` (bench enabled) runs as
a child process. An EV is plugged through the bench's control channel, free vend starts a
transaction, the CS confirms it; then the process is killed with no chance to clean up.
The second `evsed run` on the same state directory must send one StopTransaction with
reason PowerLoss for the CS's transactionId, and never the StartTransaction again.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem, Direction
from tests.support.evsed_process import CP_ID, FREE_TAG, Evsed, _config, _cp_calls


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    # A short heartbeat: the "later frame" that closes the grace period comes quickly.
    async with CentralSystem(tags={FREE_TAG: "Accepted"}, heartbeat_interval=1) as central:
        yield central


async def test_sigkill_while_charging_stops_the_transaction_once_after_restart(
    cs: CentralSystem, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, cs.url)
    first = Evsed(cfg, tmp_path / "evsed-1.log")
    second = Evsed(cfg, tmp_path / "evsed-2.log")
    try:
        await first.start()
        await cs.wait_for_call("BootNotification", CP_ID, timeout=30)
        await first.bench("plug", connector=1)

        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=20)
        reply = await cs.wait_for(
            lambda f: f.direction is Direction.CS_TO_CP and f.unique_id == start.unique_id,
            since=start.seq,
        )
        tx_id = reply.payload["transactionId"]
        assert reply.payload["idTagInfo"]["status"] == "Accepted"
        # Sent after the StartTransaction's answer was acknowledged on disk (one CALL at a
        # time on the link, and the ack is committed before the lock is given up).
        await cs.wait_for(
            lambda f: (
                f.is_call
                and f.direction is Direction.CP_TO_CS
                and f.action == "StatusNotification"
                and f.payload.get("connectorId") == 1
                and f.payload.get("status") == "Charging"
            ),
            timeout=20,
            since=reply.seq,
        )

        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
        with Store(tmp_path / "state" / "evsed.db") as store:
            (left_open,) = store.open_transactions()
            assert left_open.cs_transaction_id == tx_id
            assert left_open.id_tag == FREE_TAG

        mark = cs.mark()
        await second.start()
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=30, since=mark)
        payload = stop.payload
        assert payload["reason"] == "PowerLoss"
        assert payload["transactionId"] == tx_id
        assert payload["meterStop"] >= start.payload["meterStart"]
        answered = await cs.wait_for(
            lambda f: f.direction is Direction.CS_TO_CP and f.unique_id == stop.unique_id,
            since=stop.seq,
        )
        assert cs.transactions[tx_id].stop_reason == "PowerLoss"

        # Grace period: the second run's next heartbeat comes after everything it had queued.
        await cs.wait_for_call("Heartbeat", CP_ID, timeout=10, since=answered.seq)
        stops = [f for f in _cp_calls(cs, "StopTransaction") if f.payload["transactionId"] == tx_id]
        assert len(stops) == 1
        assert len(_cp_calls(cs, "StartTransaction")) == 1
        assert len(cs.transactions) == 1
        # The new bench's EV is unplugged: the restarted charger reports Available.
        statuses = [
            f.payload["status"]
            for f in _cp_calls(cs, "StatusNotification", mark)
            if f.payload["connectorId"] == 1
        ]
        assert statuses and statuses[-1] == "Available"

        assert await second.signal(signal.SIGTERM) == 0
    finally:
        await first.close()
        await second.close()
