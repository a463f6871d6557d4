"""groupnorm, instancenorm and rmsnorm: the reference against PyTorch, shape rules and their
diagnostics, ONNX export against onnxruntime, ONNX import (and batchnorm's momentum there)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import netc
from netc.diagnostics import CompileError
from netc.ir import Attrs, Graph
from netc.onnx.export import export_graph
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from netc.weights import init_weights

pytestmark = pytest.mark.unit

RAGGED = (1, 2, 31, 33, 127, 129)


def arrays(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def by_torch(op: str, x: np.ndarray, params: list[np.ndarray], **attrs: Any) -> np.ndarray:
    t = torch.from_numpy(x)
    p = [torch.from_numpy(a) for a in params]
    with torch.no_grad():
        if op == "groupnorm":
            return torch.nn.functional.group_norm(t, attrs["groups"], p[0], p[1],
                                                  eps=attrs.get("eps", 1e-5)).numpy()
        if op == "instancenorm":
            weight, bias = p if p else (None, None)
            return torch.nn.functional.instance_norm(t, weight=weight, bias=bias,
                                                     eps=attrs.get("eps", 1e-5)).numpy()
        return torch.nn.functional.rms_norm(t, (x.shape[-1],), weight=p[0],
                                            eps=attrs.get("eps", 1e-6)).numpy()


def reference(op: str, x: np.ndarray, params: list[np.ndarray], **attrs: Any) -> np.ndarray:
    opdef = REGISTRY[op]
    given = Attrs({spec.name: attrs.get(spec.name, spec.default) for spec in opdef.attrs})
    return opdef.reference(given, x, *params)


@given(groups=st.sampled_from((1, 2, 3)), per_group=st.sampled_from((1, 2, 4)),
       spatial=st.lists(st.sampled_from(RAGGED), max_size=2), batch=st.sampled_from((1, 3)),
       eps=st.sampled_from((1e-5, 1e-3, 0.0)), seed=st.integers(0, 1000))
@example(groups=2, per_group=2, spatial=[129, 2], batch=1, eps=1e-5, seed=0)
def test_groupnorm_is_pytorchs(groups: int, per_group: int, spatial: list[int], batch: int,
                               eps: float, seed: int) -> None:
    channels = groups * per_group
    if np.prod(spatial, dtype=int) * per_group == 1:
        spatial = [2]  # PyTorch refuses groups of one element
    x = arrays((batch, channels, *spatial), seed)
    params = [arrays((channels,), seed + 1), arrays((channels,), seed + 2)]
    np.testing.assert_allclose(reference("groupnorm", x, params, groups=groups, eps=eps),
                               by_torch("groupnorm", x, params, groups=groups, eps=eps),
                               rtol=1e-4, atol=1e-5)


@given(channels=st.sampled_from((1, 3, 4)), spatial=st.lists(st.sampled_from(RAGGED),
                                                              min_size=1, max_size=2),
       affine=st.booleans(), seed=st.integers(0, 1000))
@example(channels=3, spatial=[33, 31], affine=True, seed=0)
def test_instancenorm_is_pytorchs(channels: int, spatial: list[int], affine: bool,
                                  seed: int) -> None:
    if np.prod(spatial) == 1:
        spatial = [2]  # PyTorch refuses one element a channel
    x = arrays((2, channels, *spatial), seed)
    params = [arrays((channels,), seed + 1), arrays((channels,), seed + 2)] if affine else []
    np.testing.assert_allclose(reference("instancenorm", x, params, affine=affine),
                               by_torch("instancenorm", x, params), rtol=1e-4, atol=1e-5)


@given(shape=st.lists(st.sampled_from(RAGGED), min_size=1, max_size=3),
       eps=st.sampled_from((1e-6, 1e-5, 0.1)), seed=st.integers(0, 1000))
@example(shape=[129], eps=1e-6, seed=0)
def test_rmsnorm_is_pytorchs(shape: list[int], eps: float, seed: int) -> None:
    x = arrays(tuple(shape), seed)
    params = [arrays((shape[-1],), seed + 1)]
    np.testing.assert_allclose(reference("rmsnorm", x, params, eps=eps),
                               by_torch("rmsnorm", x, params, eps=eps), rtol=1e-5, atol=1e-6)


def test_the_language_takes_the_ops_with_pytorchs_parameters() -> None:
    model = netc.loads("""
network norms {
    input x: f32[N, 6, 4, 4]
    a = groupnorm(x, 3, name="gn")
    b = instancenorm(a, name="plain")
    c = instancenorm(b, eps=1e-3, affine=true, name="affine")
    output y = rmsnorm(c, name="rms")
}
""")
    graph = model.graph
    assert graph["gn"].attrs == Attrs(groups=3, eps=1e-5)
    assert graph["rms"].attrs["eps"] == pytest.approx(1e-6)
    shapes = {n.id: n.type.shape for n in graph.params}
    assert shapes == {"gn.weight": (6,), "gn.bias": (6,), "affine.weight": (6,),
                      "affine.bias": (6,), "rms.weight": (4,)}
    weights = model.init_weights()
    assert float(weights["gn.weight"].min()) == 1.0 and float(weights["gn.bias"].max()) == 0.0
    assert [layer.flops for layer in model.layers] == [7 * 96, 7 * 96, 7 * 96, 4 * 96]


@pytest.mark.parametrize("call, input_type, message", [
    ("groupnorm(x, 4)", "f32[N, 6, 5]",
     "`groupnorm` needs the channels (dim 1 of [N, 6, 5]) to split into 4 groups"),
    ("instancenorm(x)", "f32[N, 6]", "`instancenorm` expects a [N, C, ...] input of rank 3"),
    ("rmsnorm(x, eps=-1.0)", "f32[N, 6]", "must be at least 0.0"),
    ("groupnorm(x, 0)", "f32[N, 6, 5]", "must be at least 1"),
])
def test_misuse_is_a_diagnostic(call: str, input_type: str, message: str) -> None:
    with pytest.raises(CompileError) as caught:
        netc.loads(f"network t {{\n    input x: {input_type}\n    output y = {call}\n}}\n")
    assert message in caught.value.render()


# ONNX -------------------------------------------------------------------------------------


def one_op(op: str, shape: tuple[Any, ...], **attrs: Any) -> Graph:
    builder = GraphBuilder("t")
    builder.output("y", builder.op(op, builder.input("x", "f32", shape), name="norm", **attrs))
    return builder.build()


def nonunit_weights(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    return {name: arrays(array.shape, seed + i) if array.dtype == np.float32 else array
            for i, (name, array) in enumerate(init_weights(graph).items())}


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("op, shape, attrs", [
    ("groupnorm", ("N", 6, 5, 3), {"groups": 3}),
    ("groupnorm", ("N", 4, 33), {"groups": 1, "eps": 1e-3}),
    ("instancenorm", ("N", 3, 31), {}),
    ("instancenorm", ("N", 2, 4, 4), {"affine": True}),
    ("rmsnorm", ("N", 129), {}),
    ("rmsnorm", ("N", 3, 31), {"eps": 1e-5}),
])
def test_export_matches_onnxruntime_at_opset_17(op: str, shape: tuple[Any, ...],
                                                attrs: dict[str, Any]) -> None:
    graph = one_op(op, shape, **attrs)
    weights = nonunit_weights(graph, 3)
    model = export_graph(graph, weights)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    for batch in (1, 2):
        x = arrays((batch, *shape[1:]), batch)
        np.testing.assert_allclose(run_onnx(model, x),
                                   run_reference(graph, weights, {"x": x})["y"],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm_round_trips_through_onnx(affine: bool) -> None:
    graph = one_op("instancenorm", ("N", 3, 7), affine=affine)
    weights = nonunit_weights(graph, 5)
    imported = import_onnx(export_graph(graph, weights))
    assert [n.op for n in imported.graph.compute_nodes] == ["instancenorm"]
    x = arrays((2, 3, 7), 0)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               run_reference(graph, weights, {"x": x})["y"], rtol=1e-6,
                               atol=1e-6)


def onnx_model(op_type: str, opset: int, initializers: list[np.ndarray],
               shape: list[Any], **attrs: Any) -> onnx.ModelProto:
    names = [f"p{i}" for i in range(len(initializers))]
    node = helper.make_node(op_type, ["x", *names], ["y"], name="norm", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(a, n) for a, n in zip(initializers, names)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def test_group_normalization_imports_at_opset_21_as_onnxruntime_runs_it() -> None:
    scale, bias = arrays((6,), 1), arrays((6,), 2)
    model = onnx_model("GroupNormalization", 21, [scale, bias], ["N", 6, 5], num_groups=3,
                       epsilon=1e-4)
    imported = import_onnx(model)
    node = imported.graph["norm"]
    assert (node.op, node.attrs["groups"]) == ("groupnorm", 3)
    x = arrays((2, 6, 5), 0)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               run_onnx(model, x), rtol=1e-4, atol=1e-5)


def test_group_normalization_18_scales_per_group() -> None:
    scale, bias = arrays((3,), 1), arrays((3,), 2)
    imported = import_onnx(onnx_model("GroupNormalization", 18, [scale, bias], ["N", 6, 5],
                                      num_groups=3))
    assert imported.weights["norm.weight"].shape == (6,)
    x = arrays((2, 6, 5), 0)
    expected = by_torch("groupnorm", x, [np.repeat(scale, 2), np.repeat(bias, 2)], groups=3)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               expected, rtol=1e-4, atol=1e-5)


def test_rms_normalization_imports_as_onnxruntime_runs_it() -> None:
    model = onnx_model("RMSNormalization", 23, [arrays((5,), 1)], ["N", 3, 5])
    imported = import_onnx(model)
    assert imported.graph["norm"].op == "rmsnorm"
    assert imported.graph["norm"].attrs["eps"] == pytest.approx(1e-5)  # ONNX's default
    x = arrays((2, 3, 5), 0)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               run_onnx(model, x), rtol=1e-5, atol=1e-6)
    # Over the last two dimensions: reshaped into one around the rmsnorm.
    wide = onnx_model("RMSNormalization", 23, [arrays((3, 5), 1)], ["N", 3, 5], axis=1)
    imported = import_onnx(wide)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               run_onnx(wide, x), rtol=1e-5, atol=1e-6)


def test_instance_normalization_with_the_wrong_scale_is_refused() -> None:
    with pytest.raises(CompileError, match=r"do not match the 3 channels"):
        import_onnx(onnx_model("InstanceNormalization", 17,
                               [arrays((4,), 1), arrays((4,), 2)], ["N", 3, 5]))


def test_batchnorm_momentum_comes_from_onnx_as_pytorch_means_it() -> None:
    channels = [np.ones(2, np.float32)] * 4
    model = onnx_model("BatchNormalization", 17, channels, ["N", 2, 3], momentum=0.75)
    assert import_onnx(model).graph["norm"].attrs["momentum"] == pytest.approx(0.25)
