"""The authorisation cache's size bound and eviction order (OCPP 1.6 §3.5.1): first entries
that can no longer authorise (not Accepted, or past their expiryDate), then the least
recently used; persisted (the order survives a restart, an old database migrates); the local
list is never evicted and keeps its precedence; ClearCache still empties it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from evsed.controller.config import Authorization
from evsed.controller.ocpp16.auth import DEFAULT_CACHE_MAX_ENTRIES, Authorizer, AuthSource
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.store import SCHEMA_VERSION, Store
from evsed.controller.store.schema import MIGRATIONS
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import ocpp_rig

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACCEPTED = {"status": "Accepted"}
PROFILES = ["Core", "LocalAuthListManagement"]


def tags(n: int, prefix: str = "T") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


# -- the store ------------------------------------------------------------------------------


def test_inserting_n_plus_k_keeps_n_and_evicts_the_k_least_recently_used(
    tmp_path: Path,
) -> None:
    n, k = 20, 5
    with Store(tmp_path / "evsed.db") as store:
        evicted: list[str] = []
        for tag in tags(n + k):
            evicted += store.cache_put(tag, ACCEPTED, None, max_entries=n, now=T0)
        assert store.cache_len() == n
        assert evicted == tags(k)  # the first five in, never used since
        assert store.cache_tags() == tags(n + k)[k:]


def test_a_used_tag_survives_eviction(tmp_path: Path) -> None:
    with Store(tmp_path / "evsed.db") as store:
        for tag in tags(3):
            store.cache_put(tag, ACCEPTED, None, max_entries=3, now=T0)
        store.cache_touch("T0000")  # the oldest entry is used again
        assert store.cache_put("NEW", ACCEPTED, None, max_entries=3, now=T0) == ["T0001"]
        assert store.cache_get("T0000") is not None
        # An update of an entry is a use too, and does not grow the cache.
        store.cache_put("T0002", {"status": "Accepted", "parentIdTag": "P"}, None, max_entries=3)
        assert store.cache_put("NEW2", ACCEPTED, None, max_entries=3, now=T0) == ["T0000"]
        assert store.cache_tags() == ["NEW", "T0002", "NEW2"]


def test_entries_that_cannot_authorise_go_before_the_least_recently_used(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "evsed.db") as store:
        put = store.cache_put
        put("OLD-OK", ACCEPTED, None)
        put("OLD-OK-2", ACCEPTED, T0 + timedelta(hours=1))  # still valid at T0
        put("BLOCKED", {"status": "Blocked"}, None)
        # Stored Accepted, but its expiryDate (a fraction of a second past a full second,
        # so a comparison of the texts would misorder it) has come.
        put("STALE", ACCEPTED, T0 - timedelta(seconds=1) + timedelta(microseconds=500_000))
        put("INVALID", {"status": "Invalid"}, None)
        put("NEW-OK", ACCEPTED, None)
        evicted = put("NEWEST", ACCEPTED, None, max_entries=4, now=T0)
        # Three over the bound: the three that cannot authorise, oldest use first.
        assert evicted == ["BLOCKED", "STALE", "INVALID"]
        evicted = put("NEWER", ACCEPTED, None, max_entries=4, now=T0)
        assert evicted == ["OLD-OK"]  # then the least recently used
        assert set(store.cache_tags()) == {"OLD-OK-2", "NEW-OK", "NEWEST", "NEWER"}


def test_an_unchanged_entry_is_not_written_again_but_the_newest_is_never_evicted(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "evsed.db") as store:
        store.cache_put("A", ACCEPTED, None)
        store.cache_put("B", ACCEPTED, None)
        # A bound below the current size (lowered in the configuration): the next write
        # evicts down to it, but never the entry it writes, even an invalid one.
        assert store.cache_put("C", {"status": "Invalid"}, None, max_entries=1, now=T0) == [
            "A",
            "B",
        ]
        assert store.cache_tags() == ["C"]
        before = store.cache_tags()
        assert store.cache_put("C", {"status": "Invalid"}, None, max_entries=1) == []
        assert store.cache_tags() == before


def test_the_order_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Store(path) as store:
        for tag in tags(4):
            store.cache_put(tag, ACCEPTED, None, max_entries=4)
        store.cache_touch("T0000")
    with Store(path) as store:
        assert store.cache_tags() == ["T0001", "T0002", "T0003", "T0000"]
        assert store.cache_put("AFTER", ACCEPTED, None, max_entries=4, now=T0) == ["T0001"]


def test_a_version_3_database_opens_and_its_entries_are_evicted_first(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    con = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:3], start=1):
        con.executescript(f"BEGIN; {script} PRAGMA user_version={version}; COMMIT;")
    con.execute(
        "INSERT INTO auth_cache (id_tag, id_tag_info, expiry) VALUES ('LEGACY', ?, NULL)",
        ('{"status":"Accepted"}',),
    )
    con.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        cached = store.cache_get("LEGACY")
        assert cached is not None and cached.id_tag_info == ACCEPTED
        store.cache_put("NEW", ACCEPTED, None, max_entries=2, now=T0)
        assert store.cache_put("NEWER", ACCEPTED, None, max_entries=2, now=T0) == ["LEGACY"]


# -- through the authoriser -----------------------------------------------------------------


@dataclass
class FakeCS:
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    connected: bool = True

    async def send_authorize(self, id_tag: str) -> dict[str, Any] | None:
        self.asked.append(id_tag)
        return self.answers.get(id_tag, ACCEPTED)


@dataclass
class Rig:
    store: Store
    keys: ConfigurationKeys
    cs: FakeCS
    auth: Authorizer


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Store(tmp_path / "evsed.db") as store:
        keys = ConfigurationKeys(
            store,
            number_of_connectors=1,
            supported_feature_profiles=PROFILES,
            overrides={"LocalAuthListEnabled": "true", "LocalAuthorizeOffline": "true"},
        )
        cs = FakeCS()
        auth = Authorizer(
            store,
            keys,
            FakeClock(T0),
            online=lambda: cs.connected,
            send_authorize=cs.send_authorize,
            cache_max_entries=3,
        )
        yield Rig(store, keys, cs, auth)


def test_the_default_bound_is_the_configuration_default() -> None:
    assert Authorization().cache_max_entries == DEFAULT_CACHE_MAX_ENTRIES == 1000
    with pytest.raises(ValidationError, match="cache_max_entries"):
        Authorization(cache_max_entries=0)


async def test_a_tag_used_offline_survives_while_the_unused_ones_are_evicted(rig: Rig) -> None:
    for tag in ("A", "B", "C"):
        assert (await rig.auth.authorize(tag)).accepted  # online: the CS's answer is cached
    rig.cs.connected = False
    decision = await rig.auth.decide("A")  # A authorises from the cache: it is used
    assert decision.accepted and decision.source is AuthSource.CACHE
    rig.cs.connected = True
    await rig.auth.authorize("D")
    await rig.auth.authorize("E")
    assert rig.store.cache_len() == 3
    assert rig.store.cache_get("B") is None and rig.store.cache_get("C") is None
    assert set(rig.store.cache_tags()) == {"A", "D", "E"}


async def test_the_local_list_is_never_evicted_and_keeps_precedence(rig: Rig) -> None:
    rig.cs.answers["LISTED"] = {"status": "Blocked"}
    await rig.auth.authorize("LISTED")  # cached Blocked before the list named it
    listed = {f"L{i}": dict(ACCEPTED) for i in range(10)} | {"LISTED": dict(ACCEPTED)}
    rig.store.local_list_update(1, listed, full=True)
    rig.cs.connected = False
    assert rig.store.cache_get("LISTED") is not None
    decision = await rig.auth.decide("LISTED")  # the list wins over the cached Blocked
    assert decision.accepted and decision.source is AuthSource.LOCAL_LIST
    rig.cs.connected = True
    for tag in tags(10):
        await rig.auth.authorize(tag)
    assert rig.store.cache_len() == 3  # the list's eleven entries do not count
    assert rig.store.local_list_entries() == listed  # and none of them went
    rig.cs.connected = False
    assert (await rig.auth.decide("L5")).source is AuthSource.LOCAL_LIST


async def test_clear_cache_still_empties_a_full_cache(rig: Rig) -> None:
    for tag in tags(5):
        await rig.auth.authorize(tag)
    assert rig.store.cache_len() == 3
    assert rig.auth.clear_cache() is True
    assert rig.store.cache_len() == 0
    await rig.auth.authorize("AFTER")
    assert rig.store.cache_tags() == ["AFTER"]


# -- wired from the configuration, against the embedded Central System -----------------------


async def test_the_configured_bound_holds_for_the_running_charge_point(tmp_path: Path) -> None:
    cards = ["CARD-A", "CARD-B", "CARD-C"]
    async with (
        CentralSystem(tags=dict.fromkeys(cards, "Accepted")) as cs,
        ocpp_rig(cs, tmp_path, authorization={"cache_max_entries": 2}) as rig,
    ):
        authorizer = rig.ocpp.ctx.authorizer
        assert authorizer is not None
        for card in cards:
            assert (await authorizer.authorize(card)).accepted  # Authorize.req to the CS
        assert rig.ocpp.store.cache_tags() == ["CARD-B", "CARD-C"]
