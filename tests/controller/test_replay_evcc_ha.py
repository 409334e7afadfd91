"""evcc's and Home Assistant's start-up sequences, replayed frame by frame against evsed on the
bench (embedded Central System), with the frames as those tools write them.

Sources read (not copied): evcc-io/evcc `charger/ocpp/cp_setup.go` (Setup: ChangeAvailability,
GetConfiguration of all keys, measurands probed one at a time then written as one list,
MeterValueSampleInterval, WebSocketPingInterval) and lbbrhzn/ocpp
`custom_components/ocpp/chargepoint.py` `post_connect`, `ocppv16.py`
(`get_supported_measurands`: all 22 measurands at once, on Rejected GetConfiguration's value;
`configure`: GetConfiguration, then ChangeConfiguration only if the value differs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OcppRig, exchange, ocpp_rig

# evcc's desiredMeasurands, in its order (cp_setup.go).
EVCC_MEASURANDS = (
    "Power.Active.Import",
    "Energy.Active.Import.Register",
    "Current.Import",
    "Voltage",
    "Current.Offered",
    "Power.Offered",
    "SoC",
)
# Home Assistant's MEASURANDS (const.py): every OCPP 1.6 measurand, in the enum's order.
HA_MEASURANDS = (
    "Current.Export,Current.Import,Current.Offered,Energy.Active.Export.Register,"
    "Energy.Active.Import.Register,Energy.Reactive.Export.Register,"
    "Energy.Reactive.Import.Register,Energy.Active.Export.Interval,"
    "Energy.Active.Import.Interval,Energy.Reactive.Export.Interval,"
    "Energy.Reactive.Import.Interval,Frequency,Power.Active.Export,Power.Active.Import,"
    "Power.Factor,Power.Offered,Power.Reactive.Export,Power.Reactive.Import,RPM,SoC,"
    "Temperature,Voltage"
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[OcppRig]:
    async with CentralSystem(tags={CARD: "Accepted"}) as cs:
        async with ocpp_rig(cs, tmp_path) as r:
            yield r


def values(result: dict[str, Any]) -> dict[str, str | None]:
    return {kv["key"]: kv.get("value") for kv in result.get("configurationKey", [])}


async def get_one(rig: OcppRig, key: str) -> str | None:
    result = await exchange(rig, "GetConfiguration", {"key": [key]})
    assert "unknownKey" not in result, result
    return values(result)[key]


async def test_evcc_start_up(rig: OcppRig) -> None:
    assert await exchange(rig, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == {
        "status": "Accepted"
    }
    everything = values(await exchange(rig, "GetConfiguration", {}))
    # What Setup reads, and the values it then works with.
    assert everything["NumberOfConnectors"] == "1"
    profiles = (everything["SupportedFeatureProfiles"] or "").split(",")
    assert "Core" in profiles
    max_length = int(everything["MeterValuesSampledDataMaxLength"] or 0)
    assert max_length >= len(EVCC_MEASURANDS)
    # tryMeasurands: one ChangeConfiguration per measurand; errors (not Accepted) are skipped.
    accepted = []
    for m in EVCC_MEASURANDS:
        got = await exchange(
            rig, "ChangeConfiguration", {"key": "MeterValuesSampledData", "value": m}
        )
        assert got["status"] in ("Accepted", "Rejected"), got
        if got["status"] == "Accepted":
            accepted.append(m)
    assert accepted == list(EVCC_MEASURANDS[:-1])  # all but SoC: AC charging carries none
    joined = ",".join(accepted[:max_length])
    got = await exchange(
        rig, "ChangeConfiguration", {"key": "MeterValuesSampledData", "value": joined}
    )
    assert got == {"status": "Accepted"}
    for key, value in (("MeterValueSampleInterval", "10"), ("WebSocketPingInterval", "30")):
        got = await exchange(rig, "ChangeConfiguration", {"key": key, "value": value})
        assert got == {"status": "Accepted"}, key
    assert await get_one(rig, "MeterValuesSampledData") == joined
    # The phases evcc detects come from per-phase Current.Import in the MeterValues.
    mark = rig.central.mark()
    await rig.start_transaction()
    await rig.run(10.0)
    frame = await rig.call_of("MeterValues", since=mark)
    sampled = frame.payload["meterValue"][0]["sampledValue"]
    current_phases = {v.get("phase") for v in sampled if v["measurand"] == "Current.Import"}
    assert current_phases == {"L1", "L2", "L3"}
    units = {v["measurand"]: v.get("unit") for v in sampled}
    assert units["Energy.Active.Import.Register"] == "Wh"
    assert units["Power.Active.Import"] == units["Power.Offered"] == "W"
    assert units["Current.Import"] == units["Current.Offered"] == "A"
    assert units["Voltage"] == "V"


async def configure(rig: OcppRig, key: str, value: str) -> None:
    """Home Assistant's `configure`: read, and change only what differs."""
    if await get_one(rig, key) == value:
        return
    got = await exchange(rig, "ChangeConfiguration", {"key": key, "value": value})
    assert got["status"] in ("Accepted", "RebootRequired"), (key, got)


async def test_home_assistant_start_up(rig: OcppRig) -> None:
    profiles = await get_one(rig, "SupportedFeatureProfiles")
    assert "Core" in (profiles or "").split(",")
    assert await get_one(rig, "NumberOfConnectors") == "1"
    assert int(await get_one(rig, "HeartbeatInterval") or "") > 0
    # All 22 at once: SoC and others evsed cannot measure make it Rejected, as the
    # specification says; Home Assistant then reads what the charger reports and keeps it.
    got = await exchange(
        rig, "ChangeConfiguration", {"key": "MeterValuesSampledData", "value": HA_MEASURANDS}
    )
    assert got == {"status": "Rejected"}
    reported = await get_one(rig, "MeterValuesSampledData")
    assert reported and set(reported.split(",")) <= set(HA_MEASURANDS.split(","))
    await configure(rig, "MeterValuesSampledData", reported)
    await configure(rig, "MeterValueSampleInterval", "60")
    await configure(rig, "ClockAlignedDataInterval", "900")
    assert await exchange(rig, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == {
        "status": "Accepted"
    }
    assert await get_one(rig, "MeterValueSampleInterval") == "60"
    assert await get_one(rig, "ClockAlignedDataInterval") == "900"
