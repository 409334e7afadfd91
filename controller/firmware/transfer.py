"""Bounded file transfers for Firmware Management: download (UpdateFirmware) and upload
(GetDiagnostics) over http, https, ftp and ftps.

The standard library is enough: `urllib.request` for http(s) (TLS with the system's
trust store, streaming reads) and `ftplib` for ftp and ftps, all with socket timeouts.

ftps is explicit FTPS (RFC 4217): the control connection on port 21 (unless the URL names
another) is switched to TLS with AUTH TLS before the user name and password are sent, and
every data connection is protected too (PBSZ 0, PROT P). The server's certificate is checked
against the system's trust store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` point elsewhere) and
its host name, like https. A server that refuses AUTH TLS or PROT P fails the transfer: never
a silent fall back to plain ftp. Data connections resume the control connection's TLS
session, which vsftpd requires by default (``require_ssl_reuse``): the standard library's
FTP_TLS alone gets "522 session reuse required" there (tests/controller/test_ftps.py runs
vsftpd where it is installed, over TLS 1.3). Implicit FTPS (TLS from
the first byte, usually port 990) is not spoken: such a server does not answer the plain
greeting and the transfer fails on its socket timeout. Each
transfer is blocking and meant to run in a worker thread (`asyncio.to_thread`), so neither
the event loop nor the safety core ever waits on a server. Bounds: a byte limit (the
transfer stops as soon as it is passed) and a deadline for the whole transfer, besides the
per-operation socket timeout. The deadline does not rely on a slow server: reads take what
one receive brings (`read1`, `recv`) so that the clock is looked at after each, and at the
deadline a watchdog shuts down every socket of the transfer, which wakes a blocked receive
or send at once. Without it a server dripping one byte a little faster than the socket
timeout held a transfer (and its worker thread) for days: `read(64 KiB)` waits for a full
chunk, and a status line, a header or an FTP reply drips through readline the same way. A
download lands under a temporary name and is renamed (after fsync) only when complete: a
half file never carries the final name.

While a transfer runs, the secrets of its URL (and of a redirect's) are held in
`evsed.controller.masking.SECRETS`, so the process-wide log redaction masks them wherever
they appear, not only where the URL rule recognises a URL.

The opener is built by hand, not with `build_opener`, so that it has no file:, data: or
ftp: handler and no proxy from the environment; a redirect is checked like the first URL.
"""

from __future__ import annotations

import base64
import contextlib
import ftplib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import unquote

from evsed.controller.firmware.urls import TransferUrl, UrlRejected, check_url, redact_url
from evsed.controller.masking import SECRETS

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_TIMEOUT_S = 600.0  # the whole transfer
DEFAULT_SOCKET_TIMEOUT_S = 30.0  # one connect / read / write
FTP_SCHEMES = frozenset({"ftp", "ftps"})


class TransferFailed(Exception):
    """A download or upload did not complete; the message carries no password."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when a server answered with an error


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S


DEFAULT_LIMITS = Limits()


class _Budget:
    """Bytes and time left for one transfer, the watchdog that enforces its deadline on the
    sockets, and the secrets held while it runs. Used as a context manager around it."""

    def __init__(self, limits: Limits, monotonic: Callable[[], float]) -> None:
        self.limits = limits
        self._monotonic = monotonic
        self._deadline = monotonic() + limits.timeout_s
        self.done = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._watchdog = threading.Timer(limits.timeout_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.name = "transfer-deadline"
        self._held = contextlib.ExitStack()

    def __enter__(self) -> _Budget:
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        self._watchdog.join(5.0)  # ends at once once cancelled: no thread outlives its transfer
        self._held.close()

    def hold_secrets(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` in every log line until the transfer ends."""
        self._held.enter_context(SECRETS.holding(secrets))

    def watch(self, sock: socket.socket) -> socket.socket:
        """``sock`` is shut down at the deadline (at once if that has passed)."""
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._sockets.append(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def count(self, n: int) -> None:
        self.done += n
        if self.done > self.limits.max_bytes:
            raise TransferFailed(f"larger than the limit of {self.limits.max_bytes} bytes")
        self.check_time()

    def check_time(self) -> None:
        # `expired` too: a socket the watchdog shut down reads as a clean end of file, and a
        # download cut that way must not pass for a complete one.
        if self.expired or self._monotonic() > self._deadline:
            raise TransferFailed(f"took longer than {self.limits.timeout_s:g} s")


def _shut(sock: socket.socket) -> None:
    """Wake whatever blocks on ``sock`` in another thread. The plain socket's shutdown, not
    SSLSocket's: that one also drops the TLS state the blocked thread is using."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # closed already, or never connected


# ---------------------------------------------------------------- http(s)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def __init__(self, budget: _Budget) -> None:
        super().__init__()
        self._budget = budget

    def redirect_request(  # type: ignore[override]
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            target = check_url(newurl, allowed=frozenset({"http", "https"}))
        except UrlRejected as e:
            raise TransferFailed(f"redirect refused: {e}") from None
        self._budget.hold_secrets(target.secrets)
        new = super().redirect_request(req, fp, code, msg, headers, _without_userinfo(target))
        if new is not None and target.username is not None:
            new.add_unredirected_header("Authorization", _basic(target))
        return new


class _WatchedHTTP(http.client.HTTPConnection):
    def __init__(self, budget: _Budget, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._budget = budget

    def connect(self) -> None:
        super().connect()
        self._budget.watch(self.sock)


class _WatchedHTTPS(http.client.HTTPSConnection):
    def __init__(self, budget: _Budget, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._budget = budget

    def connect(self) -> None:
        # HTTPSConnection.connect without a proxy tunnel (the opener has no proxy), the
        # handshake after the watch: a server can drip its certificate as slowly as a body.
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        self._budget.watch(self.sock)
        self.sock.do_handshake()


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, budget: _Budget) -> None:
        super().__init__()
        self._budget = budget

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(lambda host, **kw: _WatchedHTTP(self._budget, host, **kw), req)  # type: ignore[arg-type]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, budget: _Budget) -> None:
        super().__init__()
        self._budget = budget

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(lambda host, **kw: _WatchedHTTPS(self._budget, host, **kw), req)  # type: ignore[arg-type]


def _opener(budget: _Budget) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        _HTTPHandler(budget),
        _HTTPSHandler(budget),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _CheckedRedirects(budget),
    ):
        opener.add_handler(handler)
    return opener


def _without_userinfo(url: TransferUrl) -> str:
    netloc = url.host if ":" not in url.host else f"[{url.host}]"
    if url.port is not None:
        netloc = f"{netloc}:{url.port}"
    return f"{url.scheme}://{netloc}{url.path}"


def _basic(url: TransferUrl) -> str:
    token = f"{url.username or ''}:{url.password or ''}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


def _http_request(
    url: TransferUrl, *, method: str, data: Any = None, headers: dict[str, str] | None = None
) -> urllib.request.Request:
    req = urllib.request.Request(_without_userinfo(url), data=data, method=method)
    req.add_header("User-Agent", "evsed")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if url.username is not None:
        req.add_unredirected_header("Authorization", _basic(url))
    return req


def _http_download(url: TransferUrl, out: BinaryIO, budget: _Budget) -> None:
    req = _http_request(url, method="GET")
    with _opener(budget).open(req, timeout=budget.limits.socket_timeout_s) as resp:
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > budget.limits.max_bytes:
            raise TransferFailed(
                f"announced {length} bytes, above the limit of {budget.limits.max_bytes}"
            )
        # read1: what one receive brings. read(CHUNK) waits for a full chunk, and the clock
        # was looked at once per 64 KiB however slowly they came.
        while chunk := resp.read1(CHUNK):
            budget.count(len(chunk))
            out.write(chunk)
        budget.check_time()


def _file_chunks(path: Path, budget: _Budget) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            budget.check_time()
            yield chunk


def _http_upload(url: TransferUrl, path: Path, method: str, budget: _Budget) -> None:
    size = path.stat().st_size
    if method == "PUT":
        body: Any = _file_chunks(path, budget)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    else:
        # POST as an HTML form upload (field "file"): what upload endpoints generally take.
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def parts() -> Iterator[bytes]:
            yield head
            yield from _file_chunks(path, budget)
            yield tail

        body = parts()
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
    req = _http_request(url, method=method, data=body, headers=headers)
    with _opener(budget).open(req, timeout=budget.limits.socket_timeout_s) as resp:
        resp.read1(CHUNK)
    budget.check_time()


# ---------------------------------------------------------------- ftp


def _ftp_connect(ftp: ftplib.FTP, budget: _Budget, host: str, port: int) -> None:
    """FTP.connect with the control socket watched before the greeting is read."""
    ftp.host, ftp.port = host, port
    ftp.sock = budget.watch(socket.create_connection((host, port), ftp.timeout))
    ftp.af = ftp.sock.family
    ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
    ftp.welcome = ftp.getresp()


class _Ftp(ftplib.FTP):
    """FTP whose data connections the deadline's watchdog knows."""

    budget: _Budget

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int]:
        conn, size = super().ntransfercmd(cmd, rest)
        return self.budget.watch(conn), size


class _FtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session, and
    whose sockets the deadline's watchdog knows (before each handshake)."""

    budget: _Budget

    def auth(self) -> str:
        resp = self.voidcmd("AUTH TLS")
        self.sock = self._handshake(self.sock)
        self.file = self.sock.makefile(mode="r", encoding=self.encoding)
        return resp

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        self.budget.watch(conn)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self._handshake(conn, session)
        return conn, size

    def _handshake(self, sock: socket.socket, session: ssl.SSLSession | None = None) -> Any:
        tls = self.context.wrap_socket(  # type: ignore[attr-defined]
            sock, server_hostname=self.host, session=session, do_handshake_on_connect=False
        )
        self.budget.watch(tls)
        tls.do_handshake()
        return tls


def _ftp(url: TransferUrl, budget: _Budget) -> ftplib.FTP:
    timeout = budget.limits.socket_timeout_s
    if url.scheme == "ftps":
        ftps = _FtpTls(context=ssl.create_default_context(), timeout=timeout)
        ftps.budget = budget
        _ftp_connect(ftps, budget, url.host, url.port or 21)
        # AUTH TLS first: login() would do it too, but only here is it certain that no
        # credential crosses the wire before the control connection is encrypted.
        ftps.auth()
        ftps.login(url.username or "anonymous", url.password or "")
        ftps.prot_p()
        ftps.set_pasv(True)
        return ftps
    ftp = _Ftp(timeout=timeout)
    ftp.budget = budget
    _ftp_connect(ftp, budget, url.host, url.port or 21)
    ftp.login(url.username or "anonymous", url.password or "")
    ftp.set_pasv(True)
    return ftp


def _ftp_path(url: TransferUrl) -> str:
    return unquote(url.path.split("?", 1)[0])


def _ftp_download(url: TransferUrl, out: BinaryIO, budget: _Budget) -> None:
    ftp = _ftp(url, budget)
    try:
        with _DataConnection(ftp, "RETR " + _ftp_path(url)) as conn:
            while chunk := conn.recv(CHUNK):
                budget.count(len(chunk))
                out.write(chunk)
        budget.check_time()
        ftp.voidresp()
    finally:
        _ftp_close(ftp)


def _ftp_upload(url: TransferUrl, path: Path, budget: _Budget) -> None:
    ftp = _ftp(url, budget)
    try:
        with _DataConnection(ftp, "STOR " + _ftp_path(url)) as conn:
            for chunk in _file_chunks(path, budget):
                conn.sendall(chunk)
        ftp.voidresp()
    finally:
        _ftp_close(ftp)


class _DataConnection:
    """The data connection of one transfer command, closed on the way out."""

    def __init__(self, ftp: ftplib.FTP, cmd: str) -> None:
        ftp.voidcmd("TYPE I")
        self.conn = ftp.transfercmd(cmd)

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.conn, ssl.SSLSocket):
            # TLS close_notify: how an ftps server tells a complete upload from a cut one.
            try:
                self.conn.unwrap()
            except (OSError, ValueError):
                pass
        self.conn.close()


def _ftp_close(ftp: ftplib.FTP) -> None:
    try:
        ftp.quit()
    except (OSError, ftplib.Error):
        ftp.close()


# ---------------------------------------------------------------- the two operations


def _failure(url: TransferUrl, e: BaseException, budget: _Budget) -> TransferFailed:
    if budget.expired and not isinstance(e, TransferFailed):
        # Whatever the watchdog's shutdown made of the transfer (a reset, an SSL error, a
        # short body), the cause is the deadline.
        e = TransferFailed(f"took longer than {budget.limits.timeout_s:g} s")
    if isinstance(e, TransferFailed):
        reason = str(e)
    elif isinstance(e, HTTPError):
        reason = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, URLError):
        reason = f"{e.reason}"
    else:
        reason = f"{type(e).__name__}: {e}"
    for secret in url.secrets:
        reason = reason.replace(secret, "***")
    status = e.code if isinstance(e, HTTPError) else None
    return TransferFailed(f"{url.redacted}: {redact_url(reason)}", status)


def download(
    location: str,
    dest: Path,
    *,
    limits: Limits = DEFAULT_LIMITS,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Fetch ``location`` into ``dest`` (written as ``.<name>.part``, renamed when complete);
    returns the size. Raises UrlRejected or TransferFailed. Blocking: run it in a thread."""
    url = check_url(location)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with _Budget(limits, monotonic) as budget:
        budget.hold_secrets(url.secrets)
        try:
            with part.open("wb") as out:
                if url.scheme in FTP_SCHEMES:
                    _ftp_download(url, out, budget)
                else:
                    _http_download(url, out, budget)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, dest)
        except Exception as e:
            part.unlink(missing_ok=True)
            raise _failure(url, e, budget) from None
    log.info("downloaded %s (%d bytes) to %s", url.redacted, budget.done, dest)
    return budget.done


def upload(
    path: Path,
    location: str,
    *,
    method: str = "PUT",
    limits: Limits = DEFAULT_LIMITS,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Send ``path`` to ``location``: ftp(s) STOR (a location ending in "/" gets the file's
    name appended), http(s) PUT or POST (form field "file"). Raises UrlRejected or
    TransferFailed. Blocking: run it in a thread."""
    if location.endswith("/"):
        location += path.name
    url = check_url(location)
    if method not in ("PUT", "POST"):
        raise ValueError(f"method {method!r}: PUT or POST")
    if path.stat().st_size > limits.max_bytes:
        raise TransferFailed(f"{path.name} is larger than the limit of {limits.max_bytes} bytes")
    with _Budget(limits, monotonic) as budget:
        budget.hold_secrets(url.secrets)
        try:
            if url.scheme in FTP_SCHEMES:
                _ftp_upload(url, path, budget)
            else:
                _http_upload(url, path, method, budget)
        except Exception as e:
            raise _failure(url, e, budget) from None
    log.info("uploaded %s to %s", path.name, url.redacted)
