"""Nodes with several outputs: the IR carries them before any op needs them (training's
batchnorm gives its mean and variance too).

`center` is registered for the test only (`temporarily_registered`): output 0 is x minus the
mean of each row, output 1 that mean. The test shows it built with `GraphBuilder` and parsed
from `.net` source, verified, printed, read at both outputs, run by the reference interpreter,
and refused with a diagnostic (not a crash) by the optimisation passes and the CUDA compiler,
and with an `ExportError` by the ONNX exporter, which cannot take it yet. With a stand-in
lowering registered, code generation gives each output a buffer and the arena plans them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

import netc
from netc.codegen import kernels, pointwise
from netc.codegen.emit import generate, lower
from netc.codegen.tiles import BlockTile
from netc.diagnostics import CompileError
from netc.driver import compile_graph
from netc.ir import (
    Attrs,
    Graph,
    IRError,
    Node,
    TensorType,
    print_graph,
    split_value,
    value_ref,
)
from netc.ops import OpDef, ShapeError, temporarily_registered, verify
from netc.ops.builder import GraphBuilder
from netc.passes import run_pipeline
from netc.reference import run_reference

pytestmark = pytest.mark.unit


def _row_mean_type(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[TensorType, ...]:
    (x,) = inputs
    if x.rank < 1:
        raise ShapeError(f"`center` needs a tensor of rank 1 or more, got {x}")
    return (TensorType(x.dtype, x.shape[:-1]),)


def _center(attrs: Attrs, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=-1)
    return x - mean[..., None], mean


CENTER = OpDef(
    name="center",
    infer=lambda attrs, inputs: inputs[0],
    infer_extra=_row_mean_type,
    reference=_center,
    role="layout",
    kind="reduction",
    summary="test only: (x - mean of each row, the mean)",
)


def _built() -> tuple[Graph, str]:
    builder = GraphBuilder("two_outputs")
    x = builder.input("x", "f32", ("N", 8))
    centered = builder.op("center", x)
    mean = value_ref(centered, 1)
    assert builder.outputs_of(centered) == (centered, mean)
    builder.output("y", builder.op("relu", centered))
    builder.output("mean", mean)
    builder.output("twice", builder.op("mul", mean, builder.constant(2.0)))
    return builder.build(), centered


def _x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32) + 1


def test_a_node_of_two_outputs_is_built_verified_printed_and_run() -> None:
    with temporarily_registered(CENTER):
        graph, centered = _built()  # GraphBuilder.build verifies
        node = graph[centered]
        assert node.types == (TensorType("f32", ("N", 8)), TensorType("f32", ("N",)))
        assert node.values == (centered, f"{centered}:1")
        assert split_value(f"{centered}:1") == (centered, 1)
        assert graph.value_type(f"{centered}:1") == TensorType("f32", ("N",))
        assert graph.producer(f"{centered}:1") is node
        # Graph.users is keyed by node: a read of any output is a use of the node.
        assert [user.op for user in graph.users()[centered]] == ["relu", "mul"]

        text = print_graph(graph)
        assert f"%{centered}: (f32[N, 8], f32[N]) = center(%x)" in text
        assert f"mul(%{centered}:1, %" in text
        assert f"output mean = %{centered}:1" in text
        assert print_graph(graph) == text

        x = _x()
        outputs = run_reference(graph, {}, {"x": x})
        mean = x.mean(axis=-1)
        np.testing.assert_allclose(outputs["mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(outputs["twice"], 2 * mean, rtol=1e-6)
        np.testing.assert_allclose(outputs["y"], np.maximum(x - mean[:, None], 0), rtol=1e-6,
                                   atol=1e-6)
        assert netc.Model(graph).compile("reference")({"x": x})["mean"].shape == (3,)


def test_the_verifier_checks_every_output() -> None:
    with temporarily_registered(CENTER):
        graph, centered = _built()

        def with_node(**changes: object) -> Graph:
            nodes = tuple(dataclasses.replace(n, **changes) if n.id == centered else n
                          for n in graph.nodes)
            return Graph(graph.name, nodes, graph.outputs)

        with pytest.raises(IRError, match="but its inputs give"):
            verify(with_node(extra_types=()))
        with pytest.raises(IRError, match="but its inputs give"):
            verify(with_node(extra_types=(TensorType("f32", ("N", 8)),)))
        with pytest.raises(IRError, match="unknown value 'center#0:2'"):
            verify(Graph(graph.name, graph.nodes, (*graph.outputs, ("bad", f"{centered}:2"))))
        bad = tuple(dataclasses.replace(n, id="x:1") if n.op == "input" else n
                    for n in graph.nodes)
        with pytest.raises(IRError, match="holds ':'"):
            verify(Graph(graph.name, bad, graph.outputs))


def test_a_node_of_two_outputs_is_parsed_from_source() -> None:
    with temporarily_registered(CENTER):
        model = netc.loads("network n {\n    input x: f32[N, 8]\n    output y = center(x)\n}\n")
        (node,) = model.graph.compute_nodes
        assert node.extra_types == (TensorType("f32", ("N",)),)
        x = _x()
        y = model.compile("reference")({"x": x})["y"]
        np.testing.assert_allclose(y, x - x.mean(axis=-1, keepdims=True), rtol=1e-6, atol=1e-6)


def test_backends_that_cannot_lower_it_refuse_it_cleanly() -> None:
    onnx_export = pytest.importorskip("netc.onnx.export")
    with temporarily_registered(CENTER):
        graph, centered = _built()
        assert run_pipeline(graph, 0).graph is graph
        cases = [("E0450", lambda: generate(graph)), ("E0450", lambda: compile_graph(graph)),
                 ("E0450", lambda: netc.Model(graph).compile("cudasim")),
                 ("E0444", lambda: run_pipeline(graph, 1)),
                 ("E0444", lambda: run_pipeline(graph, 2))]
        for code, compile_it in cases:
            with pytest.raises(CompileError) as caught:
                compile_it()
            (problem,) = caught.value.diagnostics
            assert problem.code == code and f"({centered}) has 2 outputs" in problem.message
        with pytest.raises(onnx_export.ExportError, match="has 2 outputs"):
            onnx_export.export_graph(graph, {})


def _copy_lowering(ctx: kernels.LoweringContext, node: Node,
                   fusion: kernels.Fusion) -> list[kernels.KernelLaunch]:
    """A stand-in lowering that writes each output with a gather of the input (the values are
    wrong; only the buffers matter here)."""
    source = ctx.buffer(node.inputs[0])
    return [kernels.elementwise_launch(node, pointwise.gather(kind.shape, source, (1,) * kind.rank),
                                       BlockTile(), ctx.buffer(value), kind.shape)
            for value, kind in zip(node.values, node.types)]


def test_code_generation_gives_every_output_a_buffer_and_the_arena_plans_them() -> None:
    with temporarily_registered(CENTER):
        kernels.lowers("center", family="test_center")(_copy_lowering)
        try:
            graph, centered = _built()
            lowered = lower(graph)
            first, second = lowered.buffer_of[centered], lowered.buffer_of[f"{centered}:1"]
            by_name = {buffer.name: buffer for buffer in lowered.buffers}
            assert first != second
            assert (by_name[first].shape, by_name[second].shape) == (("N", 8), ("N",))
            assert by_name[second].role == "output" and by_name[first].role == "intermediate"
            assert by_name[first].node == by_name[second].node == centered
            plan = generate(graph)
            assert dict(plan.outputs)["mean"] == second
            placed = {buffer.name: buffer for buffer in plan.buffers}
            assert placed[first].in_arena
        finally:
            del kernels._REGISTERED.entries["center"]
