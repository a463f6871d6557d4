"""Whole networks from `.net` source through generate -> run_plan on the simulator, and the
executor's own behaviour (weights uploaded once, any batch size, poisoning, bad inputs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.frontend import load_string
from netc.reference import run_reference
from netc.runtime.executor import PlanInputError, PlanRunner, run_plan
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, simulator
from tests.sim.graph_builder import random_inputs, random_weights

pytestmark = pytest.mark.sim

LENET = """
# lenet.net: LeNet-5 for 28x28 grayscale digits
network lenet5 {
    input image: f32[N, 1, 28, 28]

    x = conv2d(image, filters=6, kernel=5, padding=2) |> relu |> maxpool2d(2)
    x = conv2d(x, filters=16, kernel=5) |> relu |> maxpool2d(2)
    x = flatten(x)
    x = dense(x, 120) |> relu
    x = dense(x, 84) |> relu
    output logits = dense(x, 10)
}
"""

RESNET_BLOCKS = """
block basic(x, filters: int) {
    y = conv2d(x, filters, kernel=3, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false) |> batchnorm
    return relu(y + x)
}

block down(x, filters: int) {
    y = conv2d(x, filters, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false) |> batchnorm
    s = conv2d(x, filters, kernel=1, stride=2, bias=false) |> batchnorm
    return relu(y + s)
}

network tiny_resnet {
    input image: DTYPE[N, 3, 15, 15]
    x = conv2d(image, 8, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    x = maxpool2d(x, 3, stride=2, padding=1)
    x = basic(x, 8)
    x = down(x, 16)
    x = global_avgpool(x) |> flatten
    h = dense(x, 12) |> gelu |> dropout(0.1)
    a = transpose(reshape(h, [3, 4]), [0, 2, 1])
    output scores = softmax(matmul(a, reshape(h, [3, 4])) * 0.5, axis=1)
    output logits = layernorm(dense(x, 10)) |> log_softmax
}
"""


def _check_network(source: str, filename: str, batch: int) -> None:
    check_graph(load_string(source, filename=filename), batch=batch)


def test_lenet5_matches_the_reference_interpreter() -> None:
    _check_network(LENET, "lenet.net", batch=3)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_residual_network_matches_the_reference_interpreter(dtype: str) -> None:
    _check_network(RESNET_BLOCKS.replace("DTYPE", dtype), "tiny_resnet.net", batch=2)


def test_lenet5_plan_maps_launches_to_source_lines() -> None:
    plan = generate(load_string(LENET, filename="models/lenet.net"))
    assert [launch.source for launch in plan.launches[:3]] == [
        "models/lenet.net:6", "models/lenet.net:6", "models/lenet.net:6"]
    assert '#line 6 "lenet.net"' in plan.source


def _lenet():
    graph = load_string(LENET, filename="lenet.net")
    return graph, generate(graph), random_weights(graph, np.random.default_rng(1))


def test_a_runner_uploads_weights_once_and_serves_any_batch() -> None:
    graph, plan, weights = _lenet()
    rng = np.random.default_rng(2)
    with PlanRunner(plan, simulator(), weights) as runner:
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
