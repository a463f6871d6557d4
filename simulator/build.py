"""Compiling a module with the host C++ compiler: version, flags, the stub headers and the
shims that export each kernel, through the per-user cache."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from netc import cache
from netc.sim.protocol import (
    _STUB_HEADERS,
    HEADER_PATH,
    CompilerMissing,
    SimulatorError,
)

# ----------------------------------------------------------------------------------
# Compilation
# ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _compiler_version(cxx: str) -> str:
    try:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CompilerMissing(
            f"C++ compiler {cxx!r} not found: the CUDA simulator compiles kernels with the "
            "host C++ compiler (install g++, e.g. `apt-get install g++`, or set $NETC_CXX)"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompilerMissing(f"cannot run C++ compiler {cxx!r}: {exc}") from None
    if proc.returncode != 0:
        raise SimulatorError(f"{cxx} --version failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@functools.lru_cache(maxsize=8)
def _asan_runtime(cxx: str) -> str:
    try:
        proc = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                              text=True, timeout=60)
    except OSError as exc:
        raise SimulatorError(f"cannot run {cxx}: {exc}") from None
    path = proc.stdout.strip()
    if proc.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
        raise SimulatorError(
            f"sanitize=True needs AddressSanitizer's runtime, but {cxx} does not know "
            "libasan.so (install the libasan package matching your gcc)"
        )
    return os.path.realpath(path)


def _header_text() -> str:
    try:
        return HEADER_PATH.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulatorError(f"simulator header missing: {HEADER_PATH}: {exc}") from None


def _stub_include_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    directory = cache.private_subdirectory("cudasim-include-v1", cache_dir)
    for header in _STUB_HEADERS:
        text = (f"// {header}: stub for netc's CPU simulator; cudasim.h "
                "(force-included) provides the CUDA API.\n#pragma once\n").encode()
        _write_if_different(directory / header, text)
    return directory


def _write_if_different(path: Path, data: bytes) -> None:
    """Make `path` (in a private cache directory) hold exactly `data`, mode 0600.

    Whatever is there is compiled, so it is compared byte for byte, not trusted by name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if f.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    cache.write_private_file(path, data)


_KERNEL_NAME_RE = re.compile(r"^[A-Za-z_][\w:<>, *&]*$")


def _shims(kernels: Sequence[str]) -> str:
    lines = ["", '#line 1 "<cudasim-shims>"']
    for i, k in enumerate(kernels):
        lines.append(
            f"CUDASIM_EXPORT const char* cudasim_sig_{i}(void) "
            f"{{ return ::cudasim::detail::signature_of(&({k})); }}"
        )
        lines.append(
            f"CUDASIM_EXPORT int cudasim_launch_{i}(const long long* cfg, void** args, char* err, "
            f"long long errlen) {{ return ::cudasim::detail::launch(&({k}), \"{k}\", cfg, args, "
            f"err, errlen); }}"
        )
    return "\n".join(lines) + "\n"
