"""Who may charge: OCPP 1.6 authorisation with Local Authorization List, Authorization Cache
and offline behaviour (spec §3.5, §4.1, §4.8, §5.4, §9.1; errata v4.0 3.4, 3.17, 3.23).

The order of the decision for a presented idTag:

1. Look the tag up locally: the Local Authorization List first (when LocalAuthListEnabled),
   then the Authorization Cache (when AuthorizationCacheEnabled). The list has priority
   (§3.5.3). An entry whose expiryDate has passed counts as Expired (§3.5.1, §3.5.4); an
   Accepted cache entry that expired is rewritten as Expired in the cache.
2. Online and LocalPreAuthorize: a valid local entry answers at once, no Authorize.req
   (§9.1.13 "without waiting for or requesting an Authorize.conf"); the CS re-checks the tag
   in StartTransaction.conf (§4.8).
3. Online otherwise: Authorize.req; the CS's answer decides and updates the cache (§4.1).
   Not-valid local entries are asked about too (§3.5.1: a NOT-valid cached tag SHOULD be
   re-checked online). If the CS answer differs from the Local Authorization List,
   ``on_local_list_conflict`` fires when valid/not-valid disagree (the session sends
   StatusNotification connector 0, LocalListConflict, §3.5.2); the list is never changed here.
4. Offline, or no answer (timeout, CALLERROR, link lost): a local entry that is not valid
   is refused with its status, always (§3.5.4 "MUST be rejected"); a valid one is Accepted
   when LocalAuthorizeOffline is true. Anything else is "unknown": Accepted when
   AllowOfflineTxForUnknownId is true (remembered, see ``was_offline_unknown``), else
   Invalid.

Choices where the spec is silent:
- "Valid" means Accepted or ConcurrentTx (§3.5.2 maps both to valid). A CS answer is
  returned as given: ConcurrentTx from the CS is not an acceptance.
- With LocalAuthorizeOffline false, a valid local entry cannot authorise offline, so the tag
  is treated as unknown (AllowOfflineTxForUnknownId decides).
- Tags longer than 20 characters or empty are Invalid without asking anyone (CiString20).
- idTags compare case-insensitively (IdToken is CiString20): the store's tables use
  COLLATE NOCASE; comparisons here use ``casefold``.
- A cache entry whose expiryDate cannot be parsed is stored without expiry.
- The cache is bounded (``cache_max_entries``, configuration ``[authorization]
  cache_max_entries``; the spec names no size). A new entry beyond the bound evicts, in the
  same commit: first entries that are not Accepted or past their expiryDate, then the least
  recently used (§3.5.1). "Used" means: the entry authorised (or refused) a presented tag,
  or the CS's answer for it was stored. The Local Authorization List is a table of its own,
  never counted nor evicted, and keeps its precedence.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from evsed.controller.clock import Clock
from evsed.controller.connector.hooks import AuthResult
from evsed.controller.masking import mask_tag
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.store import Store

log = logging.getLogger(__name__)

ACCEPTED = "Accepted"
BLOCKED = "Blocked"
EXPIRED = "Expired"
INVALID = "Invalid"
CONCURRENT_TX = "ConcurrentTx"
# AuthorizationStatus, spec §7.2 (same spelling as ocpp.v16.enums.AuthorizationStatus).
STATUSES = frozenset({ACCEPTED, BLOCKED, EXPIRED, INVALID, CONCURRENT_TX})
_VALID = frozenset({ACCEPTED, CONCURRENT_TX})
ID_TOKEN_MAX_LEN = 20
#: The cache's default bound: ~100 bytes an entry, so about 100 KiB of database at most.
DEFAULT_CACHE_MAX_ENTRIES = 1000

SendAuthorize = Callable[[str], Awaitable[dict[str, Any] | None]]
ConflictListener = Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]


class AuthSource(StrEnum):
    """Where an answer came from."""

    LOCAL_LIST = "LocalList"
    CACHE = "Cache"
    CENTRAL_SYSTEM = "CentralSystem"
    OFFLINE_UNKNOWN = "OfflineUnknown"  # accepted by AllowOfflineTxForUnknownId
    NONE = "None"  # refused without any information (bad tag, offline and unknown)


class StartConfAction(StrEnum):
    """What the session does with a running transaction after StartTransaction.conf."""

    CONTINUE = "continue"
    STOP = "stop"  # StopTransactionOnInvalidId true: stop, reason DeAuthorized
    SUSPEND = "suspend"  # StopTransactionOnInvalidId false: only stop energy delivery


@dataclass(frozen=True, slots=True)
class AuthDecision:
    result: AuthResult
    source: AuthSource
    id_tag_info: dict[str, Any] | None = None  # what the decision was based on

    @property
    def accepted(self) -> bool:
        return self.result.accepted


def parse_expiry(value: object) -> datetime | None:
    """idTagInfo.expiryDate as an aware UTC datetime; None if absent or unreadable.
    A time without offset is taken as UTC (spec §3.14 recommends UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        log.warning("unreadable expiryDate %r ignored", value)
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _valid_info(info: object) -> dict[str, Any] | None:
    """A copy of ``info`` if it is a usable idTagInfo, else None."""
    if not isinstance(info, Mapping) or info.get("status") not in STATUSES:
        return None
    return dict(info)


def same_group(parent_a: str | None, parent_b: str | None) -> bool:
    """Spec §3.10: two idTags are in one group when their parentIdTags match (both set)."""
    if not parent_a or not parent_b:
        return False
    return parent_a.casefold() == parent_b.casefold()


def _parent_of(info: AuthResult | Mapping[str, Any] | str | None) -> str | None:
    if isinstance(info, AuthResult):
        return info.parent_id_tag
    if isinstance(info, Mapping):
        parent = info.get("parentIdTag")
        return parent if isinstance(parent, str) else None
    return info


class Authorizer:
    """Decides whether an idTag may charge. Event-loop thread only (like the Store)."""

    def __init__(
        self,
        store: Store,
        keys: ConfigurationKeys,
        clock: Clock,
        *,
        online: Callable[[], bool],
        send_authorize: SendAuthorize,
        on_local_list_conflict: ConflictListener | None = None,
        cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
    ) -> None:
        self._store = store
        self._cache_max = cache_max_entries
        self._keys = keys
        self._clock = clock
        self._online = online
        self._send_authorize = send_authorize
        self._on_conflict = on_local_list_conflict
        self._offline_unknown: set[str] = set()

    # -- configuration ----------------------------------------------------------------------

    def _flag(self, name: str) -> bool:
        """A boolean key; an unsupported key (its feature profile is off) reads as false."""
        try:
            return self._keys.bool(name)
        except (KeyError, ValueError):
            return False

    @property
    def cache_enabled(self) -> bool:
        return self._flag("AuthorizationCacheEnabled")

    @property
    def local_list_enabled(self) -> bool:
        return self._flag("LocalAuthListEnabled")

    # -- local lookups ----------------------------------------------------------------------

    def _effective(self, info: Mapping[str, Any], expiry: datetime | None) -> str:
        """The status of a stored entry now: a valid entry past its expiry is Expired."""
        status = str(info.get("status"))
        if status in _VALID and expiry is not None and expiry <= self._clock.now():
            return EXPIRED
        return status

    def _from_local_list(self, id_tag: str) -> tuple[str, dict[str, Any]] | None:
        if not self.local_list_enabled:
            return None
        info = _valid_info(self._store.local_list_get(id_tag))
        if info is None:
            return None
        return self._effective(info, parse_expiry(info.get("expiryDate"))), info

    def _from_cache(self, id_tag: str) -> tuple[str, dict[str, Any]] | None:
        if not self.cache_enabled:
            return None
        entry = self._store.cache_get(id_tag)
        if entry is None:
            return None
        info = _valid_info(entry.id_tag_info)
        if info is None:
            return None
        status = self._effective(info, entry.expiry)
        if status != info["status"]:
            # §3.5.1: "When the validity of a Cache entry expires, it SHALL be changed to
            # expired in the Cache." cache_put skips the write once it is so.
            info = {**info, "status": status}
            self._store.cache_put(entry.id_tag, info, entry.expiry)
        else:
            self._store.cache_touch(entry.id_tag)  # its place in the eviction order
        return status, info

    def _local(self, id_tag: str) -> tuple[AuthSource, str, dict[str, Any]] | None:
        listed = self._from_local_list(id_tag)
        if listed is not None:
            return AuthSource.LOCAL_LIST, *listed
        cached = self._from_cache(id_tag)
        if cached is not None:
            return AuthSource.CACHE, *cached
        return None

    # -- the decision -----------------------------------------------------------------------

    async def authorize(self, id_tag: str) -> AuthResult:
        """May ``id_tag`` start charging? See the module docstring for the order."""
        return (await self.decide(id_tag)).result

    async def decide(self, id_tag: str, *, remember_unknown: bool = True) -> AuthDecision:
        """``authorize`` with the source of the answer. ``remember_unknown=False`` for a
        look-up that starts nothing (a group check)."""
        if not id_tag or len(id_tag) > ID_TOKEN_MAX_LEN:
            return AuthDecision(AuthResult(INVALID), AuthSource.NONE)
        local = self._local(id_tag)
        if self._online():
            if local is not None and local[1] in _VALID and self._flag("LocalPreAuthorize"):
                source, _, info = local
                return AuthDecision(AuthResult(ACCEPTED, info.get("parentIdTag")), source, info)
            answer = await self._ask(id_tag)
            if answer is not None:
                self.update_from(id_tag, answer)
                return AuthDecision(
                    AuthResult(answer["status"], answer.get("parentIdTag")),
                    AuthSource.CENTRAL_SYSTEM,
                    answer,
                )
            # No answer: decide as if offline (§3.5: "unavailability of the communications
            # or even of the Central System").
            local = self._local(id_tag)
        return self._decide_offline(id_tag, local, remember_unknown)

    async def _ask(self, id_tag: str) -> dict[str, Any] | None:
        try:
            answer = await self._send_authorize(id_tag)
        except Exception:
            # The session promises None on failure; a bug there must not stop the connector.
            log.exception("Authorize for %s failed", mask_tag(id_tag))
            return None
        info = _valid_info(answer)
        if answer is not None and info is None:
            log.warning("Authorize for %s: unusable idTagInfo %r", mask_tag(id_tag), answer)
        return info

    def _decide_offline(
        self,
        id_tag: str,
        local: tuple[AuthSource, str, dict[str, Any]] | None,
        remember_unknown: bool,
    ) -> AuthDecision:
        if local is not None:
            source, status, info = local
            if status not in _VALID:
                return AuthDecision(AuthResult(status, info.get("parentIdTag")), source, info)
            if self._flag("LocalAuthorizeOffline"):
                return AuthDecision(AuthResult(ACCEPTED, info.get("parentIdTag")), source, info)
        if self._flag("AllowOfflineTxForUnknownId"):
            if remember_unknown:
                self._offline_unknown.add(id_tag.casefold())
            return AuthDecision(AuthResult(ACCEPTED), AuthSource.OFFLINE_UNKNOWN)
        return AuthDecision(AuthResult(INVALID), AuthSource.NONE)

    # -- unknown offline authorisation --------------------------------------------------------

    def was_offline_unknown(self, id_tag: str) -> bool:
        """True if ``id_tag`` was let in offline only because AllowOfflineTxForUnknownId.
        Kept in memory until ``forget_offline_unknown`` (a restart forgets it too; the
        session applies StopTransactionOnInvalidId to every StartTransaction.conf anyway,
        errata v4.0 3.17)."""
        return id_tag.casefold() in self._offline_unknown

    def forget_offline_unknown(self, id_tag: str) -> None:
        self._offline_unknown.discard(id_tag.casefold())

    def on_start_transaction_conf(
        self,
        id_tag: str,
        id_tag_info: Mapping[str, Any] | None,
        *,
        update_cache: bool = True,
    ) -> StartConfAction:
        """StartTransaction.conf arrived for a running transaction: update the cache (unless
        the caller already did) and say what to do (§3.5.4 as moved by errata v4.0 3.17:
        applies online and offline)."""
        info = _valid_info(id_tag_info)
        if info is None:
            return StartConfAction.CONTINUE
        if update_cache:
            self.update_from(id_tag, info)
        self.forget_offline_unknown(id_tag)
        if info["status"] == ACCEPTED:
            return StartConfAction.CONTINUE
        if self._flag("StopTransactionOnInvalidId"):
            return StartConfAction.STOP
        return StartConfAction.SUSPEND

    # -- cache maintenance ------------------------------------------------------------------

    def update_from(self, id_tag: str, id_tag_info: Mapping[str, Any] | None) -> None:
        """Every idTagInfo received (Authorize.conf, StartTransaction.conf,
        StopTransaction.conf) goes through here (§3.5.1, §4.1, §4.8, §4.10)."""
        info = _valid_info(id_tag_info)
        if info is None:
            return
        listed = _valid_info(self._store.local_list_get(id_tag))
        if listed is not None:
            # §3.5.3: identifiers in the list SHALL NOT be added to the cache.
            self._check_conflict(id_tag, listed, info)
            return
        if not self.cache_enabled:
            return
        evicted = self._store.cache_put(
            id_tag,
            info,
            parse_expiry(info.get("expiryDate")),
            max_entries=self._cache_max,
            now=self._clock.now(),
        )
        if evicted:
            log.debug("authorisation cache full (%d): %d evicted", self._cache_max, len(evicted))

    def _check_conflict(
        self, id_tag: str, listed: Mapping[str, Any], received: Mapping[str, Any]
    ) -> None:
        if not self.local_list_enabled or self._on_conflict is None:
            return
        local_status = self._effective(listed, parse_expiry(listed.get("expiryDate")))
        if (local_status in _VALID) == (received["status"] in _VALID):
            return
        log.info(
            "LocalListConflict for %s: list says %s, CS says %s",
            id_tag,
            local_status,
            received["status"],
        )
        try:
            self._on_conflict(id_tag, listed, received)
        except Exception:
            log.exception("local-list conflict listener failed")

    def clear_cache(self) -> bool:
        """ClearCache.req: True (Accepted) when the cache was cleared. Rejected when the
        charge point has no cache (errata v4.0 3.23), i.e. AuthorizationCacheEnabled is
        not a supported key, or when the database refuses."""
        if not self._keys.is_supported("AuthorizationCacheEnabled"):
            return False
        try:
            self._store.cache_clear()
        except sqlite3.Error:
            log.exception("ClearCache failed")
            return False
        return True

    # -- groups -----------------------------------------------------------------------------

    async def is_same_group(
        self, tag_a_info: AuthResult | Mapping[str, Any] | str | None, tag_b: str
    ) -> bool:
        """May ``tag_b`` stop a transaction started by a tag whose idTagInfo (or AuthResult,
        or parentIdTag) is ``tag_a_info``? Looks ``tag_b`` up like ``authorize`` (local entry,
        or Authorize.req when online) and compares parentIdTags (§3.10)."""
        parent_a = _parent_of(tag_a_info)
        if not parent_a:
            return False
        decision = await self.decide(tag_b, remember_unknown=False)
        return same_group(parent_a, decision.result.parent_id_tag)

    async def may_stop(
        self,
        start_id_tag: str,
        start_info: AuthResult | Mapping[str, Any] | str | None,
        presented: str,
    ) -> bool:
        """The same tag stops without any Authorize.req (§3.4, §4.1); another tag only when
        it is in the same group."""
        if start_id_tag.casefold() == presented.casefold():
            return True
        return await self.is_same_group(start_info, presented)
