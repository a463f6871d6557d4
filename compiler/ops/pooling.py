"""2-D pooling over NCHW: maxpool2d, avgpool2d, global_avgpool.

The windowed pools share their attributes, normalisation and shape rule; they differ only in
how a window is reduced. As in PyTorch, padding is at most half the kernel (so every window
holds at least one real element), padding never wins a max, and an average counts only the
real elements of its window (`count_include_pad=False`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.registry import (
    AttrSpec,
    OnnxForm,
    OpDef,
    ShapeError,
    register,
    require_rank,
)
from netc.ops.windows import Window, spatial_output

POOL_ATTRS = (
    AttrSpec("kernel", "int_pair", minimum=1, help="window size: an int or [h, w]"),
    AttrSpec("stride", "int_pair", default=None, minimum=1, help="defaults to the kernel"),
    AttrSpec("padding", "int_pair", default=0, minimum=0, help="at most half the kernel"),
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
    # How many real (unpadded) elements each window covers: the same pooling of ones.
    ones = np.ones((1, 1, *x.shape[2:]), dtype=np.float32)
    counts = window.windows(ones, 0.0).sum(axis=(4, 5), dtype=np.float32)
    return sums / counts


def _window_flops(extra_per_output: int) -> Callable[
        [Attrs, Sequence[tuple[int, ...]], tuple[int, ...]], int]:
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        kernel = Window.from_attrs("pool", attrs).kernel
        return math.prod(output) * (kernel[0] * kernel[1] + extra_per_output)
    return flops


for _name, _reference, _extra, _summary in (
    ("maxpool2d", _maxpool_reference, 0, "max over each window; padding never wins"),
    ("avgpool2d", _avgpool_reference, 1,
     "mean over each window's real elements (padding not counted)"),
):
    register(OpDef(
        name=_name,
        attrs=POOL_ATTRS,
        infer=_pool_infer(_name),
        reference=_reference,
        normalize=_pool_normalize(_name),
        flops=_window_flops(_extra),
        kind="pool",
        role="pool",
        summary=_summary,
    ))


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
    flops=_global_avgpool_flops,
    kind="pool",
    # A mean over each channel: the row-wise kernel family, each element read once.
    role="reduction",
    onnx=OnnxForm("GlobalAveragePool"),
    summary="[N, C, H, W] to [N, C, 1, 1], the mean over each channel",
))
