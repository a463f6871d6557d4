"""fold_transposes: a matmul of a transpose (last two dims swapped) reads the operand in place
(`matmul_nt`, B as [N, K] rows) instead of launching a copy; the numbers stay the reference's
on cudasim, at ragged sizes, with batch broadcasting, in f32 and on tensor cores."""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import assert_close, simulator
from tests.sim.graph_builder import random_weights

pytestmark = pytest.mark.unit

BROADCAST = """network nt {{
    input a: {dtype}[2, 3, {m}, {k}]
    input b: {dtype}[3, {n}, {k}]
    output y = matmul(a, transpose(b, [0, 2, 1])) |> relu
}}
"""
TIED = """network tied {
    input ids: i64[N, T]
    h = embedding(ids, 50, 24, name="wte")
    output logits = matmul(layernorm(h), transpose(wte.weight, [1, 0]))
}
"""


def _check(source: str, weights_seed: int = 0, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    graph = load_string(source, "nt.net")
    rng = np.random.default_rng(weights_seed)
    weights = random_weights(graph, rng)
    optimized = run_pipeline(graph, 2, weights)
    assert all(node.op != "transpose" for node in optimized.graph.compute_nodes)
    assert "fold_transposes: folded 1 transpose into matmul operands (" in optimized.log()
    plan = generate(optimized.graph)
    assert not any("transpose" in kernel for kernel in plan.kernels)
    inputs = {}
    for node in graph.inputs:
        shape = node.type.concrete({"N": 2, "T": 5})
        inputs[node.id] = (rng.integers(0, 50, shape) if node.type.dtype == "i64"
                           else rng.standard_normal(shape).astype(np.float32))
    expected = run_reference(graph, weights, inputs)
    actual = run_plan(plan, simulator(), optimized.weights or {}, inputs)
    for name, value in expected.items():
        assert_close(name, actual[name], value.astype(np.float32), rtol, atol)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 31, 33), (33, 129, 16),
                                           (64, 64, 64)])
def test_a_broadcast_matmul_of_a_transpose_reads_b_in_place(m: int, n: int, k: int) -> None:
    _check(BROADCAST.format(dtype="f32", m=m, n=n, k=k))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_tensor_cores_read_b_in_place(dtype: str) -> None:
    # K * eps: the 16-bit output rounding dominates.
    _check(BROADCAST.format(dtype=dtype, m=33, n=40, k=24), rtol=2e-2, atol=2e-2)


def test_a_tied_output_layer_copies_nothing() -> None:
    _check(TIED, atol=1e-4)  # GPT's: the logits read the embedding table in place; |logits| ~ 7


def test_a_transpose_read_elsewhere_stays_and_the_matmul_still_folds() -> None:
    graph = load_string("""network shared {
    input a: f32[4, 6]
    input b: f32[5, 6]
    t = transpose(b, [1, 0])
    output y = matmul(a, t)
    output z = t * 2.0
}
""", "shared.net")
    optimized = run_pipeline(graph, 2)
    ops = [node.op for node in optimized.graph.compute_nodes]
    assert "matmul_nt" in ops and "transpose" in ops
    assert "fold_transposes: folded 1 transpose into matmul operands (0 copies gone)" in \
        optimized.log()


@pytest.mark.parametrize(("perm", "b_shape"), [("[1, 0, 2]", "[3, 6, 5]"),
                                              ("[2, 1, 0]", "[5, 3, 6]")])
def test_only_a_swap_of_the_last_two_dims_folds(perm: str, b_shape: str) -> None:
    graph = load_string(f"""network other {{
    input a: f32[6, 4, 3]
    input b: f32{b_shape}
    output y = matmul(a, transpose(b, {perm}))
}}
""", "other.net")
    optimized = run_pipeline(graph, 2)
    assert [node.op for node in optimized.graph.compute_nodes] == ["transpose", "matmul"]
