"""Ops on integer and boolean tensors, and the ops that make or consume them: `cast`, the
comparisons (`eq`, `ne`, `lt`, `le`, `gt`, `ge`, to `bool`), `where`, `masked_fill`,
`embedding` (a gather by integer ids), `arange`, `triu` and `tril`. PyTorch's semantics
throughout; where PyTorch leaves a result undefined or raises, the entry says what netc does:

* a float cast to an integer truncates toward zero; NaN becomes 0 and a value beyond the
  integer's range its nearest end (CUDA's saturating conversion; PyTorch leaves both
  undefined), `netc.dtypes.to_integer`;
* a comparison with a number compares in float32 after rounding the number to a float
  tensor's dtype (as PyTorch does for a float tensor; for an integer tensor PyTorch compares
  an int exactly, so the two differ beyond 2^24);
* an embedding id outside [0, num_embeddings) gives a row of NaN (PyTorch raises an error; a
  kernel cannot, and must not read out of bounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from netc.dtypes import round_scalar, round_to
from netc.ir import ALL_DTYPES, FLOAT_DTYPES, INTEGER_DTYPES, Attrs, TensorType, format_shape
from netc.ops.gradients import Gradients, unbroadcast
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    OnnxForm,
    OpDef,
    OpDoc,
    ParamSpec,
    ShapeError,
    broadcast_shapes,
    per_element_flops,
    register,
    require_rank,
    same_dtype,
)

# cast ---------------------------------------------------------------------------------------


def _cast_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    return TensorType(attrs["dtype"], inputs[0].shape)


def _cast_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
              cotangent: str) -> Gradients:
    """Between float dtypes, the cotangent cast back; from an integer or bool, none."""
    dtype = builder.type_of(inputs[0]).dtype
    if dtype not in FLOAT_DTYPES:
        return (None,)
    return (builder.op("cast", cotangent, dtype=dtype),)


register(OpDef(
    name="cast",
    attrs=(AttrSpec("dtype", "str", choices=ALL_DTYPES, help="the dtype to convert to"),),
    infer=_cast_infer,
    reference=lambda attrs, x: round_to(attrs["dtype"], x),
    vjp=_cast_vjp,
    flops=per_element_flops(0),
    dtypes=ALL_DTYPES,
    summary="x converted to `dtype`, as `Tensor.to`: float to integer truncates toward zero "
            "(NaN gives 0, a value beyond the range the nearest end: PyTorch leaves both "
            "undefined); to bool, nonzero (NaN too) is true",
    doc=OpDoc(flops="0", attrs="any dtype to any: `f32`, `f16`, `bf16`, `i32`, `i64`, `bool`"),
    # The conversion is the rounding every pointwise result gets to its dtype.
    expression=CudaExpression("{0}"),
))


# comparisons --------------------------------------------------------------------------------


def _compare_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    """A number compared with a float tensor is first rounded to the tensor's dtype, as
    PyTorch does (0.1 against an f16 tensor is f16's 0.1)."""
    other = attrs["other"]
    if other is None or len(inputs) != 1 or inputs[0].dtype not in FLOAT_DTYPES:
        return attrs
    return attrs.replace(other=round_scalar(inputs[0].dtype, other))


Infer = Callable[[Attrs, Sequence[TensorType]], TensorType]
Comparison = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _compare_infer(op: str) -> Infer:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        if len(inputs) == 2:
            if attrs["other"] is not None:
                raise ShapeError(f"`{op}` compares two tensors or a tensor and a number, not "
                                 "both: drop the number or the second tensor")
            same_dtype(op, inputs)
            return TensorType("bool", broadcast_shapes(op, inputs[0], inputs[1]))
        if attrs["other"] is None:
            raise ShapeError(f"`{op}` needs a second tensor or a number to compare "
                             f"{inputs[0]} with")
        return TensorType("bool", inputs[0].shape)
    return infer


def _compare_reference(function: Comparison) -> Callable[..., np.ndarray]:
    def reference(attrs: Attrs, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        if b is None:  # a number: compared in float32, as the kernel compares it
            return function(np.asarray(a, dtype=np.float32), np.float32(attrs["other"]))
        return function(a, b)
    return reference


_COMPARISONS = (
    ("eq", np.equal, "==", "Equal", "a == b"),
    ("ne", np.not_equal, "!=", None, "a != b"),
    ("lt", np.less, "<", "Less", "a < b"),
    ("le", np.less_equal, "<=", "LessOrEqual", "a <= b"),
    ("gt", np.greater, ">", "Greater", "a > b"),
    ("ge", np.greater_equal, ">=", "GreaterOrEqual", "a >= b"),
)
COMPARISON_ONNX = {name: onnx for name, _, _, onnx, _ in _COMPARISONS}
"""Each comparison's ONNX op (`ne` is `Not(Equal)`)."""

for _name, _function, _symbol, _onnx, _words in _COMPARISONS:
    register(OpDef(
        name=_name,
        attrs=(AttrSpec("other", "float", default=None,
                        help="a number to compare with, instead of a second tensor"),),
        infer=_compare_infer(_name),
        reference=_compare_reference(_function),
        normalize=_compare_normalize,
        min_inputs=1,
        max_inputs=2,
        flops=per_element_flops(1),
        dtypes=ALL_DTYPES,
        summary=f"{_words} elementwise, to `bool` (NumPy broadcasting); b a tensor of a's dtype "
                "or a number; NaN compares as IEEE says",
        doc=OpDoc(shapes="broadcast of a and b, dtype `bool`",
                  attrs="`other` only without a second tensor; a number is rounded to a float "
                        "tensor's dtype and compared in float32"),
        # `{1}` is the second tensor, or `other` when there is none (an unset float attribute
        # is no operand).
        expression=CudaExpression(f"({{0}} {_symbol} {{1}})", floats=("other",)),
    ))


# where and masked_fill ----------------------------------------------------------------------


def _require_bool(op: str, tensor: TensorType, what: str) -> None:
    if tensor.dtype != "bool":
        raise ShapeError(f"`{op}` needs a bool {what}, got {tensor}; compare to make one "
                         f"(`ne(x, 0)`) or `cast(x, \"bool\")`")


def _where_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    condition, a, b = inputs
    _require_bool("where", condition, "condition")
    dtype = same_dtype("where", [a, b])
    values = broadcast_shapes("where", a, b)
    return TensorType(dtype, broadcast_shapes("where", condition, a, second_dims=values))


def _where_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
               cotangent: str) -> Gradients:
    condition, a, b = inputs
    zero = builder.constant(0.0, builder.type_of(cotangent).dtype)
    return (None,
            unbroadcast(builder, builder.op("where", condition, cotangent, zero),
                        builder.type_of(a).shape),
            unbroadcast(builder, builder.op("where", condition, zero, cotangent),
                        builder.type_of(b).shape))


register(OpDef(
    name="where",
    infer=_where_infer,
    reference=lambda attrs, condition, a, b: np.where(condition, a, b),
    vjp=_where_vjp,
    min_inputs=3,
    max_inputs=3,
    flops=per_element_flops(1),
    dtypes=ALL_DTYPES,
    summary="a where cond is true, else b (`torch.where`); cond `bool`, a and b of one dtype, "
            "all three broadcast",
    doc=OpDoc(shapes="broadcast of cond, a and b", flops="out"),
    expression=CudaExpression("({0} ? {1} : {2})"),
    onnx=OnnxForm("Where", since=9),
))


def _fill_value(attrs: Attrs, x: TensorType) -> float:
    """`value` as the tensor holds it; an integer or bool tensor takes only values it holds
    exactly (PyTorch would convert 2.5 silently)."""
    value = float(attrs["value"])
    if x.dtype in FLOAT_DTYPES:
        return round_scalar(x.dtype, value)
    low, high = (0, 1) if x.dtype == "bool" else \
        (-(2 ** 31), 2 ** 31 - 1) if x.dtype == "i32" else (-(2 ** 63), 2 ** 63 - 1)
    if not value.is_integer() or not low <= value <= high:
        raise ShapeError(f"`masked_fill` of {x} cannot hold the value {value!r}: give "
                         f"{'0 or 1' if x.dtype == 'bool' else 'an integer'} in "
                         f"[{low}, {high}]")
    return value


def _masked_fill_normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return attrs.replace(value=_fill_value(attrs, inputs[0]))


def _masked_fill_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, mask = inputs
    _require_bool("masked_fill", mask, "mask")
    _fill_value(attrs, x)
    shape = broadcast_shapes("masked_fill", x, mask)
    if shape != x.shape:
        raise ShapeError(f"`masked_fill` needs a mask that broadcasts to x's shape "
                         f"{format_shape(x.shape)}, got {mask}")
    return x


register(OpDef(
    name="masked_fill",
    attrs=(AttrSpec("value", "float", help="the value written where mask is true"),),
    infer=_masked_fill_infer,
    reference=lambda attrs, x, mask: np.where(mask, round_to_like(x, attrs["value"]), x),
    normalize=_masked_fill_normalize,
    vjp=lambda builder, attrs, inputs, output, g: (builder.op(
        "where", inputs[1], builder.constant(0.0, builder.type_of(g).dtype), g), None),
    min_inputs=2,
    max_inputs=2,
    flops=per_element_flops(1),
    dtypes=ALL_DTYPES,
    summary="x with value where mask is true (`Tensor.masked_fill`); mask `bool`, broadcast "
            "to x's shape",
    doc=OpDoc(attrs="`value` is rounded to x's dtype; an integer x takes an integer in its "
                    "range, a bool x 0 or 1"),
    # The value converted to x's own type first, so an i64 x is never computed in float.
    expression=CudaExpression("({1} ? static_cast<decltype({0})>({2}) : {0})",
                              floats=("value",)),
))


def round_to_like(x: np.ndarray, value: float) -> np.ndarray:
    """`value` as an array of `x`'s NumPy dtype (exact: `_fill_value` checked it)."""
    return np.asarray(value).astype(np.asarray(x).dtype)


# embedding ----------------------------------------------------------------------------------


def _embedding_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    (ids,) = inputs
    return TensorType(attrs["dtype"], (*ids.shape, attrs["dim"]))


def _embedding_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    # N(0, 1), as nn.Embedding initialises its weight.
    return (ParamSpec("weight", (attrs["num_embeddings"], attrs["dim"]), ("normal", 1.0),
                      dtype=attrs["dtype"]),)


def embedding_rows(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """weight[ids], with a row of NaN for every id outside [0, len(weight))."""
    ids = np.asarray(ids, dtype=np.int64)
    valid = (ids >= 0) & (ids < weight.shape[0])
    rows = np.asarray(weight, dtype=np.float32)[np.where(valid, ids, 0)]
    rows[~valid] = np.nan
    return rows


def _embedding_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                   cotangent: str) -> Gradients:
    """The table's gradient: each row the sum of the cotangents of the positions that read
    it, as onehot(ids)^T @ g (an id outside the table reads no row, so adds nothing)."""
    ids, _ = inputs
    rank = builder.type_of(ids).rank
    rows = builder.op("arange", n=attrs["num_embeddings"])
    onehot = builder.op("cast", builder.op("eq", builder.op("unsqueeze", builder.op(
        "cast", ids, dtype="i64"), axis=rank), rows), dtype=builder.type_of(cotangent).dtype)
    if rank == 0:
        return (None, builder.op("mul", builder.op("unsqueeze", onehot, axis=1),
                                 builder.op("unsqueeze", cotangent, axis=0)))
    # [..., rows, positions] @ [..., positions, dim], summed over the leading dims.
    swapped = builder.op("transpose", onehot, perm=[*range(rank - 1), rank, rank - 1])
    table = builder.op("matmul", swapped, cotangent)
    if rank > 1:
        table = builder.op("sum", table, axis=list(range(rank - 1)))
    return (None, table)


register(OpDef(
    name="embedding",
    attrs=(AttrSpec("num_embeddings", "int", minimum=1, help="rows of the table (vocabulary)"),
           AttrSpec("dim", "int", minimum=1, help="the length of each row"),
           AttrSpec("dtype", "str", default="f32", positional=False, choices=FLOAT_DTYPES,
                    help="the table's (and the result's) dtype")),
    infer=_embedding_infer,
    reference=lambda attrs, ids, weight: embedding_rows(ids, weight),
    vjp=_embedding_vjp,
    param_names=lambda attrs: ("weight",),
    params=_embedding_params,
    flops=per_element_flops(0),
    kind="layout",
    role="layout",
    dtypes=INTEGER_DTYPES,
    summary="row ids of a table (`nn.Embedding`): [..., dim]; an id outside "
            "[0, num_embeddings) gives a row of NaN (PyTorch raises an error)",
    doc=OpDoc(shapes="`[...]` (i32 or i64 ids) → `[..., dim]`",
              params="`weight` [num_embeddings, dim], N(0, 1) as `nn.Embedding`", flops="0"),
))


# arange -------------------------------------------------------------------------------------


register(OpDef(
    name="arange",
    attrs=(AttrSpec("n", "dim", minimum=1, help="how many: the result is 0, 1, ..., n - 1; "
                    "a dimension name T gives a T-long result"),),
    infer=lambda attrs, inputs: TensorType("i64", (attrs["n"],)),
    reference=lambda attrs: np.arange(attrs["n"], dtype=np.int64),
    min_inputs=0,
    max_inputs=0,
    flops=per_element_flops(0),
    summary="0, 1, ..., n - 1 as `i64` (`torch.arange(n)`)",
    doc=OpDoc(shapes="`[n]`, dtype `i64`", flops="0",
              attrs="an int or a dimension name (`arange(T)`: `[T]`)"),
    # Element `index` of a 1-D result is the index itself (every member of a fused group has
    # this op's type, so a group computes it at the same index).
    expression=CudaExpression("index"),
))


# triu and tril ------------------------------------------------------------------------------


def _triangle_infer(op: str) -> Infer:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        require_rank(op, inputs[0], 2)
        return inputs[0]
    return infer


def triangle_keeps(op: str, row: np.ndarray, column: np.ndarray, diagonal: int) -> np.ndarray:
    """Where `op` keeps its input: on and above diagonal `diagonal` (triu), on and below it
    (tril), counted as PyTorch counts them (0 the main diagonal, positive above it)."""
    return column - row >= diagonal if op == "triu" else column - row <= diagonal


def _triangle_reference(op: str) -> Callable[[Attrs, np.ndarray], np.ndarray]:
    def reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
        rows, columns = x.shape[-2:]
        keep = triangle_keeps(op, np.arange(rows)[:, None], np.arange(columns)[None, :],
                              attrs["diagonal"])
        return np.where(keep, x, np.zeros((), dtype=x.dtype))
    return reference


for _name, _where in (("triu", "on and above"), ("tril", "on and below")):
    register(OpDef(
        name=_name,
        attrs=(AttrSpec("diagonal", "int", default=0,
                        help="0 the main diagonal, positive above it, negative below"),),
        infer=_triangle_infer(_name),
        reference=_triangle_reference(_name),
        vjp=lambda builder, attrs, inputs, output, g, op=_name: (
            builder.op(op, g, diagonal=attrs["diagonal"]),),
        flops=per_element_flops(0),
        kind="layout",
        role="layout",
        dtypes=ALL_DTYPES,
        summary=f"x's last two dims kept {_where} the diagonal `diagonal`, zero elsewhere "
                f"(`torch.{_name}`)",
        doc=OpDoc(shapes="same (rank 2 or more)", flops="0"),
    ))

