"""CUDA graphs on a real GPU: a plan's launches captured by the driver (netc.runtime.cuda_graph)
and replayed give what launching them one by one gives, poisoned or not, at every size.

Skipped by conftest.py, with the reason, where PyCUDA or a CUDA device is missing. The
executor's side of graph mode is also checked on the CPU (tests/sim/test_cuda_graph_runner.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.runtime import cuda_graph
from netc.runtime.executor import PlanRunner
from netc.runtime.pycuda_device import PyCudaDevice
from tests.sim.graph_builder import random_weights
from tests.sim.test_cuda_graph_runner import SOURCE

pytestmark = pytest.mark.gpu


def test_the_driver_has_graphs() -> None:
    assert cuda_graph.available()


def test_replayed_graphs_match_the_reference_at_every_size() -> None:
    graph = load_string(SOURCE, "mlp.net")
    weights = random_weights(graph, np.random.default_rng(5))
    optimized = run_pipeline(graph, 2, weights)
    plan = generate(optimized.graph)
    rng = np.random.default_rng(6)
    with PyCudaDevice() as device, PlanRunner(plan, device, optimized.weights,
                                              build_binary(plan, device),
                                              cuda_graph=True) as runner:
        for batch in (3, 3, 3, 17, 17, 1):
            inputs = {"x": rng.standard_normal((batch, 24)).astype(np.float32)}
            expected = run_reference(graph, weights, inputs)
            for poison in (True, False):
                actual = runner.run(inputs, poison=poison)
                for name, value in expected.items():
                    np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-5,
                                               err_msg=f"{name} at N = {batch}")
        assert runner.cuda_graph  # the second run at each size on replayed a captured graph
        runner.launch_all()
        device.synchronize()
