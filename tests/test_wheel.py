"""The built wheel: `evsed` is its only top-level name, it holds every module of the three
folders, and `evsed demo` runs from it in a fresh virtual environment outside the checkout.

About 25 s (build, venv, a 12 s demo), so it is marked `wheel`; CI runs it (plain
`python -m pytest`), `-m "not wheel"` skips it while iterating. The fresh venv gets evsed
only from the wheel; its dependencies come from this interpreter's site-packages through a
.pth path line (no index needed, and the editable install's finder is not activated, since
.pth files in a directory added that way are not processed).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"controller": "evsed/controller", "hal": "evsed/hal", "hw-mocks": "evsed/hwmocks"}

# One xdist worker for the module (`--dist loadgroup`), so the wheel is built once.
pytestmark = [pytest.mark.wheel, pytest.mark.xdist_group("wheel")]

#: What a build never needs, and what it must not read or write (venvs, build output).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".ci", "build", "dist", "*.egg-info", "__pycache__", ".ruff_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and evsed.egg-info into the tree it builds,
    # and in the checkout that raced whatever else used them (two workers building at once
    # failed; the editable install's metadata lives there too).
    source = tmp_path_factory.mktemp("source") / "evsed"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel_file,) = out.glob("evsed-*.whl")
    # setuptools' warnings about our own configuration (a data folder missing from
    # `packages`, a deprecated license table) are what a new user's `pip install` shows
    # first; they become errors in later setuptools releases.
    assert "BuildBackendWarning" not in built.stderr, built.stderr[-4000:]
    return wheel_file


def test_the_wheel_has_one_top_level_name_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "evsed"
    }
    expected = {
        f"{target}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, target in FOLDERS.items()
        for path in (REPO / folder).rglob("*")
        if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts
    }
    # A new subpackage missing from [tool.setuptools] packages would be missing here.
    assert expected - names == set()
    # What `evsed install` copies onto a charger that has only the wheel.
    shipped = {
        "evsed/systemd/evsed.service",
        "evsed/systemd/evsed-rollback.service",
        "evsed/systemd/evsed-rollback.path",
        "evsed/systemd/99-evsed-pwm.rules",
        "evsed/systemd/evsed-after-rollback.sh",
        "evsed/systemd/evsed-safe-off.sh",
    }
    assert shipped | {"evsed/examples/raspberry-pi.toml"} <= names


def test_evsed_demo_runs_from_the_wheel_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies (websockets, ocpp, gpiozero, ...) from this interpreter, appended
    # after the fresh venv's own site-packages, so the wheel's evsed comes first.
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = ["install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *install],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    where = subprocess.run(
        [str(python), "-c", "import evsed.controller; print(evsed.controller.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    assert where.startswith(purelib), where
    demo = subprocess.run(
        [str(env_dir / "bin" / "evsed"), "demo", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert '"transactions": 1' in demo.stdout.splitlines()[-1], demo.stdout[-2000:]
