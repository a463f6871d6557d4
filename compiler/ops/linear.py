"""Ops built on matrix products: dense, conv2d, matmul and matmul_nt."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.gradients import Gradients, unbroadcast
from netc.ops.registry import (
    AttrSpec,
    Composer,
    GemmView,
    OnnxForm,
    OpDef,
    OpDoc,
    ParamSpec,
    Shape,
    ShapeError,
    broadcast_shapes,
    int_pair,
    register,
    require_batch_first,
    require_rank,
    same_dtype,
)
from netc.ops.windows import Window, crop_padding, spatial_output


def _bias_names(attrs: Attrs) -> tuple[str, ...]:
    return ("weight", "bias") if attrs["bias"] else ("weight",)


def _dense_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("dense", x, 1)
    if isinstance(x.shape[-1], str):
        raise ShapeError(f"`dense` needs a known last dimension, got {format_shape(x.shape)}")
    return TensorType(x.dtype, (*x.shape[:-1], attrs["units"]))


def _dense_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    fan_in = int(inputs[0].shape[-1])
    # PyTorch's nn.Linear: kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    # and the bias is drawn from the same range.
    bound = 1.0 / math.sqrt(fan_in)
    specs = [ParamSpec("weight", (attrs["units"], fan_in), ("uniform", bound))]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (attrs["units"],), ("uniform", bound)))
    return tuple(specs)


def _dense_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
                     bias: np.ndarray | None = None) -> np.ndarray:
    y = x @ weight.T
    return y + bias if bias is not None else y


def _dense_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    fan_in = inputs[0][-1]
    return 2 * math.prod(output) * fan_in + (math.prod(output) if attrs["bias"] else 0)


def _dense_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    # Every row of x (the batch times any middle dims) against the [units, in] weight.
    x = inputs[0]
    return GemmView(m=x[:-1], n=(attrs["units"],), k=x[-1:])


def _swap_last(builder: Composer, value: str) -> str:
    """`value` with its last two dimensions swapped."""
    rank = builder.type_of(value).rank
    return builder.op("transpose", value, perm=[*range(rank - 2), rank - 1, rank - 2])


def _dense_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
               cotangent: str) -> Gradients:
    """dx = g @ W; dW = g^T @ x summed over every row (the batch and any middle dims);
    db = g summed the same way."""
    x, weight = inputs[:2]
    rank = builder.type_of(x).rank
    to_x = builder.op("matmul", cotangent, weight)
    if rank == 1:
        to_weight = builder.op("mul", builder.op("unsqueeze", cotangent, axis=1),
                               builder.op("unsqueeze", x, axis=0))
    else:
        # [..., units, rows] @ [..., rows, in], then the sum over the leading dims.
        to_weight = builder.op("matmul", _swap_last(builder, cotangent), x)
        if rank > 2:
            to_weight = builder.op("sum", to_weight, axis=list(range(rank - 2)))
    if not attrs["bias"]:
        return (to_x, to_weight)
    to_bias = builder.op("sum", cotangent, axis=list(range(rank - 1))) if rank > 1 else cotangent
    return (to_x, to_weight, to_bias)


register(OpDef(
    name="dense",
    attrs=(
        AttrSpec("units", "int", minimum=1, help="number of output features"),
        AttrSpec("bias", "bool", default=True),
    ),
    infer=_dense_infer,
    reference=_dense_reference,
    param_names=_bias_names,
    params=_dense_params,
    flops=_dense_flops,
    kind="gemm",
    role="gemm",
    gemm_view=_dense_gemm,
    vjp=_dense_vjp,
    summary="y = x @ weight.T + bias, on the last dimension",
    doc=OpDoc(shapes="`[..., in]` → `[..., units]`",
              params="`weight [units, in]`, `bias [units]`: U(±1/√in)",
              flops="2·out·in (+out)"),
))


# conv2d ---------------------------------------------------------------------------------


def _conv2d_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return Window.from_attrs("conv2d", attrs).to_attrs(attrs)


def _conv2d_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    height, width = spatial_output("conv2d", attrs, inputs)
    channels, groups, filters = x.shape[1], attrs["groups"], attrs["filters"]
    if isinstance(channels, str) or channels % groups:
        raise ShapeError(f"`conv2d` with groups={groups} needs input channels divisible by "
                         f"{groups}, got {format_shape(x.shape)}")
    if filters % groups:
        raise ShapeError(f"`conv2d` with groups={groups} needs filters divisible by {groups}, "
                         f"got filters={filters} for input {format_shape(x.shape)}")
    return TensorType(x.dtype, (x.shape[0], filters, height, width))


def _conv2d_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    kernel = int_pair(attrs["kernel"])
    per_group = int(inputs[0].shape[1]) // attrs["groups"]
    # PyTorch's nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike.
    bound = 1.0 / math.sqrt(per_group * kernel[0] * kernel[1])
    specs = [ParamSpec("weight", (attrs["filters"], per_group, *kernel), ("uniform", bound))]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (attrs["filters"],), ("uniform", bound)))
    return tuple(specs)


def _conv2d_reference(attrs: Attrs, x: np.ndarray, weight: np.ndarray,
                      bias: np.ndarray | None = None) -> np.ndarray:
    window = Window.from_attrs("conv2d", attrs)
    groups = attrs["groups"]
    batch, channels = x.shape[:2]
    filters, kernel_h, kernel_w = weight.shape[0], weight.shape[2], weight.shape[3]
    windows = window.windows(x, 0.0)
    out_h, out_w = windows.shape[2:4]
    # im2col: one row of C/groups*kh*kw values per output pixel, then one batched GEMM per group.
    columns = (windows.reshape(batch, groups, channels // groups, out_h, out_w, kernel_h, kernel_w)
               .transpose(0, 1, 3, 4, 2, 5, 6)
               .reshape(batch, groups, out_h * out_w, -1))
    kernels = weight.reshape(groups, filters // groups, -1).transpose(0, 2, 1)
    y = (columns @ kernels).transpose(0, 1, 3, 2).reshape(batch, filters, out_h, out_w)
    return y + bias.reshape(-1, 1, 1) if bias is not None else y


def _conv2d_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    kernel = int_pair(attrs["kernel"])
    per_output = inputs[0][1] // attrs["groups"] * kernel[0] * kernel[1]
    return 2 * math.prod(output) * per_output + (math.prod(output) if attrs["bias"] else 0)


def _conv2d_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    # Implicit GEMM per group: out channels x (images * out pixels), reduced over the
    # group's input channels times the kernel window.
    images, channels = inputs[0][0], int(inputs[0][1])
    groups = int(attrs["groups"])
    kernel_h, kernel_w = int_pair(attrs["kernel"])
    return GemmView(m=(int(output[1]) // groups,), n=(images, *output[2:]),
                    k=(channels // groups * kernel_h * kernel_w,), count=(groups,))


def _conv2d_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                cotangent: str) -> Gradients:
    """dx is the transposed convolution of g by the same weight; dW the implicit GEMM of g by
    the input's window columns over every image and pixel (`conv2d_weight_grad`); db g summed
    over all but the channels."""
    x, weight = inputs[:2]
    x_type = builder.type_of(x)
    window = Window.from_attrs("conv2d", attrs)
    groups = attrs["groups"]
    _, channels, height, width = x_type.shape
    out_h, out_w = (int(d) for d in builder.type_of(output).shape[2:])
    (kernel_h, kernel_w), (stride_h, stride_w) = window.kernel, window.stride
    dilation_h, dilation_w = window.dilation
    top, left, bottom, right = window.padding
    shared = dict(filters=channels, kernel=window.kernel, stride=window.stride,
                  dilation=window.dilation, groups=groups, bias=False)
    if (top, left) == (bottom, right):
        # The transposed convolution gives (out - 1)·stride + dilation·(kernel - 1) + 1
        # rows: the padded input's up to the last a window reads; output_padding adds the
        # rest.
        extra = [int(height) + 2 * top - (out_h - 1) * stride_h - dilation_h * (kernel_h - 1) - 1,
                 int(width) + 2 * left - (out_w - 1) * stride_w - dilation_w * (kernel_w - 1) - 1]
        to_x = builder.op("conv_transpose2d", cotangent, weight, padding=(top, left),
                          output_padding=extra, **shared)
    else:  # asymmetric ("same" with an even kernel): crop the padding afterwards
        to_x = crop_padding(builder, builder.op("conv_transpose2d", cotangent, weight,
                                                **shared), window, x_type)
    # dW is an implicit GEMM over the images and output pixels (`conv2d_weight_grad`), split
    # into `splits` partial sums over them when its tiles alone would leave the GPU idle,
    # summed here in a fixed order.
    filters = attrs["filters"]
    splits = weight_grad_splits(filters // groups, channels // groups * kernel_h * kernel_w,
                                groups, out_h * out_w)
    partials = builder.op("conv2d_weight_grad", x, cotangent, filters=filters,
                          kernel=window.kernel, stride=window.stride, padding=window.padding,
                          dilation=window.dilation, groups=groups, splits=splits)
    to_weight = builder.op("sum", partials, axis=0)
    if not attrs["bias"]:
        return (to_x, to_weight)
    return (to_x, to_weight, builder.op("sum", cotangent, axis=[0, 2, 3]))


register(OpDef(
    name="conv2d",
    attrs=(
        AttrSpec("filters", "int", minimum=1, help="number of output channels"),
        AttrSpec("kernel", "int_pair", minimum=1, help="kernel size: an int or [h, w]"),
        AttrSpec("stride", "int_pair", default=1, minimum=1),
        AttrSpec("padding", "padding", default=0, minimum=0,
                 help='an int, [h, w], or "same" (stride 1 only)'),
        AttrSpec("dilation", "int_pair", default=1, minimum=1),
        AttrSpec("groups", "int", default=1, minimum=1),
        AttrSpec("bias", "bool", default=True),
    ),
    infer=_conv2d_infer,
    reference=_conv2d_reference,
    normalize=_conv2d_normalize,
    param_names=_bias_names,
    params=_conv2d_params,
    flops=_conv2d_flops,
    kind="conv",
    role="conv",
    gemm_view=_conv2d_gemm,
    vjp=_conv2d_vjp,
    summary="2-D cross-correlation over NCHW; padding kept as (top, left, bottom, right)",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, filters, H', W']`",
              params="`weight [filters, C/groups, kh, kw]`, `bias [filters]`: U(±1/√fan_in), "
                     "fan_in = C/groups·kh·kw",
              flops="2·out·C/groups·kh·kw (+out)"),
))


# conv2d_weight_grad (made by conv2d's VJP) ----------------------------------------------

WEIGHT_GRAD_BLOCKS = 264
"""How many blocks conv2d's weight gradient aims to launch: two waves of a 132-SM GPU, on the
64 x 64 tiles it is computed in (`netc.codegen.kernels`)."""
WEIGHT_GRAD_MAX_SPLITS = 16
"""At most this many partial sums (their buffer is `splits` times the weight)."""
WEIGHT_GRAD_SPLIT_PIXELS = 64
"""Each split takes at least this many output pixels of one image (batch 1: no empty splits
of a small feature map)."""


def weight_grad_splits(rows: int, columns: int, groups: int, pixels: int) -> int:
    """The number of partial sums conv2d's weight gradient is split into (split-K over the
    images and output pixels): enough that `groups` GEMMs of `rows` x `columns` on 64 x 64
    tiles, times the splits, make `WEIGHT_GRAD_BLOCKS` blocks; at most
    `WEIGHT_GRAD_MAX_SPLITS`, and one per `WEIGHT_GRAD_SPLIT_PIXELS` pixels of an image."""
    tiles = groups * -(-rows // 64) * -(-columns // 64)
    wanted = -(-WEIGHT_GRAD_BLOCKS // tiles)
    return max(1, min(wanted, WEIGHT_GRAD_MAX_SPLITS, pixels // WEIGHT_GRAD_SPLIT_PIXELS))


def _weight_grad_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, cotangent = inputs
    require_rank("conv2d_weight_grad", x, 4, 4, "NCHW input")
    height, width = spatial_output("conv2d", attrs, [x])
    expected = (x.shape[0], attrs["filters"], height, width)
    if tuple(cotangent.shape) != expected or cotangent.dtype != x.dtype:
        raise ShapeError(f"`conv2d_weight_grad` needs a cotangent {x.dtype}"
                         f"{format_shape(expected)}, got {cotangent}")
    kernel_h, kernel_w = int_pair(attrs["kernel"])
    return TensorType(x.dtype, (attrs["splits"], attrs["filters"],
                                int(x.shape[1]) // attrs["groups"], kernel_h, kernel_w))


def _weight_grad_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    # Per group: filters x (channels · taps), reduced over (images · out pixels), which the
    # splits share.
    images, channels = inputs[0][0], int(inputs[0][1])
    _, _, out_h, out_w = inputs[1]
    groups, (kernel_h, kernel_w) = int(attrs["groups"]), int_pair(attrs["kernel"])
    return GemmView(m=(int(attrs["filters"]) // groups,),
                    n=(channels // groups * kernel_h * kernel_w,),
                    k=(images, out_h, out_w), count=(groups,))


def _weight_grad_reference(attrs: Attrs, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """Split s sums k = (image, out_y, out_x) in [s·chunk, (s + 1)·chunk), chunk =
    ceil(K / splits), K = images · out_h · out_w: the kernel's partial sums."""
    windows = Window.from_attrs("conv2d", attrs).windows(x, 0.0)  # [N, C, oh, ow, kh, kw]
    groups, splits, filters = attrs["groups"], attrs["splits"], attrs["filters"]
    batch, channels, out_h, out_w, kernel_h, kernel_w = windows.shape
    per_group = channels // groups
    # B [group, K, C/groups · kh · kw] and A [group, filters/groups, K], K = (n, y, x).
    columns = (windows.reshape(batch, groups, per_group, out_h, out_w, kernel_h * kernel_w)
               .transpose(1, 0, 3, 4, 2, 5).reshape(groups, -1, per_group * kernel_h * kernel_w))
    rows = (cotangent.reshape(batch, groups, filters // groups, out_h * out_w)
            .transpose(1, 2, 0, 3).reshape(groups, filters // groups, -1))
    total = rows.shape[-1]
    chunk = -(-total // splits)
    parts = [rows[..., s * chunk:(s + 1) * chunk] @ columns[:, s * chunk:(s + 1) * chunk]
             for s in range(splits)]
    return np.stack(parts).reshape(splits, filters, per_group, kernel_h, kernel_w)


register(OpDef(
    name="conv2d_weight_grad",
    attrs=(
        AttrSpec("filters", "int", minimum=1),
        AttrSpec("kernel", "int_pair", minimum=1),
        AttrSpec("stride", "int_pair", default=1, minimum=1),
        AttrSpec("padding", "padding", default=0, minimum=0),
        AttrSpec("dilation", "int_pair", default=1, minimum=1),
        AttrSpec("groups", "int", default=1, minimum=1),
        AttrSpec("splits", "int", default=1, minimum=1),
    ),
    infer=_weight_grad_infer,
    normalize=_conv2d_normalize,
    reference=_weight_grad_reference,
    min_inputs=2,
    max_inputs=2,
    flops=lambda attrs, inputs, output: 2 * math.prod(inputs[1]) * math.prod(output[2:]),
    kind="conv",
    role="conv",
    gemm_view=_weight_grad_gemm,
    internal=True,
    summary="the gradient of conv2d's weight from its input x and the output's cotangent, as "
            "`splits` partial sums over the images and output pixels (summed after it): "
            "conv2d's VJP makes it",
))


# matmul ---------------------------------------------------------------------------------


def _matmul_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    a, b = inputs
    dtype = same_dtype("matmul", inputs)
    require_rank("matmul", a, 1, what="first input")
    require_rank("matmul", b, 1, what="second input")
    # NumPy's rules: a vector is a 1-row (first) or 1-column (second) matrix, dropped after.
    a_matrix = a.shape if a.rank > 1 else (1, a.shape[0])
    b_matrix = b.shape if b.rank > 1 else (b.shape[0], 1)
    if a_matrix[-1] != b_matrix[-2]:
        raise ShapeError(f"`matmul` cannot multiply {format_shape(a.shape)} by "
                         f"{format_shape(b.shape)}: inner dimensions {a_matrix[-1]} and "
                         f"{b_matrix[-2]} differ")
    batch = broadcast_shapes("matmul", a, b, a_matrix[:-2], b_matrix[:-2])
    rows = a_matrix[-2:-1] if a.rank > 1 else ()
    columns = b_matrix[-1:] if b.rank > 1 else ()
    shape = (*batch, *rows, *columns)
    require_batch_first("matmul", shape, a, b)
    return TensorType(dtype, shape)


def _matmul_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    return 2 * math.prod(output) * inputs[0][-1]


def _matmul_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    # NumPy's rules: a vector is a 1-row (first) or 1-column (second) matrix; the dims of the
    # output before the matrix dims count the matrices.
    a, b = inputs[0], inputs[1]
    a_matrix = a if len(a) > 1 else (1, *a)
    b_matrix = b if len(b) > 1 else (*b, 1)
    batch = output[:len(output) - (len(a) > 1) - (len(b) > 1)]
    return GemmView(m=a_matrix[-2:-1], n=b_matrix[-1:], k=a_matrix[-1:], count=batch)


def _matmul_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                cotangent: str) -> Gradients:
    """da = g @ b^T and db = a^T @ g, each summed back over the batch dims it was broadcast
    along; a vector operand is a 1-row (a) or 1-column (b) matrix, as in the forward op."""
    a, b = inputs
    a_vector, b_vector = builder.type_of(a).rank == 1, builder.type_of(b).rank == 1
    a_matrix = builder.op("unsqueeze", a, axis=0) if a_vector else a
    b_matrix = builder.op("unsqueeze", b, axis=1) if b_vector else b
    g = builder.op("unsqueeze", cotangent, axis=-1) if b_vector else cotangent
    g = builder.op("unsqueeze", g, axis=-2 if builder.type_of(g).rank else 0) \
        if a_vector else g
    to_a = unbroadcast(builder, builder.op("matmul", g, _swap_last(builder, b_matrix)),
                       builder.type_of(a_matrix).shape)
    to_b = unbroadcast(builder, builder.op("matmul", _swap_last(builder, a_matrix), g),
                       builder.type_of(b_matrix).shape)
    return (builder.op("squeeze", to_a, axis=0) if a_vector else to_a,
            builder.op("squeeze", to_b, axis=1) if b_vector else to_b)


register(OpDef(
    name="matmul",
    infer=_matmul_infer,
    reference=lambda attrs, a, b: np.asarray(np.matmul(a, b)),  # 1-D @ 1-D is a scalar
    min_inputs=2,
    max_inputs=2,
    flops=_matmul_flops,
    kind="gemm",
    role="gemm",
    gemm_view=_matmul_gemm,
    onnx=OnnxForm("MatMul"),
    vjp=_matmul_vjp,
    summary="a @ b, batched with NumPy's broadcasting rules",
    doc=OpDoc(shapes="NumPy `matmul` rules, 1-D operands included", flops="2·out·k"),
))


# matmul_nt (made by the fold_transposes pass) --------------------------------------------


def _swap_last_two(shape: Shape) -> Shape:
    return (*shape[:-2], shape[-1], shape[-2])


def _matmul_nt_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    a, b = inputs
    require_rank("matmul_nt", a, 2, what="first input")
    require_rank("matmul_nt", b, 2, what="second input")
    return _matmul_infer(attrs, [a, TensorType(b.dtype, _swap_last_two(b.shape))])


def _matmul_nt_gemm(attrs: Attrs, inputs: Sequence[Shape], output: Shape) -> GemmView:
    return _matmul_gemm(attrs, (inputs[0], _swap_last_two(inputs[1])), output)


def _matmul_nt_decompose(builder: Composer, attrs: Attrs, a: str, b: str) -> str:
    rank = builder.type_of(b).rank
    swapped = builder.op("transpose", b, perm=[*range(rank - 2), rank - 1, rank - 2])
    return builder.op("matmul", a, swapped)


register(OpDef(
    name="matmul_nt",
    infer=_matmul_nt_infer,
    decompose=_matmul_nt_decompose,
    min_inputs=2,
    max_inputs=2,
    flops=lambda attrs, inputs, output: 2 * math.prod(output) * inputs[0][-1],
    kind="gemm",
    role="gemm",
    gemm_view=_matmul_nt_gemm,
    internal=True,
    summary="a @ bᵀ with b's last two dims swapped, batched as matmul: what fold_transposes "
            "makes of a matmul of a transpose, so that the GEMM reads b where it is",
))
