"""Training steps on a real GPU (`Trainer(backend="cuda")`: the training plan's forward and
backward kernels, the fused optimizer kernel) against the same steps in PyTorch on the CPU, as
tests/unit/test_training_examples.py checks the reference and cudasim backends. Skipped (by
conftest.py, saying why) without a GPU; not run on the machine this was written on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.test_training_examples import (
    _digits,
    _encoder,
    _lenet,
    _resnet_tiny,
    check_example_steps,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("example", "forward", "atol"), [
    ("train_lenet5.net", _lenet, 2e-6),
    ("digits_cnn.net", _digits, 2e-6),
    ("train_transformer.net", _encoder, 1e-5),
    ("train_resnet_tiny.net", _resnet_tiny, 2e-6),
])
def test_example_steps_on_the_gpu_match_pytorch(example: str, forward: Callable,
                                                atol: float) -> None:
    check_example_steps(example, forward, ("cuda",), atol)
