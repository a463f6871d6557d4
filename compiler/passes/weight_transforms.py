"""Weights derived at compile time: folding rewrites parameters, symbolically.

A pass that changes what a layer's parameters are (batchnorm folded into a conv) never touches
arrays. It adds new `param` nodes (`conv2d_0.weight@folded`) and, for each, a
`WeightTransform`: the new tensor's name, the rule that computes it (a name in `RULES`, so the
formula is data, not a closure), the names of the tensors it reads and the rule's attributes.
`apply_weight_transforms` evaluates the records in NumPy, in order, so a transform may read
the result of an earlier one.

This keeps optimisation independent of any particular weights: `netc explain` and code
generation optimise a network without weights, and at run time netc always receives the
user's original weights file and derives the folded tensors from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from netc.ir import Attrs


@dataclass(frozen=True)
class WeightTransform:
    output: str
    """The new parameter's name (a `param` node id of the optimised graph)."""
    rule: str
    """A key of `RULES`."""
    inputs: tuple[str, ...]
    """Names of the tensors the rule reads, in the rule's argument order."""
    attrs: Attrs = field(default_factory=Attrs)

    def __str__(self) -> str:
        attrs = "".join(f", {k}={v!r}" for k, v in self.attrs.items())
        return f"{self.output} = {self.rule}({', '.join(self.inputs)}{attrs})"


def _batchnorm_scale(attrs: Attrs, gamma: np.ndarray, variance: np.ndarray) -> np.ndarray:
    return gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + attrs["eps"])


def _batchnorm_weight(attrs: Attrs, weight: np.ndarray, gamma: np.ndarray,
                      variance: np.ndarray) -> np.ndarray:
    """weight * scale, per output channel (dim 0 of a conv2d or dense weight)."""
    scale = _batchnorm_scale(attrs, gamma, variance)
    per_channel = (-1,) + (1,) * (weight.ndim - 1)
    return weight.astype(np.float64) * scale.reshape(per_channel)


def _batchnorm_bias(attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
    """(bias - mean) * scale + beta; the layer's bias is the first array when it had one."""
    bias = arrays[0].astype(np.float64) if attrs["has_bias"] else 0.0
    gamma, beta, mean, variance = arrays[-4:]
    scale = _batchnorm_scale(attrs, gamma, variance)
    return (bias - mean.astype(np.float64)) * scale + beta.astype(np.float64)


RULES: dict[str, Callable[..., np.ndarray]] = {
    # (weight, gamma, running_var; eps) -> the layer's weight scaled per output channel
    "batchnorm_weight": _batchnorm_weight,
    # ([bias,] gamma, beta, running_mean, running_var; eps, has_bias) -> the layer's new bias
    "batchnorm_bias": _batchnorm_bias,
}
"""Every rule takes (attrs, *input arrays) and returns the new tensor (any float dtype)."""


def apply_weight_transforms(transforms: Sequence[WeightTransform],
                            weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`weights` plus every derived tensor (float32), computed in float64 in order."""
    result = dict(weights)
    for transform in transforms:
        missing = [name for name in transform.inputs if name not in result]
        if missing:
            raise KeyError(f"weight transform {transform} needs {', '.join(missing)}, "
                           "which the weights do not hold")
        arrays = [np.asarray(result[name]) for name in transform.inputs]
        value = RULES[transform.rule](transform.attrs, *arrays)
        result[transform.output] = np.asarray(value, dtype=np.float32)
    return result
