"""`python -m evsed.hwmocks.central_system`'s command line: a status no OCPP 1.6 charger
can receive is refused up front (the trial's `--tag X=blocked` made the first Authorize
fail the CS's own schema, with tracebacks), and a port in use is one line naming it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from ocpp.v16.enums import AuthorizationStatus

from evsed.hwmocks import central_system


@pytest.mark.parametrize("status", ["blocked", "Foo", "", "accepted"])
def test_a_status_outside_the_five_is_an_argparse_error(
    status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        central_system._parser().parse_args(["--tag", f"AABBCCDDEE={status}"])
    assert stop.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line.startswith(f"{central_system.PROG}: error: argument --tag: ")
    assert "Accepted, Blocked, Expired, Invalid, ConcurrentTx" in line
    if status.casefold() in ("blocked", "accepted"):
        assert f"did you mean {status.capitalize()}?" in line


def test_the_five_statuses_and_the_default_are_taken() -> None:
    parser = central_system._parser()
    argv = [arg for s in AuthorizationStatus for arg in ("--tag", f"T{s.value}={s.value}")]
    args = parser.parse_args([*argv, "--tag", "PLAIN"])
    assert dict(args.tag) == {
        **{f"T{s.value}": s.value for s in AuthorizationStatus},
        "PLAIN": "Accepted",
    }


def test_help_names_the_command_and_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        central_system.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m evsed.hwmocks.central_system ")
    assert "(default: 127.0.0.1)" in out and "(default: 9000)" in out


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_port_in_use_is_one_line_naming_it(held_port: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "evsed.hwmocks.central_system", "--port", str(held_port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert f"cannot listen on 127.0.0.1:{held_port}: the port is in use" in line
