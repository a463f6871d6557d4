"""fuse_elementwise: a connected group of pointwise ops of one shape becomes one kernel.

Any mix of activations, broadcast arithmetic and unfolded batchnorms whose values all have
the group's output type runs as one kernel: one thread per output element reads each input
(broadcast as needed), computes every member in registers and writes once. Groups follow the
rules of `netc.passes.fusion`: no member is recomputed (all members have the output's shape),
only the last value is used outside the group, no cycles.

Fires on pointwise ops left unfused by the epilogue and prologue passes, seeded in graph
order, grown forwards over users of the same type and then backwards over producers used only
inside the group; a group of one op stays an ordinary node. Needs `fuse_epilogues` and
`fuse_reduction_prologues` (which take pointwise ops next to anchors first). Guarantees after:
no two adjacent pointwise ops that could share a kernel are left apart.
"""

from __future__ import annotations

from netc.ir import Graph, Node
from netc.passes.fusion import Group, Grouping, apply_groups, is_pointwise
from netc.passes.pass_manager import Pass, PassContext


def fuse_elementwise(graph: Graph, context: PassContext) -> Graph:
    grouping = Grouping(graph)
    for node in graph.nodes:
        if not is_pointwise(node) or node.id in grouping.taken:
            continue

        def can_join(candidate: Node, seed: Node = node) -> bool:
            return is_pointwise(candidate) and candidate.type == seed.type

        members = grouping.best_group(grouping.forward_closure(node.id, can_join), node.id)
        members = grouping.absorb_producers(members, can_join)
        if len(members) > 1:
            grouping.add(Group(frozenset(members), "elementwise", grouping.result(members)))
    if not grouping.groups:
        return graph
    total = len(grouping.groups)
    ops = sum(len(g.members) for g in grouping.groups)
    context.report(f"fused {ops} pointwise ops into {total} elementwise kernel"
                   f"{'s' if total != 1 else ''}")
    return apply_groups(graph, grouping.groups, context)


FUSE_ELEMENTWISE = Pass("fuse_elementwise", fuse_elementwise,
                        requires=("fuse_epilogues", "fuse_reduction_prologues"),
                        summary="connected pointwise ops of one shape share one kernel")
