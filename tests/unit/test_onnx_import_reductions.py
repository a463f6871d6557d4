"""ONNX ops that `.net` spells with other ops, imported as exact decompositions and checked
against onnxruntime: the reductions ReduceL1, ReduceL2, ReduceSumSquare and ReduceLogSum (sums),
ArgMin and select_last_index (ties, NaN, integers), ReduceMax/Min of bools, Mean, And, Or, Xor,
IsNaN, IsInf, Sign, Softsign, Selu, Celu, ThresholdedRelu, Shrink, Hardmax, PRelu,
GlobalMaxPool, DepthToSpace, SpaceToDepth and Pow with a tensor exponent; and what stays refused (ReduceProd, integer
Div).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from netc.diagnostics import CompileError
from netc.onnx.importer import import_onnx
from netc.reference import run_reference
from tests.unit.test_ops_int_bool import assert_same, floats_with_specials

ELEMENT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
           np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
           np.dtype(np.bool_): TensorProto.BOOL}


def _run_both(op_type: str, inputs: Mapping[str, np.ndarray], opset: int = 18,
              constants: Mapping[str, np.ndarray] | None = None, outputs: int = 1,
              **attrs: Any) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """One `op_type` node on `inputs` (graph inputs) and `constants` (initializers, in
    operand order after the inputs): onnxruntime's outputs, the imported model's on the
    reference backend, and the imported text."""
    constants = dict(constants or {})
    names = [*inputs, *constants]
    node = helper.make_node(op_type, names, [f"y{k}" for k in range(outputs)], **attrs)
    graph_inputs = [helper.make_tensor_value_info(name, ELEMENT[value.dtype], list(value.shape))
                    for name, value in inputs.items()]
    graph_outputs = [helper.make_empty_tensor_value_info(f"y{k}") for k in range(outputs)]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs,
                              [numpy_helper.from_array(v, n) for n, v in constants.items()])
    model = shape_inference.infer_shapes(  # the outputs' types, which onnxruntime needs
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    expected = session.run(None, dict(inputs))
    imported = import_onnx(model)
    results = run_reference(imported.graph, imported.weights,
                            {imported.inputs[n]: v for n, v in inputs.items()})
    actual = [results[imported.outputs[f"y{k}"]] for k in range(outputs)]
    return expected, actual, imported.text


def _close(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray],
           rtol: float = 1e-6) -> None:
    for e, a in zip(expected, actual):
        e = np.asarray(e)
        if e.dtype.kind in "biu":
            assert_same(np.asarray(a), e)
        else:
            np.testing.assert_allclose(np.asarray(a, dtype=np.float32),
                                       e.astype(np.float32), rtol=rtol, atol=1e-6,
                                       equal_nan=True)


def _axes(*values: int) -> dict[str, np.ndarray]:
    return {"axes": np.array(values, dtype=np.int64)}


RNG = np.random.default_rng(0)
X = floats_with_specials(RNG, (3, 4, 5), scale=2.0)
FINITE = (RNG.standard_normal((3, 4, 5)) * 2).astype(np.float32)


@pytest.mark.parametrize("op_type, term", [("ReduceL1", "abs("), ("ReduceL2", "sqrt("),
                                           ("ReduceSumSquare", " * "),
                                           ("ReduceLogSum", "log(")])
@pytest.mark.parametrize("axes, keepdims", [((1,), 1), ((0, 2), 0), ((-1,), 1), ((), 1)])
def test_sum_reductions_import_as_sums(op_type: str, term: str, axes: tuple[int, ...],
                                       keepdims: int) -> None:
    data = np.abs(FINITE) if op_type == "ReduceLogSum" else X
    expected, actual, text = _run_both(op_type, {"x": data}, constants=_axes(*axes) if axes
                                       else None, keepdims=keepdims)
    _close(expected, actual, rtol=1e-5)
    assert "sum(" in text and term in text


def test_sum_reductions_refuse_a_noop_without_axes() -> None:
    node = helper.make_node("ReduceL2", ["x"], ["y"], noop_with_empty_axes=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 4])], [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(CompileError, match=r"E0602.*noop_with_empty_axes=1"):
        import_onnx(model)


TIES = np.array([[1.0, 3.0, 3.0, -2.0, 3.0], [np.nan, 0.0, np.nan, 5.0, 1.0],
                 [-np.inf, -np.inf, 0.0, 0.0, -0.0], [2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)


def _numpy_position(op_type: str, x: np.ndarray, axis: int, keepdims: int,
                    last: int) -> np.ndarray:
    """ONNX's reference: np.argmax / np.argmin (a NaN is both the max and the min, its first
    position wins), of the reversed axis for select_last_index."""
    function = np.argmax if op_type == "ArgMax" else np.argmin
    if not last:
        return function(x, axis=axis, keepdims=bool(keepdims))
    size = x.shape[axis]
    return size - 1 - function(np.flip(x, axis), axis=axis, keepdims=bool(keepdims))


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("axis, keepdims", [(1, 1), (0, 0), (-1, 0)])
def test_argmax_and_argmin_keep_the_first_or_last_position(op_type: str, last: int, axis: int,
                                                           keepdims: int) -> None:
    """Ties, infinities and zeros of both signs against onnxruntime; NaN against ONNX's
    reference rule (onnxruntime skips a NaN, PyTorch and np.argmax take it as the max)."""
    finite = np.nan_to_num(TIES, nan=7.0)
    expected, actual, _ = _run_both(op_type, {"x": finite}, opset=13, axis=axis,
                                    keepdims=keepdims, select_last_index=last)
    _close(expected, actual)
    _, with_nan, _ = _run_both(op_type, {"x": TIES}, opset=13, axis=axis, keepdims=keepdims,
                               select_last_index=last)
    assert_same(with_nan[0], _numpy_position(op_type, TIES, axis, keepdims, last))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("last", [0, 1])
def test_argmin_of_integers_survives_the_lowest_value(dtype: type, last: int) -> None:
    info = np.iinfo(dtype)
    data: np.ndarray = np.array([[info.min, 3, info.min, info.max], [0, -1, -1, info.max]], dtype=dtype)
    for op_type in ("ArgMin", "ArgMax"):
        expected, actual, _ = _run_both(op_type, {"x": data}, opset=13, axis=1, keepdims=0,
                                        select_last_index=last)
        _close(expected, actual)


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin"])
def test_reductions_of_bools_import(op_type: str) -> None:
    """Any and all (onnxruntime has no bool ReduceMax: ONNX's reference evaluator)."""
    data: np.ndarray = np.array([[True, False], [False, False], [True, True]])
    node = helper.make_node(op_type, ["x", "axes"], ["y"], keepdims=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.BOOL, [3, 2])], [helper.make_tensor_value_info("y", TensorProto.BOOL,
                                                                          [3])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    (expected,) = ReferenceEvaluator(model).run(None, {"x": data})
    expected = np.asarray(expected)
    assert_same(expected, np.asarray(data.any(1) if op_type == "ReduceMax" else data.all(1)))
    imported = import_onnx(model)
    results = run_reference(imported.graph, imported.weights, {imported.inputs["x"]: data})
    assert_same(results[imported.outputs["y"]], expected)


def test_mean_of_several_inputs_is_their_sum_divided() -> None:
    inputs = {"a": FINITE[0], "b": FINITE[1], "c": FINITE[2, :1]}
    expected, actual, text = _run_both("Mean", inputs, opset=13)
    _close(expected, actual)
    assert " / 3.0" in text


@pytest.mark.parametrize("op_type", ["And", "Or", "Xor"])
def test_logical_ops_of_bools_broadcast(op_type: str) -> None:
    inputs = {"a": RNG.random((3, 4, 5)) < 0.5, "b": RNG.random((4, 1)) < 0.5}
    expected, actual, _ = _run_both(op_type, inputs, opset=7)
    _close(expected, actual)


@pytest.mark.parametrize("attrs", [{}, {"detect_negative": 0}, {"detect_positive": 0}])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_isinf_and_isnan_find_the_special_values(attrs: dict[str, Any], dtype: type) -> None:
    data = np.array([[np.inf, -np.inf, np.nan, 65504.0, -65504.0, 3.4e38, 0.0]], dtype=np.float32)
    data = data.astype(dtype)
    expected, actual, _ = _run_both("IsInf", {"x": data}, opset=20, **attrs)
    _close(expected, actual)
    expected, actual, _ = _run_both("IsNaN", {"x": data}, opset=20)
    _close(expected, actual)


@pytest.mark.parametrize("op_type, attrs", [
    ("Sign", {}), ("Softsign", {}), ("Selu", {}), ("Selu", {"alpha": 2.0, "gamma": 0.5}),
    ("Celu", {}), ("Celu", {"alpha": 2.0}), ("ThresholdedRelu", {}),
    ("ThresholdedRelu", {"alpha": -0.5}), ("Shrink", {}), ("Shrink", {"lambd": 1.5, "bias": 0.5}),
])
def test_activation_functions_import_as_their_definitions(op_type: str,
                                                          attrs: dict[str, Any]) -> None:
    expected, actual, _ = _run_both(op_type, {"x": X}, opset=18, **attrs)
    _close(expected, actual, rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_hardmax_is_one_at_the_first_max(axis: int) -> None:
    data = np.nan_to_num(TIES, nan=7.0)  # ties: the first position, as ONNX's reference
    expected, actual, text = _run_both("Hardmax", {"x": data}, opset=13, axis=axis)
    _close(expected, actual)
    assert "argmax(" in text


@pytest.mark.parametrize("slope", [np.float32(0.25), np.linspace(-1, 1, 5, dtype=np.float32),
                                   np.linspace(0, 1, 4, dtype=np.float32).reshape(4, 1)])
def test_prelu_scales_the_negative_part(slope: np.ndarray) -> None:
    expected, actual, _ = _run_both("PRelu", {"x": X}, opset=16,
                                    constants={"slope": np.asarray(slope)})
    _close(expected, actual)


def test_global_maxpool_is_amax_over_the_spatial_dimensions() -> None:
    expected, actual, text = _run_both("GlobalMaxPool", {"x": X[None]}, opset=13)
    _close(expected, actual)
    assert "amax(x, [2, 3], keepdim=true)" in text


@pytest.mark.parametrize("op_type, mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"),
                                           ("SpaceToDepth", "DCR")])
def test_depth_and_space_moves_are_reshapes_and_a_transpose(op_type: str, mode: str) -> None:
    data = RNG.standard_normal((2, 8, 4, 6)).astype(np.float32)
    attrs: dict[str, Any] = {"mode": mode} if op_type == "DepthToSpace" else {}
    expected, actual, text = _run_both(op_type, {"x": data}, opset=13, blocksize=2, **attrs)
    _close(expected, actual, rtol=0.0)
    assert "transpose(" in text


def test_pow_with_a_tensor_exponent_imports() -> None:
    base = np.abs(FINITE) + 0.5
    exponent = (RNG.standard_normal((4, 5)) * 2).astype(np.float32)
    expected, actual, text = _run_both("Pow", {"x": base, "e": exponent}, opset=15)
    _close(expected, actual, rtol=1e-5)
    assert "pow(x, e)" in text
    integer_exponent = RNG.integers(-3, 4, size=(5,)).astype(np.int64)
    expected, actual, text = _run_both("Pow", {"x": base, "e": integer_exponent}, opset=15)
    _close(expected, actual, rtol=1e-5)
    assert 'cast(e, "f32")' in text


@pytest.mark.parametrize("op_type, data", [
    ("ReduceProd", {"x": FINITE}),
    ("Div", {"x": np.arange(1, 5, dtype=np.int32), "y": np.full(4, 3, np.int32)}),
])
def test_what_has_no_exact_form_stays_refused(op_type: str, data: dict[str, np.ndarray]) -> None:
    names = list(data)
    node = helper.make_node(op_type, names, ["y0"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        n, ELEMENT[v.dtype], list(v.shape)) for n, v in data.items()],
        [helper.make_empty_tensor_value_info("y0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    message = str(caught.value)
    assert ("E0601" in message and "ReduceProd" in message) or \
        ("E0607" in message and "`div` takes float tensors" in message), message
