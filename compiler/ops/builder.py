"""Building IR graphs from Python, straight from the registry (no `.net` source needed).

`GraphBuilder` applies ops the way the front end does: it fills in attribute defaults, puts
them in the canonical form (`OpDef.normalize`), infers the output type and adds a layer's
parameters as `param` nodes named `<layer>.<param>`. It serves tests, `export_op`, and tools
that generate graphs. Binding, checking and naming are `netc.ops.apply`'s, shared with the front
end; source spans and diagnostics are the front end's business, so errors here are plain
exceptions (`ShapeError` for shapes, `AttrError`, a `ValueError`, for attributes).

    builder = GraphBuilder("tiny")
    x = builder.input("x", "f32", ("N", 16))
    y = builder.op("relu", builder.op("dense", x, units=8))
    builder.output("y", y)
    graph = builder.build()
    weights = netc.weights.init_weights(graph, seed=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from netc.ir import Attrs, Dim, Graph, Node, TensorType
from netc.ops.apply import Naming, apply_op, bind_attrs, param_id
from netc.ops.registry import REGISTRY
from netc.ops.verify import verify


def make_attrs(op: str, values: Mapping[str, Any], inputs: Sequence[TensorType]) -> Attrs:
    """The canonical attribute record of `op` applied to `inputs`, from Python values.

    Missing attributes take their defaults; `[h, w]` lists become tuples. Applying it to an
    already canonical record gives the same record. Errors: `AttrError` (a `ValueError`).
    """
    opdef = REGISTRY[op]
    return opdef.normalize(bind_attrs(opdef, values), inputs)


class GraphBuilder:
    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.outputs: list[tuple[str, str]] = []
        self._types: dict[str, TensorType] = {}
        self._naming = Naming()

    def _add(self, node: Node) -> str:
        if node.id in self._types:
            raise ValueError(f"node id {node.id!r} used twice")
        self.nodes.append(node)
        self._types.update(zip(node.values, node.types))
        return node.id

    def _fresh(self, op: str) -> str:
        node_id = self._naming.node(op)
        while node_id in self._types:
            node_id = self._naming.node(op)
        return node_id

    def type_of(self, value: str) -> TensorType:
        return self._types[value]

    def input(self, name: str, dtype: str, shape: Sequence[Dim]) -> str:
        return self._add(Node(name, "input", (), Attrs(), TensorType(dtype, tuple(shape))))

    def param(self, name: str, dtype: str, shape: Sequence[Dim]) -> str:
        """A free trained parameter (`param NAME: TYPE`), owned by no layer."""
        return self._add(Node(name, "param", (), Attrs(), TensorType(dtype, tuple(shape))))

    def constant(self, value: float, dtype: str = "f32") -> str:
        return self._add(Node(self._fresh("constant"), "constant", (), Attrs(value=float(value)),
                              TensorType(dtype, ())))

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Applies `op` to the values `inputs`; `name` names the layer of an op with params.
        Returns the node's id, which is its output 0; an op with several outputs has the
        others as `netc.ir.value_ref(id, k)` (see `outputs_of`)."""
        opdef = REGISTRY[op]
        types = [self._types[value] for value in inputs]
        applied = apply_op(opdef, bind_attrs(opdef, attrs), types)
        layer = None
        param_ids: list[str] = []
        if opdef.has_params:
            layer = name if name is not None else self._naming.layer(op)
            for spec in applied.params:
                param_ids.append(self._add(Node(
                    param_id(layer, spec.name), "param", (), Attrs(),
                    TensorType(applied.type.dtype, spec.shape), layer=layer)))
        # As in the front end, a layer's node is named by the layer.
        return self._add(Node(layer or self._fresh(op), op, (*inputs, *param_ids),
                              applied.attrs, applied.type, layer=layer,
                              extra_types=applied.extra_types))

    def outputs_of(self, node_id: str) -> tuple[str, ...]:
        """The values of every output of node `node_id`, output 0 (the id) first."""
        return next(node.values for node in self.nodes if node.id == node_id)

    def output(self, name: str, value: str) -> None:
        self.outputs.append((name, value))

    def build(self) -> Graph:
        graph = Graph(self.name, tuple(self.nodes), tuple(self.outputs))
        verify(graph)
        return graph
