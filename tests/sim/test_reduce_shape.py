"""Reductions over any axes (sum, mean, amax, amin, logsumexp), argmax, and the shape and
slicing ops (slice, select, expand, stack, squeeze, unsqueeze, transpose of dimension 0) on the
simulator, against the reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.frontend import load_string
from netc.ir import Dim, Graph
from netc.passes import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder, parallel
from tests.sim.variants import LOW_PRECISION_ROW_TILES, ROW_TILES, catalog

pytestmark = pytest.mark.sim

REDUCTIONS = ("sum", "mean", "amax", "amin", "logsumexp")
SIZES = (1, 2, 31, 33, 127, 129)


@st.composite
def reductions(draw: st.DrawFn) -> tuple[tuple[Dim, ...], tuple[int, ...], bool, int]:
    """A shape [N, ...] of at most a few thousand elements per item, a non-empty set of its
    axes (either sign, the batch included), keepdim and the batch size."""
    dims = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=3)
                .filter(lambda dims: math.prod(dims) <= 4000))
    rank = len(dims) + 1
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    signed = tuple(axis - rank if draw(st.booleans()) else axis for axis in axes)
    return ("N", *dims), signed, draw(st.booleans()), draw(st.sampled_from((1, 2, 3)))


@given(op=st.sampled_from(REDUCTIONS), case=reductions(), seed=seeds())
@example(op="sum", case=(("N", 129, 33), (1,), False, 2), seed=0)
@example(op="mean", case=(("N", 3, 31, 33), (2, 3), True, 2), seed=0)  # global pooling
@example(op="amax", case=(("N", 33, 2, 31), (0, 2), False, 3), seed=0)  # not neighbours
@example(op="logsumexp", case=(("N", 1, 127), (-1, 0, 1), True, 1), seed=0)  # everything
def test_reductions_match_reference_for_every_row_tile(
        op: str, case: tuple[tuple[Dim, ...], tuple[int, ...], bool, int], seed: int) -> None:
    shape, axes, keepdim, batch = case
    graph, tiles = parallel(op, {"x": ("f32", shape)}, ROW_TILES, axis=list(axes),
                            keepdim=keepdim)
    check_graph(graph, tiles, batch=batch, seed=seed, same_outputs=op in ("amax", "amin"))


@given(op=st.sampled_from(REDUCTIONS), dtype=st.sampled_from(("f16", "bf16")),
       case=reductions(), seed=seeds())
def test_low_precision_reductions_match_reference(
        op: str, dtype: str, case: tuple[tuple[Dim, ...], tuple[int, ...], bool, int],
        seed: int) -> None:
    shape, axes, keepdim, batch = case
    graph, tiles = parallel(op, {"x": (dtype, shape)}, LOW_PRECISION_ROW_TILES,
                            axis=list(axes), keepdim=keepdim)
    check_graph(graph, tiles, batch=batch, seed=seed)


def _run(graph: Graph, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                dict[str, np.ndarray]]:
    """(simulator's outputs, reference's outputs), outputs poisoned before the run."""
    actual = run_plan(generate(graph), simulator(), {}, inputs, poison=True)
    return actual, run_reference(graph, {}, inputs)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_a_long_low_precision_row_accumulates_in_f32(dtype: str) -> None:
    """4,100 ones: a 16-bit running sum stops at 2,048 (f16) or 256 (bf16), an f32 one does
    not; mean gives exactly 1."""
    builder = GraphBuilder("long")
    x = builder.input("x", dtype, ("N", 4100))
    builder.output("total", builder.op("sum", x, axis=1))
    builder.output("mean", builder.op("mean", x, axis=-1))
    actual, expected = _run(builder.build(), {"x": np.ones((2, 4100), np.float32)})
    assert np.array_equal(actual["mean"], np.ones(2, np.float32))
    assert np.array_equal(actual["total"], expected["total"])
    assert float(actual["total"][0]) >= 4096  # 4,100 rounded to the dtype


@pytest.mark.parametrize("length", [1, 33, 1500])
def test_nan_and_infinity_propagate_as_the_reference(length: int) -> None:
    builder = GraphBuilder("special")
    x = builder.input("x", "f32", ("N", 6, length))
    for op in REDUCTIONS:
        builder.output(op, builder.op(op, x, axis=-1))
        builder.output(f"{op}_rows", builder.op(op, x, axis=[0, 1]))
    values = np.random.default_rng(length).standard_normal((2, 6, length)).astype(np.float32)
    values[0, 0, -1] = np.nan                  # a NaN
    values[0, 1, :] = -np.inf                  # all -inf
    values[0, 2, 0] = np.inf                   # one +inf
    values[0, 3, :] = np.inf                   # all +inf
    values[0, 4, [0, -1]] = [np.inf, -np.inf]  # both infinities
    values[1, 5, 0] = np.nan
    values[1, 5, -1] = np.inf                  # NaN beside +inf
    actual, expected = _run(builder.build(), {"x": values})
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5, equal_nan=True,
                                   err_msg=name)


@given(dtype=st.sampled_from(("f32", "f16")), case=reductions(), seed=seeds())
@example(dtype="f32", case=(("N", 1500), (-1,), False, 2), seed=0)
def test_argmax_matches_reference_for_every_row_tile(
        dtype: str, case: tuple[tuple[Dim, ...], tuple[int, ...], bool, int], seed: int) -> None:
    shape, axes, keepdim, batch = case
    row_tiles = ROW_TILES if dtype == "f32" else LOW_PRECISION_ROW_TILES
    graph, tiles = parallel("argmax", {"x": (dtype, shape)}, row_tiles, axis=axes[0],
                            keepdim=keepdim)
    plan = generate(graph, tiles)
    assert set(plan.kernels) <= set(catalog())
    rng = np.random.default_rng(seed)
    # Rounded to a few values: many equal maxima, where the first position must win.
    inputs = {"x": np.round(rng.uniform(-2, 2, graph["x"].type.concrete({"N": batch})))
              .astype(np.float32)}
    actual = run_plan(plan, simulator(), {}, inputs, poison=True)
    for name, value in run_reference(graph, {}, inputs).items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_argmax_takes_the_first_maximum_and_the_first_nan() -> None:
    builder = GraphBuilder("ties")
    x = builder.input("x", "f32", ("N", 4, 1500))
    builder.output("rows", builder.op("argmax", x, axis=-1))
    builder.output("columns", builder.op("argmax", x, axis=1, keepdim=True))
    values = np.round(np.random.default_rng(5).standard_normal((2, 4, 1500))).astype(np.float32)
    values[0, 0, [700, 1400]] = np.nan
    values[0, 1, :] = -np.inf
    values[0, 2, [3, 1499]] = 50.0
    values[1, 3, :] = 1.0
    actual, expected = _run(builder.build(), {"x": values})
    for name, value in expected.items():
        assert actual[name].dtype == np.int64
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


FUSED = """
network fused {
    input x: DTYPE[N, 5, 33, 7]
    input row: DTYPE[7]
    output pooled = mean(relu(x) * 2.0 + row, [2, 3], keepdim=true) |> sigmoid
    output peak = amax(x - row, [0, 2]) * 0.5
    output soft = logsumexp(tanh(x), -1) + 1.0
}
"""


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_reductions_take_a_prologue_and_an_epilogue(dtype: str) -> None:
    graph = run_pipeline(load_string(FUSED.replace("DTYPE", dtype), filename="fused.net"),
                         2).graph
    fused = [node for node in graph.nodes if node.op == "fused"]
    assert {node.region.anchor.op for node in fused if node.region is not None} >= {
        "mean", "amax", "logsumexp"}
    rng = np.random.default_rng(1)
    inputs = {"x": rng.uniform(-2, 2, (3, 5, 33, 7)).astype(np.float32),
              "row": rng.uniform(-2, 2, (7,)).astype(np.float32)}
    actual, expected = _run(graph, inputs)
    for name, value in expected.items():
        assert_close(name, actual[name], value, *TOLERANCE[dtype])


SLICING = [
    ("slice", {"axes": [1], "starts": [1], "ends": [5]}),
    ("slice", {"axes": [-1], "starts": [0], "ends": [100], "steps": [2]}),
    ("slice", {"axes": [1, 2], "starts": [-2, 3], "ends": [-1, 31], "steps": [1, 3]}),
    ("slice", {"axes": [0], "starts": [1], "ends": [3]}),
    ("select", {"axis": 1, "index": 0}),
    ("select", {"axis": -1, "index": -1}),
    ("select", {"axis": 0, "index": 2}),
]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize(("op", "attrs"), SLICING)
def test_slicing_matches_reference(op: str, attrs: dict[str, Any], dtype: str) -> None:
    graph, tiles = parallel(op, {"x": (dtype, (4, 7, 33))}, [None], **attrs)
    check_graph(graph, tiles, batch=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_shape_ops_match_reference(batch: int) -> None:
    builder = GraphBuilder("shapes")
    x = builder.input("x", "f32", ("N", 3, 1, 33))
    w = builder.input("w", "f32", (2, 31, 5))
    builder.output("squeezed", builder.op("squeeze", x, axis=2))
    builder.output("kept", builder.op("squeeze", x, axis=1))  # size 3: unchanged
    builder.output("unsqueezed", builder.op("unsqueeze", x, axis=-1))
    builder.output("expanded", builder.op("expand", x, dims=[-1, -1, 7, -1]))
    builder.output("leading", builder.op("expand", builder.op("select", w, axis=0, index=1),
                                         dims=[4, -1, -1]))
    builder.output("stacked", builder.op("stack", x, x, x, axis=-2))
    builder.output("moved", builder.op("transpose", w, perm=[2, 0, 1]))
    builder.output("rows", builder.op("slice", builder.op("transpose", w, perm=[1, 0, 2]),
                                      axes=[0], starts=[-5], ends=[31], steps=[2]))
    check_graph(builder.build(), batch=batch)


@pytest.mark.parametrize("dtype", ["i64", "i32", "bool"])
def test_shape_ops_move_integers_and_booleans_exactly(dtype: str) -> None:
    builder = GraphBuilder("integers")
    x = builder.input("x", dtype, ("N", 3, 7))
    builder.output("sliced", builder.op("slice", x, axes=[2], starts=[1], ends=[7], steps=[2]))
    builder.output("selected", builder.op("select", x, axis=-1, index=-1))
    builder.output("expanded", builder.op("expand", builder.op("unsqueeze", x, axis=2),
                                          dims=[-1, -1, 4, -1]))
    builder.output("stacked", builder.op("stack", x, x, axis=1))
    builder.output("moved", builder.op("transpose", x, perm=[0, 2, 1]))
    builder.output("joined", builder.op("concat", x, builder.op("slice", x, axes=[1], starts=[1],
                                                                ends=[2]), axis=1))
    rng = np.random.default_rng(3)
    values: dict[str, np.ndarray] = {
        "i64": rng.integers(-2**62, 2**62, (2, 3, 7)),  # beyond float's 24 bits
        "i32": rng.integers(-2**31, 2**31 - 1, (2, 3, 7)).astype(np.int32),
        "bool": rng.random((2, 3, 7)) > 0.5}
    actual, expected = _run(builder.build(), {"x": values[dtype]})
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
