"""Connecting to Central Systems nobody here wrote: URL templates, TLS without Basic auth,
and a message saying what happened when a server refuses (HTTP errors, no ocpp1.6)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.controller.ocpp16 import link
from tests.support.session_rig import make_context

CP = "CP/1 A"  # a slash and a space: the id is one path segment, quoted


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("ws://h:9000/ocpp", "ws://h:9000/ocpp/CP%2F1%20A"),
        ("ws://h:9000/ocpp/", "ws://h:9000/ocpp/CP%2F1%20A"),
        ("ws://h/ws/{charge_point_id}/", "ws://h/ws/CP%2F1%20A/"),
        ("ws://h/ocpp?token=abc&x=1", "ws://h/ocpp/CP%2F1%20A?token=abc&x=1"),
        ("ws://h/{charge_point_id}?tenant=7", "ws://h/CP%2F1%20A?tenant=7"),
        ("ws://h/ocpp?cp={charge_point_id}", "ws://h/ocpp?cp=CP%2F1%20A"),
    ],
)
def test_url_template(template: str, expected: str) -> None:
    assert link.central_system_url(template, CP) == expected


def test_url_template_rejects_other_placeholders() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        CentralSystemConfig(url="ws://h/{id}")


def test_tls_without_auth_is_an_explicit_choice(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="tls_without_auth"):
        CentralSystemConfig(url="wss://cs.example/ocpp")
    cfg = CentralSystemConfig(url="wss://cs.example/ocpp", tls_without_auth=True)
    settings = link.connect_settings(cfg, make_context(tmp_path, cfg).keys)
    assert settings.url == "wss://cs.example/ocpp/CP-SIM-1"
    assert settings.headers == {} and settings.password == ""
    assert settings.ssl is not None and settings.ssl.check_hostname
    with pytest.raises(ValidationError, match="tls_without_auth"):
        CentralSystemConfig(url="ws://cs.example/ocpp", tls_without_auth=True)


@asynccontextmanager
async def misbehaving(
    process_request: Callable[[ServerConnection, Request], Response | None] | None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    def select(_ws: ServerConnection, _offered: Any) -> None:
        return None  # picks no subprotocol

    kwargs: dict[str, Any] = {"process_request": process_request}
    if subprotocols is None:
        kwargs["select_subprotocol"] = select
    else:
        kwargs["subprotocols"] = subprotocols
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp"


def http_error(status: int) -> Callable[[ServerConnection, Request], Response]:
    def answer(_ws: ServerConnection, _request: Request) -> Response:
        phrase = HTTPStatus(status).phrase
        return Response(status, phrase, Headers([("Content-Length", "0")]), b"")

    return answer


async def _attempt(tmp_path: Path, url: str, **cs: Any) -> tuple[Any, list[tuple[str, Any]]]:
    cfg = CentralSystemConfig(url=url, charge_point_id="CP-1", **cs)
    ctx = make_context(tmp_path, cfg)
    events: list[tuple[str, Any]] = []
    ctx.observers.append(lambda e, f: events.append((e, f)))
    result = await link.open_connection(
        ctx, open_timeout=5, close_timeout=1, ping_interval=None, ping_timeout=None
    )
    return result, events


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "the server wants a password"),
        (403, "does not accept this charge point id"),
        (404, "no OCPP endpoint at this path"),
        (500, "some want a trailing slash after the id"),
    ],
)
async def test_http_error_says_what_happened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, says: str
) -> None:
    caplog.set_level(logging.WARNING)
    async with misbehaving(http_error(status), subprotocols=["ocpp1.6"]) as url:
        result, events = await _attempt(tmp_path, url)
    assert result is None
    assert events == [("connect_failed", {"url": f"{url}/CP-1", "http_status": status})]
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("evsed")]
    assert f"HTTP {status} {HTTPStatus(status).phrase}" in line and says in line


async def test_wrong_password_is_told_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with misbehaving(http_error(401), subprotocols=["ocpp1.6"]) as url:
        await _attempt(tmp_path, url, security_profile=1, authorization_key="k" * 16)
    assert any("refused the password" in r.getMessage() for r in caplog.records)
    assert not any("k" * 16 in r.getMessage() for r in caplog.records)


async def test_server_refusing_the_subprotocol(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with misbehaving(None) as url:
        result, events = await _attempt(tmp_path, url)
    assert result is None
    assert events[-1] == ("connect_failed", {"url": f"{url}/CP-1", "error": "subprotocol"})
    assert any(
        "did not accept the websocket subprotocol ocpp1.6" in r.getMessage() for r in caplog.records
    )


async def test_trailing_slash_template_reaches_a_picky_server(tmp_path: Path) -> None:
    paths: list[str] = []

    def only_with_slash(_ws: ServerConnection, request: Request) -> Response | None:
        paths.append(request.path)
        return None if request.path.endswith("/CP-1/") else http_error(500)(_ws, request)

    async with misbehaving(only_with_slash, subprotocols=["ocpp1.6"]) as url:
        refused, _ = await _attempt(tmp_path, url)
        assert refused is None
        opened, _ = await _attempt(tmp_path, url + "/{charge_point_id}/")
    assert opened is not None
    ws, _settings = opened
    await link.close_connection(ws, 1)
    assert paths == ["/ocpp/CP-1", "/ocpp/CP-1/"]


def test_backoff_stays_bounded_after_refusals() -> None:
    backoff = link.Backoff(initial_s=1, max_s=30, rng=lambda: 1.0)
    waits = [backoff.next() for _ in range(20)]
    assert max(waits) <= 30 and waits[-1] == 30
