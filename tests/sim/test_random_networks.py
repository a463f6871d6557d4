"""Random networks, optimised and compiled: the -O2 launch plan run by the CPU simulator
equals the reference interpreter on the unoptimised IR.

The networks come from the same generator as the passes' property test (`netgen.networks`:
convolutions, dense, pools, activations, residual adds, concats, normalisations, softmax), and
are compared with the same check (`assert_close`, with the network's own rounding noise
allowed where it amplifies rounding). Each example compiles one simulator module, so the
example count is kept small (6 in the `ci` profile, 25 in `thorough`); a failure is shrunk by Hypothesis and
should be saved under `tests/regressions/` (which the unit tier runs on every run).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import random_inputs, run_reference
from netc.sim import CudaSim
from tests.unit.netgen import networks, random_weights
from tests.unit.test_passes_property import assert_close, rounding_noise

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def simulator() -> CudaSim:
    with CudaSim() as sim:
        yield sim


@settings(max_examples=max(6, settings().max_examples // 20), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=networks(max_statements=12))
@example(text="network views { input x: f32[N, 2, 3]\n output y = flatten(x) }")  # no kernel
def test_optimised_plan_in_the_simulator_matches_the_unoptimised_reference(
        text: str, simulator: CudaSim) -> None:
    graph = load_string(text, filename="random.net")
    weights = random_weights(graph, 0)
    inputs = random_inputs(graph, batch=3, seed=0)
    with np.errstate(all="ignore"):
        expected = run_reference(graph, weights, inputs)
        optimized = run_pipeline(graph, 2, weights)
        assert optimized.weights is not None
        actual = run_plan(generate(optimized.graph), simulator, optimized.weights, inputs)
        noise = None
        for name, value in expected.items():
            try:
                assert_close(actual[name], value, f"-O2 on cudasim, output {name}")
            except AssertionError:
                noise = noise or rounding_noise(graph, weights, inputs, expected)
                assert_close(actual[name], value, f"-O2 on cudasim, output {name}", noise[name])
