"""What the ops' vector-Jacobian products share (`OpDef.vjp`, run by `netc.autodiff`).

Each VJP lives beside its op; this module holds only the pieces several of them use: summing a
cotangent back to a broadcast operand's shape, spreading a reduction's cotangent back over
the reduced axes, the number of elements a reduction reads (a named dimension included), and
the elementwise patterns (`g · f'(x)`, `g` where a condition holds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from netc.ir import Attrs, Dim
from netc.ops.registry import Composer

Gradients = tuple[str | None, ...]
Vjp = Callable[[Composer, Attrs, tuple[str, ...], str, str], Gradients]
"""`vjp(builder, attrs, inputs, output, cotangent)`: see the `netc.ops.registry` docstring."""


def zeros(builder: Composer, shape: Sequence[Dim], dtype: str) -> str:
    """A tensor of zeros of `shape` (a named dimension included)."""
    value = builder.constant(0.0, dtype)
    return builder.op("expand", value, dims=list(shape)) if shape else value


def unbroadcast(builder: Composer, cotangent: str, shape: Sequence[Dim]) -> str:
    """The cotangent of a broadcast result, summed back to an operand of `shape`: over the
    leading axes the operand lacks, and (kept, size 1) where the operand had size 1."""
    result_shape = builder.type_of(cotangent).shape
    lead = len(result_shape) - len(shape)
    if lead:
        cotangent = builder.op("sum", cotangent, axis=list(range(lead)))
    widened = [axis for axis, (size, result) in enumerate(zip(shape, result_shape[lead:]))
               if size == 1 and result != 1]
    if widened:
        cotangent = builder.op("sum", cotangent, axis=widened, keepdim=True)
    return cotangent


def spread(builder: Composer, cotangent: str, shape: Sequence[Dim], axes: Sequence[int],
           keepdim: bool) -> str:
    """The cotangent of a reduction over `axes` of a tensor of `shape`, repeated along those
    axes (to be scaled by the reduction's local derivative)."""
    if not keepdim:
        for axis in sorted(axes):
            cotangent = builder.op("unsqueeze", cotangent, axis=axis)
    if tuple(builder.type_of(cotangent).shape) == tuple(shape):
        return cotangent
    return builder.op("expand", cotangent, dims=list(shape))


def count(builder: Composer, shape: Sequence[Dim], axes: Sequence[int], dtype: str) -> str:
    """How many elements a reduction over `axes` of `shape` reads, as a scalar: a constant,
    or with a named dimension (known only at run time) the known sizes' product times, for
    each named one, the sum of a vector of ones that long (a tiny reduction, not one over a
    tensor of the input's size)."""
    sizes = [shape[axis] for axis in axes]
    total = builder.constant(float(math.prod(int(s) for s in sizes if isinstance(s, int))),
                             dtype)
    for name in (size for size in sizes if isinstance(size, str)):
        ones = builder.op("expand", builder.constant(1.0, dtype), dims=[name])
        total = builder.op("mul", total, builder.op("sum", ones, axis=[0]))
    return total


def elementwise(derivative: Callable[[Composer, Attrs, str, str], str]) -> Vjp:
    """The VJP of y = f(x), elementwise, from `derivative(builder, attrs, x, y)` giving f'(x)
    as a tensor: g · f'(x)."""
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        return (builder.op("mul", cotangent, derivative(builder, attrs, inputs[0], output)),)
    return vjp


def passed_where(condition: Callable[[Composer, Attrs, str], str]) -> Vjp:
    """The VJP of an op whose derivative is 1 where `condition(builder, attrs, x)` (a bool
    tensor) holds and 0 elsewhere (relu, hardtanh, clamp): g there, 0 elsewhere."""
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        kept = condition(builder, attrs, inputs[0])
        zero = builder.constant(0.0, builder.type_of(cotangent).dtype)
        return (builder.op("where", kept, cotangent, zero),)
    return vjp


def both(builder: Composer, first: str, second: str) -> str:
    """The elementwise "and" of two bool tensors (netc has no logical ops yet)."""
    total = builder.op("add", builder.op("cast", first, dtype="i32"),
                       builder.op("cast", second, dtype="i32"))
    return builder.op("eq", total, other=2.0)


def scaled(builder: Composer, value: str, factor: float) -> str:
    """value · factor, the factor a constant of value's dtype."""
    return builder.op("mul", value, builder.constant(factor, builder.type_of(value).dtype))


def identity(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
             cotangent: str) -> Gradients:
    """The VJP of an op that is the identity on its (one) input's values (dropout at
    inference)."""
    return (cotangent,)
