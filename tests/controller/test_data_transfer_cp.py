"""CP -> CS DataTransfer: sent when online, a clear None when not (never queued)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CP_ID, ocpp_rig
from tests.support.ocpp_stack import cut_link


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as central:
        yield central


async def test_data_transfer_to_the_cs(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        assert rig.app is not None
        cs.data_transfer_status = "Accepted"
        assert await rig.app.data_transfer("com.evsed", "hello", "42") == ("Accepted", None)
        cp_id, payload = cs.data_transfers[-1]
        assert cp_id == CP_ID
        assert payload == {"vendor_id": "com.evsed", "message_id": "hello", "data": "42"}
        cs.data_transfer_status = "UnknownVendorId"
        assert await rig.app.data_transfer("org.other") == ("UnknownVendorId", None)
        await cut_link(rig)
        assert await rig.app.data_transfer("com.evsed") is None
