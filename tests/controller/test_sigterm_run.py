"""`evsed run` stopped with SIGTERM or SIGINT mid-charge: transaction stopped, nothing left on.

The StopTransaction (reason Reboot) reaches the CS before the process exits, its
meterStop is the meter's reading in Wh, the exit status is 0, and the state on disk has no
open transaction, so the next start has nothing to recover.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem
from tests.support.evsed_process import CP_ID, FREE_TAG, Evsed, _config, _cp_calls, until_charging


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as central:
        yield central


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_while_charging_stops_cleanly(
    cs: CentralSystem, tmp_path: Path, sig: signal.Signals
) -> None:
    evsed = Evsed(_config(tmp_path, cs.url), tmp_path / "evsed.log")
    try:
        await evsed.start()
        await evsed.bench("plug", connector=1)
        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=20)
        await until_charging(cs, start.seq)
        status = await evsed.bench("status", connector=1)
        assert status["relay"]["energized"] is True
        # A reading the CS sees, to hold the StopTransaction's meterStop against.
        reply = await cs.call(
            CP_ID, call.ChangeConfiguration(key="MeterValueSampleInterval", value="1")
        )
        assert reply.status == "Accepted"
        sample = await cs.wait_for(
            lambda f: (
                f.is_call
                and f.action == "MeterValues"
                and _energy_wh(f.payload) > start.payload["meterStart"]
            ),
            timeout=20,
            since=start.seq,
        )
        reading_wh = _energy_wh(sample.payload)

        assert await evsed.signal(sig) == 0
        stops = _cp_calls(cs, "StopTransaction")
        assert len(stops) == 1, "the StopTransaction was delivered before the exit"
        assert stops[0].payload["reason"] == "Reboot"
        # Wh, from the same meter: not below the last reading, not kWh (a thousand times less).
        assert reading_wh <= stops[0].payload["meterStop"] <= reading_wh + 100
        with Store(tmp_path / "state" / "evsed.db") as store:
            assert store.open_transactions() == []
        journal = (tmp_path / "evsed.log").read_text()
        assert "Traceback" not in journal
        assert f"{sig.name} received: stopping evsed" in journal  # why it ended
    finally:
        await evsed.close()


def _energy_wh(payload: dict[str, object]) -> float:
    for value in payload["meterValue"][0]["sampledValue"]:  # type: ignore[index]
        if value.get("measurand", "Energy.Active.Import.Register") == (
            "Energy.Active.Import.Register"
        ):
            assert value.get("unit", "Wh") == "Wh"
            return float(value["value"])
    return 0.0
