"""The ONNX exporter: whole graphs against the reference interpreter, names, dtypes, batch.

Graphs are built with `GraphBuilder` straight from the op registry, so these tests need no
front end. Every exported model passes `onnx.checker` with `full_check` (shape inference
included, which also cross-checks netc's shape rules against ONNX's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, numpy_helper

from netc.dtypes import f32_to_bf16_bits
from netc.ir import Graph, Region
from netc.onnx.export import (
    IR_VERSION,
    LOWERINGS,
    OPSET,
    ExportError,
    export_graph,
    export_op,
    save_model,
)
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from netc.weights import init_weights

from .test_ops_reference import assert_close, nonzero

pytestmark = pytest.mark.unit


def lenet(dtype: str = "f32") -> Graph:
    b = GraphBuilder("lenet5")
    x = b.input("image", dtype, ("N", 1, 28, 28))
    x = b.op("maxpool2d", b.op("relu", b.op("conv2d", x, filters=6, kernel=5, padding=2)), kernel=2)
    x = b.op("maxpool2d", b.op("relu", b.op("conv2d", x, filters=16, kernel=5)), kernel=2)
    x = b.op("relu", b.op("dense", b.op("flatten", x), units=120))
    x = b.op("dropout", b.op("relu", b.op("dense", x, units=84)), p=0.2)
    b.output("logits", b.op("dense", x, units=10))
    return b.build()


def residual(dtype: str = "f32") -> Graph:
    """A ResNet stem and downsampling block, with avgpool, "same" and grouped convs."""
    b = GraphBuilder("residual")
    x = b.input("image", dtype, ("N", 3, 33, 31))

    def conv_bn(value: str, filters: int, **attrs: object) -> str:
        return b.op("batchnorm", b.op("conv2d", value, filters=filters, bias=False, **attrs))

    x = b.op("relu", conv_bn(x, 8, kernel=7, stride=2, padding=3))
    x = b.op("maxpool2d", x, kernel=3, stride=2, padding=1)
    y = b.op("relu", conv_bn(x, 16, kernel=3, stride=2, padding=1))
    y = conv_bn(y, 16, kernel=(2, 4), padding="same", groups=4)
    shortcut = conv_bn(x, 16, kernel=1, stride=2)
    x = b.op("leaky_relu", b.op("add", y, shortcut), alpha=0.1)
    x = b.op("avgpool2d", x, kernel=3, stride=1, padding=1)
    b.output("features", x)
    x = b.op("flatten", b.op("global_avgpool", x))
    b.output("logits", b.op("log_softmax", b.op("dense", x, units=10)))
    return b.build()


def encoder(dtype: str = "f32") -> Graph:
    """One pre-norm transformer block: every layout op, matmul, softmax, gelu, constants."""
    b = GraphBuilder("encoder")
    tokens = b.input("tokens", dtype, ("N", 16, 32))

    def heads(value: str, perm: list[int]) -> str:
        return b.op("transpose", b.op("reshape", b.op("dense", value, units=32), dims=[16, 4, 8]),
                    perm=perm)

    h = b.op("layernorm", tokens)
    q, k, v = heads(h, [0, 2, 1, 3]), heads(h, [0, 2, 3, 1]), heads(h, [0, 2, 1, 3])
    scores = b.op("mul", b.op("matmul", q, k), b.constant(1 / np.sqrt(8), dtype))
    p = b.op("softmax", scores, axis=-1)
    y = b.op("reshape", b.op("transpose", b.op("matmul", p, v), perm=[0, 2, 1, 3]), dims=[-1, 32])
    x = b.op("add", tokens, b.op("dense", y, units=32))
    hidden = b.op("gelu", b.op("dense", b.op("layernorm", x), units=64))
    gate = b.op("sigmoid", b.op("sub", hidden, b.constant(0.5, dtype)))
    mixed = b.op("concat", b.op("silu", hidden), b.op("tanh", gate), axis=-1)
    x = b.op("add", x, b.op("dense", mixed, units=32))
    b.output("hidden", b.op("layernorm", x))
    return b.build()


GRAPHS: dict[str, Callable[..., Graph]] = {"lenet": lenet, "residual": residual,
                                           "encoder": encoder}


def random_weights(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    """PyTorch's initialisation, with random norm statistics so that they do something."""
    rng = np.random.default_rng(seed)
    weights = init_weights(graph, seed)
    for name, value in weights.items():
        if name.endswith("running_var") or ("norm_" in name and name.endswith(".weight")):
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif name.endswith(("running_mean", ".bias")):
            weights[name] = rng.normal(0, 0.2, value.shape).astype(np.float32)
    return weights


def random_inputs(graph: Graph, batch: int, seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {node.id: nonzero(rng, node.type.concrete({d: batch for d in node.type.symbolic}))
            for node in graph.inputs}


def run_onnx(model: onnx.ModelProto | str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_export_matches_reference(name: str, batch: int) -> None:
    graph = GRAPHS[name]()
    weights = random_weights(graph)
    model = export_graph(graph, weights)
    onnx.checker.check_model(model, full_check=True)
    inputs = random_inputs(graph, batch)
    expected = run_reference(graph, weights, inputs)
    actual = run_onnx(model, inputs)
    assert list(actual) == [output for output, _ in graph.outputs]
    for output, value in expected.items():
        assert_close(actual[output], value, rtol=1e-4, atol=1e-5, what=f"{name} {output}: ")


def test_one_model_serves_every_batch_size() -> None:
    graph = residual()
    model = export_graph(graph, random_weights(graph))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "N", value.name
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim[1:])
    small, large = random_inputs(graph, 1), random_inputs(graph, 5)
    assert run_onnx(model, small)["logits"].shape == (1, 10)
    assert run_onnx(model, large)["logits"].shape == (5, 10)
    # The reshape copies the batch (0) instead of baking in the size seen at export.
    shapes = [numpy_helper.to_array(t) for t in export_graph(encoder(), random_weights(encoder()))
              .graph.initializer if t.data_type == TensorProto.INT64]
    assert shapes and all(shape[0] == 0 for shape in shapes)


def test_names_and_layouts_follow_the_graph() -> None:
    graph = lenet()
    weights = random_weights(graph)
    model = export_graph(graph, weights)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(initializers) == {n.id for n in graph.params}
    for name, value in weights.items():
        np.testing.assert_array_equal(initializers[name], value)
    assert initializers["conv2d_0.weight"].shape == (6, 1, 5, 5)
    assert initializers["dense_0.weight"].shape == (120, 400)
    assert (model.opset_import[0].domain, model.opset_import[0].version) == ("", OPSET)
    assert model.ir_version == IR_VERSION


def test_lowering_details() -> None:
    model = export_graph(residual(), random_weights(residual()))
    nodes = {node.op_type: node for node in model.graph.node}
    attrs = {op: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
             for op, node in nodes.items()}
    # Written out: ONNX's default (0) is not PyTorch's and the language's (v2) count.
    assert attrs["AveragePool"]["count_include_pad"] == 1
    assert attrs["AveragePool"]["pads"] == [1, 1, 1, 1]
    assert attrs["MaxPool"]["strides"] == [2, 2]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    same = {a.name: onnx.helper.get_attribute_value(a) for a in convs[2].attribute}
    # kernel [2, 4] "same": (top, left, bottom, right) = (0, 1, 1, 2), as PyTorch pads.
    assert same["pads"] == [0, 1, 1, 2] and same["group"] == 4
    encoder_ops = {node.op_type for node in export_graph(encoder(), random_weights(encoder()))
                   .graph.node}
    assert "Erf" in encoder_ops and "Gelu" not in encoder_ops
    assert {"LayerNormalization", "Softmax", "Concat", "Reshape", "Transpose"} <= encoder_ops


def test_every_op_has_a_lowering() -> None:
    assert set(LOWERINGS) == set(REGISTRY)


def test_fused_groups_export_as_their_body() -> None:
    b = GraphBuilder("fusable")
    x = b.input("x", "f32", ("N", 3, 9, 9))
    main = b.op("conv2d", x, filters=4, kernel=3, padding=1)
    shortcut = b.op("conv2d", x, filters=4, kernel=1)
    b.output("y", b.op("relu", b.op("add", main, shortcut)))
    unfused = b.build()
    weights = random_weights(unfused)
    # Group the first conv, the add and the relu by hand, as the fusion pass would.
    conv, other, add, relu = unfused.compute_nodes
    outer = (x, *conv.inputs[1:], other.id)
    body = (
        replace(conv, inputs=("$0", "$1", "$2")),
        replace(add, inputs=(conv.id, "$3")),
        replace(relu, inputs=(add.id,)),
    )
    group = Region(body, conv.id, "conv_epilogue").fused_node("group", outer)
    nodes = [n for n in unfused.nodes if n not in (conv, add, relu)] + [group]
    fused = Graph("fused", tuple(nodes), (("y", "group"),))
    model = export_graph(fused, weights)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Conv", "Add", "Relu"]
    inputs = random_inputs(unfused, 2)
    assert_close(run_onnx(model, inputs)["y"], run_reference(unfused, weights, inputs)["y"],
                 1e-5, 1e-5)


def test_outputs_that_alias_inputs_or_each_other() -> None:
    b = GraphBuilder("aliases")
    x = b.input("x", "f32", ("N", 4))
    y = b.op("relu", x)
    z = b.op("tanh", y)
    b.output("copy", x)
    # An output named like another value's id must not capture that value.
    b.output(y, z)
    b.output("again", z)
    graph = b.build()
    model = export_graph(graph)
    inputs = {"x": nonzero(np.random.default_rng(0), (2, 4))}
    actual = run_onnx(model, inputs)
    for name, value in run_reference(graph, {}, inputs).items():
        assert_close(actual[name], value, 1e-6, 1e-6, what=f"{name}: ")


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_dtypes(dtype: str) -> None:
    onnx_type = {"f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[dtype]
    graph = encoder(dtype)
    weights = random_weights(graph)
    model = export_graph(graph, weights)
    onnx.checker.check_model(model, full_check=True)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        assert value.type.tensor_type.elem_type == onnx_type, value.name
    floats = [t for t in model.graph.initializer if t.data_type != TensorProto.INT64]
    assert floats and all(t.data_type == onnx_type for t in floats)
    stored = next(t for t in floats if t.name == "dense_0.weight")
    if dtype == "bf16":
        expected_bits = f32_to_bf16_bits(weights["dense_0.weight"])
        np.testing.assert_array_equal(np.frombuffer(stored.raw_data, "<u2"), expected_bits.ravel())
        return
    np.testing.assert_array_equal(numpy_helper.to_array(stored),
                                  weights["dense_0.weight"].astype(np.float16))
    inputs = random_inputs(graph, 2)
    actual = run_onnx(model, {k: v.astype(np.float16) for k, v in inputs.items()})["hidden"]
    expected = run_reference(graph, weights, inputs)["hidden"]
    # Both round every value to f16, but at different points (onnxruntime computes some ops
    # in f32 internally): differences of a few f16 ulps (2^-10 relative) after ~30 ops.
    assert_close(actual.astype(np.float32), expected, rtol=2e-2, atol=2e-2, what="f16: ")


def test_without_weights_params_are_inputs() -> None:
    graph = lenet()
    model = export_graph(graph)
    assert not model.graph.initializer
    assert [i.name for i in model.graph.input] == ["image", *(n.id for n in graph.params)]
    weights = random_weights(graph)
    inputs = random_inputs(graph, 2)
    actual = run_onnx(model, {**inputs, **weights})["logits"]
    assert_close(actual, run_reference(graph, weights, inputs)["logits"], 1e-4, 1e-5)


def test_bad_weights_are_reported() -> None:
    graph = lenet()
    weights = random_weights(graph)
    with pytest.raises(ExportError, match=r"dense_1\.bias"):
        export_graph(graph, {k: v for k, v in weights.items() if k != "dense_1.bias"})
    with pytest.raises(ExportError, match=r"conv2d_0\.weight.*\[6, 1, 3, 3\]"):
        export_graph(graph, {**weights, "conv2d_0.weight": np.zeros((6, 1, 3, 3), np.float32)})


def test_large_weights_go_to_external_data(tmp_path: Path) -> None:
    b = GraphBuilder("wide")
    x = b.input("x", "f32", ("N", 1024))
    b.output("y", b.op("dense", b.op("dense", x, units=512), units=8))
    graph = b.build()
    weights = random_weights(graph)
    model = export_graph(graph, weights)
    path = tmp_path / "wide.onnx"
    for _ in range(2):  # saving twice must not append to the data file
        save_model(model, path, external_data_threshold_bytes=1 << 20)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.onnx", "wide.onnx.data"]
        assert (tmp_path / "wide.onnx.data").stat().st_size == 512 * 1024 * 4
        assert path.stat().st_size < 64 * 1024
    assert any(t.data_location == TensorProto.DEFAULT for t in model.graph.initializer), \
        "the caller's model must stay self-contained"
    onnx.checker.check_model(str(path), full_check=True)
    inputs = random_inputs(graph, 3)
    assert_close(run_onnx(str(path), inputs)["y"], run_onnx(model, inputs)["y"], 0, 0)
    assert_close(run_onnx(str(path), inputs)["y"], run_reference(graph, weights, inputs)["y"],
                 1e-4, 1e-5)
    save_model(model, path, external_data_threshold_bytes=None)
    assert [p.name for p in tmp_path.iterdir()] == ["wide.onnx"]


def test_export_op_builds_a_single_op_model() -> None:
    from netc.ir import TensorType

    model = export_op("conv2d", {"filters": 4, "kernel": 3, "padding": "same", "bias": False},
                      [TensorType("f32", ("N", 2, 5, 5))],
                      {"weight": np.ones((4, 2, 3, 3), np.float32)})
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert [i.name for i in model.graph.input] == ["input_0"]
    assert [o.name for o in model.graph.output] == ["output"]
    y = run_onnx(model, {"input_0": np.ones((1, 2, 5, 5), np.float32)})["output"]
    assert y[0, 0, 2, 2] == 18 and y[0, 0, 0, 0] == 8
