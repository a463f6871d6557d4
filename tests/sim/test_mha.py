"""`multihead_attention` on cudasim: the CUDA code generator computes its decomposition
(matmuls, reshapes, transposes, `attention`); every output must match the NumPy reference
(itself checked against PyTorch in tests/unit/test_mha.py). The sequence length is fixed: a
network input `f32[N, L, E]` names only its first dimension."""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph
from netc.reference import run_reference
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, simulator
from tests.sim.graph_builder import random_inputs, random_weights
from tests.unit.test_mha import mha_graph

pytestmark = pytest.mark.sim


def check_on_cudasim(graph: Graph, batch: int, seed: int) -> None:
    """The generated CUDA on cudasim (outputs poisoned first) against the reference. (Not
    `check_graph`: causal attention's broadcast `masked_fill` is not in
    tests/sim/variants.py's kernel catalog yet.)"""
    rng = np.random.default_rng(seed)
    weights = random_weights(graph, rng)
    for name in weights:  # PyTorch starts the biases at 0: nonzero ones show a misplaced add
        if "bias" in name:
            weights[name] = rng.uniform(-0.5, 0.5, weights[name].shape).astype(np.float32)
    inputs = random_inputs(graph, batch, rng)
    actual = run_plan(generate(graph), simulator(), weights, inputs, poison=True)["y"]
    assert_close("y", actual, run_reference(graph, weights, inputs)["y"], *TOLERANCE["f32"])


@pytest.mark.parametrize("length,embed,heads", [(8, 32, 4), (1, 16, 2), (33, 12, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_the_reference_on_cudasim(length: int, embed: int, heads: int,
                                              causal: bool) -> None:
    check_on_cudasim(mha_graph(embed, heads, causal, length=length), batch=2, seed=length)


def test_mha_without_bias_on_cudasim() -> None:
    check_on_cudasim(mha_graph(16, 4, causal=True, bias=False, length=5), batch=3, seed=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_dynamic_sequence_length_runs_on_cudasim(batch: int) -> None:
    # Every named dimension (N and T here, both `batch`) is a run-time size of the kernels.
    plan = check_graph(mha_graph(16, 2, causal=True), batch=batch)
    assert any(name.startswith("netc_attention_") for name in plan.kernels)
