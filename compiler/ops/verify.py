"""The IR verifier with every node's type checked against its op's rule.

`netc.ir.verify` checks the structure (every use defined earlier, outputs known) and asks for
each compute node's type from a function it is given; this module gives it the registry's
shape and dtype rule, so the IR itself never imports the op table.
"""

from __future__ import annotations

from netc import ir
from netc.ir import Graph, Node, TensorType
from netc.ops.registry import REGISTRY


def node_types(node: Node, inputs: list[TensorType]) -> tuple[TensorType, ...] | None:
    """The types `node`'s op gives its outputs from its inputs' types; None for an unknown
    op."""
    opdef = REGISTRY.get(node.op)
    return None if opdef is None else opdef.infer_types_all(node.attrs, inputs)


def verify(graph: Graph) -> None:
    """Raise `netc.ir.IRError` naming the first broken invariant of `graph`."""
    ir.verify(graph, node_types)
