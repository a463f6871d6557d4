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
`verify_plan` checks each result. Code generation records here what does not depend on the sizes
(each arena buffer's lifetime and in-place candidates, in the launch plan's `Buffer.live` and
`Buffer.in_place`); the placement depends on the named dimensions' sizes (a [N, T, 768] buffer
against a [N, 12, T, T] one), so it is planned for each set of sizes a plan runs at
(`LaunchPlan.memory_plan`), once per set by a runner. That plan is the only memory plan: what
`netc explain`, `--dump-ir` (`NN_memory_plan.txt`) and the executor show and use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from netc.codegen.kernels import KernelLaunch
from netc.ir import DTYPE_BYTES
from netc.plan import Buffer


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


def plan_launch_arena(buffers: Sequence[Buffer], launches: Sequence[KernelLaunch],
                      outputs: Iterable[str]) -> tuple[Buffer, ...]:
    """The plan's buffers with every arena buffer's lifetime and in-place candidates set.
    `outputs`: the output buffers."""
    lives = lifetimes(buffers, launches, outputs)
    candidates = _in_place_candidates(buffers, launches, lives)
    return tuple(dataclasses.replace(b, live=lives[b.name], in_place=candidates.get(b.name, ()))
                 if b.name in lives else b for b in buffers)
