"""Local Auth List Management (OCPP 1.6 §3.5.3, §5.10, §5.15, §7.44, §9.2): SendLocalList
(Full and Differential) and GetLocalListVersion.

The list itself is read by `evsed.controller.ocpp16.auth` (it takes precedence over the
cache; an entry's status, expiryDate and parentIdTag count as in Core authorisation), and
kept by the store; these handlers write versions and entries.

SendLocalList is applied all or nothing, in one SQLite commit with its version, and the
commit is synced before the answer goes out; both in a worker thread on a connection of its
own, so that a 10,000-entry list does not stall the session's event loop.

Answers (§7.44 UpdateStatus), and the choices where the spec is silent:
- LocalAuthListEnabled false: NotSupported (and GetLocalListVersion -1, §5.10).
- Differential with a listVersion not above the current one: VersionMismatch.
- Failed, nothing changed: more entries than SendLocalListMaxLength; a resulting list longer
  than LocalAuthListMaxLength; the same idTag twice (idTags compare case-insensitively,
  IdToken); in a Full update an entry without idTagInfo (it could only mean "remove" from a
  list that is being replaced); a store error.
- GetLocalListVersion is 0 for an empty list, whatever version emptied it (§5.10).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key
from evsed.controller.store.auth import LocalListTooLong

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext

log = logging.getLogger(__name__)

NAME = "LocalAuthListManagement"

#: A Full list of this many entries is about 1.4 MiB on the wire (the frame limit takes it).
MAX_ENTRIES = 10_000


class InvalidList(ValueError):
    """A SendLocalList that cannot be applied as sent (answered Failed)."""


def _info(info: Mapping[str, Any]) -> dict[str, Any]:
    """idTagInfo back in its wire spelling, as the authoriser and the cache keep it."""
    out: dict[str, Any] = {"status": info["status"]}
    if info.get("expiry_date") is not None:
        out["expiryDate"] = info["expiry_date"]
    if info.get("parent_id_tag") is not None:
        out["parentIdTag"] = info["parent_id_tag"]
    return out


def parse_entries(entries: list[dict[str, Any]], *, full: bool) -> dict[str, dict[str, Any] | None]:
    """idTag -> idTagInfo (None: remove it); raises InvalidList."""
    parsed: dict[str, dict[str, Any] | None] = {}
    seen: set[str] = set()
    for entry in entries:
        tag = entry["id_tag"]
        folded = tag.casefold()
        if folded in seen:
            raise InvalidList(f"idTag {tag!r} appears twice")
        seen.add(folded)
        info = entry.get("id_tag_info")
        if info is None and full:
            raise InvalidList("an entry of a Full update has no idTagInfo")
        parsed[tag] = None if info is None else _info(info)
    return parsed


class LocalListHandlers:
    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx

    def _enabled(self) -> bool:
        return self.ctx.keys.bool("LocalAuthListEnabled")

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        if not self._enabled():
            return call_result.GetLocalListVersion(list_version=-1)
        store = self.ctx.store
        version = store.local_list_version() if store.local_list_len() else 0
        return call_result.GetLocalListVersion(list_version=version)

    @on(Action.send_local_list)
    async def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
    ) -> call_result.SendLocalList:
        status = await self._apply(list_version, update_type, local_authorization_list or [])
        self.ctx.emit(
            "local_list",
            version=list_version,
            update_type=update_type,
            entries=len(local_authorization_list or []),
            status=status,
        )
        return call_result.SendLocalList(status=status)

    async def _apply(self, version: int, update_type: str, entries: list[dict[str, Any]]) -> str:
        if not self._enabled():
            return "NotSupported"
        store = self.ctx.store
        full = update_type == "Full"
        if not full and version <= store.local_list_version():
            return "VersionMismatch"
        if len(entries) > self.ctx.keys.int("SendLocalListMaxLength"):
            log.warning("SendLocalList of %d entries: over SendLocalListMaxLength", len(entries))
            return "Failed"
        try:
            # 10,000 entries take 10-30 ms to read: not on the loop either.
            parsed = await asyncio.to_thread(parse_entries, entries, full=full)
            # Committed and synced in a worker thread: the loop goes on meanwhile.
            await store.local_list_update_off_loop(
                version, parsed, full=full, max_len=self.ctx.keys.int("LocalAuthListMaxLength")
            )
        except (InvalidList, LocalListTooLong) as e:
            log.warning("SendLocalList v%d Failed: %s", version, e)
            return "Failed"
        except sqlite3.Error:
            log.exception("SendLocalList v%d could not be stored", version)
            return "Failed"
        return "Accepted"


PROFILE = declare(
    NAME,
    cs_to_cp={"GetLocalListVersion", "SendLocalList"},
    keys=(
        key("LocalAuthListEnabled", KeyType.BOOL, Access.RW, "true"),
        key("LocalAuthListMaxLength", KeyType.INT, Access.R, str(MAX_ENTRIES)),
        key("SendLocalListMaxLength", KeyType.INT, Access.R, str(MAX_ENTRIES)),
    ),
    handlers=LocalListHandlers,
)
