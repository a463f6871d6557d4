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

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from netc.files import write_atomic
from netc.ir import Graph, print_graph
from netc.ops import verify
from netc.passes.weight_transforms import WeightTransform

Mode = Literal["inference", "training"]
MODES: tuple[Mode, ...] = ("inference", "training")


class PipelineError(Exception):
    """A pass list that breaks a declared requirement, or a pass that broke the IR: a bug."""


@dataclass
class PassContext:
    """What passes share besides the graph; one context lives through one pipeline run."""

    batch: int = 1
    """The batch size (every named dimension) at which sizes are computed."""
    mode: Mode = "inference"
    """What the graph is compiled for: a pass that is only valid at inference (folding
    batchnorm's running statistics, dropping dropout) declares so and does not run in
    training (`Pass.modes`)."""
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
    modes: tuple[Mode, ...] = MODES
    """The modes in which the pass keeps the graph's meaning, and so runs."""


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


def check_requirements(passes: Sequence[Pass], absent: Sequence[str] = ()) -> None:
    """Raise `PipelineError` unless every pass's requirements run earlier in `passes`;
    `absent` passes do not apply here (another mode), so needing them is no failure."""
    seen: list[str] = []
    for index, item in enumerate(passes):
        missing = [name for name in item.requires if name not in seen and name not in absent]
        if missing:
            raise PipelineError(f"pass {index + 1} `{item.name}` requires "
                                f"{', '.join(f'`{m}`' for m in missing)} to run before it")
        seen.append(item.name)


DUMP_MANIFEST = ".netc-dump.json"
"""Lists the files netc wrote into a `--dump-ir` directory, with their SHA-256: the only files
a later dump may replace or remove."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dump_manifest(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / DUMP_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def prepare_dump_dir(directory: Path) -> None:
    """Make `directory` ready for a fresh dump: remove the `NN_*.txt` files an earlier dump
    wrote (a shorter pipeline must not leave them behind), and refuse (E0433) when it holds
    one netc did not write as it is, before anything is touched."""
    from netc.diagnostics import CompileError, Diagnostic

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompileError([Diagnostic("E0433", f"cannot create the --dump-ir directory "
                                       f"`{directory}`: {exc.strerror or exc}")]) from None
    if not directory.is_dir():
        raise CompileError([Diagnostic("E0433", f"--dump-ir `{directory}` is not a directory")])
    written = _dump_manifest(directory)
    stale = sorted(directory.glob("[0-9][0-9]_*.txt"))
    foreign = [path.name for path in stale if written.get(path.name) != _sha256(
        path.read_text(encoding="utf-8", errors="replace"))]
    if foreign:
        raise CompileError([Diagnostic(
            "E0433", f"--dump-ir `{directory}` holds {', '.join(foreign[:5])}, which netc did "
            "not write (or which changed since); refusing to replace it",
            help="give a new or empty directory for --dump-ir")])
    for path in stale:
        path.unlink()
    _save_dump_manifest(directory, {})


def _save_dump_manifest(directory: Path, written: dict[str, str]) -> None:
    write_atomic(directory / DUMP_MANIFEST, json.dumps(written, indent=1, sort_keys=True))


def write_dump(directory: Path, name: str, text: str) -> None:
    """Write one `--dump-ir` file (`NN_name.txt`) and record it as netc's."""
    write_atomic(directory / name, text)
    written = _dump_manifest(directory)
    written[name] = _sha256(text)
    _save_dump_manifest(directory, written)


def _dump(directory: Path, index: int, name: str, graph: Graph, notes: Sequence[str]) -> None:
    text = print_graph(graph) + "\n"
    if notes:
        text += "\n" + "\n".join(f"# {line}" if line else "#" for line in notes) + "\n"
    write_dump(directory, f"{index:02d}_{name}.txt", text)


def run_passes(graph: Graph, passes: Sequence[Pass], context: PassContext, *,
               dump_dir: str | Path | None = None,
               verify_each: bool = False) -> tuple[Graph, list[PassRecord]]:
    """Run `passes` in order; returns the final graph and what each pass did."""
    check_requirements(passes)
    directory = Path(dump_dir) if dump_dir is not None else None
    if directory is not None:
        prepare_dump_dir(directory)
        _dump(directory, 0, "input", graph, ())
    if verify_each:
        verify(graph)
    records: list[PassRecord] = []
    skipped = [item.name for item in passes if context.mode not in item.modes]
    passes = [item for item in passes if context.mode in item.modes]
    check_requirements(passes, skipped)
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
