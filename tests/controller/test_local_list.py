"""SendLocalList and GetLocalListVersion end to end with the embedded Central System: each
answer, a 10,000-entry Full list, atomicity, persistence, and the list as the authoriser
reads it (over the cache, status and expiryDate honoured, groups)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.ocpp16.profiles import SUPPORTED_FEATURE_PROFILES, local_list
from evsed.controller.store import auth as auth_store
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, CP_ID, OcppRig, ocpp_rig

PAST = "2020-01-01T00:00:00Z"
FUTURE = "2099-01-01T00:00:00Z"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def entry(tag: str, status: str | None = "Accepted", **info: str) -> dict[str, Any]:
    if status is None:
        return {"idTag": tag}
    return {"idTag": tag, "idTagInfo": {"status": status, **info}}


async def send(rig: OcppRig, version: int, kind: str, entries: list[dict[str, Any]]) -> str:
    answer = await rig.command(
        call.SendLocalList(list_version=version, update_type=kind, local_authorization_list=entries)
    )
    return str(answer.status)


async def version(rig: OcppRig) -> int:
    return int((await rig.command(call.GetLocalListVersion())).list_version)


async def offline_status(rig: OcppRig, tag: str) -> str:
    """What the authoriser decides for ``tag`` with the Central System unreachable."""
    assert rig.ocpp.ctx.authorizer is not None
    return (await rig.ocpp.ctx.authorizer.authorize(tag)).status


async def go_offline(rig: OcppRig) -> None:
    rig.central.set_offline(True)
    await rig.ocpp.session.wait_offline(5)  # type: ignore[union-attr]


def test_local_auth_list_management_is_supported() -> None:
    assert "LocalAuthListManagement" in SUPPORTED_FEATURE_PROFILES


async def test_version_is_0_when_empty_and_minus_1_when_disabled(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        assert await version(rig) == 0
        assert await send(rig, 3, "Full", [entry("T1")]) == "Accepted"
        assert await version(rig) == 3
        assert await send(rig, 4, "Full", []) == "Accepted"
        assert await version(rig) == 0  # an empty list is version 0 (§5.10)
    async with ocpp_rig(cs, tmp_path, keys={"LocalAuthListEnabled": "false"}) as rig:
        assert await version(rig) == -1
        assert await send(rig, 5, "Full", [entry("T1")]) == "NotSupported"


async def test_full_list_of_10000_entries(cs: CentralSystem, tmp_path: Path) -> None:
    entries = [entry(f"TAG{i:05d}") for i in range(10_000)]
    request = call.SendLocalList(
        list_version=1, update_type="Full", local_authorization_list=entries
    )
    async with ocpp_rig(cs, tmp_path) as rig:
        started = time.perf_counter()
        # The 1 s target is the benchmark's (benchmarks/local_list.py, one process, quiet):
        # here the CS encodes 1.4 MB in the same process, and on a loaded CI machine that
        # alone passed the rig's 5 s answer bound (a flaky failure of issue 9's loop).
        answer = await cs.call(CP_ID, request, timeout=60)
        elapsed = time.perf_counter() - started
        print(f"Full SendLocalList of 10,000 entries: {elapsed * 1000:.0f} ms")
        assert answer.status == "Accepted"
        assert rig.ocpp.store.local_list_len() == 10_000
        assert await version(rig) == 1


async def test_differential_update_and_wrong_version(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        assert await send(rig, 5, "Full", [entry("A"), entry("B")]) == "Accepted"
        assert await send(rig, 5, "Differential", [entry("C")]) == "VersionMismatch"
        assert await send(rig, 4, "Differential", [entry("C")]) == "VersionMismatch"
        assert set(rig.ocpp.store.local_list_entries()) == {"A", "B"}
        diff = [entry("A", None), entry("B", "Blocked"), entry("C")]
        assert await send(rig, 6, "Differential", diff) == "Accepted"
        listed = rig.ocpp.store.local_list_entries()
        assert set(listed) == {"B", "C"} and listed["B"]["status"] == "Blocked"
        assert await version(rig) == 6


async def test_a_failing_update_leaves_the_old_list(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        assert await send(rig, 1, "Full", [entry("A"), entry("B")]) == "Accepted"
        before = rig.ocpp.store.local_list_entries()
        # An entry of a Full list without idTagInfo, after good ones.
        assert await send(rig, 2, "Full", [entry("X"), entry("Y", None)]) == "Failed"
        # The same idTag twice (idTags compare case-insensitively).
        assert await send(rig, 2, "Differential", [entry("Z"), entry("z")]) == "Failed"
        assert rig.ocpp.store.local_list_entries() == before
        assert await version(rig) == 1


async def test_length_limits_fail_atomically(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        store = rig.ocpp.store
        # Read-only keys nobody may change: a build with smaller limits, for this test.
        rig.ocpp.keys._defaults["LocalAuthListMaxLength"] = "3"
        rig.ocpp.keys._defaults["SendLocalListMaxLength"] = "3"
        assert await send(rig, 1, "Full", [entry("A"), entry("B")]) == "Accepted"
        four = [entry(t) for t in "CDEF"]
        assert await send(rig, 2, "Full", four) == "Failed"  # over SendLocalListMaxLength
        assert await send(rig, 2, "Differential", [entry("C"), entry("D")]) == "Failed"
        assert set(store.local_list_entries()) == {"A", "B"}
        assert await send(rig, 2, "Differential", [entry("A", None), entry("C")]) == "Accepted"
        assert set(store.local_list_entries()) == {"B", "C"}


async def test_the_list_survives_a_restart(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        assert await send(rig, 7, "Full", [entry("A"), entry("B", "Blocked")]) == "Accepted"
    async with ocpp_rig(cs, tmp_path) as rig:
        assert await version(rig) == 7
        listed = rig.ocpp.store.local_list_entries()
        assert listed == {"A": {"status": "Accepted"}, "B": {"status": "Blocked"}}


async def test_status_expiry_and_precedence_over_the_cache(
    cs: CentralSystem, tmp_path: Path
) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        store = rig.ocpp.store
        store.cache_put("CACHED", {"status": "Accepted"}, None)
        entries = [
            entry("OK", expiryDate=FUTURE),
            entry("OLD", expiryDate=PAST),
            entry("BLOCKED", "Blocked"),
            entry("CACHED", "Blocked"),
        ]
        assert await send(rig, 1, "Full", entries) == "Accepted"
        await go_offline(rig)
        assert await offline_status(rig, "OK") == "Accepted"
        assert await offline_status(rig, "OLD") != "Accepted"
        assert await offline_status(rig, "BLOCKED") != "Accepted"
        assert await offline_status(rig, "CACHED") != "Accepted"  # the list wins


async def test_parent_id_tag_groups_from_the_list(cs: CentralSystem, tmp_path: Path) -> None:
    async with ocpp_rig(cs, tmp_path) as rig:
        entries = [
            entry("CARD1", parentIdTag="FLEET"),
            entry("CARD2", parentIdTag="FLEET"),
            entry("CARD3", parentIdTag="OTHER"),
        ]
        assert await send(rig, 1, "Full", entries) == "Accepted"
        await go_offline(rig)
        auth = rig.ocpp.ctx.authorizer
        assert auth is not None
        first = await auth.authorize("CARD1")
        assert first.parent_id_tag == "FLEET"
        assert await auth.is_same_group(first, "CARD2")
        assert not await auth.is_same_group(first, "CARD3")


async def test_a_big_list_is_read_and_written_off_the_loop(
    cs: CentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, int] = {}
    real_parse, real_write = local_list.parse_entries, auth_store._write_local_list

    def parse(*args: Any, **kw: Any) -> Any:
        threads["parse"] = threading.get_ident()
        return real_parse(*args, **kw)

    def write(*args: Any, **kw: Any) -> Any:
        threads["write"] = threading.get_ident()
        return real_write(*args, **kw)

    monkeypatch.setattr(local_list, "parse_entries", parse)
    monkeypatch.setattr(auth_store, "_write_local_list", write)
    async with ocpp_rig(cs, tmp_path) as rig:
        syncs = rig.ocpp.store.syncs
        entries = [entry(f"TAG{i:05d}") for i in range(2_000)]
        assert await send(rig, 1, "Full", entries) == "Accepted"
        loop_thread = threading.get_ident()
        assert set(threads) == {"parse", "write"}
        assert loop_thread not in threads.values()
        assert rig.ocpp.store.syncs > syncs  # synced before the answer
        assert rig.ocpp.store.local_list_len() == 2_000
