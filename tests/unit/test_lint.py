"""The code passes ruff, mypy and import-linter as configured in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is part of the dev extra: pip install -e '.[dev]'"
    return found


def test_ruff() -> None:
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The folders that install under `netc`, by where they land (pyproject's package-dir).
INSTALLED = {"compiler": "netc", "runtime": "netc/runtime", "grammar": "netc/grammar",
             "templates": "netc/templates", "simulator": "netc/sim"}


def _installed_layout(root: Path) -> Path:
    """A copy of netc's Python files laid out as installed (import-linter reads packages by
    folder, and the repository keeps compiler/, runtime/, simulator/ side by side)."""
    for folder, target in INSTALLED.items():
        for source in (ROOT / folder).rglob("*.py"):
            destination = root / target / source.relative_to(ROOT / folder)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return root


def test_the_package_layers_hold(tmp_path: Path) -> None:
    """import-linter's contracts in pyproject.toml: no import cycle between packages, and
    nothing below the driver imports the command line, the API or the backends."""
    layout = _installed_layout(tmp_path / "layout")
    result = subprocess.run([_tool("lint-imports"), "--no-cache", "--config",
                             str(ROOT / "pyproject.toml")], cwd=layout, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(layout)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_the_layer_contract_can_fail(tmp_path: Path) -> None:
    """The check is real: an upward import (the IR importing the CLI) breaks it."""
    layout = _installed_layout(tmp_path / "layout")
    ir = layout / "netc" / "ir.py"
    ir.write_text(ir.read_text() + "\n\ndef _upward() -> None:\n    import netc.cli  # noqa\n")
    result = subprocess.run([_tool("lint-imports"), "--no-cache", "--config",
                             str(ROOT / "pyproject.toml")], cwd=layout, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(layout)})
    assert result.returncode != 0 and "netc.ir is not allowed to import netc.cli" in result.stdout
