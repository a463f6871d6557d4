"""Where kernels run: in this process through ctypes, or (with `sanitize=True`) in a child
process built with AddressSanitizer that owns the buffers."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from netc.sim.build import (
    _asan_runtime,
)
from netc.sim.protocol import (
    _ABI_VERSION,
    _BUFFER_ALIGN,
    _CANCEL_GRACE,
    _CANCEL_INTERRUPT,
    _CANCEL_TIMEOUT,
    _CFG_LEN,
    _CFG_SCHEDULE,
    _CFG_WORKERS,
    _ERRLEN,
    _LAUNCH_STACK_OVERFLOW,
    _POISON,
    _SCHEDULE_CODE,
    DEFAULT_TIMEOUT,
    SCHEDULES,
    SimulatorError,
    SimulatorLimitError,
    SimulatorStackOverflow,
    SimulatorTimeout,
    _LaunchThread,
)
from netc.sim.signatures import (
    _code_cname,
    _element_dtype,
    _format_element,
)

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
        code = ("import sys; from netc.sim.backends import _child_main; "
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
