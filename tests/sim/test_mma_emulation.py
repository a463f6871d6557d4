"""The simulator's emulation of mma.sync m16n8k16, ldmatrix and cp.async (cudasim::ptx, reached
through templates/mma.cuh), each checked lane by lane against the PTX ISA's fragment tables
written out here independently (per lane, as a kernel builds its registers), and the
diagnostics for misuse: copies never waited for, misaligned addresses, partial warps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import netc.templates
from netc.sim import CudaSim, SimulatorError

pytestmark = pytest.mark.sim

TEMPLATES = Path(netc.templates.__file__).parent

KERNELS = r"""
// One warp: d = a . b + c for a 16x8x16 tile, the registers built per the ISA's tables
// (groupID g = lane / 4, t = lane % 4).
template <bool BF16>
__device__ void mma_tile(const unsigned short* a, const unsigned short* b, const float* c,
                         float* d)
{
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned ar[4], br[2];
    float cr[4], dr[4];
    for (int i = 0; i < 4; ++i) {  // a0..a7: rows g, g + 8, g, g + 8; columns 2t (+ 8)
        const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
        ar[i] = a[row * 16 + col] | (unsigned)a[row * 16 + col + 1] << 16;
    }
    for (int i = 0; i < 2; ++i) {  // b0..b3: rows (k) 2t, 2t + 1 (+ 8), column g
        const int k = 2 * t + 8 * i;
        br[i] = b[k * 8 + g] | (unsigned)b[(k + 1) * 8 + g] << 16;
    }
    for (int i = 0; i < 4; ++i)  // c0..c3: rows g, g, g + 8, g + 8; columns 2t, 2t + 1
        cr[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    netc_mma_m16n8k16<BF16>(dr, ar, br, cr);
    for (int i = 0; i < 4; ++i)
        d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = dr[i];
}
extern "C" __global__ void mma_f16(const unsigned short* a, const unsigned short* b,
                                   const float* c, float* d) { mma_tile<false>(a, b, c, d); }
extern "C" __global__ void mma_bf16(const unsigned short* a, const unsigned short* b,
                                    const float* c, float* d) { mma_tile<true>(a, b, c, d); }

// Four 8x8 matrices (rows 16 bytes apart, plus `pad` elements) through ldmatrix.x4, plain
// and .trans: out[lane][j] and out_t[lane][j].
extern "C" __global__ void ldmatrix4(const unsigned short* m, unsigned* out, unsigned* out_t,
                                     int pad)
{
    NETC_DYNAMIC_SHARED(unsigned short, s);
    const int pitch = 8 + pad, lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32)
        s[i / 8 * pitch + i % 8] = m[i];
    __syncthreads();
    unsigned r[4];
    netc_ldmatrix_x4<false>(r, s + lane * pitch);
    for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
    netc_ldmatrix_x4<true>(r, s + lane * pitch);
    for (int j = 0; j < 4; ++j) out_t[lane * 4 + j] = r[j];
}

// Each thread copies 16 bytes (8 elements) of src into shared memory with cp.async: the
// first `valid` threads for real, the others zero-filled; seen[] records shared memory
// before the wait, out[] after it.
extern "C" __global__ void copy16(const unsigned short* src, unsigned short* seen,
                                  unsigned short* out, int valid, int wait)
{
    NETC_DYNAMIC_SHARED(unsigned short, s);
    const int i = threadIdx.x;
    netc_cp_async_16(s + 8 * i, src + 8 * i, i < valid ? 16u : 0u);
    netc_cp_async_commit();
    for (int e = 0; e < 8; ++e) seen[8 * i + e] = s[8 * i + e];
    if (wait) netc_cp_async_wait<0>();
    for (int e = 0; e < 8; ++e) out[8 * i + e] = s[8 * i + e];
}

// Two groups: waiting with N = 1 lands the first and not the second.
extern "C" __global__ void two_groups(const unsigned short* src, unsigned short* out)
{
    NETC_DYNAMIC_SHARED(unsigned short, s);
    netc_cp_async_16(s, src, 16);
    netc_cp_async_commit();
    netc_cp_async_16(s + 8, src + 8, 16);
    netc_cp_async_commit();
    netc_cp_async_wait<1>();
    for (int e = 0; e < 16; ++e) out[e] = s[e];
    netc_cp_async_wait<0>();
    for (int e = 0; e < 16; ++e) out[16 + e] = s[e];
}

extern "C" __global__ void misaligned(const unsigned short* src)
{
    NETC_DYNAMIC_SHARED(unsigned short, s);
    netc_cp_async_16(s + 4, src, 16);
    netc_cp_async_wait<0>();
}
"""

NAMES = ["mma_f16", "mma_bf16", "ldmatrix4", "copy16", "two_groups", "misaligned"]
SOURCE = "\n".join((TEMPLATES / name).read_text() for name in ("common.cuh", "mma.cuh")) + KERNELS
"""The module, as the simulator and a GPU (tests/gpu/test_mma_gpu.py) compile it."""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory):
    with CudaSim(workers=1, cache_dir=str(tmp_path_factory.mktemp("cache"))) as sim:
        yield sim, sim.load(SOURCE, NAMES, name="mma_emulation")


def _bits(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f16":
        return values.astype(np.float16).view(np.uint16)
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact below


def _values(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _upload(device: Any, array: np.ndarray):
    buffer = device.alloc(array.nbytes)
    device.upload(buffer, array)
    return buffer


# The checks take a device (CudaSim or netc.runtime.pycuda_device.PyCudaDevice) and a module of
# SOURCE loaded on it, so that a GPU checks the same instructions against the same tables.


def check_mma(device: Any, module: Any, dtype: str) -> None:
    rng = np.random.default_rng(1)
    # Small integers times powers of two: every product and sum is exact in float, so the
    # result does not depend on the order of addition and must match exactly.
    a = _bits(rng.integers(-8, 9, (16, 16)) * 0.25, dtype)
    b = _bits(rng.integers(-8, 9, (16, 8)) * 0.5, dtype)
    c = rng.integers(-50, 50, (16, 8)).astype(np.float32)
    d = _upload(device, np.full((16, 8), np.nan, np.float32))
    module.launch(f"mma_{dtype}", (1, 1, 1), (32, 1, 1), 0,
                  [_upload(device, a), _upload(device, b), _upload(device, c), d])
    expected = _values(a, dtype) @ _values(b, dtype) + c
    np.testing.assert_array_equal(device.download(d, np.float32, (16, 8)), expected)


def check_ldmatrix(device: Any, module: Any, pad: int) -> None:
    m = np.arange(256, dtype=np.uint16).reshape(4, 8, 8) * 3 + 1
    out, out_t = device.alloc(32 * 4 * 4), device.alloc(32 * 4 * 4)
    module.launch("ldmatrix4", (1, 1, 1), (32, 1, 1), 2 * 32 * (8 + pad),
                  [_upload(device, m), out, out_t, pad])
    lane = np.arange(32)[:, None]
    j = np.arange(4)[None, :]
    row, col = lane // 4, 2 * (lane % 4)
    plain = m[j, row, col].astype(np.uint32) | m[j, row, col + 1].astype(np.uint32) << 16
    trans = m[j, col, row].astype(np.uint32) | m[j, col + 1, row].astype(np.uint32) << 16
    np.testing.assert_array_equal(device.download(out, np.uint32, (32, 4)), plain)
    np.testing.assert_array_equal(device.download(out_t, np.uint32, (32, 4)), trans)


def check_cp_async(device: Any, module: Any) -> np.ndarray:
    """Copies with zero fill; returns what shared memory held before the wait."""
    src = np.arange(1, 8 * 32 + 1, dtype=np.uint16)
    seen, out = device.alloc(512), device.alloc(512)
    module.launch("copy16", (1, 1, 1), (32, 1, 1), 512, [_upload(device, src), seen, out, 20, 1])
    expected = src.copy()
    expected[8 * 20:] = 0
    np.testing.assert_array_equal(device.download(out, np.uint16, 256), expected)
    return device.download(seen, np.uint16, 256)


def check_two_groups(device: Any, module: Any) -> np.ndarray:
    """wait_group 1 lands the older group; returns the newer group's bytes after it."""
    src = np.arange(1, 17, dtype=np.uint16)
    out = device.alloc(64)
    module.launch("two_groups", (1, 1, 1), (1, 1, 1), 32, [_upload(device, src), out])
    got = device.download(out, np.uint16, (2, 16))
    np.testing.assert_array_equal(got[0, :8], src[:8])
    np.testing.assert_array_equal(got[1], src)
    return got[0, 8:]


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_mma_follows_the_isa_fragment_layout(module, dtype: str) -> None:
    check_mma(*module, dtype)


@pytest.mark.parametrize("pad", [0, 8])
def test_ldmatrix_gives_each_lane_its_elements(module, pad: int) -> None:
    check_ldmatrix(*module, pad)


def test_ldmatrix_rejects_a_misaligned_row(module) -> None:
    sim, mod = module
    m = np.zeros(256, np.uint16)
    with pytest.raises(SimulatorError, match=r"not 16-byte aligned"):
        mod.launch("ldmatrix4", grid=1, block=32, shared_bytes=2 * 32 * 12,
                   args=[_upload(sim, m), sim.alloc(512), sim.alloc(512), 4])


def test_cp_async_lands_at_the_wait_and_zero_fills(module) -> None:
    before = check_cp_async(*module)
    # Before the wait: the block's poisoned shared memory, not the data.
    assert (before == 0xFFFF).all()


def test_wait_group_keeps_the_newest_groups_in_flight(module) -> None:
    newer = check_two_groups(*module)
    assert (newer == 0xFFFF).all()  # not landed yet: the latest moment the ISA allows


def test_copies_never_waited_for_fail_the_launch(module) -> None:
    sim, mod = module
    src = np.zeros(256, np.uint16)
    with pytest.raises(SimulatorError, match=r"cp\.async copies never waited for"):
        mod.launch("copy16", grid=1, block=32, shared_bytes=512,
                   args=[_upload(sim, src), sim.alloc(512), sim.alloc(512), 32, 0])


def test_cp_async_rejects_misaligned_addresses(module) -> None:
    sim, mod = module
    with pytest.raises(SimulatorError, match="must be 16-byte aligned"):
        mod.launch("misaligned", grid=1, block=1, shared_bytes=64,
                   args=[_upload(sim, np.zeros(8, np.uint16))])


def test_mma_needs_the_whole_warp(module) -> None:
    sim, mod = module
    zeros = np.zeros(256, np.uint16)
    with pytest.raises(SimulatorError, match="needs all 32 lanes"):
        mod.launch("mma_f16", grid=1, block=16, args=[
            _upload(sim, zeros), _upload(sim, zeros), _upload(sim, np.zeros(128, np.float32)),
            sim.alloc(512)])
