"""Helpers that passes use to build a new graph from an old one.

Passes never mutate: they collect decisions (which values now read another value, which nodes
are dropped or replaced) and `rebuild` makes the new `Graph` in one sweep. A rebuild that
changes nothing returns the very same graph object, so "did the pass change anything" is
`new is not old`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from netc.ir import SOURCE_OPS, Graph, Node


def resolve(forward: Mapping[str, str], value: str) -> str:
    """Follows `forward` (old value -> value that now stands for it) to its end."""
    seen = 0
    while value in forward:
        value = forward[value]
        seen += 1
        if seen > len(forward):
            raise ValueError(f"forwarding cycle through {value!r}")
    return value


def rebuild(graph: Graph, *, forward: Mapping[str, str] | None = None,
            drop: Iterable[str] = (), replace_nodes: Mapping[str, Node] | None = None,
            insert_before: Mapping[str, Iterable[Node]] | None = None) -> Graph:
    """A new graph in which

    * every use of a value in `forward` reads the value it forwards to (outputs too);
    * nodes in `drop` are gone;
    * a node whose id is in `replace_nodes` is that node instead (its inputs then forwarded);
    * nodes in `insert_before[id]` come right before node `id` (forwarded too).

    Returns `graph` itself when nothing changes.
    """
    forward = forward or {}
    dropped = set(drop)
    replace_nodes = replace_nodes or {}
    insert_before = insert_before or {}
    nodes: list[Node] = []

    def emit(node: Node) -> None:
        inputs = tuple(resolve(forward, i) for i in node.inputs)
        nodes.append(node if inputs == node.inputs else replace(node, inputs=inputs))

    for node in graph.nodes:
        for extra in insert_before.get(node.id, ()):
            emit(extra)
        if node.id in dropped:
            continue
        emit(replace_nodes.get(node.id, node))
    outputs = tuple((name, resolve(forward, value)) for name, value in graph.outputs)
    if outputs == graph.outputs and len(nodes) == len(graph.nodes) and all(
            a is b for a, b in zip(nodes, graph.nodes)):
        return graph
    return Graph(graph.name, tuple(nodes), outputs)


def output_ids(graph: Graph) -> set[str]:
    return {value for _, value in graph.outputs}


def can_forward(graph: Graph, value: str, to: str) -> bool:
    """Whether uses of `value` may read `to` instead. An output must stay a computed value:
    making an output name an input, parameter or constant directly would leave no kernel to
    write it, so such a forward is refused."""
    return value not in output_ids(graph) or graph[to].op not in SOURCE_OPS


def unused(graph: Graph, candidates: Iterable[str]) -> set[str]:
    """The candidates that nothing uses (and that are not outputs), transitively: dropping a
    node may leave its inputs among the candidates unused too. Inputs are never unused."""
    users = {node_id: len(found) for node_id, found in graph.users().items()}
    outputs = output_ids(graph)
    pending = [c for c in candidates if c in graph]
    gone: set[str] = set()
    while pending:
        node_id = pending.pop()
        node = graph[node_id]
        if (node_id in gone or users[node_id] or node_id in outputs or node.op == "input"):
            continue
        gone.add(node_id)
        for used in node.inputs:
            users[used] -= 1
            pending.append(used)
    return gone


def all_ids(graph: Graph) -> set[str]:
    """Every id in use, including those of fused nodes' members (which keep their ids)."""
    ids: set[str] = set()
    for node in graph.nodes:
        ids.add(node.id)
        ids.update(member.id for member in node.members)
    return ids


def fresh_id(taken: set[str], stem: str) -> str:
    """`stem` if free, else `stem2`, `stem3`, ...; the result is added to `taken`."""
    candidate, count = stem, 1
    while candidate in taken:
        count += 1
        candidate = f"{stem}{count}"
    taken.add(candidate)
    return candidate
