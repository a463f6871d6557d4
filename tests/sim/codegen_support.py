"""Running generated kernels on the simulator and checking them against the reference.

`check_graph` is the one path every code-generation sim test takes: generate the plan, run it
with random inputs and parameters and poisoned outputs, and compare every output with
`netc.reference.run_reference` (each op's NumPy reference from the registry) within the
dtype's tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.codegen.tiles import Tile
from netc.driver import run_plan
from netc.ir import Graph
from netc.plan import LaunchPlan
from netc.reference import run_reference
from netc.sim import CudaSim
from tests.sim.graph_builder import random_inputs, random_weights
from tests.sim.variants import catalog

TOLERANCE = {"f32": (1e-4, 1e-4), "f16": (5e-3, 5e-3), "bf16": (3e-2, 3e-2)}
"""(rtol, atol) against the reference, which rounds each op's result to the dtype: f32 differs
by summation order only; f16 and bf16 by a rounding step of the output (1 ulp is 2^-11 and
2^-8 of the value), taken with some room."""

RAGGED = (1, 2, 7, 31, 33, 64, 127, 129)
"""Sizes around every tile size the tests use: 1, odd, just under and over 32, 64 and 128."""


@cache
def simulator() -> CudaSim:
    """The simulator every sim test shares (its module cache is keyed on the source)."""
    return CudaSim()


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


def assert_close(name: str, actual: np.ndarray, expected: np.ndarray, rtol: float,
                 atol: float) -> None:
    assert actual.shape == expected.shape, (
        f"{name}: shape {actual.shape}, expected {expected.shape}")
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        excess = np.abs(actual.astype(np.float64) - expected) - (atol + rtol * np.abs(expected))
        worst = np.unravel_index(np.argmax(np.where(np.isnan(excess), np.inf, excess)),
                                 actual.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {actual.size} elements differ "
            f"({int(np.isnan(actual).sum())} NaN, i.e. never written); the worst, at "
            f"{tuple(int(i) for i in worst)}: got {actual[worst]!r}, expected "
            f"{expected[worst]!r}, difference {abs(float(actual[worst]) - expected[worst]):.3g} "
            f"(rtol {rtol}, atol {atol}); largest magnitude {float(np.abs(expected).max()):.3g}")


def check_graph(graph: Graph, tiles: Mapping[str, Tile] | None = None, *, batch: int = 2,
                seed: int = 0, device: Any = None, shared_weights: bool = False,
                same_outputs: bool = False) -> LaunchPlan:
    """Generate `graph`, run it on the simulator and compare every output with the reference.

    `same_outputs`: every output must also equal out0 bit for bit (parallel copies of one op
    whose tile configurations keep each element's order of operations)."""
    plan = generate(graph, tiles)
    unknown = sorted(set(plan.kernels) - set(catalog()))
    assert not unknown, f"kernels missing from tests/sim/variants.py's catalog: {unknown}"
    rng = np.random.default_rng(seed)
    weights = random_weights(graph, rng, shared=shared_weights)
    inputs = random_inputs(graph, batch, rng)
    actual = run_plan(plan, device or simulator(), weights, inputs, poison=True)
    expected = run_reference(graph, weights, inputs)
    dtypes = {name: graph[node_id].type.dtype for name, node_id in graph.outputs}
    for name, value in expected.items():
        assert_close(name, actual[name], value, *TOLERANCE[dtypes[name]])
    if same_outputs:
        for name, value in actual.items():
            assert np.array_equal(value, actual["out0"]), (
                f"{name} differs from out0 in {int((value != actual['out0']).sum())} elements")
    return plan
