"""Whole networks from `.net` source through generate -> run_plan on the simulator, and the
executor's own behaviour (weights uploaded once, any batch size, poisoning, bad inputs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary, run_plan
from netc.frontend import load_string
from netc.ir import Graph
from netc.passes import run_pipeline
from netc.plan import LaunchPlan
from netc.reference import run_reference
from netc.runtime.executor import PlanInputError, PlanRunner
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, simulator
from tests.sim.graph_builder import random_inputs, random_weights
from tests.sim.networks import LENET, NETWORKS, RESNET, network
from tests.sim.variants import catalog

pytestmark = pytest.mark.sim

def test_lenet5_matches_the_reference_interpreter() -> None:
    check_graph(network(LENET), batch=3)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_residual_network_matches_the_reference_interpreter(dtype: str) -> None:
    check_graph(network(RESNET, dtype), batch=2)


@pytest.mark.parametrize("source, dtype", NETWORKS, ids=["lenet", "resnet", "resnet-bf16",
                                                         "fusions"])
def test_optimised_networks_with_fused_kernels_match_the_unoptimised_reference(
        source: str, dtype: str) -> None:
    """-O2 folds batchnorms and fuses pointwise ops into conv, GEMM, pool and reduction
    kernels (epilogues and prologues) and into elementwise groups; the kernels must compute
    what the original graph means."""
    original = network(source, dtype)
    rng = np.random.default_rng(5)
    weights = random_weights(original, rng)
    inputs = random_inputs(original, 3, rng)
    optimized = run_pipeline(original, 2, weights, verify=True)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    assert set(plan.kernels) <= set(catalog())
    assert any("_ep_" in kernel for kernel in plan.kernels)
    actual = run_plan(plan, simulator(), optimized.weights, inputs)
    for name, value in run_reference(original, weights, inputs).items():
        # Fused kernels keep intermediates in float registers, where the reference rounds
        # each op's result to the dtype: bf16 gets a little more room.
        rtol, atol = TOLERANCE[dtype]
        assert_close(name, actual[name], value, 2 * rtol, 2 * atol)


def test_lenet5_plan_maps_launches_to_source_lines() -> None:
    plan = generate(load_string(LENET, filename="models/lenet.net"))
    assert [launch.source for launch in plan.launches[:3]] == [
        "models/lenet.net:5", "models/lenet.net:5", "models/lenet.net:5"]
    assert '#line 5 "lenet.net"' in plan.source


def _lenet() -> tuple[Graph, LaunchPlan, dict[str, np.ndarray]]:
    graph = network(LENET)
    return graph, generate(graph), random_weights(graph, np.random.default_rng(1))


def test_a_runner_uploads_weights_once_and_serves_any_batch() -> None:
    graph, plan, weights = _lenet()
    rng = np.random.default_rng(2)
    with PlanRunner(plan, simulator(), weights, build_binary(plan, simulator())) as runner:
        for batch in (1, 4, 1):
            inputs = random_inputs(graph, batch, rng)
            actual = runner.run(inputs)
            expected = run_reference(graph, weights, inputs)
            assert_close("logits", actual["logits"], expected["logits"], *TOLERANCE["f32"])


def test_poisoned_outputs_expose_an_unwritten_result() -> None:
    graph, plan, weights = _lenet()
    inputs = random_inputs(graph, 2, np.random.default_rng(3))
    broken = dataclasses.replace(plan, launches=plan.launches[:-1])
    assert np.isnan(run_plan(broken, simulator(), weights, inputs)["logits"]).all()


def test_bad_inputs_and_weights_are_reported() -> None:
    graph, plan, weights = _lenet()
    good = random_inputs(graph, 2, np.random.default_rng(4))
    with pytest.raises(PlanInputError, match="missing input `image`"):
        run_plan(plan, simulator(), weights, {})
    with pytest.raises(PlanInputError, match=r"must have shape \[N, 1, 28, 28\]"):
        run_plan(plan, simulator(), weights, {"image": good["image"][:, :, :27]})
    with pytest.raises(PlanInputError, match="unexpected input `extra`"):
        run_plan(plan, simulator(), weights, {**good, "extra": good["image"]})
    with pytest.raises(PlanInputError, match=r"missing weights: dense_2\.bias"):
        run_plan(plan, simulator(), {k: v for k, v in weights.items() if k != "dense_2.bias"},
                 good)
    with pytest.raises(PlanInputError, match=r"weight `dense_2\.bias` must have shape"):
        run_plan(plan, simulator(), {**weights, "dense_2.bias": np.zeros(3, np.float32)}, good)


def test_intermediate_buffers_can_be_read_after_a_run() -> None:
    graph, plan, weights = _lenet()
    inputs = random_inputs(graph, 2, np.random.default_rng(6))
    seen: dict[str, np.ndarray] = {}
    run_reference(graph, weights, inputs, observe=lambda node, value: seen.setdefault(node.id,
                                                                                      value))
    with PlanRunner(plan, simulator(), weights, build_binary(plan, simulator()), reuse_memory=False) as runner:
        with pytest.raises(RuntimeError, match="not run"):
            runner.buffer_value(plan.buffers[-1].name)
        runner.run(inputs)
        checked = 0
        for buffer in plan.buffers:
            if buffer.role == "intermediate":
                assert_close(buffer.node, runner.buffer_value(buffer.name), seen[buffer.node],
                             *TOLERANCE["f32"])
                checked += 1
    assert checked >= 8
