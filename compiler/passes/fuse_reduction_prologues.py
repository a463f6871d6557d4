"""fuse_reduction_prologues: a pointwise chain feeding only a reduction is computed inside it.

A softmax, log_softmax, layernorm or global_avgpool reads its whole input; when that input is
made by pointwise ops used nowhere else, the reduction kernel computes them as it loads each
element (a prologue), which saves writing the intermediate and reading it back: a pass over
memory. Row-wise reductions (softmax, log_softmax, layernorm) take a prologue only when the
reduced row fits `fusion.ROW_LIMIT` elements, because the kernel then stages the row on chip
and computes the prologue once per element; over the limit it would re-read the row for its
max, sum and normalisation passes and recompute the prologue each time, which costs more than
it saves. global_avgpool reads every element once, so any length qualifies.

Fires on a reduction (alone, or already the anchor of a `reduction` group from
`fuse_epilogues`) whose reduced input is a pointwise node of the same type used only by it and
not an output; the prologue grows backwards over pointwise producers of that type used only
inside it. Needs `fuse_epilogues` (which forms the reduction's epilogue group this merges
into). Guarantees after: no such prologue is left outside its reduction.
"""

from __future__ import annotations

from netc.ir import Graph, Node
from netc.passes.fusion import (
    ROW_LIMIT,
    Group,
    Grouping,
    anchor_of,
    apply_groups,
    is_pointwise,
    is_reduction,
    role,
    row_length,
)
from netc.passes.pass_manager import Pass, PassContext


def _reduced_input(node: Node) -> str | None:
    """The value a reduction (or reduction group) reduces, when read from outside the group."""
    if is_reduction(node):
        return node.inputs[0]
    region = node.region
    if region is None or region.kind != "reduction":
        return None
    anchor = region.anchor
    position = region.argument_position(anchor.inputs[0])
    if not is_reduction(anchor) or position is None:
        return None  # already has a prologue
    if (region.readers(anchor.inputs[0]) != (anchor,)
            or node.inputs.count(node.inputs[position]) != 1):
        return None  # the epilogue reads the reduced value too: a prologue would hide it
    return node.inputs[position]


def fuse_reduction_prologues(graph: Graph, context: PassContext) -> Graph:
    grouping = Grouping(graph)
    for node in graph.nodes:
        value = _reduced_input(node)
        if value is None:
            continue
        producer = graph[value]
        anchor = anchor_of(node)
        if role(anchor) == "row_reduction":
            length = row_length(anchor, producer.type.shape)
            if length is None or length > ROW_LIMIT:
                continue
        if (not is_pointwise(producer) or value in grouping.taken or value in grouping.outputs
                or grouping.users[value] != [node.id]):
            continue

        def can_join(candidate: Node, like: Node = producer) -> bool:
            return is_pointwise(candidate) and candidate.type == like.type

        prologue = grouping.absorb_producers({value}, can_join)
        members = prologue | {node.id}
        if grouping.is_valid(members):
            grouping.add(Group(frozenset(members), "reduction", anchor.id))
    if not grouping.groups:
        return graph
    total = len(grouping.groups)
    moved = sum(len(g.members) - 1 for g in grouping.groups)  # all but the reduction
    context.report(f"fused {moved} pointwise op{'s' if moved != 1 else ''} into the prologues of "
                   f"{total} reduction{'s' if total != 1 else ''}")
    return apply_groups(graph, grouping.groups, context)


FUSE_REDUCTION_PROLOGUES = Pass(
    "fuse_reduction_prologues", fuse_reduction_prologues, requires=("fuse_epilogues",),
    summary="pointwise chains feeding only a reduction are computed inside it")
