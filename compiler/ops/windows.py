"""Sliding-window geometry shared by conv2d and the 2-D pools.

The IR keeps a window's attributes in one canonical form, which `Window.to_attrs` writes and
every backend reads through `Window.from_attrs`: `kernel`, `stride` and `dilation` as pairs
(h, w) and `padding` as a 4-tuple (top, left, bottom, right), the order of ONNX's `pads`.
`from_attrs` also accepts the user-level forms (an int, `[h, w]`, `"same"`, a stride of None
meaning "= kernel"), so shape rules work on attributes before and after normalisation.

`ceil_mode` (the pools') counts windows as PyTorch does: the output size rounds up, but a last
window that would start in the bottom or right padding (or past it) is dropped, so every
window still starts inside the input or its top/left padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.registry import Composer, ShapeError, int_pair, require_rank


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
    ceil_mode: bool = False

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
        return cls(kernel, stride, dilation, padding, bool(attrs.get("ceil_mode", False)))

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
        """Output (height, width) for an NCHW input (PyTorch's rule, floor or ceil mode)."""
        require_rank(op, x, 4, 4, "NCHW input")
        height, width = x.shape[2], x.shape[3]
        if isinstance(height, str) or isinstance(width, str):
            raise ShapeError(f"`{op}` needs known spatial dimensions, got {format_shape(x.shape)}")
        top, left, bottom, right = self.padding
        effective = self.effective_kernel()
        if height + top + bottom < effective[0] or width + left + right < effective[1]:
            raise ShapeError(
                f"`{op}` window {format_shape(effective)} (kernel {format_shape(self.kernel)}, "
                f"dilation {format_shape(self.dilation)}) does not fit input "
                f"{format_shape(x.shape)} with padding {format_shape(self.padding)}")
        return self._extent(height, top, bottom, 0), self._extent(width, left, right, 1)

    def _extent(self, size: int, before: int, after: int, axis: int) -> int:
        """How many windows fit along one axis of `size` elements padded `before` and `after`."""
        span = size + before + after - self.effective_kernel()[axis]
        stride = self.stride[axis]
        if not self.ceil_mode:
            return span // stride + 1
        count = -(-span // stride) + 1
        # PyTorch drops a last window that would start in the trailing padding.
        return count - 1 if (count - 1) * stride >= size + before else count

    def windows(self, x: np.ndarray, pad_value: float, beyond: float | None = None
                ) -> np.ndarray:
        """A read-only view [N, C, out_h, out_w, kh, kw] of `x` padded with `pad_value`; the
        part of a ceil-mode window past the padded input reads `beyond` (`pad_value` if
        None)."""
        top, left, bottom, right = self.padding
        height, width = x.shape[2], x.shape[3]
        out_h = self._extent(height, top, bottom, 0)
        out_w = self._extent(width, left, right, 1)
        effective = self.effective_kernel()
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
                        constant_values=np.float32(pad_value))
        # Ceil mode: the last window may reach past the padded input.
        extra_h = max(0, (out_h - 1) * self.stride[0] + effective[0] - padded.shape[2])
        extra_w = max(0, (out_w - 1) * self.stride[1] + effective[1] - padded.shape[3])
        padded = np.pad(padded, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)),
                        constant_values=np.float32(pad_value if beyond is None else beyond))
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


def crop_padding(builder: Composer, full: str, window: Window, x: TensorType) -> str:
    """The gradient of a windowed op with respect to its input `x` [N, C, H, W], from `full`,
    the same in the coordinates of the padded input (row 0 is the top padding's first; it
    may stop short of the padded input's end, or reach past it in ceil mode): the padding
    cropped, rows and columns no window reached filled with zeros."""
    height, width = int(x.shape[2]), int(x.shape[3])
    full_h, full_w = (int(d) for d in builder.type_of(full).shape[2:])
    top, left = window.padding[0], window.padding[1]
    pads = [-left, width + left - full_w, -top, height + top - full_h]
    return full if not any(pads) else builder.op("pad", full, pads=pads)
