"""Sizes and strides of tensors as the kernels see them.

Every tensor netc allocates is contiguous (row-major). A named dimension may stand anywhere in
its shape, so a size or a stride that covers one is a `Size` (a polynomial in the named
dimensions, `netc.plan`), passed to the kernel as a run-time argument; the rest are ints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from netc.ir import Dim
from netc.plan import SizeLike, size_of


def contiguous_strides(shape: Sequence[Dim]) -> tuple[SizeLike, ...]:
    """Row-major strides in elements (the first dimension's size is never needed)."""
    strides: list[SizeLike] = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * size_of((shape[axis + 1],))
    return tuple(strides)


def broadcast_strides(shape: Sequence[Dim],
                      out_shape: Sequence[Dim]) -> tuple[SizeLike, ...]:
    """Strides that read `shape` broadcast (NumPy rules) to `out_shape`: 0 where it repeats."""
    padding = len(out_shape) - len(shape)
    if padding < 0:
        raise ValueError(f"cannot broadcast {tuple(shape)} to {tuple(out_shape)}")
    own = contiguous_strides(shape)
    strides: list[SizeLike] = []
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

    A kernel never needs `sizes[0]`: the outermost coordinate is whatever is left of the linear
    index.
    """

    sizes: tuple[SizeLike, ...]
    strides: tuple[tuple[SizeLike, ...], ...]
    """strides[i][d]: input i's stride along dim d."""

    @property
    def rank(self) -> int:
        return len(self.sizes)

    @property
    def contiguous(self) -> bool:
        """Every input is read at the output's own linear index."""
        return self.rank == 1 and all(s[0] == 1 for s in self.strides)


def coalesce(shape: Sequence[Dim], strides: Sequence[Sequence[SizeLike]]) -> StridedView:
    """The fewest dims that walk the same elements: drops size-1 dims and merges neighbours
    that every input walks alike (stride of the outer = stride of the inner * its size)."""
    kept = [axis for axis, size in enumerate(shape) if size != 1]
    if not kept:
        return StridedView((1,), tuple((1,) for _ in strides))
    sizes: list[SizeLike] = []
    merged: list[list[SizeLike]] = [[] for _ in strides]
    for axis in kept:
        size = size_of((shape[axis],))
        if sizes and all(m[-1] == s[axis] * size for m, s in zip(merged, strides)):
            sizes[-1] = sizes[-1] * size
            for m, s in zip(merged, strides):
                m[-1] = s[axis]
            continue
        sizes.append(size)
        for m, s in zip(merged, strides):
            m.append(s[axis])
    return StridedView(tuple(sizes), tuple(tuple(m) for m in merged))
