"""Named dimensions anywhere, on the generated CUDA (cudasim): one compiled plan runs at any
sizes of every named dimension. Each network is compiled once (-O0 and -O2) and run at several
sizes (ragged ones among them) against the reference, outputs poisoned before every run; a
size beyond what a slice can take is refused before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.runtime.executor import PlanInputError, PlanRunner
from tests.sim.codegen_support import assert_close, simulator
from tests.sim.graph_builder import random_weights

pytestmark = pytest.mark.sim

NETWORKS = {
    # T inside: broadcast with a sliced parameter, arange, reductions and row ops over T.
    "positions": """network positions {
    input x: f32[N, T, 16]
    param pos: f32[1, 40, 16] = normal(std=0.5)
    h = x + pos[:, :T]
    output steps = arange(T)
    output over_t = sum(h, axis=1)
    output keep = amax(h, axis=[0, 1], keepdim=true)
    output soft = softmax(h, axis=1)
    output last = argmax(h, axis=1)
    output normed = layernorm(h) |> rmsnorm
}
""",
    # Attention with T on both sides of the score matrix, a causal triangle, heads moved.
    "attention": """network attention {
    input x: f32[N, T, 32]
    q = dense(x, 32) |> reshape([T, 4, 8]) |> transpose([0, 2, 1, 3])
    k = dense(x, 32) |> reshape([T, 4, 8]) |> transpose([0, 2, 3, 1])
    v = dense(x, 32) |> reshape([T, 4, 8]) |> transpose([0, 2, 1, 3])
    s = matmul(q, k) * 0.35
    output tri = triu(s, diagonal=1)
    a = softmax(s, axis=-1)
    output y = matmul(a, v) |> transpose([0, 2, 1, 3]) |> reshape([T, 32])
    output fused = attention(q, v, v, causal=true)
}
""",
    # Token ids through an embedding; concatenation and padding after T, a transpose of T.
    "layout": """network layout {
    input ids: i64[N, T]
    input x: f32[N, T, 8]
    e = embedding(ids, 50, 8)
    c = concat(e, x, axis=2)
    output padded = pad(c, [1, 2], mode="reflect")
    output moved = transpose(c, [2, 0, 1]) * 2.0
    output mixed = c |> dense(4) |> relu
}
""",
}
SIZES = ({"N": 1, "T": 1}, {"N": 2, "T": 7}, {"N": 3, "T": 33})


def _inputs(graph, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = {}
    for node in graph.inputs:
        shape = node.type.concrete(sizes)
        if node.type.dtype == "i64":
            inputs[node.id] = rng.integers(0, 50, shape, dtype=np.int64)
        else:
            inputs[node.id] = rng.standard_normal(shape).astype(np.float32)
    return inputs


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_one_plan_runs_every_size(name: str, level: int) -> None:
    graph = load_string(NETWORKS[name], f"{name}.net")
    rng = np.random.default_rng(len(name) + level)
    weights = random_weights(graph, rng)
    optimized = run_pipeline(graph, level, weights)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    assert set(plan.dims) == {"N", "T"}
    device = simulator()
    with PlanRunner(plan, device, optimized.weights, build_binary(plan, device)) as runner:
        for sizes in SIZES:
            inputs = _inputs(graph, sizes, rng)
            expected = run_reference(graph, weights, inputs)
            actual = runner.run(inputs)
            for output, value in expected.items():
                assert_close(f"{name} {output} at {sizes}", actual[output],
                             value.astype(np.float32), 1e-4, 1e-4)


def test_a_size_beyond_a_slice_is_refused_before_anything_runs() -> None:
    graph = load_string(NETWORKS["positions"], "positions.net")
    weights = random_weights(graph, np.random.default_rng(0))
    plan = generate(graph)
    device = simulator()
    with PlanRunner(plan, device, weights, build_binary(plan, device)) as runner:
        ok = {"x": np.zeros((1, 40, 16), np.float32)}
        assert runner.run(ok)["steps"].tolist() == list(range(40))
        with pytest.raises(PlanInputError, match=r"T=41 is larger than 40: .*\[:T\]"):
            runner.run({"x": np.zeros((1, 41, 16), np.float32)})
