"""The ONNX import of normalisations over any axis (with LayerNormalization's Mean and
InvStdDev), Flatten, Gather and GatherElements by tensors of positions, Where of two
constants, Resize of any mode (and Upsample, and AveragePools `avgpool2d` cannot be) as
matrices over each axis, and the class losses with their
reductions and class weights; and those losses (`reduction=`, class weights) against PyTorch,
their decomposition, onnxruntime (export) and the CUDA simulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from netc.frontend import load_string
from netc.ir import TensorType
from netc.onnx.export import export_op
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder, make_attrs
from netc.ops.decompose import expand_decompositions
from netc.reference import run_reference

from .test_onnx_import import _const, _diagnostics, _model

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(11)


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5,
             atol: float = 1e-6, runtime: bool = True) -> str:
    """Import `model`, load its text, run it on the reference backend, and compare each
    output with onnxruntime's (`runtime`; else with onnx's reference evaluator, for what
    onnxruntime refuses); the imported text."""
    model.ir_version = min(model.ir_version, 10)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    if runtime:
        session = onnxruntime.InferenceSession(model.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        results = session.run(None, feeds)
    else:
        results = ReferenceEvaluator(model).run(None, feeds)
    expected = dict(zip([o.name for o in model.graph.output], results))
    ours = run_reference(graph, imported.weights,
                         {imported.inputs[name]: value for name, value in feeds.items()})
    for name, value in expected.items():
        actual = ours[imported.outputs[name]]
        assert actual.shape == value.shape, (name, imported.text)
        np.testing.assert_allclose(actual, value, rtol=rtol, atol=atol,
                                   err_msg=f"{name}\n{imported.text}")
    return imported.text


def _normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# Normalisations ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((3, 4, 5), -1), ((3, 4, 5), 1), ((2, 3, 4, 5), 2),
                                         ((3, 4, 5), 0), ((2, 3, 4, 5), -4)])
def test_layer_normalization_over_any_axis_with_its_statistics(shape: tuple[int, ...],
                                                               axis: int) -> None:
    normalised = shape[axis:]
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "inv"],
                            axis=axis, epsilon=1e-3)
    model = _model([node], {"x": shape}, ["y", "mean", "inv"],
                   [_const("w", _normal(*normalised)), _const("b", _normal(*normalised))])
    text = _compare(model, {"x": 3 * _normal(*shape)}, rtol=1e-4, atol=1e-5)
    assert "layernorm(" in text


def test_layer_normalization_statistics_alone() -> None:
    node = helper.make_node("LayerNormalization", ["x", "w"], ["", "mean"], axis=1)
    model = _model([node], {"x": (3, 2, 6)}, ["mean"], [_const("w", _normal(2, 6))])
    text = _compare(model, {"x": _normal(3, 2, 6)}, runtime=False)
    assert "layernorm(" not in text and "mean(" in text


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_rms_normalization_over_any_axis(axis: int) -> None:
    shape = (2, 3, 4)
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], axis=axis)
    model = _model([node], {"x": shape}, ["y"], [_const("w", _normal(*shape[axis:]))],
                   opset=23)
    assert "rmsnorm(" in _compare(model, {"x": _normal(*shape)}, rtol=1e-4, atol=1e-5)


def test_normalising_over_a_named_dimension_is_an_error() -> None:
    node = helper.make_node("LayerNormalization", ["x", "w"], ["y"], axis=0)
    model = _model([node], {"x": ("N", 4)}, ["y"], [_const("w", np.ones((1, 4)))])
    assert _diagnostics(model)[0][0] == "E0607"


# Flatten, Gather, GatherElements, Where -----------------------------------------------------


@pytest.mark.parametrize("axis", [0, 2, 3, -1])
def test_flatten_at_any_axis_of_fixed_sizes(axis: int) -> None:
    model = _model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], {"x": (2, 3, 4)},
                   ["y"])
    _compare(model, {"x": _normal(2, 3, 4)})


def test_gather_by_constant_and_tensor_positions() -> None:
    by_constant = _model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
                         {"x": (3, 5, 2)}, ["y"], [_const("i", [[0, -1], [4, 2]], np.int64)])
    _compare(by_constant, {"x": _normal(3, 5, 2)})
    values = np.array([1.5, -np.inf, np.nan, 7.0], np.float32)
    by_tensor = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17)])
    # The PARAMETER_OPERANDS freeze only constants: a tensor of positions reads x at run time.
    _compare(by_tensor, {"x": values, "i": np.array([[0, 1, 2], [3, -1, -4]], np.int64)})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements_with_negative_positions(axis: int) -> None:
    model = helper.make_model(helper.make_graph(
        [helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17)])
    size = (3, 4)[axis]
    positions = RNG.integers(-size, size, (3, 4))
    _compare(model, {"x": _normal(3, 4), "i": positions})


def test_where_of_two_constants_and_of_a_uniform_constant_condition() -> None:
    nodes = [helper.make_node("Greater", ["x", "zero"], ["c"]),
             helper.make_node("Where", ["c", "one", "half"], ["y"]),
             helper.make_node("Where", ["never", "zero", "x"], ["z"])]
    model = _model(nodes, {"x": (3, 4)}, ["y", "z"],
                   [_const("zero", 0.0), _const("one", 1.0), _const("half", [0.5]),
                    _const("never", np.zeros((1, 4), bool), bool)])
    text = _compare(model, {"x": _normal(3, 4)})
    assert text.count("where(") == 1  # z is x itself


# Resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "nearest"}, [1, 1, 0.5, 0.5], None),  # half_pixel, round_prefer_floor: ties
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners",
      "nearest_mode": "ceil"}, None, [2, 3, 7, 3]),
    ({"mode": "cubic"}, [1, 1, 1.5, 0.8], None),
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
     [1, 1, 2.0, 0.5], None),
    ({"mode": "linear", "antialias": 1}, [1, 1, 0.6, 0.6], None),
])
def test_resize_as_matrices_over_each_axis(attrs: dict[str, Any], scales: list[float] | None,
                                          sizes: list[int] | None) -> None:
    inputs = ["x", "", "scales"] if scales is not None else ["x", "", "", "sizes"]
    initializers = [_const("scales", scales)] if scales is not None else \
        [_const("sizes", sizes, np.int64)]
    model = _model([helper.make_node("Resize", inputs, ["y"], **attrs)], {"x": (2, 3, 4, 6)},
                   ["y"], initializers, opset=19)
    _compare(model, {"x": _normal(2, 3, 4, 6)}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, attrs", [
    ((2, 3, 9, 8), {"kernel_shape": [3, 2], "dilations": [2, 2], "ceil_mode": 1}),
    ((2, 3, 16), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 6, 7), {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}),
])
def test_average_pools_outside_avgpool2d_as_matrices(shape: tuple[int, ...],
                                                     attrs: dict[str, Any]) -> None:
    model = _model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], {"x": shape},
                   ["y"], opset=19)
    _compare(model, {"x": _normal(*shape)})


def test_upsample_as_matrices() -> None:
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    model = _model([node], {"x": (1, 2, 3, 2)}, ["y"], [_const("scales", [1, 1, 2, 3])],
                   opset=9)
    _compare(model, {"x": _normal(1, 2, 3, 2)}, runtime=False)


def test_resize_that_is_not_linear_in_its_input_is_an_error() -> None:
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize",
                            extrapolation_value=10.0)
    model = _model([node], {"x": (1, 1, 4, 4)}, ["y"],
                   [_const("roi", [0, 0, 0.4, 0.6, 1, 1, 1.2, 1.7]),
                    _const("scales", [1, 1, 0.8, 0.8])], opset=19)
    assert _diagnostics(model)[0][0] == "E0602"


# Class losses ------------------------------------------------------------------------------

CLASS_OPS = ("cross_entropy", "nll_loss")


def _torch_loss(op: str, scores: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
                **attrs: Any) -> np.ndarray:
    tensors = (torch.tensor(scores, dtype=torch.float64), torch.tensor(target))
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    function = F.cross_entropy if op == "cross_entropy" else F.nll_loss
    return function(*tensors, weight=w, **attrs).numpy()


def _decomposed(op: str, arrays: list[np.ndarray], **attrs: Any) -> np.ndarray:
    builder = GraphBuilder(op)
    names = [builder.input(f"input_{i}", "f32" if a.dtype.kind == "f" else "i64", a.shape)
             for i, a in enumerate(arrays)]
    builder.output("output", builder.op(op, *names, **attrs))
    graph = expand_decompositions(builder.build(), lambda name: name not in CLASS_OPS)
    assert not set(CLASS_OPS) & {node.op for node in graph.nodes}
    return run_reference(graph, {}, {f"input_{i}": a for i, a in enumerate(arrays)})["output"]


@pytest.mark.parametrize("op", CLASS_OPS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n, c, spatial", [(1, 1, ()), (33, 5, ()), (31, 129, ()), (3, 4, (2, 5))])
def test_class_losses_with_reductions_and_weights_match_pytorch(
        op: str, reduction: str, weighted: bool, n: int, c: int,
        spatial: tuple[int, ...]) -> None:
    scores = 3 * _normal(n, c, *spatial)
    if op == "nll_loss":
        scores = torch.log_softmax(torch.tensor(scores), 1).numpy()
    target = RNG.integers(0, c, (n, *spatial))
    target[RNG.random(target.shape) < 0.3] = 1 if c > 1 else -100
    weight = RNG.uniform(0.1, 2.0, c).astype(np.float32) if weighted else None
    ignore = 1 if c > 1 else -100
    for smoothing in ((0.0, 0.2) if op == "cross_entropy" else (0.0,)):
        attrs: dict[str, Any] = {"ignore_index": ignore, "reduction": reduction}
        if smoothing:
            attrs["label_smoothing"] = smoothing
        expected = _torch_loss(op, scores, target, weight, **attrs)
        arrays = [scores, target] + ([] if weight is None else [weight])
        reference = REGISTRY[op].reference(make_attrs(op, attrs, []), *arrays)
        assert reference.shape == expected.shape and reference.dtype == np.float32
        np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_decomposed(op, arrays, **attrs), expected, rtol=1e-4,
                                   atol=1e-5)


def test_class_weights_must_be_one_per_class() -> None:
    builder = GraphBuilder("w")
    scores = builder.input("x", "f32", ("N", 4))
    target = builder.input("t", "i64", ("N",))
    weight = builder.input("w", "f32", (3,))
    with pytest.raises(Exception, match="one per class"):
        builder.op("nll_loss", scores, target, weight)


@pytest.mark.parametrize("op", CLASS_OPS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_export_with_reduction_and_weights_matches_onnxruntime(op: str, reduction: str) -> None:
    model = export_op(op, {"reduction": reduction, "ignore_index": 2},
                      [TensorType("f32", ("N", 5)), TensorType("i64", ("N",)),
                       TensorType("f32", (5,))])
    scores, target = _normal(33, 5), RNG.integers(0, 5, 33)
    weight = RNG.uniform(0.1, 2.0, 5).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [i.name for i in model.graph.input]
    (actual,) = session.run(None, dict(zip(names, (scores, target, weight))))
    expected = _torch_loss(op, scores, target, weight, reduction=reduction, ignore_index=2)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type", ["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_import_with_reduction_weights_and_log_prob(op_type: str, reduction: str) -> None:
    outputs = ["y", "log_prob"] if op_type == "SoftmaxCrossEntropyLoss" else ["y"]
    node = helper.make_node(op_type, ["x", "t", "w"], outputs, reduction=reduction,
                            ignore_index=0)
    graph = helper.make_graph(
        [node], "loss",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4, 3]),
         helper.make_tensor_value_info("t", TensorProto.INT64, [6, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [_const("w", RNG.uniform(0.1, 2.0, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _compare(model, {"x": _normal(6, 4, 3), "t": RNG.integers(0, 4, (6, 3))})


@pytest.mark.sim
@pytest.mark.parametrize("level", [0, 2])
def test_weighted_and_unreduced_losses_on_the_simulator(level: int) -> None:
    from netc.codegen.emit import generate
    from netc.driver import CompileOptions, compile_graph, run_plan
    from tests.sim.codegen_support import simulator

    builder = GraphBuilder("losses")
    logits = builder.input("logits", "f32", ("N", 5, 3))
    target = builder.input("target", "i64", ("N", 3))
    weight = builder.input("weight", "f32", (5,))
    builder.output("none", builder.op("cross_entropy", logits, target, weight,
                                      reduction="none", ignore_index=1))
    builder.output("sum", builder.op("nll_loss", logits, target, weight, reduction="sum"))
    builder.output("smoothed", builder.op("cross_entropy", logits, target, weight,
                                          label_smoothing=0.3, ignore_index=1))
    graph = builder.build()
    for batch in (1, 31, 33):
        inputs = {"logits": 3 * _normal(batch, 5, 3), "target": RNG.integers(0, 5, (batch, 3)),
                  "weight": RNG.uniform(0.1, 2.0, 5).astype(np.float32)}
        inputs["logits"].flat[0] = -np.inf
        plan = compile_graph(graph, CompileOptions(level=level)).plan if level else \
            generate(graph)
        actual = run_plan(plan, simulator(), {}, inputs, poison=True)
        for name, value in run_reference(graph, {}, inputs).items():
            np.testing.assert_allclose(actual[name], value, rtol=2e-4, atol=1e-5, err_msg=name)
