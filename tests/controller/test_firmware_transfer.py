"""Bounded downloads and uploads against real servers on loopback: http.server in a thread
and pyftpdlib."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from evsed.controller.firmware.transfer import Limits, TransferFailed, download, upload
from evsed.controller.firmware.urls import UrlRejected
from tests.support.file_servers import ftp_server, http_server

BODY = bytes(range(256)) * 1000  # 256 kB


def test_http_download_lands_complete_under_its_name(tmp_path: Path) -> None:
    with http_server() as srv:
        srv.files["/fw/evsed-2.0.whl"] = BODY
        size = download(srv.url("/fw/evsed-2.0.whl"), tmp_path / "evsed-2.0.whl")
    assert size == len(BODY)
    assert (tmp_path / "evsed-2.0.whl").read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["evsed-2.0.whl"]  # no .part left


def test_http_basic_auth_from_the_url_and_no_password_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with http_server() as srv, caplog.at_level(logging.DEBUG):
        srv.files["/f"] = b"x"
        upload_src = tmp_path / "a.tar.gz"
        upload_src.write_bytes(b"archive")
        upload(upload_src, srv.url("/up/", "diag:pw-9876"), method="PUT")
    method, path, headers, body = srv.received[0]
    assert (method, path, body) == ("PUT", "/up/a.tar.gz", b"archive")
    assert headers["Authorization"].startswith("Basic ")
    assert "pw-9876" not in caplog.text


def test_size_bound_stops_the_download_and_leaves_nothing(tmp_path: Path) -> None:
    with http_server() as srv:
        srv.files["/big"] = BODY
        with pytest.raises(TransferFailed, match="limit"):
            download(srv.url("/big"), tmp_path / "big", limits=Limits(max_bytes=1000))
    assert list(tmp_path.iterdir()) == []


def test_time_bound_stops_the_download(tmp_path: Path) -> None:
    ticks = itertools.count(step=10.0)  # each look at the clock: 10 s later
    with http_server() as srv:
        srv.files["/slow"] = BODY
        with pytest.raises(TransferFailed, match="longer than"):
            download(
                srv.url("/slow"),
                tmp_path / "slow",
                limits=Limits(timeout_s=25.0),
                monotonic=lambda: next(ticks),
            )
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_failure_naming_the_status(tmp_path: Path) -> None:
    with http_server() as srv:
        with pytest.raises(TransferFailed, match="404"):
            download(srv.url("/missing", "u:hidden-pw"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_local_files_are_refused_before_anything_opens(tmp_path: Path) -> None:
    secret = tmp_path / "evsed.db"
    secret.write_text("AuthorizationKey")
    for location in (f"file://{secret}", str(secret)):
        with pytest.raises(UrlRejected):
            download(location, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ftp_download_and_upload(tmp_path: Path) -> None:
    root = tmp_path / "ftp"
    (root / "fw").mkdir(parents=True)
    (root / "fw" / "evsed-2.0.whl").write_bytes(BODY)
    (root / "in").mkdir()
    src = tmp_path / "diag.tar.gz"
    src.write_bytes(b"diagnostics")
    with ftp_server(root) as ftp:
        assert download(ftp.url("/fw/evsed-2.0.whl"), tmp_path / "got.whl") == len(BODY)
        upload(src, ftp.url("/in/"))
        with pytest.raises(TransferFailed) as e:
            download(ftp.url("/fw/none.whl"), tmp_path / "none.whl")
    assert (tmp_path / "got.whl").read_bytes() == BODY
    assert (root / "in" / "diag.tar.gz").read_bytes() == b"diagnostics"
    assert ftp.password not in str(e.value)


def test_ftp_size_bound(tmp_path: Path) -> None:
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "big.whl").write_bytes(BODY)
    with ftp_server(root) as ftp, pytest.raises(TransferFailed, match="limit"):
        download(ftp.url("/big.whl"), tmp_path / "big.whl", limits=Limits(max_bytes=10_000))
    assert not (tmp_path / "big.whl").exists()


def test_http_post_is_a_form_upload(tmp_path: Path) -> None:
    src = tmp_path / "diag.zip"
    src.write_bytes(b"PK-data")
    with http_server() as srv:
        upload(src, srv.url("/diag"), method="POST")
    method, _path, headers, body = srv.received[0]
    assert method == "POST" and headers["Content-Type"].startswith("multipart/form-data")
    assert b'filename="diag.zip"' in body and b"PK-data" in body
