"""The simulator's own bug detector, tested with planted bugs.

The whole sim tier trusts the simulator to run threads and blocks in the schedule it names, to
compute the block-wide votes, and to report a barrier that not every thread reaches. Issue 13's
mutation run found that a reversed schedule could silently become in-order (for threads and for
blocks), `__syncthreads_and` could compute an OR, and the last thread could be left out of the
divergence comparison, with no test failing. Each test here plants one bug (or records the
order of execution) under every schedule and for every barrier primitive.
"""

from __future__ import annotations

import numpy as np
import pytest

from netc.sim import SCHEDULES, CudaSim, SimulatorError

pytestmark = pytest.mark.sim

THREADS = 96
"""Three warps: the last thread is lane 31 of the third warp."""

SOURCE = r"""
#line 100 "detector.cu"
// Each thread (or thread 0 of each block) takes the next slot: the slots list the order in
// which the schedule ran them. No barrier, so each fiber runs to its end in one go; the
// barrier in the middle of record_twice starts a second pass.
__global__ void thread_order(int* order, int* next) {
    order[atomicAdd(next, 1)] = threadIdx.x;
}
__global__ void thread_order_twice(int* order, int* next) {
    order[atomicAdd(next, 1)] = threadIdx.x;
    __syncthreads();
    order[atomicAdd(next, 1)] = threadIdx.x;
}
__global__ void block_order(int* order, int* next) {
    if (threadIdx.x == 0) order[atomicAdd(next, 1)] = blockIdx.x;
}

// A planted race: each thread reads what its right-hand neighbour wrote, with no barrier.
// In order, the neighbour has not run yet; reversed, it always has.
__global__ void read_right_neighbour(float* y) {
    __shared__ float s[1024];
    s[threadIdx.x] = (float)threadIdx.x;
    y[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Every barrier primitive as the only barrier of a correct exchange through shared memory:
// kind 0 __syncthreads, 1 _count, 2 _and, 3 _or; kind 4 also checks a missing barrier.
__global__ void exchange(float* y, int kind) {
    __shared__ float s[1024];
    s[threadIdx.x] = (float)threadIdx.x;
    switch (kind) {
        case 0: __syncthreads(); break;
        case 1: (void)__syncthreads_count(1); break;
        case 2: (void)__syncthreads_and(1); break;
        case 3: (void)__syncthreads_or(0); break;
        default: break;  // BUG: no barrier
    }
    y[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// The votes, each thread's predicate read from pred[]; every thread writes what it got.
__global__ void votes(const int* pred, int* out) {
    const int p = pred[threadIdx.x];
    const int n = blockDim.x;
    out[threadIdx.x] = __syncthreads_count(p);
    out[n + threadIdx.x] = __syncthreads_and(p);
    out[2 * n + threadIdx.x] = __syncthreads_or(p);
}

// Only the thread named `odd` waits at a different call site (or primitive) than the rest.
__global__ void diverge(int odd, int kind, float* y) {
    if (threadIdx.x == odd) {
        switch (kind) {
            case 0: __syncthreads(); break;
            case 1: (void)__syncthreads_count(1); break;
            case 2: (void)__syncthreads_and(1); break;
            case 3: (void)__syncthreads_or(1); break;
        }
    } else {
        switch (kind) {
            case 0: __syncthreads(); break;
            case 1: (void)__syncthreads_count(1); break;
            case 2: (void)__syncthreads_and(1); break;
            case 3: (void)__syncthreads_or(1); break;
        }
    }
    y[threadIdx.x] = 1.0f;
}
// The same line, but a different primitive for the one thread.
__global__ void diverge_kind(int odd, float* y) {
    const int v = threadIdx.x == odd ? __syncthreads_or(1) : __syncthreads_and(1);
    y[threadIdx.x] = (float)v;
}
// The same line number and primitive, but in two files (as `#line` makes of two .net files).
__global__ void diverge_file(int odd, float* y) {
    if ((int)threadIdx.x == odd) {
#line 7 "left.net"
        __syncthreads();
    } else {
#line 7 "right.net"
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}
#line 400 "detector.cu"
// The one thread exits before the barrier the rest wait at.
__global__ void exit_early(int odd, float* y) {
    if (threadIdx.x == odd) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// __syncwarp: a warp exchanging through shared memory, with or without the __syncwarp, and
// with one lane gone before it.
__global__ void warp_exchange(float* y, int synced, int gone) {
    __shared__ float s[1024];
    if ((int)threadIdx.x == gone) return;
    s[threadIdx.x] = (float)threadIdx.x;
    if (synced) __syncwarp();
    y[threadIdx.x] = s[threadIdx.x ^ 1];
}

// __match_all_sync: every lane gets the mask and pred = 1 when all values agree, else 0 and 0.
__global__ void match_all(const int* value, int* out) {
    int pred = -1;
    const unsigned got = __match_all_sync(0xffffffffu, value[threadIdx.x], &pred);
    out[2 * threadIdx.x] = (int)got;
    out[2 * threadIdx.x + 1] = pred;
}

// Warp 0 finishes a __syncwarp while the other warps wait at the __syncthreads: that must
// not release them, so that they read what warp 0 writes after its __syncwarp.
__global__ void warp_op_then_barrier(float* y) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x;
    s[t] = -1.0f;
    if (t < 32) {
        __syncwarp();
        s[t] = 100.0f + t;
    }
    __syncthreads();
    y[t] = s[t % 32];
}
"""

KERNELS = ["thread_order", "thread_order_twice", "block_order", "read_right_neighbour",
           "exchange", "votes", "diverge", "diverge_kind", "diverge_file", "exit_early",
           "warp_exchange", "match_all", "warp_op_then_barrier"]

BARRIERS = ["__syncthreads()", "__syncthreads_count()", "__syncthreads_and()",
            "__syncthreads_or()"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cudasim-detector-cache"))


@pytest.fixture(scope="module", params=SCHEDULES)
def sim(request: pytest.FixtureRequest, cache_dir: str):
    # One worker, so that blocks too run in the schedule's order.
    with CudaSim(schedule=request.param, seed=5, workers=1, cache_dir=cache_dir) as s:
        yield s


@pytest.fixture(scope="module")
def module(sim: CudaSim):
    return sim.load(SOURCE, KERNELS, name="detector")


def _ints(sim: CudaSim, values: np.ndarray):
    buffer = sim.alloc(values.nbytes)
    sim.upload(buffer, values.astype(np.int32))
    return buffer


def _order(sim: CudaSim, module, kernel: str, count: int, grid: int = 1,
           block: int = THREADS) -> np.ndarray:
    order = _ints(sim, np.full(count, -1))
    module.launch(kernel, grid=grid, block=block, args=[order, _ints(sim, np.zeros(1))])
    return sim.download(order, np.int32, count)


def _expected_order(schedule: str, count: int) -> np.ndarray | None:
    return {"in_order": np.arange(count), "reversed": np.arange(count)[::-1]}.get(schedule)


def test_threads_run_in_the_schedule_order(sim: CudaSim, module) -> None:
    order = _order(sim, module, "thread_order", THREADS)
    assert sorted(order) == list(range(THREADS))  # every thread ran once
    expected = _expected_order(sim.schedule, THREADS)
    if expected is not None:
        np.testing.assert_array_equal(order, expected)
    else:  # shuffled: neither of the fixed orders
        assert not np.array_equal(order, np.arange(THREADS))
        assert not np.array_equal(order, np.arange(THREADS)[::-1])


def test_every_pass_follows_the_schedule(sim: CudaSim, module) -> None:
    order = _order(sim, module, "thread_order_twice", 2 * THREADS)
    first, second = order[:THREADS], order[THREADS:]
    assert sorted(first) == sorted(second) == list(range(THREADS))
    expected = _expected_order(sim.schedule, THREADS)
    if expected is not None:
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)
    else:  # a new permutation for every pass
        assert not np.array_equal(first, second)


def test_blocks_run_in_the_schedule_order(sim: CudaSim, module) -> None:
    blocks = 24
    order = _order(sim, module, "block_order", blocks, grid=blocks, block=32)
    assert sorted(order) == list(range(blocks))
    expected = _expected_order(sim.schedule, blocks)
    if expected is not None:
        np.testing.assert_array_equal(order, expected)
    else:
        assert not np.array_equal(order, np.arange(blocks))
        assert not np.array_equal(order, np.arange(blocks)[::-1])


def test_a_planted_race_shows_the_schedule(sim: CudaSim, module) -> None:
    y = sim.alloc(4 * THREADS)
    module.launch("read_right_neighbour", grid=1, block=THREADS, args=[y])
    got = sim.download(y, np.float32, THREADS)
    # Shared memory starts as 0xFF bytes (NaN): a neighbour that has not run yet shows as NaN.
    written = ~np.isnan(got)
    np.testing.assert_array_equal(got[written], ((np.arange(THREADS) + 1) % THREADS)[written])
    if sim.schedule == "in_order":  # only the last thread finds its neighbour (thread 0) done
        np.testing.assert_array_equal(written, np.arange(THREADS) == THREADS - 1)
    elif sim.schedule == "reversed":  # every neighbour but thread 0's (the last) ran first
        np.testing.assert_array_equal(written, np.arange(THREADS) != THREADS - 1)
    else:
        assert 0 < written.sum() < THREADS


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_every_barrier_orders_an_exchange(sim: CudaSim, module, kind: int) -> None:
    y = sim.alloc(4 * THREADS)
    module.launch("exchange", grid=2, block=THREADS, args=[y, kind])
    np.testing.assert_array_equal(sim.download(y, np.float32, THREADS),
                                  np.arange(THREADS)[::-1])


def test_check_races_finds_the_missing_barrier_from_any_schedule(sim: CudaSim,
                                                                 cache_dir: str) -> None:
    with CudaSim(schedule=sim.schedule, check_races=True, seed=5,
                 cache_dir=cache_dir) as checked:
        mod = checked.load(SOURCE, KERNELS, name="detector")
        y = checked.alloc(4 * THREADS)
        for kind in range(4):
            mod.launch("exchange", grid=1, block=THREADS, args=[y, kind])
        with pytest.raises(SimulatorError, match="race detected in kernel exchange"):
            mod.launch("exchange", grid=1, block=THREADS, args=[y, 4])
        with pytest.raises(SimulatorError, match="race detected in kernel read_right_neighbour"):
            mod.launch("read_right_neighbour", grid=1, block=THREADS, args=[y])


def _predicates() -> dict[str, np.ndarray]:
    everyone = np.ones(THREADS, dtype=np.int32)
    patterns = {"all true": everyone, "all false": 0 * everyone}
    for name, index in (("first", 0), ("last", THREADS - 1), ("lane 31", 31)):
        alone_false = everyone.copy()
        alone_false[index] = 0
        patterns[f"only the {name} false"] = alone_false
        patterns[f"only the {name} true"] = 1 - alone_false
    patterns["every third, as 7"] = np.where(np.arange(THREADS) % 3 == 0, 7, 0).astype(np.int32)
    return patterns


@pytest.mark.parametrize("pattern", sorted(_predicates()))
def test_block_votes_count_and_or(sim: CudaSim, module, pattern: str) -> None:
    pred = _predicates()[pattern]
    out = _ints(sim, np.full(3 * THREADS, -1))
    module.launch("votes", grid=1, block=THREADS, args=[_ints(sim, pred), out])
    count, every, some = sim.download(out, np.int32, (3, THREADS))
    truth = pred != 0
    # Every thread gets the block's answer.
    np.testing.assert_array_equal(count, np.full(THREADS, truth.sum()))
    np.testing.assert_array_equal(every, np.full(THREADS, int(truth.all())))
    np.testing.assert_array_equal(some, np.full(THREADS, int(truth.any())))


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
@pytest.mark.parametrize("odd", [0, 1, 31, 32, THREADS - 1])
def test_one_thread_at_another_barrier_is_divergence(sim: CudaSim, module, kind: int,
                                                     odd: int) -> None:
    y = sim.alloc(4 * THREADS)
    with pytest.raises(SimulatorError) as info:
        module.launch("diverge", grid=1, block=THREADS, args=[odd, kind, y])
    message = str(info.value)
    assert message.startswith("barrier divergence in kernel diverge block (0,0,0)")
    assert f"thread ({odd},0,0) wait at detector.cu:" in message
    assert f"({BARRIERS[kind]})" in message


@pytest.mark.parametrize("odd", [0, THREADS - 1])
def test_one_thread_at_another_primitive_on_the_same_line_is_divergence(
        sim: CudaSim, module, odd: int) -> None:
    y = sim.alloc(4 * THREADS)
    with pytest.raises(SimulatorError) as info:
        module.launch("diverge_kind", grid=1, block=THREADS, args=[odd, y])
    message = str(info.value)
    assert message.startswith("barrier divergence in kernel diverge_kind")
    assert f"thread ({odd},0,0) wait at detector.cu:" in message
    assert "(__syncthreads_or())" in message and "(__syncthreads_and())" in message


@pytest.mark.parametrize("odd", [0, THREADS - 1])
def test_the_same_line_in_another_file_is_another_barrier(sim: CudaSim, module,
                                                          odd: int) -> None:
    y = sim.alloc(4 * THREADS)
    with pytest.raises(SimulatorError) as info:
        module.launch("diverge_file", grid=1, block=THREADS, args=[odd, y])
    message = str(info.value)
    assert message.startswith("barrier divergence in kernel diverge_file")
    assert f"thread ({odd},0,0) wait at left.net:7 (__syncthreads())" in message
    assert "[95 threads] wait at right.net:7 (__syncthreads())" in message


@pytest.mark.parametrize("odd", [0, THREADS - 1])
def test_one_thread_exiting_before_a_barrier_is_divergence(sim: CudaSim, module,
                                                           odd: int) -> None:
    y = sim.alloc(4 * THREADS)
    with pytest.raises(SimulatorError) as info:
        module.launch("exit_early", grid=1, block=THREADS, args=[odd, y])
    assert f"thread ({odd},0,0) exited" in str(info.value)


def test_syncwarp_orders_a_warp_exchange(sim: CudaSim, module) -> None:
    y = sim.alloc(4 * THREADS)
    module.launch("warp_exchange", grid=1, block=THREADS, args=[y, 1, -1])
    np.testing.assert_array_equal(sim.download(y, np.float32, THREADS),
                                  np.arange(THREADS) ^ 1)


@pytest.mark.parametrize("gone", [0, 31, THREADS - 1])
def test_a_lane_gone_before_syncwarp_is_a_deadlock(sim: CudaSim, module, gone: int) -> None:
    y = sim.alloc(4 * THREADS)
    with pytest.raises(SimulatorError) as info:
        module.launch("warp_exchange", grid=1, block=THREADS, args=[y, 1, gone])
    message = str(info.value)
    assert message.startswith("warp synchronisation deadlock in kernel warp_exchange")
    # The other warps finish; the gone lane's 31 partners wait for it.
    groups = message.split(": ", 1)[1].split("; ")
    exited = next(g for g in groups if g.endswith(" exited"))
    waiting = next(g for g in groups if "wait at" in g)
    assert f"({gone},0,0)" in exited and f"({gone},0,0)" not in waiting
    assert "[31 threads] wait at detector.cu:" in waiting
    assert "(__syncwarp with mask 0xffffffff)" in waiting


def test_check_races_finds_a_missing_syncwarp(sim: CudaSim, cache_dir: str) -> None:
    with CudaSim(schedule=sim.schedule, check_races=True, seed=5,
                 cache_dir=cache_dir) as checked:
        mod = checked.load(SOURCE, KERNELS, name="detector")
        y = checked.alloc(4 * THREADS)
        mod.launch("warp_exchange", grid=1, block=THREADS, args=[y, 1, -1])
        with pytest.raises(SimulatorError, match="race detected in kernel warp_exchange"):
            mod.launch("warp_exchange", grid=1, block=THREADS, args=[y, 0, -1])


@pytest.mark.parametrize("threads", [1000, 1024])
def test_syncwarp_in_the_largest_blocks(sim: CudaSim, module, threads: int) -> None:
    # 32 warps, the last full or of 8 lanes: every warp's bookkeeping is set up.
    y = sim.alloc(4 * threads)
    module.launch("warp_exchange", grid=1, block=threads, args=[y, 1, -1])
    np.testing.assert_array_equal(sim.download(y, np.float32, threads),
                                  np.arange(threads) ^ 1)


@pytest.mark.parametrize("agree", [True, False])
def test_match_all(sim: CudaSim, module, agree: bool) -> None:
    values = np.full(64, 7, dtype=np.int32)
    if not agree:
        values[37] = 8  # one lane of the second warp differs
    out = _ints(sim, np.full(128, -5))
    module.launch("match_all", grid=1, block=64, args=[_ints(sim, values), out])
    got = sim.download(out, np.int32, (64, 2))
    np.testing.assert_array_equal(got[:32], np.tile([-1, 1], (32, 1)))  # 0xffffffff, 1
    np.testing.assert_array_equal(got[32:], np.tile([-1, 1] if agree else [0, 0], (32, 1)))


def test_a_warp_op_does_not_release_another_warps_barrier(sim: CudaSim, module) -> None:
    y = sim.alloc(4 * THREADS)
    module.launch("warp_op_then_barrier", grid=1, block=THREADS, args=[y])
    np.testing.assert_array_equal(sim.download(y, np.float32, THREADS),
                                  100 + np.arange(THREADS) % 32)
