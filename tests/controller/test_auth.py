"""Authorisation: local list, cache, online/offline rules of OCPP 1.6 §3.5, §4.1, §5.4."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.connector.hooks import AuthResult
from evsed.controller.ocpp16.auth import (
    Authorizer,
    AuthSource,
    StartConfAction,
    parse_expiry,
    same_group,
)
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.store import Store
from tests.support.clock import FakeClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALL_PROFILES = ["Core", "LocalAuthListManagement", "RemoteTrigger"]


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@dataclass
class FakeCS:
    """The Authorize CALL's far side: answers from a dict, None = no answer."""

    answers: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    connected: bool = True
    raises: bool = False

    async def send_authorize(self, id_tag: str) -> dict[str, Any] | None:
        self.asked.append(id_tag)
        if self.raises:
            raise RuntimeError("session bug")
        return self.answers.get(id_tag.upper(), {"status": "Invalid"})


@dataclass
class Rig:
    store: Store
    keys: ConfigurationKeys
    clock: FakeClock
    cs: FakeCS
    auth: Authorizer
    conflicts: list[tuple[str, dict[str, Any], dict[str, Any]]]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    stores: list[Store] = []

    def factory(profiles: list[str] = ALL_PROFILES, **overrides: str | bool) -> Rig:
        store = Store(tmp_path / f"db{len(stores)}.sqlite")
        stores.append(store)
        values = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in overrides.items()}
        keys = ConfigurationKeys(
            store, number_of_connectors=1, supported_feature_profiles=profiles, overrides=values
        )
        clock = FakeClock(T0)
        cs = FakeCS()
        conflicts: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        auth = Authorizer(
            store,
            keys,
            clock,
            online=lambda: cs.connected,
            send_authorize=cs.send_authorize,
            on_local_list_conflict=lambda t, a, b: conflicts.append((t, dict(a), dict(b))),
        )
        return Rig(store, keys, clock, cs, auth, conflicts)

    yield factory
    for store in stores:
        store.close()


# -- online -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"])
async def test_online_answer_is_returned_and_cached(make: Any, status: str) -> None:
    rig = make()
    rig.cs.answers["AB12"] = {"status": status, "parentIdTag": "FLEET"}
    decision = await rig.auth.decide("AB12")
    assert decision.result == AuthResult(status, "FLEET")
    assert decision.source is AuthSource.CENTRAL_SYSTEM
    assert decision.accepted is (status == "Accepted")
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info["status"] == status


async def test_online_unknown_tag_is_asked_every_time_when_cache_disabled(make: Any) -> None:
    rig = make(AuthorizationCacheEnabled=False)
    rig.cs.answers["AB12"] = {"status": "Accepted"}
    assert (await rig.auth.authorize("AB12")).accepted
    assert (await rig.auth.authorize("AB12")).accepted
    assert rig.cs.asked == ["AB12", "AB12"]
    assert rig.store.cache_get("AB12") is None  # cache disabled: nothing written


async def test_cached_tag_online_without_preauthorize_still_asks(make: Any) -> None:
    rig = make(LocalPreAuthorize=False)
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    rig.cs.answers["AB12"] = {"status": "Blocked"}
    result = await rig.auth.authorize("AB12")
    assert result.status == "Blocked"
    assert rig.cs.asked == ["AB12"]
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info == {"status": "Blocked"}


async def test_online_expiry_date_is_stored(make: Any) -> None:
    rig = make()
    expiry = T0 + timedelta(hours=1)
    rig.cs.answers["AB12"] = {"status": "Accepted", "expiryDate": iso(expiry)}
    await rig.auth.authorize("AB12")
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.expiry == expiry


# -- LocalPreAuthorize ----------------------------------------------------------------------


async def test_preauthorize_cache_hit_answers_without_asking(make: Any) -> None:
    rig = make(LocalPreAuthorize=True)
    rig.store.cache_put("AB12", {"status": "Accepted", "parentIdTag": "P"}, None)
    decision = await rig.auth.decide("ab12")
    assert decision.result == AuthResult("Accepted", "P")
    assert decision.source is AuthSource.CACHE
    assert rig.cs.asked == []


async def test_preauthorize_local_list_hit_answers_without_asking(make: Any) -> None:
    rig = make(LocalPreAuthorize=True)
    rig.store.local_list_update(1, {"AB12": {"status": "Accepted"}}, full=True)
    decision = await rig.auth.decide("AB12")
    assert decision.source is AuthSource.LOCAL_LIST and decision.accepted
    assert rig.cs.asked == []


async def test_preauthorize_does_not_trust_expired_or_invalid_entries(make: Any) -> None:
    rig = make(LocalPreAuthorize=True)
    rig.store.cache_put("OLD", {"status": "Accepted"}, T0 - timedelta(seconds=1))
    rig.store.cache_put("BAD", {"status": "Invalid"}, None)
    rig.cs.answers.update({"OLD": {"status": "Accepted"}, "BAD": {"status": "Accepted"}})
    assert (await rig.auth.authorize("OLD")).accepted
    assert (await rig.auth.authorize("BAD")).accepted
    assert rig.cs.asked == ["OLD", "BAD"]  # §3.5.1: NOT-valid entries are re-checked online


async def test_preauthorize_miss_asks_the_cs(make: Any) -> None:
    rig = make(LocalPreAuthorize=True)
    rig.cs.answers["NEW"] = {"status": "Accepted"}
    decision = await rig.auth.decide("NEW")
    assert decision.source is AuthSource.CENTRAL_SYSTEM and decision.accepted


async def test_preauthorize_offline_uses_offline_rules(make: Any) -> None:
    rig = make(LocalPreAuthorize=True, LocalAuthorizeOffline=False)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    assert not (await rig.auth.authorize("AB12")).accepted
    assert rig.cs.asked == []


# -- offline --------------------------------------------------------------------------------


async def test_offline_cache_hit(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": "Accepted", "parentIdTag": "P"}, None)
    decision = await rig.auth.decide("AB12")
    assert decision.result == AuthResult("Accepted", "P")
    assert decision.source is AuthSource.CACHE
    assert rig.cs.asked == []


async def test_offline_cache_miss_is_invalid(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=False)
    rig.cs.connected = False
    decision = await rig.auth.decide("AB12")
    assert decision.result.status == "Invalid" and decision.source is AuthSource.NONE


async def test_offline_expired_cache_entry_is_expired_and_rewritten(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=True)
    rig.cs.connected = False
    expiry = T0 + timedelta(minutes=10)
    rig.store.cache_put("AB12", {"status": "Accepted"}, expiry)
    assert (await rig.auth.authorize("AB12")).accepted
    await rig.clock.advance(600)  # now == expiry: no longer valid
    result = await rig.auth.authorize("AB12")
    assert result.status == "Expired"  # §3.5.4: expired by time MUST be rejected
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info["status"] == "Expired"
    assert not rig.auth.was_offline_unknown("AB12")


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired"])
async def test_offline_not_valid_cache_entry_is_refused_even_for_unknown_policy(
    make: Any, status: str
) -> None:
    rig = make(LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=True)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": status}, None)
    assert (await rig.auth.authorize("AB12")).status == status


async def test_offline_local_authorize_off_refuses_known_tags(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=False, AllowOfflineTxForUnknownId=False)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    rig.store.local_list_update(1, {"CD34": {"status": "Accepted"}}, full=True)
    assert (await rig.auth.authorize("AB12")).status == "Invalid"
    assert (await rig.auth.authorize("CD34")).status == "Invalid"


async def test_offline_cache_disabled_ignores_cache(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True, AuthorizationCacheEnabled=False)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    assert (await rig.auth.authorize("AB12")).status == "Invalid"


async def test_no_answer_online_falls_back_to_offline_rules(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True)
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    rig.cs.answers["AB12"] = None  # timeout / CALLERROR
    decision = await rig.auth.decide("AB12")
    assert decision.accepted and decision.source is AuthSource.CACHE
    assert rig.cs.asked == ["AB12"]


async def test_session_exception_is_treated_as_no_answer(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=False)
    rig.cs.raises = True
    assert (await rig.auth.authorize("AB12")).status == "Invalid"


async def test_unusable_answer_is_treated_as_no_answer(make: Any) -> None:
    rig = make(AllowOfflineTxForUnknownId=False)
    rig.cs.answers["AB12"] = {"status": "Maybe"}
    assert (await rig.auth.authorize("AB12")).status == "Invalid"
    assert rig.store.cache_get("AB12") is None


# -- AllowOfflineTxForUnknownId -------------------------------------------------------------


async def test_offline_unknown_accepted_and_remembered(make: Any) -> None:
    rig = make(AllowOfflineTxForUnknownId=True)
    rig.cs.connected = False
    decision = await rig.auth.decide("AB12")
    assert decision.accepted and decision.source is AuthSource.OFFLINE_UNKNOWN
    assert rig.auth.was_offline_unknown("ab12")
    rig.auth.forget_offline_unknown("AB12")
    assert not rig.auth.was_offline_unknown("AB12")


async def test_offline_unknown_off_refuses(make: Any) -> None:
    rig = make(AllowOfflineTxForUnknownId=False)
    rig.cs.connected = False
    assert (await rig.auth.authorize("AB12")).status == "Invalid"
    assert not rig.auth.was_offline_unknown("AB12")


async def test_online_unknown_is_never_let_in_by_offline_policy(make: Any) -> None:
    rig = make(AllowOfflineTxForUnknownId=True)
    assert (await rig.auth.authorize("AB12")).status == "Invalid"  # the CS said so


@pytest.mark.parametrize(
    ("stop_on_invalid", "expected"),
    [(True, StartConfAction.STOP), (False, StartConfAction.SUSPEND)],
)
async def test_start_conf_rejection_after_offline_unknown(
    make: Any, stop_on_invalid: bool, expected: StartConfAction
) -> None:
    rig = make(AllowOfflineTxForUnknownId=True, StopTransactionOnInvalidId=stop_on_invalid)
    rig.cs.connected = False
    assert (await rig.auth.authorize("AB12")).accepted
    rig.cs.connected = True
    action = rig.auth.on_start_transaction_conf("AB12", {"status": "Invalid"})
    assert action is expected
    assert not rig.auth.was_offline_unknown("AB12")
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info["status"] == "Invalid"


async def test_start_conf_accepted_continues(make: Any) -> None:
    rig = make()
    assert rig.auth.on_start_transaction_conf("AB12", {"status": "Accepted"}) is (
        StartConfAction.CONTINUE
    )
    assert rig.auth.on_start_transaction_conf("AB12", None) is StartConfAction.CONTINUE


# -- local list -----------------------------------------------------------------------------


async def test_local_list_has_priority_over_cache_offline(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True)
    rig.cs.connected = False
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    rig.store.local_list_update(1, {"AB12": {"status": "Blocked"}}, full=True)
    decision = await rig.auth.decide("AB12")
    assert decision.result.status == "Blocked" and decision.source is AuthSource.LOCAL_LIST


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired"])
async def test_local_list_not_accepted_refused_offline_even_if_unknown_allowed(
    make: Any, status: str
) -> None:
    rig = make(AllowOfflineTxForUnknownId=True, LocalAuthorizeOffline=True)
    rig.cs.connected = False
    rig.store.local_list_update(1, {"AB12": {"status": status}}, full=True)
    assert (await rig.auth.authorize("AB12")).status == status


async def test_local_list_expiry_by_time(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=True)
    rig.cs.connected = False
    expiry = T0 + timedelta(seconds=30)
    rig.store.local_list_update(
        1, {"AB12": {"status": "Accepted", "expiryDate": iso(expiry)}}, full=True
    )
    assert (await rig.auth.authorize("AB12")).accepted
    await rig.clock.advance(31)
    assert (await rig.auth.authorize("AB12")).status == "Expired"
    # The list itself is only changed by SendLocalList (§3.5.2).
    assert rig.store.local_list_get("AB12") == {"status": "Accepted", "expiryDate": iso(expiry)}


async def test_local_list_disabled_is_ignored(make: Any) -> None:
    rig = make(LocalAuthListEnabled=False, LocalAuthorizeOffline=True)
    rig.cs.connected = False
    rig.store.local_list_update(1, {"AB12": {"status": "Accepted"}}, full=True)
    assert (await rig.auth.authorize("AB12")).status == "Invalid"


async def test_local_list_profile_not_supported_is_ignored(make: Any) -> None:
    rig = make(profiles=["Core"], LocalAuthorizeOffline=True)
    rig.cs.connected = False
    rig.store.local_list_update(1, {"AB12": {"status": "Accepted"}}, full=True)
    assert (await rig.auth.authorize("AB12")).status == "Invalid"


async def test_listed_tags_never_enter_the_cache(make: Any) -> None:
    rig = make()
    rig.store.local_list_update(1, {"AB12": {"status": "Accepted"}}, full=True)
    rig.cs.answers["AB12"] = {"status": "Accepted"}
    await rig.auth.authorize("AB12")
    rig.auth.update_from("ab12", {"status": "Accepted"})  # StartTransaction.conf
    assert rig.store.cache_get("AB12") is None
    assert rig.conflicts == []


async def test_local_list_conflict_is_reported(make: Any) -> None:
    rig = make()
    rig.store.local_list_update(1, {"AB12": {"status": "Accepted"}}, full=True)
    rig.cs.answers["AB12"] = {"status": "Blocked"}
    result = await rig.auth.authorize("AB12")
    assert result.status == "Blocked"  # online, the CS decides
    assert rig.conflicts == [("AB12", {"status": "Accepted"}, {"status": "Blocked"})]
    assert rig.store.local_list_get("AB12") == {"status": "Accepted"}  # untouched


async def test_local_list_not_valid_online_is_asked(make: Any) -> None:
    rig = make(LocalPreAuthorize=True)
    rig.store.local_list_update(1, {"AB12": {"status": "Blocked"}}, full=True)
    rig.cs.answers["AB12"] = {"status": "Blocked"}
    assert (await rig.auth.authorize("AB12")).status == "Blocked"
    assert rig.cs.asked == ["AB12"]
    assert rig.conflicts == []  # both say not valid


# -- cache maintenance ----------------------------------------------------------------------


async def test_update_from_stop_transaction_conf_updates_cache(make: Any) -> None:
    rig = make()
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    rig.auth.update_from("AB12", {"status": "Blocked"})
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info == {"status": "Blocked"}
    rig.auth.update_from("AB12", {"nope": 1})  # ignored
    rig.auth.update_from("AB12", None)
    cached = rig.store.cache_get("AB12")
    assert cached is not None and cached.id_tag_info == {"status": "Blocked"}


async def test_clear_cache(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True)
    rig.store.cache_put("AB12", {"status": "Accepted"}, None)
    assert rig.auth.clear_cache() is True
    assert rig.store.cache_get("AB12") is None
    rig.cs.connected = False
    assert (await rig.auth.authorize("AB12")).status == "Invalid"


async def test_clear_cache_rejected_without_cache(make: Any) -> None:
    rig = make()
    # A charge point built without a cache reports no AuthorizationCacheEnabled key.
    rig.auth._keys = ConfigurationKeys(
        rig.store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        unsupported=["AuthorizationCacheEnabled"],
    )
    assert rig.auth.clear_cache() is False


async def test_cache_survives_restart(make: Any) -> None:
    rig = make()
    rig.cs.answers["AB12"] = {"status": "Accepted"}
    await rig.auth.authorize("AB12")
    path = rig.store.path
    rig.store.close()
    with Store(path) as store:
        keys = ConfigurationKeys(
            store, number_of_connectors=1, supported_feature_profiles=ALL_PROFILES
        )

        async def never(_tag: str) -> None:
            raise AssertionError("offline")

        auth = Authorizer(store, keys, FakeClock(T0), online=lambda: False, send_authorize=never)
        assert (await auth.authorize("AB12")).accepted
    rig.store = Store(path)  # the fixture closes it


# -- idTag form -----------------------------------------------------------------------------


async def test_case_insensitive_everywhere(make: Any) -> None:
    rig = make(LocalAuthorizeOffline=True)
    rig.store.local_list_update(1, {"AbCd": {"status": "Accepted"}}, full=True)
    rig.store.cache_put("deadbeef", {"status": "Accepted"}, None)
    rig.cs.connected = False
    assert (await rig.auth.authorize("ABCD")).accepted
    assert (await rig.auth.authorize("DEADBEEF")).accepted


@pytest.mark.parametrize("tag", ["", "X" * 21])
async def test_malformed_tags_are_invalid_without_asking(make: Any, tag: str) -> None:
    rig = make(AllowOfflineTxForUnknownId=True)
    assert (await rig.auth.authorize(tag)).status == "Invalid"
    assert rig.cs.asked == []


# -- groups ---------------------------------------------------------------------------------


def test_same_group_helper() -> None:
    assert same_group("Fleet", "FLEET")
    assert not same_group("A", "B")
    assert not same_group(None, None)
    assert not same_group("A", None)


async def test_same_tag_may_stop_without_asking(make: Any) -> None:
    rig = make()
    assert await rig.auth.may_stop("AB12", {"status": "Accepted"}, "ab12")
    assert rig.cs.asked == []


async def test_group_member_may_stop(make: Any) -> None:
    rig = make()
    rig.cs.answers["CD34"] = {"status": "Accepted", "parentIdTag": "fleet"}
    rig.cs.answers["EF56"] = {"status": "Accepted", "parentIdTag": "OTHER"}
    start = {"status": "Accepted", "parentIdTag": "FLEET"}
    assert await rig.auth.may_stop("AB12", start, "CD34")
    assert not await rig.auth.may_stop("AB12", start, "EF56")
    assert not await rig.auth.may_stop("AB12", {"status": "Accepted"}, "CD34")
    assert await rig.auth.is_same_group(AuthResult("Accepted", "FLEET"), "CD34")
    assert await rig.auth.is_same_group("FLEET", "CD34")


async def test_group_check_offline_uses_local_entries(make: Any) -> None:
    rig = make(AllowOfflineTxForUnknownId=True)
    rig.cs.connected = False
    rig.store.local_list_update(
        1, {"CD34": {"status": "Accepted", "parentIdTag": "FLEET"}}, full=True
    )
    assert await rig.auth.is_same_group({"parentIdTag": "FLEET"}, "CD34")
    assert not await rig.auth.is_same_group({"parentIdTag": "FLEET"}, "ZZ99")
    assert not rig.auth.was_offline_unknown("ZZ99")  # a group check starts nothing


# -- expiry parsing -------------------------------------------------------------------------


def test_parse_expiry() -> None:
    assert parse_expiry("2026-03-01T12:00:00Z") == T0
    assert parse_expiry("2026-03-01T13:00:00+01:00") == T0
    assert parse_expiry("2026-03-01T12:00:00") == T0  # no offset: UTC
    assert parse_expiry("2026-03-01T12:00:00.5Z") == T0 + timedelta(milliseconds=500)
    assert parse_expiry("soon") is None
    assert parse_expiry(None) is None
