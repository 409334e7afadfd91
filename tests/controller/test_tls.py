"""Key material: loaded once at start-up, an encrypted key refused without a prompt.

The keys are made with the `openssl` command line. The no-prompt tests run the command on
a pseudo-terminal that is its controlling terminal (where OpenSSL would ask), and a
control case shows that the same harness does see OpenSSL's prompt when no password
callback is given.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import ssl
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from evsed.controller import cli, config, tls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

PASSWORD = "s3cret-phrase"


@pytest.fixture(autouse=True)
def _mock_gpio(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files without [bench] need GPIO, which this machine may not have: gpiozero's mock pins
    # stand in (the check for real pins has its own test in test_preflight.py).
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


def make_cert(tmp_path: Path, name: str, password: str | None) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    secret = ["-passout", f"pass:{password}"] if password else ["-nodes"]
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    files = ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=cp"]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, *files, *secret],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def encrypted(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path, "enc", PASSWORD)


def profile3(tmp_path: Path, cert: Path, key: Path, password: str | None = None) -> Path:
    lines = [
        f'state_dir = "{tmp_path / "state"}"',
        "[central_system]",
        'url = "wss://127.0.0.1:1/ocpp"',
        "security_profile = 3",
        f'ca_file = "{cert}"',
        f'client_cert = "{cert}"',
        f'client_key = "{key}"',
    ]
    if password is not None:
        lines.append(f'client_key_password = "{password}"')
    path = tmp_path / "evsed.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def on_a_terminal(argv: list[str], timeout_s: float = 60.0) -> tuple[int | None, str]:
    """Run argv with a pty as stdin/stdout/stderr *and* controlling terminal (OpenSSL's
    prompt opens /dev/tty). Returns (exit status or None if it had to be killed, output)."""
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout_s
    os.set_blocking(master, False)
    with selectors.DefaultSelector() as sel:
        sel.register(master, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if b"pass phrase" in out.lower():
                break  # prompting: it waits for a human; no need to wait out the deadline
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                if proc.poll() is not None or proc.wait(timeout=10) is not None:
                    break
            out += chunk
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait(timeout=10)
    os.close(master)
    return code, out.decode(errors="replace")


def test_harness_sees_an_openssl_prompt(encrypted) -> None:
    # Control: no password callback -> OpenSSL asks on the terminal and waits.
    cert, key = encrypted
    code, out = on_a_terminal(
        [
            sys.executable,
            "-c",
            "import ssl; ssl.create_default_context()"
            f".load_cert_chain({str(cert)!r}, {str(key)!r})",
        ],
        timeout_s=30,
    )
    assert code is None, out  # still waiting for a passphrase
    assert "pass phrase" in out.lower()


@pytest.mark.parametrize("command", [["config", "check"], ["run", "--config"]])
def test_encrypted_key_without_password_is_refused_without_prompt(
    tmp_path, encrypted, command
) -> None:
    cert, key = encrypted
    path = profile3(tmp_path, cert, key)
    code, out = on_a_terminal([sys.executable, "-m", "evsed.controller.cli", *command, str(path)])
    assert "pass phrase" not in out.lower(), out
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [
        f"{path}: central_system.client_key: the key is encrypted: give its passphrase as "
        "central_system.client_key_password, or use an unencrypted key "
        f"(given: '{key}')"
    ], out
    assert not (tmp_path / "state").exists()  # `run` stopped before it built anything


def test_encrypted_key_with_password_loads(tmp_path, encrypted, capsys) -> None:
    cert, key = encrypted
    path = profile3(tmp_path, cert, key, PASSWORD)
    assert cli.main(["config", "check", str(path)]) == 0
    assert PASSWORD not in capsys.readouterr().out
    cs = config.load(path).central_system
    prepared = tls.prepare(cs)
    assert prepared.mutual is not None
    assert prepared.mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    # Loaded once: the session's call gets the very same contexts, reading no file.
    key.unlink()
    assert tls.client_context(cs, 3) is prepared.mutual
    assert tls.client_context(cs, 2) is prepared.server_only


def test_wrong_password_is_named(tmp_path, encrypted, capsys) -> None:
    cert, key = encrypted
    path = profile3(tmp_path, cert, key, "not-the-phrase")
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "central_system.client_key: client_key_password does not decrypt this key" in err
    assert "not-the-phrase" not in err


def test_unencrypted_key_loads_and_mismatched_key_is_named(tmp_path, capsys) -> None:
    cert, key = make_cert(tmp_path, "plain", None)
    assert cli.main(["config", "check", str(profile3(tmp_path, cert, key))]) == 0
    other_cert, _ = make_cert(tmp_path, "other", None)
    path = profile3(tmp_path, other_cert, key)
    with pytest.raises(SystemExit):
        cli.main(["config", "check", str(path)])
    assert "central_system.client_key: the key does not belong to client_cert" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("missing", ["ca_file", "client_cert", "client_key"])
def test_missing_tls_file_names_key_and_file(tmp_path, capsys, missing) -> None:
    cert, key = make_cert(tmp_path, "plain", None)
    path = profile3(tmp_path, cert, key)
    gone = tmp_path / "gone.pem"
    text = path.read_text()
    for name, value in (("ca_file", cert), ("client_cert", cert), ("client_key", key)):
        if name == missing:
            text = text.replace(f'{name} = "{value}"', f'{name} = "{gone}"')
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}: central_system.{missing}: no such file (given: '{gone}')"]


def test_ca_file_that_is_not_pem_is_named(tmp_path, capsys) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    path = tmp_path / "evsed.toml"
    path.write_text(
        '[central_system]\nurl = "wss://127.0.0.1/ocpp"\nsecurity_profile = 2\n'
        f'authorization_key = "{"k" * 16}"\nca_file = "{bad}"\n'
    )
    with pytest.raises(SystemExit):
        cli.main(["config", "check", str(path)])
    err = capsys.readouterr().err
    assert f"{path}: central_system.ca_file: not PEM CA certificates" in err
    assert f"(given: '{bad}')" in err


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _signed(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
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


async def test_session_uses_the_prepared_context_of_an_encrypted_key(tmp_path: Path) -> None:
    from evsed.controller.ocpp16.link import client_ssl_context
    from evsed.hwmocks.central_system import CentralSystem
    from tests.support.session_rig import CP, rig

    ca_cert, ca_key = make_cert(tmp_path, "ca", None)
    ca = (ca_key, ca_cert)
    server_key, server_cert = _signed(tmp_path, "server", ca, "subjectAltName=IP:127.0.0.1")
    plain_key, client_cert = _signed(tmp_path, CP, ca, "extendedKeyUsage=clientAuth")
    client_key = tmp_path / "client-enc.key"
    _openssl(
        "pkey", "-in", str(plain_key), "-out", str(client_key), "-aes256",
        "-passout", f"pass:{PASSWORD}",
    )  # fmt: skip
    plain_key.unlink()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_cert, server_key)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=str(ca_cert))
    async with CentralSystem(ssl_context=server) as cs:
        cfg = config.CentralSystem(
            url=cs.url,
            charge_point_id=CP,
            security_profile=3,
            ca_file=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            client_key_password=PASSWORD,
        )
        prepared = tls.prepare(cfg)  # what `evsed run` does before its loop starts
        client_key.unlink()  # from now on no key file can be read: only the prepared context
        assert client_ssl_context(cfg, 3) is prepared.mutual
        async with rig(tmp_path, cs, cs_config=cfg) as r:
            await r.session.wait_online(5)
            assert cs.handshakes[-1].status == 101
