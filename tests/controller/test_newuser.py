"""What a newcomer following the README tripped on (issue 13's new-user trial)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller import cli


@pytest.mark.parametrize("kind", ["below a file", "a plain file"])
def test_status_where_no_socket_can_be_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # A state_dir written wrong (here: under a file) or a --socket naming something else
    # gave `evsed status` (and the running-service probe of `selftest`) a NotADirectoryError
    # or ConnectionRefused traceback instead of "evsed is not running".
    plain = tmp_path / "plain"
    plain.write_text("")
    socket = plain / "status.sock" if kind == "below a file" else plain
    assert cli.main(["status", "--socket", str(socket)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evsed status: ")
