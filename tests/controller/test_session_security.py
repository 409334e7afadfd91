"""Security profiles 1-3 (Security Whitepaper ed. 2 §2) against the embedded CS.

Certificates come from the openssl command: a test CA, a server certificate for 127.0.0.1,
a client certificate, and a second CA that nobody trusts.
"""

from __future__ import annotations

import base64
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from evsed.controller.config import CentralSystem as CentralSystemConfig
from evsed.hwmocks.central_system import CentralSystem
from tests.support.link import cut_and_hold
from tests.support.session_rig import CP, rig

KEY = "0123456789abcdef-secret"  # >= 16 characters, as profiles 1 and 2 require
NEW_KEY = "fedcba9876543210-rotated"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
    )  # fmt: skip
    return key, cert


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
    extfile.write_text(ext + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extfile),
    )  # fmt: skip
    return key, cert


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = _ca(d, "test-ca")
        self.rogue_ca = _ca(d, "rogue-ca")
        self.server = _leaf(d, "server", self.ca, "subjectAltName=IP:127.0.0.1")
        self.client = _leaf(d, CP, self.ca, "extendedKeyUsage=clientAuth")
        self.rogue_client = _leaf(d, "rogue", self.rogue_ca, "extendedKeyUsage=clientAuth")

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server[1], self.server[0])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.ca[1]))
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def basic_cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(passwords={CP: KEY}) as central:
        yield central


def cp_side_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the charge point's side logged (the CS's own logs, websockets.server and
    ocpp's peer, are not ours; the session gives websockets a logger of its own)."""
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("evsed.", "websockets.client"))
    )


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{CP}:{password}".encode()).decode()


async def test_profile1_basic_auth_and_the_key_is_never_logged(
    tmp_path: Path, basic_cs: CentralSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs handshake headers at DEBUG
    cfg = CentralSystemConfig(
        url=basic_cs.url, charge_point_id=CP, security_profile=1, authorization_key=KEY
    )
    async with rig(tmp_path, basic_cs, cs_config=cfg) as r:
        await r.session.wait_online(5)
        assert basic_cs.handshakes[-1].authorization == basic(KEY)
        assert basic_cs.handshakes[-1].status == 101
        # The CS rotates the key (ChangeConfiguration reaches the CP as a logged frame).
        # MiniCP has no handler for it (NotSupported): only the logging matters here.
        with pytest.raises(OCPPError):
            await basic_cs.call(CP, call.ChangeConfiguration(key="AuthorizationKey", value=NEW_KEY))
        r.keys.change("AuthorizationKey", NEW_KEY)  # what the handler does on Accepted
        basic_cs.passwords = {CP: NEW_KEY}
        await cut_and_hold(basic_cs, r)
        basic_cs.refuse_handshakes(False)
        await r.session.wait_online(5)
        assert basic_cs.handshakes[-1].authorization == basic(NEW_KEY)
    logged = cp_side_text(caplog)
    assert "> Authorization: ***" in logged  # the handshake was logged, redacted
    for secret in (KEY, NEW_KEY, basic(KEY).split()[1], basic(NEW_KEY).split()[1]):
        assert secret not in logged
    frames = [f["raw"] for f in r.events.named("frame")]
    assert frames and not any(NEW_KEY in raw for raw in frames)


async def test_profile1_wrong_key_is_refused_and_retried(
    tmp_path: Path, basic_cs: CentralSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-right-key-at-all"
    cfg = CentralSystemConfig(
        url=basic_cs.url, charge_point_id=CP, security_profile=1, authorization_key=wrong
    )
    async with rig(tmp_path, basic_cs, cs_config=cfg) as r:
        await r.events.wait(lambda: len(r.events.named("connect_failed")) >= 3)
        assert {e["http_status"] for e in r.events.named("connect_failed")} == {401}
        assert not r.session.online and basic_cs.boots == []
    assert wrong not in cp_side_text(caplog)
    assert "401" in cp_side_text(caplog)


async def test_profile2_tls_with_basic_auth(tmp_path: Path, pki: Pki) -> None:
    async with CentralSystem(passwords={CP: KEY}, ssl_context=pki.server_context()) as cs:
        cfg = CentralSystemConfig(
            url=cs.url,
            charge_point_id=CP,
            security_profile=2,
            authorization_key=KEY,
            ca_file=pki.ca[1],
        )
        assert cfg.url.startswith("wss://")
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.session.wait_online(5)
            assert cs.handshakes[-1].authorization == basic(KEY)
            settings = r.session.connect_settings()
            assert settings.ssl is not None
            assert settings.ssl.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_profile2_refuses_a_server_it_cannot_verify(tmp_path: Path, pki: Pki) -> None:
    async with CentralSystem(passwords={CP: KEY}, ssl_context=pki.server_context()) as cs:
        cfg = CentralSystemConfig(
            url=cs.url,
            charge_point_id=CP,
            security_profile=2,
            authorization_key=KEY,
            ca_file=pki.rogue_ca[1],
        )
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.events.wait(lambda: len(r.events.named("connect_failed")) >= 2)
            assert {e["error"] for e in r.events.named("connect_failed")} == {
                "SSLCertVerificationError"
            }
            assert not r.session.online
            assert cs.handshakes == []  # the key never left the charge point


async def test_profile3_client_certificate_without_basic_auth(tmp_path: Path, pki: Pki) -> None:
    server = pki.server_context(require_client_cert=True)
    async with CentralSystem(ssl_context=server) as cs:
        cfg = CentralSystemConfig(
            url=cs.url,
            charge_point_id=CP,
            security_profile=3,
            ca_file=pki.ca[1],
            client_cert=pki.client[1],
            client_key=pki.client[0],
        )
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.session.wait_online(5)
            assert cs.handshakes[-1].authorization is None


async def test_profile3_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki
) -> None:
    server = pki.server_context(require_client_cert=True)
    async with CentralSystem(ssl_context=server) as cs:
        cfg = CentralSystemConfig(
            url=cs.url,
            charge_point_id=CP,
            security_profile=3,
            ca_file=pki.ca[1],
            client_cert=pki.rogue_client[1],
            client_key=pki.rogue_client[0],
        )
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.events.wait(lambda: len(r.events.named("connect_failed")) >= 2)
            assert not r.session.online
            assert cs.boots == []
