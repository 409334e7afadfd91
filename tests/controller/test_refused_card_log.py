"""A refused card leaves one line at INFO (masked), not only "card ... on reader": a
newcomer tapped an unknown card and found nothing in the journal saying why nothing
happened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OTHER, ocpp_rig

BRIDGE_LOG = "evsed.controller.ocpp16.bridge"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


async def test_a_refused_card_is_logged_masked_and_an_accepted_one_is_not(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, BRIDGE_LOG)
    async with ocpp_rig(cs, tmp_path) as rig:
        assert (await rig.ocpp.hooks.authorize(1, OTHER)).status == "Invalid"
        assert (await rig.ocpp.hooks.authorize(1, CARD)).status == "Accepted"
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == BRIDGE_LOG and "refused" in r.getMessage()
    ]
    assert len(lines) == 1
    assert "connector 1" in lines[0] and "(Invalid)" in lines[0]
    assert OTHER not in lines[0] and OTHER[-4:] in lines[0]  # masked, recognisable
