"""Normalisation layers: batchnorm (running statistics, channel dim 1) and layernorm (last dim)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.registry import (
    AttrSpec,
    CudaExpression,
    OnnxForm,
    OpDef,
    ParamSpec,
    ShapeError,
    per_element_flops,
    register,
    require_rank,
)

EPS = AttrSpec("eps", "float", default=1e-5, minimum=0.0, help="added to the variance")


def _known_dim(op: str, x: TensorType, axis: int, what: str) -> int:
    size = x.shape[axis]
    if isinstance(size, str):
        raise ShapeError(f"`{op}` needs a known {what}, got {format_shape(x.shape)}")
    return size


# batchnorm --------------------------------------------------------------------------------


def _batchnorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("batchnorm", x, 2, what="[N, C, ...] input")
    _known_dim("batchnorm", x, 1, "channel dimension (dim 1)")
    return x


def _batchnorm_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    channels = (int(inputs[0].shape[1]),)
    return (ParamSpec("weight", channels, ("const", 1.0)),
            ParamSpec("bias", channels, ("const", 0.0)),
            ParamSpec("running_mean", channels, ("const", 0.0), trainable=False),
            ParamSpec("running_var", channels, ("const", 1.0), trainable=False))


def _batchnorm_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                         mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    scale = weight / np.sqrt(var + np.float32(attrs["eps"]))
    return ((x - mean.reshape(per_channel)) * scale.reshape(per_channel)
            + bias.reshape(per_channel))


register(OpDef(
    name="batchnorm",
    attrs=(EPS,),
    infer=_batchnorm_infer,
    reference=_batchnorm_reference,
    param_names=lambda attrs: ("weight", "bias", "running_mean", "running_var"),
    params=_batchnorm_params,
    # Inference batchnorm is one multiply-add per element once scale and shift are folded.
    flops=per_element_flops(2),
    kind="normalization",
    # Inference batchnorm is pointwise: fusion treats it like any activation.
    role="pointwise",
    # x, weight, bias, running_mean, running_var, eps
    expression=CudaExpression("({0} - {3}) * rsqrtf({4} + {5}) * {1} + {2}", floats=("eps",),
                              channel_params=True),
    onnx=OnnxForm("BatchNormalization", (("epsilon", "eps"),)),
    summary="(x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel (dim 1)",
))


# layernorm --------------------------------------------------------------------------------


def _layernorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("layernorm", x, 1)
    _known_dim("layernorm", x, -1, "last dimension")
    return x


def _layernorm_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    features = (int(inputs[0].shape[-1]),)
    return (ParamSpec("weight", features, ("const", 1.0)),
            ParamSpec("bias", features, ("const", 0.0)))


def _layernorm_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
                         bias: np.ndarray) -> np.ndarray:
    centered = x - x.mean(axis=-1, keepdims=True, dtype=np.float32)
    variance = np.mean(centered * centered, axis=-1, keepdims=True, dtype=np.float32)
    return centered / np.sqrt(variance + np.float32(attrs["eps"])) * weight + bias


register(OpDef(
    name="layernorm",
    attrs=(EPS,),
    infer=_layernorm_infer,
    reference=_layernorm_reference,
    param_names=lambda attrs: ("weight", "bias"),
    params=_layernorm_params,
    # mean, subtract, square, sum, normalise, scale and shift: about 7 per element.
    flops=per_element_flops(7),
    kind="normalization",
    role="row_reduction",
    reduced_axis=lambda attrs, rank: rank - 1,
    summary="(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (biased var)",
))
