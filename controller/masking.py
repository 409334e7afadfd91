"""Card ids and URLs as people may see them: in logs at INFO and above and in `evsed
status`; and the registry of secrets in flight that the log redaction masks wherever they
appear.

A card number is a credential (cloned cards start charging sessions on someone else's
account), so only its last four characters leave the process unless DEBUG is asked for.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

SHOWN = 4


def mask_tag(id_tag: str | None) -> str:
    """``"04A2B3C4D5"`` -> ``"******C4D5"``; four characters or fewer: all hidden."""
    if not id_tag:
        return ""
    if len(id_tag) <= SHOWN:
        return "*" * len(id_tag)
    return "*" * (len(id_tag) - SHOWN) + id_tag[-SHOWN:]


# ---------------------------------------------------------------- URLs

URL_MASK = "***"


def mask_userinfo(authority: str, *, lone_user_is_secret: bool) -> str:
    """``user:pw@host`` -> ``user:***@host``: everything before the LAST "@" is userinfo, as
    urlsplit (and so the transfer) reads it. A user name alone is a token in a file server's
    URL (``https://TOKEN@host``), the charge point's id in the Central System's."""
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return authority
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{user}:{URL_MASK}@{hostport}" if user else f"{URL_MASK}@{hostport}"
    return f"{URL_MASK}@{hostport}" if lone_user_is_secret else authority


def _mask_values(part: str) -> str:
    """``a=1&b=2`` -> ``a=***&b=***``; an item without "=" is all value."""
    out: list[str] = []
    for item in re.split(r"([&;])", part):
        if item in ("", "&", ";"):
            out.append(item)
            continue
        name, eq, value = item.partition("=")
        if eq and value.startswith(URL_MASK) and not value[len(URL_MASK) :].strip(_AFTER_URL):
            # Masked already (a log line names the masked URL, then the filter reads it
            # again): what follows is the line's own punctuation, "token=***: refused", not
            # the value; it was eaten ("token=*** refused").
            out.append(item)
            continue
        out.append(f"{name}={URL_MASK}" if eq and value else item if eq else URL_MASK)
    return "".join(out)


#: What a line puts right after a URL it names (", refused", ": HTTP 404", "(...)").
_AFTER_URL = ":,.;)"


def mask_url_tail(tail: str) -> str:
    """path?query#fragment with every value of the query and the fragment blanked: tokens
    and signatures travel there, under names that differ from one service to the next."""
    rest, hash_, fragment = tail.partition("#")
    path, mark, query = rest.partition("?")
    masked = path + (mark + _mask_values(query) if mark else "")
    return masked + (hash_ + _mask_values(fragment) if hash_ else "")


def mask_url(url: str, *, lone_user_is_secret: bool = False) -> str:
    """One URL with its password and its query's and fragment's values masked, for printing.

    Works on the text, never parses the host or port: a URL urlsplit cannot take (port
    99999, an unclosed [IPv6]) is masked all the same, and this never raises. The authority
    ends at the first / ? # (where urlsplit ends it), whatever the password holds."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return mask_url_tail(url)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = mask_userinfo(rest[:end], lone_user_is_secret=lone_user_is_secret)
    return f"{scheme}{sep}{authority}{mask_url_tail(rest[end:])}"


# ---------------------------------------------------------------- secrets in flight

#: Shorter strings are not held: masking every "pw" or "abc" in every log line would garble
#: the logs, and the text rules (URL userinfo, query values) mask them where they matter.
MIN_SECRET_LENGTH = 4


class SecretRegistry:
    """Secrets that exist only while something uses them (the password of a transfer in
    progress), for the process-wide log redaction to mask wherever they appear.

    Thread-safe: transfers run in worker threads, log records are filtered in any thread.
    Holders nest; a secret held twice stays until both let go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._snapshot: tuple[str, ...] = ()

    def current(self) -> tuple[str, ...]:
        return self._snapshot  # a tuple swapped whole: readers need no lock

    @contextmanager
    def holding(self, secrets: Iterable[str]) -> Iterator[None]:
        kept = [s for s in dict.fromkeys(secrets) if len(s) >= MIN_SECRET_LENGTH]
        with self._lock:
            self._held.update(kept)
            self._publish()
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(kept)
                self._held = +self._held  # drop the ones no longer held
                self._publish()

    def _publish(self) -> None:
        # Longest first: "abc" must not replace part of "abcdef" and leave "def" standing.
        self._snapshot = tuple(sorted(self._held, key=len, reverse=True))


#: The one registry of the process; the log redaction filter reads it.
SECRETS = SecretRegistry()
