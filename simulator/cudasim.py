"""netc's CPU CUDA simulator: run the exact CUDA C++ that netc generates on the CPU.

The source is compiled by the host C++ compiler (g++) against ``include/cudasim.h``,
which supplies CUDA's execution model (every GPU thread is a fiber that switches at
``__syncthreads()`` and warp-synchronous operations; blocks run in parallel on OS
threads).  This module is the driver: it compiles (with a cache), loads the shared
object with ctypes, deduces kernel signatures from C++, packs arguments, manages
device buffers and turns every failure into a :class:`SimulatorError`.

Typical use::

    from netc.sim.cudasim import CudaSim
    with CudaSim() as sim:
        mod = sim.load(src, ["vadd"])
        a = sim.alloc(4 * n); sim.upload(a, x)
        mod.launch("vadd", grid=(blocks,), block=(256,), args=[a, b, c, n])
        y = sim.download(c, np.float32, (n,))

Bug-finding modes: ``check_races=True`` runs every launch under three schedules and
compares the results bitwise; ``sanitize=True`` compiles with AddressSanitizer and runs
the kernels in a child process that owns the buffers, so an out-of-bounds access
becomes a SimulatorError instead of memory corruption.  See docs/simulator.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from netc import cache
from netc.diagnostics import CompileError, Diagnostic, MissingDependency

__all__ = [
    "SCHEDULES",
    "CudaModule",
    "CudaSim",
    "DeviceBuffer",
    "ParamType",
    "SimBinary",
    "SimulatorError",
    "parse_signature",
    "rewrite_dynamic_shared",
]

HEADER_PATH = Path(__file__).resolve().parent / "include" / "cudasim.h"
SCHEDULES = ("in_order", "reversed", "shuffled")
_SCHEDULE_CODE = {name: i for i, name in enumerate(SCHEDULES)}
# Bumped whenever the generated shims or compile flags change meaning (cache key).
_DRIVER_VERSION = "cudasim-driver-1"
_ABI_VERSION = 1
_ERRLEN = 16384
_DYN_SHARED_RESERVE = 64 << 20  # must match kDynSharedReserve in cudasim.h
_BUFFER_ALIGN = 256  # cudaMalloc's alignment
_POISON = 0xFF  # fresh buffers: NaN as float, -1 as int

# Launch configuration array layout (CFG_* in cudasim.h).
_CFG_SCHEDULE, _CFG_WORKERS = 7, 9
_CFG_LEN = 12

_BASE_FLAGS = (
    "-std=c++17",
    "-fPIC",
    "-pthread",
    # IEEE results: no contraction of a*b+c into an FMA unless the code calls fmaf.
    "-ffp-contract=off",
    # CUDA code type-puns freely (reinterpret_cast to float4, atomics on bit patterns).
    "-fno-strict-aliasing",
    # Each module keeps its runtime private; no GNU_UNIQUE symbols tying modules
    # together across dlopen.
    "-fvisibility=hidden",
    "-fno-gnu-unique",
    # A frame larger than a page probes each page, so a stack overflow always hits the
    # guard page below the fiber stack (reported as E0704) and never jumps past it.
    "-fstack-clash-protection",
)
# Report undefined functions at build time instead of at load time.
_LINK_FLAGS = ("-shared", "-Wl,-z,defs")
_OPT_FLAGS = ("-O2",)
_ASAN_FLAGS = (
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address",
    # Report and continue, so the error reaches the driver (see asan_report_cb).
    "-fsanitize-recover=address",
)

# CUDA headers kernels commonly include; in the simulator everything they would
# provide comes from the force-included cudasim.h, so they are empty stubs.
_STUB_HEADERS = (
    "cuda.h",
    "cuda_runtime.h",
    "cuda_runtime_api.h",
    "cuda_fp16.h",
    "cuda_bf16.h",
    "device_launch_parameters.h",
    "device_functions.h",
    "math_constants.h",
    "vector_types.h",
    "vector_functions.h",
    "sm_60_atomic_functions.h",
)


class SimulatorError(RuntimeError):
    """A user-level failure of the simulator: compile error, bad launch, kernel bug."""


class CompilerMissing(SimulatorError, MissingDependency):
    """The host C++ compiler the simulator builds kernels with is missing or cannot run."""


class SimulatorLimitError(SimulatorError, CompileError):
    """A launch the simulator stopped at one of its bounds: a diagnostic with a code, exit
    status 1 on the command line (a `CompileError`), and still a `SimulatorError`."""

    code = "E0703"

    def __init__(self, message: str) -> None:
        self.message = message
        CompileError.__init__(self, [Diagnostic(self.code, message)])
        self.args = (message,)  # str() is the message; pickles (from the sanitizer child)

    def located(self, source: str) -> SimulatorLimitError:
        """The same error naming the `.net` line the launch computes (`lenet.net:7`)."""
        if not source:
            return self
        return type(self)(f"{source}: {self.message}")


class SimulatorTimeout(SimulatorLimitError):
    """A launch ran past the simulator's time limit (E0703)."""

    code = "E0703"


class SimulatorStackOverflow(SimulatorLimitError):
    """A simulated GPU thread overflowed its fiber stack (E0704)."""

    code = "E0704"


DEFAULT_TIMEOUT = 600.0
"""Seconds a launch may run in the simulator (`$NETC_SIM_TIMEOUT`, `CudaSim(timeout=...)`)."""

# Return codes of cudasim_launch_<i> and reasons for cudasim_cancel (LAUNCH_*, CANCEL_* in
# cudasim.h).
_LAUNCH_CANCELLED, _LAUNCH_STACK_OVERFLOW = 2, 3
_CANCEL_INTERRUPT, _CANCEL_TIMEOUT = 1, 2
_CANCEL_GRACE = 30.0
"""Seconds to wait for a cancelled launch to stop before giving the module up."""


def _timeout_from_environment() -> float:
    text = os.environ.get("NETC_SIM_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SimulatorError(f"NETC_SIM_TIMEOUT={text!r} is not a positive number of seconds")
    return value


class _LaunchThread:
    """The one thread that makes a backend's launches, so that the caller waits for them in
    Python: with a time limit, and interruptible by Ctrl-C (a thread blocked in a ctypes
    call sees KeyboardInterrupt only when the call returns, which an endless kernel never
    does).  Daemonic: a launch that cannot be stopped does not keep the process alive.
    Hand-over by two locks (cheaper than a Condition): about 10 us per launch."""

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._pending: tuple[Callable[[], int], list[Any], Any] | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _main(self) -> None:
        while True:
            self._go.acquire()
            if self._pending is None:  # stop(): the thread ends, and with it the simulator
                return                 # runtime's per-thread state (fiber stacks)
            call, outcome, done = self._pending
            self._pending = None
            try:
                outcome.append(("ok", call()))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(("error", exc))
            done.release()

    def start(self, call: Callable[[], int]) -> tuple[list[Any], Any]:
        """Run `call` on the launch thread; returns its outcome list (filled when done) and a
        lock that is released then. One call at a time: callers hold the backend's lock."""
        outcome: list[Any] = []
        done = threading.Lock()
        done.acquire()
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="cudasim-launch",
                                                daemon=True)
                self._thread.start()
        self._pending = (call, outcome, done)
        self._go.release()
        return outcome, done

    def stop(self) -> None:
        """End the thread (it must be idle)."""
        with self._start_lock:
            if self._thread is not None and self._thread is not threading.current_thread():
                self._pending = None
                self._go.release()
                self._thread.join()
                self._thread = None


# ----------------------------------------------------------------------------------
# Kernel signatures
# ----------------------------------------------------------------------------------

_INT_RE = re.compile(r"^([iu])(8|16|32|64)$")
_RAW_RE = re.compile(r"^raw<(\d+):(\d+)>$")
_SCALAR_NAMES = {"f32": "float", "f64": "double", "f16": "__half", "bf16": "__nv_bfloat16",
                 "bool": "bool", "void": "void"}


@dataclass(frozen=True)
class ParamType:
    """One kernel parameter, as deduced from the kernel's C++ function type."""

    code: str  # the code reported by the module, e.g. "ptr<f32>", "i64", "raw<16:16>"
    kind: str  # "ptr", "int", "float", "bool" or "raw"
    size: int
    align: int
    signed: bool = False
    pointee: str | None = None  # element code of a pointer parameter

    @property
    def cname(self) -> str:
        """A readable C-like spelling for messages."""
        return _code_cname(self.code)


def _code_cname(code: str) -> str:
    if code.startswith("ptr<") and code.endswith(">"):
        return _code_cname(code[4:-1]) + "*"
    if code in _SCALAR_NAMES:
        return _SCALAR_NAMES[code]
    m = _INT_RE.match(code)
    if m:
        return ("int" if m.group(1) == "i" else "uint") + m.group(2)
    m = _RAW_RE.match(code)
    if m:
        return f"struct({m.group(1)} bytes)"
    return code


def _parse_one(code: str) -> ParamType:
    if code.startswith("ptr<") and code.endswith(">"):
        return ParamType(code, "ptr", 8, 8, pointee=code[4:-1])
    if code in ("f32", "f64", "f16", "bf16"):
        size = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2}[code]
        return ParamType(code, "float", size, size, signed=True)
    if code == "bool":
        return ParamType(code, "bool", 1, 1)
    m = _INT_RE.match(code)
    if m:
        size = int(m.group(2)) // 8
        return ParamType(code, "int", size, size, signed=m.group(1) == "i")
    m = _RAW_RE.match(code)
    if m:
        return ParamType(code, "raw", int(m.group(1)), int(m.group(2)))
    raise SimulatorError(f"unsupported kernel parameter type code {code!r}")


def parse_signature(sig: str) -> list[ParamType]:
    """Parse the comma-separated type codes produced by ``cudasim::detail::signature_of``."""
    if not sig:
        return []
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(sig):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(sig[start:i])
            start = i + 1
    parts.append(sig[start:])
    return [_parse_one(p) for p in parts]


def _element_dtype(code: str | None) -> np.dtype[Any]:
    """numpy dtype used to show the elements a pointer parameter points to."""
    table = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": np.uint16,
             "bool": np.bool_, "void": np.uint8}
    if code is None:
        return np.dtype(np.uint8)
    if code in table:
        return np.dtype(table[code])
    m = _INT_RE.match(code)
    if m:
        return np.dtype(f"{'i' if m.group(1) == 'i' else 'u'}{int(m.group(2)) // 8}")
    if code.startswith("ptr<"):
        return np.dtype(np.uint64)
    m = _RAW_RE.match(code)
    if m:
        return np.dtype(f"V{m.group(1)}")
    return np.dtype(np.uint8)


def _format_element(code: str | None, raw: bytes) -> str:
    dt = _element_dtype(code)
    if dt.kind == "V" or len(raw) < dt.itemsize:
        return raw.hex()
    value = np.frombuffer(raw, dtype=dt)[0]
    if code == "bf16":
        as_f32 = np.array([int(value) << 16], dtype=np.uint32).view(np.float32)[0]
        return repr(float(as_f32))
    if dt.kind == "f":
        return repr(float(value))
    if dt.kind == "b":
        return repr(bool(value))
    return repr(int(value))


def _bf16_bits(value: float) -> int:
    """float -> bfloat16 bits, round to nearest even (as __float2bfloat16)."""
    u = int(np.array([value], dtype=np.float32).view(np.uint32)[0])
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FFF
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


# ----------------------------------------------------------------------------------
# Source rewriting for `extern __shared__ T name[];` (see the header's top comment)
# ----------------------------------------------------------------------------------

_NUMBER_TAIL = re.compile(r"(?:\b|^)\d[\w']*$")


def _blank_non_code(src: str) -> str:
    """Copy of ``src`` with comments, string/char literals and preprocessor lines
    replaced by spaces (newlines kept), so positions map 1:1 to the original."""
    out = list(src)
    n = len(src)
    i = 0
    line_start = True

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if c == "\n":
            line_start = True
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if line_start and c == "#":
            j = i
            while j < n:
                if src[j] == "\n" and src[j - 1] != "\\":
                    break
                j += 1
            blank(i, j)
            i = j
            continue
        line_start = False
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c == '"' and i > 0 and src[i - 1] == "R" and (i < 2 or not (src[i - 2].isalnum() and src[i - 2] not in "uUL8")):
            m = re.match(r'"([^()\\\s]{0,16})\(', src[i:])
            if m:
                close = ")" + m.group(1) + '"'
                j = src.find(close, i + m.end())
                j = n if j < 0 else j + len(close)
                blank(i - 1, j)
                i = j
            else:
                i += 1
        elif c == '"' or (c == "'" and not _NUMBER_TAIL.search(src[max(0, i - 40):i])):
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            blank(i, j)
            i = j
        else:
            i += 1
    return "".join(out)


# A brace opens a function body when the text before it ends with the parameter list,
# possibly followed by qualifiers, attributes' names or a trailing return type.
_FUNC_HEADER = re.compile(r"\)[\s\w:<>*&,\[\]\->]*$")
_CLASS_HEADER = re.compile(r"\b(struct|class|union|enum)\b")


def _function_scope_flags(code: str, positions: Sequence[int]) -> list[bool]:
    """For each position: is it inside a function body?  ``code`` is blanked source."""
    wanted = sorted(set(positions))
    result: dict[int, bool] = {}
    stack: list[bool] = []  # True: this brace opened (or is inside) a function body
    stmt_start = 0
    k = 0
    for i, ch in enumerate(code):
        while k < len(wanted) and wanted[k] <= i:
            result[wanted[k]] = bool(stack and stack[-1])
            k += 1
        if ch == "{":
            if stack and stack[-1]:
                stack.append(True)
            else:
                header = code[stmt_start:i].strip()
                is_func = bool(_FUNC_HEADER.search(header)) or (
                    header != ""
                    and not _CLASS_HEADER.search(header)
                    and not re.search(r"\bnamespace\b|^extern$|=$", header)
                    and bool(re.search(r"\b(const|noexcept|override|final|mutable)$", header))
                )
                stack.append(is_func)
            stmt_start = i + 1
        elif ch == "}":
            if stack:
                stack.pop()
            stmt_start = i + 1
        elif ch == ";":
            stmt_start = i + 1
    for pos in wanted[k:]:
        result[pos] = bool(stack and stack[-1])
    return [result[p] for p in positions]


_ALIGN = r"(?:__align__\s*\(\s*[^()]*\)\s*)"
_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+" + _ALIGN + r"?"
    r"(?P<type>[A-Za-z_][\w:<>,\s*]*?)\s*" + _ALIGN + r"?"
    r"\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;"
)


def rewrite_dynamic_shared(source: str) -> tuple[str, list[str]]:
    """Rewrite ``extern __shared__ T name[];`` for the simulator (same line count).

    Returns the new source and the names declared at namespace scope (those become
    thread_local pointers, which the driver must not treat as static shared memory).
    """
    code = _blank_non_code(source)
    matches = list(_EXTERN_SHARED.finditer(code))
    if not matches:
        return source, []
    in_func = _function_scope_flags(code, [m.start() for m in matches])
    pieces: list[str] = []
    last = 0
    namespace_names: list[str] = []
    for m, inside in zip(matches, in_func):
        ctype = " ".join(m.group("type").split())
        name = m.group("name")
        newlines = source.count("\n", m.start(), m.end())
        decl = f"{ctype}* {name} = ::cudasim::dynamic_shared<{ctype}>();"
        if not inside:
            decl = "static thread_local " + decl
            namespace_names.append(name)
        pieces.append(source[last:m.start()])
        pieces.append(decl + "\n" * newlines)
        last = m.end()
    pieces.append(source[last:])
    return "".join(pieces), namespace_names


# ----------------------------------------------------------------------------------
# Static __shared__ variables: found in the ELF symbol table (thread-local symbols)
# ----------------------------------------------------------------------------------


def _elf_tls_symbols(path: Path) -> list[tuple[str, int, int]]:
    """(name, offset in the TLS block, size) of the defined STT_TLS symbols."""
    data = path.read_bytes()
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []  # not a 64-bit little-endian ELF: no shared-memory poisoning
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + k * shentsize) for k in range(shnum)]
    out: list[tuple[str, int, int]] = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        sym_off, sym_size, strtab = sec[4], sec[5], sections[sec[6]]
        str_off = strtab[4]
        for k in range(sym_size // 24):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from(
                "<IBBHQQ", data, sym_off + 24 * k
            )
            if st_info & 0xF != 6 or st_shndx == 0:  # STT_TLS, defined
                continue
            end = data.index(b"\0", str_off + st_name)
            out.append((data[str_off + st_name:end].decode("ascii", "replace"), st_value, st_size))
    return out


def _local_static_owner(sym: str) -> str | None:
    """Unqualified name of the function owning a function-local static (``_ZZ...``)."""
    if not sym.startswith("_ZZ"):
        return None
    i = 3
    if sym.startswith("L", i):
        i += 1
    nested = sym.startswith("N", i)
    if nested:
        i += 1
        while i < len(sym) and sym[i] in "rVK":
            i += 1
    last: str | None = None
    while i < len(sym):
        if sym[i].isdigit():
            j = i
            while j < len(sym) and sym[j].isdigit():
                j += 1
            length = int(sym[i:j])
            last = sym[j:j + length]
            i = j + length
            if not nested:
                return last
        elif sym.startswith("St", i):
            i += 2
        elif sym[i] == "S":
            j = sym.find("_", i)
            if j < 0:
                return None
            i = j + 1
        else:
            return last  # 'I' (template arguments) or 'E' (end of the nested name)
    return last


def _kernel_base_name(kernel: str) -> str:
    return kernel.split("<", 1)[0].split("::")[-1].strip()


@dataclass
class _SharedLayout:
    anchors: tuple[int, int] | None
    ranges: list[list[tuple[int, int]]]  # per kernel: (offset, size) to poison
    static_bytes: list[int]  # per kernel


def _shared_layout(path: Path, kernels: Sequence[str], dyn_names: Sequence[str]) -> _SharedLayout:
    syms = _elf_tls_symbols(path)
    by_name = {name: off for name, off, _ in syms}
    anchors = None
    if "cudasim_tls_anchor_a" in by_name and "cudasim_tls_anchor_b" in by_name:
        anchors = (by_name["cudasim_tls_anchor_a"], by_name["cudasim_tls_anchor_b"])
    dyn_suffixes = tuple(f"{len(n)}{n}" for n in dyn_names)
    bases = [_kernel_base_name(k) for k in kernels]
    owned: list[list[tuple[int, int]]] = [[] for _ in kernels]
    shared_by_all: list[tuple[int, int]] = []
    for name, off, size in syms:
        if size == 0 or name.startswith(("_ZN7cudasim", "_ZZN7cudasim", "cudasim_", "_ZGV", "_ZTH", "_ZTW", "__tls")):
            continue
        if name in dyn_names or (name.startswith("_Z") and name.rstrip("E").endswith(dyn_suffixes)):
            continue  # a rewritten `extern __shared__` pointer, not shared memory
        owner = _local_static_owner(name)
        idx = [k for k, b in enumerate(bases) if owner is not None and b == owner]
        if idx:
            for k in idx:
                owned[k].append((off, size))
        else:  # namespace scope or a helper function: any kernel may use it
            shared_by_all.append((off, size))
    ranges = [own + shared_by_all for own in owned]
    return _SharedLayout(anchors, ranges, [sum(s for _, s in r) for r in ranges])


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


# ----------------------------------------------------------------------------------
# Backends: the in-process one (ctypes) and its proxy in a child process (sanitize)
# ----------------------------------------------------------------------------------


@dataclass
class _LoadedLib:
    lib: ctypes.CDLL
    kernels: list[str]
    launch_fns: list[Any]
    broken: str | None = None
    """Why the module cannot run launches any more (a launch that could not be stopped)."""


class _LocalBackend:
    """Buffers and modules in this process.  Also runs inside the sanitizer child."""

    def __init__(self) -> None:
        # dlopen(NULL): in the sanitizer child this resolves malloc & co to
        # AddressSanitizer's interposed versions, giving every buffer redzones.
        self._libc = ctypes.CDLL(None)
        self._libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                              ctypes.c_size_t]
        self._libc.posix_memalign.restype = ctypes.c_int
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._libc.free.restype = None
        self._buffers: dict[int, tuple[int, int]] = {}
        self._libs: dict[int, _LoadedLib] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._launcher = _LaunchThread()
        self._launch_lock = threading.Lock()
        self._stuck: str | None = None

    def _new_id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    # ---- buffers
    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        rc = self._libc.posix_memalign(ctypes.byref(ptr), _BUFFER_ALIGN, max(nbytes, 1))
        if rc != 0 or not ptr.value:
            raise SimulatorError(f"cannot allocate a device buffer of {nbytes} bytes")
        ctypes.memset(ptr.value, _POISON, max(nbytes, 1))
        bid = self._new_id()
        self._buffers[bid] = (ptr.value, nbytes)
        return bid

    def free(self, bid: int) -> None:
        addr, _ = self._buffers.pop(bid)
        self._libc.free(addr)

    def _addr(self, bid: int, offset: int, nbytes: int) -> int:
        try:
            addr, size = self._buffers[bid]
        except KeyError:
            raise SimulatorError("device buffer was freed") from None
        if offset < 0 or offset + nbytes > size:
            raise SimulatorError(f"access of {nbytes} bytes at offset {offset} is outside a "
                                 f"{size}-byte device buffer")
        return addr + offset

    def upload(self, bid: int, offset: int, data: np.ndarray[Any, Any]) -> None:
        arr = np.ascontiguousarray(data)
        if arr.nbytes:
            ctypes.memmove(self._addr(bid, offset, arr.nbytes), arr.ctypes.data, arr.nbytes)

    def download(self, bid: int, offset: int, nbytes: int) -> np.ndarray[Any, Any]:
        out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            ctypes.memmove(out.ctypes.data, self._addr(bid, offset, nbytes), nbytes)
        return out

    # ---- modules
    def load(self, path: str, kernels: list[str], anchors: tuple[int, int] | None,
             ranges: list[list[tuple[int, int]]]) -> tuple[int, list[str], bool]:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            raise SimulatorError(f"cannot load the compiled module {path}: {exc}") from None
        lib.cudasim_abi_version.restype = ctypes.c_int
        if lib.cudasim_abi_version() != _ABI_VERSION:
            raise SimulatorError(f"module {path} was built for another simulator ABI")
        lib.cudasim_asan_enabled.restype = ctypes.c_int
        if anchors is not None:
            lib.cudasim_set_tls_layout.argtypes = [ctypes.c_longlong, ctypes.c_longlong]
            lib.cudasim_set_tls_layout(*anchors)
        lib.cudasim_set_shared_ranges.argtypes = [ctypes.c_int, ctypes.c_int,
                                                  ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
        lib.cudasim_switch_count.restype = ctypes.c_ulonglong
        sigs: list[str] = []
        fns: list[Any] = []
        for i in range(len(kernels)):
            sig_fn = getattr(lib, f"cudasim_sig_{i}")
            sig_fn.restype = ctypes.c_char_p
            sigs.append(sig_fn().decode())
            fn = getattr(lib, f"cudasim_launch_{i}")
            fn.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_void_p),
                           ctypes.c_char_p, ctypes.c_longlong]
            fn.restype = ctypes.c_int
            fns.append(fn)
            flat = [v for pair in ranges[i] for v in pair] if i < len(ranges) else []
            arr = (ctypes.c_longlong * max(len(flat), 1))(*flat)
            lib.cudasim_set_shared_ranges(len(kernels), i, arr, len(flat) // 2)
        lib.cudasim_cancel.argtypes = [ctypes.c_int]
        lib.cudasim_cancel.restype = ctypes.c_int
        mid = self._new_id()
        self._libs[mid] = _LoadedLib(lib, list(kernels), fns)
        return mid, sigs, bool(lib.cudasim_asan_enabled())

    def switch_count(self, mid: int) -> int:
        return int(self._libs[mid].lib.cudasim_switch_count())

    def _launch_once(self, mid: int, kidx: int, cfg: Sequence[int], blob: bytes,
                     offsets: Sequence[int], fixups: Sequence[tuple[int, int, int]],
                     kernel: str = "", timeout: float = DEFAULT_TIMEOUT) -> None:
        loaded = self._libs[mid]
        if loaded.broken is not None:
            raise SimulatorError(loaded.broken)
        # 64 spare bytes to align the argument slots to 64 (struct params up to alignas(64)).
        storage = np.zeros(len(blob) + 64, dtype=np.uint8)
        base = (-storage.ctypes.data) % 64
        slots = storage[base:base + len(blob)]
        slots[:] = np.frombuffer(blob, dtype=np.uint8)
        for slot_off, bid, byte_off in fixups:
            addr = 0 if bid == 0 else self._addr(bid, byte_off, 0)
            slots[slot_off:slot_off + 8] = np.frombuffer(struct.pack("<Q", addr), dtype=np.uint8)
        start = slots.ctypes.data
        args = (ctypes.c_void_p * max(len(offsets), 1))(*[start + o for o in offsets])
        cfg_arr = (ctypes.c_longlong * _CFG_LEN)(*cfg)
        err = ctypes.create_string_buffer(_ERRLEN)
        rc = self._bounded(loaded, lambda: loaded.launch_fns[kidx](cfg_arr, args, err, _ERRLEN),
                           kernel or loaded.kernels[kidx], timeout)
        if rc != 0:
            msg = err.value.decode("utf-8", "replace") or "kernel launch failed"
            if rc == _LAUNCH_STACK_OVERFLOW:
                raise SimulatorStackOverflow(
                    f"{msg}; if the kernel is right, give its threads more stack with "
                    "CudaSim(stack_kib=...)")
            raise SimulatorError(msg)

    def _bounded(self, loaded: _LoadedLib, call: Callable[[], int], kernel: str,
                 timeout: float) -> int:
        """`call()` (a launch) on the launch thread; this thread waits at most `timeout`
        seconds and stops it on Ctrl-C."""
        with self._launch_lock:
            if self._stuck is not None:
                raise SimulatorError(self._stuck)
            outcome, done = self._launcher.start(call)
            deadline = time.monotonic() + timeout
            reason = 0
            try:
                while not done.acquire(timeout=min(max(deadline - time.monotonic(), 0.0), 0.25)):
                    if time.monotonic() >= deadline:
                        reason = _CANCEL_TIMEOUT
                        break
            except KeyboardInterrupt:
                reason = _CANCEL_INTERRUPT
            if reason and not self._cancel(loaded, done, reason):
                loaded.broken = self._stuck = (
                    f"kernel `{kernel}` could not be stopped; this simulator cannot run "
                    "launches any more (create a new CudaSim)")
        if reason:
            if reason == _CANCEL_INTERRUPT:
                raise KeyboardInterrupt
            raise SimulatorTimeout(
                f"kernel `{kernel}` did not finish within {timeout:g} s in the CPU simulator (an "
                "endless loop, or far more work than a CPU can simulate); the limit is "
                "$NETC_SIM_TIMEOUT or CudaSim(timeout=...)")
        status, value = outcome[0]
        if status == "error":
            raise value
        return int(value)

    @staticmethod
    def _cancel(loaded: _LoadedLib, done: Any, reason: int) -> bool:
        """Stop the launch; False if it did not stop within `_CANCEL_GRACE` seconds."""
        # Signalled threads stop at once; one that was between two GPU threads when the
        # signal came stops at its next switch, or at the next signal: repeat until done.
        give_up = time.monotonic() + _CANCEL_GRACE
        while time.monotonic() < give_up:
            loaded.lib.cudasim_cancel(reason)
            with contextlib.suppress(KeyboardInterrupt):
                if done.acquire(timeout=0.05):
                    return True
        return False

    def launch(self, mid: int, kidx: int, cfg: list[int], blob: bytes, offsets: list[int],
               fixups: list[tuple[int, int, int]], race: list[tuple[int, int, int, str | None]] | None,
               kernel: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        if race is None:
            self._launch_once(mid, kidx, cfg, blob, offsets, fixups, kernel, timeout)
            return
        self._launch_race_checked(mid, kidx, cfg, blob, offsets, fixups, race, kernel, timeout)

    def _launch_race_checked(self, mid: int, kidx: int, cfg: list[int], blob: bytes,
                             offsets: list[int], fixups: list[tuple[int, int, int]],
                             ptr_args: list[tuple[int, int, int, str | None]], kernel: str,
                             timeout: float = DEFAULT_TIMEOUT) -> None:
        # One snapshot per allocation (several arguments may point into the same one).
        bids = list(dict.fromkeys(bid for _, bid, _, _ in ptr_args if bid != 0))
        snapshot = {b: self.download(b, 0, self._buffers[b][1]) for b in bids}
        results: list[tuple[str, dict[int, np.ndarray[Any, Any]]]] = []
        for sched in SCHEDULES:
            if results:
                for b in bids:
                    self.upload(b, 0, snapshot[b])
            run_cfg = list(cfg)
            run_cfg[_CFG_SCHEDULE] = _SCHEDULE_CODE[sched]
            run_cfg[_CFG_WORKERS] = 1  # fixed block order: only the schedule varies
            try:
                self._launch_once(mid, kidx, run_cfg, blob, offsets, fixups, kernel, timeout)
            except SimulatorLimitError:
                raise
            except SimulatorError as exc:
                raise SimulatorError(f"{exc} (check_races run under schedule {sched})") from None
            results.append((sched, {b: self.download(b, 0, self._buffers[b][1]) for b in bids}))
        first_name, first = results[0]
        for other_name, other in results[1:]:
            for b in bids:
                if np.array_equal(first[b], other[b]):
                    continue
                byte = int(np.flatnonzero(first[b] != other[b])[0])
                raise SimulatorError(_race_message(kernel, ptr_args, b, byte, first[b], other[b],
                                                   first_name, other_name))

    def close(self) -> None:
        if self._stuck is None:  # a launch that could not be stopped keeps its thread
            self._launcher.stop()
        for loaded in self._libs.values():
            with contextlib.suppress(Exception):
                loaded.lib.cudasim_shutdown()
        self._libs.clear()
        for bid in list(self._buffers):
            self.free(bid)


def _race_message(kernel: str, ptr_args: list[tuple[int, int, int, str | None]], bid: int,
                  byte: int, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], sched_a: str,
                  sched_b: str) -> str:
    # Attribute the byte to the first argument pointing at or before it in this buffer.
    candidates = [(arg, off, code) for arg, pb, off, code in ptr_args if pb == bid]
    before = [c for c in candidates if c[1] <= byte]
    arg, off, code = max(before, key=lambda c: (c[1], -c[0])) if before else candidates[0]
    itemsize = _element_dtype(code).itemsize
    rel = byte - off
    if rel >= 0:
        index = rel // itemsize
        start = off + index * itemsize
        where = f"element {index}"
        va = _format_element(code, a[start:start + itemsize].tobytes())
        vb = _format_element(code, b[start:start + itemsize].tobytes())
    else:
        where = f"byte {byte} of its buffer (before the argument's offset)"
        va, vb = str(int(a[byte])), str(int(b[byte]))
    ctype = _code_cname("ptr<" + (code or "void") + ">")
    return (
        f"race detected in kernel {kernel}: results differ between schedules {sched_a} and "
        f"{sched_b}: argument {arg} ({ctype}) first differs "
        f"at {where}: {va} ({sched_a}) vs {vb} ({sched_b}). Threads communicate without a "
        "barrier (missing __syncthreads()/__syncwarp()?) or depend on the order of atomics."
    )


class _ChildBackend:
    """Proxy for a _LocalBackend living in a child process that runs under
    AddressSanitizer (LD_PRELOAD of libasan): the buffers and sanitized modules live
    there, so a memory error cannot corrupt or kill this process."""

    _ASAN_OPTIONS = (
        "detect_leaks=0:halt_on_error=0:abort_on_error=0:allocator_may_return_null=1:"
        "detect_odr_violation=0:handle_segv=1:symbolize=1:print_summary=1:"
        "detect_stack_use_after_return=0:verify_asan_link_order=0"
    )

    def __init__(self, cxx: str) -> None:
        libasan = _asan_runtime(cxx)
        # The child's stderr (AddressSanitizer's output if it dies); lives as long as
        # the backend and is closed in close().
        self._stderr = tempfile.TemporaryFile(prefix="netc-cudasim-asan-")  # noqa: SIM115
        c_read, p_write = os.pipe()
        p_read, c_write = os.pipe()
        env = dict(os.environ)
        env["LD_PRELOAD"] = libasan + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":" + self._ASAN_OPTIONS).lstrip(":")
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        code = ("import sys; from netc.sim.cudasim import _child_main; "
                f"_child_main({c_read}, {c_write})")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(c_read, c_write), stdin=subprocess.DEVNULL,
                stderr=self._stderr, env=env,
            )
        finally:
            os.close(c_read)
            os.close(c_write)
        self._out = Connection(p_write, readable=False)
        self._in = Connection(p_read, writable=False)
        self._dead: str | None = None
        self._lock = threading.Lock()
        self._call("ping")

    def _stderr_tail(self, limit: int = 12000) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        return text[-limit:].strip()

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._dead is not None:
                raise SimulatorError(self._dead)
            try:
                self._out.send((method, args))
                if method == "launch":
                    self._await_launch(kernel=args[7], timeout=args[8])
                status, payload = self._in.recv()
            except (EOFError, OSError):
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                what = f"during {method}" + (f" of kernel {args[7]}" if method == "launch" else "")
                self._dead = (
                    "the sanitizer process (which owns this CudaSim's buffers) is gone after a "
                    "fatal error; create a new CudaSim"
                )
                raise SimulatorError(
                    f"the sanitizer process died (exit status {self._proc.returncode}) {what}:\n"
                    f"{self._stderr_tail()}"
                ) from None
        if status == "ok":
            return payload
        raise payload

    def _await_launch(self, kernel: str, timeout: float) -> None:
        """Wait for the child's answer to a launch at most `timeout` seconds; on Ctrl-C or
        the time limit the child (and the buffers it owns) goes."""
        deadline = time.monotonic() + timeout
        try:
            while not self._in.poll(min(max(deadline - time.monotonic(), 0.0), 0.25)):
                if time.monotonic() >= deadline:
                    self._stop_child(f"kernel `{kernel}` ran past the time limit")
                    raise SimulatorTimeout(
                        f"kernel `{kernel}` did not finish within {timeout:g} s in the CPU "
                        "simulator (an endless loop, or far more work than a CPU can "
                        "simulate); the limit is $NETC_SIM_TIMEOUT or CudaSim(timeout=...)")
        except KeyboardInterrupt:
            self._stop_child(f"kernel `{kernel}` was interrupted")
            raise

    def _stop_child(self, why: str) -> None:
        self._proc.kill()
        self._proc.wait()
        self._dead = (f"{why}, and the sanitizer process (which owns this CudaSim's buffers) "
                      "was stopped; create a new CudaSim")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self._call, name)

    def close(self) -> None:
        if self._dead is None:
            with contextlib.suppress(SimulatorError):
                self._call("close")
            self._dead = "this CudaSim is closed"
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


def _child_main(read_fd: int, write_fd: int) -> None:
    """Entry point of the sanitizer child process (see _ChildBackend)."""
    import signal

    # Ctrl-C reaches the whole process group: the parent decides what stops (see
    # _ChildBackend._await_launch).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn_in = Connection(read_fd, writable=False)
    conn_out = Connection(write_fd, readable=False)
    backend = _LocalBackend()
    while True:
        try:
            method, args = conn_in.recv()
        except (EOFError, OSError):
            break
        try:
            if method == "ping":
                result: Any = None
            elif method == "close":
                backend.close()
                conn_out.send(("ok", None))
                break
            else:
                result = getattr(backend, method)(*args)
            conn_out.send(("ok", result))
        except SimulatorError as exc:
            conn_out.send(("err", exc))
        except Exception as exc:
            conn_out.send(("err", SimulatorError(f"internal error in the sanitizer process: {exc!r}")))
    backend.close()


# ----------------------------------------------------------------------------------
# Public objects
# ----------------------------------------------------------------------------------


class DeviceBuffer:
    """A device allocation (or a byte range of one, see :meth:`view`)."""

    def __init__(self, sim: CudaSim, bid: int, nbytes: int, offset: int = 0,
                 root: DeviceBuffer | None = None) -> None:
        self._sim = sim
        self._id = bid
        self.nbytes = nbytes
        self.offset = offset
        self._root = root if root is not None else self
        self._freed = False

    def view(self, offset: int, nbytes: int | None = None) -> DeviceBuffer:
        """A sub-range starting ``offset`` bytes in (passed to kernels as a pointer)."""
        if nbytes is None:
            nbytes = self.nbytes - offset
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise SimulatorError(f"view [{offset}, {offset + nbytes}) outside a {self.nbytes}-byte buffer")
        return DeviceBuffer(self._sim, self._id, nbytes, self.offset + offset, self._root)

    @property
    def freed(self) -> bool:
        return self._root._freed

    def __repr__(self) -> str:
        extra = f" at offset {self.offset}" if self.offset else ""
        return f"<DeviceBuffer {self.nbytes} bytes{extra}{' (freed)' if self.freed else ''}>"


_SCALAR_PACK = {"i8": "<b", "u8": "<B", "i16": "<h", "u16": "<H", "i32": "<i", "u32": "<I",
                "i64": "<q", "u64": "<Q"}


class CudaModule:
    """A compiled and loaded CUDA source; launch its kernels by name."""

    def __init__(self, sim: CudaSim, name: str, path: Path, kernels: list[str], mid: int,
                 signatures: list[list[ParamType]], layout: _SharedLayout, from_cache: bool) -> None:
        self._sim = sim
        self.name = name
        self.path = path
        self.kernels = list(kernels)
        self._mid = mid
        self._signatures = {k: s for k, s in zip(kernels, signatures)}
        self._index = {k: i for i, k in enumerate(kernels)}
        self._static_shared = {k: layout.static_bytes[i] for i, k in enumerate(kernels)}
        self.from_cache = from_cache

    def signature(self, kernel: str) -> list[ParamType]:
        """The parameter types of ``kernel`` (deduced from its C++ declaration)."""
        return list(self._signatures[self._kernel(kernel)])

    def static_shared_bytes(self, kernel: str) -> int:
        """Bytes of static ``__shared__`` memory attributed to ``kernel``."""
        return self._static_shared[self._kernel(kernel)]

    def switch_count(self) -> int:
        """Fiber context switches performed so far by this module's launches."""
        return int(self._sim._backend_call("switch_count", self._mid))

    def _kernel(self, kernel: str) -> str:
        if kernel not in self._index:
            raise SimulatorError(
                f"module {self.name!r} has no kernel {kernel!r} (loaded kernels: "
                f"{', '.join(self.kernels)})"
            )
        return kernel

    def launch(self, kernel: str, grid: int | Sequence[int] = (1, 1, 1),
               block: int | Sequence[int] = (1, 1, 1), shared_bytes: int = 0,
               args: Sequence[Any] = ()) -> None:
        """Run ``kernel<<<grid, block, shared_bytes>>>(*args)`` to completion."""
        sim = self._sim
        sim._check_open()
        kernel = self._kernel(kernel)
        g = _dims("grid", kernel, grid, (0x7FFFFFFF, 65535, 65535))
        b = _dims("block", kernel, block, (1024, 1024, 64))
        if b[0] * b[1] * b[2] > 1024:
            raise SimulatorError(
                f"kernel {kernel}: block {b} has {b[0] * b[1] * b[2]} threads; the limit is 1024"
            )
        if not isinstance(shared_bytes, (int, np.integer)) or isinstance(shared_bytes, bool) or shared_bytes < 0:
            raise SimulatorError(f"kernel {kernel}: shared_bytes must be a non-negative integer")
        static = self._static_shared[kernel]
        if int(shared_bytes) + static > sim.shared_mem_limit:
            raise SimulatorError(
                f"kernel {kernel}: {int(shared_bytes)} bytes of dynamic shared memory plus {static} "
                f"bytes of static shared memory exceed the limit of {sim.shared_mem_limit} bytes"
            )
        params = self._signatures[kernel]
        blob, offsets, fixups, ptr_args = _pack_args(kernel, params, args, sim)
        cfg = [g[0], g[1], g[2], b[0], b[1], b[2], int(shared_bytes),
               _SCHEDULE_CODE[sim.schedule], sim.seed & 0x7FFFFFFFFFFFFFFF, sim.workers,
               sim.stack_kib * 1024, self._index[kernel]]
        race = ptr_args if sim.check_races else None
        sim._backend_call("launch", self._mid, self._index[kernel], cfg, blob, offsets, fixups,
                          race, kernel, sim.timeout)

    def __repr__(self) -> str:
        return f"<CudaModule {self.name!r} kernels={self.kernels}>"


def _dims(what: str, kernel: str, value: int | Sequence[int], limits: tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        items: list[object] = [value]
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        items = list(value)
    else:
        raise SimulatorError(f"kernel {kernel}: {what} must be an int or a tuple of 1-3 ints, got {value!r}")
    dims: list[int] = []
    for v in items:
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise SimulatorError(f"kernel {kernel}: {what} must hold integers, got {value!r}")
        dims.append(int(v))
    if not 1 <= len(dims) <= 3:
        raise SimulatorError(f"kernel {kernel}: {what} must have 1 to 3 dimensions, got {value!r}")
    dims += [1] * (3 - len(dims))
    for axis, (d, lim) in enumerate(zip(dims, limits)):
        if d < 1 or d > lim:
            raise SimulatorError(
                f"kernel {kernel}: {what} dimension {'xyz'[axis]} = {d} is out of range [1, {lim}]"
            )
    return dims[0], dims[1], dims[2]


def _pack_args(kernel: str, params: list[ParamType], args: Sequence[Any], sim: CudaSim
               ) -> tuple[bytes, list[int], list[tuple[int, int, int]], list[tuple[int, int, int, str | None]]]:
    """Lay the arguments out in aligned slots; pointers become fixups resolved by the
    backend (which owns the buffers)."""
    if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
        raise SimulatorError(f"kernel {kernel}: args must be a sequence")
    args = list(args)
    if len(args) != len(params):
        sig = ", ".join(p.cname for p in params)
        raise SimulatorError(
            f"kernel {kernel}({sig}) takes {len(params)} argument{'s' if len(params) != 1 else ''} "
            f"but {len(args)} were given"
        )
    blob = bytearray()
    offsets: list[int] = []
    fixups: list[tuple[int, int, int]] = []
    ptr_args: list[tuple[int, int, int, str | None]] = []
    for i, (p, a) in enumerate(zip(params, args)):
        align = max(16, p.align)
        blob.extend(b"\0" * ((-len(blob)) % align))
        offsets.append(len(blob))

        def bad(expected: str, a: Any = a, p: ParamType = p, i: int = i) -> SimulatorError:
            return SimulatorError(
                f"kernel {kernel}: argument {i} ({p.cname}) expects {expected}, got "
                f"{type(a).__name__} {_short_repr(a)}"
            )

        if p.kind == "ptr":
            if a is None:
                fixups.append((len(blob), 0, 0))
                ptr_args.append((i, 0, 0, p.pointee))
            elif isinstance(a, DeviceBuffer):
                if a._sim is not sim:
                    raise SimulatorError(f"kernel {kernel}: argument {i} is a buffer of another CudaSim")
                if a.freed:
                    raise SimulatorError(f"kernel {kernel}: argument {i} is a freed buffer")
                fixups.append((len(blob), a._id, a.offset))
                ptr_args.append((i, a._id, a.offset, p.pointee))
            else:
                raise bad("a DeviceBuffer (or None)")
            blob.extend(b"\0" * 8)
        elif p.kind in ("int", "bool"):
            if isinstance(a, (DeviceBuffer, float, np.floating)) or not isinstance(a, (int, np.integer, np.bool_)):
                raise bad("an integer" if p.kind == "int" else "a bool")
            v = int(a)
            if p.kind == "bool":
                if v not in (0, 1):
                    raise bad("a bool")
                blob.extend(struct.pack("<B", v))
            else:
                bits = p.size * 8
                lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.signed else (0, (1 << bits) - 1)
                if not lo <= v <= hi:
                    raise SimulatorError(
                        f"kernel {kernel}: argument {i} ({p.cname}) value {v} is out of range "
                        f"[{lo}, {hi}]"
                    )
                blob.extend(struct.pack(_SCALAR_PACK[p.code], v))
        elif p.kind == "float":
            if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, float, np.integer, np.floating)):
                raise bad("a float")
            with np.errstate(over="ignore"):
                if p.code == "f32":
                    blob.extend(np.float32(a).tobytes())
                elif p.code == "f64":
                    blob.extend(np.float64(a).tobytes())
                elif p.code == "f16":
                    blob.extend(np.float16(a).tobytes())
                else:
                    blob.extend(struct.pack("<H", _bf16_bits(float(a))))
        else:  # raw struct passed by value
            if isinstance(a, np.ndarray | np.void):
                data = a.tobytes()
            elif isinstance(a, (bytes, bytearray, memoryview)):
                data = bytes(a)
            else:
                raise bad(f"bytes or a numpy value of {p.size} bytes")
            if len(data) != p.size:
                raise bad(f"exactly {p.size} bytes")
            blob.extend(data)
    return bytes(blob), offsets, fixups, ptr_args


def _short_repr(a: Any) -> str:
    r = repr(a)
    return r if len(r) <= 60 else r[:57] + "..."


@functools.cache
def driver_id() -> str:
    """This simulator's identity for a compiled module: the driver version and a digest of
    cudasim.h (whose runtime half is linked into every module)."""
    import hashlib

    return f"{_DRIVER_VERSION}+{hashlib.sha256(_header_text().encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class SimBinary:
    """A module compiled for the simulator: a shared library and what loading it needs."""

    name: str
    path: str
    """The shared library (in the compile cache, or an artifact's copy of it)."""
    kernels: tuple[str, ...]
    dynamic_shared: tuple[str, ...]
    """The `extern __shared__` arrays the source rewrite found (their storage is per block)."""
    sanitize: bool
    driver: str
    """The simulator it was built for (`driver_id()`: its version and header digest)."""
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        """What an artifact records beside the library's bytes (the path is not kept)."""
        return {"name": self.name, "kernels": list(self.kernels),
                "dynamic_shared": list(self.dynamic_shared), "sanitize": self.sanitize,
                "driver": self.driver}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str) -> SimBinary:
        return cls(str(data["name"]), path, tuple(data["kernels"]),
                   tuple(data["dynamic_shared"]), bool(data["sanitize"]), str(data["driver"]))


class CudaSim:
    """The CPU CUDA simulator.

    Parameters
    ----------
    schedule:
        Order in which the fibers of a block are resumed between synchronisation
        points (and the order blocks are handed out): ``"in_order"``, ``"reversed"``
        or ``"shuffled"`` (seeded by ``seed``; a new permutation for every pass).
    seed:
        Seed of the shuffled schedule.
    workers:
        OS threads running blocks in parallel (default ``os.cpu_count()``).
    sanitize:
        Compile with AddressSanitizer and run kernels in a child process; invalid
        global-memory accesses raise SimulatorError with the sanitizer's report.
    check_races:
        Run every launch under the in_order, reversed and shuffled schedules (one
        worker, buffers restored between runs) and require bitwise-identical results.
    stack_kib:
        Stack size of each fiber (GPU thread), in KiB (default 128; at least 256
        with ``sanitize``).
    shared_mem_limit:
        Maximum static + dynamic shared memory per block in bytes (default 227 KiB,
        as on sm_90).
    cxx:
        The host C++ compiler (default ``$NETC_CXX`` or ``g++``).
    cache_dir:
        Root of the compile cache (default: see ``netc.cache``).
    timeout:
        Seconds one launch may run before it is stopped with `SimulatorTimeout` (E0703);
        default ``$NETC_SIM_TIMEOUT``, else 600.  Ctrl-C stops a launch at any time.
    """

    def __init__(self, schedule: str = "in_order", seed: int = 0, workers: int | None = None,
                 sanitize: bool = False, check_races: bool = False, *, stack_kib: int = 128,
                 shared_mem_limit: int = 227 * 1024, cxx: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 timeout: float | None = None) -> None:
        if schedule not in _SCHEDULE_CODE:
            raise SimulatorError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not isinstance(seed, (int, np.integer)):
            raise SimulatorError("seed must be an integer")
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, (int, np.integer)) or not 1 <= workers <= 256:
            raise SimulatorError("workers must be an integer in [1, 256]")
        if not isinstance(stack_kib, int) or not 16 <= stack_kib <= 65536:
            raise SimulatorError("stack_kib must be an integer in [16, 65536]")
        if not isinstance(shared_mem_limit, int) or not 0 <= shared_mem_limit <= _DYN_SHARED_RESERVE:
            raise SimulatorError(f"shared_mem_limit must be in [0, {_DYN_SHARED_RESERVE}]")
        if timeout is None:
            timeout = _timeout_from_environment()
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not 0 < timeout < float("inf")):
            raise SimulatorError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.schedule = schedule
        self.seed = int(seed)
        self.workers = int(workers)
        self.sanitize = bool(sanitize)
        self.check_races = bool(check_races)
        self.stack_kib = max(stack_kib, 256) if sanitize else stack_kib
        self.shared_mem_limit = shared_mem_limit
        self.cxx = cxx or os.environ.get("NETC_CXX") or "g++"
        self._cache_dir = cache_dir
        self._closed = False
        self._buffers: list[DeviceBuffer] = []
        self._backend: Any = _ChildBackend(self.cxx) if self.sanitize else _LocalBackend()

    # ---- lifecycle
    def close(self) -> None:
        """Free every buffer, stop worker threads (and the sanitizer process)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(SimulatorError):
            self._backend.close()

    def __enter__(self) -> CudaSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SimulatorError("this CudaSim is closed")

    def _backend_call(self, method: str, *args: Any) -> Any:
        self._check_open()
        return getattr(self._backend, method)(*args)

    # ---- compilation
    def compile_flags(self) -> list[str]:
        """The compiler flags used for modules (before the user's ``options``)."""
        return [*_BASE_FLAGS, *(_ASAN_FLAGS if self.sanitize else _OPT_FLAGS)]

    def load(self, source: str, kernels: Sequence[str], *, options: Sequence[str] = (),
             name: str = "module") -> CudaModule:
        """Compile ``source`` (cached) and load it; ``kernels`` are the names to launch.
        The same as ``load_binary(build(...))``."""
        return self.load_binary(self.build(source, kernels, options=options, name=name))

    def build(self, source: str, kernels: Sequence[str], *, options: Sequence[str] = (),
              name: str = "module") -> SimBinary:
        """Compile ``source`` into a shared library for this simulator (cached): the
        simulator's counterpart of a cubin. Nothing is loaded."""
        self._check_open()
        try:
            return self._build(source, kernels, options, name)
        except (cache.CacheError, OSError) as exc:
            raise SimulatorError(f"cannot build module {name!r}: {exc}") from None

    def load_binary(self, binary: SimBinary, kernels: Sequence[str] | None = None) -> CudaModule:
        """Load a module that ``build`` made (now or earlier: an artifact keeps its library);
        compiles nothing. ``kernels`` must be among the binary's (default: all of them)."""
        self._check_open()
        names = list(binary.kernels if kernels is None else kernels)
        unknown = [k for k in names if k not in binary.kernels]
        if unknown:
            raise SimulatorError(f"module {binary.name!r} has no kernel {unknown[0]!r}")
        if binary.sanitize != self.sanitize:
            raise SimulatorError(
                f"module {binary.name!r} was built {'with' if binary.sanitize else 'without'} "
                f"the address sanitizer; this simulator runs "
                f"{'with' if self.sanitize else 'without'} it")
        if binary.driver != driver_id():
            raise SimulatorError(f"module {binary.name!r} was built for simulator "
                                 f"{binary.driver}, this is {driver_id()}")
        so_path = Path(binary.path)
        try:
            layout = _shared_layout(so_path, list(binary.kernels), binary.dynamic_shared)
        except (OSError, ValueError, struct.error) as exc:
            raise SimulatorError(f"cannot read the compiled module {so_path}: {exc}") from None
        mid, sigs, asan = self._backend.load(str(so_path), list(binary.kernels), layout.anchors,
                                             layout.ranges)
        if asan != self.sanitize:
            raise SimulatorError(f"module {so_path} has the wrong sanitizer setting")
        signatures = [parse_signature(s) for s in sigs]
        return CudaModule(self, binary.name, so_path, list(binary.kernels), mid, signatures,
                          layout, binary.cached)

    def _build(self, source: str, kernels: Sequence[str], options: Sequence[str],
               name: str) -> SimBinary:
        if not isinstance(source, str):
            raise SimulatorError(f"load() needs the CUDA source as a str, got {type(source).__name__}")
        if isinstance(kernels, str):
            kernels = [kernels]
        kernels = list(kernels)
        if not kernels:
            raise SimulatorError("load() needs at least one kernel name")
        for k in kernels:
            if not isinstance(k, str) or not _KERNEL_NAME_RE.match(k):
                raise SimulatorError(f"invalid kernel name {k!r}")
        if len(set(kernels)) != len(kernels):
            raise SimulatorError("duplicate kernel names in load()")
        options = [str(o) for o in options]
        rewritten, dyn_names = rewrite_dynamic_shared(source)
        unit = rewritten + _shims(kernels)
        header = _header_text()
        flags = self.compile_flags()
        version = _compiler_version(self.cxx)
        include_dir = _stub_include_dir(self._cache_dir)
        key_parts = [_DRIVER_VERSION, unit, "\0".join(flags), "\0".join(options), self.cxx,
                     version, header]
        key = cache.cache_key("cudasim", key_parts)
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "module"
        src_dir = cache.private_subdirectory("cudasim-src", self._cache_dir)
        src_path = src_dir / f"{key[:24]}-{safe_name}.cu"
        _write_if_different(src_path, unit.encode("utf-8"))
        built: list[bool] = []

        def build(out: Path) -> None:
            # Only needed (and verified) when the module itself is not cached.
            runtime_obj = self._runtime_object(flags, version, header)
            include = self._precompiled_header(flags, version, header)
            cmd = [self.cxx, *flags, *_LINK_FLAGS, "-I", str(include_dir), "-include",
                   str(include), "-x", "c++", str(src_path), "-x", "none", str(runtime_obj),
                   *options, "-o", str(out)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SimulatorError(f"cannot run {self.cxx}: {exc}\ncommand: {shlex.join(cmd)}") from None
            if proc.returncode != 0:
                # The reproducer writes its output outside the cache.
                repro = [*cmd[:-1], os.path.join(tempfile.gettempdir(), f"netc-cudasim-{safe_name}.so")]
                raise SimulatorError(_compile_error_message(name, kernels, proc.stderr, repro))
            built.append(True)

        so_path = cache.cached_build("cudasim", key_parts, build, ".so", root=self._cache_dir)
        return SimBinary(name, str(so_path), tuple(kernels), tuple(dyn_names), self.sanitize,
                         driver_id(), cached=not built)

    def _runtime_object(self, flags: list[str], version: str, header: str) -> Path:
        """The runtime half of cudasim.h (-DCUDASIM_IMPLEMENTATION), compiled once per
        compiler, flags and header version and linked into every module."""

        def build(out: Path) -> None:
            cmd = [self.cxx, *flags, "-DCUDASIM_IMPLEMENTATION", "-c", "-x", "c++",
                   str(HEADER_PATH), "-o", str(out)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SimulatorError(f"cannot run {self.cxx}: {exc}") from None
            if proc.returncode != 0:
                raise SimulatorError(
                    f"compiling the simulator runtime failed:\n{proc.stderr.strip()}\n"
                    f"reproduce with:\n  {shlex.join(cmd)}"
                )

        key_parts = [_DRIVER_VERSION, "\0".join(flags), self.cxx, version, header]
        return cache.cached_build("cudasim-rt", key_parts, build, ".o", root=self._cache_dir)

    def _precompiled_header(self, flags: list[str], version: str, header: str) -> Path:
        """A copy of cudasim.h with a GCC precompiled header next to it (halves the
        compile time of a module).  g++ ignores a .gch that does not fit the final
        command line (other -D/-O options) and reads the header text instead; if the
        .gch cannot be built at all, the plain header is used."""
        key_parts = [_DRIVER_VERSION, "\0".join(flags), self.cxx, version, header]
        copy = cache.entry_path("cudasim-pch", key_parts, ".h", root=self._cache_dir)
        _write_if_different(copy, header.encode("utf-8"))

        def build(out: Path) -> None:
            cmd = [self.cxx, *flags, "-x", "c++-header", str(copy), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise SimulatorError(proc.stderr.strip())

        try:
            cache.cached_build("cudasim-pch", key_parts, build, ".h.gch", root=self._cache_dir)
        except (SimulatorError, OSError, subprocess.TimeoutExpired):
            return HEADER_PATH
        return copy

    # ---- buffers
    def alloc(self, nbytes: int) -> DeviceBuffer:
        """A device buffer of ``nbytes`` bytes, filled with 0xFF (NaN/-1) until written."""
        self._check_open()
        if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 0:
            raise SimulatorError(f"alloc() needs a non-negative integer size, got {nbytes!r}")
        bid = self._backend.alloc(int(nbytes))
        buf = DeviceBuffer(self, bid, int(nbytes))
        self._buffers.append(buf)
        return buf

    def _own(self, buf: Any, what: str) -> DeviceBuffer:
        if not isinstance(buf, DeviceBuffer) or buf._sim is not self:
            raise SimulatorError(f"{what}: expected a DeviceBuffer of this CudaSim, got {type(buf).__name__}")
        if buf.freed:
            raise SimulatorError(f"{what}: the buffer was freed")
        return buf

    def upload(self, buf: DeviceBuffer, array: Any) -> None:
        """Copy a numpy array (C order) into the buffer; it must fit."""
        self._check_open()
        buf = self._own(buf, "upload")
        arr = np.ascontiguousarray(array)
        if arr.dtype.hasobject:
            raise SimulatorError("upload: the array holds Python objects, not numbers")
        if arr.nbytes > buf.nbytes:
            raise SimulatorError(f"upload: {arr.nbytes} bytes do not fit in a {buf.nbytes}-byte buffer")
        self._backend.upload(buf._id, buf.offset, arr.reshape(-1).view(np.uint8))

    def download(self, buf: DeviceBuffer, dtype: Any, shape: int | Sequence[int]) -> np.ndarray[Any, Any]:
        """A new array of ``dtype`` and ``shape`` read from the start of the buffer."""
        self._check_open()
        buf = self._own(buf, "download")
        dt = np.dtype(dtype)
        shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        if nbytes > buf.nbytes:
            raise SimulatorError(f"download: {shp} of {dt} needs {nbytes} bytes; the buffer has {buf.nbytes}")
        raw = self._backend.download(buf._id, buf.offset, nbytes)
        return np.asarray(raw, dtype=np.uint8).view(dt).reshape(shp).copy()

    def free(self, buf: DeviceBuffer) -> None:
        """Release a buffer (buffers are also released by close())."""
        self._check_open()
        buf = self._own(buf, "free")
        if buf._root is not buf:
            raise SimulatorError("free: pass the buffer returned by alloc(), not a view")
        self._backend.free(buf._id)
        buf._freed = True
        self._buffers.remove(buf)


def _compile_error_message(name: str, kernels: Sequence[str], stderr: str, cmd: list[str]) -> str:
    text = stderr.strip()
    if len(text) > 20000:
        text = text[:20000] + "\n[... output truncated ...]"
    hint = ""
    if "<cudasim-shims>" in text:
        hint = (
            "\nnote: the error is in the launch shims the simulator appends for the requested "
            f"kernels ({', '.join(kernels)}): each must name a __global__ void function defined "
            "in the source (a unique, non-overloaded function; for a template give its "
            "arguments, e.g. kernel<float>)."
        )
    return (
        f"compiling CUDA module {name!r} for the simulator failed:\n{text}{hint}\n"
        f"reproduce with:\n  {shlex.join(cmd)}"
    )

