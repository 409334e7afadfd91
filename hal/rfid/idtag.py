"""Card ids in OCPP idTag form, and the debounce that turns a stream of reads into presentations.

OCPP 1.6 idTag is a CiString20 (<= 20 chars, case-insensitive); the spec recommends the hex of
the UID bytes, byte 0 first, for ISO 14443 cards (REFERENCE.md §4.3). Every reader in evsed
reports that form, uppercase, so a card gives the same idTag whichever reader saw it.
"""

from __future__ import annotations

import string
from typing import Literal

ID_TAG_MAX_LEN = 20
_HEX = frozenset(string.hexdigits)

Rdm6300IdFormat = Literal["hex", "decimal10"]


def uid_to_id_tag(uid: bytes) -> str:
    """Hex of the UID bytes, byte 0 first, uppercase. Raises ValueError beyond 10 bytes."""
    if not uid:
        raise ValueError("empty UID")
    if len(uid) * 2 > ID_TAG_MAX_LEN:
        raise ValueError(f"UID of {len(uid)} bytes does not fit an idTag (max 10 bytes)")
    return uid.hex().upper()


def normalize_id_tag(text: str) -> str:
    """Canonical form of a hex id typed by a person or read from config: stripped, uppercase."""
    tag = text.strip().replace(":", "").replace(" ", "").upper()
    if not tag or len(tag) > ID_TAG_MAX_LEN or not set(tag) <= _HEX:
        raise ValueError(f"not a hex idTag of 1..{ID_TAG_MAX_LEN} characters: {text!r}")
    return tag


def rdm6300_id_tag(data_hex: str, id_format: Rdm6300IdFormat = "hex") -> str:
    """idTag for the 5 data bytes of an EM4100 frame (10 hex chars).

    "hex": the 10 hex chars uppercase (version byte + 32-bit id), the full content of the tag.
    "decimal10": the 10-digit number printed on most cards, decimal of bytes 1..4, zero-padded;
    it drops the version byte, so use it only when the CS's card list was typed from the prints.
    """
    if len(data_hex) != 10 or not set(data_hex) <= _HEX:
        raise ValueError(f"EM4100 data must be 10 hex chars: {data_hex!r}")
    if id_format == "hex":
        return data_hex.upper()
    if id_format == "decimal10":
        return f"{int(data_hex[2:], 16):010d}"
    raise ValueError(f"unknown id_format {id_format!r} (expected 'hex' or 'decimal10')")


class PresenceDebouncer:
    """One event per presentation of a card, from a reader that reports it again and again.

    Readers see at most one card at a time, so the state is the card currently on the reader.
    A read of a different card is a new presentation at once (cards swapped faster than the
    timeout); a read of the same card only counts again after `removal_timeout_s` without any
    read, because neither chip reports removal. Not thread-safe: one reader thread owns it.
    """

    def __init__(self, removal_timeout_s: float) -> None:
        if removal_timeout_s <= 0:
            raise ValueError("removal_timeout_s must be > 0")
        self.removal_timeout_s = removal_timeout_s
        self._current: str | None = None
        self._last_seen = 0.0

    @property
    def current(self) -> str | None:
        return self._current

    def seen(self, id_tag: str, now: float) -> bool:
        """Record a read at `now`; True when it starts a new presentation."""
        self.expire(now)
        new = id_tag != self._current
        self._current = id_tag
        self._last_seen = now
        return new

    def expire(self, now: float) -> str | None:
        """Forget the card when it has not been read for the timeout; returns the removed id."""
        if self._current is not None and now - self._last_seen > self.removal_timeout_s:
            removed, self._current = self._current, None
            return removed
        return None

    def reset(self) -> None:
        """Forget the card (the reader was lost: whatever it reads next is a new presentation)."""
        self._current = None
