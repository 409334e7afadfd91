"""Secrets stay out of logs and "frame" events: AuthorizationKey values, Authorization
headers, the Basic-auth password of the connection in use, the userinfo and query values of
URLs (``ftp://user:password@host``, ``?X-Amz-Signature=``, as UpdateFirmware and
GetDiagnostics locations carry them) and the secrets of the transfers in progress
(`evsed.controller.masking.SECRETS`)."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from websockets.frames import Frame

from evsed.controller.firmware.urls import redact_url
from evsed.controller.masking import SECRETS

_SECRET_PATTERNS = (
    # ChangeConfiguration of the AuthorizationKey, in either property order.
    re.compile(r'("key"\s*:\s*"AuthorizationKey"\s*,\s*"value"\s*:\s*")[^"]*', re.IGNORECASE),
    re.compile(r'("value"\s*:\s*")[^"]*("\s*,\s*"key"\s*:\s*"AuthorizationKey")', re.IGNORECASE),
    re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE),
)


# JSON may spell any character as \uXXXX. A received frame is logged as it came, so a CS
# writing ftp:\u002f\u002fcs:pw\u0040host (or \u003f before a signature) would hide the URL
# from the URL rule. These escapes of URL delimiters are written as the characters first:
# the same JSON, the same strings, only spelt plainly (the quote keeps a backslash).
_JSON_URL_ESCAPE = re.compile(r"(?<!\\)\\u00(2[2356fF]|3[aAbBdDfF]|40)")  # not after "\\"
_UNESCAPED = {"22": '\\"', "23": "#", "25": "%", "26": "&", "2f": "/", "3a": ":", "3b": ";"}
_UNESCAPED |= {"3d": "=", "3f": "?", "40": "@"}


def _plain_delimiters(text: str) -> str:
    return _JSON_URL_ESCAPE.sub(lambda m: _UNESCAPED[m[1].lower()], text)


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
    if "\\u00" in text:
        text = _plain_delimiters(text)
    if ":/" in text or ":\\/" in text:  # a URL (maybe JSON-escaped): a plain search first
        text = redact_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record whose text carries a secret; attached to the loggers the session feeds.

    ``secrets`` is what the link set (the password of the connection) followed by the
    secrets of the transfers running now (`SECRETS`, held by `firmware.transfer`)."""

    def __init__(self) -> None:
        super().__init__()
        self._own: tuple[str, ...] = ()

    @property
    def secrets(self) -> tuple[str, ...]:
        held = SECRETS.current()
        return self._own + held if held else self._own

    @secrets.setter
    def secrets(self, value: tuple[str, ...]) -> None:
        self._own = tuple(value)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, Frame) for a in record.args):
            record.args = tuple(_clean_frame(a, self.secrets) for a in record.args)
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is the logging module's business
            return True
        clean = redact(text, self.secrets)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def _clean_frame(arg: Any, secrets: tuple[str, ...]) -> Any:
    """A websockets frame (its DEBUG line "< TEXT ...") with its payload redacted. Its text
    form elides the middle of a long payload: "...GetD...ignature=SIG99..." has lost the
    scheme that tells the URL rule a URL is there, so the payload is redacted whole first."""
    if not isinstance(arg, Frame) or not arg.data:
        return arg
    text = bytes(arg.data).decode("utf-8", "replace")
    clean = redact(text, secrets)
    return arg if clean == text else dataclasses.replace(arg, data=clean.encode())


#: The one filter of the process; the link sets ``secrets`` to the password in use.
FILTER = RedactingFilter()
