"""The graph IR: a typed, shape-checked dataflow graph in SSA form.

A `Graph` is a tuple of `Node`s in topological order. Every node produces one tensor value,
named by its `id`. Three kinds of node have no computation:

* `input`    a network input; `id` is the input's name from the `.net` file;
* `param`    a trained parameter; `id` is its full name (`basic_1.conv2d_0.weight`);
* `constant` a scalar constant (`x * 0.5`), `attrs["value"]`.

Every other node applies an op from the registry (`netc.ops`) to its `inputs`, which name
earlier nodes; a layer's parameters are ordinary inputs after its tensor inputs, so a backward
graph or a folding pass can treat them like any other value. Nodes are frozen; passes build new
graphs. Dtypes are carried on every value and never assumed to be float32.

Shapes may start with a named dimension (the batch, e.g. `"N"`), known only at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from netc.diagnostics import Span

Dim = int | str
FLOAT_DTYPES = ("f32", "f16", "bf16")
INTEGER_DTYPES = ("i32", "i64")
ALL_DTYPES = (*FLOAT_DTYPES, *INTEGER_DTYPES, "bool")
"""Every dtype a value of the IR may have (integers and booleans for indices, token ids and
masks: the ops that take them come with language version 2)."""
DTYPES = FLOAT_DTYPES
"""The dtypes a `.net` file of language version 1 may declare."""
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "i64": 8, "bool": 1}
SOURCE_OPS = ("input", "param", "constant")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in ALL_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def symbolic(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def concrete(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with every named dimension replaced by its size."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def numel(self, sizes: Mapping[str, int] | None = None) -> int:
        count = 1
        for d in self.concrete(sizes or _ONES(self.symbolic)):
            count *= d
        return count

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def _ONES(names: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(names, 1)


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Attrs(Mapping[str, Any]):
    """An immutable, hashable attribute record; values are ints, floats, bools, strs or tuples."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, **kwargs: Any):
        merged = dict(items or {}, **kwargs)
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(merged.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self._items == other._items

    def replace(self, **changes: Any) -> Attrs:
        return Attrs(dict(self._items, **changes))

    def __repr__(self) -> str:
        return "Attrs(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"


@dataclass(frozen=True)
class Node:
    id: str
    op: str
    inputs: tuple[str, ...]
    attrs: Attrs
    type: TensorType
    span: Span | None = None
    layer: str | None = None
    """The layer this node belongs to (`basic_1.conv2d_0`), for layers and their params."""


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, str], ...]
    """(output name, node id) in declaration order."""
    _index: dict[str, Node] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update((node.id, node) for node in self.nodes)

    def __getitem__(self, node_id: str) -> Node:
        return self._index[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    @property
    def inputs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "input")

    @property
    def params(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "param")

    @property
    def compute_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op not in SOURCE_OPS)

    def users(self) -> dict[str, list[Node]]:
        found: dict[str, list[Node]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for used in node.inputs:
                found[used].append(node)
        return found

    def batch_dims(self) -> tuple[str, ...]:
        names: list[str] = []
        for node in self.inputs:
            names.extend(d for d in node.type.symbolic if d not in names)
        return tuple(names)


class IRError(Exception):
    """A broken invariant of the IR: always a bug in netc, never the user's input."""


def verify(graph: Graph,
           node_type: Callable[[Node, list[TensorType]], TensorType | None]) -> None:
    """Check the IR's invariants; raise `IRError` naming the first broken one. `node_type`
    gives a compute node's type from its inputs' types (None for an op it does not know): the
    op registry's rule, which `netc.ops.verify` passes in, so that the IR does not depend on
    the op table."""
    seen: dict[str, Node] = {}
    for node in graph.nodes:
        if node.id in seen:
            raise IRError(f"node id {node.id!r} defined twice")
        for used in node.inputs:
            if used not in seen:
                raise IRError(f"{node.id} ({node.op}) uses {used!r} before it is defined")
        if node.op in SOURCE_OPS:
            if node.inputs:
                raise IRError(f"{node.id}: a {node.op} node has no inputs")
        else:
            expected = node_type(node, [seen[i].type for i in node.inputs])
            if expected is None:
                raise IRError(f"{node.id}: unknown op {node.op!r}")
            if expected != node.type:
                raise IRError(f"{node.id} ({node.op}): type {node.type} but its inputs give {expected}")
        seen[node.id] = node
    names = [name for name, _ in graph.outputs]
    if not names:
        raise IRError("graph has no outputs")
    if len(set(names)) != len(names):
        raise IRError("duplicate output names")
    for name, node_id in graph.outputs:
        if node_id not in seen:
            raise IRError(f"output {name} refers to unknown node {node_id!r}")


def _format_attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_attr(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _is_body(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, Node) for v in value)


def _format_node(node: Node, indent: str) -> list[str]:
    """One line for `node`; a node holding a nested body (a fused group, whose body nodes name
    the group's inputs `$0`, `$1`, ...) is followed by that body, indented, in braces."""
    bodies = [(k, v) for k, v in node.attrs.items() if _is_body(v)]
    attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in node.attrs.items() if not _is_body(v))
    args = ", ".join(i if i.startswith("$") else f"%{i}" for i in node.inputs)
    call = node.op + "(" + ", ".join(p for p in (args, attrs) if p) + ")"
    where = f"  # {node.span}" if node.span else ""
    layer = f"  [{node.layer}]" if node.layer and node.op != "param" else ""
    opening = " {" if bodies else ""
    lines = [f"{indent}%{node.id}: {node.type} = {call}{opening}{layer}{where}"]
    for name, body in bodies:
        if len(bodies) > 1:
            lines.append(f"{indent}    # {name}")
        for inner in body:
            lines.extend(_format_node(inner, indent + "    "))
    if bodies:
        lines.append(f"{indent}}}")
    return lines


def print_graph(graph: Graph) -> str:
    """A deterministic, readable listing of the graph, one node a line."""
    lines = [f"graph {graph.name} {{"]
    for node in graph.nodes:
        lines.extend(_format_node(node, "  "))
    for name, node_id in graph.outputs:
        lines.append(f"  output {name} = %{node_id}")
    lines.append("}")
    return "\n".join(lines)
