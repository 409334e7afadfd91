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


def _step(n: int) -> str:
    text = README.read_text(encoding="utf-8")
    walk = text[text.index("## From a blank SD card") : text.index("## Pointing it at")]
    return walk[walk.index(f"\n{n}. ") : walk.index(f"\n{n + 1}. ")]


def test_step_3_puts_the_wheel_where_step_4_takes_it() -> None:
    # The trial: step 3 built into ./dist (`-w dist .`), step 4 took ~/dist/evsed-....
    step3 = " ".join(_step(3).split())
    wheel_dirs = set(re.findall(r"pip wheel --no-deps -w (\S+)", step3))
    assert wheel_dirs == {"dist", "~/dist"}
    assert "`scp -r dist <user>@<pi>:` (it becomes `~/dist`)" in step3  # ./dist -> ~/dist
    blocks = "".join(re.findall(r"```sh\n(.*?)```", _step4(), flags=re.DOTALL))
    packages = set(re.findall(r"--package (\S+)", blocks))
    assert packages == {"~/dist/evsed-<version>-py3-none-any.whl"}


def test_step_4_says_which_steps_the_install_prints() -> None:
    # The trial: "prints the next steps (the ones below)" — all of them? It prints 5 to 7.
    intro = " ".join(_step4().split("\n   1. ")[0].split())
    assert "prints the next steps: steps 5 to 7 below" in intro
