"""Integer and boolean tensors through the CUDA path on the simulator: every op of
`netc.ops.integers` against the reference at ragged sizes, outputs poisoned before each run
(NaN; the lowest integer; for bool a byte that is neither 0 nor 1, which the executor refuses),
unfused and through the passes (fusion); an i64-input network from `.net` source; embedding
ids out of range; i64 values beyond float precision kept exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.backends import prepare
from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.frontend import load_string
from netc.ir import ALL_DTYPES, Graph
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from netc.runtime.executor import UnwrittenError, from_storage
from netc.weights import init_weights
from tests.sim.codegen_support import RAGGED, simulator
from tests.unit.test_ops_int_bool import array_of, assert_same, floats_with_specials

pytestmark = pytest.mark.sim


def check(graph: Graph, inputs: Mapping[str, np.ndarray],
          weights: Mapping[str, np.ndarray] | None = None) -> None:
    """The graph's unfused plan and its plan through the passes, run on the simulator with
    poisoned outputs, give the reference's outputs exactly (these ops compute no sums)."""
    weights = dict(weights or {})
    expected = run_reference(graph, weights, inputs)
    unfused = run_plan(generate(graph), simulator(), weights, inputs, poison=True)
    optimized = prepare("cudasim", graph, weights)(inputs)
    for name, value in expected.items():
        assert_same(unfused[name], value)
        assert_same(optimized[name], value)


@given(st.sampled_from(ALL_DTYPES), st.sampled_from(RAGGED), st.sampled_from((1, 3, 33)),
       st.integers(0, 2**32))
@settings(max_examples=8)
def test_pointwise_ops_of_every_dtype(dtype: str, columns: int, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    builder = GraphBuilder("pointwise")
    x = builder.input("x", dtype, ("N", columns))
    y = builder.input("y", dtype, (1, columns))
    condition = builder.op("lt", x, y)
    outputs = {
        "lt": condition,
        "ne": builder.op("ne", x, y),
        "ge_number": builder.op("ge", x, other=0.5),
        "eq_number": builder.op("eq", x, other=3.0),
        "where": builder.op("where", condition, x, y),
        "masked": builder.op("masked_fill", x, builder.op("gt", x, other=0.0), value=1.0),
        "to_i64": builder.op("cast", x, dtype="i64"),
        "to_i32": builder.op("cast", x, dtype="i32"),
        "to_bool": builder.op("cast", x, dtype="bool"),
        "to_f16": builder.op("cast", x, dtype="f16"),
        "to_f32": builder.op("cast", x, dtype="f32"),
        "triu": builder.op("triu", x, diagonal=1),
        "tril": builder.op("tril", x, diagonal=-1),
    }
    for name, value in outputs.items():
        builder.output(name, value)
    inputs = {"x": array_of(rng, dtype, (rows, columns)), "y": array_of(rng, dtype, (1, columns))}
    inputs["y"][0, 0] = inputs["x"][0, 0]
    check(builder.build(), inputs)


def test_fused_chains_mix_dtypes_and_keep_i64_exact() -> None:
    """Comparisons feeding a where, a where feeding a masked_fill (one i64 kernel after
    fusion), values far beyond float32's 2^24."""
    builder = GraphBuilder("chains")
    ids = builder.input("ids", "i64", ("N", 129))
    x = builder.input("x", "f32", ("N", 129))
    big = builder.op("where", builder.op("gt", x, other=0.0), ids,
                     builder.op("masked_fill", ids, builder.op("lt", x, other=-1.0),
                                value=-(2.0**40)))
    builder.output("big", builder.op("masked_fill", big, builder.op("eq", x, other=0.0),
                                     value=7.0))
    builder.output("narrow", builder.op("cast", big, dtype="i32"))
    builder.output("mask", builder.op("cast", builder.op("ge", ids, other=2.0**40 + 1),
                                      dtype="f32"))
    graph = builder.build()
    rng = np.random.default_rng(5)
    inputs = {"ids": rng.integers(2**40, 2**40 + 4, size=(3, 129)),
              "x": floats_with_specials(rng, (3, 129))}
    check(graph, inputs)
    plan = prepare("cudasim", graph, {})
    assert plan(inputs)["big"].dtype == np.int64


NETWORK = """
network tokens {
    input ids: i64[N, 7]
    h = embedding(ids, 33, 31, name="wte")
    h = masked_fill(h, gt(h, 1.5), 1.5)
    output logits = dense(h, 5, name="head")
    output padding = cast(eq(ids, 0), "f32")
}
"""


@pytest.mark.parametrize("batch", [1, 3])
def test_an_i64_input_network_from_source(batch: int) -> None:
    graph = load_string(NETWORK, "tokens.net")
    weights = init_weights(graph)
    rng = np.random.default_rng(batch)
    inputs = {"ids": rng.integers(0, 33, size=(batch, 7))}
    expected = run_reference(graph, weights, inputs)
    actual = prepare("cudasim", graph, weights)(inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5)
    assert actual["logits"].shape == (batch, 7, 5)


def test_embedding_ids_out_of_range_are_nan_and_never_read() -> None:
    builder = GraphBuilder("lookup")
    ids = builder.input("ids", "i32", ("N",))
    builder.output("rows", builder.op("embedding", ids, num_embeddings=5, dim=33, name="table"))
    graph = builder.build()
    weights = {"table.weight": np.arange(5 * 33, dtype=np.float32).reshape(5, 33)}
    inputs = {"ids": np.array([0, 4, 5, -1, 2**31 - 1, -(2**31), 3], dtype=np.int32)}
    check(graph, inputs, weights)
    rows = run_plan(generate(graph), simulator(), weights, inputs)["rows"]
    assert np.isnan(rows[2:6]).all() and np.array_equal(rows[[0, 1, 6]],
                                                        weights["table.weight"][[0, 4, 3]])


@pytest.mark.parametrize("batch", [1, 33])
def test_triangles_of_a_named_dimension(batch: int) -> None:
    builder = GraphBuilder("triangles")
    x = builder.input("x", "f32", ("N", 31))
    builder.output("upper", builder.op("triu", x, diagonal=2))
    builder.output("lower", builder.op("tril", x))
    builder.output("arange", builder.op("arange", n=127))
    rng = np.random.default_rng(batch)
    check(builder.build(), {"x": floats_with_specials(rng, (batch, 31))})


def test_an_unwritten_bool_element_is_refused_not_read_as_true() -> None:
    assert from_storage("bool", np.array([0, 1], np.uint8)).tolist() == [False, True]
    with pytest.raises(UnwrittenError, match="1 of 3 elements"):
        from_storage("bool", np.array([0, 0xFF, 1], np.uint8))


@pytest.mark.parametrize("mask, causal", [(None, False), ("bool", True), ("f32", True)])
def test_attention_decomposition_on_the_simulator(mask: str | None, causal: bool) -> None:
    from tests.unit.test_ops_int_bool import attention_case, attention_graph

    arrays, _ = attention_case(7, mask, lengths=(31, 33))
    graph = attention_graph(arrays, causal=causal)
    expected = run_reference(graph, {}, arrays)["y"]
    for actual in (run_plan(generate(graph), simulator(), {}, arrays, poison=True)["y"],
                   prepare("cudasim", graph, {})(arrays)["y"]):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_casts_fuse_into_a_reduction_and_an_elementwise_group() -> None:
    """softmax(cast(f16 x)) takes the cast as its prologue (an f16 load in an f32 kernel);
    relu(cast(f32 x to f16)) is one f16 kernel reading f32."""
    builder = GraphBuilder("fused_casts")
    half = builder.input("half", "f16", ("N", 33))
    x = builder.input("x", "f32", ("N", 33))
    builder.output("soft", builder.op("softmax", builder.op("cast", half, dtype="f32")))
    builder.output("relu", builder.op("relu", builder.op("cast", x, dtype="f16")))
    graph = builder.build()
    rng = np.random.default_rng(9)
    inputs = {"half": array_of(rng, "f16", (3, 33)), "x": floats_with_specials(rng, (3, 33))}
    inputs["half"] = np.where(np.isfinite(inputs["half"]), inputs["half"], 1.0)
    plan = prepare("cudasim", graph, {})
    expected = run_reference(graph, {}, inputs)
    actual = plan(inputs)
    np.testing.assert_allclose(actual["soft"], expected["soft"], rtol=1e-5, atol=1e-6)
    assert_same(actual["relu"], expected["relu"])
    from netc.driver import compile_graph

    kernels = compile_graph(graph).plan.kernels
    assert any("_pro_cast_f16" in name for name in kernels), kernels
    assert any("relu" in name and "cast" in name for name in kernels), kernels
