"""The Central System and the charger agree about a transaction when the disk fails or a
hook raises around its record (safety review of issue 14, F2).

Before: fdatasync failing (EIO) after the start's COMMIT left an OPEN transaction with a
queued StartTransaction behind a connector that reported "not recorded" (later sent, then
stopped with PowerLoss: a session that never ran); a hook raising after the start's commit
made the connector disown a session whose StartTransaction was sent (no stop ever); and
fdatasync failing after the stop's commit unwound before the queue was woken (no
StopTransaction after 600 simulated seconds)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.store.database import Database
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, OcppRig, ocpp_rig


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def _fail_next_sync(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The next `Database.sync` raises EIO (after the COMMIT it follows), later ones work."""
    real = Database.sync
    state = {"armed": 1, "failed": 0}

    def sync(self: Database, *args: Any, **kwargs: Any) -> None:
        if state["armed"]:
            state["armed"] = 0
            state["failed"] += 1
            raise OSError(errno.EIO, "Input/output error")
        real(self, *args, **kwargs)

    monkeypatch.setattr(Database, "sync", sync)
    return state


async def _settle(rig: OcppRig, seconds: float) -> None:
    for _ in range(int(seconds / 0.05)):
        await rig.clock.advance(0.05)
        await asyncio.sleep(0.005)  # the CS and the meter answer over loopback sockets


async def test_a_start_whose_sync_fails_is_undone(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.plug()
        failing = _fail_next_sync(monkeypatch)
        mark = cs.mark()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        await _settle(rig, 5)
        assert failing["failed"] == 1
        store = rig.ocpp.ctx.store
        assert rig.connector.transaction is None
        assert not rig.sim.pins.relay_energized
        assert rig.calls("StartTransaction", since=mark) == []
        assert store.open_transactions() == []  # nothing for the next start to stop
        assert store.queue_rows() == [] and store.queue_rows(parked=True) == []
        tx = store.transaction(1)
        assert tx is not None and tx.start_dropped


async def test_a_hook_raising_after_the_start_leaves_the_session_recorded(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.plug()
        smart = rig.ocpp.ctx.smart_charging
        assert smart is not None

        def raising(connector_id: int) -> None:
            raise RuntimeError("hook raised")

        monkeypatch.setattr(smart, "reevaluate", raising)
        mark = cs.mark()
        assert await rig.remote_start(CARD, connector_id=1) == "Accepted"
        await _settle(rig, 5)
        # The CS was told of the session: the connector runs it, the store has it open.
        assert len(rig.calls("StartTransaction", since=mark)) == 1
        tx = rig.connector.transaction
        assert tx is not None
        assert [t.local_id for t in rig.ocpp.ctx.store.open_transactions()] == [tx.local_id]
        assert rig.ocpp.hooks.task_failures["after-start"] == 1
        monkeypatch.undo()
        await rig.bench.unplug(1)
        await _settle(rig, 5)
        assert len(rig.calls("StopTransaction", since=mark)) == 1


async def test_a_stop_whose_sync_fails_is_delivered_at_once(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.start_transaction()
        await rig.run(30)
        failing = _fail_next_sync(monkeypatch)
        mark = cs.mark()
        await rig.bench.unplug(1)
        await _settle(rig, 10)
        assert failing["failed"] == 1
        assert len(rig.calls("StopTransaction", since=mark)) == 1
        assert len(rig.ocpp.txqueue) == 0
