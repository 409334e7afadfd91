"""systemd/README.md's switch of `/opt/evsed/current` by hand, run as written (paths moved
under a temporary root, without `sudo -u evsed`): the links it makes are what the code reads
as the version in service, the lines it quotes are what `evsed install` prints, and its
database copy comes back whole."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from evsed.controller import install
from evsed.controller.firmware.installer import Layout
from evsed.controller.store.schema import DB_FILENAME

README = Path(__file__).resolve().parents[2] / "systemd" / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### In short, for a hobbyist")
    return text[start : text.index("\n## ", start)]


def _blocks() -> list[list[str]]:
    found = re.findall(r"```sh\n(.*?)```", _section(), flags=re.DOTALL)
    return [[ln.strip() for ln in block.splitlines() if ln.strip()] for block in found]


def _run(lines: list[str], root: Path, *, keep: tuple[str, ...], new: str) -> None:
    """Run, in one shell, the lines of a block that set ``old`` or ``new`` or contain one of
    ``keep``, moved under ``root``. ``old`` comes from the block's own line (a version typed
    in by hand would hide a wrong derivation: `readlink` alone gave `venvs/venvs/1.0`);
    only the value typed for ``new``, the wheel's version, is replaced."""
    script = ["set -e"]
    for line in lines:
        if not (line.startswith(("old=", "new=")) or any(k in line for k in keep)):
            continue
        assert not re.search(r"<\w+>", line), f"a placeholder left to the reader: {line}"
        if line.startswith("new=") and "$(" not in line:
            line = f"new={new}"
        line = line.removeprefix("sudo -u evsed ")
        line = line.replace("/opt/evsed", str(root / "opt/evsed"))
        line = line.replace("/var/lib/evsed", str(root / "var/lib/evsed"))
        script.append(line)
    subprocess.run(["sh", "-c", "\n".join(script)], check=True)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def run(self, argv: object) -> None:  # commands are only recorded
        pass

    def out(self, line: str) -> None:
        self.lines.append(line)


def _install(root: Path, version: str) -> list[str]:
    wheel = root.parent / f"evsed-{version}-py3-none-any.whl"
    wheel.write_bytes(b"PK")  # only its name matters: pip is not run
    rec = Recorder()
    assert install.install(root, package=wheel, run=rec.run, out=rec.out, python="python3") == 0
    return rec.lines


def test_the_switch_by_hand_is_what_the_code_reads(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("root:x:0:\ngpio:x:997:\nspi:x:999:\ndialout:x:20:\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    _install(root, "1.0")
    layout = Layout(root / "opt/evsed")
    (layout.venvs / "1.0").mkdir(parents=True, exist_ok=True)
    (layout.venvs / "2.0").mkdir()  # the venv made by hand
    state = root / "var/lib/evsed"
    (state / DB_FILENAME).write_text("old schema")
    (state / f"{DB_FILENAME}-wal").write_text("old wal")

    upgrade, back = _blocks()
    assert any(line.startswith("old=") for line in upgrade), "old is derived, not typed"
    _run(upgrade, root, keep=("ln -sfn", "evsed.db"), new="2.0")
    assert layout.in_service() == (layout.venvs / "2.0").resolve()
    assert layout.previous.exists(), f"previous dangles: {os.readlink(layout.previous)}"
    assert layout.previous.resolve() == (layout.venvs / "1.0").resolve()
    # pip as the service user: its HOME is the state directory (useradd --home-dir), so no
    # cache there, on the SD card.
    (pip,) = [line for line in upgrade if "/bin/pip install" in line]
    assert "--no-cache-dir" in pip

    # `evsed install` again keeps the version in service, saying it as the README quotes.
    said = _install(root, "2.0")
    assert "versions: /opt/evsed/current -> venvs/2.0 (kept)" in said
    assert (
        "  evsed-2.0-py3-none-any.whl not installed: new versions come as firmware updates" in said
    )
    flat = " ".join(_section().split())
    assert "`versions: /opt/evsed/current -> venvs/<version> (kept)`" in flat
    assert "`<wheel> not installed: new versions come as firmware updates`" in flat
    assert layout.in_service() == (layout.venvs / "2.0").resolve()

    # The new version migrated the database; the way back puts the copy back.
    (state / DB_FILENAME).write_text("new schema")
    (state / f"{DB_FILENAME}-wal").write_text("new wal")
    (state / f"{DB_FILENAME}-shm").write_text("new shm")
    _run(back, root, keep=("ln -sfn", "evsed.db"), new="unused")
    assert layout.in_service() == (layout.venvs / "1.0").resolve()
    assert (state / DB_FILENAME).read_text() == "old schema"
    assert (state / f"{DB_FILENAME}-wal").read_text() == "old wal"
    assert not (state / f"{DB_FILENAME}-shm").exists()
