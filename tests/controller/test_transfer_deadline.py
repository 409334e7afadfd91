"""The deadline of a transfer holds against a server that trickles: one byte at a time, each
well within the socket timeout, in the body, in the headers, in an FTP greeting, or a server
that stops reading an upload. Before, `read(64 KiB)` waited for a full chunk and the clock
was looked at once per chunk: with a 1 s limit a 1-byte-per-0.1-s server held a download
for as long as it dripped (days, for a drip just under the socket timeout).

Each server drips in its own thread (its sleeps are the stimulus, not the test waiting); the
test only bounds how long the transfer took. The limits: a 0.5 s deadline, a 5 s socket
timeout (so that the deadline, not the socket timeout, is what ends each transfer) and drips
that would last 10 s."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evsed.controller.firmware.transfer import Limits, TransferFailed, download, upload
from tests.support.ftps_server import Certificates, make_certificates

LIMITS = Limits(max_bytes=10_000_000, timeout_s=0.5, socket_timeout_s=5.0)
BOUND_S = 3.0  # the deadline plus room for a busy machine; every drip lasts 10 s
DRIP_BYTES = 200
DRIP_EVERY_S = 0.05


@contextmanager
def tcp_server(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback server running ``serve(conn, stop)`` for each connection; yields the port."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    # A small receive buffer: an upload nobody reads fills it, and the sender blocks, soon.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.settimeout(0.05)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(serve, conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _serve_one(
    serve: Callable[[socket.socket, threading.Event], None],
    conn: socket.socket,
    stop: threading.Event,
) -> None:
    with conn:
        try:
            serve(conn, stop)
        except OSError:
            pass  # the client hung up: what the deadline is for


def _drip(conn: socket.socket, stop: threading.Event, head: bytes = b"") -> None:
    conn.sendall(head)
    for _ in range(DRIP_BYTES):
        if stop.is_set():
            return
        conn.sendall(b"x")
        time.sleep(DRIP_EVERY_S)  # the slow server itself


def _request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def _timed(transfer: Callable[[], object]) -> tuple[float, TransferFailed]:
    t0 = time.monotonic()
    with pytest.raises(TransferFailed) as failed:
        transfer()
    return time.monotonic() - t0, failed.value


def _assert_cut(took: float, failed: TransferFailed) -> None:
    assert took < BOUND_S, f"a {LIMITS.timeout_s} s deadline held for {took:.1f} s"
    assert "longer than 0.5 s" in str(failed)
    assert not [t for t in threading.enumerate() if t.name == "transfer-deadline"]


def test_a_body_that_drips_is_cut_at_the_deadline_and_never_passes_for_complete(
    tmp_path: Path,
) -> None:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        _request(conn)
        # No Content-Length: the body ends when the connection does, so a cut looks like
        # the end of the file; the download must still fail.
        _drip(conn, stop, b"HTTP/1.0 200 OK\r\n\r\n")

    with tcp_server(serve) as port:
        dest = tmp_path / "fw.whl"
        took, failed = _timed(
            lambda: download(f"http://127.0.0.1:{port}/fw.whl", dest, limits=LIMITS)
        )
    _assert_cut(took, failed)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_headers_that_drip_are_cut_at_the_deadline(tmp_path: Path) -> None:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        _request(conn)
        _drip(conn, stop, b"HTTP/1.1 200 OK\r\nX-Slow: ")

    with tcp_server(serve) as port:
        took, failed = _timed(
            lambda: download(f"http://127.0.0.1:{port}/f", tmp_path / "f", limits=LIMITS)
        )
    _assert_cut(took, failed)


def test_an_ftp_greeting_that_drips_is_cut_at_the_deadline(tmp_path: Path) -> None:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        _drip(conn, stop, b"220 ")

    with tcp_server(serve) as port:
        took, failed = _timed(
            lambda: download(f"ftp://cs:pw@127.0.0.1:{port}/f", tmp_path / "f", limits=LIMITS)
        )
    _assert_cut(took, failed)


def test_an_upload_nobody_reads_is_cut_at_the_deadline(tmp_path: Path) -> None:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        _request(conn)  # the headers, then never another byte of the body
        stop.wait(10)

    archive = tmp_path / "diag.tar.gz"
    archive.write_bytes(b"\0" * 8_000_000)  # more than the loopback buffers hold
    with tcp_server(serve) as port:
        took, failed = _timed(
            lambda: upload(archive, f"http://127.0.0.1:{port}/up/", method="PUT", limits=LIMITS)
        )
    _assert_cut(took, failed)


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certificates:
    """A CA of the test's own in the trust store, as SSL_CERT_FILE makes it for the service."""
    (tmp_path / "tls").mkdir()
    certificates = make_certificates(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return certificates


def test_https_downloads_through_the_watched_connection(
    trusted: Certificates, tmp_path: Path
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(trusted.cert, trusted.key)

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            _request(tls)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwheel")

    with tcp_server(serve) as port:
        size = download(f"https://127.0.0.1:{port}/fw.whl", tmp_path / "fw.whl", limits=LIMITS)
    assert size == 5 and (tmp_path / "fw.whl").read_bytes() == b"wheel"


def test_a_tls_handshake_nobody_answers_is_cut_at_the_deadline(
    trusted: Certificates, tmp_path: Path
) -> None:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(10)  # takes the connection, never says a word

    with tcp_server(serve) as port:
        took, failed = _timed(
            lambda: download(f"https://127.0.0.1:{port}/f", tmp_path / "f", limits=LIMITS)
        )
    _assert_cut(took, failed)
