"""The simulator's contract with its header (`include/cudasim.h`): flags, the launch
configuration layout, return codes, and the errors every part raises."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netc.diagnostics import CompileError, Diagnostic, MissingDependency

HEADER_PATH = Path(__file__).resolve().parent / "include" / "cudasim.h"
SCHEDULES = ("in_order", "reversed", "shuffled")
_SCHEDULE_CODE = {name: i for i, name in enumerate(SCHEDULES)}
# Bumped whenever the generated shims or compile flags change meaning (cache key).
_DRIVER_VERSION = "cudasim-driver-2"
_ABI_VERSION = 2
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
    # a*b+c contracts into one FMA as nvcc's default (-fmad=true) contracts it; see
    # _contraction_flags for what this does and does not guarantee.
    "-ffp-contract=fast",
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


def _contraction_flags(machine: str, cpu_flags: str) -> tuple[tuple[str, ...], str]:
    """The flags that let the host compiler contract like the GPU, and a tag naming the
    instruction set the module then needs (part of `driver_id`, so a module built for FMA
    is refused, not crashed, on a CPU without it).

    What "contraction matching the GPU's" means here.  nvcc contracts by default
    (`-fmad=true`): a product that feeds an addition becomes one FFMA, rounded once.  g++
    with `-ffp-contract=fast` does the same on a CPU with FMA instructions (x86-64 needs
    `-mfma`; aarch64 always has them), and `fmaf` becomes one instruction instead of a
    libm call.  Guaranteed, bit for bit with the GPU: `fmaf`/`__fmaf_rn` (always fused),
    `__fmul_rn`/`__fadd_rn`/`__fsub_rn` (never fused: cudasim.h hides their operands and
    result from g++), +, -, *, / and sqrtf (IEEE, round to nearest even), and an expression
    whose only contraction is one product feeding one addition (`a * b + c` where the
    product has no other use).  Not guaranteed: which product of `a * b + c * d` fuses
    (the compilers may pick differently), a product with several uses (nvcc's backend
    may fuse some of them; g++ fuses only when every use is an addition), and the library
    functions (expf, tanhf, ...), which are the host libm's, not CUDA's.  netc's kernels
    write their accumulations with explicit fmaf, so their dot products are exact; the
    order of accumulation is each template's (its design note); the tensor-core emulations
    add 16-bit or TF32 products, which are exact in float, so fusing them changes nothing.
    Measured: ResNet-18, LeNet-5 and the MLP examples give the same bits with contraction
    on and off, the transformer differs by at most 4.8e-7.  An x86-64 CPU without FMA
    (before 2013) gets no contraction at all (`-ffp-contract=fast` has nothing to contract
    into) and correctly rounded software fmaf: results there differ from the GPU's wherever
    the GPU contracts.
    """
    if machine in ("x86_64", "amd64"):
        if "fma" in cpu_flags.split():
            return ("-mfma",), "x86-64+fma"
        return (), "x86-64"
    return (), machine


def _host_cpu() -> tuple[str, str]:
    """The machine name and, on Linux, the first CPU's feature flags."""
    import platform

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    flags = line.partition(":")[2]
                    break
    except OSError:
        pass
    return platform.machine().lower(), flags


_CONTRACT_FLAGS, _ISA_TAG = _contraction_flags(*_host_cpu())

# Report undefined functions at build time instead of at load time.
_LINK_FLAGS = ("-shared", "-Wl,-z,defs")
# -O3 (vectorisation, unrolling) runs ResNet-18 about 15% faster than -O2 at the same compile
# time (the header dominates it); without -ffast-math it changes no floating-point result.
_OPT_FLAGS = ("-O3",)
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
