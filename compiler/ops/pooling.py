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
from netc.ops.windows import Window, spatial_output

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
# average (divided as the forward divides), all of it for a max to the element PyTorch's
# kernels record as the window's argmax (the first largest in row-major window order, a NaN
# winning over any number and a later NaN over an earlier one). One internal op, `pool2d_grad`,
# computes each as a gather: each input element sums what the windows covering it send it
# (templates/pool_grad.cuh), so nothing is scattered and nothing padded or cropped. Its mode
# "adaptive" is adaptive_avgpool2d's gradient: the windows come from x's and the cotangent's
# sizes alone, so the window attributes are left unset.

GRAD_MODES = {"max": "maxpool2d", "avg": "avgpool2d", "adaptive": "adaptive_avgpool2d"}
"""pool2d_grad's modes, with the pool each differentiates."""


def _grad_window(attrs: Attrs) -> Window:
    """The window of a windowed mode of pool2d_grad (max, avg)."""
    op = GRAD_MODES[attrs["mode"]]
    if attrs["kernel"] is None:
        raise ShapeError(f"`pool2d_grad` of `{op}` needs the pool's kernel")
    return _pool_window(op, attrs)


def _pool_grad_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, cotangent = inputs
    op = GRAD_MODES[attrs["mode"]]
    if attrs["mode"] == "adaptive":
        # Any output size of known height and width: the cotangent's.
        require_rank("pool2d_grad", cotangent, 4, 4, "NCHW cotangent")
        _adaptive_infer(Attrs(output_size=1), [x])
        if isinstance(cotangent.shape[2], str) or isinstance(cotangent.shape[3], str):
            raise ShapeError(f"`pool2d_grad` needs a cotangent of known height and width, got "
                             f"{format_shape(cotangent.shape)}")
        expected = TensorType(x.dtype, (*x.shape[:2], *cotangent.shape[2:]))
    else:
        _grad_window(attrs)
        expected = _pool_infer(op)(attrs, [x])
    if cotangent != expected:
        raise ShapeError(f"`pool2d_grad` needs the cotangent of the {op} output {expected}, "
                         f"got {cotangent}")
    return x


def _window_taps(window: Window, size: int, out_size: int, axis: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, per output position and window tap: the input position, whether it is
    a real element, and whether it is inside the padded input (what an average counts)."""
    kernel, stride, before = window.kernel[axis], window.stride[axis], window.padding[axis]
    after = window.padding[axis + 2]
    positions = np.arange(out_size)[:, None] * stride - before + np.arange(kernel)[None, :]
    return positions, (positions >= 0) & (positions < size), positions < size + after


def _adaptive_grad(x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """adaptive_avgpool2d's input gradient: each window's cotangent over its size, added to
    each of its elements (windows may overlap)."""
    (height, width), (out_h, out_w) = x.shape[2:], cotangent.shape[2:]
    grad = np.zeros(x.shape, np.float32)
    for i, (top, bottom) in enumerate(adaptive_ranges(height, out_h)):
        for j, (left, right) in enumerate(adaptive_ranges(width, out_w)):
            share = cotangent[:, :, i, j] / np.float32((bottom - top) * (right - left))
            grad[:, :, top:bottom, left:right] += share[:, :, None, None]
    return grad


def _pool_grad_reference(attrs: Attrs, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    if attrs["mode"] == "adaptive":
        return _adaptive_grad(x, cotangent)
    window = _grad_window(attrs)
    (height, width), (out_h, out_w) = x.shape[2:], cotangent.shape[2:]
    rows, real_rows, padded_rows = _window_taps(window, height, out_h, 0)
    columns, real_columns, padded_columns = _window_taps(window, width, out_w, 1)
    kernel_h, kernel_w = window.kernel
    # [out_h, out_w, kh, kw]: which taps of each window are real elements.
    real = real_rows[:, None, :, None] & real_columns[None, :, None, :]
    if attrs["mode"] == "avg":
        counted = (padded_rows[:, None, :, None] & padded_columns[None, :, None, :]
                   if attrs["count_include_pad"] else real)
        shares = (cotangent / counted.sum(axis=(2, 3)).astype(np.float32))[..., None, None]
        weights = np.broadcast_to(shares * real, (*cotangent.shape, kernel_h, kernel_w))
    else:
        values = x[:, :, np.clip(rows, 0, height - 1)[:, None, :, None],
                   np.clip(columns, 0, width - 1)[None, :, None, :]]
        flat = np.where(real, values, -np.inf).reshape(*cotangent.shape, -1)
        nan = np.isnan(flat) & real.reshape(out_h, out_w, -1)
        last_nan = flat.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
        # The first largest real element; all -inf: the first real one (PyTorch's start).
        best = np.where(real.reshape(out_h, out_w, -1), flat, np.nan)
        first_max = np.nanargmax(np.where(nan, -np.inf, best), axis=-1)
        chosen = np.where(nan.any(axis=-1), last_nan, first_max)
        taps = np.arange(kernel_h * kernel_w)
        weights = (cotangent[..., None] * (taps == chosen[..., None])).reshape(
            *cotangent.shape, kernel_h, kernel_w)
    grad = np.zeros(x.shape, np.float32)
    for i in range(kernel_h):
        for j in range(kernel_w):
            inside = real[:, :, i, j]
            out_y, out_x = np.nonzero(inside)
            where = (slice(None), slice(None), rows[out_y, i], columns[out_x, j])
            np.add.at(grad, where, weights[:, :, out_y, out_x, i, j])  # type: ignore[arg-type]
    return grad


def _pool_grad_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]],
                     output: tuple[int, ...]) -> int:
    if attrs["mode"] == "adaptive":  # a division and an addition per window element
        return 2 * _adaptive_flops(attrs, inputs[:1], inputs[1])
    return math.prod(inputs[1]) * math.prod(int_pair(attrs["kernel"]))


register(OpDef(
    name="pool2d_grad",
    attrs=(AttrSpec("mode", "str", choices=tuple(GRAD_MODES)),
           AttrSpec("kernel", "int_pair", default=None, minimum=1,
                    help="the pool's window (max and avg; unset for adaptive)"),
           *AVGPOOL_ATTRS[1:]),
    infer=_pool_grad_infer,
    reference=_pool_grad_reference,
    normalize=lambda attrs, inputs: attrs if attrs["mode"] == "adaptive"
    else _grad_window(attrs).to_attrs(attrs),
    min_inputs=2,
    max_inputs=2,
    flops=_pool_grad_flops,
    kind="pool",
    role="pool",
    internal=True,
    summary="the gradient of maxpool2d, avgpool2d or adaptive_avgpool2d with respect to its "
            "input x, from x and the output's cotangent (the pools' VJPs make it)",
))


def _pool_vjp(mode: str) -> Callable[..., Gradients]:
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        given = {key: attrs[key] for key in ("kernel", "stride", "padding", "ceil_mode")}
        return (builder.op("pool2d_grad", inputs[0], cotangent, mode=mode,
                           count_include_pad=attrs.get("count_include_pad", True), **given),)
    return vjp


_POOL_SHAPES = "`[N, C, H, W]` → `[N, C, H', W']`"
_POOL_CONSTRAINTS = ("`stride` defaults to the kernel; `padding` at most kernel//2 on each "
                     "side; `ceil_mode` drops a last window that would start in the "
                     "bottom/right padding")

for _name, _attrs, _reference, _extra, _summary, _flops, _vjp in (
    ("maxpool2d", POOL_ATTRS, _maxpool_reference, 0, "max over each window; padding never wins",
     "out·kh·kw", _pool_vjp("max")),
    ("avgpool2d", AVGPOOL_ATTRS, _avgpool_reference, 1,
     "mean over each window; padding counted unless count_include_pad=false", "out·(kh·kw+1)",
     _pool_vjp("avg")),
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
    vjp=lambda builder, attrs, inputs, output, cotangent: (
        builder.op("pool2d_grad", inputs[0], cotangent, mode="adaptive"),),
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
