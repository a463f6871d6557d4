"""One way to apply an op: the front end and `GraphBuilder` (the ONNX importer's builder) go
through `netc.ops.apply` and agree on attributes, errors, types, parameters and node ids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Graph
from netc.onnx.export import export_graph
from netc.ops import REGISTRY
from netc.ops.apply import AttrError, bind_attrs
from netc.ops.builder import GraphBuilder
from netc.passes import run_pipeline
from netc.reference import random_inputs, run_reference
from netc.weights import init_weights

pytestmark = pytest.mark.unit


def _without_spans(graph: Graph) -> list[tuple[object, ...]]:
    return [(n.id, n.op, n.inputs, n.attrs, n.type, n.layer)
            for n in (dataclasses.replace(n, span=None) for n in graph.nodes)]


def test_source_and_builder_make_the_same_graph() -> None:
    text = """
    network same {
        input x: f32[N, 3, 16, 16]
        h = conv2d(x, 8, 3, padding="same") |> relu
        g = leaky_relu(h, alpha=1) * 0.5
        p = maxpool2d(g, 2)
        output y = softmax(dense(flatten(p), 10), axis=-1)
    }
    """
    parsed = load_string(text)
    builder = GraphBuilder("same")
    x = builder.input("x", "f32", ("N", 3, 16, 16))
    h = builder.op("relu", builder.op("conv2d", x, filters=8, kernel=3, padding="same"))
    g = builder.op("mul", builder.op("leaky_relu", h, alpha=1), builder.constant(0.5))
    p = builder.op("maxpool2d", g, kernel=2)
    y = builder.op("softmax", builder.op("dense", builder.op("flatten", p), units=10), axis=-1)
    builder.output("y", y)
    assert _without_spans(parsed) == _without_spans(builder.build())
    # The int given for a float attribute is a float in both, and ids are `<op>#<k>`.
    leaky = next(n for n in parsed.nodes if n.op == "leaky_relu")
    assert leaky.id == "leaky_relu#0" and isinstance(leaky.attrs["alpha"], float)


@pytest.mark.parametrize("op, values, code, text", [
    ("conv2d", {"filters": 4, "kernel": 3, "padding": "valid"}, "E0212",
     'attribute `padding` of `conv2d` must be one of "same", got "valid"'),
    ("conv2d", {"filters": 0, "kernel": 3}, "E0212",
     "attribute `filters` of `conv2d` must be at least 1, got 0"),
    ("dense", {"units": 2.5}, "E0205", "attribute `units` of `dense` must be an int, got the "
     "float 2.5"),
    ("dense", {}, "E0206", "`dense` needs the attribute `units`"),
    ("dense", {"unit": 3}, "E0204", "`dense` has no attribute `unit`"),
])
def test_builder_and_front_end_report_the_same_attribute_errors(
        op: str, values: dict[str, object], code: str, text: str) -> None:
    with pytest.raises(AttrError) as caught:
        bind_attrs(REGISTRY[op], values)
    assert (caught.value.code, caught.value.message) == (code, text)
    arguments = ", ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}"
                          for k, v in values.items())
    source = f"network n {{\n input x: f32[N, 3, 8, 8]\n output y = {op}(x{', ' if values else ''}" \
             f"{arguments})\n}}\n"
    with pytest.raises(CompileError) as front:
        load_string(source)
    first = front.value.diagnostics[0]
    assert (first.code, first.message) == (code, text)


def test_a_canonical_record_applies_again_unchanged() -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", ("N", 2, 9, 9))
    pool = builder.op("avgpool2d", x, kernel=3, padding=1)
    node = builder.nodes[-1]
    again = builder.op("avgpool2d", x, **dict(node.attrs))
    assert builder.nodes[-1].attrs == node.attrs and again != pool


def test_input_counts_are_checked_by_the_core() -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", ("N", 4))
    with pytest.raises(Exception, match="`add` takes 2 tensor inputs, got 1"):
        builder.op("add", x)


def test_a_fused_decomposed_op_exports_inside_its_group() -> None:
    # silu has no ONNX rule of its own: inside a conv epilogue it is exported as Mul(x,
    # Sigmoid(x)), by its decomposition, and still matches the reference.
    onnxruntime = pytest.importorskip("onnxruntime")
    graph = load_string("""
    network g {
        input x: f32[N, 3, 8, 8]
        output y = conv2d(x, 4, 3) |> silu
    }
    """)
    weights = init_weights(graph, seed=0)
    optimised = run_pipeline(graph, 2, weights).graph
    assert [n.op for n in optimised.compute_nodes] == ["fused"]
    model = export_graph(optimised, weights)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Sigmoid", "Mul"]
    inputs = random_inputs(graph, batch=2)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, inputs)[0],
                               run_reference(graph, weights, inputs)["y"], rtol=1e-5, atol=1e-5)
