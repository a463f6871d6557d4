"""fuse_attention: attention written out as ops becomes the `attention` op, which the code
generator computes in one fused kernel (templates/attention.cuh).

Fires on `matmul(softmax(scores, axis=-1), v)` where `scores` is `matmul(q, transpose(k))`
(the transpose swapping the last two dims), optionally times or divided by a number: the
attention of a `.net` program written by hand, or of an ONNX import the importer's own
pattern did not take. Every value in between must be read only by the next step and be no
output (the fused kernel never stores it). Needs nothing before it; runs before the epilogue
fusions, which would otherwise take the scaling into the first matmul. Guarantees after: no
such chain is left; each became `attention(q, k, v, scale=s)`, with s the number (1 without
one), the second matmul keeping its id and the rest dropped (the transpose too, unless
something else reads it).
"""

from __future__ import annotations

import dataclasses

from netc.ir import Graph, Node
from netc.ops import REGISTRY
from netc.ops.apply import apply_op, bind_attrs
from netc.ops.registry import ShapeError
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import rebuild


def swaps_last_two(node: Node) -> bool:
    perm = node.attrs["perm"]
    rank = len(perm)
    return rank >= 2 and tuple(perm) == (*range(rank - 2), rank - 1, rank - 2)


def _scaled(graph: Graph, node: Node) -> tuple[Node, float] | None:
    """(the q kᵀ matmul, its factor) when `node` is it, times or divided by a number."""
    if node.op == "matmul":
        return node, 1.0
    if node.op not in ("mul", "div") or len(node.inputs) != 2:
        return None
    first, second = (graph.producer(ref) for ref in node.inputs)
    if second.op == "constant" and first.op == "matmul":
        value = float(second.attrs["value"])
        if node.op == "div":
            return (first, 1.0 / value) if value != 0 else None
        return first, value
    if node.op == "mul" and first.op == "constant" and second.op == "matmul":
        return second, float(first.attrs["value"])
    return None


def fuse_attention(graph: Graph, context: PassContext) -> Graph:
    users = graph.users()
    outputs = {value for _, value in graph.outputs}

    def only_step(node: Node) -> bool:
        """Read by one node, once, and no output: the fused kernel never stores it."""
        return len(users[node.id]) == 1 and node.id not in outputs

    replaced: dict[str, Node] = {}
    dropped: list[str] = []
    for node in graph.compute_nodes:
        if node.op != "matmul":
            continue
        weights, v = (graph.producer(ref) for ref in node.inputs)
        if weights.op != "softmax" or weights.attrs["axis"] not in (-1, weights.type.rank - 1) \
                or not only_step(weights):
            continue
        scores = graph.producer(weights.inputs[0])
        found = _scaled(graph, scores) if only_step(scores) else None
        if found is None:
            continue
        product, scale = found
        if product is not scores and not only_step(product):
            continue
        q, transposed = (graph.producer(ref) for ref in product.inputs)
        if transposed.op != "transpose" or not swaps_last_two(transposed) or \
                q.type.rank < 2 or v.type.rank < 2:
            continue
        opdef = REGISTRY["attention"]
        inputs = (product.inputs[0], transposed.inputs[0], node.inputs[1])
        attrs = bind_attrs(opdef, {"scale": scale})
        try:
            application = apply_op(opdef, attrs, [graph.value_type(ref) for ref in inputs])
        except ShapeError:
            continue  # shapes the op does not take (its own rule says so)
        if application.type != node.type:
            continue
        replaced[node.id] = dataclasses.replace(node, op="attention", inputs=inputs,
                                                attrs=application.attrs)
        steps = [weights.id, scores.id] + ([product.id] if product is not scores else []) + \
            ([transposed.id] if only_step(transposed) else [])
        for step in steps:
            dropped.append(step)
            context.moved(step, node.id)
    if not replaced:
        return graph
    context.report(f"fused {len(replaced)} attention{'s' if len(replaced) != 1 else ''}")
    return rebuild(graph, drop=dropped, replace_nodes=replaced)


FUSE_ATTENTION = Pass("fuse_attention", fuse_attention,
                      summary="matmul(softmax(q kᵀ · s), v) as one attention kernel")
