"""Ops built on matrix products: dense, conv2d and matmul."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.registry import (
    AttrSpec,
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
from netc.ops.windows import Window, spatial_output


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
    summary="2-D cross-correlation over NCHW; padding kept as (top, left, bottom, right)",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, filters, H', W']`",
              params="`weight [filters, C/groups, kh, kw]`, `bias [filters]`: U(±1/√fan_in), "
                     "fan_in = C/groups·kh·kw",
              flops="2·out·C/groups·kh·kw (+out)"),
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
    summary="a @ b, batched with NumPy's broadcasting rules",
    doc=OpDoc(shapes="NumPy `matmul` rules, 1-D operands included", flops="2·out·k"),
))
