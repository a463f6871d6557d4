"""`netc import`: ONNX models become `.net` text that loads and computes what onnxruntime does.

Three kinds of check:
1. ONNX's own backend node tests for every supported op type (benchmarks/onnx_conformance.py,
   which also writes docs/onnx-conformance.md): no crash, no wrong result.
2. Small models written here with onnx.helper, one or more per supported op and attribute,
   against onnxruntime; and models that cannot be imported, whose every problem is listed in
   one error.
3. The example networks exported with netc's exporter and imported back.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper, numpy_helper

import netc
from netc.diagnostics import CompileError
from netc.frontend import load_file, load_string
from netc.frontend.unparse import NameTable, format_number
from netc.onnx.export import export_graph
from netc.onnx.importer import ImportedModel, import_onnx
from netc.reference import random_inputs, run_reference
from netc.weights import load_weights
from tests.examples import weights_with_statistics

from .netgen import networks, random_weights

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _load_conformance() -> Any:
    spec = importlib.util.spec_from_file_location("onnx_conformance",
                                                  ROOT / "benchmarks" / "onnx_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


# Helpers ------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)


def _const(name: str, array: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _random(name: str, shape: Sequence[int], low: float = -1.0, high: float = 1.0) -> onnx.TensorProto:
    return _const(name, RNG.uniform(low, high, size=shape))


def _model(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Sequence[int | str]],
           outputs: Sequence[str], initializers: Sequence[onnx.TensorProto] = (),
           opset: int = 17, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "case",
        [helper.make_tensor_value_info(name, dtype, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, None) for name in outputs],
        list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model


def _feeds(model: onnx.ModelProto, batch: int = 3) -> dict[str, np.ndarray]:
    initialized = {t.name for t in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name in initialized:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch
                 for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = RNG.standard_normal(shape).astype(np.float32)
    return feeds


def _check(model: onnx.ModelProto, rtol: float = 1e-4, atol: float = 1e-5,
           batch: int = 3) -> ImportedModel:
    """Import `model`, load the text with the front end, run it on the reference backend and
    compare every output with onnxruntime's."""
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    feeds = _feeds(model, batch)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in model.graph.output], session.run(None, feeds)))
    ours = run_reference(graph, imported.weights,
                         {imported.inputs[name]: value for name, value in feeds.items()})
    direct = run_reference(imported.graph, imported.weights,
                           {imported.inputs[name]: value for name, value in feeds.items()})
    for name, value in expected.items():
        actual = ours[imported.outputs[name]]
        assert actual.shape == value.shape, (name, actual.shape, value.shape, imported.text)
        bad = ~np.isclose(actual, value, rtol=rtol, atol=atol)
        assert not bad.any(), (f"{name}: {bad.sum()} of {bad.size} elements differ; largest "
                               f"difference {np.abs(actual - value).max():.3g}\n{imported.text}")
        np.testing.assert_array_equal(actual, direct[imported.outputs[name]])
    return imported


def _diagnostics(model: onnx.ModelProto) -> list[tuple[str, str]]:
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    return [(d.code, d.message) for d in caught.value.diagnostics]


# 1. ONNX's backend node tests ----------------------------------------------------------------


@pytest.fixture(scope="module")
def conformance() -> Any:
    module = _load_conformance()
    return module, module.run_conformance()


def test_node_tests_import_correctly_or_are_rejected_clearly(conformance: Any) -> None:
    _, report = conformance
    assert len(report.outcomes) > 200
    unexpected = report.unexpected()
    assert not unexpected, "\n".join(f"{o.case} ({o.status}): {o.reason}" for o in unexpected)
    for outcome in report.outcomes:
        if outcome.status == "rejected":
            assert "[E06" in outcome.reason, outcome
    # Tests that exercise each translation and must keep passing.
    passed = {o.case for o in report.outcomes if o.status == "passed"}
    must_pass = {
        "test_basic_conv_with_padding", "test_conv_with_strides_padding",
        "test_conv_with_autopad_same", "test_conv_with_strides_and_asymmetric_padding",
        "test_gemm_default_vector_bias", "test_gemm_transposeB", "test_gemm_alpha",
        "test_gemm_beta", "test_matmul_3d", "test_matmul_bcast",
        "test_maxpool_2d_strides", "test_averagepool_2d_precomputed_pads",
        "test_globalaveragepool", "test_batchnorm_epsilon", "test_softmax_axis_1",
        "test_logsoftmax_axis_2", "test_gelu_default_2", "test_gelu_default_2_expanded",
        "test_leakyrelu", "test_flatten_axis1", "test_reshape_negative_dim",
        "test_transpose_all_permutations_1", "test_add_bcast", "test_concat_3d_axis_1",
        "test_dropout_default", "test_identity",
    }
    available = {o.case for o in report.outcomes}
    assert must_pass & available, "the node tests were renamed; update this list"
    assert (must_pass & available) <= passed, sorted((must_pass & available) - passed)


def test_conformance_table_renders(conformance: Any, tmp_path: Path) -> None:
    module, report = conformance
    text = module.render_markdown(report)
    assert "| op | attempted |" in text and "| Conv |" in text
    for op in ("Gemm", "MatMul", "Conv", "MaxPool", "AveragePool", "BatchNormalization",
               "Softmax", "LayerNormalization", "Reshape", "Transpose", "Concat"):
        assert f"| {op} |" in text, op
    (tmp_path / "onnx-conformance.md").write_text(text)


# 2. Models written here ----------------------------------------------------------------------


def _gemm_dense() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc1", transB=1,
                                    alpha=0.5, beta=2.0)],
                  {"x": ["N", 6]}, ["y"], [_random("w", [4, 6]), _random("c", [4])])


def _gemm_plain_row_bias() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])],
                  {"x": ["N", 6]}, ["y"], [_random("w", [6, 5]), _random("c", [1, 5])])


def _gemm_two_tensors() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=2.0, beta=0.5)],
                  {"a": ["N", 3], "b": [3, 4], "c": [4]}, ["y"])


def _matmul_bias() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
                   helper.make_node("Add", ["h", "b"], ["y"])],
                  {"x": ["N", 5, 8]}, ["y"], [_random("w", [8, 3]), _random("b", [3])])


def _matmul_constant_left() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["w", "x"], ["y"])],
                  {"x": ["N", 4, 5]}, ["y"], [_random("w", [6, 4])])


def _matmul_attention() -> onnx.ModelProto:
    return _model([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                   helper.make_node("MatMul", ["q", "kt"], ["s"]),
                   helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                   helper.make_node("MatMul", ["p", "v"], ["y"])],
                  {"q": ["N", 4, 8], "k": ["N", 4, 8], "v": ["N", 4, 8]}, ["y"], opset=13)


def _conv(**attributes: Any) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        groups = attributes.get("group", 1)
        kernel = attributes.pop("kernel", [3, 3])
        return _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv1",
                                        **attributes)],
                      {"x": ["N", 4, 9, 9]}, ["y"],
                      [_random("w", [6, 4 // groups, *kernel]), _random("b", [6])])
    return build


def _conv_bias_add() -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Add", ["c", "b"], ["y"])],
                  {"x": ["N", 2, 6, 6]}, ["y"], [_random("w", [3, 2, 3, 3]),
                                                  _random("b", [1, 3, 1, 1])])


def _pool(op_type: str, **attributes: Any) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([helper.make_node(op_type, ["x"], ["y"], **attributes)],
                      {"x": ["N", 3, 8, 8]}, ["y"])
    return build


def _unary(op_type: str, opset: int = 17, **attributes: Any) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([helper.make_node(op_type, ["x"], ["y"], **attributes)],
                      {"x": ["N", 3, 5]}, ["y"], opset=opset)
    return build


def _batchnorm() -> onnx.ModelProto:
    return _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                    name="bn1", epsilon=1e-3)],
                  {"x": ["N", 3, 4, 4]}, ["y"],
                  [_random("s", [3], 0.5, 2), _random("b", [3]), _random("m", [3]),
                   _random("v", [3], 0.5, 2)])


def _layernorm(axis: int, bias: bool = True) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        inputs = ["x", "scale", "bias"] if bias else ["x", "scale"]
        initializers = [_random("scale", [4, 6] if axis == 1 else [6])]
        if bias:
            initializers.append(_random("bias", [4, 6] if axis == 1 else [6]))
        return _model([helper.make_node("LayerNormalization", inputs, ["y"], axis=axis,
                                        epsilon=1e-4)],
                      {"x": ["N", 4, 6]}, ["y"], initializers)
    return build


def _gelu_pattern(order: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]),
                 helper.make_node("Erf", ["d"], ["e"]),
                 helper.make_node("Add", ["one", "e"], ["a"])]
        if order == "x_times_sum_then_half":
            nodes += [helper.make_node("Mul", ["x", "a"], ["m"]),
                      helper.make_node("Mul", ["m", "half"], ["y"])]
        elif order == "half_x_first":
            nodes.insert(0, helper.make_node("Mul", ["half", "x"], ["h"]))
            nodes += [helper.make_node("Mul", ["h", "a"], ["y"])]
        else:
            nodes += [helper.make_node("Mul", ["a", "half"], ["m"]),
                      helper.make_node("Mul", ["x", "m"], ["y"])]
        return _model(nodes, {"x": ["N", 7]}, ["y"],
                      [_const("sqrt2", 1.4142135), _const("one", 1.0), _const("half", 0.5)])
    return build


def _softmax_old_opset() -> onnx.ModelProto:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                  {"x": ["N", 3, 5]}, ["y"], opset=11)


def _reshape(shape: Sequence[int], input_shape: Sequence[int | str] = ("N", 3, 4)
             ) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                      {"x": list(input_shape)}, ["y"], [_const("shape", shape, np.int64)])
    return build


def _arithmetic() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "y"], ["s"]),
                   helper.make_node("Mul", ["s", "two"], ["m"]),
                   helper.make_node("Sub", ["one", "m"], ["d"]),
                   helper.make_node("Sub", ["d", "threes"], ["e"]),
                   helper.make_node("Mul", ["e", "row"], ["z"])],
                  {"x": ["N", 3, 4], "y": [4]}, ["z"],
                  [_const("two", [2.0]), _const("one", 1.0), _const("threes", [[3.0] * 4]),
                   _const("row", [[[-0.25]]])])


def _concat() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["a"], ["ra"]),
                   helper.make_node("Sigmoid", ["b"], ["sb"]),
                   helper.make_node("Concat", ["ra", "sb", "ra"], ["y"], axis=-1)],
                  {"a": ["N", 2, 3], "b": ["N", 2, 5]}, ["y"])


def _dropout_and_friends() -> onnx.ModelProto:
    return _model([helper.make_node("Dropout", ["x", "ratio"], ["d"]),
                   helper.make_node("Identity", ["d"], ["i"]),
                   helper.make_node("Constant", [], ["c"], value_float=3.0),
                   helper.make_node("Div", ["i", "c"], ["q"]),
                   helper.make_node("Cast", ["q"], ["f"], to=TensorProto.FLOAT),
                   helper.make_node("Sum", ["f", "x", "i"], ["y"])],
                  {"x": ["N", 6]}, ["y"], [_const("ratio", 0.25)])


def _dropout_old() -> onnx.ModelProto:
    return _model([helper.make_node("Dropout", ["x"], ["y"], ratio=0.3)],
                  {"x": ["N", 6]}, ["y"], opset=10)


def _two_outputs_fixed_batch() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["input.1"], ["out:0"]),
                   helper.make_node("Flatten", ["out:0"], ["flat"], axis=1),
                   helper.make_node("Reshape", ["flat", "shape"], ["output"])],
                  {"input.1": [2, 3, 4]}, ["out:0", "output"],
                  [_const("shape", [2, 4, 3], np.int64)])


def _dynamic_view() -> onnx.ModelProto:
    """PyTorch's `x.view(x.size(0), x.size(1), -1)` with a dynamic batch."""
    ints = [_const("zero", 0, np.int64), _const("one", 1, np.int64),
            _const("axes", [0], np.int64), _const("minus1", [-1], np.int64)]
    return _model([helper.make_node("Shape", ["x"], ["s"]),
                   helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                   helper.make_node("Unsqueeze", ["n", "axes"], ["nu"]),
                   helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
                   helper.make_node("Unsqueeze", ["c", "axes"], ["cu"]),
                   helper.make_node("Concat", ["nu", "cu", "minus1"], ["target"], axis=0),
                   helper.make_node("Reshape", ["x", "target"], ["y"])],
                  {"x": ["batch", 3, 4, 5]}, ["y"], ints, opset=13)


CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "reshape_dynamic_batch_from_shape": _dynamic_view,
    "gemm_dense_transB_alpha_beta": _gemm_dense,
    "gemm_dense_row_bias": _gemm_plain_row_bias,
    "gemm_two_tensors": _gemm_two_tensors,
    "matmul_bias_rank3": _matmul_bias,
    "matmul_constant_left": _matmul_constant_left,
    "matmul_attention": _matmul_attention,
    "conv_pads_strides": _conv(pads=[1, 2, 1, 2], strides=[2, 1]),
    "conv_dilations_groups": _conv(dilations=[2, 2], group=2),
    "conv_same_upper": _conv(auto_pad="SAME_UPPER", kernel=[2, 2]),
    "conv_same_upper_stride2_symmetric": _conv(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_valid": _conv(auto_pad="VALID"),
    "conv_then_bias_add": _conv_bias_add,
    "maxpool_pads": _pool("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil_same_size": _pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2],
                                    ceil_mode=1),
    "avgpool_pads_excluded": _pool("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_default_stride_1": _pool("AveragePool", kernel_shape=[2, 3]),
    "global_avgpool": _pool("GlobalAveragePool"),
    "batchnorm": _batchnorm,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "leaky_relu": _unary("LeakyRelu", alpha=0.2),
    "gelu_opset20": _unary("Gelu", opset=20),
    "gelu_erf_x_times_sum_then_half": _gelu_pattern("x_times_sum_then_half"),
    "gelu_erf_half_x_first": _gelu_pattern("half_x_first"),
    "gelu_erf_half_sum_first": _gelu_pattern("half_sum_first"),
    "softmax_axis1": _unary("Softmax", axis=1),
    "log_softmax_last": _unary("LogSoftmax"),
    "softmax_opset11_flattening": _softmax_old_opset,
    "flatten": _unary("Flatten", axis=1),
    "reshape_copy_batch": _reshape([0, -1]),
    "reshape_minus_one_batch": _reshape([-1, 2, 6]),
    "reshape_copy_dims": _reshape([0, 0, 2, 2]),
    "transpose": _unary("Transpose", perm=[0, 2, 1]),
    "arithmetic_broadcast_and_numbers": _arithmetic,
    "concat_last_axis": _concat,
    "layernorm_last": _layernorm(-1),
    "layernorm_no_bias": _layernorm(2, bias=False),
    "layernorm_two_dims": _layernorm(1),
    "dropout_identity_div_cast_sum": _dropout_and_friends,
    "dropout_opset10": _dropout_old,
    "two_outputs_fixed_batch_names": _two_outputs_fixed_batch,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_supported_model_matches_onnxruntime(case: str) -> None:
    model = CASES[case]()
    batch = 2 if case == "two_outputs_fixed_batch_names" else 3
    _check(model, batch=batch)


def test_dense_layers_take_weights_in_pytorch_layout() -> None:
    imported = _check(_gemm_dense())
    assert 'dense(x, 4, name="fc1")' in imported.text
    assert sorted(imported.weights) == ["fc1.bias", "fc1.weight"]
    assert imported.weights["fc1.weight"].shape == (4, 6)
    bias = _check(_matmul_bias())
    assert "dense(x, 3, " in bias.text and "+" not in bias.text  # the Add became the bias


def test_conv_same_padding_and_folded_bias_read_naturally() -> None:
    same = _check(_conv(auto_pad="SAME_UPPER", kernel=[2, 2])())
    assert 'padding="same"' in same.text
    folded = _check(_conv_bias_add())
    assert "+" not in folded.text and "conv2d(x, 3, kernel=3, padding=1" in folded.text


def test_scalars_become_numbers_and_fixed_batch_stays_fixed() -> None:
    arithmetic = _check(_arithmetic())
    for fragment in ("* 2.0", "1.0 - ", "- 3.0", "* (-0.25)"):
        assert fragment in arithmetic.text, arithmetic.text
    fixed = _check(_two_outputs_fixed_batch(), batch=2)
    # Language v2: a first dimension the ONNX model fixes stays fixed (no named batch).
    assert "input input_1: f32[2, 3, 4]" in fixed.text
    assert fixed.inputs == {"input.1": "input_1"}
    assert fixed.outputs == {"out:0": "out_0", "output": "output_"}


def test_layer_names_come_from_weight_names() -> None:
    model = _model([helper.make_node("Conv", ["x", "layer1.0.conv1.weight"], ["c"],
                                     name="/layer1/layer1.0/conv1/Conv"),
                    helper.make_node("BatchNormalization",
                                     ["c", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
                                      "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var"],
                                     ["y"], name="/layer1/layer1.0/bn1/BatchNormalization")],
                   {"x": ["batch", 2, 5, 5]}, ["y"],
                   [_random("layer1.0.conv1.weight", [3, 2, 3, 3]),
                    _random("layer1.0.bn1.weight", [3]), _random("layer1.0.bn1.bias", [3]),
                    _random("layer1.0.bn1.running_mean", [3]),
                    _random("layer1.0.bn1.running_var", [3], 0.5, 1.5)])
    imported = _check(model)
    assert sorted(imported.weights) == [
        "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
        "layer1.0.bn1.weight", "layer1.0.conv1.weight"]


def test_names_are_sanitised_and_unique() -> None:
    table = NameTable()
    assert table.claim("x") == "x"
    assert table.claim("x") == "x_1"
    assert table.claim("input.1") == "input_1"
    assert table.claim("output") == "output_"
    assert table.claim("3d") == "v_3d"
    assert table.claim("") == "v"
    long = table.claim("a" * 100)
    assert len(long) <= 64 and long != table.claim("a" * 100)
    assert format_number(1e-5) == "1e-05" and format_number(3.0) == "3.0"
    assert float(format_number(0.1)) == pytest.approx(0.1)
    assert np.float32(float(format_number(np.float32(1 / 3)))) == np.float32(1 / 3)


def test_every_problem_is_listed_in_one_error() -> None:
    model = _model(
        [helper.make_node("Acos", ["x"], ["e"], name="acos1"),
         helper.make_node("Conv", ["e", "w"], ["c"], name="conv_asym", strides=[2, 2],
                          pads=[0, 0, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="after_conv"),  # depends on a failure
         # Depends on a failure too (moving dimension 0 is no problem of its own any more).
         helper.make_node("Transpose", ["r"], ["rt"], name="transpose_after", perm=[1, 0, 2, 3]),
         helper.make_node("Gemm", ["v", "wg"], ["g"], name="gemm_t", transA=1),
         helper.make_node("Add", ["v", "table"], ["t"], name="add_table"),
         helper.make_node("Conv", ["x", "w_runtime"], ["c2"], name="conv_runtime_weight"),
         helper.make_node("Softmax", ["i"], ["s"], name="softmax_int"),
         helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool_idx", kernel_shape=[2, 2])],
        {"x": ["N", 2, 6, 6], "v": ["N", 4], "w_runtime": [3, 2, 3, 3]},
        ["rt", "g", "t", "c2", "s", "p", "idx"],
        [_random("w", [3, 2, 3, 3]), _random("wg", [4, 5]), _random("table", [5, 4])])
    # (i32, i64 and bool inputs import now; f64 is no `.net` dtype.)
    model.graph.input.append(helper.make_tensor_value_info("i", TensorProto.DOUBLE, ["N", 3]))
    problems = _diagnostics(model)
    text = "\n".join(f"{code} {message}" for code, message in problems)
    expected = [
        ("E0601", "Acos node `acos1`"),
        ("E0602", "Conv node `conv_asym`"),
        ("E0602", "Gemm node `gemm_t`"),
        ("E0607", "Add node `add_table`"),  # a `param` now, that cannot broadcast with N
        ("E0603", "Conv node `conv_runtime_weight`"),
        ("E0604", "graph input `i`"),
        ("E0608", "MaxPool node `pool_idx`"),
    ]
    for code, fragment in expected:
        assert any(c == code and fragment in m for c, m in problems), (code, fragment, text)
    assert "after_conv" not in text  # downstream of a failure: not reported twice
    assert "transpose_after" not in text
    assert len(problems) == len(expected), text


def test_shapes_outside_the_language_are_rejected() -> None:
    # (Named dimensions anywhere import now: language v2.)
    dynamic = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N", "seq", 4]}, ["y"])
    assert "input x: f32[N, seq, 4]" in import_onnx(dynamic).text
    # (A Transpose may move the batch now: `transpose` takes any permutation.)
    empty_slice = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                         {"x": ["N", 4]}, ["y"], [_const(name, [value], np.int64) for name, value
                                                  in (("starts", 3), ("ends", 1), ("axes", 1))])
    assert _diagnostics(empty_slice)[0][0] == "E0607"
    flatten0 = _model([helper.make_node("Flatten", ["x"], ["y"], axis=2)],
                      {"x": ["N", 4, 2, 2]}, ["y"])
    assert _diagnostics(flatten0)[0][0] == "E0607"  # merges the named N with 4
    reshape_batch = _reshape([6, -1])()
    assert _diagnostics(reshape_batch)[0][0] == "E0607"
    batch_arithmetic = _model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Mul", ["s", "two"], ["twice"]),
         helper.make_node("Reshape", ["x", "twice"], ["y"])],
        {"x": ["N", 4]}, ["y"], [_const("two", 2, np.int64)])
    codes = _diagnostics(batch_arithmetic)
    assert codes[0][0] == "E0607" and "never a product or sum such as N*4" in codes[0][1]


def test_write_and_read_back(tmp_path: Path) -> None:
    model = _gemm_dense()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    imported = import_onnx(path)
    net, weights = imported.write(tmp_path / "out" / "model.net")
    assert weights == tmp_path / "out" / "model.safetensors"
    graph = load_file(net)
    loaded = load_weights(weights)
    feeds = _feeds(model)
    expected = onnxruntime.InferenceSession(str(path)).run(None, feeds)[0]
    actual = run_reference(graph, loaded, feeds)["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert "imported from model.onnx" in net.read_text()
    assert not list((tmp_path / "out").glob(".*partial"))


def test_unreadable_models_are_compile_errors(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="E0609"):
        import_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all\xff" * 10)
    with pytest.raises(CompileError, match="E0609"):
        import_onnx(garbage)


# 3. Examples, exported and imported back -----------------------------------------------------

EXAMPLE_BATCH = {"mlp.net": 3, "lenet5.net": 2, "transformer.net": 2, "vgg.net": 2,
                 "resnet18.net": 1}


@pytest.mark.parametrize("example", sorted(EXAMPLE_BATCH))
def test_exported_examples_import_back(example: str) -> None:
    model = netc.load(EXAMPLES / example)
    weights = weights_with_statistics(model, seed=3)
    imported = import_onnx(export_graph(model.graph, weights))
    graph = load_string(imported.text, filename=example)
    # The layers keep their paths (`basic_0.conv2d_0`); ONNX has no `num_batches_tracked`.
    assert set(imported.weights) == {name for name in weights
                                     if not name.endswith(".num_batches_tracked")}
    inputs = random_inputs(model.graph, EXAMPLE_BATCH[example], seed=4)
    original = model.run(inputs, weights)
    again = run_reference(graph, imported.weights,
                          {imported.inputs[name]: value for name, value in inputs.items()})
    for name, value in original.items():
        np.testing.assert_allclose(again[imported.outputs[name]], value, rtol=1e-5, atol=1e-6)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(networks(max_statements=20))
def test_random_networks_survive_export_and_import(source: str) -> None:
    """Property: a `.net` network exported to ONNX and imported back computes the same."""
    graph = load_string(source, filename="random.net")
    weights = random_weights(graph, seed=0)
    imported = import_onnx(export_graph(graph, weights))
    again = load_string(imported.text, filename="imported.net")
    inputs = random_inputs(graph, batch=2, seed=1)
    expected = run_reference(graph, weights, inputs)
    actual = run_reference(again, imported.weights,
                           {imported.inputs[name]: value for name, value in inputs.items()})
    for name, value in expected.items():
        np.testing.assert_allclose(actual[imported.outputs[name]], value, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name}\n{source}\n{imported.text}")


def test_every_import_and_tensorrt_code_is_documented() -> None:
    used: set[str] = set()
    sources = [*sorted((ROOT / "compiler" / "onnx" / "importer").glob("*.py")),
               ROOT / "compiler" / "backends" / "tensorrt.py"]
    for source in sources:
        used.update(re.findall(r'"(E06\d\d)"', source.read_text()))
    assert len(used) >= 13
    guide = (ROOT / "docs" / "onnx.md").read_text()
    errors = (ROOT / "docs" / "errors.md").read_text()
    for code in sorted(used):
        assert f"| {code} |" in guide, code
        assert f"\n## {code}\n" in errors, code
