"""Compiling a module with NVRTC or nvcc, one run per architecture, through the per-user cache;
a failure gives the compiler's log and the commands that reproduce it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netc.files import write_atomic
from netc.toolchain.binary import (
    COMPILE_STATS,
    DEFAULT_ARCHS,
    ArchBinary,
    Compiler,
    DeviceBinary,
    DeviceCompileError,
    arch_number,
    check_arch,
    cubin_arch,
    parse_ptxas_report,
)
from netc.toolchain.discovery import (
    _nvrtc_module,
    _Toolchain,
    find_nvcc,
    resolve_compiler,
)

CACHE_KIND = "device"
CACHE_FORMAT = 1
"""Bump when the layout of a cache entry changes, so old entries are never misread."""


class _CompileFailure(Exception):
    def __init__(self, log: str):
        super().__init__(log)
        self.log = log


def _nvrtc_compile(source: str, name: str, arch: str,
                   options: Sequence[str]) -> tuple[bytes, str, str]:
    nvrtc = _nvrtc_module()
    success = nvrtc.nvrtcResult.NVRTC_SUCCESS

    def checked(call: Callable[..., Any], *args: Any) -> Any:
        result = call(*args)
        status, values = result[0], result[1:]
        if status != success:
            raise RuntimeError(f"{call.__name__} failed: {status}")
        return values[0] if len(values) == 1 else values

    program = checked(nvrtc.nvrtcCreateProgram, source.encode(), f"{name}.cu".encode(), 0, [], [])
    try:
        flags = [f"-arch={arch}", "-Xptxas=-v", *options]
        encoded = [flag.encode() for flag in flags]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        log_size = checked(nvrtc.nvrtcGetProgramLogSize, program)
        log_buffer = b" " * log_size
        checked(nvrtc.nvrtcGetProgramLog, program, log_buffer)
        log = log_buffer.rstrip(b"\0").decode(errors="replace")
        if status != success:
            raise _CompileFailure(log or str(status))
        cubin_size = checked(nvrtc.nvrtcGetCUBINSize, program)
        cubin = b" " * cubin_size
        checked(nvrtc.nvrtcGetCUBIN, program, cubin)
        ptx_size = checked(nvrtc.nvrtcGetPTXSize, program)
        ptx = b" " * ptx_size
        checked(nvrtc.nvrtcGetPTX, program, ptx)
        return cubin, ptx.rstrip(b"\0").decode(), log
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _nvcc_options(options: Sequence[str]) -> list[str]:
    """NVRTC's spelling of an option where nvcc's differs; the rest pass through unchanged."""
    translated: list[str] = []
    for option in options:
        for prefix in ("-Xptxas=", "--ptxas-options="):
            if option.startswith(prefix):
                translated.extend(["-Xptxas", option[len(prefix):]])
                break
        else:
            translated.append(option)
    return translated


def nvcc_command(nvcc: str, source_path: Path | str, arch: str, options: Sequence[str],
                 output: Path | str) -> list[str]:
    return [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *_nvcc_options(options),
            "-o", str(output), str(source_path)]


def _nvcc_compile(nvcc: str, source: str, name: str, arch: str,
                  options: Sequence[str]) -> tuple[bytes, str, str]:
    with tempfile.TemporaryDirectory(prefix="netc-nvcc-") as scratch:
        root = Path(scratch)
        source_path = root / f"{name}.cu"
        source_path.write_text(source)
        keep = root / "keep"
        keep.mkdir()
        cubin_path = root / f"{name}.{arch}.cubin"
        command = nvcc_command(nvcc, source_path, arch, options, cubin_path)
        command[1:1] = ["--keep", "--keep-dir", str(keep)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        log = (result.stdout + result.stderr).replace(str(root) + os.sep, "")
        if result.returncode != 0:
            raise _CompileFailure(log)
        ptx_files = sorted(keep.glob("*.ptx"))
        if not ptx_files:
            raise _CompileFailure(log + "\nnvcc --keep left no .ptx file")
        return cubin_path.read_bytes(), ptx_files[0].read_text(), log


# The cache ----------------------------------------------------------------------------------


_HEADER_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _header_digest(path: Path) -> bytes:
    """A header's SHA-256, read once per process while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HEADER_DIGESTS:
        _HEADER_DIGESTS[key] = hashlib.sha256(path.read_bytes()).digest()
    return _HEADER_DIGESTS[key]


def _include_digest(options: Sequence[str]) -> str:
    """A hash of every header under each `-I` directory, so editing a header misses the cache."""
    digest = hashlib.sha256()
    directories: list[str] = []
    for index, option in enumerate(options):
        if option == "-I" and index + 1 < len(options):
            directories.append(options[index + 1])
        elif option.startswith("-I") and len(option) > 2:
            directories.append(option[2:])
        elif option.startswith("--include-path="):
            directories.append(option.split("=", 1)[1])
    for directory in directories:
        root = Path(directory)
        if not root.is_dir():
            continue
        for header in sorted(p for p in root.rglob("*") if p.suffix in (".h", ".cuh", ".hpp")):
            digest.update(str(header.relative_to(root)).encode() + b"\0")
            digest.update(_header_digest(header))
    return digest.hexdigest()


def _encode_entry(arch: str, cubin: bytes, ptx: str, log: str) -> bytes:
    record = {
        "format": CACHE_FORMAT,
        "arch": arch,
        "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
        "cubin": base64.b64encode(cubin).decode("ascii"),
        "ptx": ptx,
        "log": log,
    }
    return json.dumps(record).encode()


def _decode_entry(data: bytes, arch: str) -> tuple[bytes, str, str] | None:
    """(cubin, ptx, log), or None when the entry is not one this version wrote intact."""
    try:
        record = json.loads(data)
        if record.get("format") != CACHE_FORMAT or record.get("arch") != arch:
            return None
        cubin = base64.b64decode(record["cubin"], validate=True)
        if hashlib.sha256(cubin).hexdigest() != record["cubin_sha256"]:
            return None
        if arch_number(cubin_arch(cubin)) != arch_number(arch):
            return None
        ptx, log = record["ptx"], record["log"]
        if not isinstance(ptx, str) or not isinstance(log, str) or ".target" not in ptx:
            return None
        return cubin, ptx, log
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _cached_entry(key_parts: Sequence[str], build: Callable[[], bytes],
                  force: bool = False) -> tuple[Path, bytes]:
    """The cache entry for `key_parts` (path, contents), running `build` on a miss.

    `netc.cache` verifies each entry against a size-and-SHA-256 sidecar and rebuilds
    one that fails; `force` discards an entry that verifies but that `_decode_entry` rejects.
    """
    from netc.cache import cached_build, entry_path, read_verified

    if force:
        with contextlib.suppress(FileNotFoundError):
            entry_path(CACHE_KIND, key_parts, ".json").unlink()

    def write(path: Path) -> None:
        path.write_bytes(build())

    path = cached_build(CACHE_KIND, key_parts, write, ".json")
    # Read and check the hash in one go, so the bytes used are the bytes verified; an entry
    # that changed in between is returned empty, which `_decode_entry` rejects (a rebuild).
    return path, read_verified(path) or b""


def _cache_key_parts(source: str, name: str, arch: str, options: Sequence[str],
                     toolchain: _Toolchain) -> tuple[str, ...]:
    return (f"netc-device-format-{CACHE_FORMAT}", toolchain.name, toolchain.key, arch,
            json.dumps(list(options)), _include_digest(options), name, source)


# Compiling ----------------------------------------------------------------------------------


def _failure_directory() -> Path:
    from netc.cache import CacheError, private_subdirectory, trusted_root

    try:
        return private_subdirectory("failed", trusted_root())
    except (CacheError, OSError):
        # Not a fixed name in the shared temporary folder, which another user could create
        # first; a fresh directory per failure outlives the process so the file can be read.
        return Path(tempfile.mkdtemp(prefix="netc-failed-"))


def _write_failed_source(source: str, name: str) -> Path:
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    path = _failure_directory() / f"{name}-{digest}.cu"
    if not path.exists() or path.read_text() != source:
        write_atomic(path, source)
    return path


def reproduce_commands(toolchain_name: str, source_path: Path, arch: str,
                       options: Sequence[str]) -> list[str]:
    """Shell commands that compile `source_path` the way `compile_module` did."""
    commands = []
    if toolchain_name == "nvrtc":
        module = [sys.executable, "-m", "netc.toolchain", "--compiler", "nvrtc",
                  "--no-cache", "--arch", arch, *(f"--option={option}" for option in options),
                  str(source_path)]
        commands.append(shlex.join(module))
    nvcc = find_nvcc() or "nvcc"
    output = source_path.with_suffix(f".{arch}.cubin")
    commands.append(shlex.join(nvcc_command(nvcc, source_path, arch, options, output)))
    return commands


def _compile_arch(source: str, name: str, arch: str, options: tuple[str, ...],
                  toolchain: _Toolchain) -> tuple[bytes, str, str]:
    COMPILE_STATS.count("compiles")
    if toolchain.name == "nvrtc":
        return _nvrtc_compile(source, name, arch, options)
    assert toolchain.nvcc is not None
    return _nvcc_compile(toolchain.nvcc, source, name, arch, options)


def _build_target(source: str, name: str, arch: str, options: tuple[str, ...],
                  toolchain: _Toolchain, use_cache: bool, generated: bool) -> ArchBinary:
    started = time.perf_counter()
    built: list[tuple[bytes, str, str]] = []

    def build() -> bytes:
        try:
            images = _compile_arch(source, name, arch, options, toolchain)
        except _CompileFailure as failure:
            source_path = _write_failed_source(source, name)
            what = (f"the CUDA module `{name}` netc generated" if generated
                    else f"the CUDA module `{name}`")
            raise DeviceCompileError(
                f"{what} failed to compile for {arch} ({toolchain.version})",
                log=failure.log, source_path=source_path, generated=generated, arch=arch,
                compiler=toolchain.name,
                reproduce=reproduce_commands(toolchain.name, source_path, arch, options),
            ) from None
        built.append(images)
        return _encode_entry(arch, *images)

    entry: Path | None = None
    if use_cache:
        key_parts = _cache_key_parts(source, name, arch, options, toolchain)
        entry, data = _cached_entry(key_parts, build)
        images = _decode_entry(data, arch)
        if images is None:
            # Intact on disk but not a record this version reads: compile again, overwrite it.
            COMPILE_STATS.count("rebuilt_corrupt")
            entry, data = _cached_entry(key_parts, build, force=True)
            images = _decode_entry(data, arch)
            if images is None:
                raise RuntimeError(f"the compile cache returned an unreadable entry for `{name}` "
                                   f"({arch}) right after writing it: {entry}")
    else:
        images = _decode_entry(build(), arch)
        if images is None:
            raise RuntimeError(f"the {toolchain.name} output for `{name}` ({arch}) is not a "
                               f"{arch} cubin with PTX")
    from_cache = not built
    if from_cache:
        COMPILE_STATS.count("cache_hits")
    cubin, ptx, log = images
    return ArchBinary(arch=arch, cubin=cubin, ptx=ptx, log=log,
                      resources=parse_ptxas_report(log, arch), from_cache=from_cache,
                      cache_entry=entry,
                      compile_seconds=0.0 if from_cache else time.perf_counter() - started)


def compile_module(source: str, name: str, archs: Sequence[str] = DEFAULT_ARCHS,
                   compiler: Compiler | str = "auto", options: Iterable[str] = (), *,
                   use_cache: bool = True, generated: bool = True) -> DeviceBinary:
    """Compile `source` to PTX and a cubin for each of `archs`, with resource usage.

    `name` names the module in file names and messages (a C identifier, e.g. `lenet5`).
    `options` are passed to the compiler; use spellings both accept (`-maxrregcount=32`,
    `-DNAME=1`, `-I/dir`, `--use_fast_math`, `-lineinfo`; NVRTC's `-Xptxas=...` is rewritten
    for nvcc). `generated` says the source is netc's own output, so a failure is a bug in netc
    (exit code 2). Raises `DeviceCompileError` on a failed compile, `CompilerNotFound` when no
    compiler is available.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"module name {name!r} is not a C identifier")
    archs = tuple(dict.fromkeys(check_arch(arch) for arch in archs))
    if not archs:
        raise ValueError("compile_module needs at least one architecture")
    options = tuple(options)
    toolchain = resolve_compiler(compiler)

    def one(arch: str) -> ArchBinary:
        return _build_target(source, name, arch, options, toolchain, use_cache, generated)

    workers = min(len(archs), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netc-compile") as pool:
            targets = tuple(pool.map(one, archs))
    else:
        targets = tuple(one(arch) for arch in archs)
    targets = tuple(sorted(targets, key=lambda t: arch_number(t.arch)))
    return DeviceBinary(name=name, source=source, compiler=toolchain.name,
                        compiler_version=toolchain.version, options=options, targets=targets)


# Command line: the reproduce command --------------------------------------------------------
