"""A refused `evsed install` / `uninstall` names the --dry-run that shows what it would do,
and a dry uninstall says what it would keep in the conditional, not as done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evsed.controller import cli, install


def test_a_refused_install_names_the_dry_run(tmp_path: Path, capsys) -> None:
    """Fails without the change: the error alone; a new user did not know of --dry-run."""
    root = tmp_path / "root"
    root.mkdir()
    assert cli.main(["install", "--root", str(root), "--user", "ev"]) == cli.EXIT_CONFIG
    (err,) = capsys.readouterr().err.splitlines()  # still one line
    assert err.startswith("evsed install: no /usr/local/lib/evsed/admin yet")
    assert err.endswith(
        " (to see what it would do, changing nothing, with no sudo: "
        f"evsed install --dry-run --root {root} --user ev "
        "--package './evsed-<version>-py3-none-any.whl')"  # the dry run needs one as well
    )
    assert list(root.iterdir()) == []


def test_a_refused_uninstall_without_sudo_names_the_dry_run(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # refused before anything is touched
    assert cli.main(["uninstall", "--purge"]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.splitlines() == [
        "evsed uninstall: evsed uninstall changes /etc: run it with sudo (to see what it "
        "would do, changing nothing, with no sudo: evsed uninstall --dry-run --purge)"
    ]


def test_a_dry_run_refused_gives_no_hint_to_itself(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert cli.main(["install", "--root", str(root), "--dry-run"]) == cli.EXIT_CONFIG
    assert "--dry-run" not in capsys.readouterr().err


def test_a_dry_uninstall_would_keep_rather_than_kept(tmp_path: Path) -> None:
    """Fails without the change: "kept /etc/evsed ..." while nothing was done."""
    lines: list[str] = []
    install.uninstall(tmp_path, dry=True, out=lines.append, run=lambda argv: None)
    (keep,) = [line for line in lines if "/etc/evsed" in line]
    assert keep.startswith("would keep /etc/evsed (configuration)")
    assert keep.endswith("`evsed uninstall --purge` would remove them")
    lines.clear()
    install.uninstall(tmp_path, out=lines.append, run=lambda argv: None)
    (keep,) = [line for line in lines if "/etc/evsed" in line]
    assert keep.startswith("kept /etc/evsed") and keep.endswith("--purge` removes them")


def test_under_a_root_the_missing_groups_are_that_roots(tmp_path: Path) -> None:
    """Fails without the change: "no `gpio` group on this system" for an empty --root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("root:x:0:\ngpio:x:997:\n")
    package = tmp_path / "evsed-1.2.3-py3-none-any.whl"
    package.write_bytes(b"PK")
    lines: list[str] = []
    install.install(root, package=package, dry=True, out=lines.append)
    warnings = [line for line in lines if line.startswith("warning: no `")]
    assert [w.split(":")[1] for w in warnings] == [
        f" no `spi` group in {root}/etc/group",
        f" no `dialout` group in {root}/etc/group",
    ]
