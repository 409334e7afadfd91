"""Card ids as people may see them: in logs at INFO and above and in `evsed status`; and
the registry of secrets in flight that the log redaction masks wherever they appear.

A card number is a credential (cloned cards start charging sessions on someone else's
account), so only its last four characters leave the process unless DEBUG is asked for.
"""

from __future__ import annotations

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
