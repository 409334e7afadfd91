"""A simulated reader's symlink directory outlives a bench that was killed (close() never
ran): a new-user trial found 490 of them in /tmp after a day of tests that kill evsed.
The next reader removes those whose process is gone, and nobody else's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evsed.hwmocks import rfid
from evsed.hwmocks.rfid import DIR_PREFIX, SimRdm6300, remove_stale_dirs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _left(tmp: Path, pid: int) -> Path:
    d = tmp / f"{DIR_PREFIX}{pid}-abcd1234"
    d.mkdir()
    (d / "ttyRFID").symlink_to("/dev/pts/999")
    return d


def test_only_the_dirs_of_processes_gone_are_removed(tmp_path: Path) -> None:
    gone = _left(tmp_path, _dead_pid())
    alive = _left(tmp_path, os.getpid())
    old_style = tmp_path / f"{DIR_PREFIX}0bz5y58"  # no pid in its name: not ours to judge
    old_style.mkdir()
    other = tmp_path / "unrelated-123-x"
    other.mkdir()
    assert remove_stale_dirs(str(tmp_path)) == [str(gone)]
    assert not gone.exists()
    assert alive.exists() and old_style.exists() and other.exists()


def test_a_new_reader_cleans_up_after_a_killed_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rfid.tempfile, "tempdir", str(tmp_path))
    gone = _left(tmp_path, _dead_pid())
    with SimRdm6300() as reader:
        assert Path(reader.port).parent.name.startswith(f"{DIR_PREFIX}{os.getpid()}-")
        assert not gone.exists()
    assert not Path(reader.port).parent.exists()
