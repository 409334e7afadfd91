"""An explicit-FTPS server on loopback for the transfer tests: pyftpdlib's TLS handler
(pyOpenSSL, test extra) with a certificate made here, signed by a throw-away CA.

`Certificates.ca` is the file a client must trust (the tests point ``SSL_CERT_FILE`` at it,
as an operator would for a private CA). The server certificate is for 127.0.0.1 and
localhost, with the extensions a strict verifier (Python 3.13's default context) wants.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.file_servers import FtpRoot, serving_ftp


@dataclass(frozen=True)
class Certificates:
    ca: Path  # PEM, the CA to trust
    cert: Path  # PEM, the server's certificate
    key: Path  # PEM, the server's private key


def make_certificates(
    directory: Path, *, name: str = "evsed-test", loopback: bool = True
) -> Certificates:
    """A CA and a server certificate signed by it; with ``loopback`` false the server
    certificate names only cs.example (a host name mismatch on 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[Any] = (
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        if loopback
        else [x509.DNSName("cs.example")]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0].value))]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    files = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(leaf.public_bytes(pem))
    files.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@dataclass
class FtpsRoot(FtpRoot):
    certificates: Certificates | None = None

    def url(self, path: str) -> str:
        return f"ftps://{self.user}:{self.password}@127.0.0.1:{self.port}{path}"


@contextmanager
def ftps_server(
    root: Path,
    certificates: Certificates,
    user: str = "cs",
    password: str = "s3cret-ftps",
) -> Iterator[FtpsRoot]:
    """pyftpdlib's TLS_FTPHandler requiring TLS on the control and the data connections: a
    client that does not switch to TLS (or does not protect the data) is refused."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmw")
    handler = type(
        "Handler",
        (TLS_FTPHandler,),
        {
            "authorizer": authorizer,
            "passive_ports": None,
            "certfile": str(certificates.cert),
            "keyfile": str(certificates.key),
            "tls_control_required": True,
            "tls_data_required": True,
        },
    )
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    with serving_ftp(server):
        yield FtpsRoot(root, port, user, password, certificates)
