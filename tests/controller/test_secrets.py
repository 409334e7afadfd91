"""No secret reaches a log line: not the AuthorizationKey a CS sets, nor the one in use."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CP_ID, ocpp_rig

NEW_KEY = "n3w-s3cret-key-0123456789"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as central:
        yield central


async def test_authorization_key_set_by_the_cs_is_never_logged(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ocpp_rig(cs, tmp_path) as rig:
        reply = await cs.call(
            CP_ID, call.ChangeConfiguration(key="AuthorizationKey", value=NEW_KEY), timeout=5
        )
        assert reply.status == "Accepted"
        got = await cs.call(CP_ID, call.GetConfiguration(key=["AuthorizationKey"]), timeout=5)
        assert "AuthorizationKey" in got.unknown_key  # write-only: never read back
        assert rig.app is not None
        frames = [f for e, f in rig.events if e == "frame"]
        assert frames and all(NEW_KEY not in str(f["raw"]) for f in frames)
    # The charge point's own loggers; the test CS in this process logs its frames through
    # the library's "ocpp" logger, which is not ours to judge.
    ours = [r for r in caplog.records if r.name.split(".")[0] == "evsed"]
    logged = "\n".join(record.getMessage() for record in ours)
    assert "ChangeConfiguration" in logged  # the frame was logged ...
    assert NEW_KEY not in logged  # ... without the key
