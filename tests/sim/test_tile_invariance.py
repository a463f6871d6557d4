"""Tile invariance: every tile the tiling heuristic may choose gives the same result.

Each test builds one graph holding a copy of the op for every candidate tile
(`netc.codegen.tiling.CANDIDATES`), so one module, compiled once by the simulator, covers them
all; kernel names do not depend on shapes, so every shape of a test reuses that build. Each copy
is checked against the reference interpreter, and the copies against each other bit for bit:
every tile sums each output over k in the same order. Sizes are ragged around the tiles (1, 31,
33, 127, 129), including M or N of 1, where the narrow tiles apply.
"""

from __future__ import annotations

import pytest

from netc.codegen.tiles import GemmTile
from netc.codegen.tiling import CANDIDATES, gemm_shape, heuristic_tile
from tests.sim.codegen_support import check_graph
from tests.sim.graph_builder import parallel

pytestmark = pytest.mark.sim

TILES = tuple(tile for tile in CANDIDATES.values() if isinstance(tile, GemmTile))
"""The SIMT tiles (any dtype); the tensor-core ones: tests/sim/test_gemm_mma.py."""


@pytest.mark.parametrize("m, n, k", [(1, 129, 33), (31, 1, 127), (33, 127, 1), (129, 31, 31),
                                     (127, 33, 129)])
def test_dense_gives_the_same_result_for_every_candidate_tile(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("dense", {"x": ("f32", ("N", k))}, TILES, units=n)
    plan = check_graph(graph, tiles, batch=m, shared_weights=True, same_outputs=True)
    assert len(set(plan.kernels)) == len(TILES)


@pytest.mark.parametrize("m, n, k", [(33, 31, 129), (1, 127, 31)])
def test_matmul_gives_the_same_result_for_every_candidate_tile(m: int, n: int, k: int) -> None:
    graph, tiles = parallel("matmul", {"a": ("f32", ("N", m, k)), "b": ("f32", (k, n))}, TILES)
    check_graph(graph, tiles, batch=2, same_outputs=True)


CONVS = [
    # (input [C, H, W], attributes): M = filters / groups, N = images * out pixels,
    # K = C / groups * kh * kw
    ((3, 9, 7), {"filters": 33, "kernel": 3, "padding": 1}),              # M 33, N 63, K 27
    ((31, 3, 43), {"filters": 1, "kernel": 1}),                           # M 1, N 129, K 31
    ((4, 11, 3), {"filters": 4, "kernel": 3, "padding": 1, "groups": 4}),  # depthwise: M 1
    ((6, 5, 5), {"filters": 129, "kernel": 2, "stride": 2, "groups": 3,   # M 43, N 4, K 8
                 "bias": False}),
]


@pytest.mark.parametrize("shape, attrs", CONVS, ids=["m33", "m1-n129", "depthwise", "grouped"])
def test_conv2d_gives_the_same_result_for_every_candidate_tile(
        shape: tuple[int, int, int], attrs: dict[str, int]) -> None:
    graph, tiles = parallel("conv2d", {"x": ("f32", ("N", *shape))}, TILES, **attrs)
    check_graph(graph, tiles, batch=3, shared_weights=True, same_outputs=True)
    # The heuristic picks among the tiles just run, for this shape too.
    node = graph[next(iter(tiles))]
    shape_found = gemm_shape(graph, node, batch=3)
    if attrs.get("groups") == shape[0]:  # depthwise: its own kernel, which takes no GEMM tile
        assert shape_found is None
        return
    assert shape_found is not None
    assert heuristic_tile(shape_found)[0] in TILES
