"""netc's CPU CUDA simulator: run the exact CUDA C++ that netc generates on the CPU.

The source is compiled by the host C++ compiler (g++) against ``include/cudasim.h``,
which supplies CUDA's execution model (every GPU thread is a fiber that switches at
``__syncthreads()`` and warp-synchronous operations; blocks run in parallel on OS
threads).  This module is the driver: it compiles (with a cache), loads the shared
object with ctypes, deduces kernel signatures from C++, packs arguments, manages
device buffers and turns every failure into a :class:`SimulatorError`.

Typical use::

    from netc.sim import CudaSim
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
import functools
import os
import re
import shlex
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netc import cache
from netc.sim.backends import (
    _ChildBackend,
    _LocalBackend,
)
from netc.sim.build import (
    _KERNEL_NAME_RE,
    _compiler_version,
    _header_text,
    _shims,
    _stub_include_dir,
    _write_if_different,
)
from netc.sim.elf import (
    _shared_layout,
    _SharedLayout,
)
from netc.sim.protocol import (
    _ASAN_FLAGS,
    _BASE_FLAGS,
    _CONTRACT_FLAGS,
    _DRIVER_VERSION,
    _DYN_SHARED_RESERVE,
    _ISA_TAG,
    _LINK_FLAGS,
    _OPT_FLAGS,
    _SCHEDULE_CODE,
    HEADER_PATH,
    SCHEDULES,
    SimulatorError,
    _timeout_from_environment,
)
from netc.sim.signatures import (
    ParamType,
    _bf16_bits,
    parse_signature,
)
from netc.sim.source import (
    rewrite_dynamic_shared,
)

__all__ = ["CudaModule", "CudaSim", "DeviceBuffer", "SimBinary", "driver_id"]


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
    """This simulator's identity for a compiled module: the driver version, a digest of
    cudasim.h (whose runtime half is linked into every module) and the instruction set the
    module needs (`protocol._contraction_flags`)."""
    import hashlib

    digest = hashlib.sha256(_header_text().encode()).hexdigest()[:16]
    return f"{_DRIVER_VERSION}+{digest}+{_ISA_TAG}"


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
    """The simulator it was built for (`driver_id()`: its version, header digest and ISA)."""
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
        return [*_BASE_FLAGS, *_CONTRACT_FLAGS, *(_ASAN_FLAGS if self.sanitize else _OPT_FLAGS)]

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
