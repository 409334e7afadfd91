"""The authorisation cache and the local authorisation list (with its version)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evsed.controller.store.codec import dt, dumps, loads, ts
from evsed.controller.store.database import Repository


@dataclass(frozen=True, slots=True)
class CachedAuth:
    id_tag: str
    id_tag_info: dict[str, Any]
    expiry: datetime | None


class LocalListTooLong(ValueError):
    """A SendLocalList whose result would exceed LocalAuthListMaxLength (rolled back)."""


#: The next value of the cache's use counter (see schema migration 4).
_NEXT_USE = "(SELECT coalesce(max(last_used), 0) + 1 FROM auth_cache)"

# Eviction order (OCPP 1.6 §3.5.1): first what can no longer authorise anyone (a status
# other than Accepted, or past its expiryDate), then the least recently used; within each,
# the oldest use first. julianday() compares the stored ISO texts as instants (a text
# comparison would misorder "12:00:00+00:00" and "12:00:00.5+00:00").
_EVICTION_ORDER = (
    "SELECT id_tag FROM auth_cache WHERE id_tag != ? ORDER BY "
    "CASE WHEN coalesce(json_extract(id_tag_info, '$.status'), '') != 'Accepted' "
    "OR (expiry IS NOT NULL AND julianday(expiry) <= julianday(?)) THEN 0 ELSE 1 END, "
    "last_used LIMIT ?"
)


class AuthRepository(Repository):
    # -- authorisation cache: light (a lost entry is asked for again) -----------------------

    def cache_put(
        self,
        id_tag: str,
        id_tag_info: Mapping[str, Any],
        expiry: datetime | None,
        *,
        max_entries: int | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        """Add or update an entry, marking it the most recently used; an unchanged entry is
        not written again. With ``max_entries``, a cache grown above it evicts down to it
        (never ``id_tag`` itself; ``now`` decides what has expired) in the same commit.
        Returns the evicted idTags."""
        with self._db.atomic():
            cur = self._db.execute(
                "INSERT INTO auth_cache (id_tag, id_tag_info, expiry, last_used) "
                f"VALUES (?, ?, ?, {_NEXT_USE}) "
                "ON CONFLICT (id_tag) DO UPDATE SET id_tag_info = excluded.id_tag_info, "
                "expiry = excluded.expiry, last_used = excluded.last_used "
                "WHERE id_tag_info IS NOT excluded.id_tag_info OR expiry IS NOT excluded.expiry",
                (id_tag, dumps(id_tag_info), ts(expiry)),
            )
            if cur.rowcount == 0 or max_entries is None:
                return []
            return self._cache_evict(max_entries, now, keep=id_tag)

    def _cache_evict(self, max_entries: int, now: datetime | None, *, keep: str) -> list[str]:
        excess = self.cache_len() - max(0, max_entries)
        if excess <= 0:
            return []
        rows = self._db.execute(_EVICTION_ORDER, (keep, ts(now), excess)).fetchall()
        tags = [str(r[0]) for r in rows]
        self._db.executemany("DELETE FROM auth_cache WHERE id_tag = ?", [(t,) for t in tags])
        return tags

    def cache_touch(self, id_tag: str) -> None:
        """The entry was used to authorise: it becomes the most recently used. No write when
        it already is (the same card presented again)."""
        self._db.execute(
            f"UPDATE auth_cache SET last_used = {_NEXT_USE} WHERE id_tag = ? "
            "AND last_used < (SELECT max(last_used) FROM auth_cache)",
            (id_tag,),
        )

    def cache_get(self, id_tag: str) -> CachedAuth | None:
        row = self._db.execute(
            "SELECT id_tag, id_tag_info, expiry FROM auth_cache WHERE id_tag = ?", (id_tag,)
        ).fetchone()
        return None if row is None else CachedAuth(row[0], loads(row[1]), dt(row[2]))

    def cache_len(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM auth_cache").fetchone()[0])

    def cache_tags(self) -> list[str]:
        """Every cached idTag, least recently used first."""
        rows = self._db.execute("SELECT id_tag FROM auth_cache ORDER BY last_used, id_tag")
        return [str(r[0]) for r in rows.fetchall()]

    def cache_clear(self) -> None:
        """Durable: ClearCache is answered after it (a revoked card must stay revoked)."""
        with self._db.durable():
            self._db.execute("DELETE FROM auth_cache")

    # -- local authorisation list: durable (SendLocalList is answered after it) -------------

    def local_list_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'local_list_version'").fetchone()
        return 0 if row is None else int(row[0])

    def local_list_get(self, id_tag: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id_tag_info FROM local_list WHERE id_tag = ?", (id_tag,)
        ).fetchone()
        return None if row is None else loads(row[0])

    def local_list_entries(self) -> dict[str, dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id_tag, id_tag_info FROM local_list ORDER BY id_tag"
        ).fetchall()
        return {r[0]: loads(r[1]) for r in rows}

    def local_list_len(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM local_list").fetchone()[0])

    def local_list_update(
        self,
        version: int,
        entries: Mapping[str, Mapping[str, Any] | None],
        *,
        full: bool,
        max_len: int | None = None,
    ) -> None:
        """SendLocalList: ``full`` replaces the list; a differential update deletes the tags
        whose info is None and upserts the others. One durable commit, version included:
        all or nothing. A list that would end up longer than ``max_len`` raises
        `LocalListTooLong` and changes nothing."""
        with self._db.durable():
            _write_local_list(
                self._db.execute, self._db.executemany, version, entries, full, max_len
            )

    async def local_list_update_off_loop(
        self,
        version: int,
        entries: Mapping[str, Mapping[str, Any] | None],
        *,
        full: bool,
        max_len: int | None = None,
    ) -> None:
        """`local_list_update` in a worker thread, on a connection of its own, synced there.

        A 10,000-entry list costs 100-200 ms of SQLite and JSON (page size 1 KiB, a NOCASE
        index): on the loop that would stall the session. SQLite releases the GIL while it
        works; the loop's own connection waits (busy timeout) only if it writes meanwhile."""
        await asyncio.to_thread(self._local_list_write_in_thread, version, entries, full, max_len)

    def _local_list_write_in_thread(
        self,
        version: int,
        entries: Mapping[str, Mapping[str, Any] | None],
        full: bool,
        max_len: int | None,
    ) -> None:
        con = sqlite3.connect(self._db.path, isolation_level=None, timeout=30.0)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                _write_local_list(con.execute, con.executemany, version, entries, full, max_len)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()
        self._db.sync()  # answered only once it survives a power cut


def _write_local_list(
    execute: Callable[..., Any],
    executemany: Callable[..., Any],
    version: int,
    entries: Mapping[str, Mapping[str, Any] | None],
    full: bool,
    max_len: int | None,
) -> None:
    removed = [(tag,) for tag, info in entries.items() if info is None]
    kept = [(tag, dumps(info)) for tag, info in entries.items() if info is not None]
    if full:
        execute("DELETE FROM local_list")
    elif removed:
        executemany("DELETE FROM local_list WHERE id_tag = ?", removed)
    executemany(
        "INSERT INTO local_list (id_tag, id_tag_info) VALUES (?, ?) "
        "ON CONFLICT (id_tag) DO UPDATE SET id_tag_info = excluded.id_tag_info",
        kept,
    )
    if max_len is not None:
        count = int(execute("SELECT count(*) FROM local_list").fetchone()[0])
        if count > max_len:
            raise LocalListTooLong(f"the local list would exceed {max_len} entries")
    execute(
        "INSERT INTO meta (key, value) VALUES ('local_list_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )
