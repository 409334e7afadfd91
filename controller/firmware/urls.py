"""Checks on the URLs a Central System hands us (UpdateFirmware.location,
GetDiagnostics.location), and the one way to print them.

The CS is trusted to name a server, not to read our disk: only network schemes pass, never
``file:`` or a bare path. A URL may carry secrets in three places, and `redact_url` /
`redact_urls` blank all three for every log line, status text and archived line:

- the userinfo: everything before the LAST ``@`` of the authority, as `urlsplit` (and so
  the transfer itself) reads it. ``ftp://cs:top@SECRET@host`` is user ``cs`` with password
  ``top@SECRET`` (an unencoded ``@`` that servers and clients accept): it prints as
  ``ftp://cs:***@host``. A user name alone is a token (``https://TOKEN@host``, as Git hosts
  and webhook URLs use it) and prints as ``https://***@host``.
- the query and the fragment: every value is blanked, the names are kept
  (``?X-Amz-Signature=***&X-Amz-Expires=***``). Presigned upload URLs (S3, GCS, Azure SAS)
  carry their signature, credential and session token there, under names that differ from
  one service to the next (``sig``, ``X-Goog-Signature``, ``token``, ``k``...): a list of
  sensitive names misses one sooner or later and a miss is a leak, while the values lost
  (an expiry, a version) are rarely what a reader of a log needs. The names still show
  what kind of URL it was.

`TransferUrl.secrets` names the same secrets as strings, for the process-wide redaction
(`evsed.controller.masking.SECRETS`) while a transfer runs: a form the text rule cannot
recognise (a JSON-escaped URL, an error message quoting the password alone) is masked too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from evsed.controller.masking import mask_url, mask_url_tail, mask_userinfo

#: Schemes evsed transfers over (SupportedFileTransferProtocols, lower case).
ALLOWED_SCHEMES: frozenset[str] = frozenset({"http", "https", "ftp", "ftps"})
#: CiString / anyURI: OCPP does not bound a location; 2 KiB is far above any real one.
MAX_URL_LENGTH = 2048

# A URL inside any text (a log line, a JSON frame). Where it ends is a guess there: at white
# space, at a bare '"' (the end of a JSON string; an escaped \" inside one is kept), and the
# authority also at / ? # (a JSON-escaped "\/" too), as urlsplit ends it. The scheme may not
# start inside a longer run of scheme characters (the look-behind), and the quantifiers are
# possessive: every character is looked at a bounded number of times, so a megabyte frame
# costs one pass, not one pass per position.
_URL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9+.\-])"
    r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*+:(?:\\?/){2})"
    r"(?P<authority>(?:[^\s\"/\\?#]|\\[^\s/])*+)"
    r"(?P<rest>(?:[^\s\"\\]|\\\S)*+)"
)
# A whole text that is one URL: read exactly as urlsplit reads it.
_WHOLE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*+://")
# Query names whose values `TransferUrl.secrets` hands to the process-wide redaction (the
# text rule blanks every value anyway; these are the ones worth hunting in other texts).
_SENSITIVE_NAME = re.compile(r"sig|token|key|pass|pwd|secret|credential|auth|session", re.I)


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
        """The password, a user name that stands alone (a token), and the values of query
        parameters with sensitive names: decoded and as written in the URL."""
        parts = urlsplit(self.raw)
        found: list[str] = []
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found += [password] if colon else [user]
        for item in parts.query.split("&"):
            name, _, value = item.partition("=")
            if _SENSITIVE_NAME.search(unquote(name)):
                found.append(value)
        decoded = [unquote(s) for s in found]
        return tuple(dict.fromkeys(s for s in (*found, *decoded) if s))


def _mask_match(m: re.Match[str]) -> str:
    authority = mask_userinfo(m["authority"], lone_user_is_secret=True)
    return m["prefix"] + authority + mask_url_tail(m["rest"])


def redact_url(text: str) -> str:
    """``text`` with the userinfo, query values and fragment of every URL in it blanked."""
    whole = _WHOLE_URL.match(text)
    if whole is not None and re.search(r"\s", text) is None:
        # One URL (a location, a redirect target): read exactly as urlsplit reads it.
        return mask_url(text, lone_user_is_secret=True)
    return _URL_IN_TEXT.sub(_mask_match, text)


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
    except ValueError:
        # Neither the location nor the parser's message: a port that "could not be cast to
        # integer" is, in ftp://cs:ab/cd@host, the first half of a password.
        raise UrlRejected("location does not parse (its port or [IPv6] host)") from None
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
