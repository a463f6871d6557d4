"""Whole example networks: the reference backend against onnxruntime.

Two comparisons: every example through netc's ONNX exporter, and LeNet-5 and the MLP against
ONNX graphs written out by hand here, so the check does not rest on the exporter alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import netc
from netc.onnx.export import export_graph
from netc.reference import random_inputs
from tests.examples import weights_with_statistics

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = {  # example file: batch size used
    "mlp.net": 3, "lenet5.net": 2, "resnet18.net": 1, "vgg.net": 2, "transformer.net": 2,
    "vit_tiny.net": 2, "unet_small.net": 1,
}


def _run_onnx(model_proto: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> None:
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements differ; largest difference "
                           f"{np.abs(actual - expected).max():.3g}")


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_matches_onnxruntime(example: str) -> None:
    model = netc.load(EXAMPLES / example)
    weights = weights_with_statistics(model, seed=1)
    inputs = random_inputs(model.graph, CASES[example])
    ours = model.run(inputs, weights)
    theirs = _run_onnx(export_graph(model.graph, weights), inputs)
    for (name, value), other in zip(ours.items(), theirs, strict=True):
        assert value.shape == other.shape, name
        _assert_close(value, other, rtol=1e-4, atol=1e-4)


def _initializer(weights: dict[str, np.ndarray], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(weights[name], name)


def _hand_written(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], input_name: str,
                  input_shape: list[int | str], output: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [_initializer(weights, name) for name in weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mlp_matches_hand_written_onnx() -> None:
    model = netc.load(EXAMPLES / "mlp.net")
    weights = model.init_weights(seed=5)
    nodes = [
        helper.make_node("Gemm", ["pixels", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "fc2.weight", "fc2.bias"], ["h2"], transB=1),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "head.weight", "head.bias"], ["logits"], transB=1),
    ]
    proto = _hand_written(nodes, weights, "pixels", ["N", 784], "logits")
    inputs = random_inputs(model.graph, 4)
    _assert_close(model.run(inputs, weights)["logits"], _run_onnx(proto, inputs)[0], 1e-4, 1e-5)


def test_lenet5_matches_hand_written_onnx() -> None:
    model = netc.load(EXAMPLES / "lenet5.net")
    weights = model.init_weights(seed=6)
    nodes = [
        helper.make_node("Conv", ["image", "conv2d_0.weight", "conv2d_0.bias"], ["c1"],
                         kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2d_1.weight", "conv2d_1.bias"], ["c2"],
                         kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "dense_0.weight", "dense_0.bias"], ["d1"], transB=1),
        helper.make_node("Relu", ["d1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "dense_1.weight", "dense_1.bias"], ["d2"], transB=1),
        helper.make_node("Relu", ["d2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "dense_2.weight", "dense_2.bias"], ["logits"], transB=1),
    ]
    proto = _hand_written(nodes, weights, "image", ["N", 1, 28, 28], "logits")
    inputs = random_inputs(model.graph, 3)
    _assert_close(model.run(inputs, weights)["logits"], _run_onnx(proto, inputs)[0], 1e-4, 1e-5)
