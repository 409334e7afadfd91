"""Checks on the URLs a Central System hands us (UpdateFirmware.location,
GetDiagnostics.location), and the one way to print them.

The CS is trusted to name a server, not to read our disk: only network schemes pass, never
``file:`` or a bare path. A URL may carry ``user:password@``; `redact_url` / `redact_urls`
blank the password for every log line and status text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

#: Schemes evsed transfers over (SupportedFileTransferProtocols, lower case).
ALLOWED_SCHEMES: frozenset[str] = frozenset({"http", "https", "ftp", "ftps"})
#: CiString / anyURI: OCPP does not bound a location; 2 KiB is far above any real one.
MAX_URL_LENGTH = 2048

# scheme://user:password@host  ->  scheme://user:***@host (in any text, not just a URL).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:@/]*):[^\s@/]*@")


class UrlRejected(ValueError):
    """The URL may not be used; the message is safe to log (no password)."""


@dataclass(frozen=True, slots=True)
class TransferUrl:
    """A checked URL: its parts, with the credentials decoded."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str  # path with query, as sent to the server ("/" when empty)
    username: str | None
    password: str | None

    @property
    def redacted(self) -> str:
        return redact_url(self.raw)

    @property
    def filename(self) -> str:
        """The last path segment (what the file is called on the server), may be ''."""
        return unquote(urlsplit(self.raw).path.rsplit("/", 1)[-1])

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password,) if s)


def redact_url(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` password replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)


redact_urls = redact_url  # the same rule works on any text: log lines, status info


def check_url(raw: str, *, allowed: frozenset[str] = ALLOWED_SCHEMES) -> TransferUrl:
    """``raw`` parsed, or UrlRejected saying why (without its password)."""
    if not isinstance(raw, str) or not raw:
        raise UrlRejected("empty location")
    if len(raw) > MAX_URL_LENGTH:
        raise UrlRejected(f"location longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in raw):
        raise UrlRejected("location contains spaces or control characters")
    try:
        parts: SplitResult = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise UrlRejected(f"location {redact_url(raw)!r} does not parse: {e}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise UrlRejected(f"location {redact_url(raw)!r} has no scheme (local paths are refused)")
    if scheme not in allowed:
        raise UrlRejected(f"scheme {scheme!r} not allowed (allowed: {', '.join(sorted(allowed))})")
    host = parts.hostname or ""
    if not host:
        raise UrlRejected(f"location {redact_url(raw)!r} names no host")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return TransferUrl(
        raw=raw,
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
