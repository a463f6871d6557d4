"""What a device compile produces: compiled images per architecture, their resource usage
(ptxas' report, parsed), the compile errors, and architecture names and cubin headers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from netc.text import format_table

Compiler = Literal["auto", "nvrtc", "nvcc"]
COMPILERS: tuple[str, ...] = ("auto", "nvrtc", "nvcc")
DEFAULT_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")

_ARCH = re.compile(r"^sm_(\d+)([af]?)$")


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


def format_resources(binary: DeviceBinary) -> str:
    rows = [("kernel", "arch", "regs", "smem", "stack", "spill st", "spill ld", "cmem")]
    for target in binary.targets:
        for usage in target.resources:
            rows.append((usage.kernel, usage.arch, str(usage.registers),
                         str(usage.shared_static_bytes), str(usage.stack_frame_bytes),
                         str(usage.spill_store_bytes), str(usage.spill_load_bytes),
                         str(usage.constant_total_bytes)))
    return "\n".join(format_table(rows, right=range(2, len(rows[0])), rule=False))
