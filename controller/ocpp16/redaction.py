"""Secrets stay out of logs and "frame" events: AuthorizationKey values, Authorization
headers and the Basic-auth password of the connection in use."""

from __future__ import annotations

import logging
import re

_SECRET_PATTERNS = (
    # ChangeConfiguration of the AuthorizationKey, in either property order.
    re.compile(r'("key"\s*:\s*"AuthorizationKey"\s*,\s*"value"\s*:\s*")[^"]*', re.IGNORECASE),
    re.compile(r'("value"\s*:\s*")[^"]*("\s*,\s*"key"\s*:\s*"AuthorizationKey")', re.IGNORECASE),
    re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without AuthorizationKey values, Authorization headers or any of ``secrets``."""
    # Every pattern needs the word: a 1.4 MiB frame is lowered in ~1 ms, where the three
    # case-insensitive scans take ~30 ms holding the GIL (and the safety core waits).
    if "authorization" in text.lower():
        text = _SECRET_PATTERNS[0].sub(r"\1***", text)
        text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
        text = _SECRET_PATTERNS[2].sub(r"\1***", text)
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
