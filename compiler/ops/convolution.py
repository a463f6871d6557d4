"""conv1d and conv_transpose2d, with PyTorch's parameters and semantics.

conv1d (`nn.Conv1d` over [N, C, L]) is computed as conv2d over a height-1 input.

The parameters keep PyTorch's layout (`weight [filters, C/groups, k]`), which is the same
memory as conv2d's `[filters, C/groups, 1, k]`; so the reference, the CUDA lowering (the conv2d
kernel) and the tiling all go through `as_conv2d`, which restates the attributes and shapes in
conv2d's terms. The attributes are ints (PyTorch's int forms; padding is symmetric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, Dim, TensorType, format_shape
from netc.ops.gradients import Gradients, zeros
from netc.ops.linear import weight_grad_splits
from netc.ops.registry import (
    REGISTRY,
    AttrSpec,
    Composer,
    GemmView,
    OpDef,
    OpDoc,
    ParamSpec,
    Shape,
    ShapeError,
    int_pair,
    register,
    require_rank,
)


def as_conv2d(attrs: Attrs) -> Attrs:
    """conv1d's attributes as those of the conv2d over a height-1 input that computes it."""
    padding = attrs["padding"]
    return Attrs(filters=attrs["filters"], kernel=(1, attrs["kernel"]),
                 stride=(1, attrs["stride"]), padding=(0, padding, 0, padding),
                 dilation=(1, attrs["dilation"]), groups=attrs["groups"], bias=attrs["bias"])


def height_one(shape: Sequence[Dim]) -> tuple[Dim, ...]:
    """[N, C, L] (an input, an output or a weight) as [N, C, 1, L]."""
    return (*shape[:2], 1, *shape[2:])


def _infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("conv1d", x, 3, 3, "[N, C, L] input")
    if isinstance(x.shape[2], str):
        raise ShapeError(f"`conv1d` needs a known length, got {format_shape(x.shape)}")
    try:
        out = REGISTRY["conv2d"].infer(as_conv2d(attrs),
                                       [TensorType(x.dtype, height_one(x.shape))])
    except ShapeError as problem:  # conv2d's words, for the 1-D shapes the user wrote
        raise ShapeError(str(problem).replace("`conv2d`", "`conv1d`").replace(
            format_shape(height_one(x.shape)), format_shape(x.shape))) from None
    return TensorType(x.dtype, (out.shape[0], out.shape[1], out.shape[3]))


def _params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    per_group = int(inputs[0].shape[1]) // attrs["groups"]
    # PyTorch's nn.Conv1d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike.
    bound = 1.0 / math.sqrt(per_group * attrs["kernel"])
    specs = [ParamSpec("weight", (attrs["filters"], per_group, attrs["kernel"]),
                       ("uniform", bound))]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (attrs["filters"],), ("uniform", bound)))
    return tuple(specs)


def _reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
               bias: np.ndarray | None = None) -> np.ndarray:
    arrays = [x[:, :, None, :], weight[:, :, None, :], *([bias] if bias is not None else [])]
    y = REGISTRY["conv2d"].reference(as_conv2d(attrs), *arrays)
    return np.asarray(y)[:, :, 0, :]


def _flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    per_output = inputs[0][1] // attrs["groups"] * attrs["kernel"]
    return 2 * math.prod(output) * per_output + (math.prod(output) if attrs["bias"] else 0)


def _gemm_view(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    view = REGISTRY["conv2d"].gemm_view
    assert view is not None
    return view(as_conv2d(attrs), [height_one(shape) for shape in inputs], height_one(output))


def _conv1d_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                cotangent: str) -> Gradients:
    """conv2d's, on the height-1 views of every operand (`as_conv2d`)."""
    vjp = REGISTRY["conv2d"].vjp
    assert vjp is not None
    x, weight, *bias = inputs
    tall = [builder.op("unsqueeze", value, axis=2) for value in (x, weight, output, cotangent)]
    gradients = vjp(builder, as_conv2d(attrs), (tall[0], tall[1], *bias), tall[2], tall[3])
    return (builder.op("squeeze", gradients[0], axis=2),
            builder.op("squeeze", gradients[1], axis=2), *gradients[2:])


register(OpDef(
    name="conv1d",
    attrs=(
        AttrSpec("filters", "int", minimum=1, help="number of output channels"),
        AttrSpec("kernel", "int", minimum=1, help="kernel size"),
        AttrSpec("stride", "int", default=1, minimum=1),
        AttrSpec("padding", "int", default=0, minimum=0, help="zeros on both ends"),
        AttrSpec("dilation", "int", default=1, minimum=1),
        AttrSpec("groups", "int", default=1, minimum=1),
        AttrSpec("bias", "bool", default=True),
    ),
    infer=_infer,
    reference=_reference,
    vjp=_conv1d_vjp,
    param_names=lambda attrs: ("weight", "bias") if attrs["bias"] else ("weight",),
    params=_params,
    flops=_flops,
    kind="conv",
    role="conv",
    gemm_view=_gemm_view,
    summary="1-D cross-correlation over [N, C, L] (nn.Conv1d), computed as conv2d over a "
            "height-1 input",
    doc=OpDoc(shapes="`[N, C, L]` → `[N, filters, L']`",
              params="`weight [filters, C/groups, k]`, `bias [filters]`: U(±1/√fan_in), "
                     "fan_in = C/groups·k",
              flops="2·out·C/groups·k (+out)",
              attrs="`C` and `filters` divisible by `groups`; padding symmetric (an int)"),
))


# conv_transpose2d -----------------------------------------------------------------------


def _transpose_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return attrs.replace(**{name: int_pair(attrs[name]) for name in
                            ("kernel", "stride", "padding", "output_padding", "dilation")})


def transposed_size(size: int, kernel: int, stride: int, padding: int, output_padding: int,
                    dilation: int) -> int:
    """PyTorch's output size of a transposed convolution along one axis."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _transpose_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    op = "conv_transpose2d"
    require_rank(op, x, 4, 4, "NCHW input")
    channels, height, width = x.shape[1:]
    if isinstance(channels, str) or isinstance(height, str) or isinstance(width, str):
        raise ShapeError(f"`{op}` needs known channels and spatial dimensions, got "
                         f"{format_shape(x.shape)}")
    groups, filters = attrs["groups"], attrs["filters"]
    if channels % groups or filters % groups:
        raise ShapeError(f"`{op}` with groups={groups} needs input channels and filters "
                         f"divisible by {groups}, got filters={filters} for input "
                         f"{format_shape(x.shape)}")
    pairs = [int_pair(attrs[name]) for name in
             ("kernel", "stride", "padding", "output_padding", "dilation")]
    sizes = []
    for axis, size in enumerate((height, width)):
        kernel, stride, padding, output_padding, dilation = (pair[axis] for pair in pairs)
        if output_padding >= max(stride, dilation):
            raise ShapeError(f"`{op}` output_padding {format_shape(pairs[3])} must be smaller "
                             f"than the stride {format_shape(pairs[1])} or the dilation "
                             f"{format_shape(pairs[4])}")
        sizes.append(transposed_size(size, kernel, stride, padding, output_padding, dilation))
    if min(sizes) < 1:
        raise ShapeError(f"`{op}` on {format_shape(x.shape)} with padding "
                         f"{format_shape(pairs[2])} leaves an output of {sizes}")
    return TensorType(x.dtype, (x.shape[0], filters, *sizes))


def _transpose_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    kernel = int_pair(attrs["kernel"])
    per_group = attrs["filters"] // attrs["groups"]
    # PyTorch's nn.ConvTranspose2d: fan_in from the weight's dim 1 (filters / groups) times
    # the kernel; U(±1/sqrt(fan_in)) for weight and bias alike.
    bound = 1.0 / math.sqrt(per_group * kernel[0] * kernel[1])
    specs = [ParamSpec("weight", (int(inputs[0].shape[1]), per_group, *kernel),
                       ("uniform", bound))]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (attrs["filters"],), ("uniform", bound)))
    return tuple(specs)


def _transpose_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
                         bias: np.ndarray | None = None) -> np.ndarray:
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w), (extra_h, extra_w), \
        (dilation_h, dilation_w) = (int_pair(attrs[name]) for name in (
            "kernel", "stride", "padding", "output_padding", "dilation"))
    groups = attrs["groups"]
    batch, channels, height, width = x.shape
    group_in, group_out = channels // groups, weight.shape[1]
    # Every input pixel scatters its kernel into the uncropped output, which padding crops.
    full_h = (height - 1) * stride_h + dilation_h * (kernel_h - 1) + 1 + extra_h
    full_w = (width - 1) * stride_w + dilation_w * (kernel_w - 1) + 1 + extra_w
    full = np.zeros((batch, group_out * groups, full_h, full_w), dtype=np.float32)
    for group in range(groups):
        inputs = x[:, group * group_in:(group + 1) * group_in]
        kernels = weight[group * group_in:(group + 1) * group_in]
        outputs = slice(group * group_out, (group + 1) * group_out)
        for ky in range(kernel_h):
            rows = slice(ky * dilation_h, ky * dilation_h + (height - 1) * stride_h + 1, stride_h)
            for kx in range(kernel_w):
                columns = slice(kx * dilation_w, kx * dilation_w + (width - 1) * stride_w + 1,
                                stride_w)
                full[:, outputs, rows, columns] += np.einsum(
                    "nchw,co->nohw", inputs, kernels[:, :, ky, kx], dtype=np.float32)
    y = full[:, :, pad_h:full_h - pad_h, pad_w:full_w - pad_w]
    return y + bias.reshape(-1, 1, 1) if bias is not None else y


def _transpose_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]],
                     output: tuple[int, ...]) -> int:
    kernel = int_pair(attrs["kernel"])
    per_input = attrs["filters"] // attrs["groups"] * kernel[0] * kernel[1]
    return 2 * math.prod(inputs[0]) * per_input + (math.prod(output) if attrs["bias"] else 0)


def _transpose_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    # Implicit GEMM per group, gathering instead of scattering: out channels x (images * out
    # pixels), reduced over the group's input channels times the kernel taps.
    groups = int(attrs["groups"])
    kernel_h, kernel_w = int_pair(attrs["kernel"])
    return GemmView(m=(int(output[1]) // groups,), n=(inputs[0][0], *output[2:]),
                    k=(int(inputs[0][1]) // groups * kernel_h * kernel_w,), count=(groups,))


def _transpose_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                   cotangent: str) -> Gradients:
    """A transposed convolution is the adjoint of conv2d by the same weight ([C, filters /
    groups, kh, kw] is conv2d's [out, in / groups, kh, kw] layout from `filters` channels to
    C), so dx is that conv2d of g, and dW conv2d's weight gradient with the roles swapped: g
    the conv's input, x its output's cotangent; db is g summed. The conv pads g by `padding`
    but at the bottom/right `padding - output_padding`, so that its output is x's size; where
    that is negative, the rows of g past every window (output_padding's, which no element of
    x reached) are cropped instead."""
    x, weight = inputs[:2]
    _, channels, height, width = builder.type_of(x).shape
    (kernel_h, kernel_w), stride, padding, extra, dilation = (int_pair(attrs[name]) for name in (
        "kernel", "stride", "padding", "output_padding", "dilation"))
    groups, filters = attrs["groups"], attrs["filters"]
    crop = [max(0, e - p) for e, p in zip(extra, padding)]
    kept = [int(size) - c for size, c in zip(builder.type_of(cotangent).shape[2:], crop)]
    bias_gradient = (builder.op("sum", cotangent, axis=[0, 2, 3]),) if attrs["bias"] else ()
    if min(kept) < 1:  # the padding crops every element x reaches: y is output_padding only
        return (zeros(builder, builder.type_of(x).shape, builder.type_of(x).dtype),
                zeros(builder, builder.type_of(weight).shape, builder.type_of(weight).dtype),
                *bias_gradient)
    reached = cotangent
    if any(crop):
        reached = builder.op("slice", cotangent, axes=[2, 3], starts=[0, 0], ends=kept)
    window = dict(kernel=(kernel_h, kernel_w), stride=stride, dilation=dilation, groups=groups,
                  padding=(*padding, *(max(0, p - e) for p, e in zip(padding, extra))))
    to_x = builder.op("conv2d", reached, weight, filters=int(channels), bias=False, **window)
    splits = weight_grad_splits(int(channels) // groups, filters // groups * kernel_h * kernel_w,
                                groups, int(height) * int(width))
    to_weight = builder.op("sum", builder.op("conv2d_weight_grad", reached, x,
                                             filters=int(channels), splits=splits, **window),
                           axis=0)
    return (to_x, to_weight, *bias_gradient)


register(OpDef(
    name="conv_transpose2d",
    attrs=(
        AttrSpec("filters", "int", minimum=1, help="number of output channels"),
        AttrSpec("kernel", "int_pair", minimum=1, help="kernel size: an int or [h, w]"),
        AttrSpec("stride", "int_pair", default=1, minimum=1),
        AttrSpec("padding", "int_pair", default=0, minimum=0,
                 help="cropped from both ends of the output"),
        AttrSpec("output_padding", "int_pair", default=0, minimum=0,
                 help="added to the bottom/right of the output"),
        AttrSpec("groups", "int", default=1, minimum=1),
        AttrSpec("dilation", "int_pair", default=1, minimum=1),
        AttrSpec("bias", "bool", default=True),
    ),
    infer=_transpose_infer,
    reference=_transpose_reference,
    normalize=_transpose_normalize,
    param_names=lambda attrs: ("weight", "bias") if attrs["bias"] else ("weight",),
    params=_transpose_params,
    flops=_transpose_flops,
    kind="conv",
    role="conv",
    gemm_view=_transpose_gemm,
    vjp=_transpose_vjp,
    summary="2-D transposed convolution over NCHW (nn.ConvTranspose2d), computed as an "
            "implicit GEMM that gathers",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, filters, (H-1)·s - 2p + d·(k-1) + op + 1, ...]`",
              params="`weight [C, filters/groups, kh, kw]`, `bias [filters]`: U(±1/√fan_in), "
                     "fan_in = filters/groups·kh·kw",
              flops="2·in·filters/groups·kh·kw (+out)",
              attrs="`C` and `filters` divisible by `groups`; `output_padding` smaller than "
                    "the stride or the dilation"),
))
