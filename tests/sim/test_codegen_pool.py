"""maxpool2d, avgpool2d and global_avgpool on the simulator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import parallel
from tests.sim.variants import BLOCK_TILES, ROW_TILES

pytestmark = pytest.mark.sim


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Any]:
    """A pool's attributes (padding at most half the kernel, as PyTorch) and a fitting input."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = max(1, kernel[0] - 2 * padding[0] + draw(st.integers(0, 9)))
    width = max(1, kernel[1] - 2 * padding[1] + draw(st.integers(0, 9)))
    return {"op": draw(st.sampled_from(("maxpool2d", "avgpool2d"))),
            "shape": ("N", draw(st.sampled_from((1, 3, 5))), height, width),
            "attrs": {"kernel": kernel, "stride": stride, "padding": padding},
            "batch": draw(st.sampled_from((1, 2, 3)))}


@given(pool=pools(), seed=seeds())
@example(pool={"op": "avgpool2d", "shape": ("N", 2, 5, 6), "batch": 2,
               "attrs": {"kernel": (3, 4), "stride": (2, 3), "padding": (1, 2)}}, seed=0)
@example(pool={"op": "maxpool2d", "shape": ("N", 2, 5, 6), "batch": 2,
               "attrs": {"kernel": (3, 4), "stride": None, "padding": (1, 2)}}, seed=0)
def test_pools_match_reference_for_every_block(pool: dict[str, Any], seed: int) -> None:
    graph, tiles = parallel(pool["op"], {"x": ("f32", pool["shape"])}, BLOCK_TILES,
                            **pool["attrs"])
    check_graph(graph, tiles, batch=pool["batch"], seed=seed, same_outputs=True)


@given(channels=st.sampled_from((1, 3, 33)), height=st.sampled_from((1, 2, 7, 33)),
       width=st.sampled_from((1, 5, 40)), batch=st.sampled_from((1, 2, 9)), seed=seeds())
def test_global_avgpool_matches_reference_for_every_row_tile(channels: int, height: int,
                                                              width: int, batch: int,
                                                              seed: int) -> None:
    graph, tiles = parallel("global_avgpool", {"x": ("f32", ("N", channels, height, width))},
                            ROW_TILES)
    check_graph(graph, tiles, batch=batch, seed=seed)
