"""The arena: one allocation for every intermediate of a launch plan, planned over its launches.

Every intermediate with storage of its own gets an offset in the arena (a view follows its
base; inputs, outputs and parameters are allocated one by one). Liveness is launch order:

- a buffer lives from the first launch that takes it (the one writing it) to the last launch
  that takes it, directly or through a view;
- a buffer that an output is a view of lives to the last launch, so the output survives;
- a launch may write its output over an input that dies there when its kernel reads that input
  only at the element it writes (`KernelLaunch.in_place`: the inputs of an elementwise kernel,
  and the residuals a fused epilogue reads); the input must be an arena buffer that no
  argument of the launch reads any other way.

The planner is `netc.memory.plan_arena` (best fit by decreasing size, 256-byte alignment);
`verify_plan` checks each result before it goes into the plan. This is the only memory plan:
what `netc explain`, `--dump-ir` (`NN_memory_plan.txt`) and the executor show and use.

The batch is a run-time value, and a shape names it at most once, as its first dim, so every
size is `per_item * batch` or fixed. Batched intermediates are planned once, in bytes per batch
item; at batch B every one of their offsets and sizes is multiplied by B, which keeps disjoint
byte ranges disjoint and 256-byte-aligned offsets aligned. Fixed-size intermediates (a constant
filled into memory, any network without a batch dim) are planned on their own and placed after
the batched region:

    batched:  offset(B) = offset_per_item * B
    fixed:    offset(B) = region_per_item * B + offset
    arena(B)  = region_per_item * B + fixed_region

The price of planning once: each per-item size is rounded up to 256 bytes, so a batched buffer
of fewer than 256 bytes an item (a [N, 10] f32 logits buffer) takes 256 * B bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netc.codegen.kernels import KernelLaunch
from netc.ir import DTYPE_BYTES
from netc.memory import ALIGNMENT, BufferLife, MemoryPlan, plan_arena, verify_plan
from netc.plan import BatchBytes, Buffer


@dataclass(frozen=True)
class Arena:
    buffers: tuple[Buffer, ...]
    """The plan's buffers, arena buffers with `arena_offset`, `live` and `in_place_of` set."""
    size: BatchBytes
    batched: MemoryPlan
    """The batched region at one batch item (sizes and offsets in bytes per item)."""
    fixed: MemoryPlan
    """The fixed-size region (offsets from its own start)."""


def lifetimes(buffers: Sequence[Buffer], launches: Sequence[KernelLaunch],
              outputs: Iterable[str]) -> dict[str, tuple[int, int]]:
    """First and last launch of every arena buffer (see the module docstring)."""
    root = {b.name: b.alias_of or b.name for b in buffers}
    arena = [b.name for b in buffers if b.role == "intermediate" and b.alias_of is None]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, launch in enumerate(launches):
        for arg in launch.args:
            if arg.kind == "buffer" and arg.buffer is not None:
                first.setdefault(root[arg.buffer], index)
                last[root[arg.buffer]] = index
    end = max(len(launches) - 1, 0)
    for output in outputs:
        last[root[output]] = end
    return {name: (first.get(name, 0), last.get(name, first.get(name, 0))) for name in arena}


def _in_place_candidates(buffers: Sequence[Buffer], launches: Sequence[KernelLaunch],
                         lives: dict[str, tuple[int, int]]) -> dict[str, tuple[str, ...]]:
    """For each arena buffer, the arena buffers its writing launch lets it take over."""
    root = {b.name: b.alias_of or b.name for b in buffers}
    size = {b.name: DTYPE_BYTES[b.dtype] for b in buffers}
    candidates: dict[str, list[str]] = {}
    for launch in launches:
        offered: dict[str, set[str]] = {}
        for output, read in launch.in_place:
            offered.setdefault(output, set()).add(read)
        for output, reads in offered.items():
            if output not in lives or root[output] != output:
                continue
            for read in sorted(reads):
                base = root[read]
                # Every argument that reaches the input's storage must be one read in place
                # (the same tensor passed again through a view is read at other elements).
                others = {arg.buffer for arg in launch.args if arg.kind == "buffer"
                          and arg.buffer is not None and root[arg.buffer] == base}
                # Element i of each at the same offset only if their elements are one size
                # (a bool written over an i64 would clobber elements other threads still read).
                if base in lives and base != output and others <= reads and \
                        size[base] == size[output]:
                    candidates.setdefault(output, [])
                    if base not in candidates[output]:
                        candidates[output].append(base)
    return {name: tuple(found) for name, found in candidates.items()}


def _region(buffers: Sequence[Buffer], lives: dict[str, tuple[int, int]],
            candidates: dict[str, tuple[str, ...]]) -> MemoryPlan:
    """`buffers` planned at one batch item, in place only within the region."""
    names = {b.name for b in buffers}
    records = [BufferLife(b.name, b.nbytes({d: 1 for d in b.shape if isinstance(d, str)}),
                          *lives[b.name],
                          tuple(c for c in candidates.get(b.name, ()) if c in names))
               for b in buffers]
    plan = plan_arena(records, ALIGNMENT)
    verify_plan(plan, records)
    return plan


def plan_launch_arena(buffers: Sequence[Buffer], launches: Sequence[KernelLaunch],
                      outputs: Iterable[str]) -> Arena:
    """Place every intermediate of a plan in one arena. `outputs`: the output buffers."""
    lives = lifetimes(buffers, launches, outputs)
    candidates = _in_place_candidates(buffers, launches, lives)
    arena = [b for b in buffers if b.name in lives]
    batched = _region([b for b in arena if b.batched], lives, candidates)
    fixed = _region([b for b in arena if not b.batched], lives, candidates)
    offsets = {p.name: (BatchBytes(p.offset, 0), p.shares) for p in batched.placements}
    offsets.update({p.name: (BatchBytes(batched.arena_bytes, p.offset), p.shares)
                    for p in fixed.placements})
    placed = tuple(
        dataclasses.replace(b, arena_offset=offsets[b.name][0], live=lives[b.name],
                            in_place_of=offsets[b.name][1]) if b.name in offsets else b
        for b in buffers)
    return Arena(placed, BatchBytes(batched.arena_bytes, fixed.arena_bytes), batched, fixed)
