"""eliminate_dead_code: drop every node that no output depends on.

Fires on nodes not reachable backwards from the network's outputs (parameters included: a
parameter that nothing reads is not needed at run time). Network inputs are kept even when
unused: they are the network's interface. Needs nothing before it. Guarantees after: every
node but an input contributes to some output.
"""

from __future__ import annotations

from collections import Counter

from netc.ir import Graph
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import rebuild


def eliminate_dead_code(graph: Graph, context: PassContext) -> Graph:
    live: set[str] = set()
    pending = [value for _, value in graph.outputs]
    while pending:
        node_id = pending.pop()
        if node_id not in live:
            live.add(node_id)
            pending.extend(graph[node_id].inputs)
    dead = [n for n in graph.nodes if n.id not in live and n.op != "input"]
    if not dead:
        return graph
    for node in dead:
        context.moved(node.id, None)
    counts = Counter(n.op for n in dead)
    context.report("removed " + ", ".join(f"{count} {op}" for op, count in sorted(counts.items())))
    return rebuild(graph, drop={n.id for n in dead})


ELIMINATE_DEAD_CODE = Pass("eliminate_dead_code", eliminate_dead_code,
                           summary="drop nodes no output depends on")
