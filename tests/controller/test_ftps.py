"""ftps (explicit FTPS, RFC 4217) for UpdateFirmware and GetDiagnostics: the standard
library's ftplib.FTP_TLS against pyftpdlib's TLS handler on loopback, with a certificate made
by the test; TLS on the control connection before the credentials, PROT P on the data, the
certificate checked, and never a fall back to plain ftp."""

from __future__ import annotations

import asyncio
import ftplib
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.transfer import TransferFailed, download, upload
from evsed.controller.firmware.urls import check_url
from evsed.hwmocks.central_system import CentralSystem
from tests.support.file_servers import FtpRoot, serving_ftp
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
    with serving_ftp(server):
        yield FtpRoot(root, port, "cs", "plain-secret"), seen


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

    async def install(self, package: Path, may_switch: Any = None) -> bool:
        self.installed.append(await asyncio.to_thread(package.read_bytes))
        return True

    def awaiting_confirmation(self) -> bool:
        return False

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


# -- vsftpd, the most common FTPS server, where the machine has it -----------------------------

VSFTPD = Path("/usr/sbin/vsftpd")


@pytest.fixture
def vsftpd(trusted: Certificates) -> Iterator[tuple[int, Path]]:
    """vsftpd in inetd mode (one process per control connection, the accepted socket as its
    stdin: nothing to wait for), anonymous over TLS only, with its default
    require_ssl_reuse=YES. Its anonymous user must reach the files: a 0755 directory."""
    if not VSFTPD.exists() or os.geteuid() != 0:
        pytest.skip("vsftpd is not installed (or not root to run it)")
    base = Path(tempfile.mkdtemp(prefix="evsed-vsftpd-"))
    base.chmod(0o755)
    anon, empty = base / "anon", base / "empty"
    (anon / "pub").mkdir(parents=True)
    empty.mkdir()
    (anon / "pub" / "fw.bin").write_bytes(BODY)
    anon.chmod(0o555)  # vsftpd refuses a writable anonymous root
    (anon / "pub").chmod(0o777)
    conf = base / "vsftpd.conf"
    conf.write_text(
        "\n".join(
            [
                "listen=NO",
                "anonymous_enable=YES",
                f"anon_root={anon}",
                "no_anon_password=YES",
                "write_enable=YES",
                "anon_upload_enable=YES",
                "local_enable=NO",
                "ssl_enable=YES",
                "allow_anon_ssl=YES",
                "force_anon_logins_ssl=YES",
                "force_anon_data_ssl=YES",
                "require_ssl_reuse=YES",
                f"rsa_cert_file={trusted.cert}",
                f"rsa_private_key_file={trusted.key}",
                f"secure_chroot_dir={empty}",
                "seccomp_sandbox=NO",
                "",
            ]
        )
    )
    listener = socket.create_server(("127.0.0.1", 0))
    servers: list[subprocess.Popen[bytes]] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                servers.append(
                    subprocess.Popen(
                        [str(VSFTPD), str(conf)],
                        stdin=conn.fileno(),
                        stdout=conn.fileno(),
                        stderr=subprocess.DEVNULL,
                    )
                )

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], anon / "pub"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        listener.close()
        thread.join(5)
        for server in servers:
            if server.poll() is None:
                server.kill()
            server.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def test_vsftpd_which_requires_tls_session_reuse(vsftpd: tuple[int, Path], tmp_path: Path) -> None:
    port, pub = vsftpd
    assert download(f"ftps://anonymous@127.0.0.1:{port}/pub/fw.bin", tmp_path / "fw.bin") == len(
        BODY
    )
    assert (tmp_path / "fw.bin").read_bytes() == BODY
    src = tmp_path / "diag.tar.gz"
    src.write_bytes(BODY[::-1])
    upload(src, f"ftps://anonymous@127.0.0.1:{port}/pub/")
    assert (pub / "diag.tar.gz").read_bytes() == BODY[::-1]
    # Why the data connections resume the session: the standard library's FTP_TLS alone
    # is refused there.
    plain = ftplib.FTP_TLS(context=ssl.create_default_context(), timeout=10)
    plain.connect("127.0.0.1", port)
    try:
        plain.login("anonymous", "")
        plain.prot_p()
        with pytest.raises(ftplib.error_perm, match="522"):
            plain.retrbinary("RETR pub/fw.bin", lambda _: None)
    finally:
        plain.close()
