"""`--precision tf32`: f32 dense and matmul on TF32 tensor cores (templates/gemm_tf32.cuh:
mma.sync m16n8k8 .tf32, ldmatrix, a cp.async pipeline), run on the simulator, whose emulation
of cvt.rna.tf32.f32 and the m16n8k8 TF32 mma is checked here against the PTX ISA's tables.

The reference is NumPy on TF32-rounded operands (round to nearest, ties away, 10 mantissa
bits) accumulated in float64: the kernel's products are exact in float, so it differs only by
its float accumulation, at most about K units in the last place of the sum of |a| |b|."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import netc.templates
from netc.codegen.emit import generate
from netc.codegen.tiles import GemmTile, GemvTile, MmaTile, Tf32Tile
from netc.codegen.tiling import choose_tiles, plan_tiles
from netc.driver import CompileOptions, compile_graph, run_plan
from netc.ir import Graph
from netc.ops.builder import GraphBuilder
from netc.sim import CudaSim
from tests.sim.codegen_support import simulator
from tests.sim.graph_builder import parallel, random_inputs, random_weights
from tests.sim.variants import TF32_TILES, catalog

pytestmark = pytest.mark.sim

TEMPLATES = Path(netc.templates.__file__).parent
EXAMPLES = Path(__file__).parents[2] / "examples"


def tf32(values: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 on finite floats: the low 13 bits rounded off, ties away from zero."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def assert_tf32_product(name: str, actual: np.ndarray, a: np.ndarray, b: np.ndarray,
                        bias: np.ndarray | None = None) -> None:
    """`actual` is a . b (+ bias) of the TF32-rounded operands up to float accumulation over K,
    and not the f32 product (so TF32 rounding did happen)."""
    a64, b64 = tf32(a).astype(np.float64), tf32(b).astype(np.float64)
    expected = a64 @ b64 + (0.0 if bias is None else bias.astype(np.float64))
    magnitude = np.abs(a64) @ np.abs(b64) + (0.0 if bias is None else np.abs(bias))
    k = a.shape[-1]
    bound = (k + 2) * 2.0**-23 * magnitude + 1e-30
    excess = np.abs(actual.astype(np.float64) - expected) - bound
    bad = ~(excess <= 0)  # NaN (an unwritten, poisoned element) is bad too
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.size} elements differ from the "
                           f"TF32 reference ({int(np.isnan(actual).sum())} NaN), by up to "
                           f"{float(np.nanmax(excess)):.3g} past the bound of K = {k}")
    exact = a.astype(np.float64) @ b.astype(np.float64)
    exact += 0.0 if bias is None else bias
    assert (np.abs(actual - exact) > (k + 2) * 2.0**-23 * magnitude).any(), \
        f"{name}: matches the unrounded f32 product: no TF32 rounding"


def run(graph: Graph, tiles: Mapping[str, Any], batch: int,
        seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                dict[str, np.ndarray], list[str]]:
    plan = generate(graph, tiles)
    unknown = sorted(set(plan.kernels) - set(catalog()))
    assert not unknown, f"kernels missing from tests/sim/variants.py's catalog: {unknown}"
    rng = np.random.default_rng(seed)
    weights = random_weights(graph, rng, shared=True)
    inputs = random_inputs(graph, batch, rng)
    outputs = run_plan(plan, simulator(), weights, inputs, poison=True)
    return weights, inputs, outputs, list(plan.kernels)


# Ragged sizes around the tiles; K below, at and past the k-tiles (16, 32), multiples of 4
# (cp.async) and not, and not multiples of 8 (the mma's k).
@pytest.mark.parametrize("m, n, k", [(1, 129, 40), (31, 7, 127), (33, 127, 12), (129, 31, 33),
                                     (127, 33, 129), (7, 1, 1)])
def test_dense_every_tile(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("dense", {"x": ("f32", ("N", k))}, TF32_TILES, units=n, bias=True)
    weights, inputs, outputs, kernels = run(graph, tiles, batch=m, seed=m + n + k)
    assert all("_tf32_" in name for name in kernels), kernels
    for index in range(len(TF32_TILES)):
        assert_tf32_product(f"out{index}", outputs[f"out{index}"], inputs["x"],
                            weights[f"dense_{index}.weight"].T, weights[f"dense_{index}.bias"])
    # Every tile adds each output's products in the same order (mma k-steps of 8, in k order).
    for index in range(1, len(TF32_TILES)):
        np.testing.assert_array_equal(outputs[f"out{index}"], outputs["out0"])


@pytest.mark.parametrize("m, n, k", [(33, 40, 129), (7, 31, 64), (129, 1, 7), (1, 33, 31)])
def test_matmul_every_tile(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("matmul", {"a": ("f32", ("N", m, k)), "b": ("f32", (k, n))},
                            TF32_TILES)
    _, inputs, outputs, kernels = run(graph, tiles, batch=2, seed=m * n + k)
    assert all("_tf32_" in name for name in kernels), kernels
    for index in range(len(TF32_TILES)):
        assert_tf32_product(f"out{index}", outputs[f"out{index}"], inputs["a"], inputs["b"])


def _mlp(dtype: str = "f32") -> Graph:
    builder = GraphBuilder("mlp")
    x = builder.input("x", dtype, ("N", 3, 8, 8))
    y = builder.op("conv2d", x, filters=8, kernel=3, padding=1)
    y = builder.op("flatten", y)
    builder.output("y", builder.op("relu", builder.op("dense", y, units=40)))
    return builder.build()


def test_tf32_puts_dense_and_matmul_on_tf32_tiles_and_nothing_else() -> None:
    graph = _mlp()
    by_op = {c.shape.op: c.tile for c in plan_tiles(graph, batch=64, precision="tf32")}
    assert isinstance(by_op["dense"], Tf32Tile) and isinstance(by_op["conv2d"], GemmTile)
    assert not any(isinstance(t, MmaTile) for t in choose_tiles(graph, batch=64).values())
    # M <= 8 takes the (exact f32) GEMV kernel; a tensor-core tile given becomes a TF32 one.
    small = {c.shape.op: c.tile for c in plan_tiles(graph, batch=1, precision="tf32")}
    assert isinstance(small["dense"], GemvTile)
    given = {c.shape.op: c.tile for c in plan_tiles(
        graph, overrides={"all": MmaTile(32, 32, 32, 1, 1, 2)}, batch=1, precision="tf32")}
    assert given["dense"] == Tf32Tile(32, 32, 32, 1, 1, 2)
    assert isinstance(given["conv2d"], GemmTile)
    compiled = compile_graph(graph, CompileOptions(precision="tf32", batch=64))
    assert any("_tf32_" in name for name in compiled.plan.kernels)
    assert compiled.graph.nodes[0].type.dtype == "f32"  # storage stays f32


def test_netc_compare_reports_the_tf32_error(capsys: pytest.CaptureFixture[str]) -> None:
    from netc.cli import main

    # The encoder's dense layers have 16 rows a sequence (the tiles are chosen at batch 1, where
    # an MLP's dense layers, of one row, take the exact f32 GEMV kernel instead).
    code = main(["compare", str(EXAMPLES / "transformer.net"), "--random-input",
                 "--backends", "reference,cudasim", "--precision", "tf32"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tolerance rtol 0.01, atol 0.01; cudasim and cuda in tf32" in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith("cudasim")]
    errors = [float(row[2]) for row in rows]
    assert len(errors) == 2 and all(1e-5 < e < 1e-2 for e in errors), out  # f32: below 1e-6


# The emulation -------------------------------------------------------------------------------

KERNELS = r"""
// One warp: d = a . b + c for a 16x8x8 TF32 tile, the registers built per the ISA's tables
// (g = lane / 4, t = lane % 4: a_i is row g + 8 (i % 2), column t + 4 (i / 2); b_i row
// t + 4 i, column g), each operand rounded by cvt.rna.tf32.f32. `planted` swaps A's columns
// t and t + 4 (a wrong fragment index).
extern "C" __global__ void mma_tf32(const float* a, const float* b, const float* c, float* d,
                                    int planted)
{
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned ar[4], br[2];
    float cr[4], dr[4];
    for (int i = 0; i < 4; ++i)
        ar[i] = netc_cvt_tf32(a[(g + 8 * (i % 2)) * 8 + t + 4 * (planted ? 1 - i / 2 : i / 2)]);
    for (int i = 0; i < 2; ++i)
        br[i] = netc_cvt_tf32(b[(t + 4 * i) * 8 + g]);
    for (int i = 0; i < 4; ++i)
        cr[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    netc_mma_m16n8k8_tf32(dr, ar, br, cr);
    for (int i = 0; i < 4; ++i)
        d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = dr[i];
}

extern "C" __global__ void cvt_tf32(const float* x, unsigned* out, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        out[i] = netc_cvt_tf32(x[i]);
}
"""


SOURCE = "\n".join((TEMPLATES / name).read_text() for name in ("common.cuh", "mma.cuh")) + KERNELS
"""The module, as the simulator and a GPU (tests/gpu/test_tf32_gpu.py) compile it."""
NAMES = ["mma_tf32", "cvt_tf32"]


@pytest.fixture(scope="module")
def emulation(tmp_path_factory: pytest.TempPathFactory):
    with CudaSim(workers=1, cache_dir=str(tmp_path_factory.mktemp("cache"))) as sim:
        yield sim, sim.load(SOURCE, NAMES, name="tf32_emulation")


def _upload(device: Any, array: np.ndarray) -> Any:
    buffer = device.alloc(array.nbytes)
    device.upload(buffer, array)
    return buffer


def _mma(device: Any, module: Any, a: np.ndarray, b: np.ndarray, c: np.ndarray,
         planted: int) -> np.ndarray:
    d = _upload(device, np.full((16, 8), np.nan, np.float32))
    module.launch("mma_tf32", (1, 1, 1), (32, 1, 1), 0,
                  [_upload(device, a), _upload(device, b), _upload(device, c), d, planted])
    return device.download(d, np.float32, (16, 8))


# The checks take a device (CudaSim or a PyCudaDevice) and a module of SOURCE loaded on it, so
# that a GPU checks the same instructions against the same tables.


def check_mma_tf32(device: Any, module: Any) -> None:
    rng = np.random.default_rng(3)
    # Small integers times powers of two: exact in TF32, every sum exact in float.
    a = (rng.integers(-8, 9, (16, 8)) * 0.25).astype(np.float32)
    b = (rng.integers(-8, 9, (8, 8)) * 0.5).astype(np.float32)
    c = rng.integers(-50, 50, (16, 8)).astype(np.float32)
    expected = a.astype(np.float64) @ b + c
    np.testing.assert_array_equal(_mma(device, module, a, b, c, planted=0), expected)
    wrong = _mma(device, module, a, b, c, planted=1)
    assert (wrong != expected).sum() > 64, "a wrong fragment index went unnoticed"
    # Random floats: the operands are rounded (not truncated, not kept in f32).
    a = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    b = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
    product = _mma(device, module, a, b, np.zeros((16, 8), np.float32), planted=0)
    assert_tf32_product("mma", product, a, b)


def check_cvt_tf32(device: Any, module: Any) -> None:
    ulp = 2.0**-10  # TF32's unit in the last place at 1
    values = np.array([1.0, 1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2.0**-23, 1 + 1.5 * ulp,
                       3.14159265, -1e-30, 6.5e4, np.finfo(np.float32).max, np.inf, -np.inf,
                       np.nan], np.float32)
    out = _upload(device, np.zeros(values.size, np.uint32))
    module.launch("cvt_tf32", (1, 1, 1), (32, 1, 1), 0,
                  [_upload(device, values), out, values.size])
    got = device.download(out, np.uint32, values.size).view(np.float32)
    # Independently of the bit trick: 11 significant bits, |m| rounded half up (away).
    mantissa, exponent = np.frexp(values[:-3].astype(np.float64))
    rounded = np.sign(mantissa) * np.floor(np.abs(mantissa) * 2**11 + 0.5) / 2**11
    with np.errstate(over="ignore"):
        expected = (rounded * 2.0**exponent).astype(np.float32)
    np.testing.assert_array_equal(got[:-3], expected)
    assert got[1] == 1 + ulp and got[2] == -(1 + ulp) and got[4] == 1 + 2 * ulp  # ties away
    assert got[8] == np.inf  # past the largest TF32: rounds away, to infinity
    assert got[9] == np.inf and got[10] == -np.inf and np.isnan(got[11])
    np.testing.assert_array_equal(got[:-1], tf32(values[:-1]))  # the tests' reference agrees


def test_mma_tf32_follows_the_isa_fragment_layout_and_a_wrong_index_fails(emulation) -> None:
    check_mma_tf32(*emulation)


def test_cvt_rounds_to_nearest_ties_away(emulation) -> None:
    check_cvt_tf32(*emulation)


# SASS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_sass_main_loop_is_tf32_hmma_ldsm_and_cp_async_without_spills(arch: str) -> None:
    from netc.codegen import kernels
    from netc.toolchain.sass import format_mix, instruction_mix, loops
    from tests.unit.test_sass import compile_sass, module_of

    specs = [kernels.gemm_kernel("f32", tile, b_transposed=transposed, has_bias=False)
             for tile in (TF32_TILES[0], TF32_TILES[-1]) for transposed in (True, False)]
    binary, sass = compile_sass(module_of("sass_tf32_gemm", specs), "sass_tf32_gemm")
    for spec in specs:
        assert not binary.kernel_resources(arch)[spec.name].spills, f"{spec.name} spills"
        pipelined = [body for body in loops(sass[arch][spec.name])
                     if any(i.base == "LDGSTS" for i in body)]
        assert pipelined, f"{arch} {spec.name}: no loop issues cp.async"
        body = min(pipelined, key=len)
        mix = instruction_mix(body)
        print(f"{arch} {spec.name} cp.async main loop: {sum(mix.values())} instructions: "
              f"{format_mix(mix)}")
        hmma = {i.opcode for i in body if i.base == "HMMA"}
        assert hmma and all(".TF32" in opcode for opcode in hmma), hmma
        assert mix["LDGSTS"] and mix["LDSM"], format_mix(mix)  # cp.async, ldmatrix (A)
        assert not mix["LDG"], "element-by-element staging in the cp.async loop"
        # Shared stores: only the in-place TF32 rounding of the thread's own 16-byte chunks.
        assert all(i.opcode.endswith(".128") for i in body if i.base in ("STS", "LDGSTS")), \
            format_mix(mix)
