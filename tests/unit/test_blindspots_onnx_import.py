"""The ONNX importer's Conv, pooling and Gemm handlers off the diagonal.

Issue 13's mutation run found the importer tested only with square kernels, symmetric pads and
alpha, beta >= 1: mutants that compared (top, left) with (bottom, left), dropped the
kernel-shape check, swapped the pool's (top, left) padding, skipped the ceil_mode check or the
alpha multiplication for alpha < 1 all survived. Here every attribute is drawn per axis, and
onnxruntime is the oracle both for values and for *whether* a model has a `.net` form: a
model is imported exactly when `.net`'s symmetric-or-"same" windows (pools: floor or ceil mode,
padding counted or not) compute what onnxruntime does, and then the results agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.onnx.importer import import_onnx
from netc.reference import run_reference

pytestmark = pytest.mark.unit

BATCH = 2


def _model(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Sequence[int | str]],
           initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "case",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
         for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    return model


def _tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    initialized = {t.name for t in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name not in initialized:
            shape = [d.dim_value if d.HasField("dim_value") else BATCH
                     for d in info.type.tensor_type.shape.dim]
            # Negative values, so that a padded zero would win a max.
            feeds[info.name] = rng.uniform(-2.0, -0.25, shape).astype(np.float32)
    return feeds


def _imported(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Import, reload the `.net` text with the front end and run the reference backend."""
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    outputs = run_reference(graph, imported.weights,
                            {imported.inputs[name]: value for name, value in feeds.items()})
    return outputs[imported.outputs["y"]]


def _assert_matches(model: onnx.ModelProto, seed: int = 0, atol: float = 1e-5) -> None:
    """Import `model` and compare its output with onnxruntime's."""
    feeds = _feeds(model, np.random.default_rng(seed))
    expected = _onnxruntime(model, feeds)
    actual = _imported(model, feeds)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    bad = ~np.isclose(actual, expected, rtol=1e-4, atol=atol)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements differ; largest difference "
                           f"{np.abs(actual - expected).max():.3g}")


def _problems(model: onnx.ModelProto) -> str:
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    return "\n".join(f"{d.code} {d.message}" for d in caught.value.diagnostics)


# Conv -------------------------------------------------------------------------------------------

def _conv_model(height: int, width: int, kernel: tuple[int, int], **attributes: Any
                ) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    weight = rng.uniform(-1, 1, (3, 2, *kernel))
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], **attributes)],
                  {"x": ["N", 2, height, width]}, [_tensor("w", weight)])


def _pytorch_same(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, ...]:
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2,
            totals[1] - totals[1] // 2)


@st.composite
def conv_attributes(draw: st.DrawFn) -> dict[str, Any]:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = draw(st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 3)]))
    shape = draw(st.sampled_from(["symmetric", "same", "one side", "any"]))
    if shape == "symmetric":
        top, left = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        pads = (top, left, top, left)
    elif shape == "same":
        pads = _pytorch_same(kernel, dilation)
    elif shape == "one side":  # one pad of four changed
        pads = list(_pytorch_same(kernel, dilation))
        pads[draw(st.integers(0, 3))] += draw(st.sampled_from([-1, 1]))
        pads = tuple(max(p, 0) for p in pads)
    else:
        pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    sizes = []
    for axis in range(2):
        effective = dilation[axis] * (kernel[axis] - 1) + 1
        smallest = max(1, effective - pads[axis] - pads[axis + 2])
        sizes.append(draw(st.integers(smallest, smallest + 6)))
    return dict(height=sizes[0], width=sizes[1], kernel=kernel, strides=list(stride),
                dilations=list(dilation), pads=list(pads))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(conv_attributes())
@example(dict(height=5, width=6, kernel=(3, 3), strides=[2, 2], dilations=[1, 1],
              pads=[0, 1, 0, 2]))  # only the width's pads differ
@example(dict(height=5, width=6, kernel=(2, 3), strides=[1, 1], dilations=[1, 1],
              pads=[0, 1, 1, 1]))  # PyTorch's "same" for an even kernel height
@example(dict(height=5, width=6, kernel=(3, 2), strides=[1, 1], dilations=[1, 1],
              pads=[1, 0, 1, 1]))  # ... and for an even kernel width
@example(dict(height=5, width=6, kernel=(3, 2), strides=[1, 1], dilations=[1, 1],
              pads=[1, 1, 1, 0]))  # SAME_LOWER-style: not PyTorch's "same"
def test_conv_is_imported_exactly_when_net_can_say_it(case: dict[str, Any]) -> None:
    attributes = {k: case[k] for k in ("strides", "dilations", "pads")}
    model = _conv_model(case["height"], case["width"], case["kernel"],
                        kernel_shape=list(case["kernel"]), **attributes)
    top, left, bottom, right = case["pads"]
    symmetric = (top, left) == (bottom, right)
    same = case["strides"] == [1, 1] and tuple(case["pads"]) == _pytorch_same(
        case["kernel"], tuple(case["dilations"]))
    if symmetric or same:
        _assert_matches(model)
    else:
        assert "asymmetric padding" in _problems(model)


@pytest.mark.parametrize(("kernel_shape", "weight_kernel"), [
    ([3, 2], (2, 3)),  # the weight's kernel transposed
    ([3, 3], (3, 2)),
    ([2, 2], (3, 2)),
])
def test_conv_kernel_shape_must_match_the_weight(kernel_shape: list[int],
                                                 weight_kernel: tuple[int, int]) -> None:
    model = _conv_model(7, 8, weight_kernel, kernel_shape=kernel_shape)
    assert "does not match W's shape" in _problems(model)


def test_conv_kernel_shape_that_matches_an_oblong_weight_imports() -> None:
    _assert_matches(_conv_model(7, 8, (2, 3), kernel_shape=[2, 3], pads=[1, 0, 1, 0]))


@pytest.mark.parametrize(("auto_pad", "kernel"), [("SAME_UPPER", (2, 3)), ("SAME_UPPER", (3, 2)),
                                                  ("SAME_UPPER", (2, 2))])
def test_conv_auto_pad_same_upper_with_even_kernels_is_pytorch_same(
        auto_pad: str, kernel: tuple[int, int]) -> None:
    model = _conv_model(5, 7, kernel, auto_pad=auto_pad)
    _assert_matches(model)
    assert 'padding="same"' in import_onnx(model).text


def test_conv_auto_pad_same_lower_with_an_even_kernel_width_is_refused() -> None:
    assert "asymmetric padding" in _problems(_conv_model(5, 7, (3, 2), auto_pad="SAME_LOWER"))


# Pools ------------------------------------------------------------------------------------------

def _pool_model(op_type: str, height: int, width: int, **attributes: Any) -> onnx.ModelProto:
    return _model([helper.make_node(op_type, ["x"], ["y"], **attributes)],
                  {"x": ["N", 2, height, width]})


@st.composite
def pool_attributes(draw: st.DrawFn) -> dict[str, Any]:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        pads = [draw(st.integers(0, k // 2)) for k in kernel]
        pads = [*pads, *pads]
    else:  # anything onnxruntime runs (a pad below the kernel), asymmetric and too large
        pads = [draw(st.integers(0, kernel[axis % 2] - 1)) for axis in range(4)]
    sizes = []
    for axis in range(2):
        smallest = max(1, kernel[axis] - pads[axis] - pads[axis + 2])
        if draw(st.booleans()):  # windows tile the padded input exactly
            sizes.append(max(smallest, kernel[axis] + draw(st.integers(0, 3)) * stride[axis]
                             - pads[axis] - pads[axis + 2]))
        else:
            sizes.append(draw(st.integers(smallest, smallest + 7)))
    return dict(op_type=draw(st.sampled_from(["MaxPool", "AveragePool"])),
                height=sizes[0], width=sizes[1], kernel_shape=list(kernel),
                strides=list(stride), pads=pads, ceil_mode=draw(st.sampled_from([0, 1])),
                count_include_pad=draw(st.sampled_from([0, 1])))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(pool_attributes())
@example(dict(op_type="MaxPool", height=4, width=6, kernel_shape=[2, 2], strides=[2, 2],
              pads=[1, 0, 1, 0], ceil_mode=0, count_include_pad=0))  # pads on the height only
@example(dict(op_type="AveragePool", height=6, width=4, kernel_shape=[3, 3], strides=[1, 1],
              pads=[0, 1, 0, 1], ceil_mode=0, count_include_pad=1))  # width pads counted
@example(dict(op_type="MaxPool", height=6, width=6, kernel_shape=[3, 4], strides=[1, 1],
              pads=[0, 3, 0, 3], ceil_mode=0, count_include_pad=0))  # width pad > half
@example(dict(op_type="MaxPool", height=7, width=8, kernel_shape=[2, 2], strides=[2, 2],
              pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=0))  # ceil grows the height
@example(dict(op_type="MaxPool", height=8, width=7, kernel_shape=[2, 2], strides=[2, 2],
              pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=0))  # ... the width
@example(dict(op_type="AveragePool", height=8, width=8, kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0))  # ceil changes nothing
@example(dict(op_type="MaxPool", height=5, width=7, kernel_shape=[3, 3], strides=[3, 3],
              pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0))  # the extra window would
# start exactly at the first right/bottom pad (5 + 1 on the height): dropped, so the floor rule
# holds there, while the width (7 + 1 = 8 > 6) gets no extra window either
@example(dict(op_type="MaxPool", height=6, width=7, kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0))  # the extra window starts
# at 6, inside the padded height's real rows (6 < 6 + 1 but not < 6 - 1): a larger output
@example(dict(op_type="MaxPool", height=3, width=1, kernel_shape=[2, 1], strides=[2, 1],
              pads=[0, 0, 1, 0], ceil_mode=0, count_include_pad=0))  # netc's ceil-mode export
@example(dict(op_type="AveragePool", height=5, width=5, kernel_shape=[2, 2], strides=[2, 2],
              pads=[0, 0, 1, 1], ceil_mode=0, count_include_pad=1))  # counted: not ceil mode
def test_pool_is_imported_exactly_when_net_can_say_it(case: dict[str, Any]) -> None:
    attributes = {k: case[k] for k in ("kernel_shape", "strides", "pads", "ceil_mode")}
    if case["op_type"] == "AveragePool":
        attributes["count_include_pad"] = case["count_include_pad"]
    model = _pool_model(case["op_type"], case["height"], case["width"], **attributes)
    kernel, stride, pads = case["kernel_shape"], case["strides"], case["pads"]
    top, left, bottom, right = pads
    feeds = _feeds(model, np.random.default_rng(0))
    expected = _onnxruntime(model, feeds)
    # Version 2 pools take ceil_mode and count_include_pad as onnxruntime reads them; extra
    # bottom/right padding that never counts is a ceil-mode pool where PyTorch's ceil mode
    # gives the same output size (netc exports such pools that way).
    half_kernel = top <= kernel[0] // 2 and left <= kernel[1] // 2
    never_counts = case["op_type"] == "MaxPool" or not case["count_include_pad"]
    fits = case["height"] + 2 * top >= kernel[0] and case["width"] + 2 * left >= kernel[1]
    as_ceil = (not case["ceil_mode"] and never_counts and half_kernel and bottom >= top
               and right >= left and fits and tuple(torch.nn.functional.max_pool2d(
                   torch.zeros(1, 1, case["height"], case["width"]), kernel, stride,
                   (top, left), ceil_mode=True).shape[2:]) == expected.shape[2:])
    representable = half_kernel and ((top, left) == (bottom, right) or as_ceil)
    if not representable:
        _problems(model)
        return
    actual = _imported(model, feeds)
    assert actual.shape == expected.shape
    bad = ~np.isclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements differ; largest difference "
                           f"{np.abs(actual - expected).max():.3g}")


@pytest.mark.parametrize(("pads", "message"), [
    ([0, 1, 0, 2], "asymmetric padding"),  # only the width's pads differ
    ([1, 0, 2, 0], "asymmetric padding"),
    ([0, 2, 0, 2], "more than half the kernel"),  # width pad 2 > 3 // 2
    ([2, 0, 2, 0], "more than half the kernel"),
])
def test_pool_padding_problems_on_one_axis(pads: list[int], message: str) -> None:
    model = _pool_model("MaxPool", 7, 8, kernel_shape=[3, 3], pads=pads)
    assert message in _problems(model)


@pytest.mark.parametrize(("kernel_shape", "pads", "allowed"), [
    ([3, 6], [2, 0, 2, 0], False),  # 2 > 3 // 2 on the height, though not > 6 // 2
    ([6, 3], [0, 2, 0, 2], False),  # the same on the width
    ([6, 3], [2, 1, 2, 1], True),  # 2 <= 6 // 2 and 1 <= 3 // 2
    ([3, 6], [1, 3, 1, 3], True),
])
def test_pool_padding_limit_reads_each_axis_kernel(kernel_shape: list[int], pads: list[int],
                                                   allowed: bool) -> None:
    model = _pool_model("MaxPool", 9, 10, kernel_shape=kernel_shape, pads=pads)
    if allowed:
        _assert_matches(model)
    else:
        assert "more than half the kernel" in _problems(model)


def test_ceil_mode_is_not_blamed_for_a_window_that_does_not_fit() -> None:
    # Kernel 4 over 3 rows: the window does not fit (span -1); that is the only problem.
    model = _pool_model("MaxPool", 3, 8, kernel_shape=[4, 2], strides=[2, 2], ceil_mode=1)
    problems = _problems(model)
    assert "does not fit" in problems and "ceil_mode" not in problems


def test_average_pool_counting_width_padding_matches() -> None:
    model = _pool_model("AveragePool", 7, 8, kernel_shape=[3, 3], pads=[0, 1, 0, 1],
                        count_include_pad=1)
    _assert_matches(model)


def test_pool_padding_on_the_height_only_keeps_its_axis() -> None:
    model = _pool_model("MaxPool", 6, 5, kernel_shape=[3, 2], strides=[1, 1], pads=[1, 0, 1, 0])
    _assert_matches(model)


@pytest.mark.parametrize(("height", "width"), [(7, 8), (8, 7)])
def test_pool_ceil_mode_growing_one_axis_matches(height: int, width: int) -> None:
    model = _pool_model("MaxPool", height, width, kernel_shape=[2, 2], strides=[2, 2],
                        ceil_mode=1)
    _assert_matches(model)


@pytest.mark.parametrize("kernel_shape", [[3], [2, 2, 2]])
def test_pool_kernel_shape_must_be_two_dimensional(kernel_shape: list[int]) -> None:
    model = _pool_model("MaxPool", 6, 6, kernel_shape=kernel_shape)
    assert "is not 2-D" in _problems(model)


# Gemm -------------------------------------------------------------------------------------------

def _assert_scalings(model: onnx.ModelProto, alpha: float, beta: float) -> None:
    """A scaling by alpha or beta appears in the network exactly when it is not 1."""
    ops = [node.op for node in import_onnx(model).graph.nodes]
    assert ops.count("mul") == (alpha != 1.0) + (beta != 1.0), ops

@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 2.0), (0.25, -1.5), (1.0, 0.5), (0.5, 1.0)])
def test_gemm_with_computed_b_and_constant_c(alpha: float, beta: float) -> None:
    # A constant C with a computed B has a `.net` form only as a scalar (a number).
    model = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=alpha, beta=beta)],
                   {"a": ["N", 3], "b": [3, 4]}, [_tensor("c", np.float32(0.75))])
    _assert_matches(model)
    _assert_scalings(model, alpha, 1.0)  # beta scales the constant C itself


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 2.0), (0.25, -1.5), (0.5, 1.0), (1.0, 0.5)])
def test_gemm_with_computed_b_and_computed_c(alpha: float, beta: float) -> None:
    model = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=alpha, beta=beta)],
                   {"a": ["N", 3], "b": [3, 4], "c": [4]})
    _assert_matches(model)
    _assert_scalings(model, alpha, beta)


@pytest.mark.parametrize("shape", [[1, 1, 4], [2, 4], [3]])
def test_gemm_constant_c_must_be_a_row_bias(shape: list[int]) -> None:
    # [1, 1, 4] broadcasts into [1, 4] but has three dimensions; [2, 4] has two rows.
    model = _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)],
                   {"a": ["N", 3]}, [_tensor("w", np.ones((4, 3))), _tensor("c", np.ones(shape))])
    assert "only a bias that is the same for every row" in _problems(model)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 2.0), (0.25, 0.5)])
def test_gemm_with_constant_b_and_computed_c(alpha: float, beta: float) -> None:
    model = _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], alpha=alpha, beta=beta,
                                     transB=1)],
                   {"a": ["N", 3], "c": ["N", 4]},
                   [_tensor("w", np.random.default_rng(2).uniform(-1, 1, (4, 3)))])
    _assert_matches(model)
    _assert_scalings(model, 1.0, beta)  # alpha is folded into the weight
