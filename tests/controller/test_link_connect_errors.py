"""A Central System that cannot be reached is said in words, with what to check, in the
log and in `evsed status`: a new user read "ConnectionRefusedError: [Errno 111] Connect
call failed ('127.0.0.1', 9000)" at every retry and "last error: ConnectionRefusedError"."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidMessage

from evsed.controller import status
from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.config import Config
from evsed.controller.ocpp16 import link
from tests.support.clock import FakeClock
from tests.support.session_rig import make_context


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


async def test_nothing_listening_is_said_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = _closed_port()
    cfg = CentralSystemConfig(url=f"ws://127.0.0.1:{port}/ocpp", charge_point_id="CP-1")
    ctx = make_context(tmp_path, cfg)
    events: list[tuple[str, Any]] = []
    ctx.observers.append(lambda e, f: events.append((e, f)))
    result = await link.open_connection(
        ctx, open_timeout=5, close_timeout=1, ping_interval=None, ping_timeout=None
    )
    assert result is None
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("evsed")]
    assert line == (
        f"session: cannot connect to ws://127.0.0.1:{port}/ocpp/CP-1: connection refused: "
        f"nothing listens on 127.0.0.1:{port}: is the Central System running, and are the "
        "url's host and port right?"
    )
    assert "Errno" not in line and "ConnectionRefusedError" not in line
    ((name, fields),) = events
    assert name == "connect_failed" and fields["error"] == "ConnectionRefusedError"
    # `evsed status` shows the reason, not the exception's class name.
    tracker = status.LinkTracker(Config(central_system=cfg), FakeClock())
    tracker.observe(name, fields)
    assert tracker.last_error == f"connection refused: nothing listens on 127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (socket.gaierror(-2, "Name or service not known"), "the host name cs.example is not known"),
        (TimeoutError(), "no answer from cs.example:9000 within 10 s"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "cs.example:9000 cannot be reached"),
        (
            ConnectionResetError(errno.ECONNRESET, "reset by peer"),
            "the connection to cs.example:9000",
        ),
        (ssl.SSLError(1, "wrong version number"), "the TLS handshake failed"),
        (InvalidMessage("did not receive a valid HTTP response"), "cs.example:9000 did not"),
    ],
)
def test_each_connect_error_has_words_and_a_hint(error: BaseException, says: str) -> None:
    reason, hint = link.connect_failure(error, "ws://cs.example:9000/ocpp/CP-1", 10)
    assert reason.startswith(says), reason
    assert hint.startswith(": ") and "Errno" not in reason


def test_an_untrusted_certificate_names_ca_file() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    reason, hint = link.connect_failure(error, "wss://cs.example/ocpp/CP-1", 10)
    assert reason == "the server's TLS certificate is not trusted (self-signed certificate)"
    assert "ca_file" in hint
