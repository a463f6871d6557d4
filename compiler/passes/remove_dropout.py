"""remove_dropout: dropout is the identity at inference, so its users read its input.

Fires on every `dropout` node. Needs nothing before it. Guarantees after: no `dropout` node is
left, except one whose removal would make a network output name a network input directly (an
output must be written by some kernel; code generation copies it as a view).
"""

from __future__ import annotations

from netc.ir import Graph
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import can_forward, rebuild, resolve


def remove_dropout(graph: Graph, context: PassContext) -> Graph:
    forward: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "dropout":
            continue
        source = resolve(forward, node.inputs[0])
        if can_forward(graph, node.id, source):
            forward[node.id] = source
    for removed in forward:
        context.moved(removed, resolve(forward, removed))
    if forward:
        context.report(f"removed {len(forward)} dropout{'s' if len(forward) != 1 else ''}")
    return rebuild(graph, forward=forward, drop=forward)


REMOVE_DROPOUT = Pass("remove_dropout", remove_dropout,
                      summary="dropout is the identity at inference", modes=("inference",))
