"""TLS for the link to the Central System: key material loaded once, at start-up.

`prepare(cs)` reads the CA file, the client certificate and its key into `ssl.SSLContext`s
before the event loop runs (`evsed run` calls it from its start-up checks); the session
then only picks the prebuilt context for the profile in effect (`client_context`).
Reading a key never prompts: OpenSSL asks on the terminal for the passphrase of an
encrypted key unless it is given a password callback, so one is always given. Without a
configured `client_key_password` an encrypted key is refused with a message saying so.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from evsed.controller.config import CentralSystem


class TlsProblem(Exception):
    """Key material that cannot be used; `key` is the configuration key, `path` its file."""

    def __init__(self, key: str, path: Path, message: str) -> None:
        super().__init__(f"central_system.{key}: {message} ({path})")
        self.key, self.path, self.message = key, path, message


class _NoPassword(Exception):
    pass


@dataclass(frozen=True)
class ClientTls:
    """The contexts of one [central_system] configuration: server authentication only
    (profile 2), and with the client certificate when one is configured (profile 3)."""

    server_only: ssl.SSLContext
    mutual: ssl.SSLContext | None

    def for_profile(self, profile: int) -> ssl.SSLContext:
        if profile < 3:
            return self.server_only
        if self.mutual is None:
            raise ValueError("security profile 3 needs client_cert and client_key")
        return self.mutual


def _base(cs: CentralSystem) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if cs.ca_file is not None:
            context.load_verify_locations(cafile=str(cs.ca_file))
    except ssl.SSLError as exc:  # before OSError: it is one
        reason = exc.reason or str(exc)
        raise TlsProblem(
            "ca_file", Path(cs.ca_file or ""), f"not PEM CA certificates ({reason})"
        ) from None
    except FileNotFoundError:
        raise TlsProblem("ca_file", Path(cs.ca_file or ""), "no such file") from None
    except OSError as exc:
        raise TlsProblem("ca_file", Path(cs.ca_file or ""), exc.strerror or str(exc)) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _with_client_cert(cs: CentralSystem, cert: Path, key: Path) -> ssl.SSLContext:
    context = _base(cs)
    secret = cs.client_key_password.get_secret_value()

    def password() -> str:
        # Called by OpenSSL only for an encrypted key: never let it prompt instead.
        if not secret:
            raise _NoPassword
        return secret

    for name, path in (("client_cert", cert), ("client_key", key)):
        if not path.is_file():
            raise TlsProblem(name, path, "no such file")
    try:
        context.load_cert_chain(cert, key, password=password)
    except _NoPassword:
        raise TlsProblem(
            "client_key",
            key,
            "the key is encrypted: give its passphrase as central_system.client_key_password, "
            "or use an unencrypted key",
        ) from None
    except ssl.SSLError as exc:  # before OSError: it is one
        raise TlsProblem("client_key", key, _cert_chain_reason(exc, key, bool(secret))) from None
    except OSError as exc:
        raise TlsProblem("client_key", key, exc.strerror or str(exc)) from None
    return context


def _cert_chain_reason(exc: ssl.SSLError, key: Path, had_password: bool) -> str:
    reason = str(exc.reason or exc).upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return "the key does not belong to client_cert"
    if had_password and _encrypted(key):
        # OpenSSL 3 reports a wrong passphrase as a bare "PEM lib" error.
        return "client_key_password does not decrypt this key"
    return f"not a PEM certificate and key ({exc.reason or exc})"


def _encrypted(key: Path) -> bool:
    try:
        head = key.read_bytes()[:4096]
    except OSError:
        return False
    return b"ENCRYPTED" in head  # PKCS#8 "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED"


def build(cs: CentralSystem) -> ClientTls:
    """Read every file now (blocking): call it before the loop runs or in a worker."""
    server_only = _base(cs)
    mutual = None
    if cs.client_cert is not None and cs.client_key is not None:
        mutual = _with_client_cert(cs, Path(cs.client_cert), Path(cs.client_key))
    return ClientTls(server_only, mutual)


def _cache_key(cs: CentralSystem) -> tuple[object, ...]:
    return (cs.ca_file, cs.client_cert, cs.client_key, cs.client_key_password)


_prepared: dict[tuple[object, ...], ClientTls] = {}
_lock = threading.Lock()


def prepare(cs: CentralSystem) -> ClientTls:
    """Build (once) and keep the contexts of `cs`; raises TlsProblem."""
    key = _cache_key(cs)
    with _lock:
        found = _prepared.get(key)
    if found is not None:
        return found
    built = build(cs)
    with _lock:
        return _prepared.setdefault(key, built)


def client_context(cs: CentralSystem, profile: int) -> ssl.SSLContext:
    """The prebuilt context for `profile` (2 or 3). `evsed run` prepared it at start-up;
    a caller that did not (a test) gets it built here, once, still without a prompt."""
    try:
        return prepare(cs).for_profile(profile)
    except TlsProblem as exc:
        raise ValueError(str(exc)) from None
