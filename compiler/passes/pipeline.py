"""The optimisation pipeline: one ordered list of passes, each with the lowest level it runs at.

-O0 is the unfused plan: the graph as the front end made it, every op its own kernel. -O1 adds
folding and cleanup; -O2 adds fusion. (Memory is planned once, over the launches code
generation makes: `netc.codegen.arena`.) `run_pipeline` runs the passes of a
level (requirements between passes are checked first), optionally verifying the IR after each
and writing it to `--dump-ir DIR` as `NN_<pass>.txt`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netc.diagnostics import error
from netc.ir import Graph
from netc.passes.eliminate_common_subexpressions import ELIMINATE_COMMON_SUBEXPRESSIONS
from netc.passes.eliminate_dead_code import ELIMINATE_DEAD_CODE
from netc.passes.fold_batchnorm import FOLD_BATCHNORM
from netc.passes.fold_constants import FOLD_CONSTANTS
from netc.passes.fold_transposes import FOLD_TRANSPOSES
from netc.passes.fuse_attention import FUSE_ATTENTION
from netc.passes.fuse_elementwise import FUSE_ELEMENTWISE
from netc.passes.fuse_epilogues import FUSE_EPILOGUES
from netc.passes.fuse_reduction_prologues import FUSE_REDUCTION_PROLOGUES
from netc.passes.pass_manager import (
    Mode,
    Pass,
    PassContext,
    PassRecord,
    check_requirements,
    run_passes,
)
from netc.passes.remove_dropout import REMOVE_DROPOUT
from netc.passes.simplify_views import SIMPLIFY_VIEWS
from netc.passes.weight_transforms import WeightTransform, apply_weight_transforms

PIPELINE: tuple[tuple[int, Pass], ...] = (
    (1, REMOVE_DROPOUT),                   # identity at inference; unblocks batchnorm folding
    (1, SIMPLIFY_VIEWS),                   # view chains become one reshape; identity views go
    (1, FOLD_CONSTANTS),                   # constant expressions evaluated; x+0, x*1 dropped
    (1, FOLD_BATCHNORM),                   # batchnorm after conv2d/dense folds into its weights
    (1, ELIMINATE_COMMON_SUBEXPRESSIONS),  # equal computations merged (after folding made them so)
    (1, ELIMINATE_DEAD_CODE),              # last cleanup: nothing unused reaches fusion
    (2, FUSE_ATTENTION),                   # matmul(softmax(q kᵀ · s), v): one attention kernel
    (2, FOLD_TRANSPOSES),                  # matmul(a, transpose(b)) reads b in place
    (2, FUSE_EPILOGUES),                   # pointwise chains after conv/GEMM/pool/reduction
    (2, FUSE_REDUCTION_PROLOGUES),         # pointwise chains feeding only a softmax/layernorm/gap
    (2, FUSE_ELEMENTWISE),                 # what is left: pointwise groups as one kernel each
)
LEVELS = (0, 1, 2)
PIPELINES: dict[int, tuple[Pass, ...]] = {
    level: tuple(item for lowest, item in PIPELINE if lowest <= level) for level in LEVELS
}
for _passes in PIPELINES.values():
    check_requirements(_passes)  # a broken order fails at import, not in a user's run


@dataclass(frozen=True)
class Optimized:
    """A graph after a pipeline, with what it takes to run it and to explain it."""

    source: Graph
    graph: Graph
    level: int
    transforms: tuple[WeightTransform, ...]
    """How the parameters of `graph` that the source lacks derive from the source's."""
    records: tuple[PassRecord, ...]
    lineage: Mapping[str, str | None]
    weights: dict[str, np.ndarray] | None
    """`graph`'s parameters, when the pipeline was given the source's weights."""
    seconds: float

    def weights_for(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The optimised graph's parameters, derived from the source network's weights (which
        are checked against the source first)."""
        from netc.weights import check_weights

        check_weights(self.source, weights)
        return self.derive_weights(weights)

    def derive_weights(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`weights_for` without checking `weights` (for a caller that has checked them)."""
        derived = apply_weight_transforms(self.transforms, weights)
        return {node.id: derived[node.id] for node in self.graph.params}

    def kernel_of(self, node_id: str) -> str | None:
        """The id of the node of `graph` that computes source node `node_id` (a fused node
        for a fused member); None when its value is no longer computed (dead code)."""
        owners = {member.id: node.id for node in self.graph.compute_nodes
                  if node.region is not None for member in node.region.members}
        current: str | None = node_id
        for _ in range(len(self.lineage) + 1):
            if current is None:
                return None
            if current in owners:
                return owners[current]
            if current in self.graph:
                return current
            current = self.lineage.get(current)
        return None

    def log(self) -> str:
        """What each pass did, one line a pass."""
        lines = [f"-O{self.level}: {len(self.source.compute_nodes)} ops -> "
                 f"{len(self.graph.compute_nodes)} in {self.seconds * 1000:.1f} ms"]
        lines += [f"  {record}" for record in self.records]
        return "\n".join(lines)


def run_pipeline(graph: Graph, level: int, weights: Mapping[str, np.ndarray] | None = None, *,
                 dump_dir: str | Path | None = None, verify: bool = False,
                 batch: int = 1, mode: Mode = "inference") -> Optimized:
    """Optimise `graph` at `level` (0, 1 or 2). `batch` is the size passes assume for named
    dimensions; `verify` runs
    the IR verifier before and after every pass; `dump_dir` receives the IR after each."""
    if level not in PIPELINES:
        raise ValueError(f"optimisation level must be one of {LEVELS}, got {level}")
    several = next((n for n in graph.nodes if n.extra_types), None)
    if several is not None and PIPELINES[level]:
        raise error("E0444", f"`{several.op}` ({several.id}) has {len(several.types)} outputs, "
                    "and the optimisation passes take ops of one output only (yet)",
                    several.span, help="-O0 keeps the graph as it is; the reference backend "
                    "runs it")
    context = PassContext(batch=batch, mode=mode)
    started = time.perf_counter()
    result, records = run_passes(graph, PIPELINES[level], context, dump_dir=dump_dir,
                                 verify_each=verify)
    seconds = time.perf_counter() - started
    optimized = Optimized(graph, result, level, tuple(context.transforms), tuple(records),
                          dict(context.lineage), None, seconds)
    if weights is None:
        return optimized
    return Optimized(graph, result, level, optimized.transforms, optimized.records,
                     optimized.lineage, optimized.weights_for(weights),
                     seconds)
