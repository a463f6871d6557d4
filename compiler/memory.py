"""The arena planner: one allocation for many buffers, reusing memory by lifetime.

It works on any list of `BufferLife`s (size in bytes, first and last kernel index, in-place
candidates); code generation plans the launch plan's intermediates with it
(`netc.codegen.arena`), and that plan is the one that runs and the one every report shows:

1. In place: a buffer may take over the storage of a candidate (an input of the kernel that
   writes it, which that kernel reads only at the element it writes) when the candidate dies
   at that kernel, was born earlier, and is at least as large.
2. Placement: storages by decreasing size (ties: earlier first), each at the best-fitting gap
   (the smallest one it fits) among the storages whose lifetimes overlap its own, else after
   them; offsets and sizes are rounded up to 256 bytes.

`verify_plan` checks a plan: no two buffers live at the same kernel overlap in the arena,
except an in-place pair at the one kernel where the input dies and the output is born.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
    sizes: tuple[tuple[str, int], ...] = ()
    """The named dimensions' sizes it is planned at (none: the network has none)."""

    def placement(self, name: str) -> Placement:
        return next(p for p in self.placements if p.name == name)

    @property
    def inplace_count(self) -> int:
        return sum(1 for p in self.placements if p.shares is not None)

    def summary(self) -> str:
        where = (f"at {', '.join(f'{d}={n}' for d, n in self.sizes)}" if self.sizes
                 else "(no named dimension)")
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
               sizes: tuple[tuple[str, int], ...] = ()) -> MemoryPlan:
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
    return MemoryPlan(placements, arena, sum(b.size for b in buffers), alignment, sizes)


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
