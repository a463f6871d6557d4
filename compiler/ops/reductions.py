"""Reductions over any axes: sum, mean, amax, amin and logsumexp, with PyTorch's semantics.

`axis` is an int or a list of ints (PyTorch's `dim`), negative counting from the end; the IR
keeps it as the sorted tuple of non-negative axes. An empty list is an error (PyTorch reads
`dim=[]` as "every dimension" for `sum` but not for `amax`; netc asks for the axes instead),
and so is an axis given twice. `keepdim=true` keeps each reduced dimension with size 1.

Every input element is read once, in f32 whatever the dtype (f16 and bf16 accumulate in f32),
so the ops have role `reduction`: one kernel of the "reduce over any axes" family
(`templates/reduce.cuh`) computes each, with fused pointwise ops before (a prologue computing
the input) and after (an epilogue). NaN propagates as in PyTorch: amax and amin return NaN
for a slice holding one; logsumexp is max + log(sum(exp(x - max))) with an infinite max
taken as is (all -inf gives -inf, a +inf gives +inf).

`sum`, `amax`, `amin` and `argmax` also take `i32` and `i64` tensors, as PyTorch does, computed
exactly in the tensor's own type: an integer sum wraps around on overflow and keeps the dtype
(`torch.sum(x, dtype=x.dtype)` and ONNX's ReduceSum; PyTorch's plain `x.sum()` of an `i32`
tensor is `i64`: write `sum(cast(x, "i64"), ...)` for that). `mean` and `logsumexp` stay float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from netc.ir import FLOAT_DTYPES, Attrs, TensorType, format_shape
from netc.ops.arithmetic import NUMERIC_DTYPES
from netc.ops.gradients import Gradients, Vjp, count, spread
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OpDef,
    OpDoc,
    ShapeError,
    register,
    require_batch_first,
    resolve_axis,
)

REDUCTION_ATTRS = (
    AttrSpec("axis", "axes", help="the dimensions to reduce: an int or a list, negative "
             "counts from the end"),
    AttrSpec("keepdim", "bool", default=False,
             help="keep each reduced dimension with size 1"),
)


def reduced_axes(op: str, attrs: Attrs, x: TensorType) -> tuple[int, ...]:
    """The `axis` attribute as sorted non-negative axes of `x`; raises `ShapeError` for an
    empty list, an axis out of range or an axis given twice."""
    given = tuple(attrs["axis"])
    if not given:
        raise ShapeError(f"`{op}` needs at least one axis to reduce, got [] for "
                         f"{format_shape(x.shape)}")
    axes = [resolve_axis(op, axis, x) for axis in given]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"`{op}` reduces each axis once, got axis={list(given)} for "
                         f"{format_shape(x.shape)} (rank {x.rank})")
    return tuple(sorted(axes))


def _normalize(op: str) -> Callable[[Attrs, Sequence[TensorType]], Attrs]:
    def normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
        return attrs.replace(axis=reduced_axes(op, attrs, inputs[0]))
    return normalize


def _infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        axes = reduced_axes(op, attrs, x)
        if attrs["keepdim"]:
            shape = tuple(1 if axis in axes else d for axis, d in enumerate(x.shape))
        else:
            shape = tuple(d for axis, d in enumerate(x.shape) if axis not in axes)
        require_batch_first(op, shape, x)
        return TensorType(x.dtype, shape)
    return infer


def _flops(per_input: int) -> Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]],
                                       int]:
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return per_input * math.prod(inputs[0]) + math.prod(output)
    return flops


def _numpy(function: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """A reference from a NumPy reduction taking `axis` and `keepdims`, computed in f32, or
    for an integer x in its own type (wrapping around on overflow)."""
    def reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind in "iu" else np.dtype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            result = function(x.astype(dtype), axis=tuple(attrs["axis"]),
                              keepdims=attrs["keepdim"])
        return np.asarray(result, dtype=dtype)
    return reference


def _logsumexp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """As `torch.logsumexp`: an infinite max is subtracted as 0, so an all -inf slice gives
    -inf, a slice with +inf gives +inf, and NaN propagates."""
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isinf(peak), np.float32(0), peak)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True, dtype=np.float32))
    result = total + peak
    return result if keepdims else np.squeeze(result, axis=axis)


# Gradients: the cotangent spread back over the reduced axes, times the local derivative:
# 1 (sum), 1/count (mean), exp(x - y) (logsumexp), and for amax / amin an equal share for
# every element that attains the extreme (PyTorch's rule for ties).


def _reduction_vjp(local: Callable[[Composer, Attrs, str, str, str], str] | None) -> Vjp:
    """The VJP of a reduction from `local(builder, attrs, x, y spread back, g spread back)`,
    the gradient with respect to x (None: the spread cotangent itself, as for sum)."""
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        x = inputs[0]
        shape = builder.type_of(x).shape
        axes, keepdim = attrs["axis"], attrs["keepdim"]
        spread_g = spread(builder, cotangent, shape, axes, keepdim)
        if local is None:
            return (spread_g,)
        spread_y = spread(builder, output, shape, axes, keepdim)
        return (local(builder, attrs, x, spread_y, spread_g),)
    return vjp


def _mean_local(builder: Composer, attrs: Attrs, x: str, y: str, g: str) -> str:
    x_type = builder.type_of(x)
    return builder.op("div", g, count(builder, x_type.shape, attrs["axis"], x_type.dtype))


def _logsumexp_local(builder: Composer, attrs: Attrs, x: str, y: str, g: str) -> str:
    return builder.op("mul", g, builder.op("exp", builder.op("sub", x, y)))


def _extreme_local(builder: Composer, attrs: Attrs, x: str, y: str, g: str) -> str:
    dtype = builder.type_of(x).dtype
    hits = builder.op("cast", builder.op("eq", x, y), dtype=dtype)
    ties = builder.op("sum", hits, axis=list(attrs["axis"]), keepdim=True)
    return builder.op("mul", g, builder.op("div", hits, ties))


_REDUCTION_VJPS = {
    "sum": _reduction_vjp(None),
    "mean": _reduction_vjp(_mean_local),
    "amax": _reduction_vjp(_extreme_local),
    "amin": _reduction_vjp(_extreme_local),
    "logsumexp": _reduction_vjp(_logsumexp_local),
}

REDUCTIONS = {
    "sum": (_numpy(lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims,
                                                     dtype=x.dtype)),
            1, "the sum over the reduced axes; of `i32` / `i64` too, in that type (wrapping "
               "around on overflow, as torch.sum(x, dtype=x.dtype))", NUMERIC_DTYPES),
    "mean": (_numpy(lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims,
                                                       dtype=np.float32)),
             1, "the mean over the reduced axes", FLOAT_DTYPES),
    "amax": (_numpy(np.max), 1, "the largest element over the reduced axes (NaN if any is); "
             "`i32` and `i64` too", NUMERIC_DTYPES),
    "amin": (_numpy(np.min), 1, "the smallest element over the reduced axes (NaN if any is); "
             "`i32` and `i64` too", NUMERIC_DTYPES),
    "logsumexp": (_numpy(_logsumexp), 4,
                  "log(sum(exp(x))) over the reduced axes, numerically stable", FLOAT_DTYPES),
}
"""Each reduction: its reference, FLOPs per input element, summary, input dtypes."""

for _name, (_reference, _per_input, _summary, _dtypes) in REDUCTIONS.items():
    register(OpDef(
        name=_name,
        attrs=REDUCTION_ATTRS,
        infer=_infer(_name),
        reference=_reference,
        normalize=_normalize(_name),
        flops=_flops(_per_input),
        kind="reduction",
        # Reads each element once, whatever the axes: a prologue of any length fuses.
        role="reduction",
        summary=_summary,
        dtypes=_dtypes,
        vjp=_REDUCTION_VJPS[_name],
        doc=OpDoc(shapes="`[d0, d1, ...]` → the reduced axes dropped (size 1 with `keepdim`)",
                  flops=f"{_per_input} × in + out" if _per_input > 1 else "in + out",
                  attrs="`axis`: at least one, each once, in range; the named (batch) "
                        "dimension may be reduced"),
    ))


def _argmax_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    axis = resolve_axis("argmax", attrs["axis"], x)
    if attrs["keepdim"]:
        shape = tuple(1 if a == axis else d for a, d in enumerate(x.shape))
    else:
        shape = x.shape[:axis] + x.shape[axis + 1:]
    return TensorType("i64", shape)


register(OpDef(
    name="argmax",
    attrs=(AttrSpec("axis", "int", help="the dimension searched; negative counts from the end"),
           AttrSpec("keepdim", "bool", default=False,
                    help="keep the searched dimension with size 1")),
    infer=_argmax_infer,
    reference=lambda attrs, x: np.argmax(x, axis=attrs["axis"],
                                         keepdims=attrs["keepdim"]).astype(np.int64),
    normalize=lambda attrs, inputs: attrs.replace(
        axis=resolve_axis("argmax", attrs["axis"], inputs[0])),
    flops=_flops(1),
    kind="reduction",
    # The reduce kernel family, but its i64 result takes no fused float epilogue: a kernel of
    # its own, never fused.
    role="layout",
    summary="the position (`i64`) of the largest element along `axis`: the first of equal "
            "ones, of the first NaN if any (as PyTorch); x of any float dtype, `i32` or `i64`",
    dtypes=NUMERIC_DTYPES,
    doc=OpDoc(shapes="`[a, b, c]` → `[a, c]` (axis 1), dtype `i64`", flops="in + out"),
))
