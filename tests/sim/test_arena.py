"""Networks run from one arena on the simulator: buffers that share memory, outputs written in
place over dying inputs, offsets scaled with the batch. Each -O2 plan must compute what the
unoptimised IR means (the reference interpreter), at several batch sizes through one runner, so
that the arena is laid out again for each batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_file, load_string
from netc.ir import Graph
from netc.passes import run_pipeline
from netc.plan import LaunchPlan
from netc.reference import run_reference
from netc.runtime.executor import PlanRunner
from tests.sim.codegen_support import TOLERANCE, assert_close, simulator
from tests.sim.graph_builder import random_inputs, random_weights

pytestmark = pytest.mark.sim

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SMALL_RESNET = """
block bottleneck(x, width: int) {
    y = conv2d(x, width, kernel=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, width, kernel=3, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, width * 4, kernel=1, bias=false) |> batchnorm
    return relu(y + x)
}

block bottleneck_down(x, width: int, stride: int = 2) {
    y = conv2d(x, width, kernel=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, width, kernel=3, stride=stride, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, width * 4, kernel=1, bias=false) |> batchnorm
    s = conv2d(x, width * 4, kernel=1, stride=stride, bias=false) |> batchnorm
    return relu(y + s)
}

network small_resnet {
    input image: f32[N, 3, 12, 12]
    x = conv2d(image, 8, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    x = maxpool2d(x, 3, stride=2, padding=1)
    x = bottleneck(x, 2)
    x = bottleneck_down(x, 4)
    output pooled = global_avgpool(x) |> flatten
    # Pointwise ops across a view are not fused: an elementwise kernel that reads the last
    # block's output through the flatten, where it dies, and writes over it.
    h = flatten(x) * 0.5 - 0.25 |> relu
    output logits = dense(h, 10)
}
"""


def _check(graph: Graph, level: int, batches: tuple[int, ...] = (1, 3)) -> LaunchPlan:
    rng = np.random.default_rng(11)
    weights = random_weights(graph, rng)
    optimized = run_pipeline(graph, level, weights, verify=True)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    assert plan.arena_buffers, "nothing in the arena"
    with PlanRunner(plan, simulator(), optimized.weights, build_binary(plan, simulator())) as runner:
        for batch in batches:
            inputs = random_inputs(graph, batch, rng)
            actual = runner.run(inputs)
            for name, value in run_reference(graph, weights, inputs).items():
                # Fused kernels round less often than the reference: a little more room.
                rtol, atol = TOLERANCE["f32"]
                assert_close(f"{name} at batch {batch}", actual[name], value, 2 * rtol,
                             2 * atol)
    return plan


@pytest.mark.parametrize("example", ["lenet5.net", "transformer.net"])
def test_examples_run_from_the_arena(example: str) -> None:
    plan = _check(load_file(EXAMPLES / example), 2)
    assert plan.arena_bytes(plan.every_dim(3)) < plan.intermediate_bytes(plan.every_dim(3))


@pytest.mark.parametrize("level", [0, 2])
def test_a_small_resnet_runs_from_the_arena_in_place(level: int) -> None:
    plan = _check(load_string(SMALL_RESNET, filename="small_resnet.net"), level)
    memory = plan.memory_plan(plan.every_dim(3))
    # -O0 has relu/add/batchnorm kernels of their own; -O2 only the one across the view.
    assert memory.inplace_count >= (10 if level == 0 else 1)
    assert memory.arena_bytes < plan.intermediate_bytes(plan.every_dim(3))


def test_without_reuse_every_intermediate_can_be_read_back() -> None:
    graph = load_string(SMALL_RESNET, filename="small_resnet.net")
    rng = np.random.default_rng(12)
    weights = random_weights(graph, rng)
    inputs = random_inputs(graph, 2, rng)
    seen: dict[str, np.ndarray] = {}
    run_reference(graph, weights, inputs,
                  observe=lambda node, value: seen.setdefault(node.id, value))
    plan = generate(graph)
    early = next(b for b in plan.arena_buffers if b.live and b.live[1] < len(plan.launches) - 1)
    with PlanRunner(plan, simulator(), weights, build_binary(plan, simulator())) as runner:
        runner.run(inputs)
        with pytest.raises(RuntimeError, match="reuse_memory=False"):
            runner.buffer_value(early.name)
    with PlanRunner(plan, simulator(), weights, build_binary(plan, simulator()), reuse_memory=False) as runner:
        runner.run(inputs)
        for buffer in plan.arena_buffers:
            assert_close(buffer.node, runner.buffer_value(buffer.name), seen[buffer.node],
                         *TOLERANCE["f32"])


class _ZeroFilled:
    """The simulator with allocations that start as zeros (the simulator's own start as NaN),
    so only the executor's poisoning can make an unwritten element show."""

    def __init__(self) -> None:
        self.device = simulator()

    def alloc(self, nbytes: int) -> Any:
        buffer = self.device.alloc(nbytes)
        self.device.upload(buffer, np.zeros(nbytes, np.uint8))
        return buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)


def test_arena_buffers_are_poisoned_when_they_are_born() -> None:
    """Memory a dropped launch should have written held an earlier buffer's good values in the
    same run; poisoning each arena buffer just before its first launch still exposes it."""
    graph = load_string(SMALL_RESNET, filename="small_resnet.net")
    rng = np.random.default_rng(13)
    weights = random_weights(graph, rng)
    inputs = random_inputs(graph, 2, rng)
    optimized = run_pipeline(graph, 2, weights)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    # Drop the launch writing the last block's output: global_avgpool then reads memory
    # that nothing wrote in this run (a relu would turn NaN into 0, so check `pooled`).
    reader = next(i for i, launch in enumerate(plan.launches) if "_mean_" in launch.kernel)
    dropped = reader - 1
    written = plan.launches[dropped].args[3].buffer
    assert written in {b.name for b in plan.arena_buffers}
    assert written in {arg.buffer for arg in plan.launches[reader].args}
    broken = dataclasses.replace(plan, launches=plan.launches[:dropped]
                                 + plan.launches[dropped + 1:])
    with PlanRunner(broken, _ZeroFilled(), optimized.weights, build_binary(broken, _ZeroFilled())) as runner:
        assert np.isfinite(runner.run(inputs, poison=False)["pooled"]).all()
        assert np.isnan(runner.run(inputs)["pooled"]).all()
