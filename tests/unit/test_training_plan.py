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
    # Training-mode batchnorm is ordinary ops: nothing for a pass to fold.
    assert not any(node.op == "batchnorm" for node in compiled.optimized.graph.nodes)


def test_resnet18_step_arena_reuses_intermediates(compiled) -> None:
    plan = compiled.plan
    memory = plan.memory_plan(plan.every_dim(8))
    # Measured 2026-12-03: 321 MB of arena for 1,119 MB of intermediates.
    assert memory.arena_bytes < 0.35 * memory.total_bytes
