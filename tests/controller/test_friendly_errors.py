"""What a first run trips on gets one line and an exit status, never a traceback; every
subcommand explains itself in --help."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from evsed.controller import cli, run


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("which", ["meter", "control", "grid"])
def test_port_in_use_is_one_line(
    tmp_path: Path, held_port: int, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    meter_port = held_port if which == "meter" else 0
    control_port = held_port if which == "control" else 0
    grid = f"[grid]\nenabled = true\n[grid.meter]\nport = {held_port}\n" if which == "grid" else ""
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[central_system]\nenabled = false\n"
        f"[bench]\ncontrol_port = {control_port}\n"
        f"[[connectors]]\n[connectors.meter]\nport = {meter_port}\n" + grid
    )
    assert cli.main(["run", "--config", str(cfg)]) == run.EXIT_START
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("evsed: ")]
    assert "is another evsed running?" in line
    assert f"127.0.0.1:{held_port}" in line  # which port, not just "a port"
    key = {"meter": "[connectors.meter] port, connector 1", "grid": "[grid.meter] port"}
    if which in key:  # ... and which key sets it
        assert f"127.0.0.1:{held_port} ({key[which]})" in line


def test_permission_and_missing_device_messages() -> None:
    denied = run.first_run_message(
        PermissionError(errno.EACCES, "Permission denied", "/dev/gpiochip0")
    )
    assert denied.startswith("/dev/gpiochip0: Permission denied") and "gpio" in denied
    missing = run.first_run_message(FileNotFoundError(errno.ENOENT, "No such file", "/dev/ttyUSB0"))
    assert "/dev/ttyUSB0" in missing and "not found" in missing


def _commands(
    parser: object, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], object]]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = [path for path, _ in _commands(cli._parser())]


def test_every_subcommand_is_listed() -> None:
    assert {"run", "status", "selftest", "config", ("config", "check")[0]} <= {
        c[0] for c in COMMANDS
    }
    assert ("config", "check") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_is_not_empty(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    # A line of its own saying what it does, beyond the usage line.
    described = [
        line
        for line in out.split("\n\n")[1:]
        if line.strip() and not line.lstrip().startswith(("options:", "positional"))
    ]
    assert described, f"evsed {' '.join(command)} --help says nothing:\n{out}"


@pytest.mark.parametrize(
    ("device", "group"),
    [("/dev/ttyUSB0", "dialout"), ("/dev/serial0", "dialout"), ("/dev/gpiochip0", "gpio")],
)
def test_permission_denied_names_the_fix_for_a_user(device: str, group: str) -> None:
    """Fails without the change: "the service user needs the groups gpio, spi and dialout"
    to someone running evsed as themselves, with no command for them."""
    line = run.first_run_message(PermissionError(errno.EACCES, "Permission denied", device), 1000)
    assert line.startswith(f"{device}: Permission denied (")
    assert f"needs the group {group})" in line
    assert f"`sudo usermod -aG {group} $USER`, then log out and in again" in line
    assert "sudo evsed install" in line and "sudo systemctl restart evsed" in line


def test_permission_denied_to_root_is_no_group_matter() -> None:
    line = run.first_run_message(
        PermissionError(errno.EACCES, "Permission denied", "/dev/ttyUSB0"), 0
    )
    assert "to root as well: no group would help" in line and "usermod" not in line


def test_permission_denied_on_an_unknown_path_names_every_group() -> None:
    line = run.first_run_message(PermissionError(errno.EACCES, "Permission denied", "/x"), 1000)
    assert "need the groups gpio, spi and dialout" in line and "-aG gpio,spi,dialout" in line
