"""fuse_attention: attention written out as matmul, scale, softmax and matmul becomes the
`attention` op (one fused kernel), with the scale the program gives; anything that would have
to store an intermediate, or is not that computation, stays as it is."""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.sim import CudaSim

pytestmark = pytest.mark.unit

TEMPLATE = """network hand {{
    input q: f32[N, 4, T, 8]
    input k: f32[N, 4, T, 8]
    input v: f32[N, 4, T, 8]
    s = matmul(q, transpose(k, [0, 1, 3, 2])){scale}
    a = softmax(s, axis={axis})
    output y = matmul(a, v){extra}
}}
"""


def _optimized(scale: str = " / 2.0", axis: str = "-1", extra: str = ""):
    graph = load_string(TEMPLATE.format(scale=scale, axis=axis, extra=extra), "hand.net")
    return graph, run_pipeline(graph, 2)


@pytest.mark.parametrize(("scale", "factor"), [(" / 2.0", 0.5), (" * 0.25", 0.25),
                                                ("", 1.0)])
def test_written_out_attention_becomes_one_kernel(scale: str, factor: float) -> None:
    graph, optimized = _optimized(scale)
    (node,) = optimized.graph.compute_nodes
    assert node.op == "attention" and node.attrs["scale"] == pytest.approx(factor)
    assert "fused 1 attention" in optimized.log()
    plan = generate(optimized.graph)
    assert len(plan.launches) == 1 and plan.kernels[0].startswith("netc_attention_")
    rng = np.random.default_rng(3)
    inputs = {name: rng.standard_normal((2, 4, 13, 8)).astype(np.float32) for name in "qkv"}
    np.testing.assert_allclose(run_plan(plan, CudaSim(), {}, inputs)["y"],
                               run_reference(graph, {}, inputs)["y"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("scale", "axis", "extra"), [
    (" / 2.0", "2", ""),                          # a softmax over the other axis
    (" / 2.0", "-1", "\n    output weights = a"),  # the weights are an output
    # scaled by a tensor, not a number
    (" * matmul(q, transpose(v, [0, 1, 3, 2]))", "-1", ""),
])
def test_anything_else_is_left_as_written(scale: str, axis: str, extra: str) -> None:
    _, optimized = _optimized(scale, axis, extra)
    assert all(node.op != "attention" for node in optimized.graph.compute_nodes)
    assert "fuse_attention: no change" in optimized.log()


def test_a_transpose_that_is_not_of_the_last_two_dims_is_left_alone() -> None:
    text = TEMPLATE.format(scale="", axis="-1", extra="").replace("[0, 1, 3, 2]", "[1, 0, 3, 2]")
    text = text.replace("f32[N, 4, T, 8]", "f32[4, 4, 6, 8]")
    optimized = run_pipeline(load_string(text, "hand.net"), 2)
    assert all(node.op != "attention" for node in optimized.graph.compute_nodes)
