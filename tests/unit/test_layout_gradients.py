"""Gradients of the layout ops that gather with a pattern: `pad` in reflect and replicate mode
(the strips folded back onto the elements they copied) and `slice` with a step (the cotangent
spaced out with zeros), built of existing ops (compiler/ops/spatial.py, compiler/ops/shape.py).

- Each against PyTorch autograd through `check_op` (tests/unit/test_autodiff.py, its tolerance):
  hypothesis draws rank 3 and 4 inputs of ragged sizes, pads on one or two dimensions (reflect
  up to size - 1, the largest it takes) and slices with steps 2, 3, 5 on one to three axes,
  starts and ends not multiples of the step and negative ones; fixed cases pin the extremes.
- A small network using both, one SGD step: the reference backend against PyTorch, and cudasim
  (the generated CUDA of the backward graph) against the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.frontend import load_string, load_training_string
from netc.training import Trainer
from netc.weights import init_weights
from tests.unit.test_autodiff import FEW, assert_close, check_op, netc_gradients, normal

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.unit

RAGGED = st.sampled_from((1, 2, 3, 7))


def torch_pad(x: Any, pads: list[int], mode: str) -> Any:
    """F.pad in reflect/replicate mode on any rank: PyTorch takes the k padded dimensions
    only with one or two more in front, so the leading dimensions are flattened into one."""
    k = len(pads) // 2
    lead = x.shape[:x.dim() - k]
    y = F.pad(x.reshape(-1, *x.shape[x.dim() - k:]), pads, mode=mode)
    return y.reshape(*lead, *y.shape[1:])


@st.composite
def pad_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], list[int], str]:
    mode = draw(st.sampled_from(("reflect", "replicate")))
    rank = draw(st.sampled_from((3, 4)))
    shape = tuple(draw(RAGGED) for _ in range(rank))
    pads: list[int] = []
    for axis in range(rank - 1, rank - 1 - draw(st.sampled_from((1, 2))), -1):
        # Reflect takes pads up to size - 1 (none on a dimension of size 1).
        top = shape[axis] - 1 if mode == "reflect" else 4
        pads.extend(draw(st.integers(0, top)) for _ in range(2))
    return shape, pads, mode


@FEW
@given(pad_cases())
@example(((2, 3, 7, 5), [4, 4, 6, 6], "reflect"))  # the largest pads: the strips overlap
@example(((2, 3, 3), [2, 2], "reflect"))  # the mirrored strips cover the same element
@example(((1, 2, 1, 1), [3, 2, 1, 4], "replicate"))  # both strips onto one element
@example(((3, 7, 4), [0, 3, 2, 0], "replicate"))  # one side only, on each dimension
def test_reflect_and_replicate_pad_match_pytorch(
        case: tuple[tuple[int, ...], list[int], str]) -> None:
    shape, pads, mode = case
    check_op(lambda b, v: b.op("pad", v["x"], pads=pads, mode=mode),
             lambda t: torch_pad(t["x"], pads, mode), {"x": normal(shape)},
             terms=max(pads) + 1)


@st.composite
def slice_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], list[tuple[int, int, int, int]]]:
    shape = tuple(draw(st.sampled_from((1, 5, 7, 11))) for _ in range(draw(st.sampled_from(
        (3, 4)))))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=3, unique=True))
    cuts = []
    for axis in axes:
        size = shape[axis]
        start = draw(st.integers(-size, size - 1))
        first = start % size
        end = draw(st.integers(first + 1, size + 2))  # past the end: clamped
        if end < size and draw(st.booleans()):
            end -= size  # the same end, counted from the back
        cuts.append((axis, start, end, draw(st.sampled_from((1, 2, 3, 5)))))
    return shape, cuts


@FEW
@given(slice_cases())
@example(((11, 7, 5), [(0, 1, 11, 2), (1, -6, -1, 3), (2, 0, 5, 5)]))  # ends past the last
@example(((5, 11, 7), [(1, 10, 11, 3)]))  # one element, the last
@example(((7, 1, 11, 5), [(2, -10, 100, 5), (3, 1, 4, 2)]))  # a clamped end
def test_strided_slice_matches_pytorch(
        case: tuple[tuple[int, ...], list[tuple[int, int, int, int]]]) -> None:
    shape, cuts = case
    index: list[slice] = [slice(None)] * len(shape)
    for axis, start, end, step in cuts:
        index[axis] = slice(start, end, step)
    check_op(lambda b, v: b.op("slice", v["x"], axes=[c[0] for c in cuts],
                               starts=[c[1] for c in cuts], ends=[c[2] for c in cuts],
                               steps=[c[3] for c in cuts]),
             lambda t: t["x"][tuple(index)], {"x": normal(shape)})


def test_a_strided_slice_of_a_vector() -> None:
    """Axis 0 strided: the spread adds a leading axis for the reshape (which keeps axis 0)."""
    check_op(lambda b, v: b.op("slice", v["x"], axes=[0], starts=[-12], ends=[-1], steps=[3]),
             lambda t: t["x"][-12:-1:3], {"x": normal((13,))})


def test_named_dimensions_pass_through_both_gradients() -> None:
    """[N, T, 9]: the spread's reshape keeps T by name; reflect folds the last axis only."""
    graph = load_string("""
network named {
    input x: f32[N, T, 9]
    param w: f32[1, 1, 9]
    output loss = mean(pad((x * w)[..., 1::3], [2, 1], mode="reflect") * x[..., :6],
                       axis=[0, 1, 2])
}
""", "named.net")
    x, w = normal((2, 3, 9)), normal((1, 1, 9), 1)
    got = netc_gradients(graph, "loss", {"w": w}, {"x": x})
    tensor, tx = torch.tensor(w, requires_grad=True), torch.tensor(x)
    (F.pad((tx * tensor)[..., 1::3], [2, 1], mode="reflect") * tx[..., :6]).mean().backward()
    assert_close("w", got["w"], tensor.grad.numpy().astype(np.float64))


NETWORK = """
network layouts {
    input x: f32[N, 3, 9, 8]
    h = conv2d(x, 4, 3, name="c1") |> tanh
    h = pad(h, [5, 1, 6, 2], mode="reflect")
    h = h[:, ::2, 1::3, -10::2]
    h = conv2d(h, 3, 2, name="c2") |> tanh
    h = pad(h, [1, 0, 2, 3], mode="replicate")
    output logits = h[:, 1:, ::3, 1::2] |> flatten |> dense(5, name="fc")
}
train layouts {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr=0.5)
}
"""


def _torch_step(weights: dict[str, np.ndarray], x: np.ndarray,
                label: np.ndarray) -> dict[str, np.ndarray]:
    w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    h = torch.tanh(F.conv2d(torch.tensor(x), w["c1.weight"], w["c1.bias"]))
    h = F.pad(h, [5, 1, 6, 2], mode="reflect")[:, ::2, 1::3, -10::2]
    h = torch.tanh(F.conv2d(h, w["c2.weight"], w["c2.bias"]))
    h = F.pad(h, [1, 0, 2, 3], mode="replicate")[:, 1:, ::3, 1::2].flatten(1)
    logits = F.linear(h, w["fc.weight"], w["fc.bias"])
    F.cross_entropy(logits, torch.tensor(label)).backward()
    return {k: (v - 0.5 * v.grad).detach().numpy() for k, v in w.items()}


def test_a_network_of_pads_and_strided_slices_trains_as_pytorch_on_every_backend() -> None:
    spec = load_training_string(NETWORK, "layouts.net")
    weights = init_weights(spec.graph, seed=3)
    rng = np.random.default_rng(0)
    batch: dict[str, np.ndarray] = {"x": rng.standard_normal((3, 3, 9, 8)).astype(np.float32),
             "label": rng.integers(0, 5, 3)}
    expected = _torch_step(weights, batch["x"], batch["label"])
    trainers = [Trainer(spec, weights, backend=backend) for backend in ("reference", "cudasim")]
    losses = [trainer.step(batch) for trainer in trainers]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, value in expected.items():
        moved = np.abs(value - weights[name]).max()
        assert moved > 1e-4, name  # every layer learns: the gradients reach c1 through both
        np.testing.assert_allclose(trainers[0].weights[name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(trainers[1].weights[name], trainers[0].weights[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
