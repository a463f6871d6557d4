"""Ops that move data between positions of a tensor: pad and interpolate (PyTorch's `F.pad`
and `F.interpolate`).

`pad(x, pads, mode, value)` takes `pads` in `F.pad` order: (before, after) pairs from the last
dimension backwards. A negative pad crops (constant mode only, as `F.pad`'s constant mode
does); "reflect" mirrors without repeating the edge and needs pads smaller than the
dimension, "replicate" repeats the edge.

`interpolate(x, size= or scale_factor=, mode, align_corners)` resizes the last two dimensions
of an NCHW tensor. The source position of output index `o` along an axis of `n` inputs and `m`
outputs uses PyTorch's ratio r: `(n-1)/(m-1)` with align_corners (0 for m = 1), else 1/scale
when a scale factor is given, else n/m, computed in float32 as PyTorch's CPU kernels do.
* nearest: `min(floor(o·r), n-1)`, except that m = n copies and m = 2n takes `o >> 1`;
* bilinear: source `o·r` (align_corners) or `max(r·(o+0.5)-0.5, 0)` (a fused multiply-add,
  rounded once, as PyTorch's kernel computes it); the two neighbours
  `i0 = min(floor(src), n-1)`, `i1 = i0 + (i0 < n-1)`, weights `1-λ` and `λ = clamp(src-i0,
  0, 1)`; m = n copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import Attrs, TensorType, format_shape
from netc.ops.gradients import Gradients
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OpDef,
    OpDoc,
    ShapeError,
    int_pair,
    register,
    require_rank,
)

# pad ------------------------------------------------------------------------------------

PAD_MODES = ("constant", "reflect", "replicate")


def pad_widths(op: str, attrs: Attrs, x: TensorType) -> list[tuple[int, int]]:
    """(before, after) for every dimension of `x`, from `F.pad`'s last-dimension-first pairs;
    raises `ShapeError` for pads `x` cannot take."""
    pads = tuple(attrs["pads"])
    if len(pads) % 2 or not pads or len(pads) > 2 * x.rank:
        raise ShapeError(f"`{op}` needs (before, after) pairs for at most {x.rank} dimensions "
                         f"of {format_shape(x.shape)}, got {len(pads)} pads {list(pads)}")
    widths = [(0, 0)] * x.rank
    for pair in range(len(pads) // 2):
        widths[x.rank - 1 - pair] = (int(pads[2 * pair]), int(pads[2 * pair + 1]))
    mode = attrs["mode"]
    for axis, (before, after) in enumerate(widths):
        if (before, after) == (0, 0):
            continue
        size = x.shape[axis]
        if isinstance(size, str):
            raise ShapeError(f"`{op}` cannot pad the named dimension {size} of "
                             f"{format_shape(x.shape)}")
        if mode != "constant" and min(before, after) < 0:
            raise ShapeError(f"`{op}` mode \"{mode}\" takes no negative pads (only \"constant\" "
                             f"crops), got {list(pads)}")
        if mode == "reflect" and max(before, after) >= size:
            raise ShapeError(f"`{op}` mode \"reflect\" needs pads smaller than the dimension: "
                             f"{(before, after)} on dimension {axis} of size {size} in "
                             f"{format_shape(x.shape)}")
        if size + before + after < 1:
            raise ShapeError(f"`{op}` pads {(before, after)} leave nothing of dimension {axis} "
                             f"of {format_shape(x.shape)}")
    return widths


def _pad_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    widths = pad_widths("pad", attrs, x)
    shape = tuple(d if (before, after) == (0, 0) else int(d) + before + after
                  for d, (before, after) in zip(x.shape, widths))
    return TensorType(x.dtype, shape)


def _pad_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    widths = pad_widths("pad", attrs, TensorType("f32", x.shape))
    # Crop first (a negative pad), then pad what is left.
    cropped = x[tuple(slice(max(-before, 0), size - max(-after, 0))
                      for size, (before, after) in zip(x.shape, widths))]
    positive = [(max(before, 0), max(after, 0)) for before, after in widths]
    mode = attrs["mode"]
    if mode == "constant":
        return np.pad(cropped, positive, constant_values=np.float32(attrs["value"]))
    return np.pad(cropped, positive, mode="reflect" if mode == "reflect" else "edge")


def _pad_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
             cotangent: str) -> Gradients:
    """Constant padding's gradient crops what it added (and pads back what it cropped).
    Reflect and replicate pad each dimension independently, so their gradient folds the
    strips back one padded dimension at a time (`_fold_strips`; the folds along different
    axes commute)."""
    if attrs["mode"] == "constant":
        return (builder.op("pad", cotangent, pads=[-p for p in attrs["pads"]]),)
    x_type = builder.type_of(inputs[0])
    for axis, (before, after) in enumerate(pad_widths("pad", attrs, x_type)):
        if before or after:
            cotangent = _fold_strips(builder, cotangent, axis, int(x_type.shape[axis]),
                                     before, after, attrs["mode"])
    return (cotangent,)


def _fold_strips(builder: Composer, g: str, axis: int, size: int, before: int, after: int,
                 mode: str) -> str:
    """The gradient of padding one dimension of `size` by (before, after) in `mode`: the
    centre of `g`, plus each padded strip added onto the elements it copied. Replicate copies
    the edge element: the before strip's sum lands on element 0, the after strip's on
    element size-1. Reflect mirrors without the edge: strip row `before-1-k` lands on
    element 1+k, and after-strip row k on element size-2-k; the reversed strip is a concat of
    its rows (a pad is narrower than the dimension, and small). Each addend is padded with
    zeros to the input's length."""
    def rows(start: int, stop: int) -> str:
        return builder.op("slice", g, axes=[axis], starts=[start], ends=[stop])

    def placed(part: str, first: int) -> str:
        """`part` (along `axis`) zero-padded to `size` elements, starting at `first`."""
        length = int(builder.type_of(part).shape[axis])
        if length == size:
            return part
        pads = [0, 0] * (builder.type_of(g).rank - 1 - axis)
        return builder.op("pad", part, pads=[*pads, first, size - first - length])

    def mirrored(start: int, count: int) -> str:
        """Rows start+count-1, ..., start of `g`: a strip reversed."""
        parts = [rows(row, row + 1) for row in reversed(range(start, start + count))]
        return parts[0] if count == 1 else builder.op("concat", *parts, axis=axis)

    def folded(start: int, count: int) -> str:
        """The strip's rows summed (kept as one row)."""
        strip = rows(start, start + count)
        return strip if count == 1 else builder.op("sum", strip, axis=[axis], keepdim=True)

    total = rows(before, before + size)
    if before:
        total = builder.op("add", total, placed(mirrored(0, before), 1) if mode == "reflect"
                           else placed(folded(0, before), 0))
    if after:
        tail = before + size
        total = builder.op("add", total,
                           placed(mirrored(tail, after), size - 1 - after)
                           if mode == "reflect" else placed(folded(tail, after), size - 1))
    return total


register(OpDef(
    name="pad",
    attrs=(
        AttrSpec("pads", "int_list", help="(before, after) pairs, last dimension first"),
        AttrSpec("mode", "str", default="constant", choices=PAD_MODES),
        AttrSpec("value", "float", default=0.0, help="the fill of mode \"constant\""),
    ),
    infer=_pad_infer,
    reference=_pad_reference,
    vjp=_pad_vjp,
    kind="layout",
    role="layout",
    summary="F.pad: constant (negative pads crop), reflect or replicate padding",
    doc=OpDoc(shapes="each padded dim grows by before + after",
              flops="0",
              attrs="an even number of pads, at most 2·rank; a named dim is never padded; "
                    "reflect pads < the dim; negative pads only in constant mode"),
))


# interpolate ----------------------------------------------------------------------------

INTERPOLATE_MODES = ("nearest", "bilinear")


def interpolate_sizes(op: str, attrs: Attrs, x: TensorType) -> tuple[int, int]:
    """The output (height, width) of `interpolate` on NCHW `x`."""
    require_rank(op, x, 4, 4, "NCHW input")
    height, width = x.shape[2], x.shape[3]
    if isinstance(height, str) or isinstance(width, str):
        raise ShapeError(f"`{op}` needs known spatial dimensions, got {format_shape(x.shape)}")
    size, scale = attrs["size"], attrs["scale_factor"]
    if (size is None) == (scale is None):
        raise ShapeError(f"`{op}` needs exactly one of size= and scale_factor=")
    if attrs["align_corners"] and attrs["mode"] == "nearest":
        raise ShapeError(f"`{op}` takes align_corners=true only with mode \"bilinear\"")
    if size is not None:
        return int_pair(size)
    # PyTorch: floor(input size * scale factor), in double precision.
    out = (math.floor(height * scale), math.floor(width * scale))
    if min(out) < 1:
        raise ShapeError(f"`{op}` with scale_factor={scale} turns {format_shape(x.shape)} into "
                         f"an empty [{out[0]}, {out[1]}]")
    return out


def source_ratio(attrs: Attrs, size: int, out_size: int) -> np.float32:
    """PyTorch's float32 ratio from output to input positions along one axis."""
    if attrs["align_corners"]:
        return np.float32(size - 1) / np.float32(out_size - 1) if out_size > 1 \
            else np.float32(0)
    scale = attrs["scale_factor"]
    if scale is not None:
        return np.float32(1.0 / scale)
    return np.float32(size) / np.float32(out_size)


def nearest_sources(attrs: Attrs, size: int, out_size: int) -> np.ndarray:
    """The input index each output index reads (mode "nearest")."""
    out = np.arange(out_size)
    if out_size == size:
        return out
    if out_size == 2 * size:
        return out >> 1
    scaled = np.floor(out.astype(np.float32) * source_ratio(attrs, size, out_size))
    return np.minimum(scaled.astype(np.int64), size - 1)


def linear_sources(attrs: Attrs, size: int, out_size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, weight0, weight1) of each output index (mode "bilinear", one axis)."""
    out = np.arange(out_size)
    if out_size == size:
        zero = np.zeros(out_size, dtype=np.float32)
        return out, out, zero + np.float32(1), zero
    ratio = source_ratio(attrs, size, out_size)
    positions = out.astype(np.float32)
    if attrs["align_corners"]:
        source = ratio * positions
    else:
        # r·(o+0.5) - 0.5 with one rounding, as PyTorch's compiled kernel (a fused multiply-
        # add): the float64 product of two float32 values and the subtraction are exact.
        fused = np.float64(ratio) * (positions + np.float32(0.5)).astype(np.float64) - 0.5
        source = np.maximum(fused.astype(np.float32), np.float32(0))
    first = np.minimum(np.floor(source).astype(np.int64), size - 1)
    second = first + (first < size - 1)
    weight = np.clip(source - first.astype(np.float32), np.float32(0), np.float32(1))
    return first, second, np.float32(1) - weight, weight.astype(np.float32)


def _interpolate_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    height, width = interpolate_sizes("interpolate", attrs, x)
    return TensorType(x.dtype, (x.shape[0], x.shape[1], height, width))


def _interpolate_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    height, width = x.shape[2:]
    out_h, out_w = interpolate_sizes("interpolate", attrs, TensorType("f32", x.shape))
    if attrs["mode"] == "nearest":
        rows = nearest_sources(attrs, height, out_h)
        columns = nearest_sources(attrs, width, out_w)
        return np.ascontiguousarray(x[:, :, rows][:, :, :, columns])
    top, bottom, top_weight, bottom_weight = linear_sources(attrs, height, out_h)
    left, right, left_weight, right_weight = linear_sources(attrs, width, out_w)

    def across(rows: np.ndarray) -> np.ndarray:
        picked = x[:, :, rows]
        return left_weight * picked[:, :, :, left] + right_weight * picked[:, :, :, right]

    return (top_weight[:, None] * across(top) +
            bottom_weight[:, None] * across(bottom)).astype(np.float32)


def _interpolate_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]],
                       output: tuple[int, ...]) -> int:
    # Bilinear: 4 products and 3 sums, plus the weights' complements.
    return 0 if attrs["mode"] == "nearest" else 8 * math.prod(output)


INTERPOLATE_ATTRS = (
    AttrSpec("size", "int_pair", default=None, minimum=1, positional=False,
             help="the output's [h, w] (an int for both)"),
    AttrSpec("scale_factor", "float", default=None, positional=False, minimum=0,
             help="output size = floor(input size · scale_factor)"),
    AttrSpec("mode", "str", default="nearest", choices=INTERPOLATE_MODES, positional=False),
    AttrSpec("align_corners", "bool", default=False, positional=False,
             help="bilinear only: map the corner pixels' centres onto each other"),
)

register(OpDef(
    name="interpolate",
    attrs=INTERPOLATE_ATTRS,
    infer=_interpolate_infer,
    reference=_interpolate_reference,
    flops=_interpolate_flops,
    vjp=lambda builder, attrs, inputs, output, cotangent: (builder.op(
        "interpolate_grad", inputs[0], cotangent, **{spec.name: attrs[spec.name]
                                                     for spec in INTERPOLATE_ATTRS}),),
    kind="layout",
    role="layout",
    summary="F.interpolate over the last two dims of NCHW: nearest (PyTorch's floor rule) or "
            "bilinear, with or without align_corners",
    doc=OpDoc(shapes="`[N, C, H, W]` → `[N, C, h, w]`", flops="0 (nearest), 8·out (bilinear)",
              attrs="exactly one of `size`, `scale_factor`; `align_corners` only with "
                    "bilinear"),
))


# Gradient ---------------------------------------------------------------------------------
#
# Each output's cotangent goes back to what it read: all of it to its source (nearest), its
# weights' shares to its four neighbours (bilinear). The internal op `interpolate_grad`
# computes it as a gather: each input element sums what the outputs reading it send it, in
# PyTorch's order (templates/interpolate_grad.cuh). It takes x for its shape only.


def _interpolate_grad_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, cotangent = inputs
    expected = _interpolate_infer(attrs, [x])
    if cotangent != expected:
        raise ShapeError(f"`interpolate_grad` needs the cotangent of the interpolate output "
                         f"{expected}, got {cotangent}")
    return x


def _axis_terms(attrs: Attrs, size: int, out_size: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Along one axis, (input index, weight) of each output index, per neighbour."""
    if attrs["mode"] == "nearest":
        return [(nearest_sources(attrs, size, out_size), np.ones(out_size, np.float32))]
    first, second, first_weight, second_weight = linear_sources(attrs, size, out_size)
    return [(first, first_weight), (second, second_weight)]


def _interpolate_grad_reference(attrs: Attrs, x: np.ndarray,
                                cotangent: np.ndarray) -> np.ndarray:
    (height, width), (out_h, out_w) = x.shape[2:], cotangent.shape[2:]
    grad = np.zeros(x.shape, np.float32)
    for rows, row_weights in _axis_terms(attrs, height, out_h):
        for columns, column_weights in _axis_terms(attrs, width, out_w):
            weights = row_weights[:, None] * column_weights[None, :]
            where = (slice(None), slice(None), rows[:, None], columns[None, :])
            np.add.at(grad, where, weights * cotangent)  # type: ignore[arg-type]
    return grad


register(OpDef(
    name="interpolate_grad",
    attrs=INTERPOLATE_ATTRS,
    infer=_interpolate_grad_infer,
    reference=_interpolate_grad_reference,
    min_inputs=2,
    max_inputs=2,
    # Per output: an addition (nearest); four products of three factors and four additions.
    flops=lambda attrs, inputs, output: math.prod(inputs[1]) * (
        1 if attrs["mode"] == "nearest" else 12),
    kind="layout",
    # A gather over windows of outputs: the pools' role, so a backward epilogue fuses into it.
    role="pool",
    internal=True,
    summary="the gradient of interpolate with respect to its input x, from x (its shape) and "
            "the output's cotangent (interpolate's VJP makes it)",
))
