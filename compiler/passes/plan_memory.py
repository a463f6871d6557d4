"""plan_memory: place every intermediate buffer in one arena, reusing memory by lifetime.

Kernels run in graph order: every compute node except a view (flatten, reshape, dropout) is one
kernel, a fused node included. A view's buffer aliases its input's, so a value stays live until
the last kernel that reads it directly or through views. Network inputs, parameters and outputs
(and values that an output is a view of) have buffers of their own; everything else is an
intermediate and lives in the arena.

The planner (`plan_arena`) works on any list of `BufferLife`s (size in bytes, first and last
kernel index, in-place candidates), so code generation can plan its launch list the same way:

1. In place: a buffer may take over the storage of an input of the kernel that writes it when
   that input dies at that kernel and the kernel reads it elementwise (element i only to write
   element i): a pointwise op, or a fused group where only pointwise epilogue ops read it.
2. Placement: storages by decreasing size (ties: earlier first), each at the best-fitting gap
   (the smallest one it fits) among the storages whose lifetimes overlap its own, else after
   them; offsets and sizes are rounded up to 256 bytes.

Sizes depend on the batch; the plan is made at one batch size (default 1, stated in the
report). A larger batch scales every batch-dependent buffer alike, so the same plan scaled is
valid, but the arena is recomputed for each batch the runtime uses.

As a pass: Fires on every graph (it does not change the graph; the plan goes to
`context.memory_plan` and into the `--dump-ir` file). Needs `fuse_elementwise`, so that it plans the final kernels.
Guarantees after: no two buffers live at the same kernel overlap in the arena, except an
in-place pair at the one kernel where the input dies and the output is born.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from netc.ir import DTYPE_BYTES, Graph, Node
from netc.ops import REGISTRY
from netc.ops.fused import body_of, input_position
from netc.passes.fusion import is_pointwise
from netc.passes.pass_manager import Pass, PassContext

ALIGNMENT = 256


@dataclass(frozen=True)
class BufferLife:
    name: str
    size: int
    """Bytes."""
    start: int
    """Index of the kernel that writes it."""
    end: int
    """Index of the last kernel that reads it (>= start)."""
    inplace: tuple[str, ...] = ()
    """Buffers it may take over: inputs of its kernel that the kernel reads elementwise."""


@dataclass(frozen=True)
class Placement:
    name: str
    offset: int
    size: int
    start: int
    end: int
    shares: str | None = None
    """The buffer whose storage it took over in place."""


@dataclass(frozen=True)
class MemoryPlan:
    placements: tuple[Placement, ...]
    arena_bytes: int
    total_bytes: int
    """The sum of every intermediate's size: what separate allocations would need."""
    alignment: int = ALIGNMENT
    batch: int | None = None

    def placement(self, name: str) -> Placement:
        return next(p for p in self.placements if p.name == name)

    @property
    def inplace_count(self) -> int:
        return sum(1 for p in self.placements if p.shares is not None)

    def summary(self) -> str:
        where = f"at batch {self.batch}" if self.batch is not None else "(no batch dimension)"
        saved = (f", {100 * (1 - self.arena_bytes / self.total_bytes):.0f}% less"
                 if self.total_bytes else "")
        return (f"arena {format_bytes(self.arena_bytes)} for {len(self.placements)} "
                f"intermediates totalling {format_bytes(self.total_bytes)} {where}{saved}; "
                f"{self.inplace_count} in place")

    def describe(self) -> list[str]:
        """The plan, one buffer a line, for `--dump-ir` and `netc explain`."""
        lines = [f"memory plan: {self.summary()} ({self.alignment}-byte alignment)"]
        width = max((len(p.name) for p in self.placements), default=0)
        for p in sorted(self.placements, key=lambda p: (p.start, p.name)):
            shared = f"  in place of {p.shares}" if p.shares else ""
            lines.append(f"  {p.name.ljust(width)}  offset {p.offset:>10}  size {p.size:>10}  "
                         f"kernels {p.start}..{p.end}{shared}")
        return lines


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def _aligned(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


@dataclass
class _Storage:
    members: list[BufferLife]
    start: int
    end: int
    size: int
    offset: int = field(default=-1)


def plan_arena(buffers: Sequence[BufferLife], alignment: int = ALIGNMENT,
               batch: int | None = None) -> MemoryPlan:
    """Offsets in one arena for `buffers` (see the module docstring for the rules)."""
    names = [b.name for b in buffers]
    if len(set(names)) != len(names):
        raise ValueError("buffer names must be unique")
    for buffer in buffers:
        if buffer.size < 0 or buffer.start > buffer.end:
            raise ValueError(f"buffer {buffer.name}: size {buffer.size}, kernels "
                             f"{buffer.start}..{buffer.end}")
    storage_of: dict[str, _Storage] = {}
    storages: list[_Storage] = []
    shares: dict[str, str] = {}
    for buffer in sorted(buffers, key=lambda b: (b.start, b.name)):
        storage = None
        for candidate in buffer.inplace:
            found = storage_of.get(candidate)
            # The candidate is the storage's latest tenant, born before this buffer and dying
            # at the kernel that writes it (nothing else in the storage lives on).
            if (found is not None and found.members[-1].name == candidate
                    and found.members[-1].start < buffer.start == found.members[-1].end
                    and found.end == buffer.start and found.size >= buffer.size):
                storage = found
                shares[buffer.name] = candidate
                break
        if storage is None:
            storage = _Storage([], buffer.start, buffer.end, buffer.size)
            storages.append(storage)
        storage.members.append(buffer)
        storage.end = max(storage.end, buffer.end)
        storage_of[buffer.name] = storage

    placed: list[_Storage] = []
    for storage in sorted(storages, key=lambda s: (-s.size, s.start, s.members[0].name)):
        padded = _aligned(storage.size, alignment)
        busy = sorted((other.offset, other.offset + _aligned(other.size, alignment))
                      for other in placed
                      if other.start <= storage.end and storage.start <= other.end)
        best: tuple[int, int] | None = None  # (gap size, offset)
        cursor = 0
        for low, high in busy:
            gap = low - cursor
            if gap >= padded and (best is None or gap < best[0]):
                best = (gap, cursor)
            cursor = max(cursor, high)
        storage.offset = best[1] if best is not None else cursor
        placed.append(storage)

    placements = tuple(
        Placement(b.name, storage_of[b.name].offset, b.size, b.start, b.end,
                  shares.get(b.name))
        for b in buffers)
    arena = max((s.offset + _aligned(s.size, alignment) for s in storages), default=0)
    return MemoryPlan(placements, arena, sum(b.size for b in buffers), alignment, batch)


def verify_plan(plan: MemoryPlan, buffers: Sequence[BufferLife] | None = None) -> None:
    """Raise ValueError unless no two buffers live at one kernel share arena bytes, except a
    buffer and the one it took over in place (which dies at the kernel the other is born at);
    with `buffers`, also check the plan against them (sizes, lifetimes, allowed in-place)."""
    by_name = {p.name: p for p in plan.placements}
    if buffers is not None:
        wanted = {b.name: b for b in buffers}
        if set(wanted) != set(by_name):
            raise ValueError("the plan and the buffers name different buffers")
        for name, buffer in wanted.items():
            placed = by_name[name]
            if (placed.size, placed.start, placed.end) != (buffer.size, buffer.start, buffer.end):
                raise ValueError(f"{name}: planned as size {placed.size}, kernels "
                                 f"{placed.start}..{placed.end}, but it is {buffer}")
            if placed.shares is not None and placed.shares not in buffer.inplace:
                raise ValueError(f"{name} took over {placed.shares} in place, which it may not")
    for placed in plan.placements:
        if placed.offset % plan.alignment:
            raise ValueError(f"{placed.name} at offset {placed.offset} is not aligned")
        if placed.offset + placed.size > plan.arena_bytes:
            raise ValueError(f"{placed.name} ends past the arena")
        if placed.shares is not None:
            earlier = by_name[placed.shares]
            if (earlier.end != placed.start or earlier.start >= placed.start
                    or earlier.offset != placed.offset):
                raise ValueError(f"{placed.name} took over {earlier.name} in place, but "
                                 f"{earlier.name} lives over kernels {earlier.start}.."
                                 f"{earlier.end} and {placed.name} is born at {placed.start}")
    ordered = sorted(plan.placements, key=lambda p: p.offset)
    for index, first in enumerate(ordered):
        for second in ordered[index + 1:]:
            if second.offset >= first.offset + first.size:
                break
            in_place = second.shares == first.name or first.shares == second.name
            if (first.start <= second.end and second.start <= first.end and
                    not (in_place and (first.end == second.start or second.end == first.start))):
                raise ValueError(
                    f"{first.name} (bytes {first.offset}..{first.offset + first.size}, kernels "
                    f"{first.start}..{first.end}) and {second.name} (bytes {second.offset}.."
                    f"{second.offset + second.size}, kernels {second.start}..{second.end}) "
                    "overlap while both are live")


# The plan over the graph IR ----------------------------------------------------------------


def is_view(node: Node) -> bool:
    opdef = REGISTRY.get(node.op)
    return opdef is not None and opdef.kind == "view"


def _elementwise_operands(node: Node) -> set[int]:
    """Positions of `node`'s inputs that its kernel reads elementwise (see the docstring)."""
    if is_pointwise(node):
        return set(range(len(node.inputs)))
    if node.op != "fused":
        return set()
    body = body_of(node.attrs)
    anchor_index = next(i for i, b in enumerate(body) if b.id == node.attrs["anchor"])
    elementwise_kind = node.attrs["kind"] == "elementwise"
    readers: dict[int, list[bool]] = {}
    for index, inner in enumerate(body):
        for ref in inner.inputs:
            position = input_position(ref)
            if position is not None:
                ok = is_pointwise(inner) and (elementwise_kind or index > anchor_index)
                readers.setdefault(position, []).append(ok)
    return {position for position, oks in readers.items() if all(oks)}


def graph_buffers(graph: Graph, batch: int = 1) -> list[BufferLife]:
    """The intermediates of `graph` with their lifetimes over its kernels, at `batch`."""
    sizes = dict.fromkeys(graph.batch_dims(), batch)
    base: dict[str, str] = {}
    for node in graph.nodes:
        base[node.id] = base[node.inputs[0]] if is_view(node) else node.id
    kernels = [n for n in graph.compute_nodes if not is_view(n)]
    index = {n.id: i for i, n in enumerate(kernels)}
    pinned = {base[value] for _, value in graph.outputs}
    last: dict[str, int] = {}
    for kernel in kernels:
        for used in kernel.inputs:
            last[base[used]] = max(last.get(base[used], -1), index[kernel.id])
    buffers: list[BufferLife] = []
    for kernel in kernels:
        if kernel.id in pinned:
            continue
        start = index[kernel.id]
        candidates = []
        for position in sorted(_elementwise_operands(kernel)):
            used = kernel.inputs[position]
            if (graph[used].type == kernel.type and base[used] in index
                    and base[used] not in pinned and base[used] not in candidates):
                candidates.append(base[used])
        size = kernel.type.numel(sizes) * DTYPE_BYTES[kernel.type.dtype]
        buffers.append(BufferLife(kernel.id, size, start, max(start, last.get(kernel.id, start)),
                                  tuple(candidates)))
    return buffers


def plan_graph_memory(graph: Graph, batch: int = 1) -> MemoryPlan:
    """The arena plan for `graph`'s intermediates at `batch` (None in the plan if no batch)."""
    return plan_arena(graph_buffers(graph, batch), ALIGNMENT,
                      batch if graph.batch_dims() else None)


def plan_memory(graph: Graph, context: PassContext) -> Graph:
    plan = plan_graph_memory(graph, context.batch)
    context.memory_plan = plan
    context.report(plan.summary())
    context.dump_notes.extend(plan.describe())
    return graph


PLAN_MEMORY = Pass("plan_memory", plan_memory, requires=("fuse_elementwise",),
                   summary="place intermediates in one arena by lifetime")
