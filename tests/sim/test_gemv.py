"""The GEMV kernel (templates/gemv.cuh): dense, matmul and matmul_nt with few rows, on the
simulator against the reference (outputs poisoned), chosen by the tiling heuristic, compiled
without spills.

Dense copies with different GEMV tiles sum each output in the same order (a lane's slice of K,
then the warp's shuffle tree; the rows and warps of a block do not change it), so they must
agree bit for bit; matmul's warps split K, so its tiles agree within the tolerance only. K of
1000 takes the 128-bit path (a multiple of 4 and 8 elements), the other sizes the scalar one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netc.codegen.emit import generate, render_module
from netc.codegen.tiles import GemmTile, GemvTile, MmaTile
from netc.codegen.tiling import (
    GemmShape,
    choose_tiles,
    heuristic_tile,
    parse_tile,
    parse_tile_overrides,
    plan_tiles,
)
from netc.diagnostics import CompileError
from netc.driver import run_plan
from netc.frontend import load_file
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.toolchain import CompilerNotFound, compile_module
from netc.toolchain.sass import ToolNotFound, disassemble, find_tool
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, simulator
from tests.sim.graph_builder import parallel, random_inputs, random_weights
from tests.sim.networks import network
from tests.sim.test_nan_inf import assert_same_special_values
from tests.sim.variants import GEMV_NETWORK, catalog

pytestmark = pytest.mark.sim

RESNET18 = Path(__file__).resolve().parents[2] / "examples" / "resnet18.net"

DTYPES = ("f32", "f16", "bf16")
ROWS = (1, 2, 7, 8)
"""M: one row, and around the 8-row tile (a batch larger than a tile's rows takes more
blocks: the one-row tile runs all of them)."""
DENSE_TILES = (GemvTile(1, 4), GemvTile(8, 2), GemvTile(8, 8))
MATMUL_TILES = (GemvTile(1, 8), GemvTile(8, 2))
DENSE_SHAPES = [(1, 1), (7, 31), (33, 127), (129, 7), (127, 33), (31, 129), (1000, 33),
                (1000, 1000)]
"""(K, N): ragged around a warp (31, 33) and a block of warps, 1, and K = 1000 for the vector
loads (N = 1000: ResNet's classifier). f16 and bf16 take three of them (`DENSE_CASES`)."""
DENSE_CASES = [("f32", k, n) for k, n in DENSE_SHAPES] + [
    (dtype, k, n) for dtype in ("f16", "bf16") for k, n in ((7, 31), (129, 7), (1000, 33))]


@pytest.mark.parametrize("dtype, k, n", DENSE_CASES)
def test_dense_matches_reference(dtype: str, k: int, n: int) -> None:
    for bias in (True, False):
        graph, tiles = parallel("dense", {"x": (dtype, ("N", k))}, DENSE_TILES, units=n,
                                bias=bias)
        for m in ROWS:
            plan = check_graph(graph, tiles, batch=m, seed=m, shared_weights=True,
                               same_outputs=True)
            assert all(name.startswith("netc_gemv_") for name in plan.kernels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", ROWS)
def test_batched_matmul_with_broadcast_strides_matches_reference(dtype: str, m: int) -> None:
    # Two batch levels: the named one broadcasts b (stride 0), the inner one walks both; then a
    # one-level batch broadcasting a.
    for k, n in ((33, 31), (129, 1), (1, 129), (7, 100)):
        graph, tiles = parallel("matmul", {"a": (dtype, ("N", 3, m, k)),
                                           "b": (dtype, (3, k, n))}, MATMUL_TILES)
        check_graph(graph, tiles, batch=2, seed=k)
        graph, tiles = parallel("matmul", {"a": (dtype, (m, k)), "b": (dtype, ("N", k, n))},
                                MATMUL_TILES)
        check_graph(graph, tiles, batch=3, seed=n)
        # A matmul of a transposed b (fold_transposes' matmul_nt) reads b as dense its weight.
        graph, tiles = parallel("matmul_nt", {"a": (dtype, ("N", k)), "b": (dtype, (n, k))},
                                DENSE_TILES)
        check_graph(graph, tiles, batch=m, seed=n, same_outputs=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_heuristic_gives_fused_dense_and_matmul_layers_the_gemv(dtype: str) -> None:
    original = network(GEMV_NETWORK, dtype)
    rng = np.random.default_rng(3)
    weights = random_weights(original, rng)
    optimized = run_pipeline(original, 2, weights, verify=True)
    assert optimized.weights is not None
    tiles = choose_tiles(optimized.graph)  # at batch 1
    assert len(tiles) == 3 and all(isinstance(t, GemvTile) for t in tiles.values()), tiles
    plan = generate(optimized.graph, tiles)
    assert set(plan.kernels) <= set(catalog())
    assert sorted(name.split("_ep_")[0] for name in plan.kernels if "_ep_" in name) == [
        f"netc_gemv_{dtype}_rows1_warps2_nt_bias", f"netc_gemv_{dtype}_rows1_warps8_nn"]
    for m in ROWS:
        inputs = random_inputs(original, m, rng)
        actual = run_plan(plan, simulator(), optimized.weights, inputs, poison=True)
        for name, value in run_reference(original, weights, inputs).items():
            # The fused epilogue keeps the product in float, where the reference rounds it.
            rtol, atol = TOLERANCE[dtype]
            assert_close(f"{name} at M = {m}", actual[name], value, 2 * rtol, 2 * atol)


NAN, INF = np.float32(np.nan), np.float32(np.inf)


@pytest.mark.parametrize("k", [33, 1000])
def test_nan_and_infinity_propagate_like_the_reference(k: int) -> None:
    graph, tiles = parallel("dense", {"x": ("f32", ("N", k))}, DENSE_TILES, units=9)
    matmul, matmul_tiles = parallel("matmul", {"a": ("f32", (5, k)), "b": ("f32", (k, 40))},
                                    MATMUL_TILES)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[0, 3] = NAN                 # a NaN row
    x[1, k - 1] = INF             # +inf times weights of both signs: +inf and -inf outputs
    x[2, 0], x[2, 1] = INF, -INF  # inf - inf: NaN wherever both weights share a sign
    weights = random_weights(graph, rng, shared=True)
    weights[next(name for name in weights if name.endswith("weight"))][4, 5] = -INF
    for built, chosen, inputs in (
            (graph, tiles, {"x": x}),
            (matmul, matmul_tiles, {"a": x, "b": rng.standard_normal((k, 40)).astype(
                np.float32)})):
        parameters = weights if built is graph else {}
        actual = run_plan(generate(built, chosen), simulator(), parameters, inputs, poison=True)
        expected = run_reference(built, parameters, inputs)
        for name, value in expected.items():
            assert np.isnan(value).any() and np.isinf(value).any(), name
            assert_same_special_values(name, actual[name], value)


# The heuristic and the tile syntax ---------------------------------------------------------


def test_few_rows_take_the_gemv_and_fill_the_gpu() -> None:
    tile, why = heuristic_tile(GemmShape("dense", 1, 1000, 512), "sm_90")
    # ResNet's classifier at batch 1: 4 columns a block, 250 blocks for 132 SMs (8 would give
    # 125, fewer blocks than SMs).
    assert tile == GemvTile(1, 4) and "250 blocks" in why, why
    assert heuristic_tile(GemmShape("dense", 8, 1000, 512, dtype="bf16"), "sm_90")[0] == \
        GemvTile(8, 4)
    assert heuristic_tile(GemmShape("dense", 2, 50000, 768), "sm_90")[0] == GemvTile(8, 8)
    assert heuristic_tile(GemmShape("dense", 1, 7, 512), "sm_90")[0] == GemvTile(1, 2)
    # matmul: 32 columns a block whatever the warps; 8 warps split K the most.
    assert heuristic_tile(GemmShape("matmul", 1, 1000, 64, 12), "sm_90")[0] == GemvTile(1, 8)
    assert heuristic_tile(GemmShape("matmul", 1, 1000, 64), "sm_90")[0] == GemvTile(1, 8)
    # matmul_nt (B as [N, K]) has a column a warp, as dense: 12 x 125 blocks of 8 warps; and
    # 150 blocks of 2 warps for 300 columns.
    assert heuristic_tile(GemmShape("matmul_nt", 1, 1000, 64, 12), "sm_90")[0] == \
        GemvTile(1, 8)
    assert heuristic_tile(GemmShape("matmul_nt", 2, 300, 64), "sm_90")[0] == GemvTile(8, 2)
    # More rows, a convolution, or a grid too tall along y keep the tiled GEMM.
    assert isinstance(heuristic_tile(GemmShape("dense", 64, 1000, 512), "sm_90")[0], GemmTile)
    assert isinstance(heuristic_tile(GemmShape("dense", 9, 1000, 512, dtype="f16"),
                                     "sm_90")[0], MmaTile)
    assert isinstance(heuristic_tile(GemmShape("conv2d", 1, 12544, 9), "sm_90")[0], GemmTile)
    assert isinstance(heuristic_tile(GemmShape("dense", 1, 600000, 64), "sm_90")[0], GemmTile)


def test_resnet18_classifier_takes_the_gemv_at_batch_1_only() -> None:
    graph = run_pipeline(load_file(RESNET18), 2).graph
    for batch, kind in ((1, GemvTile), (64, GemmTile)):
        (fc,) = [c for c in plan_tiles(graph, "sm_90", batch=batch) if c.shape.op == "dense"]
        assert isinstance(fc.tile, kind), (batch, fc)
        assert (fc.shape.m, fc.shape.n, fc.shape.k) == (batch, 1000, 512)
        if batch == 1:
            assert (fc.tile, fc.blocks) == (GemvTile(1, 4), 250)


def test_tile_syntax_and_tuning_db_take_gemv_tiles() -> None:
    assert parse_tile("rows8,warps2") == GemvTile(8, 2)
    assert parse_tile("warps8") == GemvTile(1, 8)
    graph = network(GEMV_NETWORK, "f32", 2)
    forced = plan_tiles(graph, "sm_90", parse_tile_overrides(["all=rows8,warps8"]))
    assert {c.tile for c in forced} == {GemvTile(8, 8)}
    with pytest.raises(CompileError, match="mixes SIMT fields"):
        parse_tile_overrides(["all=bm64,rows1"])
    conv = run_pipeline(load_file(RESNET18), 2).graph
    with pytest.raises(CompileError, match="GEMV tiles take dense and matmul, not conv2d"):
        plan_tiles(conv, "sm_90", parse_tile_overrides(["conv1=rows1,warps4"]))
    with pytest.raises(CompileError, match="at most 8 rows"):
        plan_tiles(graph, "sm_90", parse_tile_overrides(["all=rows9"]))


# Compiled --------------------------------------------------------------------------------


def test_gemv_kernels_compile_without_spills_and_dense_loads_128_bits() -> None:
    """The largest tile (8 rows, 8 warps), each layout, every dtype (the whole
    catalog: tests/sim/test_codegen_ptxas.py)."""
    specs = [spec for name, spec in catalog().items() if name.startswith("netc_gemv_") and
             "rows8_warps8" in name and not name.endswith("_nt")]
    try:
        binary = compile_module(render_module("gemv", "gemv", specs, []), "gemv",
                                archs=("sm_80", "sm_90"))
    except CompilerNotFound as missing:
        pytest.skip(str(missing))
    for arch in ("sm_80", "sm_90"):
        resources = binary.kernel_resources(arch)
        assert {spec.name for spec in specs} <= set(resources)
        spilling = {spec.name: (resources[spec.name].spill_store_bytes,
                                resources[spec.name].spill_load_bytes) for spec in specs}
        assert set(spilling.values()) == {(0, 0)}, f"{arch}: {spilling}"
    try:
        find_tool("cuobjdump")
    except ToolNotFound:
        return
    for arch in ("sm_80", "sm_90"):
        sass = disassemble(binary.target(arch).cubin)
        for spec in specs:
            wide = [i for i in sass[spec.name] if i.base == "LDG" and ".128" in i.opcode]
            # Dense (nt) streams its weights 16 bytes at a time; matmul (nn) loads elements.
            assert bool(wide) == ("_nt" in spec.name), (arch, spec.name)
