"""Shape ops, with PyTorch's semantics: squeeze and unsqueeze (views), expand (a broadcast
copy), stack (unsqueeze + concat), and the slicing ops the front end's indexing lowers to:
`slice` (`x[:, 1:5]`, `x[..., ::2]`) and `select` (`x[:, 0]`, `x[:, -1]`).

They move data of any dtype (token ids, masks) exactly. A slice or select reads a strided
subset of its input, starting at an offset; the IR's views
alias a whole buffer from its start, so both are `layout` ops (a gather kernel), not views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netc.ir import ALL_DTYPES, Attrs, Dim, TensorType, format_shape
from netc.ops.gradients import Gradients, unbroadcast
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OpDef,
    OpDoc,
    ShapeError,
    register,
    require_batch_first,
    resolve_axis,
    same_dtype,
)


def _insert_axis(op: str, axis: int, rank: int) -> int:
    """An axis of a result one rank larger (`unsqueeze`, `stack`), negative from the end."""
    if not -rank - 1 <= axis <= rank:
        raise ShapeError(f"`{op}` axis {axis} is out of range for a result of rank {rank + 1}")
    return axis % (rank + 1)


# squeeze / unsqueeze ---------------------------------------------------------------------


def _squeeze_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    axis = resolve_axis("squeeze", attrs["axis"], x)
    size = x.shape[axis]
    if isinstance(size, str):
        raise ShapeError(f"`squeeze` cannot squeeze axis {axis} of {format_shape(x.shape)}: "
                         f"the named dimension {size} is not known to be 1")
    if size != 1:
        return x  # as torch.squeeze(x, dim): a dimension other than 1 stays
    shape = x.shape[:axis] + x.shape[axis + 1:]
    require_batch_first("squeeze", shape, x)
    return TensorType(x.dtype, shape)


def _squeeze_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                 cotangent: str) -> Gradients:
    squeezed = builder.type_of(output).rank < builder.type_of(inputs[0]).rank
    return (builder.op("unsqueeze", cotangent, axis=attrs["axis"]) if squeezed else cotangent,)


register(OpDef(
    name="squeeze",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axis", "int", help="the dimension to drop if its size is 1; negative "
                    "counts from the end"),),
    infer=_squeeze_infer,
    reference=lambda attrs, x: x.reshape(
        _squeeze_infer(attrs, [TensorType("f32", x.shape)]).shape),
    normalize=lambda attrs, inputs: attrs.replace(
        axis=resolve_axis("squeeze", attrs["axis"], inputs[0])),
    vjp=_squeeze_vjp,
    kind="view",
    role="view",
    summary="drops dimension `axis` if its size is 1 (else the input unchanged, as PyTorch)",
    doc=OpDoc(shapes="`[a, 1, b]` → `[a, b]`", flops="0"),
))


def _unsqueeze_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    axis = _insert_axis("unsqueeze", attrs["axis"], x.rank)
    shape = (*x.shape[:axis], 1, *x.shape[axis:])
    require_batch_first("unsqueeze", shape, x)
    return TensorType(x.dtype, shape)


register(OpDef(
    name="unsqueeze",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axis", "int", help="where the new dimension of size 1 goes; negative "
                    "counts from the end of the result"),),
    infer=_unsqueeze_infer,
    reference=lambda attrs, x: np.expand_dims(x, attrs["axis"]),
    normalize=lambda attrs, inputs: attrs.replace(
        axis=_insert_axis("unsqueeze", attrs["axis"], inputs[0].rank)),
    vjp=lambda builder, attrs, inputs, output, g: (
        builder.op("squeeze", g, axis=attrs["axis"]),),
    kind="view",
    role="view",
    summary="inserts a dimension of size 1 at `axis`",
    doc=OpDoc(shapes="`[a, b]` → `[a, 1, b]`", flops="0"),
))


# expand ----------------------------------------------------------------------------------


def expanded_shape(op: str, x: TensorType, dims: Sequence[Dim]) -> tuple[Dim, ...]:
    """`Tensor.expand(*dims)`: the full target shape, -1 keeping the input's size; new leading
    dimensions must be given. A size may be a named dimension (`expand(cls, [N, -1, -1])`)."""
    shown = f"{format_shape(x.shape)} to {format_shape(tuple(dims))}"
    if len(dims) < x.rank:
        raise ShapeError(f"`{op}` needs at least as many sizes as the input has dimensions: "
                         f"cannot expand {shown}")
    lead = len(dims) - x.rank
    shape: list[Dim] = []
    for position, target in enumerate(dims):
        if position < lead:
            if isinstance(target, int) and target < 1:
                raise ShapeError(f"`{op}` cannot expand {shown}: a new leading dimension "
                                 f"needs a positive size, got {target}")
            shape.append(target)
            continue
        size = x.shape[position - lead]
        if target == -1 or target == size:
            shape.append(size)
        elif size == 1 and (isinstance(target, str) or target >= 1):
            shape.append(target)
        else:
            raise ShapeError(f"`{op}` cannot expand {shown}: dimension {position} of size "
                             f"{size} can only be kept (-1) or expanded from 1")
    result = tuple(shape)
    # The named dimensions `dims` gives come from the network's inputs, as in `reshape`.
    require_batch_first(op, result, x, TensorType(x.dtype, tuple(d for d in dims
                                                                  if isinstance(d, str))))
    return result


def _expand_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    return TensorType(x.dtype, expanded_shape("expand", x, attrs["dims"]))


def _expand_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    lead = len(attrs["dims"]) - x.ndim
    shape = tuple(x.shape[p - lead] if d == -1 else d for p, d in enumerate(attrs["dims"]))
    return np.ascontiguousarray(np.broadcast_to(x, shape))


def _expand_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                cotangent: str) -> Gradients:
    return (unbroadcast(builder, cotangent, builder.type_of(inputs[0]).shape),)


def _slice_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
               cotangent: str) -> Gradients:
    """The cotangent padded with zeros back to the input's shape, spaced out first where the
    step is not 1 (`_spread_steps`); a slice ending at a dimension name T (`pos[:, :T]`, step
    1) puts it in the first T places by a product with a T-column identity, as T is known at
    run time only."""
    x_type = builder.type_of(inputs[0])
    begin, stride, lengths = slice_plan(attrs, x_type)
    named = [axis for axis in attrs["axes"] if isinstance(lengths[axis], str)]
    if not named:
        spread = _spread_steps(builder, cotangent, stride)
        return (_pad_back(builder, spread, x_type, begin),)
    if len(attrs["axes"]) > 1 or x_type.rank < 2:
        raise ShapeError("the gradient of a `slice` ending at a dimension name is built for "
                         "one sliced axis of a tensor of rank 2 or more only")
    axis, rank = named[0], x_type.rank
    place = builder.op("eq", builder.op("unsqueeze", builder.op("arange", n=x_type.shape[axis]),
                                        axis=1),
                       builder.op("unsqueeze", builder.op("arange", n=lengths[axis]), axis=0))
    place = builder.op("cast", place, dtype=x_type.dtype)
    swap = list(range(rank))
    swap[axis], swap[rank - 2] = rank - 2, axis
    moved = cotangent if axis == rank - 2 else builder.op("transpose", cotangent, perm=swap)
    placed = builder.op("matmul", place, moved)
    return (placed if axis == rank - 2 else builder.op("transpose", placed, perm=swap),)


def _spread_steps(builder: Composer, value: str, stride: Sequence[int]) -> str:
    """`value` with step-1 zeros after each element along every axis of step > 1 (length L
    becomes L·step): a new axis after each such one, padded to `step` with zeros (one pad
    for all), merged back by a reshape (a view). A leading axis of size 1 is added for the
    reshape, which keeps axis 0, when axis 0 itself is strided."""
    strided = [axis for axis, step in enumerate(stride) if step != 1]
    if not strided:
        return value
    lead = 1 if strided[0] == 0 else 0
    if lead:
        value = builder.op("unsqueeze", value, axis=0)
    for axis in reversed(strided):
        value = builder.op("unsqueeze", value, axis=lead + axis + 1)
    rank = builder.type_of(value).rank
    # The new axis of strided[k] sits at lead + strided[k] + k + 1.
    widths = {lead + axis + k + 1: stride[axis] - 1 for k, axis in enumerate(strided)}
    pads: list[int] = []
    for axis in reversed(range(min(widths), rank)):
        pads.extend((0, widths.get(axis, 0)))
    value = builder.op("pad", value, pads=pads)
    shape = builder.type_of(value).shape
    merged: list[Dim] = []
    for axis, size in enumerate(shape):
        if axis in widths:
            merged[-1] = int(merged[-1]) * int(size)
        else:
            merged.append(size)
    value = builder.op("reshape", value, dims=merged[1:])
    return builder.op("squeeze", value, axis=0) if lead else value


def _pad_back(builder: Composer, value: str, x: TensorType, begin: Sequence[int]) -> str:
    """`value`, a block of `x`'s shape starting at `begin`, padded with zeros to `x`."""
    shape = builder.type_of(value).shape
    pads: list[int] = []
    for axis in reversed(range(x.rank)):
        before = begin[axis]
        # Negative where a spread-out strided block runs past the end (`_spread_steps`).
        after = 0 if shape[axis] == x.shape[axis] and not before else int(
            x.shape[axis]) - before - int(shape[axis])
        pads.extend((before, after))
    while pads[-2:] == [0, 0]:  # F.pad lists the last dimension first: trim the front ones
        pads = pads[:-2]
    return builder.op("pad", value, pads=pads) if pads else value


register(OpDef(
    name="expand",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("dims", "dim_list", minimum=-1,
                    help="the full target shape; -1 keeps a dimension; a named dimension "
                         "expands a 1 to its run-time size"),),
    infer=_expand_infer,
    reference=_expand_reference,
    normalize=lambda attrs, inputs: attrs.replace(dims=tuple(attrs["dims"])),
    vjp=_expand_vjp,
    kind="layout",
    role="layout",
    summary="repeats dimensions of size 1 (and new leading ones) to the target shape, as "
            "`Tensor.expand`",
    doc=OpDoc(shapes="`[a, 1]` → `[d0, a, b]` with `dims = [d0, -1, b]`", flops="0",
              attrs="a size other than -1 must equal the input's or expand a 1"),
))


# stack -----------------------------------------------------------------------------------


def _stack_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    dtype = same_dtype("stack", inputs)
    first = inputs[0]
    if any(t.shape != first.shape for t in inputs):
        shapes = ", ".join(format_shape(t.shape) for t in inputs)
        raise ShapeError(f"`stack` needs inputs of one shape, got {shapes}")
    axis = _insert_axis("stack", attrs["axis"], first.rank)
    shape = (*first.shape[:axis], len(inputs), *first.shape[axis:])
    require_batch_first("stack", shape, *inputs)
    return TensorType(dtype, shape)


def _stack_decompose(builder: Composer, attrs: Attrs, *inputs: str) -> str:
    parts = [builder.op("unsqueeze", x, axis=attrs["axis"]) for x in inputs]
    return parts[0] if len(parts) == 1 else builder.op("concat", *parts, axis=attrs["axis"])


register(OpDef(
    name="stack",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axis", "int", default=0, help="the new dimension's position; negative "
                    "counts from the end of the result"),),
    infer=_stack_infer,
    reference=lambda attrs, *xs: np.stack(xs, axis=attrs["axis"]),
    min_inputs=1,
    max_inputs=None,
    normalize=lambda attrs, inputs: attrs.replace(
        axis=_insert_axis("stack", attrs["axis"], inputs[0].rank)),
    decompose=_stack_decompose,
    kind="layout",
    role="layout",
    summary="joins inputs of one shape along a new dimension `axis`",
    doc=OpDoc(shapes="k × `[a, b]` → `[a, k, b]` (axis 1)", flops="0"),
))


# slice / select --------------------------------------------------------------------------


def _bounds(op: str, x: TensorType, axis: int, start: int, end: int,
            step: int) -> tuple[int, int]:
    """(start, length) of a Python slice start:end:step of dimension `axis` of `x`: negative
    bounds count from the end, out-of-range ones clamp; an empty result is an error."""
    size = x.shape[axis]
    if isinstance(size, str):
        raise ShapeError(f"`{op}` cannot slice axis {axis} of {format_shape(x.shape)}: the "
                         f"named dimension {size} has no known size")
    begin, stop, _ = slice(start, end, step).indices(size)
    length = max(0, -(-(stop - begin) // step))
    if length == 0:
        raise ShapeError(f"`{op}` {start}:{end}:{step} along axis {axis} of "
                         f"{format_shape(x.shape)} is empty")
    return begin, length


def slice_plan(attrs: Attrs, x: TensorType) -> tuple[tuple[int, ...], tuple[int, ...],
                                                     tuple[Dim, ...]]:
    """Per dimension of `x`: (start, step, length) of the elements a `slice` keeps; a length
    is a dimension name where the slice ends at that name (`pos[:, :T]`: the first T)."""
    axes, starts, ends = (tuple(attrs[name]) for name in ("axes", "starts", "ends"))
    steps = tuple(attrs["steps"]) or (1,) * len(axes)
    if not len(axes) == len(starts) == len(ends) == len(steps) or not axes:
        raise ShapeError(f"`slice` needs one start, end (and step) per axis, got axes="
                         f"{list(axes)}, starts={list(starts)}, ends={list(ends)}, steps="
                         f"{list(steps)}")
    begin = [0] * x.rank
    stride = [1] * x.rank
    shape: list[Dim] = list(x.shape)
    seen: set[int] = set()
    for axis, start, end, step in zip(axes, starts, ends, steps):
        resolved = resolve_axis("slice", axis, x)
        if resolved in seen:
            raise ShapeError(f"`slice` slices each axis once, got axes={list(axes)}")
        seen.add(resolved)
        if step < 1:
            raise ShapeError(f"`slice` needs steps of at least 1 (PyTorch has no negative "
                             f"step), got {step}")
        if isinstance(end, str):
            shape[resolved] = _named_end(x, resolved, start, end, step)
        else:
            begin[resolved], shape[resolved] = _bounds("slice", x, resolved, start, end, step)
        stride[resolved] = step
    return tuple(begin), tuple(stride), tuple(shape)


def _named_end(x: TensorType, axis: int, start: int, end: str, step: int) -> str:
    """The length of `x[..., :end]` along `axis` for a dimension name `end`: `end` itself, so
    only a plain prefix `:T` of a dimension of known size is one."""
    size = x.shape[axis]
    if isinstance(size, str):
        raise ShapeError(f"`slice` cannot slice axis {axis} of {format_shape(x.shape)}: the "
                         f"named dimension {size} has no known size")
    if start != 0 or step != 1:
        raise ShapeError(f"`slice` ending at the named dimension {end} must start at 0 with "
                         f"step 1 (its length is then {end}), got {start}:{end}:{step} along "
                         f"axis {axis} of {format_shape(x.shape)}")
    return end


def _slice_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    _, _, lengths = slice_plan(attrs, x)
    return TensorType(x.dtype, lengths)


def _slice_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    """Axes non-negative and sorted, each with its start clamped, its end the start's plus
    the length times the step (so that applying the record again gives the same slice); an
    end that is a dimension name stays that name."""
    (x,) = inputs
    begin, stride, lengths = slice_plan(attrs, x)
    axes = sorted({resolve_axis("slice", a, x) for a in attrs["axes"]})

    def end(axis: int) -> Dim:
        length = lengths[axis]
        return length if isinstance(length, str) else \
            begin[axis] + (length - 1) * stride[axis] + 1
    return attrs.replace(axes=tuple(axes), starts=tuple(begin[a] for a in axes),
                         ends=tuple(end(a) for a in axes),
                         steps=tuple(stride[a] for a in axes))


def _slice_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    index = [slice(None)] * x.ndim
    steps = attrs["steps"] or (1,) * len(attrs["axes"])
    for axis, start, end, step in zip(attrs["axes"], attrs["starts"], attrs["ends"], steps):
        index[axis] = slice(start, end, step)
    return np.ascontiguousarray(x[tuple(index)])


register(OpDef(
    name="slice",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axes", "int_list", help="the dimensions sliced; negative counts from "
                    "the end"),
           AttrSpec("starts", "int_list", help="the first index along each axis; negative "
                    "counts from the end"),
           AttrSpec("ends", "dim_list", help="one past the last index along each axis; "
                    "negative counts from the end, out-of-range clamps; a dimension name T "
                    "keeps the first T (`pos[:, :T]`)"),
           AttrSpec("steps", "int_list", default=(), minimum=1,
                    help="the step along each axis (default 1)")),
    infer=_slice_infer,
    reference=_slice_reference,
    normalize=_slice_normalize,
    vjp=_slice_vjp,
    kind="layout",
    role="layout",
    summary="`x[start:end:step]` along each listed axis, with Python's rules",
    doc=OpDoc(shapes="`[a, b]` → `[a, ceil((end - start) / step)]`", flops="0",
              attrs="one start, end and step per axis; each axis once; steps ≥ 1; the result "
                    "must not be empty; a named dimension cannot be sliced; an end that is a "
                    "dimension name T (start 0, step 1) gives length T"),
))


def _select_index(attrs: Attrs, x: TensorType) -> tuple[int, int]:
    axis = resolve_axis("select", attrs["axis"], x)
    size = x.shape[axis]
    if isinstance(size, str):
        raise ShapeError(f"`select` cannot index axis {axis} of {format_shape(x.shape)}: the "
                         f"named dimension {size} has no known size")
    index = attrs["index"]
    if not -size <= index < size:
        raise ShapeError(f"`select` index {index} is out of range for axis {axis} of "
                         f"{format_shape(x.shape)} (size {size})")
    return axis, index % size


def _select_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    axis, _ = _select_index(attrs, x)
    shape = x.shape[:axis] + x.shape[axis + 1:]
    require_batch_first("select", shape, x)
    return TensorType(x.dtype, shape)


def _select_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    axis, index = _select_index(attrs, inputs[0])
    return attrs.replace(axis=axis, index=index)


register(OpDef(
    name="select",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("axis", "int", help="the dimension indexed; negative counts from the end"),
           AttrSpec("index", "int", help="the position along it; negative counts from the "
                    "end")),
    infer=_select_infer,
    reference=lambda attrs, x: np.ascontiguousarray(np.take(x, attrs["index"],
                                                            axis=attrs["axis"])),
    normalize=_select_normalize,
    vjp=lambda builder, attrs, inputs, output, g: (_pad_back(
        builder, builder.op("unsqueeze", g, axis=attrs["axis"]), builder.type_of(inputs[0]),
        [attrs["index"] if axis == attrs["axis"] else 0
         for axis in range(builder.type_of(inputs[0]).rank)]),),
    kind="layout",
    role="layout",
    summary="`x[..., index]` along `axis`: one position, the dimension dropped",
    doc=OpDoc(shapes="`[a, b, c]` → `[a, c]` (axis 1)", flops="0",
              attrs="`index` within the dimension's size"),
))

