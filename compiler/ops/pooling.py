"""2-D pooling over NCHW: maxpool2d, avgpool2d, adaptive_avgpool2d, global_avgpool.

The windowed pools share their attributes, normalisation and shape rule; they differ only in
how a window is reduced. As in PyTorch, padding is at most half the kernel (so every window
holds at least one real element), padding never wins a max, and `ceil_mode` rounds the output
size up but drops a last window that would start in the trailing padding (`Window`).

An average counts the padding in its divisor by default (`count_include_pad=True`, PyTorch's
default and the language's since version 2; version 1 counted only real elements). Either way
the part of a ceil-mode window past the padded input is not counted, as in PyTorch.

`adaptive_avgpool2d` averages, for output position i of n along an axis of size s, the input
positions floor(i·s/n) to ceil((i+1)·s/n) (PyTorch's rule): windows of varying size that may
overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.gradients import Gradients, count, spread
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OnnxForm,
    OpDef,
    OpDoc,
    ShapeError,
    int_pair,
    register,
    require_rank,
)
from netc.ops.windows import Window, crop_padding, spatial_output

POOL_ATTRS = (
    AttrSpec("kernel", "int_pair", minimum=1, help="window size: an int or [h, w]"),
    AttrSpec("stride", "int_pair", default=None, minimum=1, help="defaults to the kernel"),
    AttrSpec("padding", "int_pair", default=0, minimum=0, help="at most half the kernel"),
    AttrSpec("ceil_mode", "bool", default=False, positional=False,
             help="round the output size up (a last window starting in the padding is dropped)"),
)
AVGPOOL_ATTRS = (
    *POOL_ATTRS,
    AttrSpec("count_include_pad", "bool", default=True, positional=False,
             help="divide by the whole window, padding included (PyTorch's default)"),
)


def _pool_window(op: str, attrs: Attrs) -> Window:
    window = Window.from_attrs(op, attrs)
    top, left, bottom, right = window.padding
    kernel_h, kernel_w = window.kernel
    if max(top, bottom) > kernel_h // 2 or max(left, right) > kernel_w // 2:
        raise ShapeError(f"`{op}` padding {format_shape(window.padding)} must be at most half "
                         f"the kernel {format_shape(window.kernel)}")
    return window


def _pool_infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        _pool_window(op, attrs)
        height, width = spatial_output(op, attrs, inputs)
        x = inputs[0]
        return TensorType(x.dtype, (x.shape[0], x.shape[1], height, width))
    return infer


def _pool_normalize(op: str) -> Callable[[Attrs, Sequence[TensorType]], Attrs]:
    def normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
        return _pool_window(op, attrs).to_attrs(attrs)
    return normalize


def _maxpool_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    windows = _pool_window("maxpool2d", attrs).windows(x, -np.inf)
    return windows.max(axis=(4, 5))


def _avgpool_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    window = _pool_window("avgpool2d", attrs)
    sums = window.windows(x, 0.0).sum(axis=(4, 5), dtype=np.float32)
    # The divisor of each window: the same pooling of ones over the input, and over the
    # padding too with count_include_pad; never past the padded input (ceil mode).
    ones = np.ones((1, 1, *x.shape[2:]), dtype=np.float32)
    padding_counts = 1.0 if attrs["count_include_pad"] else 0.0
    counts = window.windows(ones, padding_counts, beyond=0.0).sum(axis=(4, 5),
                                                                  dtype=np.float32)
    return sums / counts


def _window_flops(extra_per_output: int) -> Callable[
        [Attrs, Sequence[tuple[int, ...]], tuple[int, ...]], int]:
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        kernel = Window.from_attrs("pool", attrs).kernel
        return math.prod(output) * (kernel[0] * kernel[1] + extra_per_output)
    return flops


# Gradients ----------------------------------------------------------------------------------
#
# Each output's cotangent goes back to the elements of its window: in equal shares for an
# average, all of it to the first largest element (in row-major window order, as PyTorch's
# CPU kernel) for a max. The shares are scattered into the padded input's coordinates by
# transposed convolutions, then the padding is cropped (`crop_padding`).


def _ones_kernel(builder: Composer, channels: int, kernel: tuple[int, int], dtype: str) -> str:
    """A depthwise [C, 1, kh, kw] weight of ones (a transposed convolution by it adds each
    input element to every position of its window)."""
    return builder.op("expand", builder.constant(1.0, dtype), dims=[channels, 1, *kernel])


def _scatter(builder: Composer, shares: str, window: Window, kernel: tuple[int, int]) -> str:
    """Each element of `shares` [N, C, H', W'] added to its window of size `kernel` in the
    padded input's coordinates (window i starts at row i·stride)."""
    channels = int(builder.type_of(shares).shape[1])
    dtype = builder.type_of(shares).dtype
    return builder.op("conv_transpose2d", shares, _ones_kernel(builder, channels, kernel, dtype),
                      filters=channels, kernel=kernel, stride=window.stride, groups=channels,
                      bias=False)


def _avgpool_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                 cotangent: str) -> Gradients:
    x = inputs[0]
    window = _pool_window("avgpool2d", attrs)
    if window.ceil_mode:
        raise ShapeError("the gradient of `avgpool2d` with ceil_mode is not built yet")
    kernel_h, kernel_w = window.kernel
    share = builder.op("div", cotangent, builder.constant(float(kernel_h * kernel_w),
                                                          builder.type_of(x).dtype))
    if not attrs["count_include_pad"] and any(window.padding):
        # Divided by the real elements of each window: kh·kw times the average of ones
        # with the padding counted.
        ones = builder.op("expand", builder.constant(1.0, builder.type_of(x).dtype),
                          dims=[1, 1, *builder.type_of(x).shape[2:]])
        share = builder.op("div", share, builder.op("avgpool2d", ones, kernel=window.kernel,
                                                    stride=window.stride,
                                                    padding=window.padding[:2]))
    full = _scatter(builder, share, window, window.kernel)
    return (crop_padding(builder, full, window, builder.type_of(x)),)


def _maxpool_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                 cotangent: str) -> Gradients:
    x = inputs[0]
    x_type = builder.type_of(x)
    window = _pool_window("maxpool2d", attrs)
    (kernel_h, kernel_w), (stride_h, stride_w) = window.kernel, window.stride
    top, left, bottom, right = window.padding
    out_h, out_w = (int(d) for d in builder.type_of(output).shape[2:])
    reach_h, reach_w = (out_h - 1) * stride_h + kernel_h, (out_w - 1) * stride_w + kernel_w
    height, width = int(x_type.shape[2]), int(x_type.shape[3])
    padded = builder.op("pad", x, value=float("-inf"), pads=[
        left, max(right, reach_w - width - left), top, max(bottom, reach_h - height - top)])
    dtype = x_type.dtype
    free = builder.op("expand", builder.constant(1.0, dtype),
                      dims=list(builder.type_of(output).shape))
    full = None
    for row in range(kernel_h):
        for column in range(kernel_w):
            # The window element at (row, column) of every window.
            tap = builder.op("slice", padded, axes=[2, 3], starts=[row, column],
                             ends=[row + (out_h - 1) * stride_h + 1,
                                   column + (out_w - 1) * stride_w + 1],
                             steps=[stride_h, stride_w])
            hit = builder.op("mul", builder.op("cast", builder.op("eq", tap, output),
                                               dtype=dtype), free)
            free = builder.op("sub", free, hit)
            spaced = _scatter(builder, builder.op("mul", cotangent, hit), window, (1, 1))
            placed = builder.op("pad", spaced, pads=[column, kernel_w - 1 - column,
                                                     row, kernel_h - 1 - row])
            full = placed if full is None else builder.op("add", full, placed)
    assert full is not None
    return (crop_padding(builder, full, window, x_type),)


_POOL_SHAPES = "`[N, C, H, W]` → `[N, C, H', W']`"
_POOL_CONSTRAINTS = ("`stride` defaults to the kernel; `padding` at most kernel//2 on each "
                     "side; `ceil_mode` drops a last window that would start in the "
                     "bottom/right padding")

for _name, _attrs, _reference, _extra, _summary, _flops, _vjp in (
    ("maxpool2d", POOL_ATTRS, _maxpool_reference, 0, "max over each window; padding never wins",
     "out·kh·kw", _maxpool_vjp),
    ("avgpool2d", AVGPOOL_ATTRS, _avgpool_reference, 1,
     "mean over each window; padding counted unless count_include_pad=false", "out·(kh·kw+1)",
     _avgpool_vjp),
):
    register(OpDef(
        name=_name,
        attrs=_attrs,
        infer=_pool_infer(_name),
        reference=_reference,
        normalize=_pool_normalize(_name),
        flops=_window_flops(_extra),
        vjp=_vjp,
        kind="pool",
        role="pool",
        summary=_summary,
        doc=OpDoc(shapes=_POOL_SHAPES, flops=_flops, attrs=_POOL_CONSTRAINTS),
    ))


# adaptive_avgpool2d -----------------------------------------------------------------------


def adaptive_ranges(size: int, out_size: int) -> list[tuple[int, int]]:
    """[begin, end) of each of `out_size` adaptive windows over `size` positions (PyTorch's
    start = floor(i·size/out), end = ceil((i+1)·size/out))."""
    return [(i * size // out_size, -(-(i + 1) * size // out_size)) for i in range(out_size)]


def _adaptive_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("adaptive_avgpool2d", x, 4, 4, "NCHW input")
    if isinstance(x.shape[2], str) or isinstance(x.shape[3], str):
        raise ShapeError(f"`adaptive_avgpool2d` needs known spatial dimensions, got "
                         f"{format_shape(x.shape)}")
    height, width = int_pair(attrs["output_size"])
    return TensorType(x.dtype, (x.shape[0], x.shape[1], height, width))


def _adaptive_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    out_h, out_w = int_pair(attrs["output_size"])
    rows = adaptive_ranges(x.shape[2], out_h)
    columns = adaptive_ranges(x.shape[3], out_w)
    y = np.empty((*x.shape[:2], out_h, out_w), dtype=np.float32)
    for i, (top, bottom) in enumerate(rows):
        for j, (left, right) in enumerate(columns):
            y[:, :, i, j] = x[:, :, top:bottom, left:right].mean(axis=(2, 3), dtype=np.float32)
    return y


def _adaptive_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]],
                    output: tuple[int, ...]) -> int:
    height, width = inputs[0][2:]
    out_h, out_w = output[2:]
    # Each output reads a window of about ceil(H/h) x ceil(W/w) elements, then divides once.
    window = -(-height // out_h) * -(-width // out_w)
    return math.prod(output) * (window + 1)


register(OpDef(
    name="adaptive_avgpool2d",
    attrs=(AttrSpec("output_size", "int_pair", minimum=1,
                    help="the output's [h, w] (an int for both)"),),
    infer=_adaptive_infer,
    reference=_adaptive_reference,
    normalize=lambda attrs, inputs: attrs.replace(output_size=int_pair(attrs["output_size"])),
    flops=_adaptive_flops,
    kind="pool",
    role="pool",
    summary="mean over PyTorch's adaptive windows: output i of n along an axis of size s "
            "averages positions floor(i·s/n) to ceil((i+1)·s/n)",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, C, h, w]`", flops="out·(⌈H/h⌉·⌈W/w⌉+1)",
              attrs="`output_size` may exceed the input (windows then repeat elements)"),
))


# global_avgpool ---------------------------------------------------------------------------


def _global_avgpool_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("global_avgpool", x, 4, 4, "NCHW input")
    return TensorType(x.dtype, (x.shape[0], x.shape[1], 1, 1))


def _global_avgpool_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]],
                          output: tuple[int, ...]) -> int:
    return math.prod(inputs[0]) + math.prod(output)


register(OpDef(
    name="global_avgpool",
    infer=_global_avgpool_infer,
    reference=lambda attrs, x: x.mean(axis=(2, 3), keepdims=True, dtype=np.float32),
    vjp=lambda builder, attrs, inputs, output, g: (builder.op(
        "div", spread(builder, g, builder.type_of(inputs[0]).shape, (2, 3), True),
        count(builder, builder.type_of(inputs[0]).shape, (2, 3), builder.type_of(g).dtype)),),
    flops=_global_avgpool_flops,
    kind="pool",
    # A mean over each channel: the row-wise kernel family, each element read once.
    role="reduction",
    onnx=OnnxForm("GlobalAveragePool"),
    summary="[N, C, H, W] to [N, C, 1, 1], the mean over each channel",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, C, 1, 1]`", flops="in + out"),
))
