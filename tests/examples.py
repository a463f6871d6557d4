"""The example networks in `examples/`, for tests that need their text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import netc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_text(name: str) -> str:
    return (EXAMPLES / name).read_text()


LENET5 = example_text("lenet5.net")
RESNET_BLOCKS = example_text("resnet_blocks.net")
RESNET18 = example_text("resnet18.net")


def weights_with_statistics(model: netc.Model, seed: int) -> dict[str, np.ndarray]:
    """Fresh weights with random batchnorm running statistics, so that batchnorm does more
    than scale by about 1 (the fresh statistics are mean 0, variance 1)."""
    weights = model.init_weights(seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name in weights:
        if name.endswith("running_mean"):
            weights[name] = rng.normal(0, 0.1, weights[name].shape).astype(np.float32)
        elif name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 1.5, weights[name].shape).astype(np.float32)
    return weights
