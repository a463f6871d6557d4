"""Sizes and strides of tensors as the kernels see them.

Every tensor netc allocates is contiguous (row-major). Its first dimension may be the batch,
known only at run time, so a size that covers that dimension is a `BatchLinear`
(`per_batch * batch + fixed`), the same rule as the launch plan's `GridDim`. Strides never
depend on the batch: only the first dimension can, and no stride multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from netc.ir import Dim
from netc.plan import Arg, GridDim


@dataclass(frozen=True)
class BatchLinear:
    """A size `per_batch * batch + fixed`: exactly one of the two is non-zero."""

    per_batch: int
    fixed: int

    @classmethod
    def of(cls, dims: Sequence[Dim]) -> BatchLinear:
        """The product of `dims`, of which at most one is the (named) batch."""
        named = [d for d in dims if isinstance(d, str)]
        if len(named) > 1:
            raise ValueError(f"more than one named dimension in {tuple(dims)}")
        known = math.prod(d for d in dims if isinstance(d, int))
        return cls(known, 0) if named else cls(0, known)

    @property
    def batched(self) -> bool:
        return self.per_batch != 0

    def times(self, factor: int) -> BatchLinear:
        return BatchLinear(self.per_batch * factor, self.fixed * factor)

    def grid(self, divisor: int = 1) -> GridDim:
        """A grid dimension of ceil(size / divisor) blocks."""
        return GridDim(self.per_batch, self.fixed, divisor)

    def args(self) -> tuple[Arg, Arg]:
        return (Arg("int", value=self.per_batch), Arg("int", value=self.fixed))


def contiguous_strides(shape: Sequence[Dim]) -> tuple[int, ...]:
    """Row-major strides in elements (the first dimension's size is never needed)."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        size = shape[axis + 1]
        if isinstance(size, str):
            raise ValueError(f"a named dimension after the first in {tuple(shape)}")
        strides[axis] = strides[axis + 1] * size
    return tuple(strides)


def broadcast_strides(shape: Sequence[Dim], out_shape: Sequence[Dim]) -> tuple[int, ...]:
    """Strides that read `shape` broadcast (NumPy rules) to `out_shape`: 0 where it repeats."""
    padding = len(out_shape) - len(shape)
    if padding < 0:
        raise ValueError(f"cannot broadcast {tuple(shape)} to {tuple(out_shape)}")
    own = contiguous_strides(shape)
    strides = []
    for axis, out_size in enumerate(out_shape):
        if axis < padding:
            strides.append(0)
            continue
        size = shape[axis - padding]
        if size == out_size:
            strides.append(own[axis - padding])
        elif size == 1:
            strides.append(0)
        else:
            raise ValueError(f"cannot broadcast {tuple(shape)} to {tuple(out_shape)}")
    return tuple(strides)


@dataclass(frozen=True)
class StridedView:
    """A contiguous output walked as `sizes`, with each input read through its own strides.

    `sizes[0]` is None when it is (a multiple of) the batch; a kernel never needs it, since the
    outermost coordinate is whatever is left of the linear index.
    """

    sizes: tuple[int | None, ...]
    strides: tuple[tuple[int, ...], ...]
    """strides[i][d]: input i's stride along dim d."""

    @property
    def rank(self) -> int:
        return len(self.sizes)

    @property
    def contiguous(self) -> bool:
        """Every input is read at the output's own linear index."""
        return self.rank == 1 and all(s[0] == 1 for s in self.strides)


def coalesce(shape: Sequence[Dim], strides: Sequence[Sequence[int]]) -> StridedView:
    """The fewest dims that walk the same elements: drops size-1 dims and merges neighbours
    that every input walks alike (stride of the outer = stride of the inner * its size)."""
    kept = [axis for axis, size in enumerate(shape) if size != 1]
    if not kept:
        return StridedView((1,), tuple((1,) for _ in strides))
    sizes: list[int | None] = []
    merged: list[list[int]] = [[] for _ in strides]
    for axis in kept:
        size = shape[axis]
        known = None if isinstance(size, str) else size
        if sizes and known is not None and all(
                m[-1] == s[axis] * known for m, s in zip(merged, strides)):
            previous = sizes[-1]
            sizes[-1] = None if previous is None else previous * known
            for m, s in zip(merged, strides):
                m[-1] = s[axis]
            continue
        sizes.append(known)
        for m, s in zip(merged, strides):
            m.append(s[axis])
    return StridedView(tuple(sizes), tuple(tuple(m) for m in merged))
