"""Secrets stay out of logs and "frame" events: AuthorizationKey values, Authorization
headers, the Basic-auth password of the connection in use and passwords inside URLs
(``ftp://user:password@host``, as UpdateFirmware and GetDiagnostics locations carry them)."""

from __future__ import annotations

import logging
import re

from evsed.controller.firmware.urls import redact_url

_SECRET_PATTERNS = (
    # ChangeConfiguration of the AuthorizationKey, in either property order.
    re.compile(r'("key"\s*:\s*"AuthorizationKey"\s*,\s*"value"\s*:\s*")[^"]*', re.IGNORECASE),
    re.compile(r'("value"\s*:\s*")[^"]*("\s*,\s*"key"\s*:\s*"AuthorizationKey")', re.IGNORECASE),
    re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE),
)


# Letters that IGNORECASE matches to an ASCII letter of the patterns but str.lower() does
# not lower to it (Python re docs: capital I with dot, dotless i, long s, Kelvin sign).
_ODD_CASE = ("\u0130", "\u0131", "\u017f", "\u212a")


def _may_match(text: str) -> bool:
    """False only when no pattern can match: plain searches of a 1.4 MB frame take about
    1 ms, the three case-insensitive patterns 20 ms."""
    low = text.lower()
    if "authorizationkey" in low or "authorization:" in low:
        return True
    return any(ch in text for ch in _ODD_CASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without AuthorizationKey values, Authorization headers, URL passwords or any
    of ``secrets``."""
    # Holding the GIL for ~30 ms of case-insensitive scans would stall the loop and the
    # safety core's thread alike: plain searches settle most frames first.
    if _may_match(text):
        text = _SECRET_PATTERNS[0].sub(r"\1***", text)
        text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
        text = _SECRET_PATTERNS[2].sub(r"\1***", text)
    if "@" in text:
        text = redact_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record whose text carries a secret; attached to the loggers the session feeds."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is the logging module's business
            return True
        clean = redact(text, self.secrets)
        if clean != text:
            record.msg, record.args = clean, None
        return True


#: The one filter of the process; the link sets ``secrets`` to the password in use.
FILTER = RedactingFilter()
