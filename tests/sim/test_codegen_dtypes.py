"""f16 and bf16 kernels: storage in the narrow type, arithmetic and accumulation in float."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.ir import Dim
from tests.sim.codegen_support import RAGGED, check_graph, seeds
from tests.sim.graph_builder import GraphBuilder, parallel
from tests.sim.variants import (
    LOW_PRECISION,
    LOW_PRECISION_CONV_TILES,
    LOW_PRECISION_GEMM_TILES,
    LOW_PRECISION_ROW_TILES,
)

pytestmark = pytest.mark.sim

OPS: list[tuple[str, tuple[Dim, ...], dict[str, Any], tuple[Any, ...]]] = [
    ("dense", ("N", 33), {"units": 17}, LOW_PRECISION_GEMM_TILES),
    ("conv2d", ("N", 4, 7, 6), {"filters": 6, "kernel": 3, "padding": 1, "groups": 2},
     LOW_PRECISION_CONV_TILES),
    ("softmax", ("N", 3, 129), {}, LOW_PRECISION_ROW_TILES),
    ("layernorm", ("N", 65), {}, LOW_PRECISION_ROW_TILES),
    ("global_avgpool", ("N", 3, 5, 5), {}, LOW_PRECISION_ROW_TILES),
    ("maxpool2d", ("N", 2, 7, 7), {"kernel": 3, "stride": 2, "padding": 1}, (None,)),
    ("avgpool2d", ("N", 2, 7, 7), {"kernel": 2}, (None,)),
    ("batchnorm", ("N", 3, 4, 4), {}, (None,)),
    ("gelu", ("N", 50), {}, (None,)),
    ("transpose", ("N", 3, 4, 5), {"perm": [0, 3, 1, 2]}, (None,)),
]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("op, shape, attrs, tiles", OPS, ids=[op for op, *_ in OPS])
def test_low_precision_ops_match_reference(dtype: str, op: str, shape: tuple[Dim, ...],
                                           attrs: dict[str, Any], tiles: tuple[Any, ...]) -> None:
    graph, overrides = parallel(op, {"x": (dtype, shape)}, tiles, **attrs)
    plan = check_graph(graph, overrides, batch=3, shared_weights=True)
    assert all(f"_{dtype}_" in kernel for kernel in plan.kernels)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@given(rows=st.sampled_from(RAGGED), features=st.sampled_from(RAGGED), seed=seeds())
def test_low_precision_dense_with_ragged_shapes(dtype: str, rows: int, features: int,
                                                seed: int) -> None:
    graph, tiles = parallel("dense", {"x": (dtype, ("N", features))}, LOW_PRECISION_GEMM_TILES,
                            units=31)
    check_graph(graph, tiles, batch=rows, seed=seed, shared_weights=True, same_outputs=True)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_arithmetic_and_concat(dtype: str) -> None:
    builder = GraphBuilder("narrow")
    a = builder.input("a", dtype, ("N", 3, 1, 5))
    b = builder.input("b", dtype, (4, 1))
    total = builder.op("add", a, b)
    scaled = builder.op("mul", total, builder.constant(0.25, dtype))
    builder.output("y", builder.op("concat", scaled, builder.op("sub", total, scaled), axis=2))
    builder.output("m", builder.op("matmul", a, builder.input("w", dtype, (5, 2))))
    check_graph(builder.build(), batch=2)


def test_narrow_kernels_store_their_own_type() -> None:
    graph, _ = parallel("relu", {"x": ("bf16", ("N", 4))}, [None])
    assert "netc_ew_bf16_relu_r0_b256(netc_bf16* __restrict__ out" in generate(graph).source
