"""ftps (explicit FTPS, RFC 4217) for UpdateFirmware and GetDiagnostics: the standard
library's ftplib.FTP_TLS against pyftpdlib's TLS handler on loopback, with a certificate made
by the test; TLS on the control connection before the credentials, PROT P on the data, the
certificate checked, and never a fall back to plain ftp."""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.transfer import TransferFailed, download, upload
from evsed.controller.firmware.urls import check_url
from evsed.hwmocks.central_system import CentralSystem
from tests.support.file_servers import FtpRoot
from tests.support.ftps_server import Certificates, ftps_server, make_certificates
from tests.support.ocpp_stack import CARD, ocpp_rig
from tests.support.status_frames import statuses, wait_status

BODY = bytes(range(256)) * 1000  # 256 kB, several data packets


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trusted(certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> Certificates:
    """The test CA in the trust store, as SSL_CERT_FILE makes it for the service."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return certificates


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "ftps"
    (served / "fw").mkdir(parents=True)
    (served / "fw" / "evsed-2.0.whl").write_bytes(BODY)
    (served / "in").mkdir()
    return served


def test_ftps_is_an_allowed_scheme() -> None:
    url = check_url("ftps://u:p@cs.example/fw.whl")
    assert (url.scheme, url.port) == ("ftps", None)  # explicit FTPS: port 21 by default


def test_download_and_upload_over_tls(trusted: Certificates, root: Path, tmp_path: Path) -> None:
    src = tmp_path / "diag.tar.gz"
    src.write_bytes(BODY[::-1])
    with ftps_server(root, trusted) as srv:
        assert download(srv.url("/fw/evsed-2.0.whl"), tmp_path / "got.whl") == len(BODY)
        upload(src, srv.url("/in/"))
        with pytest.raises(TransferFailed) as e:
            download(srv.url("/fw/none.whl"), tmp_path / "none.whl")
    assert (tmp_path / "got.whl").read_bytes() == BODY
    assert (root / "in" / "diag.tar.gz").read_bytes() == BODY[::-1]  # complete: close_notify
    assert srv.password not in str(e.value) and "***" in str(e.value)


def test_a_certificate_nobody_trusts_fails_the_transfer(
    certificates: Certificates, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    with ftps_server(root, certificates) as srv, pytest.raises(TransferFailed) as e:
        download(srv.url("/fw/evsed-2.0.whl"), tmp_path / "got.whl")
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    assert srv.password not in str(e.value)
    assert not (tmp_path / "got.whl").exists()


def test_a_host_name_the_certificate_does_not_name_fails(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_certificates(tmp_path, loopback=False)  # trusted, but for cs.example
    monkeypatch.setenv("SSL_CERT_FILE", str(other.ca))
    with ftps_server(root, other) as srv, pytest.raises(TransferFailed, match="VERIFY"):
        download(srv.url("/fw/evsed-2.0.whl"), tmp_path / "got.whl")


@pytest.fixture
def plain_server(root: Path) -> Iterator[tuple[FtpRoot, list[str]]]:
    """A plain-FTP server (no TLS at all) that records every command it receives."""
    import threading

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    seen: list[str] = []
    authorizer = DummyAuthorizer()
    authorizer.add_user("cs", "plain-secret", str(root), perm="elradfmw")

    class Recording(FTPHandler):
        def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
            seen.append(cmd)
            super().pre_process_command(line, cmd, arg)

    handler = type("Handler", (Recording,), {"authorizer": authorizer, "passive_ports": None})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"timeout": 0.05, "blocking": True}, daemon=True
    )
    thread.start()
    try:
        yield FtpRoot(root, port, "cs", "plain-secret"), seen
    finally:
        server.close_all()
        thread.join(5)


def test_no_fall_back_to_plain_ftp(
    trusted: Certificates, plain_server: tuple[FtpRoot, list[str]], tmp_path: Path
) -> None:
    srv, seen = plain_server
    url = f"ftps://{srv.user}:{srv.password}@127.0.0.1:{srv.port}/fw/evsed-2.0.whl"
    with pytest.raises(TransferFailed) as e:
        download(url, tmp_path / "got.whl")
    assert srv.password not in str(e.value)
    assert seen == ["AUTH"]  # refused: no USER, no PASS ever crossed in clear
    assert not (tmp_path / "got.whl").exists()


# -- end to end with the embedded Central System ----------------------------------------------


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


class Installer:
    """Installs at once, no restart: what matters here is the download."""

    def __init__(self) -> None:
        self.installed: list[bytes] = []

    async def install(self, package: Path) -> bool:
        self.installed.append(await asyncio.to_thread(package.read_bytes))
        return True

    def outcome_after_restart(self) -> bool:
        return False

    def forget(self) -> None:
        pass


def _rig(cs: CentralSystem, state: Path, **kw: Any) -> Any:
    return ocpp_rig(cs, state, keys={"AuthorizeRemoteTxRequests": "false"}, **kw)


async def test_update_firmware_from_an_ftps_server(
    cs: CentralSystem, trusted: Certificates, root: Path, tmp_path: Path
) -> None:
    installer = Installer()
    with ftps_server(root, trusted) as srv:
        async with _rig(
            cs, tmp_path / "state", app_options={"firmware_installer": installer}
        ) as rig:
            got = await rig.command(call.GetConfiguration(key=["SupportedFileTransferProtocols"]))
            assert "FTPS" in got.configuration_key[0]["value"].split(",")
            mark = cs.mark()
            now = rig.clock.now().isoformat()
            await rig.command(
                call.UpdateFirmware(location=srv.url("/fw/evsed-2.0.whl"), retrieve_date=now)
            )
            await wait_status(cs, "FirmwareStatusNotification", "Installed", mark)
            assert statuses(cs, "FirmwareStatusNotification", mark) == [
                "Downloading",
                "Downloaded",
                "Installing",
                "Installed",
            ]
    assert installer.installed == [BODY]


async def test_get_diagnostics_uploads_to_an_ftps_server(
    cs: CentralSystem, trusted: Certificates, root: Path, tmp_path: Path
) -> None:
    with ftps_server(root, trusted) as srv:
        async with _rig(cs, tmp_path / "state") as rig:
            mark = cs.mark()
            result = await rig.command(call.GetDiagnostics(location=srv.url("/in/")))
            await wait_status(cs, "DiagnosticsStatusNotification", "Uploaded", mark)
    assert statuses(cs, "DiagnosticsStatusNotification", mark) == ["Uploading", "Uploaded"]
    stored = root / "in" / result.file_name
    with tarfile.open(fileobj=BytesIO(stored.read_bytes()), mode="r:gz") as archive:
        assert "configuration-keys.txt" in archive.getnames()
