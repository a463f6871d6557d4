"""Reductions (sum, mean, amax, amin, logsumexp), shape ops (squeeze, unsqueeze, expand,
stack, transpose moving dimension 0) and slicing (slice, select): the references against
PyTorch, the ONNX export against onnxruntime, the ONNX import (both forms of `axes`, Split,
Slice with negative starts, Gather, Squeeze/Unsqueeze, torch.stack's Unsqueeze + Concat), the
shape rules' errors, and a `.net` program using them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import TensorType
from netc.onnx.export import export_graph, export_op
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, ShapeError
from netc.ops.apply import AttrError
from netc.ops.builder import GraphBuilder, make_attrs
from netc.reference import run_reference

pytestmark = pytest.mark.unit

REDUCTIONS = ("sum", "mean", "amax", "amin", "logsumexp")
SIZES = (1, 2, 31, 33, 127, 129)


def torch_reduction(op: str, x: np.ndarray, axes: tuple[int, ...], keepdim: bool) -> np.ndarray:
    result = getattr(torch.from_numpy(x), op)(dim=list(axes), keepdim=keepdim)
    return np.asarray(result.numpy())


def reference(op: str, x: np.ndarray, **values: Any) -> np.ndarray:
    attrs = make_attrs(op, values, [TensorType("f32", x.shape)])
    return REGISTRY[op].reference(attrs, x)


@st.composite
def reduction_cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """An array of ragged sizes (NaN and infinities sprinkled in half the time), a non-empty
    set of its axes given with either sign, and keepdim."""
    shape = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=4)
                 .filter(lambda dims: math.prod(dims) <= 20000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape).astype(np.float32) * 3
    if draw(st.booleans()):
        flat = x.reshape(-1)
        for value in (np.nan, np.inf, -np.inf):
            flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = value
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape),
                         unique=True))
    signed = tuple(a - len(shape) if draw(st.booleans()) else a for a in axes)
    return x, signed, draw(st.booleans())


@given(op=st.sampled_from(REDUCTIONS), case=reduction_cases())
@example(op="logsumexp", case=(np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.inf, np.inf],
                                         [np.nan, np.inf]], np.float32), (1,), False))
@example(op="amax", case=(np.array([[np.nan, 1.0], [2.0, -np.inf]], np.float32), (-1, 0), True))
def test_reductions_match_torch(op: str, case: tuple[np.ndarray, tuple[int, ...], bool]) -> None:
    x, axes, keepdim = case
    expected = torch_reduction(op, x, axes, keepdim)
    actual = reference(op, x, axis=list(axes), keepdim=keepdim)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    # float32 sums in another order: a sum of n values of size ~3 that nearly cancel differs
    # by about sqrt(n) ulps of 3 (seen: 1.1e-5 on 129 values summing to -0.115).
    reduced = math.prod(x.shape[axis] for axis in axes)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * math.sqrt(reduced),
                               equal_nan=True)


@given(case=reduction_cases(), ties=st.booleans())
@example(case=(np.array([[1.0, np.nan, 3.0, np.nan], [-np.inf, -np.inf, -np.inf, -np.inf]],
                        np.float32), (1,), False), ties=False)
def test_argmax_matches_torch(case: tuple[np.ndarray, tuple[int, ...], bool], ties: bool) -> None:
    x, axes, keepdim = case
    if ties:
        x = np.round(x)  # many equal maxima: the first position wins
    axis = axes[0]
    expected = torch.argmax(torch.from_numpy(x), dim=axis, keepdim=keepdim).numpy()
    actual = reference("argmax", x, axis=axis, keepdim=keepdim)
    assert actual.dtype == np.int64
    np.testing.assert_array_equal(actual, expected)
    attrs = make_attrs("argmax", {"axis": axis, "keepdim": keepdim}, [TensorType("f32", x.shape)])
    inferred = REGISTRY["argmax"].infer(attrs, [TensorType("f32", x.shape)])
    assert (inferred.dtype, inferred.shape) == ("i64", expected.shape)


def test_an_int_axis_is_one_axis_and_the_ir_keeps_them_sorted() -> None:
    x = TensorType("f32", ("N", 3, 4, 5))
    assert make_attrs("sum", {"axis": -1}, [x])["axis"] == (3,)
    assert make_attrs("mean", {"axis": [3, -3, 0]}, [x])["axis"] == (0, 1, 3)
    assert REGISTRY["amax"].infer(make_attrs("amax", {"axis": [1, 3]}, [x]), [x]).shape == \
        ("N", 4)
    kept = make_attrs("amin", {"axis": [1, 3], "keepdim": True}, [x])
    assert REGISTRY["amin"].infer(kept, [x]).shape == ("N", 1, 4, 1)


@pytest.mark.parametrize(("values", "message"), [
    ({"axis": []}, "at least one axis"),
    ({"axis": [1, -3]}, "each axis once"),
    ({"axis": 4}, "out of range"),
    ({"axis": [0, 1, 2, 3], "keepdim": False}, None),  # every axis: a scalar
])
def test_reduction_axes_are_checked(values: dict[str, Any], message: str | None) -> None:
    x = TensorType("f32", ("N", 3, 4, 5))
    builder = GraphBuilder()
    value = builder.input("x", x.dtype, x.shape)
    if message is None:
        assert builder.type_of(builder.op("logsumexp", value, **values)).shape == ()
        return
    with pytest.raises(ShapeError, match=message):
        builder.op("sum", value, **values)


# Shape ops and slicing against PyTorch -------------------------------------------------------


def _array(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


@given(shape=st.lists(st.sampled_from(SIZES), min_size=1, max_size=3), data=st.data())
def test_slice_matches_torch_indexing(shape: list[int], data: st.DataObject) -> None:
    x = _array(*shape)
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              max_size=len(shape), unique_by=lambda a: a % len(shape)))
    bounds = st.integers(-140, 140)
    starts = [data.draw(bounds) for _ in axes]
    ends = [data.draw(bounds) for _ in axes]
    steps = [data.draw(st.integers(1, 4)) for _ in axes]
    index: list[slice] = [slice(None)] * len(shape)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = slice(start, end, step)
    expected = torch.from_numpy(x)[tuple(index)].numpy()
    values = {"axes": axes, "starts": starts, "ends": ends, "steps": steps}
    if expected.size == 0:
        with pytest.raises(ShapeError, match="is empty"):
            make_attrs("slice", values, [TensorType("f32", x.shape)])
        return
    attrs = make_attrs("slice", values, [TensorType("f32", x.shape)])
    assert REGISTRY["slice"].infer(attrs, [TensorType("f32", x.shape)]).shape == expected.shape
    np.testing.assert_array_equal(REGISTRY["slice"].reference(attrs, x), expected)
    # The canonical record is a fixed point: applied again, the same slice.
    assert make_attrs("slice", dict(attrs.items()), [TensorType("f32", x.shape)]) == attrs


def test_shape_ops_match_torch() -> None:
    x = _array(2, 1, 33, 3)
    t = torch.from_numpy(x)
    cases: list[tuple[str, np.ndarray, dict[str, Any], torch.Tensor]] = [
        ("select", x, {"axis": 2, "index": -1}, t[:, :, -1]),
        ("select", x, {"axis": 0, "index": 1}, t[1]),
        ("squeeze", x, {"axis": 1}, t.squeeze(1)),
        ("squeeze", x, {"axis": -1}, t.squeeze(-1)),  # size 3: unchanged, as PyTorch
        ("unsqueeze", x, {"axis": -1}, t.unsqueeze(-1)),
        ("unsqueeze", x, {"axis": 0}, t.unsqueeze(0)),
        ("expand", x, {"dims": [4, -1, 5, -1, 3]}, t.expand(4, -1, 5, -1, 3)),
        ("transpose", x, {"perm": [2, 0, 3, 1]}, t.permute(2, 0, 3, 1)),
    ]
    for op, array, values, expected in cases:
        np.testing.assert_array_equal(reference(op, array, **values), expected.numpy(),
                                      err_msg=f"{op} {values}")
        attrs = make_attrs(op, values, [TensorType("f32", array.shape)])
        assert REGISTRY[op].infer(attrs, [TensorType("f32", array.shape)]).shape == \
            tuple(expected.shape), (op, values)
    stacked = torch.stack([t, t * 2, t * 3], dim=-2).numpy()
    attrs = make_attrs("stack", {"axis": -2}, [TensorType("f32", x.shape)] * 3)
    np.testing.assert_array_equal(REGISTRY["stack"].reference(attrs, x, x * 2, x * 3), stacked)


@pytest.mark.parametrize(("op", "shape", "values", "message"), [
    ("slice", (4, 5), {"axes": [1], "starts": [3], "ends": [1]}, "is empty"),
    ("slice", (4, 5), {"axes": [1, 1], "starts": [0, 0], "ends": [2, 2]}, "each axis once"),
    ("slice", (4, 5), {"axes": [1], "starts": [0, 1], "ends": [2]}, "one start, end"),
    ("slice", ("N", 5), {"axes": [0], "starts": [0], "ends": [2]}, "named dimension N"),
    ("select", (4, 5), {"axis": 1, "index": 5}, "out of range"),
    ("select", (4, 5), {"axis": 2, "index": 0}, "out of range"),
    ("squeeze", ("N", 5), {"axis": 0}, "not known to be 1"),
    ("unsqueeze", (4, 5), {"axis": 3}, "out of range"),
    ("expand", (4, 5), {"dims": [4, 6]}, "can only be kept"),
    ("expand", (4, 5), {"dims": [5]}, "at least as many sizes"),
    ("expand", (4, 5), {"dims": [-1, 4, 5]}, "new leading dimension"),
    ("stack", (4, 5), {"axis": 3}, "out of range"),
])
def test_shape_errors_show_the_shapes(op: str, shape: tuple[Any, ...], values: dict[str, Any],
                                      message: str) -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", shape)
    with pytest.raises(ShapeError, match=message):
        builder.op(op, x, **values)


def test_a_step_below_one_is_an_attribute_error() -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", (4, 5))
    with pytest.raises(AttrError, match="`steps` of `slice` must be at least 1"):
        builder.op("slice", x, axes=[1], starts=[0], ends=[2], steps=[0])


def test_transpose_moves_a_named_first_dimension() -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", ("N", 5, 3))
    assert builder.type_of(builder.op("transpose", x, perm=[2, 0, 1])).shape == (3, "N", 5)


def test_stack_needs_one_shape() -> None:
    builder = GraphBuilder()
    a, b = builder.input("a", "f32", (2, 3)), builder.input("b", "f32", (3, 2))
    with pytest.raises(ShapeError, match=r"one shape, got \[2, 3\], \[3, 2\]"):
        builder.op("stack", a, b)


# ONNX export against onnxruntime ---------------------------------------------------------------


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


@given(op=st.sampled_from(REDUCTIONS), case=reduction_cases())
def test_reduction_export_matches_onnxruntime(
        op: str, case: tuple[np.ndarray, tuple[int, ...], bool]) -> None:
    x, axes, keepdim = case
    # onnxruntime's ReduceMax/ReduceMin skip NaN (PyTorch, and netc, return NaN): finite
    # inputs and infinities only.
    x = np.where(np.isnan(x), np.float32(0.5), x)
    values = {"axis": list(axes), "keepdim": keepdim}
    (actual,) = run_onnx(export_op(op, values, [TensorType("f32", x.shape)]), {"input_0": x})
    np.testing.assert_allclose(actual, reference(op, x, **values), rtol=1e-5, atol=1e-5)


EXPORTED = [
    ("slice", (3, 31, 5), {"axes": [1, -1], "starts": [-7, 1], "ends": [100, 4],
                           "steps": [3, 1]}),
    ("select", (3, 31, 5), {"axis": 1, "index": -2}),
    ("squeeze", (3, 1, 5), {"axis": 1}),
    ("squeeze", (3, 4, 5), {"axis": 1}),
    ("unsqueeze", (3, 4), {"axis": -1}),
    ("expand", (3, 1, 5), {"dims": [2, -1, 33, -1]}),
    ("transpose", (3, 4, 5), {"perm": [2, 0, 1]}),
]


@given(case=reduction_cases())
def test_argmax_export_matches_onnxruntime(case: tuple[np.ndarray, tuple[int, ...], bool]) -> None:
    x, axes, keepdim = case
    x = np.where(np.isfinite(x), x, np.float32(0.5))  # ArgMax's NaN rule is not ONNX's to say
    values = {"axis": axes[0], "keepdim": keepdim}
    (actual,) = run_onnx(export_op("argmax", values, [TensorType("f32", x.shape)]),
                         {"input_0": x})
    np.testing.assert_array_equal(actual, reference("argmax", x, **values))


@pytest.mark.parametrize(("op", "shape", "values"), EXPORTED)
def test_shape_op_export_matches_onnxruntime(op: str, shape: tuple[int, ...],
                                             values: dict[str, Any]) -> None:
    x = _array(*shape)
    (actual,) = run_onnx(export_op(op, values, [TensorType("f32", shape)]), {"input_0": x})
    np.testing.assert_array_equal(actual, reference(op, x, **values))


def test_stack_exports_as_unsqueeze_and_concat_and_imports_as_stack() -> None:
    builder = GraphBuilder("stacking")
    a, b = builder.input("a", "f32", ("N", 4)), builder.input("b", "f32", ("N", 4))
    builder.output("y", builder.op("stack", a, b, axis=-1))
    graph = builder.build()
    model = export_graph(graph)
    assert [n.op_type for n in model.graph.node] == ["Unsqueeze", "Unsqueeze", "Concat"]
    feeds = {"a": _array(3, 4), "b": _array(3, 5)[:, :4].copy()}
    (actual,) = run_onnx(model, feeds)
    np.testing.assert_array_equal(actual, run_reference(graph, {}, feeds)["y"])
    imported = import_onnx(model)
    assert [n.op for n in imported.graph.nodes if n.op != "input"] == ["stack"]
    assert "stack(a, b, axis=2)" in imported.text


# ONNX import ---------------------------------------------------------------------------------


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[Any]], outputs: list[str],
           initializers: Sequence[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ints(name: str, values: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def check_import(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> str:
    """Import `model`, compile its text with the front end, run it on the reference and
    compare with onnxruntime; returns the text."""
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    feeds = {name: _array(*shape) for name, shape in shapes.items()}
    expected = run_onnx(model, feeds)
    ours = run_reference(graph, imported.weights,
                         {imported.inputs[name]: value for name, value in feeds.items()})
    for info, value in zip(model.graph.output, expected):
        np.testing.assert_allclose(ours[imported.outputs[info.name]], value, rtol=1e-5,
                                   atol=1e-6, err_msg=f"{info.name}\n{imported.text}")
    return imported.text


def test_reduce_mean_over_height_and_width_imports_as_mean() -> None:
    model = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)],
                   {"x": ["N", 8, 7, 9]}, ["y"])
    assert "mean(x, [2, 3], keepdim=true)" in check_import(model, {"x": (2, 8, 7, 9)})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_reductions_import_both_forms_of_axes(opset: int) -> None:
    nodes, initializers = [], []
    for op_type in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        as_input = opset >= 18 or (op_type == "ReduceSum" and opset >= 13)
        axes = [-1, 1]
        if as_input:
            initializers.append(_ints(f"{op_type}_axes", axes))
            nodes.append(helper.make_node(op_type, ["x", f"{op_type}_axes"], [op_type],
                                          keepdims=0))
        else:
            nodes.append(helper.make_node(op_type, ["x"], [op_type], axes=axes, keepdims=0))
    nodes.append(helper.make_node("ReduceSum", ["x"], ["everything"]))  # no axes: all of them
    model = _model(nodes, {"x": ["N", 5, 33]},
                   ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp",
                    "everything"], initializers, opset)
    check_import(model, {"x": (3, 5, 33)})


def test_argmax_imports_with_onnx_default_keepdims() -> None:
    model = _model([helper.make_node("ArgMax", ["x"], ["kept"], axis=-1),
                    helper.make_node("ArgMax", ["x"], ["dropped"], axis=1, keepdims=0)],
                   {"x": ["N", 5, 33]}, [])
    model.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.INT64, None)
                               for name in ("kept", "dropped")])
    imported = import_onnx(model)
    assert "argmax(x, 2, keepdim=true)" in imported.text and "argmax(x, 1)" in imported.text
    feeds = {"x": _array(3, 5, 33)}
    ours = run_reference(load_string(imported.text, filename="a.net"), {}, feeds)
    for info, value in zip(model.graph.output, run_onnx(model, feeds)):
        np.testing.assert_array_equal(ours[imported.outputs[info.name]], value)
    last = _model([helper.make_node("ArgMax", ["x"], ["y"], select_last_index=1)],
                  {"x": ["N", 5]}, ["y"])
    with pytest.raises(CompileError, match="select_last_index"):
        import_onnx(last)


def test_split_imports_as_slices() -> None:
    model = _model([helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1)],
                   {"x": ["N", 10, 3]}, ["a", "b", "c"], [_ints("sizes", [2, 3, 5])])
    text = check_import(model, {"x": (2, 10, 3)})
    assert text.count("slice(") == 3


def test_split_into_equal_parts_imports() -> None:
    model = _model([helper.make_node("Split", ["x"], ["a", "b"], axis=-1)],
                   {"x": ["N", 3, 8]}, ["a", "b"], opset=11)
    check_import(model, {"x": (2, 3, 8)})


def test_slice_with_negative_starts_imports() -> None:
    model = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
                   {"x": ["N", 12, 9]}, ["y"],
                   [_ints("starts", [0, -5, -1]), _ints("ends", [2**63 - 1, -1, -10]),
                    _ints("axes", [0, 1, 2]), _ints("steps", [1, 2, 1])])
    with pytest.raises(CompileError, match=r"steps=\[1, 2, 1\]|is empty"):
        import_onnx(model)  # the last axis -1:-10 is empty
    fixed = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                   {"x": ["N", 12, 9]}, ["y"],
                   [_ints("starts", [0, -5, -4]), _ints("ends", [2**63 - 1, -1, 100]),
                    _ints("axes", [0, 1, -1])])
    text = check_import(fixed, {"x": (3, 12, 9)})
    assert "slice(x, [1, 2], starts=[7, 5], ends=[11, 9], steps=[1, 1])" in text


def test_gather_squeeze_unsqueeze_expand_import() -> None:
    model = _model([
        helper.make_node("Gather", ["x", "index"], ["picked"], axis=2),
        helper.make_node("Unsqueeze", ["picked", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Expand", ["u", "shape"], ["e"]),
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
    ], {"x": [4, 6, 5]}, ["picked", "s", "e", "t"],
        [numpy_helper.from_array(np.array(-2, np.int64), "index"), _ints("axes", [-1]),
         _ints("shape", [3, 1, 1, 7])])
    text = check_import(model, {"x": (4, 6, 5)})
    assert "select(x, 2, index=3)" in text and "transpose(x, [1, 0, 2])" in text


def test_a_gather_of_several_positions_imports() -> None:
    model = _model([helper.make_node("Gather", ["x", "index"], ["y"], axis=1)],
                   {"x": ["N", 6]}, ["y"], [_ints("index", [0, 2, -1])])
    check_import(model, {"x": (3, 6)})


# A `.net` program ------------------------------------------------------------------------------

PROGRAM = """
network pooled {
    input x: f32[N, 4, 9, 33]
    h = relu(x)
    output pooled = mean(h, [2, 3], keepdim=true)
    output peaks = amax(h, -1)
    output lse = logsumexp(x, [1, 3])
    output first = slice(x, axes=[2, 3], starts=[1, -8], ends=[5, 33], steps=[1, 3])
    output last = select(x, 3, -1)
    output both = stack(sum(x, 1), amin(x, 1), axis=1)
    output grown = expand(unsqueeze(select(x, 1, 0), 1), [-1, 6, -1, -1])
    output flat = squeeze(mean(x, [1], keepdim=true), 1)
    output best = argmax(x, -1)
}
"""


def test_a_net_program_using_them_runs_as_torch() -> None:
    graph = load_string(PROGRAM, filename="pooled.net")
    x = _array(2, 4, 9, 33)
    t = torch.from_numpy(x)
    actual = run_reference(graph, {}, {"x": x})
    expected = {
        "pooled": t.relu().mean(dim=(2, 3), keepdim=True),
        "peaks": t.relu().amax(-1),
        "lse": t.logsumexp(dim=(1, 3)),
        "first": t[:, :, 1:5, -8::3],
        "last": t[:, :, :, -1],
        "both": torch.stack([t.sum(1), t.amin(1)], dim=1),
        "grown": t[:, 0].unsqueeze(1).expand(-1, 6, -1, -1),
        "flat": t.mean(1, keepdim=True).squeeze(1),
        "best": t.argmax(-1),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value.numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize(("call", "code", "message"), [
    ("sum(x, [])", "E0304", "at least one axis"),
    ("sum(x, 1.5)", "E0205", "an int or a list of ints"),
    ("amax(x, [1, 5])", "E0304", "axis 5 is out of range for [N, 4, 9]"),
    ("mean(x, 1, keepdim=1)", "E0205", "true or false"),
    ("slice(x, axes=[1], starts=[0], ends=[2], steps=[0])", "E0212", "at least 1"),
    ("slice(x, axes=[2], starts=[5], ends=[-5])", "E0304", "is empty"),
    ("select(x, 1, 9)", "E0304", "index 9 is out of range for axis 1 of [N, 4, 9] (size 4)"),
    ("expand(x, [-1, 3, 9])", "E0304", "cannot expand [N, 4, 9] to [-1, 3, 9]"),
    ("squeeze(x, 0)", "E0304", "named dimension N is not known to be 1"),
])
def test_misuse_in_a_net_file_is_a_diagnostic(call: str, code: str, message: str) -> None:
    source = f"network n {{\n    input x: f32[N, 4, 9]\n    output y = {call}\n}}\n"
    with pytest.raises(CompileError) as caught:
        load_string(source, filename="misuse.net")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == code and message in diagnostic.message, diagnostic.message


@pytest.mark.parametrize("dtype", ["i64", "bool"])
def test_shape_ops_on_integers_export_as_onnxruntime_computes(dtype: str) -> None:
    builder = GraphBuilder("integers")
    x = builder.input("x", dtype, ("N", 4, 5))
    builder.output("sliced", builder.op("slice", x, axes=[1], starts=[-3], ends=[4], steps=[2]))
    builder.output("selected", builder.op("select", x, axis=2, index=1))
    builder.output("expanded", builder.op("expand", builder.op("unsqueeze", x, axis=1),
                                          dims=[-1, 3, -1, -1]))
    builder.output("stacked", builder.op("stack", x, x, axis=-1))
    graph = builder.build()
    rng = np.random.default_rng(1)
    values = rng.integers(-2**62, 2**62, (2, 4, 5)) if dtype == "i64" else rng.random((2, 4, 5)) > 0.5
    expected = run_reference(graph, {}, {"x": values})
    actual = run_onnx(export_graph(graph), {"x": values})
    for (name, _), value in zip(graph.outputs, actual):
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
        np.testing.assert_array_equal(expected[name], {
            "sliced": values[:, -3:4:2], "selected": values[:, :, 1],
            "expanded": np.broadcast_to(values[:, None], (2, 3, 4, 5)),
            "stacked": np.stack([values, values], axis=-1)}[name])
