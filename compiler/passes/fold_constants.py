"""fold_constants: evaluate what is known at compile time; drop arithmetic that does nothing.

Fires on
* a compute node whose inputs are all scalar `constant` nodes: it becomes one constant, with
  the value the reference interpreter would compute (rounded to the node's dtype);
* `x + 0`, `0 + x`, `x - 0`, `x * 1` and `1 * x` with a scalar constant, where the result has
  exactly x's type (no broadcasting happens): users read x.

Parameters are never folded here (a parameter is known only when weights are; rewriting them
is a `WeightTransform`, see `fold_batchnorm`). Needs nothing before it. Guarantees after: no
compute node reads only constants, and no arithmetic identity with a scalar constant is left
(except where it would make an output an input).
"""

from __future__ import annotations

import numpy as np

from netc.dtypes import round_to
from netc.ir import Attrs, Graph, Node
from netc.ops import REGISTRY
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import can_forward, rebuild, resolve, unused

IDENTITIES = {"add": (0.0, True), "sub": (0.0, False), "mul": (1.0, True)}
"""op: (the neutral scalar, whether it may stand on the left too)."""


def _constant_value(node: Node) -> float | None:
    return float(node.attrs["value"]) if node.op == "constant" else None


def _identity_operand(node: Node, operands: list[Node]) -> str | None:
    """The operand that `node` passes through unchanged, if it is an identity."""
    if node.op not in IDENTITIES or len(operands) != 2:
        return None
    neutral, commutes = IDENTITIES[node.op]
    left, right = operands
    if _constant_value(right) == neutral and right.type.shape == () and left.type == node.type:
        return left.id
    if (commutes and _constant_value(left) == neutral and left.type.shape == ()
            and right.type == node.type):
        return right.id
    return None


def fold_constants(graph: Graph, context: PassContext) -> Graph:
    forward: dict[str, str] = {}
    replaced: dict[str, Node] = {}
    current: dict[str, Node] = {}
    touched: list[str] = []
    for node in graph.nodes:
        current[node.id] = node
        if node.op in ("input", "param", "constant"):
            continue
        operands = [current[resolve(forward, i)] for i in node.inputs]
        if node.type.shape == () and all(o.op == "constant" for o in operands):
            arrays = [np.float32(o.attrs["value"]) for o in operands]
            value = round_to(node.type.dtype, REGISTRY[node.op].reference(node.attrs, *arrays))
            folded = Node(node.id, "constant", (), Attrs(value=float(value)), node.type,
                          node.span, node.layer)
            replaced[node.id] = current[node.id] = folded
            touched.extend(o.id for o in operands)
            continue
        passed = _identity_operand(node, operands)
        if passed is not None and can_forward(graph, node.id, passed):
            forward[node.id] = passed
            touched.extend(o.id for o in operands)
            context.moved(node.id, passed)
    if not forward and not replaced:
        return graph
    result = rebuild(graph, forward=forward, drop=forward, replace_nodes=replaced)
    dead = unused(result, touched)
    result = rebuild(result, drop=dead)
    if replaced:
        context.report(f"evaluated {len(replaced)} constant expression"
                       f"{'s' if len(replaced) != 1 else ''}")
    if forward:
        context.report(f"removed {len(forward)} arithmetic identit"
                       f"{'ies' if len(forward) != 1 else 'y'}")
    return result


FOLD_CONSTANTS = Pass("fold_constants", fold_constants,
                      summary="evaluate constant expressions; drop x+0, x*1")
