"""The CPU CUDA simulator (netc.sim.cudasim): execution model, API and bug finding.

Kernels are grouped into a few modules so that the suite compiles little; every
module is compiled into a fresh per-session cache.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import numpy as np
import pytest

from netc.sim import CudaSim, SimulatorError, parse_signature, rewrite_dynamic_shared
from netc.sim.protocol import _ISA_TAG, _contraction_flags

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cudasim-cache"))


@pytest.fixture(scope="module")
def sim(cache_dir: str):
    with CudaSim(workers=2, cache_dir=cache_dir) as s:
        yield s


def upload(sim: CudaSim, array: np.ndarray):
    buf = sim.alloc(array.nbytes)
    sim.upload(buf, array)
    return buf


def nan_buffer(sim: CudaSim, n: int, dtype=np.float32):
    """An output buffer poisoned with NaN, so unwritten elements cannot pass."""
    buf = sim.alloc(n * np.dtype(dtype).itemsize)
    sim.upload(buf, np.full(n, np.nan, dtype=dtype))
    return buf


# ----------------------------------------------------------------------------------
# Basics: indexing, grid-stride loops, signatures
# ----------------------------------------------------------------------------------

BASIC_SRC = r"""
// Headers CUDA code commonly includes; <memory> after cudasim.h used to clash with the
// __noinline__ macro.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <memory>
#include <algorithm>

__noinline__ __device__ float keep(float v) { return v; }

__global__ void vadd(const float* __restrict__ a, const float* __restrict__ b, float* c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        c[i] = a[i] + b[i];
}

// One int4 record per thread of a 2D grid of 3D blocks.
__global__ void __launch_bounds__(256) where_am_i(int4* out) {
    const int bid = blockIdx.y * gridDim.x + blockIdx.x;
    const int tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const int nthreads = blockDim.x * blockDim.y * blockDim.z;
    out[bid * nthreads + tid] = make_int4(blockIdx.x + 100 * blockIdx.y,
                                          threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z,
                                          gridDim.x * gridDim.y * gridDim.z, nthreads);
}

struct Params { float scale; int offset; };

__global__ void many_types(long long a, int b, float c, double d, const float* p, unsigned u,
                           unsigned long long big, short s, bool flag, __half h,
                           __nv_bfloat16 bf, Params params, double* out) {
    if (threadIdx.x != 0) return;
    out[0] = (double)a; out[1] = b; out[2] = c; out[3] = d; out[4] = p[1]; out[5] = u;
    out[6] = (double)big; out[7] = s; out[8] = flag ? 1.0 : 0.0; out[9] = __half2float(h);
    out[10] = __bfloat162float(bf); out[11] = params.scale; out[12] = params.offset;
}

__global__ void no_args() {}

__global__ void checks_assert(const int* v) {
    assert(v[threadIdx.x] >= 0);
}

__global__ void say_hello(int value) {
    if (threadIdx.x == 0 && blockIdx.x == 1) printf("hello from the simulator %d\n", value);
}

namespace ops {
template <typename T>
__global__ void scale(T* y, T a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = y[i] * a;
}
}  // namespace ops

__global__ void block_votes(const int* x, int* out) {
    const int v = x[blockIdx.x * blockDim.x + threadIdx.x];
    const int count = __syncthreads_count(v > 0);
    const int all = __syncthreads_and(v > -10);
    const int any = __syncthreads_or(v > 8);
    if (threadIdx.x == 0) { out[3 * blockIdx.x] = count; out[3 * blockIdx.x + 1] = all; out[3 * blockIdx.x + 2] = any; }
}

// CUDA's sizes and alignments (checked at compile time).
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4");
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2");
static_assert(sizeof(float3) == 12 && alignof(float3) == 4, "float3");
static_assert(sizeof(int4) == 16 && alignof(int4) == 16, "int4");
static_assert(sizeof(double2) == 16 && alignof(double2) == 16, "double2");
static_assert(sizeof(short4) == 8 && alignof(short4) == 8, "short4");
static_assert(sizeof(uchar4) == 4 && alignof(uchar4) == 4, "uchar4");
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && alignof(__half2) == 4, "half");
static_assert(warpSize == 32, "warpSize");

__global__ void math_check(const float* x, float* out) {
    const float a = x[0], b = x[1], c = x[2];
    out[0] = a * b + c;  // contracted into one FMA, as nvcc's default -fmad=true does
    out[1] = fmaf(a, b, c);
    out[2] = rsqrtf(x[3]);
    out[3] = __expf(x[4]) + expf(x[4]);
    out[4] = __fdividef(x[5], x[6]);
    out[5] = max(x[5], x[6]) + min(x[5], x[6]);
    out[6] = (float)(max(3, 7) + min(-2LL, 5LL));
    out[7] = keep(__ldg(&x[7]));
    out[8] = erff(x[8]) + tanhf(x[8]);
    out[9] = INFINITY == CUDART_INF_F ? 1.0f : 0.0f;
    out[10] = __int_as_float(__float_as_int(x[7])) + (float)__popc(0xF0F0u) + (float)__clz(1);
    out[11] = __fadd_rn(__fmul_rn(a, b), c);  // never contracted, on a GPU either
    const float product = a * b;  // contracted across statements too (its only use)
    out[12] = product + c;
}

// 32 KiB of locals per thread, alive across a barrier: each fiber has its own stack.
__global__ void big_frames(float* out) {
    float local[8192];
    for (int i = 0; i < 8192; ++i) local[i] = (float)(i % 7) * threadIdx.x;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < 8192; ++i) s += local[i];
    out[threadIdx.x] = s;
}
"""


@pytest.fixture(scope="module")
def basic(sim: CudaSim):
    return sim.load(BASIC_SRC, ["vadd", "where_am_i", "many_types", "no_args", "checks_assert",
                                "say_hello", "ops::scale<float>", "ops::scale<double>",
                                "block_votes", "big_frames", "math_check"], name="basic")


@pytest.mark.parametrize("n", [1, 31, 33, 127, 129, 1000])
def test_vector_add_ragged_grid_stride(sim: CudaSim, basic, n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    da, db, dc = upload(sim, a), upload(sim, b), nan_buffer(sim, n)
    # A grid smaller than n/blockDim forces the grid-stride loop to iterate.
    for grid, block in ((1, 32), (3, 64), ((n + 127) // 128, 128)):
        sim.upload(dc, np.full(n, np.nan, np.float32))
        basic.launch("vadd", grid=grid, block=block, args=[da, db, dc, n])
        np.testing.assert_array_equal(sim.download(dc, np.float32, n), a + b)


def test_2d_grid_3d_block_indices(sim: CudaSim, basic) -> None:
    grid, block = (3, 2, 1), (4, 3, 2)
    nthreads, nblocks = 24, 6
    out = sim.alloc(nblocks * nthreads * 16)
    basic.launch("where_am_i", grid=grid, block=block, args=[out])
    got = sim.download(out, np.int32, (nblocks, nthreads, 4))
    for by in range(2):
        for bx in range(3):
            for tz in range(2):
                for ty in range(3):
                    for tx in range(4):
                        rec = got[by * 3 + bx, (tz * 3 + ty) * 4 + tx]
                        assert tuple(rec) == (bx + 100 * by, tx + 10 * ty + 100 * tz, 6, 24)


def test_signature_deduced_from_cxx(sim: CudaSim, basic) -> None:
    codes = [p.code for p in basic.signature("many_types")]
    assert codes == ["i64", "i32", "f32", "f64", "ptr<f32>", "u32", "u64", "i16", "bool", "f16",
                     "bf16", "raw<8:4>", "ptr<f64>"]
    assert basic.signature("vadd")[0].cname == "float*"
    assert basic.signature("no_args") == []
    assert [p.kind for p in parse_signature("ptr<ptr<u8>>,raw<16:16>")] == ["ptr", "raw"]


def test_scalar_and_struct_arguments(sim: CudaSim, basic) -> None:
    p = upload(sim, np.array([0.0, 2.5], np.float32))
    out = sim.alloc(13 * 8)
    params = np.array([(0.75, -3)], dtype=[("scale", "<f4"), ("offset", "<i4")])[0]
    basic.launch("many_types", grid=1, block=32, args=[
        -(2**40), np.int32(-7), 0.1, 1e300, p, 2**32 - 1, 2**64 - 1, -3, True, 0.333, 1.5,
        params, out])
    got = sim.download(out, np.float64, 13)
    expect = [-(2**40), -7, float(np.float32(0.1)), 1e300, 2.5, 2**32 - 1, float(2**64 - 1), -3,
              1.0, float(np.float16(0.333)), 1.5, 0.75, -3]
    np.testing.assert_array_equal(got, np.array(expect, dtype=np.float64))
    basic.launch("no_args", grid=(2, 2), block=(2, 2, 2))


def test_template_kernels_by_name(sim: CudaSim, basic) -> None:
    assert [p.code for p in basic.signature("ops::scale<double>")] == ["ptr<f64>", "f64", "i32"]
    y = upload(sim, np.arange(10, dtype=np.float32))
    basic.launch("ops::scale<float>", grid=1, block=16, args=[y, np.float32(1.5), 10])
    np.testing.assert_array_equal(sim.download(y, np.float32, 10), np.arange(10, dtype=np.float32) * 1.5)


def test_block_wide_votes(sim: CudaSim, basic) -> None:
    x = np.random.default_rng(10).integers(-9, 10, (3, 96)).astype(np.int32)
    x[1] = 5  # all positive, none above 8
    out = sim.alloc(4 * 9)
    basic.launch("block_votes", grid=3, block=96, args=[upload(sim, x), out])
    got = sim.download(out, np.int32, (3, 3))
    for b in range(3):
        assert tuple(got[b]) == ((x[b] > 0).sum(), int((x[b] > -10).all()), int((x[b] > 8).any()))


def test_large_stack_frames(sim: CudaSim, basic) -> None:
    out = nan_buffer(sim, 256)
    basic.launch("big_frames", grid=2, block=256, args=[out])
    per_thread = sum(float(i % 7) for i in range(8192))
    np.testing.assert_array_equal(sim.download(out, np.float32, 256), per_thread * np.arange(256, dtype=np.float32))


def test_math_is_ieee_and_contracts_as_the_gpu(sim: CudaSim, basic) -> None:
    e = np.float32(2.0**-12)
    x = np.array([1 + e, 1 + e, -(1 + 2 * e), 4.0, 0.5, 3.0, 7.0, -1.25, 0.3], np.float32)
    out = nan_buffer(sim, 13)
    basic.launch("math_check", grid=1, block=1, args=[upload(sim, x), out])
    got = sim.download(out, np.float32, 13)
    # (1 + e)^2 - (1 + 2e) = e^2 = 2^-24 exactly: one rounding (an FMA) keeps it, two (the
    # product rounded first, as numpy computes) lose it.
    fused, separate = np.float32(2.0**-24), x[0] * x[1] + x[2]
    assert separate == 0.0
    assert got[1] == fused  # fmaf
    assert got[11] == separate  # __fmul_rn and __fadd_rn
    # a * b + c contracts as nvcc contracts it, where the CPU has FMA (protocol.py).
    contracts = _ISA_TAG != "x86-64"
    assert got[0] == got[12] == (fused if contracts else separate)
    assert got[2] == 0.5 and abs(got[3] - 2 * np.exp(0.5)) < 1e-6
    assert got[4] == np.float32(3.0) / np.float32(7.0) and got[5] == 10.0 and got[6] == 5.0
    assert got[7] == -1.25 and got[9] == 1.0 and got[10] == -1.25 + 8 + 31
    assert abs(got[8] - (np.tanh(0.3) + 0.32862675945912745)) < 1e-6


def test_contraction_needs_fma_instructions() -> None:
    assert _contraction_flags("x86_64", "sse2 avx fma avx2") == (("-mfma",), "x86-64+fma")
    # No FMA: nothing to contract into, and a tag that keeps FMA modules off this CPU.
    assert _contraction_flags("x86_64", "sse2 avx") == ((), "x86-64")
    assert _contraction_flags("aarch64", "fp asimd") == ((), "aarch64")


def test_wrong_arguments_are_clear_errors(sim: CudaSim, basic) -> None:
    a = sim.alloc(16)
    with pytest.raises(SimulatorError, match=r"vadd\(float\*, float\*, float\*, int32\) takes 4 arguments but 3 were given"):
        basic.launch("vadd", grid=1, block=1, args=[a, a, a])
    with pytest.raises(SimulatorError, match=r"argument 3 \(int32\) expects an integer, got float"):
        basic.launch("vadd", grid=1, block=1, args=[a, a, a, 1.5])
    with pytest.raises(SimulatorError, match=r"argument 0 \(float\*\) expects a DeviceBuffer"):
        basic.launch("vadd", grid=1, block=1, args=[3, a, a, 1])
    with pytest.raises(SimulatorError, match=r"argument 3 \(int32\) value 2147483648 is out of range"):
        basic.launch("vadd", grid=1, block=1, args=[a, a, a, 2**31])
    with pytest.raises(SimulatorError, match=r"expects a float"):
        basic.launch("many_types", grid=1, block=1, args=[0, 0, "x", 0, a, 0, 0, 0, True, 0, 0, b"12345678", a])
    with pytest.raises(SimulatorError, match=r"expects exactly 8 bytes"):
        basic.launch("many_types", grid=1, block=1, args=[0, 0, 0, 0, a, 0, 0, 0, True, 0, 0, b"1234", a])
    with pytest.raises(SimulatorError, match=r"has no kernel 'nope'"):
        basic.launch("nope", grid=1, block=1)


def test_launch_configuration_is_validated(sim: CudaSim, basic) -> None:
    a = sim.alloc(16)
    with pytest.raises(SimulatorError, match=r"block dimension x = 1025 is out of range \[1, 1024\]"):
        basic.launch("vadd", grid=1, block=(1025,), args=[a, a, a, 1])
    with pytest.raises(SimulatorError, match=r"block \(32, 33, 1\) has 1056 threads; the limit is 1024"):
        basic.launch("vadd", grid=1, block=(32, 33), args=[a, a, a, 1])
    with pytest.raises(SimulatorError, match=r"grid dimension x = 0 is out of range"):
        basic.launch("vadd", grid=0, block=32, args=[a, a, a, 1])
    with pytest.raises(SimulatorError, match=r"block dimension z = 65 is out of range"):
        basic.launch("vadd", grid=1, block=(1, 1, 65), args=[a, a, a, 1])
    with pytest.raises(SimulatorError, match=r"exceed the limit of 232448 bytes"):
        basic.launch("vadd", grid=1, block=32, shared_bytes=228 * 1024, args=[a, a, a, 1])


def test_device_assert_fails_the_launch_not_the_process(sim: CudaSim, basic) -> None:
    v = upload(sim, np.array([1, 2, -3, 4], np.int32))
    with pytest.raises(SimulatorError, match=r"kernel checks_assert block \(0,0,0\) thread \(2,0,0\): assertion `v\[threadIdx.x\] >= 0` failed"):
        basic.launch("checks_assert", grid=1, block=4, args=[v])
    basic.launch("checks_assert", grid=1, block=2, args=[v])  # the module still works


def test_printf(sim: CudaSim, basic, capfd: pytest.CaptureFixture[str]) -> None:
    basic.launch("say_hello", grid=2, block=4, args=[42])
    assert "hello from the simulator 42" in capfd.readouterr().out


def test_buffers(sim: CudaSim) -> None:
    buf = sim.alloc(10)
    assert buf.nbytes == 10
    assert (sim.download(buf, np.uint8, 10) == 0xFF).all()  # poisoned until written
    sim.upload(buf, np.arange(10, dtype=np.uint8))
    np.testing.assert_array_equal(sim.download(buf.view(4), np.uint8, 6), np.arange(4, 10))
    with pytest.raises(SimulatorError, match="do not fit"):
        sim.upload(buf, np.zeros(11, np.uint8))
    with pytest.raises(SimulatorError, match="needs 12 bytes"):
        sim.download(buf, np.float32, 3)
    sim.free(buf)
    with pytest.raises(SimulatorError, match="freed"):
        sim.download(buf, np.uint8, 1)


# ----------------------------------------------------------------------------------
# Shared memory
# ----------------------------------------------------------------------------------

SHARED_SRC = r"""
#define TILE 16
// C[M,N] = A[M,K] @ B[K,N], 16x16 tiles through static shared memory.
__global__ void matmul_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ __align__(16) float Bs[TILE][TILE + 1];
    const int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[threadIdx.y][threadIdx.x] = (row < M && k0 + threadIdx.x < K) ? A[row * K + k0 + threadIdx.x] : 0.0f;
        Bs[threadIdx.y][threadIdx.x] = (col < N && k0 + threadIdx.y < K) ? B[(k0 + threadIdx.y) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

// Block sums through dynamic shared memory declared the CUDA way ...
__global__ void block_sum_extern(const float* x, float* out, int n) {
    extern __shared__ float sdata[];
    const unsigned t = threadIdx.x;
    const unsigned i = blockIdx.x * blockDim.x + t;
    sdata[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sdata[t] += sdata[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = sdata[0];
}

// ... through netc's macro (two arrays carved out of one dynamic allocation) ...
template <typename T>
__device__ T block_max(T v, T* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = max(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    return red[0];
}
__global__ void block_sum_macro(const float* x, float* out, int* maxes, int n) {
    NETC_DYNAMIC_SHARED(float, smem);
    int* ismem = reinterpret_cast<int*>(smem + blockDim.x);
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    smem[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) smem[t] += smem[t + s];
        __syncthreads();
    }
    const int m = block_max<int>(i < n ? (int)x[i] : -1000000, ismem);
    if (t == 0) { out[blockIdx.x] = smem[0]; maxes[blockIdx.x] = m; }
}

// ... and at namespace scope, used from a device function.
extern __shared__ __align__(16) unsigned char g_dyn[];
__device__ float* scratch() { return reinterpret_cast<float*>(g_dyn); }
__global__ void reverse_block(const float* x, float* y) {
    float* s = scratch();
    s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// Reads shared memory that nobody wrote: must see the poison (0xFF bytes) in every block.
__global__ void read_uninitialised(unsigned* out) {
    __shared__ unsigned never_written[64];
    extern __shared__ unsigned dyn_never_written[];
    out[blockIdx.x * 128 + threadIdx.x] = never_written[threadIdx.x];
    out[blockIdx.x * 128 + 64 + threadIdx.x] = dyn_never_written[threadIdx.x];
    never_written[threadIdx.x] = 7;  // must not leak into the next block on this worker
    dyn_never_written[threadIdx.x] = 7;
}

__global__ void huge_static(float* out) {
    __shared__ float big[50 * 1024];
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}
"""


@pytest.fixture(scope="module")
def shared(sim: CudaSim):
    return sim.load(SHARED_SRC, ["matmul_tiled", "block_sum_extern", "block_sum_macro",
                                 "reverse_block", "read_uninitialised", "huge_static"],
                    name="shared")


@pytest.mark.parametrize("schedule", ["in_order", "shuffled"])
def test_tiled_matmul_static_shared(cache_dir: str, shared, schedule: str) -> None:
    M, N, K = 37, 45, 29
    rng = np.random.default_rng(1)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    with CudaSim(schedule=schedule, seed=3, workers=2, cache_dir=cache_dir) as s:
        mod = s.load(SHARED_SRC, shared.kernels, name="shared")
        assert mod.from_cache
        assert mod.static_shared_bytes("matmul_tiled") == 4 * (16 * 16 + 16 * 17)
        dA, dB, dC = upload(s, A), upload(s, B), nan_buffer(s, M * N)
        mod.launch("matmul_tiled", grid=((N + 15) // 16, (M + 15) // 16), block=(16, 16),
                   args=[dA, dB, dC, M, N, K])
        C = s.download(dC, np.float32, (M, N))
    np.testing.assert_allclose(C, A.astype(np.float64) @ B.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_dynamic_shared_reductions(sim: CudaSim, shared) -> None:
    n, bs = 1000, 128
    nblocks = (n + bs - 1) // bs
    x = np.random.default_rng(2).integers(-50, 50, n).astype(np.float32)  # exact sums
    dx = upload(sim, x)
    ref = np.array([x[i * bs:(i + 1) * bs].sum() for i in range(nblocks)], np.float32)
    out = nan_buffer(sim, nblocks)
    shared.launch("block_sum_extern", grid=nblocks, block=bs, shared_bytes=bs * 4, args=[dx, out, n])
    np.testing.assert_array_equal(sim.download(out, np.float32, nblocks), ref)
    out2, maxes = nan_buffer(sim, nblocks), sim.alloc(4 * nblocks)
    shared.launch("block_sum_macro", grid=nblocks, block=bs, shared_bytes=bs * 8,
                  args=[dx, out2, maxes, n])
    np.testing.assert_array_equal(sim.download(out2, np.float32, nblocks), ref)
    ref_max = [int(x[i * bs:(i + 1) * bs].max()) for i in range(nblocks)]
    assert sim.download(maxes, np.int32, nblocks).tolist() == ref_max
    y = nan_buffer(sim, 256)
    shared.launch("reverse_block", grid=4, block=64, shared_bytes=64 * 4, args=[upload(sim, x[:256]), y])
    np.testing.assert_array_equal(sim.download(y, np.float32, 256), x[:256].reshape(4, 64)[:, ::-1].ravel())


def test_shared_memory_is_poisoned_at_block_start(sim: CudaSim, shared) -> None:
    # Static __shared__ variables are found per kernel; the namespace-scope
    # `extern __shared__` pointer (g_dyn) is not shared memory and is never poisoned.
    assert shared.static_shared_bytes("read_uninitialised") == 256
    assert shared.static_shared_bytes("reverse_block") == 0
    out = sim.alloc(6 * 128 * 4)
    shared.launch("read_uninitialised", grid=6, block=64, shared_bytes=64 * 4, args=[out])
    assert (sim.download(out, np.uint32, 6 * 128) == 0xFFFFFFFF).all()


def test_static_shared_counts_against_the_limit(sim: CudaSim, shared) -> None:
    assert shared.static_shared_bytes("huge_static") == 50 * 1024 * 4
    out = sim.alloc(4 * 64)
    shared.launch("huge_static", grid=1, block=64, args=[out])
    assert (sim.download(out, np.float32, 64) == 1.0).all()
    with pytest.raises(SimulatorError, match=r"plus 204800 bytes of static shared memory exceed"):
        shared.launch("huge_static", grid=1, block=64, shared_bytes=30 * 1024, args=[out])


def test_rewrite_keeps_lines_and_scopes() -> None:
    src = (
        "extern __shared__ float top[];\n"
        "// extern __shared__ float in_comment[];\n"
        "__global__ void k() {\n"
        "  extern __shared__ __align__(16) unsigned char\n    raw[];\n"
        "  const char* s = \"extern __shared__ int str[];\";\n"
        "}\n"
    )
    out, names = rewrite_dynamic_shared(src)
    assert out.count("\n") == src.count("\n")
    assert names == ["top"]
    assert "static thread_local float* top = ::cudasim::dynamic_shared<float>();" in out
    assert "  unsigned char* raw = ::cudasim::dynamic_shared<unsigned char>();\n\n" in out
    assert "in_comment[];" in out and "int str[];" in out
    # Function bodies are told from namespaces, extern "C" blocks, classes and initialisers.
    src = (
        'namespace a { extern "C" {\n'
        "__device__ auto f(int x) -> float* { extern __shared__ float s1[]; return s1; }\n"
        "struct S { __device__ void m() const { extern __shared__ int s2[]; } };\n"
        "}\n"
        "extern __shared__ double s3[];\n"
        "int table[] = {1, 2};\n"
        "template <typename T> __global__ void k(T* p) { extern __shared__ T s4[]; }\n"
        "}\n"
    )
    out, names = rewrite_dynamic_shared(src)
    assert names == ["s3"]
    for decl in ("float* s1 = ", "int* s2 = ", "static thread_local double* s3 = ", "T* s4 = ::cudasim::dynamic_shared<T>();"):
        assert decl in out


# ----------------------------------------------------------------------------------
# Warp-level primitives
# ----------------------------------------------------------------------------------

WARP_SRC = r"""
// One warp per row: sums with __shfl_down_sync (lane 0) and __shfl_xor_sync (every lane).
__global__ void row_sums(const float* x, float* down, float* xor_all, int cols) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % warpSize;
    float v = 0.0f;
    for (int c = lane; c < cols; c += 32) v += x[warp * cols + c];
    float a = v;
    for (int o = 16; o > 0; o >>= 1) a += __shfl_down_sync(0xffffffffu, a, o);
    float b = v;
    for (int o = 16; o > 0; o >>= 1) b += __shfl_xor_sync(0xffffffffu, b, o);
    if (lane == 0) down[warp] = a;
    xor_all[warp * 32 + lane] = b;
}

// Inclusive scan within segments of `width` lanes, and a broadcast of each segment's lane 1.
template <int W>
__device__ void scan_width(const int* x, int* scan, int* bcast) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    for (int d = 1; d < W; d <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, v, d, W);
        if ((threadIdx.x % W) >= d) v += u;
    }
    scan[i] = v;
    bcast[i] = __shfl_sync(0xffffffffu, x[i], 1, W);
}
__global__ void scan8(const int* x, int* scan, int* bcast) { scan_width<8>(x, scan, bcast); }

__global__ void votes(const int* x, unsigned* ballots, int* any_all, long long* wide) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
    const unsigned b = __ballot_sync(0xffffffffu, x[i] > 0);
    const int an = __any_sync(0xffffffffu, x[i] > 5);
    const int al = __all_sync(0xffffffffu, x[i] > -5);
    // A sub-group: only the even lanes take part.
    unsigned even = 0;
    if (lane % 2 == 0) even = __ballot_sync(0x55555555u, x[i] > 0);
    long long w = (long long)x[i] << 33;
    w = __shfl_sync(0xffffffffu, w, 31 - lane);  // 64-bit values travel intact
    if (lane == 0) { ballots[i / 32] = b; any_all[2 * (i / 32)] = an; any_all[2 * (i / 32) + 1] = al; }
    if (lane == 2) ballots[1000 + i / 32] = even;
    wide[i] = w;
    __syncwarp();
}

__global__ void partial_warp(float* out) {
    // 48 threads: the second warp has 16 lanes; the full mask still works there.
    float v = threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}
"""


@pytest.fixture(scope="module")
def warp(sim: CudaSim):
    return sim.load(WARP_SRC, ["row_sums", "scan8", "votes", "partial_warp"], name="warp")


def test_warp_shuffle_row_sums(sim: CudaSim, warp) -> None:
    rows, cols = 24, 70
    x = np.random.default_rng(3).integers(-9, 9, (rows, cols)).astype(np.float32)
    down, xall = nan_buffer(sim, rows), nan_buffer(sim, rows * 32)
    warp.launch("row_sums", grid=rows // 8, block=256, args=[upload(sim, x), down, xall, cols])
    ref = x.sum(axis=1)
    np.testing.assert_array_equal(sim.download(down, np.float32, rows), ref)
    np.testing.assert_array_equal(sim.download(xall, np.float32, (rows, 32)), np.repeat(ref[:, None], 32, 1))


def test_shfl_up_and_idx_with_width(sim: CudaSim, warp) -> None:
    x = np.random.default_rng(4).integers(0, 100, 128).astype(np.int32)
    scan, bcast = sim.alloc(512), sim.alloc(512)
    warp.launch("scan8", grid=2, block=64, args=[upload(sim, x), scan, bcast])
    seg = x.reshape(-1, 8)
    np.testing.assert_array_equal(sim.download(scan, np.int32, 128), np.cumsum(seg, axis=1).ravel())
    np.testing.assert_array_equal(sim.download(bcast, np.int32, 128), np.repeat(seg[:, 1], 8))


def test_ballot_any_all(sim: CudaSim, warp) -> None:
    x = np.random.default_rng(5).integers(-6, 7, 128).astype(np.int32)
    x[32:64] = 1  # a warp where all() holds and any(>5) does not
    ballots, aa, wide = sim.alloc(4 * 1004), sim.alloc(8 * 4), sim.alloc(8 * 128)
    warp.launch("votes", grid=2, block=64, args=[upload(sim, x), ballots, aa, wide])
    b = sim.download(ballots, np.uint32, 1004)
    got_aa = sim.download(aa, np.int32, (4, 2))
    for w in range(4):
        lanes = x[32 * w:32 * (w + 1)]
        assert b[w] == sum(1 << i for i in range(32) if lanes[i] > 0)
        assert b[1000 + w] == sum(1 << i for i in range(0, 32, 2) if lanes[i] > 0)
        assert tuple(got_aa[w]) == (int((lanes > 5).any()), int((lanes > -5).all()))
    expect_wide = (x.astype(np.int64) << 33).reshape(4, 32)[:, ::-1].ravel()
    np.testing.assert_array_equal(sim.download(wide, np.int64, 128), expect_wide)


def test_partial_last_warp(sim: CudaSim, warp) -> None:
    out = nan_buffer(sim, 48)
    warp.launch("partial_warp", grid=1, block=48, args=[out])
    got = sim.download(out, np.float32, 48)
    assert (got[:32] == sum(range(32))).all()
    # In the 16-lane warp, xor partners >= 16 do not exist: those steps return the own value.
    lanes = np.arange(32, 48, dtype=np.float32)
    expect = lanes * 2  # offset 16: own value doubles
    for o in (8, 4, 2, 1):
        expect = expect + expect[np.arange(16) ^ o]
    np.testing.assert_array_equal(got[32:], expect)


# ----------------------------------------------------------------------------------
# Atomics and half precision
# ----------------------------------------------------------------------------------

ATOMIC_SRC = r"""
__global__ void histogram(const int* keys, int n, int* counts, float* weights,
                          unsigned long long* total, int* maxkey, int* minkey) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int k = keys[i];
        atomicAdd(&counts[k], 1);
        atomicAdd(&weights[k], 0.5f);
        atomicAdd(total, (unsigned long long)k);
        atomicMax(maxkey, k);
        atomicMin(minkey, k);
    }
}
__global__ void cas_counter(int* counter, int* tickets) {
    // Every thread takes a unique ticket through a compare-and-swap loop.
    int old = *counter, assumed;
    do { assumed = old; old = atomicCAS(counter, assumed, assumed + 1); } while (old != assumed);
    tickets[blockIdx.x * blockDim.x + threadIdx.x] = old;
}

__global__ void convert(const float* x, unsigned short* h_bits, float* h_back,
                        unsigned short* b_bits, float* b_back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half h = __float2half(x[i]);
    const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
    h_bits[i] = __half_as_ushort(h);
    b_bits[i] = __bfloat16_as_ushort(b);
    h_back[i] = __half2float(__float2half_rn(__half2float(h)));
    b_back[i] = __bfloat162float(b);
}
"""


@pytest.fixture(scope="module")
def atomic(sim: CudaSim):
    return sim.load(ATOMIC_SRC, ["histogram", "cas_counter", "convert"], name="atomic")


def test_atomic_histogram_across_parallel_blocks(cache_dir: str, atomic) -> None:
    n, bins = 200_000, 37
    keys = np.random.default_rng(6).integers(0, bins, n).astype(np.int32)
    with CudaSim(workers=4, cache_dir=cache_dir) as s:
        mod = s.load(ATOMIC_SRC, atomic.kernels, name="atomic")
        counts, weights = s.alloc(4 * bins), s.alloc(4 * bins)
        s.upload(counts, np.zeros(bins, np.int32))
        s.upload(weights, np.zeros(bins, np.float32))
        total, mx, mn = s.alloc(8), s.alloc(4), s.alloc(4)
        s.upload(total, np.zeros(1, np.uint64))
        s.upload(mx, np.array([-1], np.int32))
        s.upload(mn, np.array([1 << 30], np.int32))
        mod.launch("histogram", grid=64, block=256,
                   args=[upload(s, keys), n, counts, weights, total, mx, mn])
        ref = np.bincount(keys, minlength=bins)
        np.testing.assert_array_equal(s.download(counts, np.int32, bins), ref)
        np.testing.assert_array_equal(s.download(weights, np.float32, bins), ref * 0.5)  # exact
        assert int(s.download(total, np.uint64, 1)[0]) == int(keys.astype(np.int64).sum())
        assert s.download(mx, np.int32, 1)[0] == keys.max()
        assert s.download(mn, np.int32, 1)[0] == keys.min()
        counter, tickets = s.alloc(4), s.alloc(4 * 64 * 128)
        s.upload(counter, np.zeros(1, np.int32))
        mod.launch("cas_counter", grid=64, block=128, args=[counter, tickets])
        assert sorted(s.download(tickets, np.int32, 64 * 128)) == list(range(64 * 128))


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), rounded)


def test_half_and_bf16_round_to_nearest_even(sim: CudaSim, atomic) -> None:
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf,
                         6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9, 3.0e38, 1.00048828125, 1.00146484375],
                        np.float32)
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F8000, 0x3F800001], np.uint32).view(np.float32)
    x = np.concatenate([specials, ties, rng.standard_normal(2000).astype(np.float32) * 10,
                        (rng.standard_normal(500) * 1e-6).astype(np.float32),
                        rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    n = x.size
    hb, hback, bb, bback = sim.alloc(2 * n), sim.alloc(4 * n), sim.alloc(2 * n), sim.alloc(4 * n)
    atomic.launch("convert", grid=(n + 255) // 256, block=256, args=[upload(sim, x), hb, hback, bb, bback, n])
    finite = ~np.isnan(x)
    with np.errstate(over="ignore"):
        ref_half = x.astype(np.float16)
    got_h = sim.download(hb, np.uint16, n)
    np.testing.assert_array_equal(got_h[finite], ref_half.view(np.uint16)[finite])
    assert np.isnan(got_h[~finite].view(np.float16)).all()
    np.testing.assert_array_equal(sim.download(hback, np.float32, n)[finite], ref_half.astype(np.float32)[finite])
    np.testing.assert_array_equal(sim.download(bb, np.uint16, n), _bf16_reference(x))
    back = (_bf16_reference(x).astype(np.uint32) << 16).view(np.float32)
    got_b = sim.download(bback, np.float32, n)
    np.testing.assert_array_equal(got_b[finite], back[finite])


# ----------------------------------------------------------------------------------
# Planted bugs
# ----------------------------------------------------------------------------------

BUGS_SRC = r"""
#line 10 "model.net"
__global__ void reverse_racy(const float* x, float* y) {
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x];
    // BUG: a __syncthreads() is missing here.
    y[threadIdx.x] = s[63 - threadIdx.x];
}
__global__ void reverse_ok(const float* x, float* y) {
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x];
}
__global__ void divergent_barrier(float* y) {
    if (threadIdx.x < 16) __syncthreads();
    y[threadIdx.x] = 1.0f;
}
__global__ void two_barriers(float* y) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}
__global__ void lane_exits_before_shuffle(float* y) {
    if (threadIdx.x == 5) return;
    y[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}
__global__ void write_past_end(float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 2.0f;  // BUG: should be i < n
}
__global__ void read_past_end(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];  // BUG: reads x[n]
}
__global__ void dyn_shared_overflow(float* y) {
    extern __shared__ float s[];
    s[threadIdx.x] = 1.0f;  // BUG: launched with fewer than blockDim.x floats
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}
__global__ void wild_write(float* y, long long address) {
    *reinterpret_cast<volatile float*>(address) = y[0];  // BUG: a garbage pointer
}
"""
BUG_KERNELS = ["reverse_racy", "reverse_ok", "divergent_barrier", "two_barriers",
               "lane_exits_before_shuffle", "write_past_end", "read_past_end", "wild_write",
               "dyn_shared_overflow"]


def test_missing_syncthreads_found_by_check_races(cache_dir: str) -> None:
    x = np.arange(64, dtype=np.float32)
    with CudaSim(check_races=True, seed=11, cache_dir=cache_dir) as s:
        mod = s.load(BUGS_SRC, BUG_KERNELS, name="bugs")
        dx, dy = upload(s, x), s.alloc(256)
        mod.launch("reverse_ok", grid=1, block=64, args=[dx, dy])  # a correct kernel passes
        np.testing.assert_array_equal(s.download(dy, np.float32, 64), x[::-1])
        with pytest.raises(SimulatorError) as info:
            mod.launch("reverse_racy", grid=1, block=64, args=[dx, dy])
    msg = str(info.value)
    assert "race detected in kernel reverse_racy" in msg
    assert re.search(r"schedules in_order and (reversed|shuffled)", msg)
    assert re.search(r"argument 1 \(float\*\) first differs at element \d+: ", msg)


def test_barrier_divergence_reports_file_and_line(sim: CudaSim) -> None:
    mod = sim.load(BUGS_SRC, BUG_KERNELS, name="bugs")
    y = sim.alloc(4 * 64)
    with pytest.raises(SimulatorError) as info:
        mod.launch("divergent_barrier", grid=2, block=32, args=[y])
    assert str(info.value).startswith(
        "barrier divergence in kernel divergent_barrier block (")
    assert ("threads (0,0,0)..(15,0,0) [16 threads] wait at model.net:23 (__syncthreads()); "
            "threads (16,0,0)..(31,0,0) [16 threads] exited") in str(info.value)
    with pytest.raises(SimulatorError) as info:
        mod.launch("two_barriers", grid=1, block=(4, 2), args=[y])
    msg = str(info.value)
    assert "barrier divergence in kernel two_barriers block (0,0,0)" in msg
    assert "wait at model.net:28 (__syncthreads())" in msg and "wait at model.net:30" in msg
    assert "threads (1,0,0), (3,0,0), (1,1,0), (3,1,0) [4 threads] wait at model.net:28" in msg
    with pytest.raises(SimulatorError) as info:
        mod.launch("lane_exits_before_shuffle", grid=1, block=32, args=[y])
    msg = str(info.value)
    assert msg.startswith("warp synchronisation deadlock in kernel lane_exits_before_shuffle block (0,0,0)")
    assert "wait at model.net:36 (__shfl_down_sync with mask 0xffffffff)" in msg
    assert "thread (5,0,0) exited" in msg
    # The module keeps working after kernel errors.
    mod.launch("reverse_ok", grid=1, block=64, args=[upload(sim, np.zeros(64, np.float32)), y])


def test_out_of_bounds_found_by_sanitize(cache_dir: str) -> None:
    with CudaSim(sanitize=True, workers=2, cache_dir=cache_dir) as s:
        mod = s.load(BUGS_SRC, BUG_KERNELS, name="bugs")
        n = 100
        y = s.alloc(4 * n)
        x = upload(s, np.arange(n, dtype=np.float32))
        mod.launch("reverse_ok", grid=1, block=64, args=[x, y])  # a correct kernel passes
        with pytest.raises(SimulatorError) as info:
            mod.launch("write_past_end", grid=4, block=32, args=[y, n])
        msg = str(info.value)
        assert "AddressSanitizer" in msg and "heap-buffer-overflow" in msg
        assert "kernel write_past_end block (3,0,0) thread (4,0,0)" in msg
        assert "WRITE of size 4" in msg and "model.net:40" in msg
        with pytest.raises(SimulatorError, match=r"(?s)kernel read_past_end .*READ of size 4"):
            mod.launch("read_past_end", grid=4, block=32, args=[x, y, n])
        # The launch ran to completion and the buffers live on in the sanitizer process.
        np.testing.assert_array_equal(s.download(y, np.float32, n - 1), np.arange(1, n, dtype=np.float32))
        # Dynamic shared memory past the launch's shared_bytes is poisoned too.
        mod.launch("dyn_shared_overflow", grid=2, block=32, shared_bytes=32 * 4, args=[y])
        with pytest.raises(SimulatorError, match=r"(?s)kernel dyn_shared_overflow block \([01],0,0\) thread \(16,0,0\).*WRITE of size 4"):
            mod.launch("dyn_shared_overflow", grid=2, block=32, shared_bytes=16 * 4, args=[y])


def test_sanitizer_process_crash_is_an_error_not_a_hang(cache_dir: str) -> None:
    s = CudaSim(sanitize=True, cache_dir=cache_dir)
    try:
        mod = s.load(BUGS_SRC, BUG_KERNELS, name="bugs")
        y = s.alloc(16)
        with pytest.raises(SimulatorError) as info:
            mod.launch("wild_write", grid=1, block=1, args=[y, 0x10])
        msg = str(info.value)
        assert "the sanitizer process died" in msg and "during launch of kernel wild_write" in msg
        assert "SEGV on unknown address" in msg
        with pytest.raises(SimulatorError, match="create a new CudaSim"):
            s.alloc(4)
    finally:
        s.close()


def test_correct_kernels_pass_check_races_and_sanitize(cache_dir: str) -> None:
    x = np.random.default_rng(8).standard_normal((37, 29)).astype(np.float32)
    w = np.random.default_rng(9).standard_normal((29, 45)).astype(np.float32)
    with CudaSim(sanitize=True, check_races=True, schedule="shuffled", seed=5, cache_dir=cache_dir) as s:
        mod = s.load(SHARED_SRC, ["matmul_tiled", "block_sum_extern"], name="shared-checked")
        dC = nan_buffer(s, 37 * 45)
        mod.launch("matmul_tiled", grid=(3, 3), block=(16, 16), args=[upload(s, x), upload(s, w), dC, 37, 45, 29])
        np.testing.assert_allclose(s.download(dC, np.float32, (37, 45)), x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
        out = nan_buffer(s, 2)
        mod.launch("block_sum_extern", grid=2, block=64, shared_bytes=256, args=[upload(s, x.ravel()[:128]), out, 128])


# ----------------------------------------------------------------------------------
# Compile errors
# ----------------------------------------------------------------------------------


def test_compile_error_has_message_and_reproducer(sim: CudaSim) -> None:
    src = "__global__ void broken(float* y) {\n  y[threadIdx.x] = 1.0f\n}\n"
    with pytest.raises(SimulatorError) as info:
        sim.load(src, ["broken"], name="broken")
    msg = str(info.value)
    assert "compiling CUDA module 'broken' for the simulator failed" in msg
    assert re.search(r"broken\.cu:2:\d+: error: expected .;. before", msg)
    cmd = msg.split("reproduce with:\n  ", 1)[1].strip()
    proc = subprocess.run(shlex.split(cmd), capture_output=True, text=True)
    assert proc.returncode != 0 and re.search(r"broken\.cu:2:\d+: error: expected .;. before", proc.stderr)
    with pytest.raises(SimulatorError, match=r"(?s)not_there.*must name a __global__ void function"):
        sim.load("__global__ void k() {}\n", ["not_there"], name="missing")


def test_switches_are_counted(sim: CudaSim) -> None:
    src = "__global__ void barriers() { for (int i = 0; i < 10; ++i) __syncthreads(); }\n"
    mod = sim.load(src, ["barriers"], name="barriers")
    before = mod.switch_count()
    mod.launch("barriers", grid=3, block=64)
    # One switch into each block's first thread, then each of its 64 threads switches
    # straight to the next one 11 times (at the 10 barriers and at its exit; the last exit
    # goes back to the launch): no scheduler in between.
    assert mod.switch_count() - before == 3 * (1 + 64 * 11)
