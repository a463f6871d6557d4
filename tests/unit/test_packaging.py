"""The built wheel installs into a fresh virtual environment and works there: the grammar and
templates ship as package data, and nothing but `netc` lands top-level in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


SOURCES = ("compiler", "grammar", "templates", "runtime", "simulator", "pyproject.toml",
           "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and a test
    # leaves nothing outside its temporary directory.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(out), str(source)], check=True)
    (built,) = out.glob("netc-*.whl")
    return built


def test_wheel_holds_only_the_netc_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("netc-")}
    assert top_level == {"netc"}
    assert "netc/grammar/netc.lark" in names
    assert any(name.startswith("netc/templates/") and name.endswith(".cuh") for name in names)
    assert "netc/sim/include/cudasim.h" in names


def test_wheel_installs_and_checks_an_example(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    # Run from a directory without the source tree, so only the installed package is found.
    result = subprocess.run([str(env_dir / "bin" / "netc"), "check",
                             str(ROOT / "examples" / "resnet18.net")],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "11,689,512 parameters" in result.stdout
