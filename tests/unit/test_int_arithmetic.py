"""Integer arithmetic and reductions (`add`, `sub`, `mul`, `neg`, `abs`, `maximum`, `minimum`,
`sum`, `amax`, `amin`, `argmax` on `i32` / `i64`), as PyTorch computes them: the reference
against torch on values that overflow (wrapping around), numbers in `.net` arithmetic, the
diagnostics for what stays refused, ONNX export (onnxruntime) and import, and `pow` with a
tensor exponent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import netc
from netc.diagnostics import CompileError
from netc.onnx.export import export_graph
from netc.onnx.importer import import_onnx
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from tests.unit.test_ops_int_bool import assert_same, run_op

INTEGERS = {"i32": (np.int32, torch.int32), "i64": (np.int64, torch.int64)}


def integers(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random integers over the whole range of `dtype`, with its ends, -1, 0 and 1 mixed in
    (so that sums, products and negations overflow)."""
    kind = INTEGERS[dtype][0]
    info = np.iinfo(kind)
    values = rng.integers(info.min, info.max, size=shape, dtype=kind, endpoint=True)
    special = np.array([info.min, info.max, -1, 0, 1, info.min + 1], dtype=kind)
    mask = rng.random(shape) < 0.3
    values[mask] = rng.choice(special, size=int(mask.sum()))
    return values


BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum,
    "minimum": torch.minimum,
}
UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"neg": torch.neg, "abs": torch.abs}


@given(st.sampled_from(sorted(INTEGERS)), st.sampled_from(sorted(BINARY)),
       st.sampled_from([((3, 5), (3, 5)), ((4, 1), (1, 7)), ((2, 3, 4), (4,)), ((6,), ())]),
       st.integers(0, 2**32))
def test_binary_ops_match_torch_and_wrap_around(dtype: str, op: str,
                                                shapes: tuple[tuple[int, ...], ...],
                                                seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = (integers(rng, dtype, shape) for shape in shapes)
    expected = BINARY[op](torch.from_numpy(a), torch.from_numpy(np.asarray(b))).numpy()
    actual = run_op(op, [(dtype, a), (dtype, np.asarray(b))])
    assert actual.dtype == INTEGERS[dtype][0]
    assert_same(actual, expected)


@given(st.sampled_from(sorted(INTEGERS)), st.sampled_from(sorted(UNARY)), st.integers(0, 2**32))
def test_neg_and_abs_match_torch_at_the_lowest_integer(dtype: str, op: str, seed: int) -> None:
    x = integers(np.random.default_rng(seed), dtype, (5, 9))
    x[0, 0] = np.iinfo(INTEGERS[dtype][0]).min  # -(-2^31) wraps to -2^31, as in torch
    assert_same(run_op(op, [(dtype, x)]), UNARY[op](torch.from_numpy(x)).numpy())


@given(st.sampled_from(sorted(INTEGERS)), st.sampled_from([((4, 6), (1,)), ((3, 5, 7), (0, 2)),
                                                          ((2, 3, 4), (0, 1, 2)), ((9,), (0,))]),
       st.booleans(), st.integers(0, 2**32))
def test_integer_reductions_match_torch(dtype: str, case: tuple[tuple[int, ...], tuple[int, ...]],
                                        keepdim: bool, seed: int) -> None:
    shape, axes = case
    x = integers(np.random.default_rng(seed), dtype, shape)
    t = torch.from_numpy(x)
    # The sum keeps the dtype, wrapping around: torch.sum(x, dtype=x.dtype).
    expected = {"sum": torch.sum(t, dim=axes, keepdim=keepdim, dtype=t.dtype),
                "amax": torch.amax(t, dim=axes, keepdim=keepdim),
                "amin": torch.amin(t, dim=axes, keepdim=keepdim)}
    for op, value in expected.items():
        assert_same(run_op(op, [(dtype, x)], axis=axes, keepdim=keepdim), value.numpy())
    x[..., 0] = x[..., -1]  # ties: the first position, as torch
    assert_same(run_op("argmax", [(dtype, x)], axis=-1, keepdim=keepdim),
                torch.argmax(torch.from_numpy(x), dim=-1, keepdim=keepdim).numpy())


def test_integer_numbers_in_source_are_exact_beyond_float_precision() -> None:
    model = netc.loads("""network n {
    input ids: i64[N, 4]
    input small: i32[N, 4]
    output a = ids * 3 + 1099511627775 - maximum(ids, -ids)
    output b = -small - 1
    output c = sum(abs(small), 1)
}
""")
    rng = np.random.default_rng(1)
    ids, small = integers(rng, "i64", (3, 4)), integers(rng, "i32", (3, 4))
    results = run_reference(model.graph, {}, {"ids": ids, "small": small})
    t, s = torch.from_numpy(ids), torch.from_numpy(small)
    assert_same(results["a"], (t * 3 + 1099511627775 - torch.maximum(t, -t)).numpy())
    assert_same(results["b"], (-s - 1).numpy())
    assert_same(results["c"], torch.sum(torch.abs(s), 1, dtype=torch.int32).numpy())


@pytest.mark.parametrize("body, code, fragment", [
    ("ids * 0.5", "E0315", "an i64 tensor computes with integers only"),
    ("ids + 1.0", "E0315", "integers only, got the number 1.0"),
    ("small + 3000000000", "E0315", "outside the range of i32"),
    ("ids / ids", "E0313", "`div` takes float tensors"),
    ("mean(ids, 1)", "E0313", "`mean` takes float tensors"),
    ("logsumexp(ids, 1)", "E0313", "`logsumexp` takes float tensors"),
    ("ids + small", "E0304", "needs inputs of one dtype"),
    ("exp(ids)", "E0313", "`exp` takes float tensors"),
])
def test_what_integers_do_not_do_is_diagnosed(body: str, code: str, fragment: str) -> None:
    source = f"network n {{\n    input ids: i64[N, 4]\n    input small: i32[N, 4]\n" \
             f"    output y = {body}\n}}\n"
    with pytest.raises(CompileError) as caught:
        netc.loads(source)
    assert any(d.code == code and fragment in d.message for d in caught.value.diagnostics), \
        [(d.code, d.message) for d in caught.value.diagnostics]


def _integer_graph(dtype: str) -> GraphBuilder:
    builder = GraphBuilder("integers")
    a = builder.input("a", dtype, ("N", 6))
    b = builder.input("b", dtype, (1, 6))
    total = builder.op("add", builder.op("mul", a, b), builder.constant(7.0, dtype))
    largest = builder.op("maximum", builder.op("neg", total), builder.op("abs", b))
    builder.output("y", builder.op("minimum", builder.op("sub", largest, a), b))
    builder.output("s", builder.op("sum", total, axis=(1,), keepdim=False))
    builder.output("m", builder.op("amax", largest, axis=(0, 1), keepdim=True))
    builder.output("n", builder.op("amin", a, axis=(0,), keepdim=False))
    builder.output("i", builder.op("argmax", a, axis=1, keepdim=False))
    return builder


@pytest.mark.parametrize("dtype", sorted(INTEGERS))
def test_integer_ops_export_to_onnx_and_import_back(dtype: str) -> None:
    graph = _integer_graph(dtype).build()
    # Values that do not overflow: onnxruntime's int64 ReduceSum saturates where PyTorch
    # (and netc) wrap around; overflow is checked against torch above.
    rng = np.random.default_rng(3)
    kind = INTEGERS[dtype][0]
    inputs = {"a": rng.integers(-2**15, 2**15, size=(5, 6)).astype(kind),
              "b": rng.integers(-2**15, 2**15, size=(1, 6)).astype(kind)}
    expected = run_reference(graph, {}, inputs)
    session = onnxruntime.InferenceSession(export_graph(graph, {}).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [name for name, _ in graph.outputs]
    for name, value in zip(names, session.run(names, inputs)):
        assert_same(np.asarray(value), expected[name])
    imported = import_onnx(export_graph(graph, {}))
    assert " * " in imported.text and " + 7\n" in imported.text
    actual = run_reference(imported.graph, imported.weights,
                           {imported.inputs[k]: v for k, v in inputs.items()})
    for name in names:
        assert_same(actual[imported.outputs[name]], expected[name])


def test_pow_takes_a_tensor_exponent_as_torch_pow() -> None:
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal((4, 7))).astype(np.float32) + 0.1
    exponent = rng.uniform(-3, 3, size=(1, 7)).astype(np.float32)
    exponent[0, :3] = [2.0, 0.0, -1.0]
    actual = run_op("pow", [("f32", x), ("f32", exponent)])
    expected = torch.pow(torch.from_numpy(x), torch.from_numpy(exponent)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    # An exponent of exactly ±0.5 is sqrt / rsqrt element by element, as for a number (where
    # torch.pow(t, t) calls pow: the two differ at x = -inf and x = -0 only).
    special = run_op("pow", [("f32", np.array([-np.inf, 4.0], np.float32)),
                             ("f32", np.array([0.5, -0.5], np.float32))])
    assert np.isnan(special[0]) and special[1] == 0.5
    with pytest.raises(CompileError, match="not both"):
        netc.loads("network n {\n    input x: f32[N, 4]\n    output y = pow(x, x, 2.0)\n}\n")


def test_pow_with_a_tensor_exponent_exports_to_onnx() -> None:
    builder = GraphBuilder("power")
    x, e = builder.input("x", "f32", ("N", 5)), builder.input("e", "f32", ("N", 5))
    builder.output("y", builder.op("pow", x, e))
    graph = builder.build()
    rng = np.random.default_rng(2)
    inputs = {"x": rng.uniform(0.1, 3, (3, 5)).astype(np.float32),
              "e": rng.uniform(-2, 2, (3, 5)).astype(np.float32)}
    session = onnxruntime.InferenceSession(export_graph(graph, {}).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (value,) = session.run(["y"], inputs)
    np.testing.assert_allclose(value, run_reference(graph, {}, inputs)["y"], rtol=1e-6)
    imported = import_onnx(export_graph(graph, {}))
    assert "pow(x, e)" in imported.text
