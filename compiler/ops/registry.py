"""The op registry: one `OpDef` holds everything netc knows about an op.

Adding an op touches one place: an `OpDef` registered with `register`. It gives the op's
attribute schema (in the order positional attributes are accepted after the tensor inputs), its
shape and dtype rule, its parameters with PyTorch's names, shapes and default initialisation,
a NumPy reference implementation (the executable meaning of the op) and its FLOP count.

Conventions for the functions an `OpDef` holds:
* `infer(attrs, inputs)` gets the tensor inputs' types (not the parameters) and returns the
  output type, or raises `ShapeError` with a message that shows the shapes involved.
* `params(attrs, inputs)` returns the op's parameters in the order they follow the tensor
  inputs in the IR; `param_names(attrs)` must list the same names without needing the inputs.
* `reference(attrs, *arrays)` gets tensor inputs then parameters as NumPy arrays (float32 for
  every dtype: the interpreter rounds to the value's dtype between ops) and returns one array.
* `flops(attrs, input_shapes, output_shape)` counts floating-point operations (a multiply-add
  is 2) for concrete shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.ir import DTYPE_BYTES, Attrs, Dim, Node, TensorType, format_shape

REQUIRED: Any = object()
"""Marks an attribute without a default."""

ATTR_KINDS = ("int", "float", "bool", "str", "int_pair", "int_list", "padding")
"""`int_pair`: an int or `[h, w]`, stored as a pair. `int_list`: `[a, b, ...]`, stored as a
tuple. `padding`: an int, `[h, w]`, or the string "same"."""


class ShapeError(Exception):
    """The inputs' shapes or dtypes do not fit the op; the message shows them."""


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str
    default: Any = REQUIRED
    positional: bool = True
    """Whether the attribute may be given by position after the tensor arguments."""
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    """Smallest allowed value of an int or float (of each element for pairs and lists)."""
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: tuple[str, float]
    """("uniform", bound) draws U(-bound, bound); ("const", value) fills with value."""
    trainable: bool = True
    """False for running statistics, which PyTorch keeps as buffers, not parameters."""


def _no_params(attrs: Attrs) -> tuple[str, ...]:
    return ()


def _no_param_shapes(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    return ()


def _zero_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    return 0


def _keep_attrs(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return attrs


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[[Attrs, Sequence[TensorType]], TensorType]
    reference: Callable[..., np.ndarray]
    attrs: tuple[AttrSpec, ...] = ()
    min_inputs: int = 1
    max_inputs: int | None = 1
    """None: any number of tensor inputs (concat)."""
    param_names: Callable[[Attrs], tuple[str, ...]] = _no_params
    params: Callable[[Attrs, Sequence[TensorType]], tuple[ParamSpec, ...]] = _no_param_shapes
    flops: Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]], int] = _zero_flops
    normalize: Callable[[Attrs, Sequence[TensorType]], Attrs] = _keep_attrs
    """Turns user-level attribute forms into the canonical form the IR keeps (e.g. "same")."""
    kind: str = "elementwise"
    """elementwise | gemm | conv | pool | reduction | normalization | view | layout"""
    summary: str = ""

    def attr(self, name: str) -> AttrSpec | None:
        return next((spec for spec in self.attrs if spec.name == name), None)

    @property
    def has_params(self) -> bool:
        return self.param_names is not _no_params

    def infer_all(self, attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        """The output type from all IR inputs (tensor inputs followed by parameters)."""
        count = len(self.param_names(attrs))
        tensors = list(inputs[: len(inputs) - count]) if count else list(inputs)
        return self.infer(attrs, tensors)

    def bytes_moved(self, attrs: Attrs, inputs: Sequence[TensorType], output: TensorType,
                    sizes: Mapping[str, int] | None = None) -> int:
        """Bytes read and written when each input is read once and the output written once."""
        total = output.numel(sizes) * DTYPE_BYTES[output.dtype]
        for tensor in inputs:
            total += tensor.numel(sizes) * DTYPE_BYTES[tensor.dtype]
        return 0 if self.kind == "view" else total


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in REGISTRY:
        raise ValueError(f"op {opdef.name!r} registered twice")
    REGISTRY[opdef.name] = opdef
    return opdef


def node_flops(node: Node, input_types: Sequence[TensorType], sizes: Mapping[str, int]) -> int:
    opdef = REGISTRY[node.op]
    shapes = [t.concrete(sizes) for t in input_types]
    return opdef.flops(node.attrs, shapes, node.type.concrete(sizes))


# Helpers shared by the op definitions ---------------------------------------------------


def same_dtype(op: str, inputs: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) > 1:
        shown = ", ".join(str(t) for t in inputs)
        raise ShapeError(f"`{op}` needs inputs of one dtype, got {shown}")
    return inputs[0].dtype


def require_rank(op: str, tensor: TensorType, minimum: int, maximum: int | None = None,
                 what: str = "input") -> None:
    rank = tensor.rank
    if rank < minimum or (maximum is not None and rank > maximum):
        wanted = f"rank {minimum}" if maximum == minimum else (
            f"rank {minimum} or more" if maximum is None else f"rank {minimum} to {maximum}")
        raise ShapeError(f"`{op}` expects a {what} of {wanted}, got {format_shape(tensor.shape)}")


def same_type(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    """The shape rule of ops whose output is typed like their (first) input."""
    return inputs[0]


def per_element_flops(count: int) -> Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]],
                                             int]:
    """A FLOP rule charging `count` operations for every output element."""
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return count * math.prod(output)
    return flops


def int_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """An `int_pair` attribute in either user form (3 or [3, 5]) as a pair."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def resolve_axis(op: str, axis: int, tensor: TensorType) -> int:
    """`axis` (negative counts from the end, as in PyTorch) as an index into `tensor`'s shape."""
    if not -tensor.rank <= axis < tensor.rank:
        raise ShapeError(f"`{op}` axis {axis} is out of range for {format_shape(tensor.shape)} "
                         f"(rank {tensor.rank})")
    return axis % tensor.rank


def require_batch_first(op: str, shape: tuple[Dim, ...], *inputs: TensorType) -> None:
    """Version 1 allows a named dimension only first; an op must not move one elsewhere."""
    if any(isinstance(d, str) for d in shape[1:]):
        shown = " and ".join(format_shape(t.shape) for t in inputs)
        raise ShapeError(f"`{op}` on {shown} would give {format_shape(shape)}, with a named "
                         "dimension that is not the first")


def broadcast_shapes(op: str, first: TensorType, second: TensorType,
                     first_dims: tuple[Dim, ...] | None = None,
                     second_dims: tuple[Dim, ...] | None = None) -> tuple[Dim, ...]:
    """NumPy broadcasting of two shapes (by default the tensors' whole shapes).

    A named dimension broadcasts with itself or with 1; against any other size it is an error,
    since the size is unknown until run time. Errors show both tensors' full shapes.
    """
    left = first.shape if first_dims is None else first_dims
    right = second.shape if second_dims is None else second_dims
    width = max(len(left), len(right))
    padded_left = (1,) * (width - len(left)) + tuple(left)
    padded_right = (1,) * (width - len(right)) + tuple(right)
    result: list[Dim] = []
    for a, b in zip(padded_left, padded_right):
        if a == b or b == 1:
            result.append(a)
        elif a == 1:
            result.append(b)
        else:
            shown = f"{format_shape(first.shape)} and {format_shape(second.shape)}"
            named = a if isinstance(a, str) else b if isinstance(b, str) else None
            why = (f": the named dimension {named} broadcasts only with itself or 1, not with "
                   f"{b if named == a else a}") if named is not None else f": {a} against {b}"
            raise ShapeError(f"`{op}` cannot broadcast {shown}{why}")
    shape = tuple(result)
    require_batch_first(op, shape, first, second)
    return shape

