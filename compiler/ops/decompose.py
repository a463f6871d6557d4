"""Decompositions: an op written with other ops (`OpDef.decompose`), for backends without a
rule of their own for it.

* `evaluate_decomposition` is the reference of an op whose entry gives only a decomposition
  (computed in float32 throughout, as one fused kernel would).
* `decomposition_nodes` is one node's decomposition as IR nodes, for a backend that expands an
  op inside something it is emitting (the ONNX exporter, in a fused group's body too).
* `expand_decompositions` replaces, in a whole graph, every node whose op a backend cannot
  compute directly by its decomposition (the CUDA code generator calls it first).

Decomposed nodes keep the original's span and layer; the last one keeps its id, so uses,
outputs and tile choices keyed by id still find it. The others are named `<id>.<op><k>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import Attrs, Graph, Node, TensorType
from netc.ops.apply import apply_op, bind_attrs
from netc.ops.registry import REGISTRY, OpDef


class _Composer:
    """Builds one node's decomposition through the apply core (a `registry.Composer`)."""

    def __init__(self, owner: Node | None, inputs: Sequence[tuple[str, TensorType]],
                 taken: set[str]) -> None:
        self.owner = owner
        self.types = dict(inputs)
        self.nodes: list[Node] = []
        self.taken = taken

    def _id(self, op: str) -> str:
        stem = self.owner.id if self.owner is not None else "decomposed"
        count = len(self.nodes)
        node_id = f"{stem}.{op}{count}"
        while node_id in self.taken or node_id in self.types:
            count += 1
            node_id = f"{stem}.{op}{count}"
        return node_id

    def _add(self, node: Node) -> str:
        if self.owner is not None:
            node = dataclasses.replace(node, span=self.owner.span, layer=self.owner.layer)
        self.nodes.append(node)
        self.types[node.id] = node.type
        return node.id

    def type_of(self, value: str) -> TensorType:
        return self.types[value]

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        opdef = REGISTRY[op]
        if opdef.has_params:
            raise ValueError(f"a decomposition cannot make the layer `{op}`: its parameters "
                             "must be inputs of the decomposed op")
        applied = apply_op(opdef, bind_attrs(opdef, attrs), [self.types[i] for i in inputs])
        return self._add(Node(self._id(op), op, tuple(inputs), applied.attrs, applied.type))

    def constant(self, value: float, dtype: str = "f32") -> str:
        return self._add(Node(self._id("constant"), "constant", (), Attrs(value=float(value)),
                              TensorType(dtype, ())))


def _compose(opdef: OpDef, attrs: Attrs, inputs: Sequence[tuple[str, TensorType]],
             owner: Node | None, taken: set[str]) -> tuple[list[Node], str]:
    if opdef.decompose is None:
        raise ValueError(f"`{opdef.name}` has no decomposition")
    composer = _Composer(owner, inputs, taken)
    result = opdef.decompose(composer, attrs, *(value for value, _ in inputs))
    return composer.nodes, result


def decomposition_nodes(node: Node, input_types: Sequence[TensorType],
                        taken: set[str] | None = None) -> tuple[Node, ...]:
    """`node`'s decomposition: nodes in order that read `node.inputs`, the last with `node.id`
    and `node.type`. `taken` lists ids the new ones must avoid."""
    opdef = REGISTRY[node.op]
    nodes, result = _compose(opdef, node.attrs, list(zip(node.inputs, input_types)), node,
                             set(taken or ()) | {node.id})
    if result in node.inputs:  # the identity: a copy of the input keeps `node.id` defined
        raise ValueError(f"the decomposition of `{node.op}` returns its input unchanged")
    last = next(n for n in nodes if n.id == result)
    if last.type != node.type:
        raise ValueError(f"the decomposition of `{node.op}` gives {last.type}, the op "
                         f"{node.type}")
    renamed = {result: node.id}
    return tuple(dataclasses.replace(n, id=renamed.get(n.id, n.id),
                                     inputs=tuple(renamed.get(i, i) for i in n.inputs))
                 for n in nodes)


def evaluate_decomposition(opdef: OpDef, attrs: Attrs,
                           arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The value of `opdef` on `arrays` (tensor inputs, then parameters) by its decomposition."""
    names = [f"${position}" for position in range(len(arrays))]
    types = [TensorType("f32", tuple(np.shape(a))) for a in arrays]
    nodes, result = _compose(opdef, attrs, list(zip(names, types)), None, set())
    values: dict[str, np.ndarray] = {name: np.asarray(a, dtype=np.float32)
                                     for name, a in zip(names, arrays)}
    for node in nodes:
        if node.op == "constant":
            values[node.id] = np.float32(node.attrs["value"])
        else:
            args = [values[i] for i in node.inputs]
            values[node.id] = np.asarray(REGISTRY[node.op].reference(node.attrs, *args),
                                         dtype=np.float32)
    return values[result]


def expand_decompositions(
        graph: Graph, computes: Callable[[str], bool],
        takes: Callable[[Node, Sequence[TensorType]], bool] | None = None) -> Graph:
    """`graph` with every node whose op a backend cannot compute (`computes(op)` false), or
    whose node it does not take (`takes(node, input types)` false: a fused kernel for some
    shapes only), but which has a decomposition replaced by it, until only computable nodes
    remain. Returns `graph` itself when nothing changes."""
    types = {node.id: node.type for node in graph.nodes}

    def type_of(ref: str) -> TensorType:
        return types[ref] if ref in types else graph.value_type(ref)

    def expandable(node: Node) -> bool:
        opdef = REGISTRY.get(node.op)
        if opdef is None or opdef.decompose is None:
            return False
        return not computes(node.op) or (
            takes is not None and not takes(node, [type_of(i) for i in node.inputs]))

    if not any(expandable(node) for node in graph.nodes):
        return graph
    taken = {node.id for node in graph.nodes}
    nodes: list[Node] = []
    pending = list(graph.nodes)
    while pending:
        node = pending.pop(0)
        if not expandable(node):
            nodes.append(node)
            continue
        expanded = decomposition_nodes(node, [type_of(i) for i in node.inputs], taken)
        for inner in expanded:
            taken.add(inner.id)
            types[inner.id] = inner.type
        pending[:0] = expanded  # a decomposition may use ops that decompose further
    return Graph(graph.name, tuple(nodes), graph.outputs)
