"""Gradients of groupnorm and instancenorm (their closed-form VJP, `_grouped_vjp` in
netc.ops.normalization): against PyTorch autograd on drawn shapes (central finite
differences: test_autodiff.py's test of that name), and one SGD step of a small network on the reference and on
cudasim against the same step in PyTorch.

Tolerances: test_autodiff.py's (ATOL 1e-5 + RTOL 1e-4, scaled by the square root of the terms
a gradient sums); the SGD step's
parameters within rtol 1e-5 / atol 1e-6 (float32 on both sides, different orders)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.frontend import load_training_string
from netc.training import Trainer
from netc.weights import init_weights
from tests.unit.test_autodiff import check_op, normal

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.unit

SPATIAL = st.lists(st.sampled_from((1, 3, 7)), min_size=1, max_size=2).map(tuple)
"""The dims after the channels: rank 3 and 4, sizes 1 and odd ones, H != W among them."""
EPS = st.sampled_from((1e-5, 1e-2))


def in_float64(function: Any) -> Any:
    """`function` on float32 tensors computed in float64 (autograd through the casts): the
    oracle's own float32 rounding is rstd·ulp, large where a group's variance is near 0
    (PyTorch's float32 gives 3e-5 where the exact gradient of a one-element group is 0)."""
    def wrapped(*tensors: Any, **kwargs: Any) -> Any:
        result = function(*(t if t is None else t.double() for t in tensors), **kwargs)
        return result.float()
    return wrapped


@in_float64
def torch_grouped(x: Any, weight: Any, bias: Any, groups: int, eps: float) -> Any:
    """F.group_norm, or where it refuses the shape (one value per group and a batch of one)
    the same formula in PyTorch ops."""
    if x.shape[0] * (x.shape[1] // groups) * int(np.prod(x.shape[2:])) > 1:
        return F.group_norm(x, groups, weight, bias, eps)
    grouped = x.reshape(x.shape[0], groups, -1)
    centered = grouped - grouped.mean(-1, keepdim=True)
    y = (centered / torch.sqrt(centered.square().mean(-1, keepdim=True) + eps)).reshape(x.shape)
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    return y if weight is None else y * weight.reshape(per_channel) + bias.reshape(per_channel)


@in_float64
def torch_instance(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    return F.instance_norm(x, weight=weight, bias=bias, eps=eps)


@st.composite
def grouped_channels(draw: st.DrawFn) -> tuple[int, int]:
    """(channels 1..7, groups dividing them)."""
    channels = draw(st.integers(1, 7))
    return channels, draw(st.sampled_from([g for g in range(1, channels + 1)
                                           if channels % g == 0]))


@given(batch=st.sampled_from((1, 3)), grouping=grouped_channels(), spatial=SPATIAL, eps=EPS)
@example(batch=2, grouping=(6, 3), spatial=(3, 7), eps=1e-5)
def test_groupnorm_matches_pytorch(batch: int, grouping: tuple[int, int],
                                   spatial: tuple[int, ...], eps: float) -> None:
    channels, groups = grouping
    shape = (batch, channels, *spatial)
    check_op(lambda b, v: b.op("groupnorm", v["x"], groups=groups, eps=eps, name="gn"),
             lambda t: torch_grouped(t["x"], t["gn.weight"], t["gn.bias"], groups=groups,
                                     eps=eps),
             {"x": normal(shape), "gn.weight": normal((channels,), 7),
              "gn.bias": normal((channels,), 8)},
             terms=batch * channels // groups * int(np.prod(spatial)))


@given(batch=st.sampled_from((1, 3)), channels=st.integers(1, 7), spatial=SPATIAL,
       affine=st.booleans(), eps=EPS)
@example(batch=2, channels=3, spatial=(7, 3), affine=True, eps=1e-5)
@example(batch=2, channels=3, spatial=(7, 3), affine=False, eps=1e-5)
def test_instancenorm_matches_pytorch(batch: int, channels: int, spatial: tuple[int, ...],
                                      affine: bool, eps: float) -> None:
    shape = (batch, channels, *spatial)
    operands = {"x": normal(shape)}
    if affine:
        operands.update({"inorm.weight": normal((channels,), 7),
                         "inorm.bias": normal((channels,), 8)})

    def torch_function(t: dict[str, Any]) -> Any:
        weight, bias = t.get("inorm.weight"), t.get("inorm.bias")
        if int(np.prod(spatial)) == 1:  # F.instance_norm refuses one element per channel
            return torch_grouped(t["x"], weight, bias, groups=channels, eps=eps)
        return torch_instance(t["x"], weight, bias, eps=eps)

    check_op(lambda b, v: b.op("instancenorm", v["x"], affine=affine, eps=eps, name="inorm"),
             torch_function, operands, terms=batch * int(np.prod(spatial)))


NETWORK = """network net {
    input x: f32[N, 2, 7, 5]
    output logits = x |> conv2d(6, kernel=3, padding=1, name="conv") |> NORM |> relu
        |> flatten |> dense(4, name="fc")
}
train net {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr=0.5)
}
"""
NORMS = {"groupnorm": ('groupnorm(3, name="norm")',
                       lambda x, w, b: F.group_norm(x, 3, w, b, 1e-5)),
         "instancenorm": ('instancenorm(affine=true, name="norm")',
                          lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-5))}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_sgd_step_matches_pytorch(norm: str) -> None:
    """conv2d -> norm -> relu -> dense -> cross_entropy, batch dimension named: one SGD step
    on the reference and on cudasim (the generated forward and backward kernels) gives
    PyTorch's parameters."""
    spelled, torch_norm = NORMS[norm]
    spec = load_training_string(NETWORK.replace("NORM", spelled), "net.net")
    weights = init_weights(spec.graph, seed=4)
    rng = np.random.default_rng(5)
    # Weight and bias away from their defaults (1, 0), so that both enter the gradients.
    weights["norm.weight"] = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    weights["norm.bias"] = rng.standard_normal(6).astype(np.float32)
    batch = {"x": rng.standard_normal((3, 2, 7, 5)).astype(np.float32),
             "label": rng.integers(0, 4, 3)}

    params = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    hidden = F.conv2d(torch.from_numpy(batch["x"]), params["conv.weight"], params["conv.bias"],
                      padding=1)
    hidden = F.relu(torch_norm(hidden, params["norm.weight"], params["norm.bias"]))
    logits = F.linear(hidden.flatten(1), params["fc.weight"], params["fc.bias"])
    expected_loss = F.cross_entropy(logits, torch.from_numpy(batch["label"]))
    expected_loss.backward()
    for backend in ("reference", "cudasim"):
        trainer = Trainer(spec, weights, backend=backend)
        loss = trainer.step(batch)
        assert loss == pytest.approx(expected_loss.item(), rel=1e-5), backend
        for name, param in params.items():
            assert param.grad is not None and float(param.grad.abs().max()) > 0, name
            expected = (param - 0.5 * param.grad).detach().numpy()
            np.testing.assert_allclose(trainer.weights[name], expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{backend}: {name}")
