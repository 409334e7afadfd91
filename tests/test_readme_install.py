"""README step 4 (`evsed install`) as short sub-steps, each with its exact command: a new
user stumbled over the one long paragraph it was."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from evsed.controller import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _step4() -> str:
    text = README.read_text(encoding="utf-8")
    walk = text[text.index("## From a blank SD card") : text.index("## Pointing it at")]
    return walk[walk.index("\n4. ") : walk.index("\n5. ")]


def _install_options() -> set[str]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in sub.choices["install"]._actions for flag in action.option_strings}


def test_step_4_is_numbered_sub_steps_with_their_commands() -> None:
    step = _step4()
    subs = re.findall(r"^   (\d)\. ", step, flags=re.MULTILINE)
    assert subs == ["1", "2", "3", "4"]
    blocks = re.findall(r"```sh\n(.*?)```", step, flags=re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    wheel = "~/dist/evsed-<version>-py3-none-any.whl"
    assert commands == [
        f"~/evsed-setup/bin/evsed install --dry-run --package {wheel}",
        f"sudo ~/evsed-setup/bin/evsed install --package {wheel}",
        "rm -rf ~/evsed-setup ~/dist",
    ]
    options = _install_options()
    for command in commands[:2]:
        for word in shlex.split(command.replace("~", "HOME")):
            if word.startswith("--"):
                assert word in options, word
