"""The launch plan: what a CUDA module is and how to run it.

Code generation turns a graph into one CUDA source module and a `LaunchPlan`: the buffers the
network needs and, in order, every kernel launch with its grid, block, dynamic shared memory and
arguments. Every backend that runs generated kernels (the CPU simulator, PyCUDA, the artifact
directory's `plan.json`) reads this and nothing else.

The batch is a run-time value: buffer shapes may name it, and a grid dimension is
`ceil((per_batch * batch + constant) / divisor)`, so one plan serves every batch size.

Intermediates share one arena (`arena_bytes(batch)` bytes, allocated once per batch size) in
which each has an offset `per_batch * batch + fixed` (`Buffer.arena_offset`); code generation
plans it (`netc.codegen.emit`, the rule is in `docs/kernels.md`, "The arena").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from netc.ir import DTYPE_BYTES, Dim

if TYPE_CHECKING:
    from netc.memory import MemoryPlan

BufferRole = Literal["input", "output", "param", "intermediate"]


@dataclass(frozen=True)
class BatchBytes:
    """A byte count or offset that grows with the batch: `per_batch * batch + fixed`."""

    per_batch: int = 0
    fixed: int = 0

    def at(self, batch: int) -> int:
        return self.per_batch * batch + self.fixed


@dataclass(frozen=True)
class Buffer:
    name: str
    """A netc-made C identifier (`buf7`), never user text."""
    role: BufferRole
    dtype: str
    shape: tuple[Dim, ...]
    node: str
    """The IR node whose value (or one of whose outputs) it holds (an input name, a param
    name, an output's node)."""
    alias_of: str | None = None
    """A view (reshape, flatten, dropout) shares the storage of this buffer."""
    arena_offset: BatchBytes | None = None
    """Where an intermediate with storage of its own lives in the arena; None for every other
    buffer (inputs, outputs and params are allocated one by one, a view follows `alias_of`)."""
    live: tuple[int, int] | None = None
    """The first and last launch (indices into `LaunchPlan.launches`) that use an arena
    buffer, directly or through a view; an output's view keeps it live to the last launch."""
    in_place_of: str | None = None
    """The arena buffer whose storage this one takes over in place: an input of the launch
    that writes this one, read only at the element being written, dying at that launch."""

    @property
    def batched(self) -> bool:
        """Whether its size grows with the batch (a shape names the batch at most once)."""
        return any(isinstance(d, str) for d in self.shape)

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
    arena_size: BatchBytes = field(default=BatchBytes())
    """The arena's size: batch-scaled intermediates first, fixed-size ones after them."""

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def sizes(self, batch: int) -> dict[str, int]:
        return {self.batch_dim: batch} if self.batch_dim else {}

    @property
    def arena_buffers(self) -> tuple[Buffer, ...]:
        """The buffers placed in the arena: every intermediate with storage of its own."""
        return tuple(b for b in self.buffers if b.arena_offset is not None)

    def arena_bytes(self, batch: int) -> int:
        """Bytes of the one allocation that holds every intermediate at `batch`."""
        return self.arena_size.at(batch)

    def intermediate_bytes(self, batch: int) -> int:
        """The sum of every intermediate's size at `batch`: what allocating each on its own
        would take (before alignment), the figure the arena is measured against."""
        sizes = self.sizes(batch)
        return sum(b.nbytes(sizes) for b in self.buffers
                   if b.role == "intermediate" and b.alias_of is None)

    def launch_bytes(self, index: int, batch: int) -> int:
        """Static bytes launch `index` moves at `batch`: each distinct buffer it is passed,
        read or written, counted once at its full size (`bytes_moved` explains the model)."""
        sizes = self.sizes(batch)
        names = dict.fromkeys(arg.buffer for arg in self.launches[index].args
                              if arg.kind == "buffer" and arg.buffer is not None)
        return sum(self.buffer(name).nbytes(sizes) for name in names)

    def bytes_moved(self, batch: int) -> int:
        """Static global-memory traffic of the whole plan at `batch`: for every launch, the
        size of each distinct buffer it takes (inputs, params, intermediates and outputs),
        read or written once. It ignores caches and re-reads (a conv reads its input about
        kh*kw/stride^2 times, mostly from cache) and counts a concat's output in full for each
        of its per-input launches; it measures what fusion saves, not time."""
        return sum(self.launch_bytes(index, batch) for index in range(len(self.launches)))

    def memory_plan(self, batch: int) -> MemoryPlan:
        """The arena at `batch` as a `netc.memory.MemoryPlan` (placements in bytes
        at that batch, lifetimes in launches), for `verify_plan` and `describe()`."""
        from netc.memory import ALIGNMENT, MemoryPlan, Placement

        sizes = self.sizes(batch)
        placements = []
        for buffer in self.arena_buffers:
            assert buffer.arena_offset is not None and buffer.live is not None
            placements.append(Placement(buffer.name, buffer.arena_offset.at(batch),
                                        buffer.nbytes(sizes), buffer.live[0], buffer.live[1],
                                        buffer.in_place_of))
        return MemoryPlan(tuple(placements), self.arena_bytes(batch),
                          sum(p.size for p in placements), ALIGNMENT,
                          batch if self.batch_dim else None)

    def to_json(self) -> str:
        """The plan without its source, as written to `plan.json`."""
        data: dict[str, Any] = asdict(self)
        del data["source"]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> LaunchPlan:
        """The plan `to_json` wrote (parsed), with its module's `source`. Raises `ValueError`
        (or `KeyError`/`TypeError`) naming what is malformed; never a half-built plan."""
        def dim(value: Any) -> Dim:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"bad dimension {value!r}")
            return value

        def buffer(item: Mapping[str, Any]) -> Buffer:
            if item["role"] not in ("input", "output", "param", "intermediate"):
                raise ValueError(f"bad buffer role {item['role']!r}")
            if item["dtype"] not in DTYPE_BYTES:
                raise ValueError(f"bad buffer dtype {item['dtype']!r}")
            offset = item.get("arena_offset")
            live = item.get("live")
            return Buffer(str(item["name"]), item["role"], str(item["dtype"]),
                          tuple(dim(d) for d in item["shape"]), str(item["node"]),
                          item.get("alias_of"),
                          None if offset is None else BatchBytes(int(offset["per_batch"]),
                                                                 int(offset["fixed"])),
                          None if live is None else (int(live[0]), int(live[1])),
                          item.get("in_place_of"))

        def arg(item: Mapping[str, Any]) -> Arg:
            if item["kind"] not in ("buffer", "batch", "int", "float"):
                raise ValueError(f"bad argument kind {item['kind']!r}")
            return Arg(item["kind"], item.get("buffer"), item.get("value"))

        def launch(item: Mapping[str, Any]) -> Launch:
            x, y, z = (GridDim(int(g["per_batch"]), int(g["constant"]), int(g["divisor"]))
                       for g in item["grid"])
            bx, by, bz = (int(b) for b in item["block"])
            return Launch(str(item["kernel"]), (x, y, z), (bx, by, bz),
                          int(item["shared_bytes"]), tuple(arg(a) for a in item["args"]),
                          tuple(str(n) for n in item["nodes"]), str(item.get("source", "")))

        buffers = tuple(buffer(b) for b in data["buffers"])
        plan = cls(network=str(data["network"]), module=str(data["module"]), source=source,
                   batch_dim=data["batch_dim"], buffers=buffers,
                   launches=tuple(launch(item) for item in data["launches"]),
                   outputs=tuple((str(name), str(buf)) for name, buf in data["outputs"]),
                   kernels=tuple(str(k) for k in data["kernels"]),
                   arena_size=BatchBytes(int(data["arena_size"]["per_batch"]),
                                         int(data["arena_size"]["fixed"])))
        plan.check()
        return plan

    def check(self) -> None:
        """Every name the plan uses is defined: buffers, aliases, kernels, outputs."""
        names = {b.name for b in self.buffers}
        if len(names) != len(self.buffers):
            raise ValueError("two buffers share a name")
        for b in self.buffers:
            for other in (b.alias_of, b.in_place_of):
                if other is not None and other not in names:
                    raise ValueError(f"buffer {b.name} refers to unknown buffer {other}")
        for index, launch in enumerate(self.launches):
            if launch.kernel not in self.kernels:
                raise ValueError(f"launch {index} runs unknown kernel {launch.kernel}")
            for a in launch.args:
                if a.kind == "buffer" and a.buffer not in names:
                    raise ValueError(f"launch {index} takes unknown buffer {a.buffer}")
        for name, buf in self.outputs:
            if buf not in names:
                raise ValueError(f"output {name} is unknown buffer {buf}")
