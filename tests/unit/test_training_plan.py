"""The launch plan of a real training step (examples/train_resnet18.net at batch 8, as
`python benchmarks/arena.py --train` reports it): the backward pass uses the backward
kernels (conv2d's weight gradient as a split implicit GEMM, the max pool's gather), and the
memory plan reuses the step's intermediates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from netc.driver import CompileOptions, compile_graph
from netc.frontend import load_training
from netc.training import Trainer

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_resnet18.net"


@pytest.fixture(scope="module")
def compiled():
    return compile_graph(Trainer(load_training(EXAMPLE), {}).graph, CompileOptions(level=2))


def test_resnet18_step_uses_the_backward_kernels(compiled) -> None:
    families = Counter(launch.kernel.split("_f32")[0] for launch in compiled.plan.launches)
    assert families["netc_conv2d_wgrad"] == 20  # one per conv, no im2col copies
    assert families["netc_maxpool2d_grad"] == 1
    assert not any(name.startswith("netc_gather") for name in families)  # no strided slices
    # Training-mode batchnorm: statistics by reductions, then one normalising kernel a layer
    # (fused with what follows), nothing for a pass to fold.
    graph = compiled.optimized.graph
    ops = Counter(member.op for node in graph.nodes for member in (
        node.region.members if node.op == "fused" else (node,)))
    assert ops["batchnorm_train"] == 20
    assert not any(node.op == "batchnorm" for node in compiled.optimized.graph.nodes)


def test_resnet18_step_arena_reuses_intermediates(compiled) -> None:
    plan = compiled.plan
    memory = plan.memory_plan(plan.every_dim(8))
    # Measured 2026-12-03: 242 MB of arena for 689 MB of intermediates.
    assert memory.arena_bytes < 0.4 * memory.total_bytes
