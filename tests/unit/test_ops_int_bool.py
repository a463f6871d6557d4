"""Integer and boolean tensors and their ops (`netc.ops.integers`): each reference against
PyTorch (CPU) and onnxruntime (through the exporter), the ONNX import round trip, and the
shape and dtype diagnostics.

Shapes are drawn from ragged sizes; float inputs carry NaN and infinities where the op must
propagate or compare them as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.diagnostics import CompileError
from netc.dtypes import round_to
from netc.ir import ALL_DTYPES, Graph, TensorType
from netc.onnx.export import export_graph
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, ShapeError
from netc.ops.apply import DtypeError
from netc.ops.builder import GraphBuilder
from netc.reference import random_inputs, run_reference

pytestmark = pytest.mark.unit

SIZES = (1, 2, 3, 5, 31, 33)
"""Ragged sizes (the kernels' tiles are powers of two)."""
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.5, 1.5], dtype=np.float32)


def shapes(rank_low: int = 1, rank_high: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.sampled_from(SIZES), min_size=rank_low, max_size=rank_high).map(tuple)


def floats_with_specials(rng: np.random.Generator, shape: Sequence[int],
                         scale: float = 3.0) -> np.ndarray:
    """Random floats with NaN, infinities, zeros and halves mixed in."""
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    mask = rng.random(shape) < 0.3
    values[mask] = rng.choice(SPECIAL, size=int(mask.sum()))
    return values


def array_of(rng: np.random.Generator, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A host array of `dtype` as netc holds it (float32 for the float dtypes)."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("i32", "i64"):
        return round_to(dtype, rng.integers(-1000, 1000, size=shape))
    return round_to(dtype, floats_with_specials(rng, shape))


def as_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).to(TORCH_DTYPES[dtype])


def from_torch(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()


def run_op(op: str, inputs: Sequence[tuple[str, np.ndarray]], **attrs: Any) -> np.ndarray:
    """The reference interpreter's result of `op` on (dtype, array) inputs."""
    graph, feeds = one_op_graph(op, inputs, **attrs)
    return run_reference(graph, {}, feeds)["y"]


def one_op_graph(op: str, inputs: Sequence[tuple[str, np.ndarray]],
                 **attrs: Any) -> tuple[Graph, dict[str, np.ndarray]]:
    builder = GraphBuilder(op)
    names = [builder.input(f"x{k}", dtype, np.shape(array))
             for k, (dtype, array) in enumerate(inputs)]
    builder.output("y", builder.op(op, *names, **attrs))
    return builder.build(), {f"x{k}": array for k, (_, array) in enumerate(inputs)}


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal values and dtype kinds, NaN equal to NaN."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype.kind == expected.dtype.kind, (actual.dtype, expected.dtype)
    equal = (actual == expected) | (np.isnan(actual) & np.isnan(expected)
                                    if actual.dtype.kind == "f" else False)
    assert np.all(equal), (f"{int((~equal).sum())} of {equal.size} elements differ; first at "
                           f"{np.argwhere(~equal)[0]}: {actual[~equal][0]!r} vs "
                           f"{expected[~equal][0]!r}")


# cast ---------------------------------------------------------------------------------------


@given(st.sampled_from(ALL_DTYPES), st.sampled_from(ALL_DTYPES), shapes(), st.integers(0, 2**32))
def test_cast_matches_torch(source: str, target: str, shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = array_of(rng, source, shape)
    if target in ("i32", "i64") and source in ("f32", "f16", "bf16"):
        # PyTorch leaves NaN, infinities and out-of-range floats undefined for integers.
        x = np.where(np.isfinite(x), x, np.float32(7.75)).astype(np.float32)
    expected = from_torch(as_torch(x, source).to(TORCH_DTYPES[target]))
    assert_same(run_op("cast", [(source, x)], dtype=target), round_to(target, expected))


def test_cast_defines_what_torch_leaves_undefined() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.0**31, -(2.0**31), -2.9, 2.9],
                 dtype=np.float32)
    assert list(run_op("cast", [("f32", x)], dtype="i32")) == [
        0, 2**31 - 1, -(2**31), 2**31 - 1, -(2**31), 2**31 - 1, -(2**31), -2, 2]
    big = np.array([np.nan, 1e19, -1e19, 2.0**62], dtype=np.float32)
    assert list(run_op("cast", [("f32", big)], dtype="i64")) == [
        0, 2**63 - 1, -(2**63), 2**62]
    # NaN is nonzero: true, as torch.
    assert list(run_op("cast", [("f32", np.array([np.nan, 0.0, -0.0], np.float32))],
                       dtype="bool")) == [True, False, False]


def test_cast_keeps_i64_exact_and_wraps_to_i32() -> None:
    x = np.array([2**40 + 1, -(2**53) - 1, 2**31 + 5], dtype=np.int64)
    assert_same(run_op("cast", [("i64", x)], dtype="i64"), x)
    assert_same(run_op("cast", [("i64", x)], dtype="i32"),
                from_torch(torch.from_numpy(x).to(torch.int32)))


# comparisons --------------------------------------------------------------------------------

COMPARISONS = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
               "ge": torch.ge}


@given(st.sampled_from(sorted(COMPARISONS)), st.sampled_from(ALL_DTYPES), shapes(),
       st.booleans(), st.integers(0, 2**32))
def test_comparison_of_two_tensors_matches_torch(op: str, dtype: str, shape: tuple[int, ...],
                                                 broadcast: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    other_shape = (1, *shape[1:]) if broadcast else shape
    a = array_of(rng, dtype, shape)
    b = array_of(rng, dtype, other_shape)
    b.flat[0] = a.flat[0]  # equal elements, and NaN against NaN for floats
    expected = from_torch(COMPARISONS[op](as_torch(a, dtype), as_torch(b, dtype)))
    assert_same(run_op(op, [(dtype, a), (dtype, b)]), expected)


@given(st.sampled_from(sorted(COMPARISONS)), st.sampled_from(ALL_DTYPES), shapes(),
       st.sampled_from((0.0, 0.1, -1.0, 3.0, 2.5, 1e30)), st.integers(0, 2**32))
def test_comparison_with_a_number_matches_torch(op: str, dtype: str, shape: tuple[int, ...],
                                                number: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = array_of(rng, dtype, shape)
    # torch compares an integer tensor with a float number in float32 and with an int
    # exactly: the same within 2^24, which these values are.
    other: float | int = int(number) if dtype in ("i32", "i64") and number.is_integer() \
        and abs(number) < 2**31 else number
    expected = from_torch(COMPARISONS[op](as_torch(a, dtype), other))
    assert_same(run_op(op, [(dtype, a)], other=number), expected)


def test_a_number_is_rounded_to_a_half_precision_tensor_as_torch_does() -> None:
    x = round_to("f16", np.array([0.1], dtype=np.float32))
    assert run_op("eq", [("f16", x)], other=0.1).tolist() == [True]
    assert torch.eq(torch.tensor([0.1], dtype=torch.float16), 0.1).tolist() == [True]


# where and masked_fill ----------------------------------------------------------------------


@given(st.sampled_from(ALL_DTYPES), shapes(2, 3), st.integers(0, 7), st.integers(0, 2**32))
def test_where_matches_torch(dtype: str, shape: tuple[int, ...], broadcast: int,
                             seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Each of cond, a, b may have its first dim broadcast.
    shape_of = [(1, *shape[1:]) if broadcast >> k & 1 else shape for k in range(3)]
    condition = rng.random(shape_of[0]) < 0.5
    a, b = array_of(rng, dtype, shape_of[1]), array_of(rng, dtype, shape_of[2])
    expected = from_torch(torch.where(torch.from_numpy(condition), as_torch(a, dtype),
                                      as_torch(b, dtype)))
    assert_same(run_op("where", [("bool", condition), (dtype, a), (dtype, b)]),
                round_to(dtype, expected))


@given(st.sampled_from(ALL_DTYPES), shapes(2, 3), st.booleans(),
       st.sampled_from((-1.0, 0.0, 1.0, 5.0, -1e4)), st.integers(0, 2**32))
def test_masked_fill_matches_torch(dtype: str, shape: tuple[int, ...], broadcast: bool,
                                   value: float, seed: int) -> None:
    if dtype == "bool" and value not in (0.0, 1.0):
        value = 1.0
    rng = np.random.default_rng(seed)
    x = array_of(rng, dtype, shape)
    mask = rng.random((1, *shape[1:]) if broadcast else shape) < 0.5
    torch_value = bool(value) if dtype == "bool" else int(value) if dtype in ("i32", "i64") \
        else value
    expected = from_torch(as_torch(x, dtype).masked_fill(torch.from_numpy(mask), torch_value))
    assert_same(run_op("masked_fill", [(dtype, x), ("bool", mask)], value=value),
                round_to(dtype, expected))


def test_masked_fill_with_minus_infinity_as_attention_masks_do() -> None:
    x = np.zeros((2, 3), np.float32)
    mask = np.array([[False, True, True], [False, False, True]])
    result = run_op("masked_fill", [("f32", x), ("bool", mask)], value=float("-inf"))
    assert np.array_equal(result, np.where(mask, -np.inf, 0.0).astype(np.float32))


# embedding, arange, triu, tril -------------------------------------------------------------


def embedding_graph(id_dtype: str, shape: Sequence[int | str], rows: int, dim: int) -> Graph:
    builder = GraphBuilder("embedding")
    ids = builder.input("ids", id_dtype, shape)
    builder.output("y", builder.op("embedding", ids, num_embeddings=rows, dim=dim,
                                   name="table"))
    return builder.build()


@given(st.sampled_from(("i32", "i64")), shapes(1, 3), st.sampled_from(SIZES),
       st.sampled_from(SIZES), st.integers(0, 2**32))
def test_embedding_matches_torch(id_dtype: str, shape: tuple[int, ...], rows: int, dim: int,
                                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = round_to(id_dtype, rng.integers(0, rows, size=shape))
    weight = rng.standard_normal((rows, dim)).astype(np.float32)
    expected = torch.nn.functional.embedding(torch.from_numpy(ids.astype(np.int64)),
                                             torch.from_numpy(weight)).numpy()
    actual = run_reference(embedding_graph(id_dtype, shape, rows, dim),
                           {"table.weight": weight}, {"ids": ids})["y"]
    assert_same(actual, expected)


def test_embedding_ids_out_of_range_give_nan_rows() -> None:
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    ids = np.array([0, -1, 4, 3, -(2**40), 2**40])
    actual = run_reference(embedding_graph("i64", (6,), 4, 2), {"table.weight": weight},
                           {"ids": ids})["y"]
    assert np.array_equal(actual[[0, 3]], weight[[0, 3]])
    assert np.isnan(actual[[1, 2, 4, 5]]).all()
    with pytest.raises(IndexError):  # what PyTorch does instead
        torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(weight))


def test_embedding_weight_is_normal_as_nn_embedding() -> None:
    graph = embedding_graph("i64", ("N", 3), 1000, 64)
    (spec,) = REGISTRY["embedding"].params(graph["table"].attrs, [graph["ids"].type])
    assert (spec.name, spec.shape, spec.init, spec.dtype) == (
        "weight", (1000, 64), ("normal", 1.0), "f32")
    assert graph["table.weight"].type == TensorType("f32", (1000, 64))


@pytest.mark.parametrize("n", [1, 7, 129])
def test_arange_matches_torch(n: int) -> None:
    builder = GraphBuilder("arange")
    builder.output("y", builder.op("arange", n=n))
    assert_same(run_reference(builder.build(), {}, {})["y"], torch.arange(n).numpy())


@given(st.sampled_from(("triu", "tril")), st.sampled_from(ALL_DTYPES), shapes(2, 4),
       st.integers(-4, 4), st.integers(0, 2**32))
def test_triangles_match_torch(op: str, dtype: str, shape: tuple[int, ...], diagonal: int,
                               seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = array_of(rng, dtype, shape)
    function = torch.triu if op == "triu" else torch.tril
    expected = from_torch(function(as_torch(x, dtype), diagonal=diagonal))
    assert_same(run_op(op, [(dtype, x)], diagonal=diagonal), round_to(dtype, expected))


# against onnxruntime, and the import round trip ---------------------------------------------


def mixed_graph() -> Graph:
    """Every op of the module once, on f32 and i64 inputs of ragged sizes."""
    builder = GraphBuilder("mixed")
    x = builder.input("x", "f32", ("N", 33))
    y = builder.input("y", "f32", (1, 33))
    ids = builder.input("ids", "i64", ("N", 5))
    outputs = {}
    for op in COMPARISONS:
        outputs[op] = builder.op(op, x, y)
        outputs[f"{op}_number"] = builder.op(op, x, other=0.25)
        outputs[f"{op}_ids"] = builder.op(op, ids, other=4)
    positive = outputs["gt_number"]
    outputs["where"] = builder.op("where", positive, x, y)
    outputs["masked_fill"] = builder.op("masked_fill", x, positive, value=-1e4)
    outputs["masked_ids"] = builder.op("masked_fill", ids, outputs["eq_ids"], value=-7)
    outputs["to_i32"] = builder.op("cast", builder.op("mul", x, builder.constant(10.0)),
                                   dtype="i32")
    outputs["to_f16"] = builder.op("cast", x, dtype="f16")
    outputs["to_float"] = builder.op("cast", ids, dtype="f32")
    outputs["to_bool"] = builder.op("cast", ids, dtype="bool")
    outputs["embedding"] = builder.op("embedding", ids, num_embeddings=10, dim=31, name="wte")
    outputs["arange"] = builder.op("arange", n=33)
    square = builder.op("reshape", builder.op("embedding", ids, num_embeddings=10, dim=5,
                                              name="square"), dims=(5, 5))
    outputs["triu"] = builder.op("triu", square, diagonal=1)
    outputs["tril"] = builder.op("tril", square, diagonal=-2)
    for name, value in outputs.items():
        builder.output(name, value)
    return builder.build()


def mixed_data(graph: Graph, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = random_inputs(graph, batch=3, seed=seed)
    inputs["x"] = floats_with_specials(rng, (3, 33))
    inputs["y"][0, :5] = [np.nan, 0.25, np.inf, inputs["x"][0, 3], -0.0]
    weights = {"wte.weight": rng.standard_normal((10, 31)).astype(np.float32),
               "square.weight": rng.standard_normal((10, 5)).astype(np.float32)}
    return weights, inputs


def feeds(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {node.id: inputs[node.id] for node in graph.inputs}


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_onnxruntime(seed: int) -> None:
    graph = mixed_graph()
    weights, inputs = mixed_data(graph, seed)
    expected = run_reference(graph, weights, inputs)
    session = onnxruntime.InferenceSession(export_graph(graph, weights).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [name for name, _ in graph.outputs]
    for name, value in zip(names, session.run(names, feeds(graph, inputs))):
        if name == "to_i32":
            # NaN and infinities: onnxruntime gives INT_MIN, netc 0 / the range's ends.
            finite = np.isfinite(inputs["x"])
            value, reference = value[finite], expected[name][finite]
        else:
            reference = expected[name]
        assert_same(round_to(graph[dict(graph.outputs)[name]].type.dtype, value), reference)


def test_import_round_trip_gives_the_same_ops_and_values() -> None:
    graph = mixed_graph()
    weights, inputs = mixed_data(graph, 2)
    imported = import_onnx(export_graph(graph, weights))
    ops = {node.op for node in imported.graph.compute_nodes}
    assert {"eq", "ne", "lt", "le", "gt", "ge", "where", "masked_fill", "cast", "embedding",
            "arange", "triu", "tril"} <= ops
    assert "table" not in imported.text
    expected = run_reference(graph, weights, inputs)
    actual = run_reference(imported.graph, imported.weights,
                           {imported.inputs[name]: value for name, value in inputs.items()})
    for name, value in expected.items():
        assert_same(actual[imported.outputs[name]], value)
    from netc.frontend import load_string

    assert load_string(imported.text).outputs == imported.graph.outputs


def test_onnx_gather_of_a_table_imports_as_embedding_with_its_name() -> None:
    graph = embedding_graph("i64", ("N", 4), 6, 3)
    weight = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    imported = import_onnx(export_graph(graph, {"table.weight": weight}))
    assert 'embedding(ids, 6, dim=3, name="table")' in imported.text
    assert np.array_equal(imported.weights["table.weight"], weight)


# diagnostics --------------------------------------------------------------------------------


@pytest.mark.parametrize("op, inputs, attrs, message", [
    ("where", [TensorType("f32", (2,))] * 3, {}, "needs a bool condition"),
    ("where", [TensorType("bool", (2,)), TensorType("f32", (2,)), TensorType("i64", (2,))],
     {}, "one dtype"),
    ("masked_fill", [TensorType("i64", (2, 3)), TensorType("bool", (3,))], {"value": 2.5},
     "cannot hold the value 2.5"),
    ("masked_fill", [TensorType("bool", (2, 3)), TensorType("bool", (3,))], {"value": 2.0},
     "0 or 1"),
    ("masked_fill", [TensorType("f32", (3,)), TensorType("bool", (2, 3))], {"value": 0.0},
     r"broadcasts to x's shape \[3\]"),
    ("eq", [TensorType("f32", (2,)), TensorType("f32", (2,))], {"other": 1.0}, "not both"),
    ("lt", [TensorType("f32", (2,))], {}, "needs a second tensor or a number"),
    ("ge", [TensorType("f32", (2,)), TensorType("i32", (2,))], {}, "one dtype"),
    ("gt", [TensorType("f32", (2, 3)), TensorType("f32", (4,))], {}, "cannot broadcast"),
    ("triu", [TensorType("f32", (5,))], {}, "rank 2 or more"),
])
def test_misuse_is_a_shape_error_naming_the_problem(op: str, inputs: list[TensorType],
                                                    attrs: dict[str, Any], message: str) -> None:
    builder = GraphBuilder("bad")
    names = [builder.input(f"x{k}", t.dtype, t.shape) for k, t in enumerate(inputs)]
    with pytest.raises(ShapeError, match=message):
        builder.op(op, *names, **attrs)


def test_embedding_takes_integer_ids_only() -> None:
    builder = GraphBuilder("bad")
    x = builder.input("x", "f32", (3,))
    with pytest.raises(DtypeError, match="i32 or i64"):
        builder.op("embedding", x, num_embeddings=4, dim=2)


def test_kernels_of_one_op_with_a_number_or_a_tensor_have_different_names() -> None:
    builder = GraphBuilder("names")
    x = builder.input("x", "bool", ("N", 4))
    builder.output("with_tensor", builder.op("eq", x, builder.input("y", "bool", ("N", 4))))
    builder.output("with_number", builder.op("eq", x, other=1.0))
    kernels = generate(builder.build()).kernels  # two specialisations of one name would raise
    assert len([name for name in kernels if "_eq_" in name]) == 2, kernels


# attention (netc.ops.attention) -------------------------------------------------------------


def attention_case(seed: int, mask: str | None, lengths: tuple[int, int] = (5, 7)
                   ) -> tuple[dict[str, np.ndarray], list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    length, source = lengths
    arrays: dict[str, np.ndarray] = {
        "q": rng.standard_normal((2, 3, length, 8)).astype(np.float32),
        "k": rng.standard_normal((2, 3, source, 8)).astype(np.float32),
        "v": rng.standard_normal((2, 3, source, 4)).astype(np.float32)}
    if mask == "bool":
        arrays["mask"] = rng.random((length, source)) < 0.6
        arrays["mask"][1] = False  # a row that may attend to nothing
    elif mask == "f32":
        arrays["mask"] = rng.standard_normal((1, 3, length, source)).astype(np.float32)
    return arrays, [torch.from_numpy(a) for a in arrays.values()]


def attention_graph(arrays: dict[str, np.ndarray], **attrs: Any) -> Graph:
    builder = GraphBuilder("attention")
    names = [builder.input(name, "bool" if a.dtype == np.bool_ else "f32", a.shape)
             for name, a in arrays.items()]
    builder.output("y", builder.op("attention", *names, **attrs))
    return builder.build()


@pytest.mark.parametrize("mask", [None, "bool", "f32"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.25])
def test_attention_matches_scaled_dot_product_attention(mask: str | None, causal: bool,
                                                        scale: float | None) -> None:
    arrays, tensors = attention_case(3, mask)
    q, k, v, *rest = tensors
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=rest[0] if rest else None, is_causal=causal and not rest,
        scale=scale)
    if causal and rest:  # torch takes a mask or is_causal: the causal part as a mask
        causal_mask = torch.ones(5, 7, dtype=torch.bool).tril()
        combined = (rest[0] & causal_mask) if mask == "bool" else \
            rest[0] + torch.zeros(5, 7).masked_fill(~causal_mask, float("-inf"))
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, combined,
                                                                    scale=scale)
    graph = attention_graph(arrays, causal=causal, scale=scale)
    actual = run_reference(graph, {}, arrays)["y"]
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-6)
    # The decomposition the CUDA and ONNX backends compute gives the same.
    session = onnxruntime.InferenceSession(export_graph(graph).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, arrays)[0], actual, rtol=1e-5, atol=1e-6)


def test_attention_propagates_nan_as_torch() -> None:
    arrays, tensors = attention_case(4, "bool")
    arrays["q"][0, 0, 0, 0] = np.nan
    tensors[0][0, 0, 0, 0] = float("nan")
    q, k, v, mask = tensors
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    actual = run_reference(attention_graph(arrays), {}, arrays)["y"]
    assert np.array_equal(np.isnan(actual), np.isnan(expected.numpy()))


def test_onnx_attention_imports_as_attention() -> None:
    from onnx import TensorProto, helper

    arrays, _ = attention_case(5, "bool")
    types: dict[str, list[str | int]] = {"q": ["N", 3, 5, 8], "k": ["N", 3, 7, 8],
                                         "v": ["N", 3, 7, 4], "mask": [5, 7]}
    inputs = [helper.make_tensor_value_info(name, TensorProto.BOOL if name == "mask"
                                            else TensorProto.FLOAT, shape)
              for name, shape in types.items()]
    node = helper.make_node("Attention", list(types), ["y"], is_causal=1, scale=0.5)
    model = helper.make_model(helper.make_graph(
        [node], "sdpa", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 23)])
    imported = import_onnx(model)
    assert "attention(q, k, v, mask, causal=true, scale=0.5)" in imported.text
    arrays["mask"][1] = True  # onnxruntime gives NaN for a row with nothing to attend to
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, arrays)[0]
    actual = run_reference(imported.graph, {}, arrays)["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inputs, message", [
    ([TensorType("f32", (2, 4, 8)), TensorType("f32", (2, 6, 7)), TensorType("f32", (2, 6, 3))],
     "one feature size"),
    ([TensorType("f32", (2, 4, 8)), TensorType("f32", (2, 6, 8)), TensorType("f32", (2, 5, 3))],
     "one length"),
    ([TensorType("f32", (4, 8)), TensorType("f32", (6, 8)), TensorType("f32", (6, 3)),
      TensorType("f16", (4, 6))], "mask is bool"),
    ([TensorType("f32", (4, 8)), TensorType("f32", (6, 8)), TensorType("f32", (6, 3)),
      TensorType("i64", (4, 6))], "input 4 is i64"),
    ([TensorType("f32", (4, 8)), TensorType("f32", (6, 8)), TensorType("f32", (6, 3)),
      TensorType("bool", (2, 4, 6))], "does not broadcast to the scores"),
])
def test_attention_misuse_names_the_shapes(inputs: list[TensorType], message: str) -> None:
    builder = GraphBuilder("bad")
    names = [builder.input(f"x{k}", t.dtype, t.shape) for k, t in enumerate(inputs)]
    with pytest.raises(ShapeError, match=message):
        builder.op("attention", *names)


def test_an_infinite_number_in_a_where_is_rejected_not_written_unreadably() -> None:
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
              helper.make_tensor_value_info("m", TensorProto.BOOL, ["N", 4])]
    node = helper.make_node("Where", ["m", "minus_inf", "x"], ["y"])
    graph = helper.make_graph(
        [node], "fill", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf")])
    with pytest.raises(CompileError, match=r"E0606.*-inf has no `\.net` literal"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


class _TokenModel(torch.nn.Module):
    """nn.Embedding, a mask from a comparison, masked_fill, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(50, 16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.wte(ids)
        return self.head(h.masked_fill(h > 1.0, 1.0)), (ids == 0).float()


def test_a_pytorch_export_with_token_ids_imports_and_matches_pytorch(tmp_path: Path) -> None:
    model = _TokenModel().eval()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(model, (ids,), str(path), dynamo=False, input_names=["ids"],
                      output_names=["logits", "pad"], dynamic_axes={"ids": {0: "N"}},
                      opset_version=17)
    imported = import_onnx(path)
    assert 'embedding(ids, 50, dim=16, name="wte")' in imported.text
    assert {"gt", "masked_fill", "eq", "cast"} <= {n.op for n in imported.graph.compute_nodes}
    actual = run_reference(imported.graph, imported.weights, {"ids": ids.numpy()})
    logits, pad = model(ids)
    np.testing.assert_allclose(actual["logits"], logits.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    assert_same(actual["pad"], pad.numpy())
