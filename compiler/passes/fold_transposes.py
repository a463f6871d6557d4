"""fold_transposes: a transpose feeding a matmul as its second operand folds into the GEMM,
which then reads the operand where it lies instead of waiting for a copy.

Fires on `matmul(a, transpose(b, perm))` where `perm` swaps the last two dims of `b` and keeps
its batch dims in place, both operands of rank 2 or more: GPT's tied output layer
(`matmul(h, transpose(wte.weight, [1, 0]))`, a copy of the whole embedding table every run),
`q · kᵀ` outside attention. It becomes `matmul_nt(a, b)` under the matmul's id, which the GEMM
kernels compute with B read as [N, K] rows, as `dense` reads its weight. The transpose goes
when nothing else reads it. Needs `fuse_attention` first: attention keeps its transpose, which
the attention kernel reads through. Guarantees after: no matmul reads such a transpose.
"""

from __future__ import annotations

import dataclasses

from netc.ir import Graph, Node
from netc.passes.fuse_attention import swaps_last_two
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import rebuild, unused


def fold_transposes(graph: Graph, context: PassContext) -> Graph:
    replaced: dict[str, Node] = {}
    into: dict[str, str] = {}  # a folded transpose -> a matmul that reads its input now
    for node in graph.compute_nodes:
        if node.op != "matmul":
            continue
        a, b = (graph.value_type(ref) for ref in node.inputs)
        transpose = graph.producer(node.inputs[1])
        if transpose.op != "transpose" or not swaps_last_two(transpose) or a.rank < 2 or \
                b.rank < 2:
            continue
        replaced[node.id] = dataclasses.replace(
            node, op="matmul_nt", inputs=(node.inputs[0], transpose.inputs[0]))
        into.setdefault(transpose.id, node.id)
    if not replaced:
        return graph
    folded = rebuild(graph, replace_nodes=replaced)
    gone = unused(folded, into)
    for transpose in gone:
        context.moved(transpose, into[transpose])
    count = len(replaced)
    context.report(f"folded {count} transpose{'s' if count != 1 else ''} into matmul operands"
                   + (f" ({len(gone)} copies gone)" if len(gone) != count else ""))
    return rebuild(folded, drop=gone)


FOLD_TRANSPOSES = Pass("fold_transposes", fold_transposes, requires=("fuse_attention",),
                       summary="a transpose of a matmul's second operand read in place")
