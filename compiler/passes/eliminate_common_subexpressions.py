"""eliminate_common_subexpressions: compute each distinct value once.

Fires on two nodes with the same op, attributes, type and (already deduplicated) inputs, and
on two scalar constants of one value and dtype; the later one's users read the earlier one.
Parameters and inputs are never merged (two parameters are two tensors, whatever their
shapes). Needs nothing before it. Guarantees after: no two nodes compute the same thing.
"""

from __future__ import annotations

from collections.abc import Hashable

from netc.ir import Graph, Node
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import can_forward, rebuild, resolve


def _key(node: Node, forward: dict[str, str]) -> Hashable | None:
    if node.op in ("input", "param"):
        return None
    inputs = tuple(resolve(forward, i) for i in node.inputs)
    # A layer's parameters are among its inputs, so equal inputs mean the same layer.
    return (node.op, inputs, node.attrs, node.type, node.layer)


def eliminate_common_subexpressions(graph: Graph, context: PassContext) -> Graph:
    first: dict[Hashable, str] = {}
    forward: dict[str, str] = {}
    for node in graph.nodes:
        key = _key(node, forward)
        if key is None:
            continue
        if key in first and can_forward(graph, node.id, first[key]):
            forward[node.id] = first[key]
            context.moved(node.id, first[key])
        elif key not in first:
            first[key] = node.id
    if not forward:
        return graph
    computed = sum(1 for n in forward if graph[n].op != "constant")
    constants = len(forward) - computed
    parts = [f"{computed} duplicate computation{'s' if computed != 1 else ''}"] if computed else []
    parts += [f"{constants} duplicate constant{'s' if constants != 1 else ''}"] if constants else []
    context.report("merged " + " and ".join(parts))
    return rebuild(graph, forward=forward, drop=forward)


ELIMINATE_COMMON_SUBEXPRESSIONS = Pass(
    "eliminate_common_subexpressions", eliminate_common_subexpressions,
    summary="compute each distinct value once")
