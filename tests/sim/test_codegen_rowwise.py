"""softmax, log_softmax and layernorm (reductions along a row) on the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.ir import Dim
from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import GraphBuilder, parallel
from tests.sim.variants import ROW_TILES

pytestmark = pytest.mark.sim

LENGTHS = (1, 2, 31, 33, 127, 129, 1025)
"""Row lengths around the warp and block sizes of ROW_TILES."""


@st.composite
def rows(draw: st.DrawFn) -> tuple[tuple[Dim, ...], int, int]:
    """A shape [N, ...] of at most a few thousand elements, an axis of it (either sign) and
    the batch size."""
    dims = draw(st.lists(st.sampled_from(LENGTHS[:-1]), max_size=3)
                .filter(lambda dims: math.prod(dims) <= 3000))
    axis = draw(st.integers(-len(dims) - 1, len(dims)))
    return ("N", *dims), axis, draw(st.sampled_from((1, 2)))


@given(op=st.sampled_from(("softmax", "log_softmax")), rows=rows(), seed=seeds())
@example(op="softmax", rows=(("N", 1025), -1, 2), seed=0)
@example(op="log_softmax", rows=(("N", 3, 33), 1, 2), seed=0)
@example(op="softmax", rows=(("N", 5), 0, 33), seed=0)  # along the batch itself
def test_softmax_matches_reference_along_any_axis(op: str, rows: tuple[tuple[Dim, ...], int, int],
                                                  seed: int) -> None:
    shape, axis, batch = rows
    graph, tiles = parallel(op, {"x": ("f32", shape)}, ROW_TILES, axis=axis)
    check_graph(graph, tiles, batch=batch, seed=seed)


@given(middle=st.sampled_from(((), (3,), (2, 5))), length=st.sampled_from(LENGTHS),
       batch=st.sampled_from((1, 2, 9)), seed=seeds())
@example(middle=(), length=1, batch=1, seed=0)
def test_layernorm_matches_reference_for_every_row_tile(middle: tuple[int, ...], length: int,
                                                        batch: int, seed: int) -> None:
    graph, tiles = parallel("layernorm", {"x": ("f32", ("N", *middle, length))}, ROW_TILES)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


def test_softmax_is_stable_for_large_inputs() -> None:
    """Rows with values far beyond exp's range: the max is subtracted before exp."""
    from netc.codegen.emit import generate
    from netc.driver import run_plan
    from netc.reference import run_reference
    from tests.sim.codegen_support import assert_close, simulator

    builder = GraphBuilder("stable")
    x = builder.input("x", "f32", ("N", 40))
    builder.output("y", builder.op("softmax", x))
    builder.output("z", builder.op("log_softmax", x))
    graph = builder.build()
    inputs = {"x": np.random.default_rng(0).uniform(-1000, 1000, (4, 40)).astype(np.float32)}
    actual = run_plan(generate(graph), simulator(), {}, inputs)
    for name, value in run_reference(graph, {}, inputs).items():
        assert np.isfinite(actual[name]).all()
        assert_close(name, actual[name], value, 1e-4, 1e-4)
