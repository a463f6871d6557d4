"""Sliding-window geometry shared by conv2d and the 2-D pools.

The IR keeps a window's attributes in one canonical form, which `Window.to_attrs` writes and
every backend reads through `Window.from_attrs`: `kernel`, `stride` and `dilation` as pairs
(h, w) and `padding` as a 4-tuple (top, left, bottom, right), the order of ONNX's `pads`.
`from_attrs` also accepts the user-level forms (an int, `[h, w]`, `"same"`, a stride of None
meaning "= kernel"), so shape rules work on attributes before and after normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.registry import ShapeError, int_pair, require_rank


def _padding(op: str, value: Any, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    if value == "same":
        if stride != (1, 1):
            raise ShapeError(f'`{op}` allows padding="same" only with stride 1, got stride '
                             f"{format_shape(stride)}")
        # PyTorch pads total // 2 before and the rest after, so an odd total pads the
        # bottom and right one more than the top and left.
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        top, left = total[0] // 2, total[1] // 2
        return (top, left, total[0] - top, total[1] - left)
    if isinstance(value, int):
        return (value, value, value, value)
    if len(value) == 2:
        return (int(value[0]), int(value[1]), int(value[0]), int(value[1]))
    if len(value) == 4:
        top, left, bottom, right = value
        return (int(top), int(left), int(bottom), int(right))
    raise ShapeError(f"`{op}` padding must be an int, [h, w] or \"same\", got {value!r}")


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    """(top, left, bottom, right)"""

    @classmethod
    def from_attrs(cls, op: str, attrs: Attrs) -> Window:
        kernel = int_pair(attrs["kernel"])
        stride_value = attrs.get("stride")
        stride = kernel if stride_value is None else int_pair(stride_value)
        dilation = int_pair(attrs.get("dilation", 1))
        padding = _padding(op, attrs.get("padding", 0), kernel, stride, dilation)
        for name, values in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
            if min(values) < 1:
                raise ShapeError(f"`{op}` {name} must be positive, got {format_shape(values)}")
        if min(padding) < 0:
            raise ShapeError(f"`{op}` padding must not be negative, got {format_shape(padding)}")
        return cls(kernel, stride, dilation, padding)

    def to_attrs(self, attrs: Attrs) -> Attrs:
        changes: dict[str, Any] = {"kernel": self.kernel, "stride": self.stride,
                                   "padding": self.padding}
        if "dilation" in attrs:
            changes["dilation"] = self.dilation
        return attrs.replace(**changes)

    def effective_kernel(self) -> tuple[int, int]:
        return (self.dilation[0] * (self.kernel[0] - 1) + 1,
                self.dilation[1] * (self.kernel[1] - 1) + 1)

    def output_size(self, op: str, x: TensorType) -> tuple[int, int]:
        """Output (height, width) for an NCHW input (PyTorch's floor rule, no ceil_mode)."""
        require_rank(op, x, 4, 4, "NCHW input")
        height, width = x.shape[2], x.shape[3]
        if isinstance(height, str) or isinstance(width, str):
            raise ShapeError(f"`{op}` needs known spatial dimensions, got {format_shape(x.shape)}")
        top, left, bottom, right = self.padding
        effective = self.effective_kernel()
        padded = (height + top + bottom, width + left + right)
        if padded[0] < effective[0] or padded[1] < effective[1]:
            raise ShapeError(
                f"`{op}` window {format_shape(effective)} (kernel {format_shape(self.kernel)}, "
                f"dilation {format_shape(self.dilation)}) does not fit input "
                f"{format_shape(x.shape)} with padding {format_shape(self.padding)}")
        return ((padded[0] - effective[0]) // self.stride[0] + 1,
                (padded[1] - effective[1]) // self.stride[1] + 1)

    def windows(self, x: np.ndarray, pad_value: float) -> np.ndarray:
        """A read-only view [N, C, out_h, out_w, kh, kw] of `x` padded with `pad_value`."""
        top, left, bottom, right = self.padding
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
                        constant_values=np.float32(pad_value))
        effective = self.effective_kernel()
        out_h = (padded.shape[2] - effective[0]) // self.stride[0] + 1
        out_w = (padded.shape[3] - effective[1]) // self.stride[1] + 1
        s_n, s_c, s_h, s_w = padded.strides
        return np.lib.stride_tricks.as_strided(
            padded,
            shape=(*padded.shape[:2], out_h, out_w, *self.kernel),
            strides=(s_n, s_c, s_h * self.stride[0], s_w * self.stride[1],
                     s_h * self.dilation[0], s_w * self.dilation[1]),
            writeable=False)


def spatial_output(op: str, attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[int, int]:
    """The output (height, width) of a windowed op on its one NCHW input."""
    return Window.from_attrs(op, attrs).output_size(op, inputs[0])
