"""fuse_epilogues: pointwise ops after a GEMM, convolution, pool or reduction join its kernel.

The anchor computes an output element; the epilogue (bias is already part of conv2d and
dense) applies a chain of pointwise ops to it in registers before the one write: activations,
add/sub/mul with a residual of the output's shape or a broadcast constant or per-channel
tensor, unfolded batchnorms, and further activations. The ResNet pattern
`relu(batchnorm(conv(x)) + shortcut)` becomes one conv kernel (with batchnorm folded first).

Fires on every `conv2d` (kind conv_epilogue), `dense`/`matmul` (gemm_epilogue), `maxpool2d`/
`avgpool2d` (pool_epilogue) and `softmax`/`log_softmax`/`layernorm`/`global_avgpool`
(reduction) followed by at least one pointwise op that may join under the rules of
`netc.passes.fusion`: same type as the anchor's output, only the group's last value used
outside it. Anchors are taken in graph order; a pointwise op joins at most one group.

Needs `fold_batchnorm` (a batchnorm that can fold should not be fused as arithmetic) and
`eliminate_dead_code` (a dead user would block fusion). Guarantees after: no pointwise op
that could join an anchor's kernel is left outside it.
"""

from __future__ import annotations

from collections import Counter

from netc.ir import Graph, Node
from netc.passes.fusion import Group, Grouping, apply_groups, is_pointwise, kernel_kind
from netc.passes.pass_manager import Pass, PassContext


def fuse_epilogues(graph: Graph, context: PassContext) -> Graph:
    grouping = Grouping(graph)
    anchors: Counter[str] = Counter()
    joined = 0
    for node in graph.nodes:
        kind = kernel_kind(node)
        if kind is None:
            continue

        def can_join(candidate: Node, anchor: Node = node) -> bool:
            return is_pointwise(candidate) and candidate.type == anchor.type

        members = grouping.best_group(grouping.forward_closure(node.id, can_join), node.id)
        if len(members) > 1:
            grouping.add(Group(frozenset(members), kind, node.id))
            anchors[node.op] += 1
            joined += len(members) - 1
    if not grouping.groups:
        return graph
    total = len(grouping.groups)
    into = ", ".join(f"{op} ({count})" for op, count in sorted(anchors.items()))
    context.report(f"fused {joined} pointwise op{'s' if joined != 1 else ''} into the epilogues "
                   f"of {total} kernel{'s' if total != 1 else ''}: {into}")
    return apply_groups(graph, grouping.groups, context)


FUSE_EPILOGUES = Pass("fuse_epilogues", fuse_epilogues,
                      requires=("fold_batchnorm", "eliminate_dead_code"),
                      summary="pointwise ops after conv/GEMM/pool/reduction join its kernel")
