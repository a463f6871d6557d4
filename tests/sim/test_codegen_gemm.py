"""The GEMM kernels (dense, matmul) on the simulator, against the registry's references."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.ir import Dim, Graph
from netc.sim import CudaSim
from tests.sim.codegen_support import RAGGED, check_graph, seeds
from tests.sim.graph_builder import GraphBuilder, parallel
from tests.sim.variants import GEMM_TILES

pytestmark = pytest.mark.sim


@given(batch=st.sampled_from([1, 2, 33]), middle=st.sampled_from([(), (3,), (1, 2)]),
       features=st.sampled_from(RAGGED), units=st.sampled_from(RAGGED), bias=st.booleans(),
       named=st.booleans(), seed=seeds())
@example(batch=1, middle=(), features=1, units=1, bias=True, named=True, seed=0)
@example(batch=33, middle=(3,), features=129, units=127, bias=False, named=True, seed=1)
def test_dense_matches_reference_for_every_tile(batch: int, middle: tuple[int, ...],
                                                features: int, units: int, bias: bool,
                                                named: bool, seed: int) -> None:
    shape: tuple[Dim, ...] = ("N" if named else batch, *middle, features)
    graph, tiles = parallel("dense", {"x": ("f32", shape)}, GEMM_TILES, units=units, bias=bias)
    # Every tile configuration sums each output over k in the same order: equal bit for bit.
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True, same_outputs=True)


@st.composite
def matmul_shapes(draw: st.DrawFn) -> tuple[tuple[Dim, ...], tuple[Dim, ...], int]:
    """Operand shapes with NumPy batch broadcasting (dims of 1, missing leading dims, vectors),
    the batch named on the first operand where it can be, and a batch size."""
    m, k, n = (draw(st.sampled_from((1, 3, 17, 33))) for _ in range(3))
    batch_dims = draw(st.lists(st.sampled_from((2, 3)), max_size=3))

    def operand_batch() -> list[int]:
        kept = batch_dims[draw(st.integers(0, len(batch_dims))):]
        return [1 if draw(st.booleans()) else d for d in kept]

    a_batch, b_batch = operand_batch(), operand_batch()
    a: tuple[Dim, ...] = (*a_batch, m, k)
    b: tuple[Dim, ...] = (*b_batch, k, n)
    if draw(st.booleans()):  # 1-D operands
        if not a_batch and draw(st.booleans()):
            a = (k,)
        elif not b_batch:
            b = (k,)
    batch = 2
    full = len(a) - 2 == len(batch_dims) and batch_dims and a[0] != 1
    if full and (len(b) - 2 < len(batch_dims) or b[0] == 1) and draw(st.booleans()):
        batch = int(a[0])
        a = ("N", *a[1:])
    return a, b, batch


@given(shapes=matmul_shapes(), seed=seeds())
@example(shapes=(("N", 1, 3, 17, 33), (1, 2, 1, 33, 3), 2), seed=0)  # three batch levels
@example(shapes=(("N", 33), (33, 17), 7), seed=0)  # rows grow with the batch
@example(shapes=((33,), (2, 33, 3), 2), seed=0)
def test_matmul_broadcasts_like_numpy(shapes: tuple[tuple[Dim, ...], tuple[Dim, ...], int],
                                      seed: int) -> None:
    a, b, batch = shapes
    graph, tiles = parallel("matmul", {"a": ("f32", a), "b": ("f32", b)}, GEMM_TILES[:2])
    check_graph(graph, tiles, batch=batch, seed=seed, same_outputs=True)


def test_matmul_expands_broadcast_operands_past_two_batch_levels() -> None:
    graph, _ = parallel("matmul", {"a": ("f32", (2, 1, 3, 5, 4)), "b": ("f32", (1, 2, 1, 4, 6))},
                        [None])
    plan = generate(graph)
    assert [launch.kernel.split("_r")[0] for launch in plan.launches] == [
        "netc_ew_f32_copy", "netc_ew_f32_copy", "netc_gemm_f32_bm64_bn64_bk8_tm4_tn4_nn"]
    check_graph(graph)


def _gemm_and_conv_graph() -> Graph:
    """Ragged convolutions (strided, padded, grouped, with and without bias), dense and matmul."""
    builder = GraphBuilder("gemm_conv")
    x = builder.input("x", "f32", ("N", 3, 9, 7))
    y = builder.op("conv2d", x, filters=33, kernel=3, stride=2, padding=1)
    y = builder.op("conv2d", y, filters=6, kernel=(2, 3), groups=3, bias=False)
    flat = builder.op("flatten", y)
    width = int(builder.type_of(flat).shape[-1])
    builder.output("y", builder.op("dense", flat, units=31))
    builder.output("z", builder.op("matmul", flat, builder.input("w", "f32", (width, 5))))
    return builder.build()


def test_gemm_and_conv_kernels_are_race_free() -> None:
    """Every launch runs under three thread schedules; the results must agree bit for bit."""
    with CudaSim(check_races=True, schedule="shuffled", seed=7) as sim:
        check_graph(_gemm_and_conv_graph(), batch=3, device=sim)


def test_gemm_and_conv_kernels_stay_in_bounds() -> None:
    """AddressSanitizer on ragged shapes: every load and store inside its buffer."""
    with CudaSim(sanitize=True) as sim:
        check_graph(_gemm_and_conv_graph(), batch=3, device=sim)
