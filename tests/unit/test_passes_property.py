"""The passes keep the meaning of random networks, and every saved counterexample stays fixed.

For random valid networks (`netgen.networks`), the graph after -O1 and after -O2, run by the
reference interpreter with the weights the pipeline derives, equals the reference interpreter
on the unoptimised IR (rtol 1e-4, atol 1e-5; batchnorm statistics far from the identity). The
IR verifier runs between passes, and the memory plan of the -O2 graph must never overlap two
live buffers. A failing network is shrunk by Hypothesis, printed, and saved as a `.net` file in
`tests/regressions/`, which `test_regression` runs through the same check on every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from netc.frontend import load_file, load_string
from netc.ir import Graph
from netc.passes import run_pipeline
from netc.reference import random_inputs, run_reference

from .netgen import networks, random_weights

pytestmark = pytest.mark.unit

REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions"
RTOL, ATOL = 1e-4, 1e-5
NOISE_FACTOR = 16


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, noise: float = 0.0) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    allowed = ATOL + RTOL * np.abs(expected) + NOISE_FACTOR * noise
    bad = ~(np.abs(actual - expected) <= allowed) & ~(np.isnan(actual) & np.isnan(expected))
    if bad.any():
        worst = np.nanmax(np.abs(actual - expected))
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements differ; largest "
                             f"difference {worst:.3g} (the network's own rounding noise: "
                             f"{noise:.3g})")


def rounding_noise(graph: Graph, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                   expected: dict[str, np.ndarray]) -> dict[str, float]:
    """How far each output moves when every weight moves by about one float32 rounding step
    (float32 epsilon, 2^-23 relative, random sign): the size of change that folding, which
    rounds the folded weights differently, may legitimately cause. A deep network ending in a
    layernorm of a nearly constant row amplifies it far past any fixed tolerance."""
    rng = np.random.default_rng(7)
    signs = np.array([-1.0, 1.0])
    jittered = {name: (value.astype(np.float64) * (1 + rng.choice(signs, value.shape) * 2.0 ** -23))
                .astype(np.float32) for name, value in weights.items()}
    moved = run_reference(graph, jittered, inputs)
    return {name: float(np.nan_to_num(np.nanmax(np.abs(moved[name] - value)), nan=0.0))
            for name, value in expected.items()}


def check_network(graph: Graph, seed: int = 0) -> None:
    """-O1 and -O2 agree with -O0 under the reference interpreter; the plan never overlaps.

    Outputs agree within rtol 1e-4 and atol 1e-5, or, where the network amplifies rounding
    (`rounding_noise`, measured only when the first comparison fails), within that plus
    NOISE_FACTOR times the output's own rounding noise."""
    weights = random_weights(graph, seed)
    inputs = random_inputs(graph, batch=2, seed=seed)
    noise: dict[str, float] | None = None
    with np.errstate(all="ignore"):
        expected = run_reference(graph, weights, inputs)
        for level in (1, 2):
            optimized = run_pipeline(graph, level, weights, verify=True, batch=2)
            assert optimized.weights is not None
            actual = run_reference(optimized.graph, optimized.weights, inputs)
            for name, value in expected.items():
                try:
                    assert_close(actual[name], value, f"-O{level} output {name}")
                except AssertionError:
                    if noise is None:
                        noise = rounding_noise(graph, weights, inputs, expected)
                    assert_close(actual[name], value, f"-O{level} output {name}", noise[name])


def save_regression(text: str) -> Path:
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = REGRESSIONS / f"shrunk_{digest}.net"
    REGRESSIONS.mkdir(exist_ok=True)
    path.write_text("# Shrunk by Hypothesis from a network on which the optimised graph and the\n"
                    "# unoptimised IR disagreed (tests/unit/test_passes_property.py).\n" + text)
    return path


def test_optimised_random_networks_match_the_reference() -> None:
    failing: list[str] = []

    # At least 100 examples even in the quick `ci` profile: the passes' main safety net.
    @settings(max_examples=max(100, settings().max_examples))
    @given(text=networks())
    def optimised_matches(text: str) -> None:
        try:
            check_network(load_string(text, filename="random.net"))
        except Exception:
            failing.append(text)  # Hypothesis replays the shrunk example last
            raise

    try:
        optimised_matches()
    except Exception:
        if failing:
            path = save_regression(failing[-1])
            print(f"\nshrunk counterexample saved as {path}:\n{failing[-1]}")
        raise


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.net")), ids=lambda p: p.name)
def test_regression(path: Path) -> None:
    check_network(load_file(path))


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", ["mlp.net", "lenet5.net", "vgg.net", "transformer.net",
                                     "resnet18.net"])
def test_examples_keep_their_meaning(example: str) -> None:
    check_network(load_file(EXAMPLES / example))
