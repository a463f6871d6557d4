"""Issue 9, item 6: the CPU simulator is interruptible and bounded.

An endless kernel ends in a diagnostic (E0703) when the launch's time limit passes, and at
once on Ctrl-C; a GPU thread that overflows its stack is a diagnostic (E0704), not a
SIGSEGV that kills Python.  After either, the simulator keeps working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netc.diagnostics import CompileError
from netc.sim import (
    CudaSim,
    SimulatorError,
    SimulatorStackOverflow,
    SimulatorTimeout,
)

pytestmark = pytest.mark.sim

KERNELS = r"""
// Spins until *flag is set, which nobody does: an endless kernel.
__global__ void spin(volatile int* flag, int* out)
{
    while (*flag == 0) {
    }
    out[threadIdx.x] = 1;
}

// The same with a barrier in the loop: the threads switch, and still never end.
__global__ void spin_synced(volatile int* flag)
{
    __shared__ int seen;
    while (*flag == 0) {
        if (threadIdx.x == 0)
            seen = *flag;
        __syncthreads();
    }
}

__device__ int depth(int n)
{
    volatile char frame[512];  // a real frame per call: no tail call, nothing folded away
    frame[0] = static_cast<char>(n);
    return n == 0 ? 0 : depth(n - 1) + frame[0] - static_cast<char>(n) + 1;
}

__global__ void recurse(int* out, int n)
{
    out[threadIdx.x] = depth(n);
}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("bounds-cache"))


def _module(sim: CudaSim):
    return sim.load(KERNELS, ["spin", "spin_synced", "recurse"], name="bounds")


def _zeros(sim: CudaSim, n: int):
    buffer = sim.alloc(4 * n)
    sim.upload(buffer, np.zeros(n, dtype=np.int32))
    return buffer


def _depth_still_works(sim: CudaSim, module) -> None:
    out = sim.alloc(4 * 8)
    module.launch("recurse", grid=1, block=8, args=[out, 10])
    assert (sim.download(out, np.int32, 8) == 10).all()


@pytest.mark.parametrize("kernel", ["spin", "spin_synced"])
def test_an_endless_kernel_is_stopped_at_the_time_limit(cache_dir: str, kernel: str) -> None:
    with CudaSim(workers=2, cache_dir=cache_dir, timeout=1.0) as sim:
        module = _module(sim)
        flag = _zeros(sim, 1)
        args = [flag, _zeros(sim, 64)] if kernel == "spin" else [flag]
        started = time.monotonic()
        with pytest.raises(SimulatorTimeout) as caught:
            module.launch(kernel, grid=4, block=64, args=args)
        assert time.monotonic() - started < 10
        error = caught.value
        assert isinstance(error, CompileError) and isinstance(error, SimulatorError)
        assert error.diagnostics[0].code == "E0703"
        assert f"kernel `{kernel}` did not finish within 1 s" in error.render()
        assert error.located("m.net:7").render().startswith("error[E0703]: m.net:7: kernel")
        _depth_still_works(sim, module)


def test_a_stack_overflow_is_a_diagnostic(cache_dir: str) -> None:
    with CudaSim(workers=2, cache_dir=cache_dir, stack_kib=64) as sim:
        module = _module(sim)
        out = sim.alloc(4 * 32)
        with pytest.raises(SimulatorStackOverflow) as caught:
            module.launch("recurse", grid=2, block=32, args=[out, 1_000_000])
        assert caught.value.diagnostics[0].code == "E0704"
        assert "stack overflow" in str(caught.value) and "64 KiB" in str(caught.value)
        assert "kernel recurse" in str(caught.value)
        _depth_still_works(sim, module)


def test_the_time_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETC_SIM_TIMEOUT", "2.5")
    assert CudaSim().timeout == 2.5
    monkeypatch.setenv("NETC_SIM_TIMEOUT", "soon")
    with pytest.raises(SimulatorError, match="NETC_SIM_TIMEOUT"):
        CudaSim()
    monkeypatch.delenv("NETC_SIM_TIMEOUT")
    assert CudaSim().timeout == 600
    with pytest.raises(SimulatorError, match="timeout"):
        CudaSim(timeout=0)


@pytest.mark.parametrize("sanitize", [False, True], ids=["in-process", "sanitizer-child"])
def test_ctrl_c_stops_an_endless_launch(tmp_path: Path, cache_dir: str, sanitize: bool) -> None:
    script = tmp_path / "spin.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from netc.sim import CudaSim
        sim = CudaSim(workers=2, cache_dir={cache_dir!r}, sanitize={sanitize})
        module = sim.load({KERNELS!r}, ["spin"], name="spin")
        flag = sim.alloc(4)
        sim.upload(flag, np.zeros(1, dtype=np.int32))
        out = sim.alloc(256)
        print("launching", flush=True)
        try:
            module.launch("spin", grid=4, block=64, args=[flag, out])
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        sys.exit(3)
    """))
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    # The child starts with Ctrl-C's default action, as from a shell: a child inherits an
    # ignored SIGINT, and Python then installs no KeyboardInterrupt handler at all, so a test
    # run whose worker process ignores SIGINT would otherwise wait forever.
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "launching"
    time.sleep(1.0)  # well inside the launch
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in out
    assert time.monotonic() - started < 15
