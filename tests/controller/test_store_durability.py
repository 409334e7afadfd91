"""Durable where it matters: what is answered or acted on survives a power cut.

Method: an emulated power cut built from the syncs evsed really makes. A power cut keeps
of a file only what was synced to the medium; a kill -9 keeps the page cache, so it cannot
show a missing sync. `PowerCut` wraps the store's fdatasync (every durable commit goes
through `evsed.controller.store.database._datasync`, on the WAL file) and, at each sync,
copies the WAL's bytes as they are then: exactly what that sync made durable. The image of
the state directory after a cut at moment T is the database file (asserted unchanged since
it was opened: no checkpoint ran, so it holds only what SQLite itself synced when creating
it) plus the WAL as of the last sync before T, and no shared-memory file. SQLite opens that
image and replays the WAL as after a real cut. Whatever was committed but not synced is not
in the image: `test_the_emulated_cut_loses_what_was_not_synced` checks the method itself
(a light commit is lost), so every other test here fails if its sync is removed. The
emulation is conservative: SQLite's own syncs in C (checkpoints) are not seen, so it can
only lose more than a real cut, never keep more.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.connector.status import StopReason
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Reservation, Store, database
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import ocpp_rig

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class PowerCut:
    """See the module docstring. ``image()`` is the state directory after a cut *now*."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db_path: Path, work: Path) -> None:
        self.db_path = db_path
        self.wal_path = Path(f"{db_path}-wal")
        self.work = work
        self.synced_wal: bytes | None = None
        self.main_at_open: bytes | None = None
        self._images = 0
        real = database._datasync

        def observed(fd: int) -> None:
            real(fd)
            if os.path.samefile(f"/proc/self/fd/{fd}", self.wal_path):
                self.synced_wal = os.pread(fd, os.fstat(fd).st_size, 0)

        monkeypatch.setattr(database, "_datasync", observed)

    def opened(self) -> None:
        """Call once the store is open: its database file is the synced base of images."""
        self.main_at_open = self.db_path.read_bytes()

    def image(self) -> Path:
        assert self.main_at_open is not None, "call opened() first"
        assert self.db_path.read_bytes() == self.main_at_open, "a checkpoint ran: not emulated"
        self._images += 1
        target = self.work / f"cut-{self._images}"
        target.mkdir()
        db = target / self.db_path.name
        db.write_bytes(self.main_at_open)
        if self.synced_wal is not None:
            Path(f"{db}-wal").write_bytes(self.synced_wal)
        return db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.image())
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


@pytest.fixture
def store_and_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, PowerCut]]:
    state = tmp_path / "state"
    state.mkdir()
    cut = PowerCut(monkeypatch, state / "evsed.db", tmp_path)
    # No automatic checkpoint, as in OcppApp (its checkpoints run every 10 min).
    store = Store(cut.db_path, wal_autocheckpoint_pages=0)
    cut.opened()
    yield store, cut
    store.close()


def test_the_emulated_cut_loses_what_was_not_synced(store_and_cut: tuple[Store, PowerCut]) -> None:
    store, cut = store_and_cut
    store.record_meter(1, 1234.0, T0, force=True)  # a light commit
    assert store.last_meter(1) is not None  # committed: a kill -9 would keep it
    assert cut.query("SELECT energy_wh FROM meter") == []  # a power cut does not
    store.sync()
    assert cut.query("SELECT energy_wh FROM meter") == [(1234.0,)]


def test_transaction_messages_durable_when_their_call_returns(
    store_and_cut: tuple[Store, PowerCut],
) -> None:
    store, cut = store_and_cut
    q = TxQueue(store)
    local = q.start_transaction(1, "AABBCCDD", 1000, T0)
    assert cut.query("SELECT local_id, state FROM transactions") == [(local, "open")]
    assert cut.query("SELECT action FROM tx_queue") == [("StartTransaction",)]

    q.meter_values(1, [], local, energy_wh=1010.0, at=T0 + timedelta(seconds=10))
    assert len(cut.query("SELECT action FROM tx_queue")) == 1  # light: may be lost

    start = q.next_due(0.0)
    assert start is not None
    q.ack(start.id, {"transactionId": 77})
    assert cut.query("SELECT cs_transaction_id FROM transactions") == [(77,)]

    q.stop_transaction(local, 1020, T0 + timedelta(seconds=20), "Local")
    assert cut.query("SELECT state, meter_stop_wh FROM transactions") == [("stopping", 1020)]
    assert ("StopTransaction",) in cut.query("SELECT action FROM tx_queue")
    stop = next(m for m in q.pending() if m.action == "StopTransaction")
    q.ack(stop.id, {})
    assert cut.query("SELECT state FROM transactions") == [("stopped",)]


def test_changes_answered_to_the_cs_are_durable_when_stored(
    store_and_cut: tuple[Store, PowerCut],
) -> None:
    store, cut = store_and_cut
    store.set_config("HeartbeatInterval", "120")
    assert cut.query("SELECT value FROM config WHERE key = 'HeartbeatInterval'") == [("120",)]
    store.local_list_update(4, {"AABB": {"status": "Accepted"}}, full=True)
    assert cut.query("SELECT value FROM meta WHERE key = 'local_list_version'") == [("4",)]
    assert cut.query("SELECT id_tag FROM local_list") == [("AABB",)]
    store.profile_put(5, 1, "TxDefaultProfile", 0, {"chargingProfileId": 5})
    assert cut.query("SELECT profile_id FROM charging_profiles") == [(5,)]
    store.profile_clear(profile_id=5)
    assert cut.query("SELECT profile_id FROM charging_profiles") == []
    store.reservation_put(Reservation(9, 1, "AABB", T0))
    assert cut.query("SELECT reservation_id FROM reservations") == [(9,)]
    store.reservation_delete(9)
    assert cut.query("SELECT reservation_id FROM reservations") == []
    store.cache_put("CCDD", {"status": "Accepted"}, None)
    store.cache_clear()
    assert cut.query("SELECT id_tag FROM auth_cache") == []
    store.set_pending_stop_reason("HardReset")
    assert cut.query("SELECT value FROM meta WHERE key = 'pending_stop_reason'") == [("HardReset",)]


async def test_start_durable_before_the_relay_closes_and_stop_before_it_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole charger on the bench, offline (no acknowledgement syncs in between):
    the image taken the instant the relay output energises holds the open transaction;
    the one taken when the stop hook returns holds the stop and its queued message."""
    cut = PowerCut(monkeypatch, tmp_path / "evsed.db", tmp_path)
    async with CentralSystem() as cs:
        cs.set_offline(True)
        async with ocpp_rig(cs, tmp_path, online=False, authorization={"free_vend": True}) as rig:
            cut.opened()
            at_relay: list[list[tuple[Any, ...]]] = []
            relay = rig.sim.pins.relay
            on_change = relay.on_change

            def relay_changed() -> None:
                if rig.sim.pins.relay_energized and not at_relay:
                    at_relay.append(cut.query("SELECT state, id_tag FROM transactions"))
                on_change()

            relay.on_change = relay_changed
            at_stop: list[list[tuple[Any, ...]]] = []
            stopped = asyncio.Event()

            def on_event(name: str, fields: dict[str, Any]) -> None:
                if name == "transaction_stopped":
                    at_stop.append(cut.query("SELECT state FROM transactions"))
                    at_stop.append(cut.query("SELECT action FROM tx_queue ORDER BY id"))
                    stopped.set()

            rig.ocpp.ctx.observers.append(on_event)
            await rig.bench.plug(1)  # free vend: the transaction starts at once
            await rig.until(lambda: rig.sim.pins.relay_energized, within_s=10)
            assert at_relay == [[("open", "FREEVEND")]]

            rig.connector.request_stop(StopReason.LOCAL)
            await rig.until(stopped.is_set, within_s=5)
            assert at_stop[0] == [("stopping",)]
            assert at_stop[1][0] == ("StartTransaction",)
            assert at_stop[1][-1] == ("StopTransaction",)
