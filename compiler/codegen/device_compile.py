"""Device compilation: one CUDA module to PTX and a cubin per GPU architecture.

    binary = compile_module(plan.source, plan.module, archs=("sm_80", "sm_90"))
    binary.target("sm_90").cubin          # an ELF image for sm_90
    binary.target("sm_90").ptx            # the PTX it was assembled from (`.target sm_90`)
    binary.kernel_resources("sm_90")      # registers, shared memory, spills... per kernel

Two compilers, one result:

* `nvrtc`: NVIDIA's runtime compiler as a library, through `cuda.bindings.nvrtc`, which finds
  `libnvrtc` from the `nvidia-cuda-nvrtc` wheel (via `cuda.pathfinder`), so a machine with no
  CUDA toolkit can build cubins: `pip install 'netc[nvrtc]'`.
* `nvcc`: the toolkit's driver, found on PATH, under `$CUDA_HOME`/`$CUDA_PATH`, or by
  `cuda.pathfinder`.
* `auto` (the default) takes NVRTC when it loads, else nvcc, else raises `CompilerNotFound`
  saying what to install.

One compiler run per architecture gives both images: NVRTC with `-arch=sm_XY` returns PTX (from
`nvrtcGetPTX`, `.target sm_XY`) and the cubin assembled from it (`nvrtcGetCUBIN`); nvcc runs
as `nvcc -cubin -arch=sm_XY --keep` and the PTX is the intermediate file it keeps. So there is
one PTX per architecture; a GPU newer than every cubin JIT-compiles the PTX of the newest
architecture not above it. Architectures compile in parallel threads (NVRTC releases the GIL).

Resource usage comes from ptxas' verbose report (`-Xptxas=-v` for NVRTC, read back from the
program log; `-Xptxas -v` for nvcc, read from its stderr), one `KernelResources` per entry
function and architecture: registers, static shared memory, stack frame, spill stores/loads,
constant memory per bank, barriers. Dynamic shared memory is a launch parameter: it is in the
launch plan, not here.

Every architecture's result is one entry in the per-user compile cache (`netc.runtime.cache`),
keyed by a hash of the source, the options, the headers under each `-I` directory, the
architecture and the compiler's exact version; a hit runs no compiler (`COMPILE_STATS` counts
both). An entry that does not read back as a well-formed record with a matching cubin (ELF
magic, architecture and SHA-256 checked) is compiled again.

A failed compile raises `DeviceCompileError`: the compiler's log, the source written to a file,
and commands that reproduce the failure (`nvcc -cubin -arch=sm_90 ... file.cu`, and for NVRTC
`python -m netc.codegen.device_compile --compiler nvrtc --arch sm_90 file.cu`, which is also a
small command line: run it with `--help`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from netc.text import format_table

Compiler = Literal["auto", "nvrtc", "nvcc"]
COMPILERS: tuple[str, ...] = ("auto", "nvrtc", "nvcc")
DEFAULT_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
CACHE_KIND = "device"
CACHE_FORMAT = 1
"""Bump when the layout of a cache entry changes, so old entries are never misread."""

_ARCH = re.compile(r"^sm_(\d+)([af]?)$")
_INSTALL_HELP = (
    "install NVRTC with `pip install 'netc[nvrtc]'` (the cuda-python and nvidia-cuda-nvrtc "
    "wheels; no CUDA toolkit needed), or a CUDA toolkit with `nvcc` on PATH (or set CUDA_HOME)"
)


# Errors -------------------------------------------------------------------------------------


class DeviceCompileError(Exception):
    """A CUDA module failed to compile.

    `exit_code` is what the CLI exits with: 2 when the source is netc's own generated code (a
    bug in netc), 1 when it is code a user handed in. `render()` is the full message: what
    failed, the compiler's log, where the source was written, and the commands that reproduce
    the failure.
    """

    def __init__(self, summary: str, *, log: str = "", source_path: Path | None = None,
                 reproduce: Sequence[str] = (), generated: bool = False,
                 arch: str | None = None, compiler: str | None = None):
        self.summary = summary
        self.log = log
        self.source_path = source_path
        self.reproduce = tuple(reproduce)
        self.generated = generated
        self.arch = arch
        self.compiler = compiler
        super().__init__(self.render())

    @property
    def exit_code(self) -> int:
        return 2 if self.generated else 1

    def render(self) -> str:
        lines = [f"error: {self.summary}"]
        if self.generated:
            lines.append("This is a bug in netc, not in your model: the CUDA code netc generated "
                         "does not compile. Please report it with the source file and the "
                         "command below.")
        if self.log.strip():
            lines.append("compiler output:")
            lines.extend(f"    {line}" for line in self.log.strip("\n").splitlines())
        if self.source_path is not None:
            lines.append(f"source: {self.source_path}")
        for index, command in enumerate(self.reproduce):
            lines.append(("reproduce: " if index == 0 else "       or: ") + command)
        return "\n".join(lines)


class CompilerNotFound(DeviceCompileError):
    """No CUDA compiler could be found or loaded; the message says what to install."""

    def __init__(self, summary: str):
        super().__init__(summary)

    @property
    def exit_code(self) -> int:
        return 1


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one entry function on one architecture."""

    kernel: str
    arch: str
    registers: int
    shared_static_bytes: int = 0
    """`__shared__` arrays; dynamic shared memory is the launch's `shared_bytes`."""
    stack_frame_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    constant_bytes: tuple[tuple[int, int], ...] = ()
    """(bank, bytes) per constant bank; bank 0 holds the kernel's parameters."""
    barriers: int = 0
    local_bytes: int = 0
    """Local memory beyond the stack frame, where ptxas reports it (`lmem`)."""

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0

    @property
    def constant_total_bytes(self) -> int:
        return sum(size for _, size in self.constant_bytes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["constant_bytes"] = {str(bank): size for bank, size in self.constant_bytes}
        return data


@dataclass(frozen=True)
class ArchBinary:
    """The compiled images of a module for one architecture."""

    arch: str
    cubin: bytes
    ptx: str
    log: str
    """The compiler's messages, ptxas' verbose report included."""
    resources: tuple[KernelResources, ...]
    from_cache: bool = False
    compile_seconds: float = 0.0
    """Time spent compiling (0 for a cache hit)."""
    cache_entry: Path | None = None
    """The cache file this came from or went to (None with `use_cache=False`)."""

    def kernel(self, name: str) -> KernelResources:
        for usage in self.resources:
            if usage.kernel == name:
                return usage
        raise KeyError(f"no kernel `{name}` in the {self.arch} cubin; it has "
                       + ", ".join(u.kernel for u in self.resources))


@dataclass(frozen=True)
class DeviceBinary:
    """One CUDA module compiled for several architectures."""

    name: str
    source: str
    compiler: str
    """`nvrtc` or `nvcc`."""
    compiler_version: str
    options: tuple[str, ...]
    targets: tuple[ArchBinary, ...]

    @property
    def archs(self) -> tuple[str, ...]:
        return tuple(target.arch for target in self.targets)

    @property
    def kernels(self) -> tuple[str, ...]:
        names: list[str] = []
        for target in self.targets:
            names.extend(u.kernel for u in target.resources if u.kernel not in names)
        return tuple(names)

    def target(self, arch: str) -> ArchBinary:
        for target in self.targets:
            if target.arch == arch:
                return target
        raise KeyError(f"module `{self.name}` was not compiled for {arch}; it has "
                       + ", ".join(self.archs))

    def kernel_resources(self, arch: str) -> dict[str, KernelResources]:
        return {usage.kernel: usage for usage in self.target(arch).resources}

    def resources_json(self) -> dict[str, Any]:
        """Per kernel, per architecture resource usage, as `plan.json` stores it."""
        return {
            "compiler": self.compiler,
            "compiler_version": self.compiler_version,
            "options": list(self.options),
            "archs": list(self.archs),
            "kernels": {
                kernel: {t.arch: t.kernel(kernel).to_dict()
                         for t in self.targets if any(u.kernel == kernel for u in t.resources)}
                for kernel in self.kernels
            },
        }


@dataclass
class CompileStats:
    """How often a compiler actually ran, and how often the cache answered instead."""

    compiles: int = 0
    cache_hits: int = 0
    rebuilt_corrupt: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


COMPILE_STATS = CompileStats()


# Architectures and cubins -------------------------------------------------------------------


def check_arch(arch: str) -> str:
    if not _ARCH.match(arch):
        raise ValueError(f"unknown GPU architecture {arch!r}: expected sm_XY, e.g. sm_80 or sm_90")
    return arch


def arch_number(arch: str) -> int:
    """`sm_90a` -> 90."""
    match = _ARCH.match(arch)
    if not match:
        raise ValueError(f"unknown GPU architecture {arch!r}")
    return int(match.group(1))


_EM_CUDA = 190


def cubin_arch(image: bytes) -> str:
    """The `sm_XY` a cubin was built for, read from its ELF header.

    The SM number sits in `e_flags`: bits 0-7 up to ELF ABI version 7 (CUDA 12 and older),
    bits 8-15 from ABI version 8 (CUDA 13). Raises ValueError for anything that is not a CUDA
    ELF image.
    """
    if len(image) < 64 or image[:4] != b"\x7fELF":
        raise ValueError("not an ELF image")
    if image[4] != 2 or image[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF image")
    machine = int.from_bytes(image[18:20], "little")
    if machine != _EM_CUDA:
        raise ValueError(f"ELF machine {machine} is not CUDA ({_EM_CUDA})")
    flags = int.from_bytes(image[48:52], "little")
    abi_version = image[8]
    number = (flags >> 8) & 0xFF if abi_version >= 8 else flags & 0xFF
    return f"sm_{number}"


# Resource usage -----------------------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_LMEM = re.compile(r"(\d+) bytes lmem")
_CMEM = re.compile(r"(\d+) bytes cmem\[(\d+)\]")


def parse_ptxas_report(log: str, default_arch: str = "") -> tuple[KernelResources, ...]:
    """Every entry function's resources from a ptxas `-v` report (nvcc's or NVRTC's).

    The report interleaves entries and the non-inlined device functions they call; a
    `Function properties` block belongs to an entry only when it names the entry being
    compiled, so a callee's frame is never charged to its caller's line.
    """
    found: dict[str, dict[str, Any]] = {}
    current: str | None = None
    properties_of: str | None = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            current = match.group(1)
            found[current] = {"kernel": current, "arch": match.group(2) or default_arch,
                              "registers": 0}
            properties_of = None
            continue
        if match := _PROPERTIES.search(line):
            properties_of = match.group(1)
            continue
        if (match := _FRAME.search(line)) and properties_of in found:
            record = found[properties_of]
            record["stack_frame_bytes"] = int(match.group(1))
            record["spill_store_bytes"] = int(match.group(2))
            record["spill_load_bytes"] = int(match.group(3))
            continue
        if (match := _USED.search(line)) and current is not None:
            record = found[current]
            record["registers"] = int(match.group(1))
            if barriers := _BARRIERS.search(line):
                record["barriers"] = int(barriers.group(1))
            if smem := _SMEM.search(line):
                record["shared_static_bytes"] = int(smem.group(1))
            if lmem := _LMEM.search(line):
                record["local_bytes"] = int(lmem.group(1))
            record["constant_bytes"] = tuple(sorted(
                (int(bank), int(size)) for size, bank in _CMEM.findall(line)))
    return tuple(KernelResources(**record) for record in found.values())


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

    `netc.runtime.cache` verifies each entry against a size-and-SHA-256 sidecar and rebuilds
    one that fails; `force` discards an entry that verifies but that `_decode_entry` rejects.
    """
    from netc.runtime.cache import cached_build, entry_path, read_verified

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
    from netc.runtime.cache import CacheError, private_subdirectory, trusted_root

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
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "w") as stream:
            stream.write(source)
        os.replace(temporary, path)
    return path


def reproduce_commands(toolchain_name: str, source_path: Path, arch: str,
                       options: Sequence[str]) -> list[str]:
    """Shell commands that compile `source_path` the way `compile_module` did."""
    commands = []
    if toolchain_name == "nvrtc":
        module = [sys.executable, "-m", "netc.codegen.device_compile", "--compiler", "nvrtc",
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


def format_resources(binary: DeviceBinary) -> str:
    rows = [("kernel", "arch", "regs", "smem", "stack", "spill st", "spill ld", "cmem")]
    for target in binary.targets:
        for usage in target.resources:
            rows.append((usage.kernel, usage.arch, str(usage.registers),
                         str(usage.shared_static_bytes), str(usage.stack_frame_bytes),
                         str(usage.spill_store_bytes), str(usage.spill_load_bytes),
                         str(usage.constant_total_bytes)))
    return "\n".join(format_table(rows, right=range(2, len(rows[0])), rule=False))


def _benchmark(source: str, name: str, archs: tuple[str, ...], compiler: str,
               options: Sequence[str], repeat: int) -> int:
    import statistics

    cold: list[float] = []
    cached: list[float] = []
    saved = os.environ.get("NETC_CACHE_DIR")
    try:
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="netc-benchmark-") as directory:
                os.environ["NETC_CACHE_DIR"] = directory
                for times in (cold, cached):
                    started = time.perf_counter()
                    binary = compile_module(source, name, archs, compiler, options,
                                            generated=False)
                    times.append(time.perf_counter() - started)
    except DeviceCompileError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    finally:
        if saved is None:
            os.environ.pop("NETC_CACHE_DIR", None)
        else:
            os.environ["NETC_CACHE_DIR"] = saved
    print(f"{name}: {binary.compiler_version}, {', '.join(archs)}, {repeat} runs "
          f"({os.cpu_count()} CPUs)")
    for label, times in (("cold", cold), ("cached", cached)):
        print(f"  {label:6}  median {statistics.median(times) * 1000:8.1f} ms  "
              f"min {min(times) * 1000:8.1f} ms  max {max(times) * 1000:8.1f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netc.codegen.device_compile",
        description="Compile a CUDA file the way netc does and print each kernel's resources.")
    parser.add_argument("source", type=Path)
    parser.add_argument("--arch", action="append", help="sm_XY; repeat for several "
                        f"(default: {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--compiler", choices=COMPILERS, default="auto")
    parser.add_argument("--option", action="append", default=[],
                        help="a compiler option; write --option=-maxrregcount=32")
    parser.add_argument("--no-cache", action="store_true", help="always run the compiler")
    parser.add_argument("--output-dir", type=Path,
                        help="write NAME.sm_XY.cubin and NAME.sm_XY.ptx here")
    parser.add_argument("--benchmark", type=int, metavar="N",
                        help="time N cold compiles (each into a fresh cache) and N cache hits")
    args = parser.parse_args(argv)
    name = re.sub(r"\W", "_", args.source.stem) or "module"
    if args.benchmark:
        return _benchmark(args.source.read_text(), name, tuple(args.arch or DEFAULT_ARCHS),
                          args.compiler, args.option, args.benchmark)
    try:
        binary = compile_module(args.source.read_text(), name, tuple(args.arch or DEFAULT_ARCHS),
                                args.compiler, args.option, use_cache=not args.no_cache,
                                generated=False)
    except DeviceCompileError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    print(f"{name}: {binary.compiler_version}, {', '.join(binary.archs)}")
    print(format_resources(binary))
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for target in binary.targets:
            (args.output_dir / f"{name}.{target.arch}.cubin").write_bytes(target.cubin)
            (args.output_dir / f"{name}.{target.arch}.ptx").write_text(target.ptx)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "COMPILERS", "COMPILE_STATS", "DEFAULT_ARCHS", "ArchBinary", "CompileStats",
    "CompilerNotFound", "DeviceBinary", "DeviceCompileError", "KernelResources",
    "arch_number", "check_arch", "compile_module", "cubin_arch", "find_nvcc", "format_resources",
    "main", "nvrtc_status", "parse_ptxas_report", "resolve_compiler", "supported_archs",
]
