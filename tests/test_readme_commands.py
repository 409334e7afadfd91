"""The README's command table against `evsed --help`: every subcommand and every option a
newcomer can type is in it (the new-user trial of issue 13 found install's and status's
options missing)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from evsed.controller import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Commands")
    return text[start : text.index("\n## ", start + 1)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name, sub in _subparsers(cli._parser()).items():
        nested = _subparsers(sub)
        for inner, leaf in nested.items() or [("", sub)]:
            out[f"{name} {inner}".strip()] = leaf
    return out


def test_every_subcommand_has_a_row() -> None:
    rows = [line for line in _commands_section().splitlines() if line.startswith("| `evsed ")]
    named = {m for row in rows for m in re.findall(r"`evsed ([a-z-]+(?: check)?)", row)}
    assert set(_leaves()) <= named, set(_leaves()) - named


def test_every_option_is_in_its_row() -> None:
    rows = [line for line in _commands_section().splitlines() if line.startswith("| `evsed ")]
    for command, parser in _leaves().items():
        mine = " ".join(r for r in rows if f"`evsed {command}" in r)
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in mine, f"evsed {command} {flag}"
