"""Ops that move or relabel data: flatten, reshape, transpose, concat, and dropout (identity).

The batch (first) dimension may be named; flatten and reshape keep it as it is, so they never
need its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import ALL_DTYPES, Attrs, Dim, TensorType, format_shape
from netc.ops.gradients import Gradients, identity
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OnnxForm,
    OpDef,
    OpDoc,
    ShapeError,
    register,
    require_batch_first,
    require_rank,
    resolve_axis,
    same_dtype,
    same_type,
)


def _item_size(op: str, x: TensorType) -> int:
    """The number of elements in one item (everything after the batch dimension)."""
    rest = x.shape[1:]
    if any(isinstance(d, str) for d in rest):
        raise ShapeError(f"`{op}` needs every dimension after the first known, got "
                         f"{format_shape(x.shape)}")
    return math.prod(int(d) for d in rest)


def _flatten_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("flatten", x, 2)
    return TensorType(x.dtype, (x.shape[0], _item_size("flatten", x)))


def _reshape_back(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                  cotangent: str) -> Gradients:
    """flatten's and reshape's gradient: the cotangent in the input's shape."""
    return (builder.op("reshape", cotangent, dims=list(builder.type_of(inputs[0]).shape[1:])),)


register(OpDef(
    name="flatten",
    dtypes=ALL_DTYPES,
    infer=_flatten_infer,
    reference=lambda attrs, x: x.reshape(x.shape[0], -1),
    vjp=_reshape_back,
    kind="view",
    role="view",
    summary="[N, ...] to [N, prod(...)]",
    doc=OpDoc(shapes="`[N, ...]` (rank ≥2) → `[N, prod(...)]`", flops="0"),
))


def _reshape_dims(x: TensorType, dims: Sequence[Dim]) -> tuple[Dim, ...]:
    """The dims after the first of `reshape(x, dims)`, -1 worked out.

    A dimension name in `dims` stands for that named dimension of `x` (`[T, 8, 32]` for
    [N, T, 256]): the named dimensions after the first must be kept, each once, so that every
    other size is known and -1 can be worked out at compile time."""
    rest = x.shape[1:]
    shown = f"{format_shape(x.shape)} to [{x.shape[0]}, {', '.join(str(d) for d in dims)}]"
    sizes = [d for d in dims if not isinstance(d, str)]
    if any(d == 0 or d < -1 for d in sizes) or sizes.count(-1) > 1:
        raise ShapeError(f"`reshape` dims must be positive, with at most one -1: cannot reshape "
                         f"{shown}")
    names_in = sorted(d for d in rest if isinstance(d, str))
    names_out = sorted(d for d in dims if isinstance(d, str))
    if names_in != names_out or len(set(names_out)) != len(names_out):
        raise ShapeError(f"`reshape` keeps the named dimensions after the first, each once and "
                         f"by name: cannot reshape {shown}")
    size = math.prod(int(d) for d in rest if not isinstance(d, str))
    known = math.prod(d for d in sizes if d != -1)
    if -1 in sizes:
        if size % known:
            raise ShapeError(f"`reshape` cannot reshape {shown}: {size} elements per item do "
                             f"not divide by {known}")
        return tuple(size // known if d == -1 else d for d in dims)
    if known != size:
        raise ShapeError(f"`reshape` cannot reshape {shown}: {size} elements per item, "
                         f"not {known}")
    return tuple(dims)


def _reshape_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    require_rank("reshape", x, 1)
    return TensorType(x.dtype, (x.shape[0], *_reshape_dims(x, attrs["dims"])))


def _reshape_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    """The IR keeps the dims as given (-1 included): they read as the user wrote them; beside
    a dimension name the -1 is worked out, so that at most one size is left to run time."""
    dims = tuple(attrs["dims"])
    resolved = _reshape_dims(inputs[0], dims)
    named = any(isinstance(d, str) for d in dims)
    return attrs.replace(dims=resolved if named else dims)


def _reshape_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    # A named dimension is the only size not fixed (normalize worked out any -1 beside it).
    return x.reshape(x.shape[0], *(-1 if isinstance(d, str) else d for d in attrs["dims"]))


register(OpDef(
    name="reshape",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("dims", "dim_list", minimum=-1,
                    help="the new shape of each item, after the batch; one may be -1; a named "
                         "dimension of the input is kept by its name"),),
    infer=_reshape_infer,
    reference=_reshape_reference,
    normalize=_reshape_normalize,
    vjp=_reshape_back,
    kind="view",
    role="view",
    summary="a new shape for each item; the batch dimension is kept",
    doc=OpDoc(shapes="`[N, ...]` → `[N, dims...]`", flops="0",
              attrs="at most one -1; each named dimension of the input after the first is "
                    "kept, by its name"),
))


def _transpose_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"`transpose` needs a permutation of 0..{x.rank - 1} for "
                         f"{format_shape(x.shape)}, got {format_shape(perm)}")
    shape = tuple(x.shape[axis] for axis in perm)
    require_batch_first("transpose", shape, x)
    return TensorType(x.dtype, shape)


def _transpose_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                   cotangent: str) -> Gradients:
    perm = list(attrs["perm"])
    return (builder.op("transpose", cotangent, perm=[perm.index(axis)
                                                     for axis in range(len(perm))]),)


register(OpDef(
    name="transpose",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("perm", "int_list", minimum=0,
                    help="a permutation of all dimensions (dimension 0 may move too)"),),
    infer=_transpose_infer,
    reference=lambda attrs, x: np.ascontiguousarray(x.transpose(attrs["perm"])),
    normalize=lambda attrs, inputs: attrs.replace(perm=tuple(attrs["perm"])),
    vjp=_transpose_vjp,
    kind="layout",
    role="layout",
    onnx=OnnxForm("Transpose", (("perm", "perm"),)),
    summary="permutes the dimensions (output dim i is input dim perm[i])",
    doc=OpDoc(shapes="dim i of the result is dim `perm[i]` of the input", flops="0",
              attrs="a permutation of all dimensions; dimension 0 may move"),
))


def _concat_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    dtype = same_dtype("concat", inputs)
    first = inputs[0]
    shapes = ", ".join(format_shape(t.shape) for t in inputs)
    if any(t.rank != first.rank for t in inputs):
        raise ShapeError(f"`concat` needs inputs of one rank, got {shapes}")
    axis = resolve_axis("concat", attrs["axis"], first)
    total = 0
    for tensor in inputs:
        size = tensor.shape[axis]
        if isinstance(size, str):
            raise ShapeError(f"`concat` along axis {axis} needs known sizes there, but it is "
                             f"the named dimension {size}: {shapes}")
        total += size
        if any(a != b for i, (a, b) in enumerate(zip(tensor.shape, first.shape)) if i != axis):
            raise ShapeError(f"`concat` along axis {axis} needs the other dimensions equal, "
                             f"got {shapes}")
    return TensorType(dtype, (*first.shape[:axis], total, *first.shape[axis + 1:]))


def _concat_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return attrs.replace(axis=resolve_axis("concat", attrs["axis"], inputs[0]))


def _concat_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                cotangent: str) -> Gradients:
    """Each input's slice of the cotangent along the axis."""
    axis, start, gradients = attrs["axis"], 0, []
    for value in inputs:
        size = int(builder.type_of(value).shape[axis])
        gradients.append(builder.op("slice", cotangent, axes=[axis], starts=[start],
                                    ends=[start + size]))
        start += size
    return tuple(gradients)


register(OpDef(
    name="concat",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axis", "int", default=1, help="negative counts from the end"),),
    infer=_concat_infer,
    reference=lambda attrs, *xs: np.concatenate(xs, axis=attrs["axis"]),
    min_inputs=2,
    max_inputs=None,
    normalize=_concat_normalize,
    vjp=_concat_vjp,
    kind="layout",
    role="layout",
    onnx=OnnxForm("Concat", (("axis", "axis"),), since=4),
    summary="joins the inputs along axis",
    doc=OpDoc(shapes="equal but for `axis`", attrs="2 or more inputs", flops="0"),
))


def _dropout_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    if attrs["p"] > 1:
        raise ShapeError(f"`dropout` probability must be between 0 and 1, got {attrs['p']}")
    return same_type(attrs, inputs)


register(OpDef(
    name="dropout",
    attrs=(AttrSpec("p", "float", default=0.5, minimum=0.0, help="ignored at inference"),),
    infer=_dropout_infer,
    reference=lambda attrs, x: x,
    # The identity's. A training step differentiates `dropout_train` instead, which
    # `netc.training_mode` puts in its place (netc.ops.philox).
    vjp=identity,
    kind="view",
    role="view",
    summary="the identity (inference mode)",
    doc=OpDoc(shapes="same (the identity)", attrs="0 ≤ p ≤ 1", flops="0"),
))
