"""Loopback file servers for the transfer tests: an HTTP server (http.server in a thread)
serving files and recording PUT/POST bodies, and an FTP server (pyftpdlib) over a temp
directory with one user."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class HttpFiles:
    """What the HTTP server serves and what it received."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body for GET
    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    # Answer this status to the next n requests (a server that is down, then up).
    fail_next: int = 0
    fail_status: int = 503
    put_allowed: bool = True  # False: PUT answers 405 Method Not Allowed
    requests: int = 0
    port: int = 0

    def url(self, path: str, userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}{path}"


@contextmanager
def http_server() -> Iterator[HttpFiles]:
    state = HttpFiles()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _fail(self) -> bool:
            state.requests += 1
            if state.fail_next > 0:
                state.fail_next -= 1
                self.send_error(state.fail_status)
                return True
            return False

        def do_GET(self) -> None:
            if self._fail():
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _receive(self) -> None:
            if self._fail():
                return
            if self.command == "PUT" and not state.put_allowed:
                self.send_error(405)
                return
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.received.append((self.command, self.path, dict(self.headers), body))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = _receive
        do_POST = _receive

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class FtpRoot:
    root: Path
    port: int
    user: str
    password: str

    def url(self, path: str) -> str:
        return f"ftp://{self.user}:{self.password}@127.0.0.1:{self.port}{path}"


@contextmanager
def serving_ftp(server: Any) -> Iterator[None]:
    """A pyftpdlib server run in a thread until the block ends, and closed in that thread.
    close_all() from another thread closed the poller under serve_forever's poll (EBADF in
    the server's thread: PytestUnhandledThreadExceptionWarning, seen in the 20-run loop)."""
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.ioloop.loop(timeout=0.05, blocking=False)  # one poll round
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name="ftp-server", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@contextmanager
def ftp_server(root: Path, user: str = "cs", password: str = "s3cret-ftp") -> Iterator[FtpRoot]:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmw")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "passive_ports": None})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    with serving_ftp(server):
        yield FtpRoot(root, port, user, password)
