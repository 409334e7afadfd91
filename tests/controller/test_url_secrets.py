"""Secrets inside URLs never reach a log line, a frame event or the diagnostics archive: the
userinfo up to the LAST "@" (as urlsplit, and so the transfer, reads it), a user name that
stands alone (a token), every query value (a presigned URL's signature); and while a
transfer runs, its secrets are masked in any text, URL or not."""

from __future__ import annotations

import io
import logging
import tarfile
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.transfer import download
from evsed.controller.firmware.urls import check_url, redact_url
from evsed.controller.masking import SECRETS
from evsed.controller.ocpp16.redaction import FILTER, redact
from evsed.hwmocks.central_system import CentralSystem
from tests.support.file_servers import ftp_server, http_server
from tests.support.ocpp_stack import CARD, ocpp_rig
from tests.support.status_frames import wait_status

AT_PASSWORD = "top@SECRETTAIL"  # an unencoded "@": servers and clients take it as written

PRINTED = [
    (
        "ftp://cs:top@SECRETTAIL@127.0.0.1:2121/evsed-9.9.9.tar.gz",
        "ftp://cs:***@127.0.0.1:2121/evsed-9.9.9.tar.gz",
    ),
    ("https://ghp_TOKEN4711@cs.example/fw.whl", "https://***@cs.example/fw.whl"),
    (
        "https://b.s3.example/d.tar.gz?X-Amz-Credential=AKIAEXAMPLE%2F20261203"
        "&X-Amz-Signature=deadbeef99&X-Amz-Expires=3600",
        "https://b.s3.example/d.tar.gz?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=***",
    ),
    (
        "https://h.example/up?token=abc123;raw#access_token=xyz",
        "https://h.example/up?token=***;***#access_token=***",
    ),
    ("ftp://us%40er:p%40ss@h.example/x", "ftp://us%40er:***@h.example/x"),
    ("HTTPS://me@corp:pw@h.example:8443", "HTTPS://me@corp:***@h.example:8443"),
    ("http://h.example/fw.whl", "http://h.example/fw.whl"),
]


@pytest.mark.parametrize(("url", "shown"), PRINTED)
def test_a_url_prints_without_its_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    # Inside a log line, an "@" after the URL is not the URL's business.
    line = f"downloaded {url} (12 bytes) to /var/lib/evsed/a@b"
    assert redact_url(line) == line.replace(url, shown)
    # Inside the frame the session logs as it arrives.
    frame = f'[2,"1","UpdateFirmware",{{"location":"{url}","retrieveDate":"2026-12-03T10:00:00Z"}}]'
    assert redact(frame) == frame.replace(url, shown)


def test_a_json_escaped_url_is_masked_too() -> None:
    # "\/" is a legal JSON spelling of "/", and a Central System may use it.
    frame = r'{"location":"ftp:\/\/cs:top@SECRETTAIL@h\/x?token=abc\/def","retries":1}'
    assert redact(frame) == r'{"location":"ftp:\/\/cs:***@h\/x?token=***","retries":1}'


def test_the_secrets_a_url_names() -> None:
    assert set(check_url("ftp://cs:top@SECRETTAIL@h/x").secrets) == {AT_PASSWORD}
    assert check_url("https://ghp_TOKEN4711@h/x").secrets == ("ghp_TOKEN4711",)
    presigned = check_url(
        "https://h/d?X-Amz-Signature=dead%2Fbeef&X-Amz-Expires=3600&X-Amz-Security-Token=tok"
    )
    # Decoded and as written: a log line may quote either.
    assert set(presigned.secrets) == {"dead%2Fbeef", "dead/beef", "tok"}
    assert check_url("ftp://user:@h/x").secrets == ()


def test_a_text_mask_costs_one_pass() -> None:
    # A long run of scheme characters and many "@": a frame of a megabyte must stay one
    # pass of the rule, not one per position (pytest's timeout would catch the quadratic).
    text = "a" * 300_000 + "://u:pw-1@h/ ok@x"
    assert redact(text) == "a" * 300_000 + "://u:***@h/ ok@x"


class _Installer:
    """Installs at once, no restart (the venv installer has its own tests)."""

    async def install(self, package: Path) -> bool:
        return True

    def outcome_after_restart(self) -> bool:
        return False

    def forget(self) -> None:
        pass


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def _members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


class _Peek(BaseHTTPRequestHandler):
    """Serves one file; while it does, notes what the log redaction holds and logs the
    password alone (no URL around it) through a filtered logger."""

    seen: list[tuple[str, ...]] = []
    logger = logging.getLogger("evsed.test.url_secrets")

    def do_GET(self) -> None:
        type(self).seen.append(FILTER.secrets)
        self.logger.warning("server saw the password %s", AT_PASSWORD)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_a_transfer_holds_its_secrets_while_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _Peek.seen = []
    _Peek.logger.addFilter(FILTER)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Peek)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO):
            url = f"http://fw:{AT_PASSWORD}@127.0.0.1:{srv.server_address[1]}/fw.whl"
            assert download(url, tmp_path / "fw.whl") == 2
    finally:
        srv.shutdown()
        srv.server_close()
        _Peek.logger.removeFilter(FILTER)
    assert AT_PASSWORD in _Peek.seen[0]
    assert "SECRETTAIL" not in caplog.text
    assert "server saw the password ***" in caplog.text
    assert AT_PASSWORD not in FILTER.secrets and SECRETS.current() == ()  # let go after


def test_held_secrets_nest_and_short_ones_are_not_held() -> None:
    with SECRETS.holding(["abcd", "ab"]):
        with SECRETS.holding(["abcd", "abcdefgh"]):
            assert SECRETS.current() == ("abcdefgh", "abcd")  # longest first
        assert SECRETS.current() == ("abcd",)
        assert redact("x abcdefgh y", FILTER.secrets) == "x ***efgh y"
    assert SECRETS.current() == ()


async def test_an_at_sign_password_and_a_signed_upload_url_stay_out_of_logs_and_archive(
    cs: CentralSystem,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reviewer's case end to end: UpdateFirmware from ftp://cs:top@SECRETTAIL@..., then
    GetDiagnostics to a presigned URL; the log file in use goes into the archive."""
    log_path = tmp_path / "evsed.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    ftp_root = tmp_path / "ftp"
    ftp_root.mkdir()
    (ftp_root / "evsed-9.9.9.tar.gz").write_bytes(b"PK\x03\x04 not really a package " * 50)
    try:
        with (
            ftp_server(ftp_root, password=AT_PASSWORD) as ftp,
            http_server() as srv,
            caplog.at_level(logging.DEBUG),
        ):
            options = {"firmware_installer": _Installer()}
            async with ocpp_rig(cs, tmp_path / "state", app_options=options) as rig:
                mark = cs.mark()
                now = rig.clock.now().isoformat()
                location = ftp.url("/evsed-9.9.9.tar.gz")
                await rig.command(call.UpdateFirmware(location=location, retrieve_date=now))
                await wait_status(cs, "FirmwareStatusNotification", "Installed", mark)
                mark = cs.mark()
                signed = srv.url("/diag/", "UPLOADTOKEN77") + "?X-Amz-Signature=SIGSECRET99"
                await rig.command(call.GetDiagnostics(location=signed))
                await wait_status(cs, "DiagnosticsStatusNotification", "Uploaded", mark)
    finally:
        root.removeHandler(handler)
        handler.close()
    secrets = ("SECRETTAIL", "UPLOADTOKEN77", "SIGSECRET99")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("evsed")]
    assert [m[:160] for m in ours if any(s in m for s in secrets)] == []
    assert any("ftp://cs:***@127.0.0.1" in m for m in ours)  # masked, not dropped
    members = _members(srv.received[0][3])
    assert "logs/evsed.log" in members
    hits = [
        line[:160]
        for text in members.values()
        for line in text.splitlines()
        if any(s in line for s in secrets)
    ]
    assert hits == []


def test_a_url_spelt_with_json_unicode_escapes_is_masked_too() -> None:
    # The received frame is logged as the CS wrote it; json.loads reads these as / @ ? = &.
    frame = (
        r'[2,"1","UpdateFirmware",{"location":"ftp:\u002F\u002Fcs:top\u0040SECRETTAIL\u0040h'
        r'\u002fx\u003fX-Amz-Signature\u003dSIG99\u0026a\u003d1","retrieveDate":"2026"}]'
    )
    assert redact(frame) == (
        '[2,"1","UpdateFirmware",{"location":"ftp://cs:***@h/x?X-Amz-Signature=***&a=***",'
        '"retrieveDate":"2026"}]'
    )
    # An escaped backslash before "u0040" is a backslash and the letters, not an "@".
    assert redact(r'{"note":"C:\\u0040"}') == r'{"note":"C:\\u0040"}'
