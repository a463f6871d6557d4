"""Building IR graphs from Python, straight from the registry (no `.net` source needed).

`GraphBuilder` applies ops the way the front end does: it fills in attribute defaults, puts
them in the canonical form (`OpDef.normalize`), infers the output type and adds a layer's
parameters as `param` nodes named `<layer>.<param>`. It serves tests, `export_op`, and tools
that generate graphs; source spans and diagnostics are the front end's business, so errors here
are plain exceptions (`ShapeError` for shapes, `ValueError` for attributes).

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

from netc.ir import Attrs, Dim, Graph, Node, TensorType, verify
from netc.ops.registry import REGISTRY, OpDef


def _coerce(kind: str, value: Any) -> Any:
    if kind == "int_pair" and isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_bounds(opdef: OpDef, name: str, value: Any) -> None:
    spec = opdef.attr(name)
    assert spec is not None
    if spec.choices and value not in spec.choices:
        raise ValueError(f"`{opdef.name}` {name} must be one of {spec.choices}, got {value!r}")
    numbers = value if isinstance(value, tuple) else (value,)
    if spec.minimum is not None and any(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v < spec.minimum
            for v in numbers):
        raise ValueError(f"`{opdef.name}` {name} must be at least {spec.minimum}, got {value!r}")


def make_attrs(op: str, values: Mapping[str, Any], inputs: Sequence[TensorType]) -> Attrs:
    """The canonical attribute record of `op` applied to `inputs`, from Python values.

    Missing attributes take their defaults; `[h, w]` lists become tuples. Applying it to an
    already canonical record gives the same record.
    """
    opdef = REGISTRY[op]
    unknown = sorted(set(values) - {spec.name for spec in opdef.attrs})
    if unknown:
        raise ValueError(f"`{op}` has no attribute {', '.join(unknown)}")
    merged: dict[str, Any] = {}
    for spec in opdef.attrs:
        if spec.name not in values and spec.required:
            raise ValueError(f"`{op}` needs the attribute {spec.name}")
        merged[spec.name] = _coerce(spec.kind, values.get(spec.name, spec.default))
        _check_bounds(opdef, spec.name, merged[spec.name])
    return opdef.normalize(Attrs(merged), inputs)


class GraphBuilder:
    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.outputs: list[tuple[str, str]] = []
        self._types: dict[str, TensorType] = {}
        self._layer_counts: dict[str, int] = {}

    def _add(self, node: Node) -> str:
        if node.id in self._types:
            raise ValueError(f"node id {node.id!r} used twice")
        self.nodes.append(node)
        self._types[node.id] = node.type
        return node.id

    def _fresh(self, stem: str) -> str:
        index = len(self.nodes)
        while f"{stem}_{index}" in self._types:
            index += 1
        return f"{stem}_{index}"

    def type_of(self, value: str) -> TensorType:
        return self._types[value]

    def input(self, name: str, dtype: str, shape: Sequence[Dim]) -> str:
        return self._add(Node(name, "input", (), Attrs(), TensorType(dtype, tuple(shape))))

    def constant(self, value: float, dtype: str = "f32") -> str:
        return self._add(Node(self._fresh("const"), "constant", (), Attrs(value=float(value)),
                              TensorType(dtype, ())))

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Applies `op` to the values `inputs`; `name` names the layer of an op with params."""
        opdef = REGISTRY[op]
        types = [self._types[value] for value in inputs]
        record = make_attrs(op, attrs, types)
        result = opdef.infer(record, types)
        layer = None
        param_ids: list[str] = []
        if opdef.has_params:
            if name is None:
                count = self._layer_counts.get(op, 0)
                self._layer_counts[op] = count + 1
                name = f"{op}_{count}"
            layer = name
            for spec in opdef.params(record, types):
                param_id = self._add(Node(f"{layer}.{spec.name}", "param", (), Attrs(),
                                          TensorType(result.dtype, spec.shape), layer=layer))
                param_ids.append(param_id)
        # As in the front end, a layer's node is named by the layer.
        return self._add(Node(layer or self._fresh(op), op, (*inputs, *param_ids), record, result,
                              layer=layer))

    def output(self, name: str, value: str) -> None:
        self.outputs.append((name, value))

    def build(self) -> Graph:
        graph = Graph(self.name, tuple(self.nodes), tuple(self.outputs))
        verify(graph)
        return graph

