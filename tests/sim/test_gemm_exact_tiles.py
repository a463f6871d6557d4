"""GEMMs whose sizes are exact multiples of the tile, on the simulator.

The other GEMM tests draw ragged sizes (1, 3, 17, 33, ...), where `ceil(m / BM)` and
`m / BM + 1` agree: issue 13's mutation run found that `templates/gemm.cuh` could count its row
tiles with the latter and no test failed, though a batch of matrices whose M is a multiple of
BM would then be computed by the wrong blocks. Here M, N and K are 1x and 2x the tile (and one
past it), for every tile configuration the sim tests use, with several matrices per launch.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netc.codegen.tiles import GemmTile
from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import parallel
from tests.sim.variants import GEMM_TILES

pytestmark = pytest.mark.sim


def _sizes(tile: GemmTile) -> tuple[int, int, int]:
    return tile.bm, tile.bn, tile.bk


@pytest.mark.parametrize("tile", GEMM_TILES, ids=lambda t: f"{t.bm}x{t.bn}x{t.bk}")
@pytest.mark.parametrize("rows", [1, 2])
def test_batched_matmul_with_m_a_multiple_of_the_tile(tile: GemmTile, rows: int) -> None:
    bm, bn, bk = _sizes(tile)
    # [N, 3, M, K] @ [K, BN]: 2 * 3 matrices, each exactly `rows` row tiles and one column tile.
    graph, tiles = parallel("matmul", {"a": ("f32", ("N", 3, rows * bm, 2 * bk)),
                                       "b": ("f32", (2 * bk, bn))}, [tile])
    check_graph(graph, tiles, batch=2, seed=rows)


@given(tile=st.sampled_from(GEMM_TILES), m_tiles=st.integers(1, 2), n_tiles=st.integers(1, 2),
       k_steps=st.integers(1, 3), ragged=st.sampled_from(["", "m", "n", "k"]),
       matrices=st.sampled_from([1, 2, 3]), seed=seeds())
def test_matmul_on_and_just_off_the_tile_grid(tile: GemmTile, m_tiles: int, n_tiles: int,
                                              k_steps: int, ragged: str, matrices: int,
                                              seed: int) -> None:
    bm, bn, bk = _sizes(tile)
    m, n, k = (m_tiles * bm + (ragged == "m"), n_tiles * bn + (ragged == "n"),
               k_steps * bk + (ragged == "k"))
    graph, tiles = parallel("matmul", {"a": ("f32", ("N", m, k)), "b": ("f32", ("N", k, n))},
                            [tile])
    check_graph(graph, tiles, batch=matrices, seed=seed)


@pytest.mark.parametrize("tile", GEMM_TILES, ids=lambda t: f"{t.bm}x{t.bn}x{t.bk}")
def test_dense_with_rows_and_units_a_multiple_of_the_tile(tile: GemmTile) -> None:
    bm, bn, bk = _sizes(tile)
    graph, tiles = parallel("dense", {"x": ("f32", ("N", 2 * bk))}, [tile], units=bn)
    check_graph(graph, tiles, batch=bm)
