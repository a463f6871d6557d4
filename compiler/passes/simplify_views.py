"""simplify_views: reshapes and flattens are views; a chain of them becomes one, a no-op none.

`flatten` and `reshape` only relabel the shape of contiguous data, so code generation gives
them no kernel: their buffer aliases their input's (`Buffer.alias_of`) and memory planning
extends the input's lifetime over the view's uses. This pass makes the views minimal: a view
of a view becomes one `reshape` of the original value, and a view whose type equals its input's
type (a `flatten` of an [N, k] value, a reshape to the same shape) disappears.

Fires on `flatten` and `reshape` nodes. Needs nothing before it. Guarantees after: no view
reads another view, and no view is the identity (except one kept so that an output is not an
input; see `rewrite.can_forward`).
"""

from __future__ import annotations

from netc.ir import Attrs, Graph, Node
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import can_forward, rebuild, resolve, unused

VIEWS = ("flatten", "reshape")


def simplify_views(graph: Graph, context: PassContext) -> Graph:
    forward: dict[str, str] = {}
    replaced: dict[str, Node] = {}
    current: dict[str, Node] = {}  # the node each id stands for after the rewrites so far
    bypassed: list[str] = []  # views that a merged view no longer reads
    for node in graph.nodes:
        node = replaced.get(node.id, node)
        current[node.id] = node
        if node.op not in VIEWS:
            continue
        source = current[resolve(forward, node.inputs[0])]
        if source.type == node.type and can_forward(graph, node.id, source.id):
            forward[node.id] = source.id
            context.moved(node.id, source.id)
            continue
        if source.op in VIEWS:
            base = source.inputs[0]
            merged = Node(node.id, "reshape", (base,),
                          Attrs(dims=tuple(int(d) for d in node.type.shape[1:])), node.type,
                          node.span, node.layer)
            replaced[node.id] = merged
            current[node.id] = merged
            bypassed.append(source.id)
    if not forward and not replaced:
        return graph
    result = rebuild(graph, forward=forward, drop=forward, replace_nodes=replaced)
    dead = unused(result, bypassed)
    for node_id in dead:
        context.moved(node_id, None)
    result = rebuild(result, drop=dead)
    if replaced:
        context.report(f"merged {len(replaced)} chained view{'s' if len(replaced) != 1 else ''}")
    if forward:
        context.report(f"removed {len(forward)} identity view{'s' if len(forward) != 1 else ''}")
    return result


SIMPLIFY_VIEWS = Pass("simplify_views", simplify_views,
                      summary="collapse chains of reshape/flatten; drop identity views")
