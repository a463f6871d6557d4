"""The launch plan: what a CUDA module is and how to run it.

Code generation turns a graph into one CUDA source module and a `LaunchPlan`: the buffers the
network needs and, in order, every kernel launch with its grid, block, dynamic shared memory and
arguments. Every backend that runs generated kernels (the CPU simulator, PyCUDA, the artifact
directory's `plan.json`) reads this and nothing else.

The batch is a run-time value: buffer shapes may name it, and a grid dimension is
`ceil((per_batch * batch + constant) / divisor)`, so one plan serves every batch size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from netc.ir import DTYPE_BYTES, Dim

BufferRole = Literal["input", "output", "param", "intermediate"]


@dataclass(frozen=True)
class Buffer:
    name: str
    """A netc-made C identifier (`buf7`), never user text."""
    role: BufferRole
    dtype: str
    shape: tuple[Dim, ...]
    node: str
    """The IR node whose value it holds (an input name, a param name, an output's node)."""
    alias_of: str | None = None
    """A view (reshape, flatten, dropout) shares the storage of this buffer."""

    def numel(self, sizes: Mapping[str, int]) -> int:
        return math.prod(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def nbytes(self, sizes: Mapping[str, int]) -> int:
        return self.numel(sizes) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class GridDim:
    per_batch: int = 0
    constant: int = 1
    divisor: int = 1

    def size(self, batch: int) -> int:
        return max(1, -(-(self.per_batch * batch + self.constant) // self.divisor))


@dataclass(frozen=True)
class Arg:
    kind: Literal["buffer", "batch", "int", "float"]
    """buffer: a pointer to `buffer`; batch: the run-time batch size as a 64-bit int;
    int/float: a constant `value` (int64 / float32)."""
    buffer: str | None = None
    value: float | int | None = None


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[GridDim, GridDim, GridDim]
    block: tuple[int, int, int]
    shared_bytes: int
    args: tuple[Arg, ...]
    nodes: tuple[str, ...]
    """The IR nodes this launch computes (one now; several once passes fuse)."""
    source: str = ""
    """Where in the `.net` source the computed layers come from (`lenet.net:7`)."""

    def grid_size(self, batch: int) -> tuple[int, int, int]:
        x, y, z = (dim.size(batch) for dim in self.grid)
        return (x, y, z)


@dataclass(frozen=True)
class LaunchPlan:
    network: str
    module: str
    """The module's base name, for file names (`lenet5.cu`, `lenet5.sm_90.cubin`)."""
    source: str
    """The CUDA C++ source of the whole module."""
    batch_dim: str | None
    buffers: tuple[Buffer, ...]
    launches: tuple[Launch, ...]
    outputs: tuple[tuple[str, str], ...]
    """(output name, buffer name)."""
    kernels: tuple[str, ...] = field(default=())
    """Every kernel function name defined in `source`, each once."""

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def sizes(self, batch: int) -> dict[str, int]:
        return {self.batch_dim: batch} if self.batch_dim else {}

    def to_json(self) -> str:
        """The plan without its source, as written to `plan.json`."""
        data: dict[str, Any] = asdict(self)
        del data["source"]
        return json.dumps(data, indent=2)
