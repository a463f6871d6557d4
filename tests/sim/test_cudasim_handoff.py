"""How the simulator runs a block's threads without a scheduler in between (issue 11, item 6).

A thread that exits hands its stack to the next thread that has not started, which then runs
with no context switch at all: a kernel without barriers is a loop over its threads on one
stack. That stack is still a fiber stack with a guard page, so a thread deep in the loop that
overflows it is caught and named; and a thread that waits switches straight to the next one.
"""

from __future__ import annotations

import numpy as np
import pytest

from netc.sim import CudaSim, SimulatorStackOverflow

pytestmark = pytest.mark.sim

SOURCE = r"""
__device__ int depth(int n)
{
    volatile char frame[512];  // a real frame per call: no tail call, nothing folded away
    frame[0] = static_cast<char>(n);
    return n == 0 ? 0 : depth(n - 1) + frame[0] - static_cast<char>(n) + 1;
}

// No barrier: each thread writes its index; thread `deep` of each block recurses `n` deep.
__global__ void ids(int* out, int deep, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = (int)threadIdx.x == deep ? depth(n) : i;
}

// A barrier between writing and reading a neighbour's slot.
__global__ void exchange(int* out)
{
    __shared__ int s[256];
    s[threadIdx.x] = (int)threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
"""

BLOCKS, THREADS = 3, 64


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    cache = str(tmp_path_factory.mktemp("cudasim-handoff-cache"))
    with CudaSim(workers=1, stack_kib=64, cache_dir=cache) as s:
        yield s


@pytest.fixture(scope="module")
def module(sim: CudaSim):
    return sim.load(SOURCE, ["ids", "exchange"], name="handoff")


def _launch(sim: CudaSim, module, kernel: str, *args: int) -> np.ndarray:
    out = sim.alloc(4 * BLOCKS * THREADS)
    module.launch(kernel, grid=BLOCKS, block=THREADS, args=[out, *args])
    return sim.download(out, np.int32, BLOCKS * THREADS)


def test_a_kernel_without_barriers_runs_each_block_without_switching(sim: CudaSim,
                                                                      module) -> None:
    before = module.switch_count()
    got = _launch(sim, module, "ids", -1, 0)
    np.testing.assert_array_equal(got, np.arange(BLOCKS * THREADS))
    # Into the block's first thread and back from its last: none between its threads.
    assert module.switch_count() - before == 2 * BLOCKS


def test_a_barrier_costs_one_switch_per_thread(sim: CudaSim, module) -> None:
    before = module.switch_count()
    got = _launch(sim, module, "exchange")
    lane = np.arange(BLOCKS * THREADS) % THREADS
    np.testing.assert_array_equal(got, (lane + 1) % THREADS)
    # Per block: into the first thread, each thread on to the next at the barrier and at
    # its exit (the last exit back to the launch).
    assert module.switch_count() - before == BLOCKS * (1 + 2 * THREADS)


def test_a_stack_overflow_deep_in_the_loop_names_its_thread(sim: CudaSim, module) -> None:
    # Thread 37 runs on the stack threads 0..36 used before it; its overflow still hits the
    # guard page and is reported as its own.
    with pytest.raises(SimulatorStackOverflow) as caught:
        _launch(sim, module, "ids", 37, 1_000_000)
    message = str(caught.value)
    assert "kernel ids block (0,0,0) thread (37,0,0): stack overflow" in message
    assert "64 KiB" in message
    # The simulator goes on working, and a thread that recurses within its stack is fine.
    got = _launch(sim, module, "ids", 37, 10)
    expected = np.arange(BLOCKS * THREADS)
    expected[37::THREADS] = 10
    np.testing.assert_array_equal(got, expected)
