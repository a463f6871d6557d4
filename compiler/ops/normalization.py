"""Normalisation layers: batchnorm (running statistics, channel dim 1), layernorm and rmsnorm
(last dim), groupnorm and instancenorm (statistics per sample over groups of channels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.gradients import Gradients, count, unbroadcast
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    OnnxForm,
    OpDef,
    OpDoc,
    ParamSpec,
    ShapeError,
    broadcast_shapes,
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


MOMENTUM = AttrSpec("momentum", "float", default=0.1, minimum=0.0, positional=False,
                    help="the running statistics' update rate in training (PyTorch's "
                         "meaning: new = (1 - momentum) * old + momentum * batch), at most 1")


def _batchnorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    if attrs["momentum"] > 1:
        raise ShapeError(f"`batchnorm` momentum must be between 0 and 1, got {attrs['momentum']}")
    require_rank("batchnorm", x, 2, what="[N, C, ...] input")
    _known_dim("batchnorm", x, 1, "channel dimension (dim 1)")
    return x


def _batchnorm_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    channels = (int(inputs[0].shape[1]),)
    return (ParamSpec("weight", channels, ("const", 1.0)),
            ParamSpec("bias", channels, ("const", 0.0)),
            ParamSpec("running_mean", channels, ("const", 0.0), trainable=False),
            ParamSpec("running_var", channels, ("const", 1.0), trainable=False),
            # Counted by training only; inference never reads it, so it is no IR operand.
            ParamSpec("num_batches_tracked", (), ("const", 0.0), trainable=False, dtype="i64",
                      operand=False))


# Training mode (batch statistics, running statistics updated) is not this op: a training step
# rewrites it into ordinary ops (`netc.training_mode`), so it has no VJP of its own.


def _batchnorm_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                         mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    scale = weight / np.sqrt(var + np.float32(attrs["eps"]))
    return ((x - mean.reshape(per_channel)) * scale.reshape(per_channel)
            + bias.reshape(per_channel))


register(OpDef(
    name="batchnorm",
    attrs=(EPS, MOMENTUM),
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
    doc=OpDoc(shapes="rank ≥2, channels at dim 1",
              params="`weight` (1), `bias` (0), `running_mean` (0), `running_var` (1), all "
                     "`[C]`; buffer `num_batches_tracked` (i64 `[]`, 0), read by no kernel",
              flops="2·out", attrs="`momentum` ≤ 1 (used by training only)"),
))


# batchnorm_train (made by netc.training_mode) -----------------------------------------------
#
# Training-mode batchnorm's normalisation: (x - mean) · inverse · weight + bias, broadcasting,
# where mean and inverse = rsqrt(var + eps) are the batch statistics of x over the axes along
# which they are broadcast (size 1 or absent: all but the channels). `training_mode` computes
# them with ordinary reductions (which also give the running statistics) and passes them in;
# the VJP is the closed form of the whole normalisation, so no gradient needs to flow through
# the reductions: with x̂ = (x - mean) · inverse, M the elements per channel,
#   dbias = Σ g,  dweight = Σ g·x̂,  dx = weight · inverse · (g - dbias / M - x̂ · dweight / M)
# (two reductions and one elementwise kernel, where differentiating the reductions gave about
# twenty launches a layer).


def _batchnorm_train_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, *statistics = inputs
    for name, value in zip(("mean", "inverse", "weight", "bias"), statistics):
        if broadcast_shapes("batchnorm_train", x, value) != x.shape or value.dtype != x.dtype:
            raise ShapeError(f"`batchnorm_train` needs a {name} of {x.dtype} that broadcasts "
                             f"to x {format_shape(x.shape)}, got {value}")
    return x


def _batch_axes(x: TensorType, statistic: TensorType) -> list[int]:
    """The axes of x a statistic of this shape was reduced over (broadcast along)."""
    lead = x.rank - statistic.rank
    return [*range(lead), *(lead + axis for axis, size in enumerate(statistic.shape)
                            if size == 1 and x.shape[lead + axis] != 1)]


def _batchnorm_train_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                         cotangent: str) -> Gradients:
    x, mean, inverse, weight, bias = inputs
    x_type, stat_type = builder.type_of(x), builder.type_of(mean)
    axes = _batch_axes(x_type, stat_type)
    lead = x_type.rank - stat_type.rank

    def per_channel_sum(value: str) -> str:
        """Σ over the batch axes, in the statistics' shape."""
        total = builder.op("sum", value, axis=axes, keepdim=True)
        for _ in range(lead):
            total = builder.op("squeeze", total, axis=0)
        return total

    normalized = builder.op("mul", builder.op("sub", x, mean), inverse)
    to_bias = per_channel_sum(cotangent)
    to_weight = per_channel_sum(builder.op("mul", cotangent, normalized))
    elements = count(builder, x_type.shape, axes, x_type.dtype)
    centred = builder.op("sub", builder.op("sub", cotangent, builder.op("div", to_bias, elements)),
                         builder.op("mul", normalized, builder.op("div", to_weight, elements)))
    to_x = builder.op("mul", builder.op("mul", weight, inverse), centred)
    return (to_x, None, None, unbroadcast(builder, to_weight, builder.type_of(weight).shape),
            unbroadcast(builder, to_bias, builder.type_of(bias).shape))


register(OpDef(
    name="batchnorm_train",
    infer=_batchnorm_train_infer,
    reference=lambda attrs, x, mean, inverse, weight, bias: (x - mean) * inverse * weight + bias,
    min_inputs=5,
    max_inputs=5,
    flops=per_element_flops(4),
    kind="normalization",
    role="pointwise",
    expression=CudaExpression("({0} - {1}) * {2} * {3} + {4}"),
    vjp=_batchnorm_train_vjp,
    internal=True,
    summary="(x - mean) · inverse · weight + bias with the batch's statistics: training-mode "
            "batchnorm's normalisation, whose VJP includes the statistics' dependence on x",
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


def _row_mean(builder: Composer, value: str) -> str:
    return builder.op("mean", value, axis=-1, keepdim=True)


def _normalized_vjp(builder: Composer, x: str, centered: str, mean_square: str, eps: float,
                    weight: str, cotangent: str, subtract_mean: bool) -> tuple[str, str]:
    """The gradients with respect to x and the weight of y = x̂·weight (+ bias) along the
    last dimension, x̂ = centered / sqrt(mean_square + eps): with gw = g·weight,
    dx = (gw - [mean(gw)] - x̂·mean(gw·x̂)) / sqrt(mean_square + eps), the bracket for
    layernorm only; dweight = g·x̂ summed over every row."""
    scale = builder.op("rsqrt", builder.op("add", mean_square,
                                           builder.constant(eps, builder.type_of(x).dtype)))
    normalized = builder.op("mul", centered, scale)
    scaled_g = builder.op("mul", cotangent, weight)
    inner = builder.op("sub", scaled_g, builder.op(
        "mul", normalized, _row_mean(builder, builder.op("mul", scaled_g, normalized))))
    if subtract_mean:
        inner = builder.op("sub", inner, _row_mean(builder, scaled_g))
    return builder.op("mul", inner, scale), _over_rows(builder, builder.op("mul", cotangent,
                                                                           normalized))


def _over_rows(builder: Composer, value: str) -> str:
    """`value` summed over every dimension but the last (a per-feature parameter's
    gradient)."""
    rank = builder.type_of(value).rank
    return builder.op("sum", value, axis=list(range(rank - 1))) if rank > 1 else value


def _layernorm_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                   cotangent: str) -> Gradients:
    x, weight, _ = inputs
    centered = builder.op("sub", x, _row_mean(builder, x))
    variance = _row_mean(builder, builder.op("mul", centered, centered))
    to_x, to_weight = _normalized_vjp(builder, x, centered, variance, attrs["eps"], weight,
                                      cotangent, subtract_mean=True)
    return (to_x, to_weight, _over_rows(builder, cotangent))


register(OpDef(
    name="layernorm",
    attrs=(EPS,),
    infer=_layernorm_infer,
    reference=_layernorm_reference,
    vjp=_layernorm_vjp,
    param_names=lambda attrs: ("weight", "bias"),
    params=_layernorm_params,
    # mean, subtract, square, sum, normalise, scale and shift: about 7 per element.
    flops=per_element_flops(7),
    kind="normalization",
    role="row_reduction",
    reduced_axis=lambda attrs, rank: rank - 1,
    summary="(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (biased var)",
    doc=OpDoc(shapes="rank ≥1, over the last dim", params="`weight` (1), `bias` (0), `[last]`",
              flops="7·out"),
))


# groupnorm and instancenorm -------------------------------------------------------------
#
# Both normalise each sample over groups of channels with the statistics of the group (the
# biased variance, as PyTorch): groupnorm over `groups` groups of C / groups channels,
# instancenorm over each channel alone (groupnorm with one channel a group), then scale and
# shift per channel. One CUDA kernel computes both (`norm_rows` in templates/rowwise.cuh);
# their VJP is the closed form of both (`_grouped_vjp`).


def _grouped_infer(op: str, x: TensorType, minimum_rank: int) -> TensorType:
    require_rank(op, x, minimum_rank, what="[N, C, ...] input")
    for axis in range(1, x.rank):
        _known_dim(op, x, axis, "size for every dimension after the first")
    return x


def _normalized_groups(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """`x` [N, C, ...] normalised over each of `groups` groups of channels of each sample."""
    grouped = x.reshape(x.shape[0], groups, -1)
    centered = grouped - grouped.mean(axis=-1, keepdims=True, dtype=np.float32)
    variance = np.mean(centered * centered, axis=-1, keepdims=True, dtype=np.float32)
    return (centered / np.sqrt(variance + np.float32(eps))).reshape(x.shape)


def _per_channel(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 2)
    return x * weight.reshape(shape) + bias.reshape(shape)


def _grouped_vjp(builder: Composer, x: str, groups: int, eps: float, affine: Sequence[str],
                 cotangent: str) -> Gradients:
    """The gradients of `_normalized_groups` then `_per_channel` (when `affine` gives the
    weight and bias) with respect to x, weight and bias, in closed form over each group
    ([N, C, ...] viewed as [N, groups, C / groups · ...]; x̂ the normalised x, rstd the
    group's 1 / sqrt(var + eps), g' = g·weight per channel, or g without `affine`):
      dx = rstd · (g' - mean(g') - x̂ · mean(g'·x̂)),  dweight = Σ g·x̂,  dbias = Σ g,
    the sums over every dimension but the channels. The group's statistics are computed
    again from x (mean, biased variance, rsqrt), as the forward kernel keeps none."""
    x_type = builder.type_of(x)
    rank = x_type.rank

    def grouped(value: str) -> str:
        return builder.op("reshape", value, dims=[groups, -1])

    def ungrouped(value: str) -> str:
        return builder.op("reshape", value, dims=list(x_type.shape[1:]))

    x_grouped = grouped(x)
    centered = builder.op("sub", x_grouped, _row_mean(builder, x_grouped))
    variance = _row_mean(builder, builder.op("mul", centered, centered))
    rstd = builder.op("rsqrt", builder.op("add", variance, builder.constant(eps, x_type.dtype)))
    normalized = builder.op("mul", centered, rstd)
    scaled_g = cotangent
    if affine:
        # The weight [C] as [C, 1, ...], along the dims after the channels.
        weight = (builder.op("reshape", affine[0], dims=[1] * (rank - 2)) if rank > 2
                  else affine[0])
        scaled_g = builder.op("mul", cotangent, weight)
    scaled_g = grouped(scaled_g)
    inner = builder.op("sub", builder.op("sub", scaled_g, _row_mean(builder, scaled_g)),
                       builder.op("mul", normalized, _row_mean(
                           builder, builder.op("mul", scaled_g, normalized))))
    to_x = ungrouped(builder.op("mul", inner, rstd))
    if not affine:
        return (to_x,)
    not_channels = [0, *range(2, rank)]
    to_weight = builder.op("sum", builder.op("mul", cotangent, ungrouped(normalized)),
                           axis=not_channels)
    return (to_x, to_weight, builder.op("sum", cotangent, axis=not_channels))


def _channel_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    channels = (int(inputs[0].shape[1]),)
    return (ParamSpec("weight", channels, ("const", 1.0)),
            ParamSpec("bias", channels, ("const", 0.0)))


def _groupnorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    _grouped_infer("groupnorm", x, 2)
    channels, groups = int(x.shape[1]), attrs["groups"]
    if channels % groups:
        raise ShapeError(f"`groupnorm` needs the channels (dim 1 of {format_shape(x.shape)}) to "
                         f"split into {groups} groups of equal size; {channels} channels do not")
    return x


def _groupnorm_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
                         bias: np.ndarray) -> np.ndarray:
    return _per_channel(_normalized_groups(x, attrs["groups"], attrs["eps"]), weight, bias)


register(OpDef(
    name="groupnorm",
    attrs=(AttrSpec("groups", "int", minimum=1, help="channel groups (they divide C)"), EPS),
    infer=_groupnorm_infer,
    reference=_groupnorm_reference,
    vjp=lambda builder, attrs, inputs, output, g: _grouped_vjp(
        builder, inputs[0], attrs["groups"], attrs["eps"], inputs[1:], g),
    param_names=lambda attrs: ("weight", "bias"),
    params=_channel_params,
    # mean, subtract, square, sum, normalise, scale and shift, as layernorm.
    flops=per_element_flops(7),
    kind="normalization",
    role="row_reduction",
    # A row is one group of one sample: dims 1 and after; the fusion heuristic's row length
    # is read from the last of them.
    reduced_axis=lambda attrs, rank: rank - 1,
    summary="(x - mean) / sqrt(var + eps) over each group of C / groups channels of a sample "
            "(biased var), then * weight + bias per channel",
    doc=OpDoc(shapes="rank ≥2, channels at dim 1",
              params="`weight` (1), `bias` (0), `[C]`", flops="7·out",
              attrs="`groups` divides C"),
))


def _instancenorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    return _grouped_infer("instancenorm", x, 3)


def _instancenorm_reference(attrs: Attrs, x: np.ndarray, *affine: np.ndarray) -> np.ndarray:
    normalised = _normalized_groups(x, x.shape[1], attrs["eps"])
    return _per_channel(normalised, *affine) if affine else normalised


register(OpDef(
    name="instancenorm",
    attrs=(EPS, AttrSpec("affine", "bool", default=False,
                         help="learn a per-channel weight and bias, as nn.InstanceNorm2d(affine=)")),
    infer=_instancenorm_infer,
    reference=_instancenorm_reference,
    vjp=lambda builder, attrs, inputs, output, g: _grouped_vjp(
        builder, inputs[0], int(builder.type_of(inputs[0]).shape[1]), attrs["eps"],
        inputs[1:], g),
    param_names=lambda attrs: ("weight", "bias") if attrs["affine"] else (),
    params=lambda attrs, inputs: _channel_params(attrs, inputs) if attrs["affine"] else (),
    flops=per_element_flops(7),
    kind="normalization",
    role="row_reduction",
    reduced_axis=lambda attrs, rank: rank - 1,
    summary="(x - mean) / sqrt(var + eps) over the spatial dims of each channel of each "
            "sample (biased var; no running statistics, as `F.instance_norm`), then with "
            "`affine=true` * weight + bias per channel",
    doc=OpDoc(shapes="rank ≥3, channels at dim 1",
              params="with `affine=true`: `weight` (1), `bias` (0), `[C]`", flops="7·out"),
))


# rmsnorm ----------------------------------------------------------------------------------


def _rmsnorm_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    return (ParamSpec("weight", (int(inputs[0].shape[-1]),), ("const", 1.0)),)


def _rmsnorm_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("rmsnorm", x, 1)
    _known_dim("rmsnorm", x, -1, "last dimension")
    return x


def _rmsnorm_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    mean_square = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return x * (np.float32(1) / np.sqrt(mean_square + np.float32(attrs["eps"]))) * weight


register(OpDef(
    name="rmsnorm",
    attrs=(AttrSpec("eps", "float", default=1e-6, minimum=0.0,
                    help="added to the mean square (nn.RMSNorm's default is the dtype's "
                         "machine epsilon: give it to match a model)"),),
    infer=_rmsnorm_infer,
    reference=_rmsnorm_reference,
    vjp=lambda builder, attrs, inputs, output, g: _normalized_vjp(
        builder, inputs[0], inputs[0],
        _row_mean(builder, builder.op("mul", inputs[0], inputs[0])), attrs["eps"], inputs[1],
        g, subtract_mean=False),
    param_names=lambda attrs: ("weight",),
    params=_rmsnorm_params,
    # square, sum, rsqrt, scale twice.
    flops=per_element_flops(4),
    kind="normalization",
    role="row_reduction",
    reduced_axis=lambda attrs, rank: rank - 1,
    summary="x / sqrt(mean(x²) + eps) * weight over the last dimension (`nn.RMSNorm`)",
    doc=OpDoc(shapes="rank ≥1, over the last dim", params="`weight` (1), `[last]`",
              flops="4·out"),
))
