"""GetDiagnostics: the archive holds the logs, the frame trace and the configuration within
the window, and none of the secrets planted in them; uploads to local HTTP (PUT, POST) and
FTP servers; a failed upload is retried and then reported."""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller.diagnostics.collect import Sources, Window, build_archive, line_time
from evsed.controller.trace import FrameTrace
from evsed.hwmocks.central_system import CentralSystem
from tests.support.file_servers import ftp_server, http_server
from tests.support.ocpp_stack import CARD, ocpp_rig
from tests.support.status_frames import statuses, wait_status

DIAG = "DiagnosticsStatusNotification"
AUTH_KEY = "0123456789abcdefAUTHKEY"
URL_PASSWORD = "url-pass-4711"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
CONF_PASSWORD = "client-key-pass-99"

PLANTED = [
    "2026-01-01 00:00:10,000 INFO x: ChangeConfiguration "
    f'{{"key":"AuthorizationKey","value":"{AUTH_KEY}"}}',
    "2026-01-01 00:00:11,000 INFO x: Authorization: Basic Q1AtU0lNLTE6c2VjcmV0",
    f"2026-01-01 00:00:12,000 INFO x: fetching ftp://fw:{URL_PASSWORD}@cs.example/evsed.whl",
    f"2026-01-01 00:00:13,000 ERROR x: key file read\n{PEM}",
    f"2026-01-01 00:00:14,000 INFO x: the key in use is {AUTH_KEY}",
    f"2026-01-01 00:00:15,000 INFO x: passphrase {CONF_PASSWORD}",
]
SECRETS = [
    AUTH_KEY,
    URL_PASSWORD,
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    CONF_PASSWORD,
    "Q1AtU0lNLTE6c2VjcmV0",
]


def _members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def _assert_clean(members: dict[str, str]) -> None:
    everything = "\n".join(members.values())
    for secret in SECRETS:
        assert secret not in everything, secret


def test_archive_keeps_the_window_and_drops_every_secret(tmp_path: Path) -> None:
    log = tmp_path / "evsed.log"
    log.write_text(
        "2025-12-31 23:59:00,000 INFO x: before the window\n"
        + "\n".join(PLANTED)
        + "\n2026-01-01 01:00:00,000 INFO x: after the window\n"
    )
    trace = tmp_path / "trace.log"
    trace.write_text(
        '2026-01-01T00:00:20.000+00:00 cs->cp [2,"1","Reset",{"type":"Soft"}]\n'
        f'2026-01-01T00:00:21.000+00:00 cs->cp [2,"2","UpdateFirmware",'
        f'{{"location":"http://u:{URL_PASSWORD}@h/f"}}]\n'
    )
    dest = tmp_path / "out" / "diag.tar.gz"
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    names = build_archive(
        dest,
        Sources(
            log_files=[log],
            trace_file=trace,
            extra={"config.toml": f'authorization_key = "{AUTH_KEY}"\n'},
        ),
        window,
        secrets=[AUTH_KEY, CONF_PASSWORD],
    )
    members = _members(dest.read_bytes())
    assert set(names) == set(members) == {"logs/evsed.log", "ocpp-trace.log", "config.toml"}
    text = members["logs/evsed.log"]
    assert "before the window" not in text and "after the window" not in text
    assert "Authorization: ***" in text and "[private key removed]" in text
    assert "fw:***@cs.example" in text
    assert '"Reset"' in members["ocpp-trace.log"]
    _assert_clean(members)


def test_journal_time_stamps_parse() -> None:
    assert line_time("2026-12-03T09:01:02+0000 pi evsed[1]: x") == datetime(
        2026, 12, 3, 9, 1, 2, tzinfo=UTC
    )
    assert line_time("   Traceback continuation") is None


# ---------------------------------------------------------------- end to end


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


@pytest.fixture
def planted_log(tmp_path: Path) -> Iterator[Path]:
    """A log file in use by the root logger, already holding secrets."""
    path = tmp_path / "evsed.log"
    path.write_text("\n".join(PLANTED) + "\n")
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def _rig(cs: CentralSystem, tmp_path: Path) -> object:
    central = {"client_key_password": CONF_PASSWORD}
    return ocpp_rig(cs, tmp_path / "state", central_system=central)


async def _plant_key(rig: object) -> None:
    result = await rig.command(  # type: ignore[attr-defined]
        call.ChangeConfiguration(key="AuthorizationKey", value=AUTH_KEY)
    )
    assert result.status == "Accepted"


async def test_upload_by_http_put_names_the_file_and_holds_no_secret(
    cs: CentralSystem, tmp_path: Path, planted_log: Path
) -> None:
    with http_server() as srv:
        async with _rig(cs, tmp_path) as rig:
            await _plant_key(rig)
            trace = FrameTrace(tmp_path / "trace.log", rig.clock)
            rig.ocpp.ctx.observers.append(trace.observe)
            mark = cs.mark()
            result = await rig.command(
                call.GetDiagnostics(location=srv.url("/diag/", f"diag:{URL_PASSWORD}"))
            )
            assert result.file_name.endswith(".tar.gz") and result.file_name.startswith("CP-SIM-1")
            await wait_status(cs, DIAG, "Uploaded", mark)
            trace.close()
    assert statuses(cs, DIAG, mark) == ["Uploading", "Uploaded"]
    method, path, _headers, body = srv.received[0]
    assert (method, path) == ("PUT", f"/diag/{result.file_name}")
    members = _members(body)
    assert {"logs/evsed.log", "config.toml", "configuration-keys.txt"} <= set(members)
    assert "AUTHKEY" not in members["configuration-keys.txt"]
    assert "ocpp-trace.log" in members  # the trace of `evsed run --trace`
    _assert_clean(members)
    assert not list((tmp_path / "state" / "diagnostics").glob("*"))  # the copy is gone


async def test_upload_by_post_when_put_is_not_allowed(
    cs: CentralSystem, tmp_path: Path, planted_log: Path
) -> None:
    with http_server() as srv:
        srv.put_allowed = False
        async with _rig(cs, tmp_path) as rig:
            await _plant_key(rig)
            mark = cs.mark()
            await rig.command(call.GetDiagnostics(location=srv.url("/upload")))
            await wait_status(cs, DIAG, "Uploaded", mark)
    method, _path, headers, body = srv.received[0]
    assert method == "POST" and headers["Content-Type"].startswith("multipart/form-data")
    start = body.index(b"\r\n\r\n") + 4
    _assert_clean(_members(body[start : body.rindex(b"\r\n--")]))


async def test_upload_by_ftp(cs: CentralSystem, tmp_path: Path, planted_log: Path) -> None:
    root = tmp_path / "ftp"
    (root / "in").mkdir(parents=True)
    with ftp_server(root) as ftp:
        async with _rig(cs, tmp_path) as rig:
            await _plant_key(rig)
            mark = cs.mark()
            result = await rig.command(call.GetDiagnostics(location=ftp.url("/in/")))
            await wait_status(cs, DIAG, "Uploaded", mark)
    stored = root / "in" / result.file_name
    _assert_clean(_members(stored.read_bytes()))


async def test_failed_upload_is_retried_then_reported(
    cs: CentralSystem, tmp_path: Path, planted_log: Path
) -> None:
    with http_server() as srv:
        srv.fail_next = 100
        async with _rig(cs, tmp_path) as rig:
            mark = cs.mark()
            await rig.command(
                call.GetDiagnostics(location=srv.url("/d/"), retries=2, retry_interval=30)
            )
            for left in (1, 0):
                await rig.event("diagnostics_retry_wait", lambda e, n=left: e["retries_left"] == n)
                await rig.clock.advance(30)
            await wait_status(cs, DIAG, "UploadFailed", mark)
            assert rig.ocpp.ctx.diagnostics is not None
    assert statuses(cs, DIAG, mark) == ["Uploading"] * 3 + ["UploadFailed"]
    assert srv.requests == 3
