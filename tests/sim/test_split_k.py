"""Split-K on the simulator (templates/gemm.cuh, `NetcSplitK`): a GEMM or conv whose tile has
`splits` > 1 runs its main kernel over grid z, each split summing a run of whole k-tiles into
float partials, then `netc_split_k_reduce` adds them in order and applies the bias and the
epilogue. Every case is checked against the reference with outputs poisoned, on ragged sizes:
M and N of 1, 7, 33, 129; K not a multiple of the k-tile nor of splits x k-tile, and short
enough that the last splits' runs are empty (they store zeros, which must not break the sum).
The tiles are tests/sim/variants.py's SPLIT_K_* (SIMT with an odd k-tile, TF32, tensor cores).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.codegen.tiles import Tf32Tile
from netc.codegen.tiling import choose_tiles, parse_tile_overrides, splits_of
from netc.driver import run_plan
from netc.reference import run_reference
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, simulator
from tests.sim.graph_builder import parallel, random_inputs, random_weights
from tests.sim.networks import network
from tests.sim.variants import (
    SPLIT_K_CONV_TILES,
    SPLIT_K_GEMM_TILES,
    SPLIT_K_NETWORK,
    SPLIT_K_OVERRIDES,
    catalog,
)

pytestmark = pytest.mark.sim


def runs(k: int, bk: int, splits: int) -> list[int]:
    """The k each split sums, as `netc_k_range` deals them out."""
    k_tiles = -(-k // bk)
    run = -(-k_tiles // splits) * bk
    return [max(0, min(run, k - split * run)) for split in range(splits)]


def simt_and_tensor_core(dtype: str) -> list[Any]:
    """The dtype's split-K tiles the GEMM tests run (TF32 has its own test)."""
    return [t for t in SPLIT_K_GEMM_TILES[dtype] if not isinstance(t, Tf32Tile)]


def test_the_cases_cover_short_runs_and_empty_splits() -> None:
    """The shapes below exercise what they claim (a last run shorter than the rest; splits
    with nothing to sum)."""
    assert runs(77, 8, 3) == [32, 32, 13]
    assert runs(33, 5, 16) == [5] * 6 + [3] + [0] * 9
    assert runs(77, 32, 16) == [32, 32, 13] + [0] * 13


GEMM_CASES = [(1, 129, 77), (7, 33, 33), (33, 1, 200), (129, 7, 45)]
"""(M, N, K): M and N ragged, K not a multiple of 8, 5 or 32 (but 200 is one of 8: the
128-bit and cp.async staging) and short for 16 splits."""


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("m, n, k", GEMM_CASES)
def test_dense_with_a_bias(dtype: str, m: int, n: int, k: int) -> None:
    graph, tiles = parallel("dense", {"x": (dtype, ("N", k))}, simt_and_tensor_core(dtype),
                            units=n)
    plan = check_graph(graph, tiles, batch=m, seed=m + n + k)
    assert sum(name.endswith("_splitk") for name in plan.kernels) == 2
    assert f"netc_splitk_reduce_{dtype}_bias" in plan.kernels


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("m, n, k", [(7, 129, 77), (33, 7, 200)])
def test_batched_matmul_folds_the_batch_into_x_and_splits_along_z(dtype: str, m: int, n: int,
                                                                  k: int) -> None:
    # [N, 3, M, K] @ [K, N]: 2 x 3 matrices in grid x, the splits in grid z.
    graph, tiles = parallel("matmul", {"a": (dtype, ("N", 3, m, k)), "b": (dtype, (k, n))},
                            simt_and_tensor_core(dtype))
    plan = check_graph(graph, tiles, batch=2, seed=m * k)
    for launch in plan.launches:
        if launch.kernel.endswith("_splitk"):
            x, _, z = launch.grid_size({"N": 2})
            tile = next(t for t in tiles.values() if t.suffix in launch.kernel)
            assert (x, z) == (-(-m // tile.bm) * 6, tile.splits)


def test_tf32_split_k_equals_the_unsplit_tf32_kernel() -> None:
    """TF32 rounds the operands (tests/sim/test_gemm_tf32.py checks that against NumPy): split
    or not, the same products, summed in another order."""
    split = SPLIT_K_GEMM_TILES["f32"][2]
    assert isinstance(split, Tf32Tile) and split.splits > 1
    graph, tiles = parallel("dense", {"x": ("f32", ("N", 200))},
                            [dataclasses.replace(split, splits=1), split], units=33)
    plan = generate(graph, tiles)
    assert set(plan.kernels) <= set(catalog())
    rng = np.random.default_rng(5)
    weights = random_weights(graph, rng, shared=True)
    inputs = random_inputs(graph, 33, rng)
    out = run_plan(plan, simulator(), weights, inputs, poison=True)
    assert any(name.endswith("_splitk") and "_tf32_mma_" in name for name in plan.kernels)
    assert_close("split", out["out1"], out["out0"], *TOLERANCE["f32"])


CONV_CASES: list[tuple[tuple[int, int, int], dict[str, Any]]] = [
    # (input [C, H, W], attributes); K = C / groups x kh x kw in the comment.
    ((5, 9, 11), {"filters": 7, "kernel": 3, "stride": 2, "padding": 1}),  # 45
    ((16, 7, 9), {"filters": 33, "kernel": 3, "padding": (1, 0, 2, 1)}),  # 144
    ((6, 8, 8), {"filters": 4, "kernel": 3, "dilation": 2, "groups": 2, "bias": False}),  # 27
]


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("shape, attrs", CONV_CASES)
def test_conv2d(dtype: str, shape: tuple[int, int, int], attrs: dict[str, Any]) -> None:
    graph, tiles = parallel("conv2d", {"x": (dtype, ("N", *shape))}, SPLIT_K_CONV_TILES[dtype],
                            **attrs)
    plan = check_graph(graph, tiles, batch=2, seed=shape[0])
    assert all(name.endswith("_splitk") for name in plan.kernels
               if name.startswith("netc_conv2d_"))
    groups = attrs.get("groups", 1)
    for launch in plan.launches:
        if launch.kernel.endswith("_splitk"):
            tile = next(t for t in tiles.values() if t.suffix in launch.kernel)
            assert launch.grid_size({"N": 2})[2] == groups * tile.splits


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_fused_epilogues_and_residuals_apply_after_the_sum(dtype: str) -> None:
    """`--tile all=...,splits3` on a network at -O2: the conv's bias and relu, a residual add,
    dense's relu and matmul's sigmoid run in the reduce kernel, on the summed value."""
    original = network(SPLIT_K_NETWORK, dtype)
    optimized = network(SPLIT_K_NETWORK, dtype, 2)
    tiles = choose_tiles(optimized, overrides=parse_tile_overrides([SPLIT_K_OVERRIDES[dtype]]))
    assert len(tiles) == 4 and all(splits_of(tile) == 3 for tile in tiles.values())
    plan = generate(optimized, tiles)
    assert set(plan.kernels) <= set(catalog())
    reduces = [launch.kernel for launch in plan.launches
               if launch.kernel.startswith("netc_splitk_reduce_")]
    assert len(reduces) == 4 and all("_ep_" in name for name in reduces), reduces
    rng = np.random.default_rng(11)
    weights = random_weights(original, rng)
    rtol, atol = TOLERANCE[dtype]
    for batch in (1, 3):
        inputs = random_inputs(original, batch, rng)
        actual = run_plan(plan, simulator(), weights, inputs, poison=True)
        for name, value in run_reference(original, weights, inputs).items():
            # The fused epilogue keeps the sum in float, where the reference rounds it.
            assert_close(f"{name} at batch {batch}", actual[name], value, 2 * rtol, 2 * atol)


def test_an_unsplit_tile_launches_no_reduce() -> None:
    tile = SPLIT_K_GEMM_TILES["f32"][0]
    graph, tiles = parallel("dense", {"x": ("f32", ("N", 77))},
                            [dataclasses.replace(tile, splits=1)], units=33)
    plan = generate(graph, tiles)
    assert [launch.kernel for launch in plan.launches] == [
        "netc_gemm_f32_bm32_bn32_bk8_tm4_tn4_nt_bias"]
