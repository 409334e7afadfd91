"""The transaction number a user reads is the Central System's transactionId: the log names
it once StartTransaction.conf arrives (evsed's own record id only as "local N"), and
`evsed status` (table and --json) shows it, or "pending" before the answer; and the table
says "no EV" where it said "suspended (cable)" with nothing plugged.

The CS here numbers from 41, so its ids and evsed's local ids (from 1) cannot be confused."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from evsed.controller import status
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}, first_transaction_id=41) as central:
        yield central


def _cs_id(rig) -> int | None:
    tx = rig.ocpp.store.open_transaction_on(1)
    return None if tx is None else tx.cs_transaction_id


def _snapshot(rig) -> dict:
    stack = SimpleNamespace(charger=rig.stack.charger, ocpp=rig.ocpp, clock=rig.clock)
    return status.snapshot(stack, status.LinkTracker(rig.ocpp.config, rig.clock))


async def test_log_and_status_name_the_central_systems_transaction_id(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with ocpp_rig(cs, tmp_path) as rig:
        cs_id = await rig.start_transaction(CARD)
        assert cs_id == 41
        # The answer is stored before the start reaction runs; wait for it, not for time.
        await rig.until(lambda: _cs_id(rig) == 41)
        snap = _snapshot(rig)
        (c1,) = snap["connectors"]
        assert c1["transaction"]["transaction_id"] == 41
        assert c1["transaction"]["local_id"] == 1
        table = status.format_table(snap)
        assert "#41 " in table
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("evsed"))
    assert "connector 1 transaction (local 1) started" in text
    assert "connector 1 transaction 41 (local 1): Central System answered Accepted" in text
    assert "transaction 1 started" not in text, "the local id is never shown as the CS's"


def _snap(tx: dict | None, configured: bool = True) -> dict:
    return {
        "central_system": {
            "configured": configured,
            "online": True,
            "connected": True,
            "since": None,
            "last_error": "",
            "url": "ws://cs.example/CP",
        },
        "queue_depth": 0,
        "connectors": [
            {
                "id": 1,
                "status": "Charging",
                "error_code": "NoError",
                "pilot": "C",
                "offered_a": 16.0,
                "drawn_a": 15.9,
                "power_w": 3600,
                "energy_wh": 1000,
                "faults": [],
                "transaction": tx,
                "limit": {"amps": 16.0, "suspended": False, "reason": "config"},
            }
        ],
    }


def test_before_the_answer_the_table_says_pending() -> None:
    tx = {"transaction_id": None, "local_id": 3, "id_tag": "******DDEE", "energy_wh": 12}
    assert " pending ******DDEE 12 Wh" in status.format_table(_snap(tx))
    # Without a Central System there is no transactionId to wait for: evsed's own record.
    assert " local 3 ******DDEE" in status.format_table(_snap(tx, configured=False))


def test_nothing_plugged_reads_no_ev_not_suspended_cable() -> None:
    snap = _snap(None)
    c1 = snap["connectors"][0]
    c1.update(pilot="A", status="Available")
    c1["limit"] = {"amps": 0.0, "suspended": True, "reason": "cable"}
    table = status.format_table(snap)
    assert " no EV " in table + " " and "suspended (cable)" not in table
    c1["pilot"] = "B"  # a cable without a readable rating: that one is a limit
    assert "suspended (cable)" in status.format_table(snap)


def test_a_faulted_connector_offers_nothing_whatever_the_limiter_allows() -> None:
    """Fails without the change: the column read "32.0 A (hardware)" while Faulted (the
    limiter's allowance; the fault holds the pilot off)."""
    snap = _snap(None)
    c1 = snap["connectors"][0]
    c1.update(status="Faulted", error_code="GroundFailure", pilot="A", offered_a=0.0)
    c1["limit"] = {"amps": 32.0, "suspended": False, "reason": "hardware"}
    table = status.format_table(snap)
    assert "- (faulted)" in table and "(hardware)" not in table
    c1["limit"] = {"amps": 0.0, "suspended": True, "reason": "cable"}  # and nothing plugged
    table = status.format_table(snap)
    assert "- (faulted)" in table and "no EV" not in table
