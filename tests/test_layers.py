"""The import contracts of pyproject.toml hold, and each one fails on a deliberately wrong import.

`lint-imports` runs against a copy of the three folders laid out as the `evsed` namespace in
a temporary directory (first on PYTHONPATH, so it shadows the editable install); one wrong
import is appended to one module and the contract that forbids it must be reported broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401  (in the test extra: the layer check never skips)
import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"controller": "controller", "hal": "hal", "hw-mocks": "hwmocks"}
CONNECTOR = "the connector and the limits"
SMART = "smart charging is pure"
LINT = "import sys; from importlinter.cli import lint_imports_command as m; sys.exit(m())"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder, package in FOLDERS.items():
        shutil.copytree(
            REPO / folder,
            tmp_path / "evsed" / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.md"),
        )
    return tmp_path


def test_the_contracts_hold_on_the_copy(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong", "contract"),
    [
        ("hal/contactor.py", "evsed.controller.config", "layers: controller > hwmocks > hal"),
        ("hwmocks/meter.py", "evsed.controller.config", "layers: controller > hwmocks > hal"),
        ("hal/meters/poller.py", "evsed.hwmocks.ev", "layers: controller > hwmocks > hal"),
        ("controller/ocpp16/auth.py", "evsed.hal.types", "ocpp16 never imports hal"),
        ("controller/connector/machine.py", "evsed.controller.ocpp16.keys", CONNECTOR),
        ("controller/limiter.py", "evsed.controller.ocpp16.keys", CONNECTOR),
        ("controller/smartcharging/composite.py", "evsed.controller.ocpp16.keys", SMART),
        ("controller/smartcharging/model.py", "evsed.hal.types", SMART),
        ("controller/run.py", "evsed.hwmocks.bench", "only the wiring module"),
        ("controller/cli.py", "evsed.hwmocks.control", "only the wiring module"),
        ("controller/demo.py", "evsed.hwmocks.central_system", "only the wiring module"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tree: Path, module: str, wrong: str, contract: str
) -> None:
    path = tree / "evsed" / module
    path.write_text(path.read_text() + f"\nimport {wrong}  # deliberately wrong\n")
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
    assert wrong in result.stdout
