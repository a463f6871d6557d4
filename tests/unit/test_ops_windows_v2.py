"""Version 2's window and resampling ops against PyTorch (the oracle for their meaning) and
onnxruntime (the oracle for their ONNX form): pools with ceil_mode and count_include_pad,
adaptive_avgpool2d, pad, interpolate; ONNX import round trips and the diagnostics of misuse."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Attrs, TensorType
from netc.onnx.export import ExportError, export_op
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, ShapeError
from netc.ops.builder import make_attrs
from netc.reference import run_reference

pytestmark = pytest.mark.unit

RAGGED = st.sampled_from((1, 2, 5, 31, 33))
Case = tuple[str, dict[str, Any], tuple[int, ...]]


def reference(op: str, x: np.ndarray, **attrs: Any) -> np.ndarray:
    canonical = make_attrs(op, attrs, [TensorType("f32", x.shape)])
    return np.asarray(REGISTRY[op].reference(canonical, x))


def random_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3, 3, shape).astype(np.float32)


def assert_matches(actual: np.ndarray, expected: np.ndarray, atol: float = 1e-6) -> None:
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=atol, equal_nan=True)


def torch_of(op: str, x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """The PyTorch functional op that `op` with `attrs` means."""
    t = torch.from_numpy(x)
    if op in ("maxpool2d", "avgpool2d"):
        stride = attrs.get("stride") or attrs["kernel"]
        common = dict(kernel_size=attrs["kernel"], stride=stride,
                      padding=attrs.get("padding", 0), ceil_mode=attrs.get("ceil_mode", False))
        if op == "maxpool2d":
            return F.max_pool2d(t, **common).numpy()
        return F.avg_pool2d(t, count_include_pad=attrs.get("count_include_pad", True),
                            **common).numpy()
    if op == "adaptive_avgpool2d":
        return F.adaptive_avg_pool2d(t, attrs["output_size"]).numpy()
    if op == "pad":
        mode = attrs.get("mode", "constant")
        value = attrs.get("value", 0.0) if mode == "constant" else None
        return F.pad(t, list(attrs["pads"]), mode=mode, value=value).numpy()
    assert op == "interpolate"
    mode = attrs.get("mode", "nearest")
    size = attrs.get("size")
    return F.interpolate(t, size=tuple(size) if size is not None else None,
                         scale_factor=attrs.get("scale_factor"), mode=mode,
                         align_corners=attrs.get("align_corners", False)
                         if mode == "bilinear" else None).numpy()


# Strategies -----------------------------------------------------------------------------


@st.composite
def pool_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from(("maxpool2d", "avgpool2d")))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = max(1, kernel[0] - 2 * padding[0] + draw(st.integers(0, 12)))
    width = max(1, kernel[1] - 2 * padding[1] + draw(st.integers(0, 12)))
    attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding,
                             "ceil_mode": draw(st.booleans())}
    if op == "avgpool2d":
        attrs["count_include_pad"] = draw(st.booleans())
    return op, attrs, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), height, width)


@st.composite
def adaptive_cases(draw: st.DrawFn) -> Case:
    output_size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return ("adaptive_avgpool2d", {"output_size": output_size},
            (1, draw(st.integers(1, 3)), draw(RAGGED), draw(RAGGED)))


@st.composite
def pad_cases(draw: st.DrawFn) -> Case:
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(rank))
    mode = draw(st.sampled_from(("constant", "reflect", "replicate")))
    # PyTorch pads reflect/replicate over the last k dims of an input of rank k + 1 or
    # k + 2 (k at most 3); netc's pad takes any k, as constant mode does.
    fewest, most = (1, rank) if mode == "constant" else (max(1, rank - 2), min(3, rank - 1))
    if most < fewest:
        mode, fewest, most = "constant", 1, rank
    values: list[int] = []
    for axis in range(rank - 1, rank - 1 - draw(st.integers(fewest, most)), -1):
        size = shape[axis]
        if mode == "reflect":
            values += [draw(st.integers(0, size - 1)) for _ in range(2)]
        elif mode == "constant":
            before = draw(st.integers(-(size - 1), 3))
            values += [before, draw(st.integers(-(size - 1 + min(before, 0)), 3))]
        else:
            values += [draw(st.integers(0, 3)) for _ in range(2)]
    return "pad", {"pads": tuple(values), "mode": mode,
                   "value": draw(st.sampled_from((0.0, 2.5, -1.0)))}, shape


@st.composite
def interpolate_cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(("nearest", "bilinear")))
    height, width = draw(RAGGED), draw(RAGGED)
    attrs: dict[str, Any] = {"mode": mode}
    if mode == "bilinear":
        attrs["align_corners"] = draw(st.booleans())
    if draw(st.booleans()):
        attrs["size"] = (draw(st.sampled_from((1, height, 2 * height, 7, 32))),
                         draw(st.sampled_from((1, width, 2 * width, 3, 34))))
    else:
        attrs["scale_factor"] = draw(st.sampled_from((2.0, 1.5, 0.5, 3.0, 1.01, 0.7)).filter(
            lambda scale: int(min(height, width) * scale) >= 1))
    return "interpolate", attrs, (1, draw(st.integers(1, 2)), height, width)


ALL_CASES = st.one_of(pool_cases(), adaptive_cases(), pad_cases(), interpolate_cases())


# Reference against PyTorch --------------------------------------------------------------


@given(case=ALL_CASES, seed=st.integers(0, 2**16))
# The last ceil-mode window would start in the bottom padding (5 + 1 = 6 = 2·3): dropped.
@example(case=("avgpool2d", {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True,
                             "count_include_pad": True}, (1, 1, 5, 8)), seed=0)
# A ceil-mode window reaching past the padded input: the divisor stops at the padding.
@example(case=("avgpool2d", {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                             "count_include_pad": True}, (1, 2, 6, 7)), seed=0)
@example(case=("maxpool2d", {"kernel": 2, "stride": 2, "padding": 0, "ceil_mode": True},
               (1, 1, 7, 8)), seed=0)
@example(case=("interpolate", {"mode": "bilinear", "size": (1, 1)}, (1, 1, 5, 4)), seed=0)
@example(case=("interpolate", {"mode": "nearest", "scale_factor": 1.01}, (1, 1, 33, 5)), seed=0)
@example(case=("pad", {"pads": (-2, 1, 3, -1), "mode": "constant", "value": 2.5}, (2, 4, 5)),
         seed=0)
def test_reference_matches_pytorch(case: Case, seed: int) -> None:
    op, attrs, shape = case
    x = random_input(shape, seed)
    assert_matches(reference(op, x, **attrs), torch_of(op, x, attrs))


def test_ceil_mode_output_sizes_follow_pytorch() -> None:
    x = TensorType("f32", (1, 1, 5, 6))
    # Height: ceil((5 + 2 - 3) / 3) + 1 = 3, but the third window would start at padded row 6,
    # in the bottom padding: dropped. Width: (6 + 2 - 3) / 3 rounds up to a third window.
    attrs = make_attrs("maxpool2d", {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True},
                       [x])
    assert REGISTRY["maxpool2d"].infer(attrs, [x]).shape == (1, 1, 2, 3)
    assert tuple(F.max_pool2d(torch.zeros(1, 1, 5, 6), 3, 3, 1, ceil_mode=True).shape) == \
        (1, 1, 2, 3)


def test_avgpool_counts_padding_by_default_as_pytorch() -> None:
    x = random_input((1, 2, 4, 5), 1)
    y = reference("avgpool2d", x, kernel=3, stride=1, padding=1)
    assert_matches(y, F.avg_pool2d(torch.from_numpy(x), 3, 1, 1).numpy())
    assert not np.allclose(y, reference("avgpool2d", x, kernel=3, stride=1, padding=1,
                                        count_include_pad=False))


@pytest.mark.parametrize("op, attrs", [
    ("maxpool2d", {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avgpool2d", {"kernel": 2, "ceil_mode": True}),
    ("adaptive_avgpool2d", {"output_size": (3, 2)}),
    ("pad", {"pads": (1, 2, 2, 1), "mode": "reflect"}),
    ("interpolate", {"mode": "bilinear", "scale_factor": 1.5}),
])
def test_nan_and_infinity_propagate_as_pytorch(op: str, attrs: dict[str, Any]) -> None:
    x = random_input((1, 2, 5, 6), 2)
    x[0, 0, 1, 1] = np.nan  # a max over a NaN is NaN
    x[0, 1, 4, 5] = np.inf
    x[0, 1, 0, 0] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        actual = reference(op, x, **attrs)
    expected = torch_of(op, x, attrs)
    assert np.isnan(expected).any()
    assert_matches(actual, expected)


# ONNX: export against onnxruntime, import round trip ------------------------------------


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def exportable(case: Case) -> bool:
    op, attrs, shape = case
    if op != "adaptive_avgpool2d":
        return True
    out = attrs["output_size"]
    return tuple(out) == (1, 1) or (shape[2] % out[0] == 0 and shape[3] % out[1] == 0)


@given(case=ALL_CASES.filter(exportable), seed=st.integers(0, 2**16))
@example(case=("avgpool2d", {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True,
                             "count_include_pad": True}, (1, 1, 5, 7)), seed=0)
@example(case=("adaptive_avgpool2d", {"output_size": (2, 3)}, (1, 2, 4, 9)), seed=0)
@example(case=("interpolate", {"mode": "bilinear", "size": (1, 3)}, (1, 1, 5, 4)), seed=0)
def test_export_matches_onnxruntime_and_imports_back(case: Case, seed: int) -> None:
    op, attrs, shape = case
    x = random_input(shape, seed)
    expected = reference(op, x, **attrs)
    # A named batch, unless the pads reach the first dim (which a named dim never is).
    batch_padded = op == "pad" and len(attrs["pads"]) == 2 * len(shape)
    try:
        model = export_op(op, attrs, [TensorType("f32", shape if batch_padded else
                                                 ("N", *shape[1:]))])
    except ExportError as error:
        # The one pool ONNX's opset-17 shape inference cannot state (docs/onnx.md): refused
        # by name, never exported wrong.
        assert op == "avgpool2d" and attrs["ceil_mode"] and attrs["count_include_pad"]
        assert "gains a window along one axis and drops one along the other" in str(error)
        return
    # Bilinear: onnxruntime divides by the scale where PyTorch multiplies by its float32
    # reciprocal; the source positions differ by ulps of the position (up to ~33 here).
    tolerance = 1e-4 if attrs.get("mode") == "bilinear" else 1e-5
    assert_matches(run_onnxruntime(model, x), expected, atol=tolerance)
    if batch_padded:
        return  # the importer names the first dim the batch, which pad never pads
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    outputs = run_reference(graph, imported.weights, {imported.inputs["input_0"]: x})
    assert_matches(outputs[imported.outputs["output"]], expected, atol=1e-5)


def test_adaptive_pool_of_unequal_windows_is_a_clean_export_error() -> None:
    with pytest.raises(ExportError, match="adaptive_avgpool2d"):
        export_op("adaptive_avgpool2d", {"output_size": (3, 3)},
                  [TensorType("f32", ("N", 2, 7, 7))])


def _resize_model(shape: list[Any], mode: str, transform: str, **operands: list[float]
                  ) -> onnx.ModelProto:
    initializers = [helper.make_tensor("roi", TensorProto.FLOAT, [0], [])]
    names = ["x", "roi"]
    if "scales" in operands:
        initializers.append(helper.make_tensor("scales", TensorProto.FLOAT, [4],
                                               operands["scales"]))
        names.append("scales")
    else:
        names += ["", "sizes"]
        initializers.append(helper.make_tensor("sizes", TensorProto.INT64, [4],
                                               [int(v) for v in operands["sizes"]]))
    node = helper.make_node("Resize", names, ["y"], mode=mode,
                            coordinate_transformation_mode=transform, nearest_mode="floor")
    graph = helper.make_graph([node], "resize",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode, transform, operands", [
    ("nearest", "asymmetric", {"scales": [1, 1, 2, 2]}),
    ("linear", "pytorch_half_pixel", {"sizes": [1, 2, 9, 4]}),
    ("linear", "half_pixel", {"sizes": [1, 2, 1, 3]}),
    ("linear", "align_corners", {"scales": [1, 1, 2, 2]}),
])
def test_resize_in_pytorchs_forms_imports(mode: str, transform: str,
                                          operands: dict[str, list[float]]) -> None:
    model = _resize_model([1, 2, 5, 6], mode, transform, **operands)
    x = random_input((1, 2, 5, 6), 4)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    actual = run_reference(graph, imported.weights, {imported.inputs["x"]: x})
    assert_matches(actual[imported.outputs["y"]], run_onnxruntime(model, x), atol=1e-5)


@pytest.mark.parametrize("mode, transform, operands", [
    ("linear", "pytorch_half_pixel", {"sizes": [1, 2, 1, 3]}),
    ("linear", "asymmetric", {"scales": [1, 1, 2, 2]}),
    ("nearest", "asymmetric", {"scales": [1, 1, 2, 3]}),
    ("cubic", "half_pixel", {"scales": [1, 1, 2, 2]}),
])
def test_resize_forms_interpolate_cannot_say_import_as_matrices(
        mode: str, transform: str, operands: dict[str, list[float]]) -> None:
    # With every size fixed, any Resize is a linear map per axis: a gather where it only picks
    # values, a matmul otherwise (the importer reads the matrices off ONNX's reference).
    model = _resize_model([1, 2, 5, 6], mode, transform, **operands)
    x = random_input((1, 2, 5, 6), 5)
    imported = import_onnx(model)
    assert "interpolate" not in imported.text
    graph = load_string(imported.text, filename="imported.net")
    actual = run_reference(graph, imported.weights, {imported.inputs["x"]: x})
    assert_matches(actual[imported.outputs["y"]], run_onnxruntime(model, x), atol=1e-5)


# Diagnostics ----------------------------------------------------------------------------


def _compile_errors(call: str, shape: str = "f32[N, 3, 8, 8]") -> list[tuple[str, str]]:
    source = f"network n {{\n    input x: {shape}\n    output y = {call}\n}}\n"
    with pytest.raises(CompileError) as caught:
        load_string(source, filename="t.net")
    return [(d.code, d.message) for d in caught.value.diagnostics]


@pytest.mark.parametrize("call, code, words", [
    ("pad(x, [1, 2, 3])", "E0304", "pairs"),
    ("pad(x, [9, 0], mode=\"reflect\")", "E0304", "smaller than the dimension"),
    ("pad(x, [-1, 0], mode=\"replicate\")", "E0304", "no negative pads"),
    ("pad(x, [0, 0, 0, 0, 0, 0, 1, 0])", "E0304", "named dimension"),
    ("pad(x, [1, 1], mode=\"wrap\")", "E0212", "one of"),
    ("interpolate(x)", "E0304", "exactly one of"),
    ("interpolate(x, size=4, scale_factor=2.0)", "E0304", "exactly one of"),
    ("interpolate(x, size=4, align_corners=true)", "E0304", "only with mode"),
    ("interpolate(x, scale_factor=0.1)", "E0304", "empty"),
    ("interpolate(x, size=4, mode=\"bicubic\")", "E0212", "one of"),
    ("adaptive_avgpool2d(x, 0)", "E0212", "at least 1"),
    ("maxpool2d(x, 3, padding=2, ceil_mode=true)", "E0304", "at most half"),
    ("avgpool2d(x, 2, count_include_pad=1)", "E0205", "true or false"),
])
def test_misuse_is_a_diagnostic(call: str, code: str, words: str) -> None:
    errors = _compile_errors(call)
    assert any(found == code and words in message for found, message in errors), errors


def test_adaptive_pool_needs_nchw() -> None:
    with pytest.raises(ShapeError, match="NCHW"):
        REGISTRY["adaptive_avgpool2d"].infer(Attrs(output_size=(2, 2)),
                                             [TensorType("f32", (3, 8, 8))])


@pytest.mark.parametrize("op, extra", [("maxpool2d", {}),
                                       ("avgpool2d", {"count_include_pad": False})])
def test_ceil_mode_gaining_and_dropping_windows_exports(op: str, extra: dict[str, Any]) -> None:
    # Kernel 3, stride 3, padding 1 over 5 x 6: the height drops its ceil window, the width
    # gains one; floor mode over a grown right padding says it in one node.
    attrs = {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True, **extra}
    x = random_input((1, 2, 5, 6), 5)
    model = export_op(op, attrs, [TensorType("f32", x.shape)])
    assert_matches(run_onnxruntime(model, x), torch_of(op, x, attrs))


def test_ceil_mode_counting_padding_that_no_node_can_say_is_an_export_error() -> None:
    with pytest.raises(ExportError, match="avgpool2d"):
        export_op("avgpool2d", {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True},
                  [TensorType("f32", (1, 2, 5, 6))])


# conv1d ---------------------------------------------------------------------------------


@st.composite
def conv1d_cases(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, int, int]]:
    groups = draw(st.sampled_from((1, 2, 3)))
    kernel, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    padding = draw(st.integers(0, 3))
    span = dilation * (kernel - 1) + 1
    length = max(1, span - 2 * padding + draw(st.integers(0, 40)))
    attrs = {"filters": groups * draw(st.integers(1, 4)), "kernel": kernel,
             "stride": draw(st.integers(1, 3)), "padding": padding, "dilation": dilation,
             "groups": groups, "bias": draw(st.booleans())}
    return attrs, (draw(st.integers(1, 2)), groups * draw(st.integers(1, 3)), length)


def _conv1d_arrays(attrs: dict[str, Any], shape: tuple[int, int, int], seed: int
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    weights = {"weight": rng.uniform(-1, 1, (attrs["filters"], shape[1] // attrs["groups"],
                                             attrs["kernel"])).astype(np.float32)}
    if attrs["bias"]:
        weights["bias"] = rng.uniform(-1, 1, attrs["filters"]).astype(np.float32)
    return x, weights


@given(case=conv1d_cases(), seed=st.integers(0, 2**16))
@example(case=({"filters": 4, "kernel": 3, "stride": 2, "padding": 1, "dilation": 2,
                "groups": 2, "bias": True}, (2, 4, 33)), seed=0)
def test_conv1d_matches_pytorch_onnxruntime_and_imports_back(
        case: tuple[dict[str, Any], tuple[int, int, int]], seed: int) -> None:
    attrs, shape = case
    x, weights = _conv1d_arrays(attrs, shape, seed)
    canonical = make_attrs("conv1d", attrs, [TensorType("f32", shape)])
    expected = np.asarray(REGISTRY["conv1d"].reference(canonical, x, *weights.values()))
    torch_result = F.conv1d(torch.from_numpy(x), torch.from_numpy(weights["weight"]),
                            torch.from_numpy(weights["bias"]) if attrs["bias"] else None,
                            attrs["stride"], attrs["padding"], attrs["dilation"],
                            attrs["groups"]).numpy()
    assert_matches(expected, torch_result, atol=1e-5)
    model = export_op("conv1d", attrs, [TensorType("f32", ("N", *shape[1:]))], weights)
    assert_matches(run_onnxruntime(model, x), expected, atol=1e-5)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    outputs = run_reference(graph, imported.weights, {imported.inputs["input_0"]: x})
    assert_matches(outputs[imported.outputs["output"]], expected, atol=1e-5)


def test_conv1d_parameters_have_pytorchs_names_and_shapes() -> None:
    from netc.ops.builder import GraphBuilder
    from netc.weights import param_specs

    builder = GraphBuilder("c")
    x = builder.input("x", "f32", ("N", 6, 20))
    builder.output("y", builder.op("conv1d", x, filters=4, kernel=5, groups=2, name="conv"))
    specs = param_specs(builder.build())
    assert {name: spec.shape for name, spec in specs.items()} == {
        "conv.weight": (4, 3, 5), "conv.bias": (4,)}
    module = torch.nn.Conv1d(6, 4, 5, groups=2)
    assert tuple(module.weight.shape) == (4, 3, 5)


@pytest.mark.parametrize("call, words", [
    ("conv1d(x, 4, 3, groups=2)", "divisible"),
    ("conv1d(x, 4, 30)", "does not fit"),
])
def test_conv1d_misuse_is_a_diagnostic(call: str, words: str) -> None:
    errors = _compile_errors(call, "f32[N, 3, 8]")
    assert any(code == "E0304" and "conv1d" in message and words in message
               for code, message in errors), errors


def test_conv1d_on_an_image_is_a_diagnostic() -> None:
    errors = _compile_errors("conv1d(x, 4, 3)")
    assert any(code == "E0304" and "[N, C, L]" in message for code, message in errors), errors


def test_align_corners_with_a_fractional_scale_imports_as_onnx_defines_it() -> None:
    # ONNX maps align_corners with scales through in · scale = 3.6 (not the output's 3); its
    # reference implementation does, onnxruntime does not: the import follows the standard.
    from onnx.reference import ReferenceEvaluator

    model = _resize_model([1, 2, 5, 6], "linear", "align_corners", scales=[1, 1, 0.6, 0.6])
    x = random_input((1, 2, 5, 6), 5)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    actual = run_reference(graph, imported.weights, {imported.inputs["x"]: x})
    assert_matches(actual[imported.outputs["y"]], ReferenceEvaluator(model).run(None, {"x": x})[0],
                   atol=1e-5)


def test_align_corners_exports_sizes_not_scales() -> None:
    x = random_input((1, 1, 5, 4), 6)
    attrs = {"scale_factor": 0.6, "mode": "bilinear", "align_corners": True}
    model = export_op("interpolate", attrs, [TensorType("f32", x.shape)])
    assert_matches(run_onnxruntime(model, x), torch_of("interpolate", x, attrs), atol=1e-5)


class _Resampler(torch.nn.Module):
    """The layers of SqueezeNet and GoogLeNet that version 1 refused (ceil-mode pools), and the
    resampling of a U-Net's decoder, as PyTorch writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = torch.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
        self.head = torch.nn.Conv1d(8, 4, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.pool(F.relu(self.conv(x))))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.pad(x, (1, 2, 0, 1), mode="reflect")
        x = F.interpolate(x, size=(9, 7), mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d(self.avg(x), (1, 1))
        return self.head(x.flatten(2).expand(-1, -1, 5))


def test_a_model_exported_by_pytorch_imports_and_matches(tmp_path: Path) -> None:
    model = _Resampler().eval()
    x = torch.from_numpy(random_input((2, 3, 17, 19), 8))
    path = tmp_path / "resampler.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    imported = import_onnx(onnx.load(path))
    for op in ("ceil_mode=true", "interpolate(", "pad(", "conv1d(", "conv_transpose2d("):
        assert op in imported.text, imported.text
    graph = load_string(imported.text, filename="imported.net")
    actual = run_reference(graph, imported.weights, {imported.inputs["x"]: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert_matches(actual[imported.outputs["y"]], expected, atol=1e-5)


# conv_transpose2d -------------------------------------------------------------------------


@st.composite
def conv_transpose_cases(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, ...]]:
    groups = draw(st.sampled_from((1, 2)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    height, width = draw(st.sampled_from((1, 2, 5, 9))), draw(st.sampled_from((1, 3, 7)))
    # Padding leaving at least one output pixel on each axis.
    padding = tuple(draw(st.integers(0, max(0, ((size - 1) * s + d * (k - 1) + op) // 2)))
                    for size, s, d, k, op in zip((height, width), stride, dilation, kernel,
                                                 output_padding))
    attrs = {"filters": groups * draw(st.integers(1, 3)), "kernel": kernel, "stride": stride,
             "padding": padding, "output_padding": output_padding, "groups": groups,
             "dilation": dilation, "bias": draw(st.booleans())}
    return attrs, (draw(st.integers(1, 2)), groups * draw(st.integers(1, 3)), height, width)


@given(case=conv_transpose_cases(), seed=st.integers(0, 2**16))
@example(case=({"filters": 4, "kernel": (3, 2), "stride": (2, 3), "padding": (1, 0),
                "output_padding": (1, 2), "groups": 2, "dilation": (1, 2), "bias": True},
               (2, 4, 5, 3)), seed=0)
def test_conv_transpose2d_matches_pytorch_onnxruntime_and_imports_back(
        case: tuple[dict[str, Any], tuple[int, ...]], seed: int) -> None:
    attrs, shape = case
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    weights = {"weight": rng.uniform(-1, 1, (shape[1], attrs["filters"] // attrs["groups"],
                                             *attrs["kernel"])).astype(np.float32)}
    if attrs["bias"]:
        weights["bias"] = rng.uniform(-1, 1, attrs["filters"]).astype(np.float32)
    canonical = make_attrs("conv_transpose2d", attrs, [TensorType("f32", shape)])
    expected = np.asarray(REGISTRY["conv_transpose2d"].reference(canonical, x,
                                                                 *weights.values()))
    torch_result = F.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(weights["weight"]),
        torch.from_numpy(weights["bias"]) if attrs["bias"] else None, attrs["stride"],
        attrs["padding"], attrs["output_padding"], attrs["groups"], attrs["dilation"]).numpy()
    assert_matches(expected, torch_result, atol=1e-5)
    input_type = TensorType("f32", ("N", *shape[1:]))
    if any(extra >= stride and extra > padding for extra, stride, padding in
           zip(attrs["output_padding"], attrs["stride"], attrs["padding"])):
        with pytest.raises(ExportError, match="output_padding"):
            export_op("conv_transpose2d", attrs, [input_type], weights)
        return
    model = export_op("conv_transpose2d", attrs, [input_type], weights)
    assert_matches(run_onnxruntime(model, x), expected, atol=1e-5)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    outputs = run_reference(graph, imported.weights, {imported.inputs["input_0"]: x})
    assert_matches(outputs[imported.outputs["output"]], expected, atol=1e-5)


def test_conv_transpose2d_parameters_are_pytorchs() -> None:
    from netc.ops.builder import GraphBuilder
    from netc.weights import param_specs

    builder = GraphBuilder("t")
    x = builder.input("x", "f32", ("N", 6, 5, 5))
    builder.output("y", builder.op("conv_transpose2d", x, filters=4, kernel=(3, 2), groups=2,
                                   name="up"))
    specs = param_specs(builder.build())
    module = torch.nn.ConvTranspose2d(6, 4, (3, 2), groups=2)
    assert specs["up.weight"].shape == tuple(module.weight.shape) == (6, 2, 3, 2)
    # PyTorch's bound: 1/sqrt(fan_in), fan_in = weight.size(1) · kh · kw.
    assert specs["up.weight"].init == ("uniform", pytest.approx(1 / np.sqrt(2 * 3 * 2)))


@pytest.mark.parametrize("call, words", [
    ("conv_transpose2d(x, 4, 3, stride=2, output_padding=2)", "output_padding"),
    ("conv_transpose2d(x, 4, 3, groups=2)", "divisible"),
    ("conv_transpose2d(x, 4, 1, padding=5)", "leaves an output"),
])
def test_conv_transpose2d_misuse_is_a_diagnostic(call: str, words: str) -> None:
    errors = _compile_errors(call)
    assert any(code == "E0304" and words in message for code, message in errors), errors
