"""hw-mocks/README.md says what the Central System's command line offers, no more: a new
user read "sends any CS→CP command" and looked in vain for a way to send one from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evsed.hwmocks import central_system

README = Path(__file__).resolve().parents[2] / "hw-mocks" / "README.md"


def _options(capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit):
        central_system.main(["--help"])
    return set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}


def test_the_readme_names_every_option_of_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = README.read_text(encoding="utf-8")
    options = _options(capsys)
    assert options == {"--host", "--port", "--tag"}  # a new option: document it below
    for option in options:
        assert f"`{option}" in text, option
    # ... the statuses --tag takes, and the command the help names.
    for status in central_system.STATUSES:
        assert f"`{status}`" in text, status
    assert f"{central_system.PROG} --port 9000" in text


def test_the_readme_does_not_promise_commands_from_the_command_line() -> None:
    text = README.read_text(encoding="utf-8")
    (row,) = [line for line in text.splitlines() if line.startswith("| Central System |")]
    assert "command line only answers" in row
    assert "It sends no CS→CP command of its own" in text
