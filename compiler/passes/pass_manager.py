"""The pass manager: what a pass is, and running a list of them.

A `Pass` has a name (its module's name), the names of the passes that must have run before it
(`requires`, checked before anything runs) and `run(graph, context) -> graph`. A pass that
changes nothing returns the same graph object. What a pass did is reported through
`context.report(...)` ("folded 20 batchnorms into conv2d"); weight rewrites go to
`context.transforms`, and every computation a pass removes or moves is recorded in
`context.lineage` so that later tools (`netc explain`) can say which kernel computes each source
layer.

`run_passes` optionally runs the IR verifier after every pass (tests always do) and writes the
IR after every pass to a directory: `00_input.txt`, `01_remove_dropout.txt`, ...
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netc.ir import Graph, print_graph, verify
from netc.passes.weight_transforms import WeightTransform


class PipelineError(Exception):
    """A pass list that breaks a declared requirement, or a pass that broke the IR: a bug."""


@dataclass
class PassContext:
    """What passes share besides the graph; one context lives through one pipeline run."""

    batch: int = 1
    """The batch size (every named dimension) at which sizes are computed."""
    transforms: list[WeightTransform] = field(default_factory=list)
    lineage: dict[str, str | None] = field(default_factory=dict)
    """A removed node id -> the id of the node that now computes its value (None: the value
    is no longer computed at all, e.g. dead code). Fused groups keep their members' ids in
    their bodies, so they need no entry."""
    messages: list[str] = field(default_factory=list)
    """What the running pass reported; the manager collects and clears it after each pass."""
    dump_notes: list[str] = field(default_factory=list)
    """Extra lines for the running pass's `--dump-ir` file."""

    def report(self, message: str) -> None:
        self.messages.append(message)

    def moved(self, removed: str, into: str | None) -> None:
        """`removed` is gone from the graph; `into` (or nothing) now computes its value."""
        self.lineage[removed] = into


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph, PassContext], Graph]
    requires: tuple[str, ...] = ()
    """Passes that must have run before this one (in the same list)."""
    summary: str = ""


@dataclass(frozen=True)
class PassRecord:
    name: str
    changed: bool
    message: str
    seconds: float
    compute_nodes: int
    """Compute nodes after the pass (a fused group counts once)."""

    def __str__(self) -> str:
        return f"{self.name}: {self.message} ({self.seconds * 1000:.1f} ms)"


def check_requirements(passes: Sequence[Pass]) -> None:
    """Raise `PipelineError` unless every pass's requirements run earlier in `passes`."""
    seen: list[str] = []
    for index, item in enumerate(passes):
        missing = [name for name in item.requires if name not in seen]
        if missing:
            raise PipelineError(f"pass {index + 1} `{item.name}` requires "
                                f"{', '.join(f'`{m}`' for m in missing)} to run before it")
        seen.append(item.name)


def _dump(directory: Path, index: int, name: str, graph: Graph, notes: Sequence[str]) -> None:
    text = print_graph(graph) + "\n"
    if notes:
        text += "\n" + "\n".join(f"# {line}" if line else "#" for line in notes) + "\n"
    (directory / f"{index:02d}_{name}.txt").write_text(text)


def run_passes(graph: Graph, passes: Sequence[Pass], context: PassContext, *,
               dump_dir: str | Path | None = None,
               verify_each: bool = False) -> tuple[Graph, list[PassRecord]]:
    """Run `passes` in order; returns the final graph and what each pass did."""
    check_requirements(passes)
    directory = Path(dump_dir) if dump_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("[0-9][0-9]_*.txt"):
            stale.unlink()  # a shorter pipeline must not leave an earlier run's files behind
        _dump(directory, 0, "input", graph, ())
    if verify_each:
        verify(graph)
    records: list[PassRecord] = []
    for index, item in enumerate(passes, start=1):
        context.messages.clear()
        context.dump_notes.clear()
        started = time.perf_counter()
        result = item.run(graph, context)
        seconds = time.perf_counter() - started
        if verify_each:
            try:
                verify(result)
            except Exception as exc:
                raise PipelineError(f"the IR is broken after pass `{item.name}`: {exc}") from exc
        changed = result is not graph
        if verify_each and changed and result == graph:
            raise PipelineError(f"pass `{item.name}` changed nothing but returned a new graph; "
                                "a pass that changes nothing returns the same object")
        if changed and not context.messages:
            context.report("changed the graph")
        message = "; ".join(context.messages) or "no change"
        records.append(PassRecord(item.name, changed, message, seconds,
                                  len(result.compute_nodes)))
        if directory is not None:
            _dump(directory, index, item.name, result, context.dump_notes)
        graph = result
    context.messages.clear()
    return graph, records
