"""A pointwise op added in one registry entry works end to end, with no other edit.

`softsign` (x / (1 + |x|)) is registered for the test only (`temporarily_registered`): one
`OpDef` with its shape rule, NumPy reference, CUDA expression and ONNX form. The test shows it
parsed from `.net` source, run by the reference interpreter, fused and lowered to CUDA and run
by the simulator (unoptimised and at -O2), exported to ONNX and run by onnxruntime, and
imported back from ONNX; and that after the `with` block the language no longer knows it. A
second throwaway op, given only as a decomposition into existing ops, runs on every backend
through that decomposition, and fusion puts it in one kernel like any pointwise op; a third,
a composite `layout` op, is expanded into its parts before lowering.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import netc
from netc.codegen.emit import generate
from netc.diagnostics import CompileError
from netc.ir import Attrs
from netc.onnx.export import export_graph
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, CudaExpression, OnnxForm, OpDef, temporarily_registered
from netc.ops.registry import Composer, per_element_flops, same_type
from netc.passes import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import assert_close
from tests.unit.test_op_completeness import missing_pieces

pytestmark = pytest.mark.sim

SOFTSIGN = OpDef(
    name="softsign",
    infer=same_type,
    reference=lambda attrs, x: x / (np.float32(1) + np.abs(x)),
    flops=per_element_flops(3),
    role="pointwise",
    expression=CudaExpression("{0} / (1.0f + fabsf({0}))"),
    onnx=OnnxForm("Softsign"),
    summary="x / (1 + |x|)",
)

SOURCE = """
network throwaway {
    input x: f32[N, 3, 8, 8]
    h = conv2d(x, 4, 3, padding=1)
    output gated = softsign(h)
    output scaled = softsign(x) * 0.5 + x
}
"""


def _softsign(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.abs(x))


def _inputs(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32) * 3}


def test_a_pointwise_op_in_one_entry_runs_on_every_backend() -> None:
    with temporarily_registered(SOFTSIGN):
        # Parsed, typed and complete by the registry's own check.
        model = netc.loads(SOURCE)
        assert [n.op for n in model.graph.compute_nodes].count("softsign") == 2
        assert missing_pieces(SOFTSIGN) == ["`softsign` has no row in docs/ops.md"]
        weights = model.init_weights(seed=1)
        inputs = _inputs()

        # The reference interpreter runs the entry's reference.
        expected = run_reference(model.graph, weights, inputs)
        np.testing.assert_allclose(expected["scaled"],
                                   _softsign(inputs["x"]) * 0.5 + inputs["x"], rtol=1e-6)
        assert np.all(np.abs(expected["gated"]) < 1)

        # Lowered to CUDA from the entry's expression, alone and fused into a conv epilogue.
        plain = generate(model.graph)
        assert "fabsf(" in plain.source
        optimised = run_pipeline(model.graph, level=2).graph
        fused = [n for n in optimised.compute_nodes if n.op == "fused"]
        assert {n.region.kind for n in fused if n.region} == {"conv_epilogue", "elementwise"}
        assert all(any(b.op == "softsign" for b in n.members) for n in fused)
        for level in (0, 2):
            actual = model.compile("cudasim", weights, level=level)(inputs)
            for name, value in expected.items():
                assert_close(f"{name} at -O{level}", actual[name], value, 1e-5, 1e-5)

        # Exported as the entry's ONNX node, run by onnxruntime, and imported back.
        onnxruntime = pytest.importorskip("onnxruntime")
        exported = export_graph(model.graph, weights)
        assert [n.op_type for n in exported.graph.node].count("Softsign") == 2
        session = onnxruntime.InferenceSession(exported.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for name, value in zip(names, session.run(None, inputs)):
            assert_close(f"onnxruntime {name}", value, expected[name], 1e-5, 1e-6)
        imported = import_onnx(exported)
        assert imported.text.count("softsign(") == 2
        again = run_reference(imported.graph, imported.weights, inputs)
        for name, value in expected.items():
            assert_close(f"imported {name}", again[imported.outputs[name]], value, 1e-6, 1e-6)

    # Undone: the language no longer knows the op, and nothing else kept it.
    assert "softsign" not in REGISTRY
    with pytest.raises(CompileError, match="E0201"):
        netc.loads(SOURCE)


def _gate(builder: Composer, attrs: Attrs, x: str) -> str:
    dtype = builder.type_of(x).dtype
    steep = builder.op("mul", x, builder.constant(attrs["beta"], dtype))
    return builder.op("mul", x, builder.op("sigmoid", steep))


SWISH = OpDef(
    name="swish_beta",
    infer=same_type,
    attrs=(netc.ops.AttrSpec("beta", "float", default=2.0),),
    decompose=_gate,
    summary="x * sigmoid(beta * x), only as a decomposition",
)


def test_an_op_given_as_a_decomposition_runs_on_every_backend() -> None:
    source = """
    network composite {
        input x: f32[N, 16]
        output y = swish_beta(dense(x, 8), beta=1.5)
    }
    """
    with temporarily_registered(SWISH):
        assert [m for m in missing_pieces(SWISH) if "CUDA" in m or "export" in m] == []
        model = netc.loads(source)
        weights = model.init_weights(seed=2)
        inputs = {"x": np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)}
        expected = run_reference(model.graph, weights, inputs)["y"]
        dense = inputs["x"] @ weights["dense_0.weight"].T + weights["dense_0.bias"]
        np.testing.assert_allclose(expected, dense / (1 + np.exp(-1.5 * dense)), rtol=1e-5,
                                   atol=1e-6)
        # Alone, one elementwise kernel computes the decomposition inline; at -O2 it is the
        # dense kernel's epilogue.
        plan = generate(model.graph)
        assert len(plan.launches) == 2 and "expf(" in plan.source
        optimised = run_pipeline(model.graph, level=2).graph
        assert [(n.op, n.region and n.region.kind) for n in optimised.compute_nodes] == [
            ("fused", "gemm_epilogue")]
        for level in (0, 2):
            actual = model.compile("cudasim", weights, level=level)(inputs)["y"]
            assert_close(f"y at -O{level}", actual, expected, 1e-5, 1e-5)
        onnxruntime = pytest.importorskip("onnxruntime")
        exported = export_graph(model.graph, weights)
        assert [n.op_type for n in exported.graph.node][-3:] == ["Mul", "Sigmoid", "Mul"]
        session = onnxruntime.InferenceSession(exported.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        assert_close("onnxruntime y", session.run(None, inputs)[0], expected, 1e-5, 1e-6)
    assert "swish_beta" not in REGISTRY


def _transposed_relu(builder: Composer, attrs: Attrs, x: str) -> str:
    return builder.op("relu", builder.op("transpose", x, perm=(0, 1, 3, 2)))


TRANSPOSED_RELU = OpDef(
    name="transposed_relu",
    infer=lambda attrs, inputs: dataclasses.replace(
        inputs[0], shape=(*inputs[0].shape[:2], inputs[0].shape[3], inputs[0].shape[2])),
    kind="layout",
    role="layout",
    decompose=_transposed_relu,
    summary="relu of x with H and W swapped, only as a decomposition",
)


def test_a_composite_op_that_is_not_pointwise_is_expanded_before_lowering() -> None:
    source = """
    network swapped {
        input x: f32[N, 2, 3, 5]
        output y = transposed_relu(x) * 2.0
    }
    """
    with temporarily_registered(TRANSPOSED_RELU):
        model = netc.loads(source)
        inputs = {"x": np.random.default_rng(4).standard_normal((2, 2, 3, 5)).astype(np.float32)}
        expected = run_reference(model.graph, {}, inputs)["y"]
        np.testing.assert_array_equal(
            expected, np.maximum(inputs["x"].transpose(0, 1, 3, 2), 0) * np.float32(2))
        plan = generate(model.graph)
        assert len(plan.launches) == 3  # the transpose, the relu, the multiplication
        for level in (0, 2):
            actual = model.compile("cudasim", {}, level=level)(inputs)["y"]
            assert_close(f"y at -O{level}", actual, expected, 0, 0)
        exported = export_graph(model.graph, {})
        assert [n.op_type for n in exported.graph.node] == ["Transpose", "Relu", "Mul"]
