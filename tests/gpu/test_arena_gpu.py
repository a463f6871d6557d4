"""A network run from one arena on a real GPU: views are `int(allocation) + offset` pointers
(`PyCudaDevice.view`), in-place launches included. Skipped without PyCUDA and a device."""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.runtime.executor import PlanRunner
from netc.runtime.pycuda_device import PyCudaDevice
from tests.sim.graph_builder import random_inputs, random_weights
from tests.sim.test_arena import SMALL_RESNET

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("level", [0, 2])
def test_a_small_resnet_runs_from_the_arena_on_the_gpu(level: int) -> None:
    graph = load_string(SMALL_RESNET, filename="small_resnet.net")
    rng = np.random.default_rng(21)
    weights = random_weights(graph, rng)
    optimized = run_pipeline(graph, level, weights)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    assert plan.memory_plan(plan.every_dim(1)).inplace_count > 0
    with PyCudaDevice() as device, PlanRunner(plan, device, optimized.weights, build_binary(plan, device)) as runner:
        for batch in (1, 3):
            inputs = random_inputs(graph, batch, rng)
            actual = runner.run(inputs)
            for name, expected in run_reference(graph, weights, inputs).items():
                bad = ~np.isclose(actual[name], expected, rtol=2e-4, atol=2e-4)
                assert not bad.any(), (
                    f"{name} at batch {batch}: {int(bad.sum())} of {bad.size} elements differ; "
                    f"largest difference {float(np.abs(actual[name] - expected).max()):.3g}")
