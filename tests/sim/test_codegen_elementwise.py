"""The elementwise family (activations, broadcasting arithmetic, constants, batchnorm,
transpose), concat and views on the simulator."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.ir import Dim
from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import GraphBuilder, parallel
from tests.sim.variants import BLOCK_TILES, MAX_ELEMENTWISE_RANK

pytestmark = pytest.mark.sim

SIZES = (1, 2, 3, 7, 33)
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu")


def shapes(min_rank: int = 1, max_rank: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Item shapes (after the batch) of at most a few thousand elements."""
    return st.lists(st.sampled_from(SIZES), min_size=min_rank - 1, max_size=max_rank - 1).map(
        tuple).filter(lambda dims: math.prod(dims) <= 2500)


@given(op=st.sampled_from(ACTIVATIONS), item=shapes(), alpha=st.floats(0.0, 0.5),
       batch=st.sampled_from((1, 3)), seed=seeds())
def test_activations_match_reference_for_every_block(op: str, item: tuple[int, ...],
                                                     alpha: float, batch: int,
                                                     seed: int) -> None:
    attrs: dict[str, Any] = {"alpha": alpha} if op == "leaky_relu" else {}
    graph, tiles = parallel(op, {"x": ("f32", ("N", *item))}, BLOCK_TILES, **attrs)
    check_graph(graph, tiles, batch=batch, seed=seed, same_outputs=True)


@st.composite
def broadcast_pairs(draw: st.DrawFn) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
    """Two shapes that broadcast (NumPy rules): size-1 dims and missing leading dims on either
    side; the batch dim N only ever first."""
    out = draw(shapes(2, 5))

    def operand() -> tuple[Dim, ...]:
        kept = out[draw(st.integers(0, len(out))):]
        dims: list[Dim] = [1 if draw(st.booleans()) else d for d in kept]
        if len(kept) == len(out) + 1:
            dims[0] = "N"
        return tuple(dims)

    full: tuple[Dim, ...] = ("N", *out)
    a = ("N", *(1 if draw(st.booleans()) else d for d in out))
    b = draw(st.sampled_from([full, operand(), ()]))
    return (a, b) if draw(st.booleans()) else (b, a)


@given(op=st.sampled_from(("add", "sub", "mul")), shapes=broadcast_pairs(),
       batch=st.sampled_from((1, 2)), seed=seeds())
@example(op="sub", shapes=(("N", 1, 3, 1, 7), (2, 1, 5, 1)), batch=2, seed=0)
@example(op="mul", shapes=(("N", 33), ()), batch=2, seed=0)
def test_arithmetic_broadcasts_like_numpy(op: str, shapes: tuple[tuple[Dim, ...], ...],
                                          batch: int, seed: int) -> None:
    a, b = shapes
    graph, _ = parallel(op, {"a": ("f32", a), "b": ("f32", b)}, [None])
    check_graph(graph, batch=batch, seed=seed)


@given(value=st.floats(-4.0, 4.0), constant_first=st.booleans(),
       op=st.sampled_from(("add", "sub", "mul")), seed=seeds())
def test_scalar_constants_are_kernel_arguments(value: float, constant_first: bool, op: str,
                                               seed: int) -> None:
    builder = GraphBuilder("scalar")
    x = builder.input("x", "f32", ("N", 3, 5))
    constant = builder.constant(value)
    operands = (constant, x) if constant_first else (x, constant)
    builder.output("y", builder.op(op, *operands))
    check_graph(builder.build(), seed=seed)


def test_constants_read_from_memory_are_filled() -> None:
    """A constant that is an output, and arithmetic on two constants, still work."""
    builder = GraphBuilder("constants")
    half = builder.constant(0.5)
    builder.output("half", half)
    builder.output("sum", builder.op("add", half, builder.constant(2.0)))
    builder.output("x2", builder.op("mul", builder.input("x", "f32", ("N", 4)), half))
    check_graph(builder.build())


@given(item=shapes(2, 4), batch=st.sampled_from((1, 3)), seed=seeds())
@example(item=(1,), batch=2, seed=0)
@example(item=(5, 1, 1), batch=2, seed=0)
def test_batchnorm_matches_reference(item: tuple[int, ...], batch: int, seed: int) -> None:
    graph, tiles = parallel("batchnorm", {"x": ("f32", ("N", *item))}, BLOCK_TILES, eps=1e-3)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True, same_outputs=True)


@given(item=shapes(2, MAX_ELEMENTWISE_RANK), data=st.data(), seed=seeds())
def test_transpose_matches_reference(item: tuple[int, ...], data: st.DataObject,
                                     seed: int) -> None:
    perm = [0, *data.draw(st.permutations(range(1, len(item) + 1)))]
    graph, _ = parallel("transpose", {"x": ("f32", ("N", *item))}, [None], perm=perm)
    check_graph(graph, seed=seed)


@given(item=shapes(2, 4), data=st.data(), count=st.integers(2, 3), seed=seeds())
def test_concat_matches_reference_along_any_axis(item: tuple[int, ...], data: st.DataObject,
                                                 count: int, seed: int) -> None:
    axis = data.draw(st.integers(1, len(item)))
    named = data.draw(st.booleans())
    builder = GraphBuilder("concat")
    values = []
    for index in range(count):
        dims = list(item)
        dims[axis - 1] = data.draw(st.sampled_from((1, 2, 5)))
        values.append(builder.input(f"x{index}", "f32", ("N" if named else 2, *dims)))
    tile = data.draw(st.sampled_from(BLOCK_TILES))
    node = builder.op("concat", *values, axis=axis - len(item) - 1 if data.draw(st.booleans())
                      else axis)
    builder.output("y", node)
    check_graph(builder.build(), {node: tile}, seed=seed)


def test_concat_along_axis_zero_of_fixed_shapes() -> None:
    builder = GraphBuilder("concat0")
    a = builder.input("a", "f32", (2, 3))
    b = builder.input("b", "f32", (1, 3))
    builder.output("y", builder.op("concat", a, b, axis=0))
    check_graph(builder.build())


def test_views_alias_and_feed_kernels() -> None:
    builder = GraphBuilder("views")
    x = builder.input("x", "f32", ("N", 2, 3, 4))
    flat = builder.op("flatten", x)
    builder.output("flat", flat)  # an output that is a view of an input
    shaped = builder.op("reshape", builder.op("relu", flat), dims=[4, -1])
    builder.output("shaped", builder.op("dropout", shaped, p=0.3))
    builder.output("sig", builder.op("sigmoid", builder.op("dropout", shaped)))
    graph = builder.build()
    plan = generate(graph)
    assert [launch.kernel for launch in plan.launches] == [
        "netc_ew_f32_relu_r0_b256", "netc_ew_f32_sigmoid_r0_b256"]
    check_graph(graph, batch=3)
