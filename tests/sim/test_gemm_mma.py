"""The tensor-core GEMM (templates/gemm_mma.cuh: mma.sync, ldmatrix, a cp.async pipeline) on the
simulator, which runs its exact source with the PTX instructions emulated lane by lane
(tests/sim/test_mma_emulation.py): f16 and bf16 dense (B as [N, K]) and matmul (B as [K, N],
batched and broadcast), every tensor-core tile of the heuristic, ragged sizes around the tiles
(1, 7, 31, 33, 127, 129; K not a multiple of the k-tile; rows whose length is not a multiple of
8, which the cp.async path cannot take), outputs poisoned. Every tile sums each output over k
in the same order, so all tiles agree bit for bit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.codegen.tiles import GemmTile, MmaTile
from netc.codegen.tiling import GEMV_MAX_M, choose_tiles
from netc.ops.builder import GraphBuilder
from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import parallel
from tests.sim.variants import MMA_TILES

pytestmark = pytest.mark.sim

RAGGED = (1, 7, 31, 33, 127, 129)
K_SIZES = (1, 8, 31, 32, 40, 129)
"""K: below, at and past the k-tile of 32, multiples of 8 (cp.async) and not."""


@pytest.mark.parametrize("m, n, k", [(1, 129, 40), (31, 7, 127), (33, 127, 8), (129, 31, 32),
                                     (127, 33, 129)])
def test_dense_every_tile_same_result(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("dense", {"x": ("f16", ("N", k))}, MMA_TILES, units=n)
    plan = check_graph(graph, tiles, batch=m, shared_weights=True, same_outputs=True)
    assert all("_mma_" in name for name in plan.kernels)


@pytest.mark.parametrize("m, n, k", [(33, 40, 129), (1, 128, 32), (7, 31, 64)])
def test_matmul_every_tile_same_result(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("matmul", {"a": ("f16", ("N", m, k)), "b": ("f16", (k, n))},
                            MMA_TILES)
    check_graph(graph, tiles, batch=2, same_outputs=True)


@settings(deadline=None)
@given(m=st.sampled_from(RAGGED), n=st.sampled_from(RAGGED), k=st.sampled_from(K_SIZES),
       dtype=st.sampled_from(["f16", "bf16"]), bias=st.booleans(), seed=seeds())
def test_dense_matches_the_reference(m: int, n: int, k: int, dtype: str, bias: bool,
                                     seed: int) -> None:
    builder = GraphBuilder("dense")
    x = builder.input("x", dtype, ("N", k))
    builder.output("y", builder.op("relu", builder.op("dense", x, units=n, bias=bias)))
    graph = builder.build()
    plan = check_graph(graph, choose_tiles(graph, batch=m), batch=m, seed=seed)
    # Up to GEMV_MAX_M rows the heuristic takes the GEMV kernel (tests/sim/test_gemv.py).
    kind = "_gemv_" if m <= GEMV_MAX_M else "_mma_"
    assert any(kind in name for name in plan.kernels)


@settings(deadline=None)
@given(m=st.sampled_from(RAGGED), n=st.sampled_from(RAGGED), k=st.sampled_from(K_SIZES),
       dtype=st.sampled_from(["f16", "bf16"]), seed=seeds())
def test_batched_matmul_matches_the_reference(m: int, n: int, k: int, dtype: str,
                                              seed: int) -> None:
    # a [N, 3, M, K] times b [3, K, N]: a batch of matrices with b broadcast over N.
    builder = GraphBuilder("matmul")
    a = builder.input("a", dtype, ("N", 3, m, k))
    b = builder.input("b", dtype, (3, k, n))
    builder.output("y", builder.op("matmul", a, b))
    graph = builder.build()
    plan = check_graph(graph, batch=2, seed=seed)
    assert any("_mma_" in name for name in plan.kernels)


def test_f32_keeps_the_simt_kernel_and_a_simt_tile_forces_it_for_f16() -> None:
    builder = GraphBuilder("dense")
    builder.output("y", builder.op("dense", builder.input("x", "f16", ("N", 40)), units=24))
    graph = builder.build()
    (node,) = [n.id for n in graph.compute_nodes]
    assert isinstance(choose_tiles(graph, batch=64)[node], MmaTile)
    forced = check_graph(graph, {node: GemmTile(32, 32, 8, 4, 4)}, batch=5)
    assert not any("_mma_" in name for name in forced.kernels)
    f32 = GraphBuilder("dense")
    f32.output("y", f32.op("dense", f32.input("x", "f32", ("N", 40)), units=24))
    f32_graph = f32.build()
    assert not any("_mma_" in name
                   for name in generate(f32_graph, choose_tiles(f32_graph, batch=64)).kernels)
