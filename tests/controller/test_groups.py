"""Group cards (OCPP 1.6 §3.10): a card of the transaction's group stops it, whichever
idTagInfo named the group (issue 14 item 13).

End to end: the bench Central System, the websocket, the session, the bridge, the charger
and the real RDM6300 reader on a pseudo-terminal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.hwmocks.central_system import CentralSystem, TagInfo
from tests.support.ocpp_rig import ocpp_rig
from tests.support.stopping import advancing, call_advancing

FIRST = "AABBCCDD01"  # starts the session; its Authorize.conf names no group
SECOND = "AABBCCDD02"  # another card of the group
GROUP = "AABBCCDD0A"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    tags = {FIRST: TagInfo("Accepted"), SECOND: TagInfo("Accepted", parent_id_tag=GROUP)}
    async with CentralSystem(tags=tags) as central:
        # The group comes only with StartTransaction.conf, as in the probe.
        central.overrides["StartTransaction"] = lambda _cp, _payload: {
            "transactionId": 1,
            "idTagInfo": {"status": "Accepted", "parentIdTag": GROUP},
        }
        yield central


@pytest.mark.parametrize("start", ["card", "remote"])
async def test_group_from_start_transaction_conf_lets_a_group_card_stop(
    cs: CentralSystem, tmp_path: Path, start: str
) -> None:
    keys = {"AuthorizeRemoteTxRequests": "false"}
    async with ocpp_rig(cs, tmp_path, keys=keys) as rig:
        mark = cs.mark()
        await rig.plug()
        if start == "card":
            await rig.bench.present_card(FIRST)
            authorize = await rig.answered(await rig.call_of("Authorize", since=mark))
            assert "parentIdTag" not in authorize.payload["idTagInfo"]
        else:
            assert await rig.remote_start(FIRST, connector_id=1) == "Accepted"
        await rig.call_of("StartTransaction", since=mark)
        # The charge point has read the answer (real time) ...
        await rig.event("start_transaction_result", lambda f: f["id_tag"] == FIRST)
        await rig.charging()
        tx = rig.connector.transaction
        assert tx is not None and tx.parent_id_tag == GROUP  # ... and kept its group
        # ... with the transaction, and in the cache.
        cached = rig.ocpp.store.cache_get(FIRST)
        assert cached is not None and cached.id_tag_info["parentIdTag"] == GROUP

        stopping = cs.mark()
        await rig.bench.present_card(SECOND)
        answer = await rig.answered(await rig.call_of("Authorize", since=stopping))
        assert answer.payload["idTagInfo"]["parentIdTag"] == GROUP
        stop = await call_advancing(rig, "StopTransaction", since=stopping)
        assert (stop.payload["reason"], stop.payload["idTag"]) == ("Local", SECOND)
        assert stop.payload["transactionId"] == 1


async def test_a_card_of_another_group_does_not_stop(cs: CentralSystem, tmp_path: Path) -> None:
    stranger = "AABBCCDD03"
    cs.tags[stranger] = TagInfo("Accepted", parent_id_tag="FFFFFFFF0B")
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}) as rig:
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(FIRST, connector_id=1) == "Accepted"
        await rig.event("start_transaction_result", lambda f: f["id_tag"] == FIRST)
        await rig.charging()
        later = cs.mark()
        await rig.bench.present_card(stranger)
        await rig.answered(await rig.call_of("Authorize", since=later))
        await rig.event("authorize", lambda f: f["id_tag"] == stranger)
        await rig.run(2)
        assert rig.connector.transaction is not None
        assert rig.calls("StopTransaction", since=mark) == []


async def test_offline_a_cached_group_card_stops_the_session(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """Offline, the second card's group comes from the cache; the session's from the
    StartTransaction.conf received while online."""
    async with ocpp_rig(cs, tmp_path, keys={"AuthorizeRemoteTxRequests": "false"}) as rig:
        mark = cs.mark()
        await rig.plug()
        assert await rig.remote_start(FIRST, connector_id=1) == "Accepted"
        await rig.event("start_transaction_result", lambda f: f["id_tag"] == FIRST)
        await rig.charging()
        rig.ocpp.store.cache_put(SECOND, {"status": "Accepted", "parentIdTag": GROUP}, None)
        cs.set_offline(True)
        session = rig.ocpp.session
        assert session is not None
        await session.wait_offline(5)  # type: ignore[attr-defined]
        await rig.bench.present_card(SECOND)
        # The card comes through the reader in real time; then the stop in simulated time.
        answer = await rig.event("authorize", lambda f: f["id_tag"] == SECOND)
        assert answer["status"] == "Accepted"
        await rig.until(lambda: rig.connector.transaction is None)
        assert rig.calls("Authorize", since=mark) == []  # nothing asked: it was offline
        await advancing(rig, lambda: any(e == "transaction_stopped" for e, _ in rig.events))
        stopped = await rig.event("transaction_stopped")
        assert stopped["reason"] == "Local"
        cs.set_offline(False)
