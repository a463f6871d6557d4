"""Finding the CUDA compilers: NVRTC from pip (cuda-python), nvcc from a toolkit, and the
architectures each can build for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from netc.toolchain.binary import (
    COMPILERS,
    CompilerNotFound,
    arch_number,
)

_INSTALL_HELP = (
    "install NVRTC with `pip install 'netc[nvrtc]'` (the cuda-python and nvidia-cuda-nvrtc "
    "wheels; no CUDA toolkit needed), or a CUDA toolkit with `nvcc` on PATH (or set CUDA_HOME)"
)


# Compilers ----------------------------------------------------------------------------------


def _nvrtc_module() -> Any:
    from cuda.bindings import nvrtc

    return nvrtc


@lru_cache(maxsize=1)
def nvrtc_status() -> tuple[str | None, str]:
    """(version string, "") when NVRTC loads, else (None, why not)."""
    try:
        nvrtc = _nvrtc_module()
    except ImportError as exc:
        return None, f"cuda-python is not installed ({exc})"
    try:
        result, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings raise several types when libnvrtc cannot be loaded
        return None, f"libnvrtc could not be loaded ({type(exc).__name__}: {exc})"
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return None, f"nvrtcVersion failed ({result})"
    version = f"nvrtc {major}.{minor}"
    # The API reports major.minor only; the wheel's version names the exact build.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    for package in ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12"):
        try:
            return f"{version} ({package} {package_version(package)})", ""
        except PackageNotFoundError:
            continue
    return version, ""


@lru_cache(maxsize=1)
def _nvrtc_library() -> str:
    """The libnvrtc this process loaded, and its size: part of the cache key, so a toolkit's
    library and a wheel's of the same version never share entries (no mtime: reinstalling the
    same wheel should keep the cache)."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        library = Path(load_nvidia_dynamic_lib("nvrtc").abs_path or "").resolve()
        stat = library.stat()
        return f"{library} {stat.st_size}"
    except Exception:  # an older cuda-python without pathfinder: the version alone must do
        return "libnvrtc (location unknown)"


def find_nvcc() -> str | None:
    """nvcc on PATH, under $CUDA_HOME or $CUDA_PATH, or where cuda.pathfinder finds it."""
    found = shutil.which("nvcc")
    if found:
        return found
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
    except ImportError:
        return None
    try:
        return find_nvidia_binary_utility("nvcc")
    except Exception:
        return None


@lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    """The whole of `nvcc --version` (its build line pins the exact compiler)."""
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CompilerNotFound(f"`{nvcc} --version` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _nvcc_release(version_text: str) -> str:
    match = re.search(r"release [\d.]+, (V[\d.]+)", version_text)
    return f"nvcc {match.group(1)}" if match else "nvcc"


@dataclass(frozen=True)
class _Toolchain:
    name: str
    """`nvrtc` or `nvcc`."""
    version: str
    """Human-readable version."""
    key: str
    """What goes into the cache key: exact enough that a new compiler build misses."""
    nvcc: str | None = None


def resolve_compiler(compiler: str = "auto") -> _Toolchain:
    """The compiler `compile_module` would use, or `CompilerNotFound` saying what to install."""
    if compiler not in COMPILERS:
        raise ValueError(f"unknown compiler {compiler!r}: choose one of {', '.join(COMPILERS)}")
    nvrtc_version, nvrtc_problem = nvrtc_status() if compiler in ("auto", "nvrtc") else (None, "")
    if nvrtc_version is not None:
        return _Toolchain("nvrtc", nvrtc_version, f"{nvrtc_version}\n{_nvrtc_library()}")
    if compiler == "nvrtc":
        raise CompilerNotFound(f"NVRTC is not available: {nvrtc_problem}; {_INSTALL_HELP}")
    nvcc = find_nvcc()
    if nvcc is not None:
        text = nvcc_version(nvcc)
        return _Toolchain("nvcc", _nvcc_release(text), f"{Path(nvcc).resolve()}\n{text}", nvcc)
    if compiler == "nvcc":
        raise CompilerNotFound(f"nvcc was not found on PATH, under CUDA_HOME or CUDA_PATH; "
                               f"{_INSTALL_HELP}")
    raise CompilerNotFound(f"no CUDA compiler found (NVRTC: {nvrtc_problem}; nvcc: not on PATH); "
                           f"{_INSTALL_HELP}")


def supported_archs(compiler: str = "auto") -> tuple[str, ...]:
    """The `sm_XY` architectures the chosen compiler can build cubins for."""
    toolchain = resolve_compiler(compiler)
    if toolchain.name == "nvrtc":
        nvrtc = _nvrtc_module()
        result, numbers = nvrtc.nvrtcGetSupportedArchs()
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"nvrtcGetSupportedArchs failed: {result}")
        return tuple(f"sm_{number}" for number in sorted(numbers))
    assert toolchain.nvcc is not None
    listing = subprocess.run([toolchain.nvcc, "--list-gpu-code"], capture_output=True, text=True,
                             check=False)
    return tuple(sorted(set(re.findall(r"\bsm_\d+[af]?\b", listing.stdout)), key=arch_number))
