"""The graph IR: a typed, shape-checked dataflow graph in SSA form.

A `Graph` is a tuple of `Node`s in topological order. A node produces one tensor value, named
by its `id`; an op with several outputs (`Node.extra_types`) also produces `id:1`, `id:2`, ...
(`value_ref`), and other nodes and the graph's outputs read those like any value. Three kinds of node have no computation:

* `input`    a network input; `id` is the input's name from the `.net` file;
* `param`    a trained parameter; `id` is its full name (`basic_1.conv2d_0.weight`);
* `constant` a scalar constant (`x * 0.5`), `attrs["value"]`.

Every other node applies an op from the registry (`netc.ops`) to its `inputs`, which name
earlier nodes; a layer's parameters are ordinary inputs after its tensor inputs, so a backward
graph or a folding pass can treat them like any other value. A `fused` node (made by the
fusion passes, never written in source) holds a `Region`: the nodes one kernel computes. Nodes are frozen; passes build new
graphs. Dtypes are carried on every value and never assumed to be float32.

Shapes may start with a named dimension (the batch, e.g. `"N"`), known only at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from netc.diagnostics import Span

T = TypeVar("T")

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
    """An immutable, hashable attribute record; values are ints, floats, bools, strs or tuples
    (and, for a fused node, its one attribute `region`, a `Region`)."""

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
    extra_types: tuple[TensorType, ...] = ()
    """The types of outputs 1, 2, ... of an op with several outputs (none for the usual node
    of one); output 0 is `type`, read as `id`; output k is read as `value_ref(id, k)`."""

    @property
    def types(self) -> tuple[TensorType, ...]:
        """The type of every output, output 0 first."""
        return (self.type, *self.extra_types)

    @property
    def values(self) -> tuple[str, ...]:
        """The references to every output: `id`, then `id:1`, `id:2`, ..."""
        return tuple(value_ref(self.id, k) for k in range(1 + len(self.extra_types)))

    @property
    def region(self) -> Region | None:
        """The region a `fused` node computes (None for every other node)."""
        found = self.attrs.get("region") if self.op == "fused" else None
        return found if isinstance(found, Region) else None

    @property
    def members(self) -> tuple[Node, ...]:
        """The nodes this node's kernel computes: a fused node's region members, else itself."""
        region = self.region
        return region.members if region is not None else (self,)


OUTPUT_SEPARATOR = ":"
"""Separates a node's id from an output index in a value reference; never part of an id."""


def value_ref(node_id: str, output: int = 0) -> str:
    """The value reference to output `output` of node `node_id`: the id itself for output 0
    (so a node of one output is read by its id), `id:k` for output k."""
    return node_id if output == 0 else f"{node_id}{OUTPUT_SEPARATOR}{output}"


def split_value(ref: str) -> tuple[str, int]:
    """(node id, output index) of a value reference (`value_ref`'s inverse)."""
    node_id, separator, index = ref.rpartition(OUTPUT_SEPARATOR)
    if separator and index.isdigit():
        return node_id, int(index)
    return ref, 0


REGION_KINDS = ("conv_epilogue", "gemm_epilogue", "pool_epilogue", "reduction", "elementwise")
"""What a region's kernel looks like: an anchor's kernel with an epilogue (`conv_epilogue`,
`gemm_epilogue`, `pool_epilogue`), a reduction with a prologue and/or an epilogue
(`reduction`), or pointwise ops alone (`elementwise`)."""


@dataclass(frozen=True)
class Region:
    """A group of nodes computed by one kernel: the value of the `fused` node holding it (as
    its one attribute, `region`; `Node.region` reads it).

    `members` are nodes in topological order; the last one is the region's value. A member's
    input is either an *argument* (the k-th input of the fused node, written `$k`) or the id of
    an earlier member. Members keep the ids, spans and layers of the graph nodes they were, so
    every source layer can be traced to its kernel. The `anchor` is the member that shapes the
    kernel (the conv, the GEMM, the reduction; for an elementwise region, its last member): the
    members before it are its *prologue* (computed on the fly as the anchor reads its first
    input), those after it its *epilogue* (applied to each output element before the store).

    This class is the only code that knows how arguments are written: everything else asks it
    (`argument`, `argument_position`, `resolve`, `graph_inputs`, `reads`, `inlined`).
    """

    members: tuple[Node, ...]
    anchor_id: str
    kind: str

    # Arguments ----------------------------------------------------------------------------

    @staticmethod
    def argument(position: int) -> str:
        """The reference a member uses for the fused node's `position`-th input."""
        return f"${position}"

    @staticmethod
    def argument_position(ref: str) -> int | None:
        """k for a reference to the fused node's k-th input; None for a member's id."""
        return int(ref[1:]) if ref.startswith("$") else None

    @staticmethod
    def arguments(count: int) -> tuple[str, ...]:
        """References to the first `count` inputs: a node's inputs as a region of one."""
        return tuple(Region.argument(k) for k in range(count))

    # Shape of the region ------------------------------------------------------------------

    @property
    def anchor_index(self) -> int:
        for index, member in enumerate(self.members):
            if member.id == self.anchor_id:
                return index
        raise IRError(f"region anchor {self.anchor_id!r} is not one of its members")

    @property
    def anchor(self) -> Node:
        return self.members[self.anchor_index]

    @property
    def prologue(self) -> tuple[Node, ...]:
        """The members before the anchor (computed as the anchor reads its first input)."""
        return self.members[:self.anchor_index]

    @property
    def epilogue(self) -> tuple[Node, ...]:
        """The members after the anchor (applied to each element the anchor produces)."""
        return self.members[self.anchor_index + 1:]

    @property
    def result(self) -> Node:
        """The member whose value is the region's (and the fused node's) value."""
        return self.members[-1]

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(member.id for member in self.members)

    def member(self, member_id: str) -> Node:
        for member in self.members:
            if member.id == member_id:
                return member
        raise KeyError(member_id)

    def fused_node(self, node_id: str, arguments: Sequence[str]) -> Node:
        """The `fused` node computing this region from the graph values `arguments` (its
        inputs, in the order the members' `$k` read them); it takes its type from the result
        and its span and layer from the anchor."""
        anchor = self.anchor
        return Node(node_id, "fused", tuple(arguments), Attrs(region=self), self.result.type,
                    anchor.span, anchor.layer)

    # Resolving references -----------------------------------------------------------------

    def resolve(self, ref: str, arguments: Sequence[T], values: Mapping[str, T]) -> T:
        """What `ref` (a member's input) stands for: `arguments[k]` for the k-th argument (the
        fused node's inputs, their types or their arrays), else `values[ref]` (the earlier
        member's, as the caller computed it). Raises `IRError` for a reference to nothing."""
        position = self.argument_position(ref)
        if position is None:
            if ref not in values:
                raise IRError(f"region member uses {ref!r}, which is not an earlier member")
            return values[ref]
        if position >= len(arguments):
            raise IRError(f"region member uses {ref}, but the fused node has only "
                          f"{len(arguments)} inputs")
        return arguments[position]

    def graph_inputs(self, member: Node, arguments: Sequence[str]) -> tuple[str, ...]:
        """`member`'s inputs with each argument replaced by the graph value it is
        (`arguments` are the fused node's inputs); references to members stay."""
        return tuple(ref if (k := self.argument_position(ref)) is None else arguments[k]
                     for ref in member.inputs)

    def inlined(self, arguments: Sequence[str]) -> tuple[Node, ...]:
        """The members with every argument replaced by `arguments[k]` (to move the members
        into another region, or back into a graph)."""
        return tuple(replace(member, inputs=self.graph_inputs(member, arguments))
                     for member in self.members)

    def reads(self, member: Node, value: str, arguments: Sequence[str]) -> bool:
        """Whether `member` reads the graph value `value` (through an argument)."""
        return any(self.argument_position(ref) is not None and resolved == value
                   for ref, resolved in zip(member.inputs, self.graph_inputs(member, arguments)))

    def readers(self, ref: str) -> tuple[Node, ...]:
        """The members that read `ref` (an argument or a member's id)."""
        return tuple(member for member in self.members if ref in member.inputs)

    def arguments_read(self, members: Sequence[Node]) -> set[int]:
        """The positions of the arguments that any of `members` reads."""
        return {k for member in members for ref in member.inputs
                if (k := self.argument_position(ref)) is not None}

    def check(self, arity: int) -> None:
        """The region's structure: members, each defined once and used after it is defined,
        a known kind, the anchor among the members, arguments within the fused node's
        `arity`. Raises `IRError` naming the first broken invariant."""
        if not self.members:
            raise IRError("a region needs at least one member")
        if self.kind not in REGION_KINDS:
            raise IRError(f"unknown region kind {self.kind!r}")
        seen: set[str] = set()
        for member in self.members:
            if member.id in seen:
                raise IRError(f"region member {member.id!r} defined twice")
            if member.op in (*SOURCE_OPS, "fused") or member.region is not None:
                raise IRError(f"region member {member.id} has op {member.op!r}, which cannot be "
                              "inside a region")
            if member.extra_types:
                raise IRError(f"region member {member.id} has several outputs, which a region "
                              "cannot hold (yet)")
            for ref in member.inputs:
                position = self.argument_position(ref)
                if position is None and ref not in seen:
                    raise IRError(f"region member {member.id} uses {ref!r}, which is not an "
                                  "earlier member")
                if position is not None and position >= arity:
                    raise IRError(f"region member {member.id} uses {ref}, but the fused node "
                                  f"has only {arity} inputs")
            seen.add(member.id)
        if self.anchor_id not in seen:
            raise IRError(f"region anchor {self.anchor_id!r} is not one of its members")


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, str], ...]
    """(output name, value reference: a node id, or `id:k`) in declaration order."""
    _index: dict[str, Node] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update((node.id, node) for node in self.nodes)

    def __getitem__(self, node_id: str) -> Node:
        return self._index[node_id]

    def producer(self, ref: str) -> Node:
        """The node that computes the value `ref` (an id, or `id:k` for output k)."""
        return self._index[split_value(ref)[0]]

    def value_node(self, ref: str) -> Node:
        """The node standing for the value `ref`, for code that reads an operand's id, type
        and op: the producer itself for output 0; for output k, the producer as if it had
        only that output (id `ref`, type output k's)."""
        node_id, output = split_value(ref)
        node = self._index[node_id]
        if output == 0:
            return node
        return replace(node, id=ref, type=self.value_type(ref), extra_types=())

    def value_type(self, ref: str) -> TensorType:
        """The type of the value `ref`: output k's type for `id:k`."""
        node_id, output = split_value(ref)
        types = self._index[node_id].types
        if output >= len(types):
            raise KeyError(ref)
        return types[output]

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
        """For each node id, the nodes that read any of its outputs (a node reading two of
        them, or one twice, is listed once per read)."""
        found: dict[str, list[Node]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for used in node.inputs:
                found[split_value(used)[0]].append(node)
        return found

    def batch_dims(self) -> tuple[str, ...]:
        names: list[str] = []
        for node in self.inputs:
            names.extend(d for d in node.type.symbolic if d not in names)
        return tuple(names)


class IRError(Exception):
    """A broken invariant of the IR: always a bug in netc, never the user's input."""


def verify(graph: Graph,
           node_types: Callable[[Node, list[TensorType]], tuple[TensorType, ...] | None]) -> None:
    """Check the IR's invariants; raise `IRError` naming the first broken one. `node_types`
    gives a compute node's output types from its inputs' types (None for an op it does not
    know): the op registry's rule, which `netc.ops.verify` passes in, so that the IR does not
    depend on the op table."""
    seen: dict[str, Node] = {}
    values: dict[str, TensorType] = {}
    for node in graph.nodes:
        if node.id in seen or node.id in values:
            raise IRError(f"node id {node.id!r} defined twice")
        if OUTPUT_SEPARATOR in node.id:
            raise IRError(f"node id {node.id!r} holds {OUTPUT_SEPARATOR!r}, which separates "
                          "an id from an output index")
        for used in node.inputs:
            if used not in values:
                raise IRError(f"{node.id} ({node.op}) uses {used!r} before it is defined")
        if node.op in SOURCE_OPS:
            if node.inputs:
                raise IRError(f"{node.id}: a {node.op} node has no inputs")
            if node.extra_types:
                raise IRError(f"{node.id}: a {node.op} node has one output")
        else:
            if node.op == "fused":
                region = node.region
                if region is None:
                    raise IRError(f"{node.id}: a fused node without a region")
                try:
                    region.check(len(node.inputs))
                except IRError as error:
                    raise IRError(f"{node.id} (fused): {error}") from None
            expected = node_types(node, [values[i] for i in node.inputs])
            if expected is None:
                raise IRError(f"{node.id}: unknown op {node.op!r}")
            if expected != node.types:
                raise IRError(f"{node.id} ({node.op}): type {_format_types(node.types)} but its "
                              f"inputs give {_format_types(expected)}")
        seen[node.id] = node
        values.update(zip(node.values, node.types))
    names = [name for name, _ in graph.outputs]
    if not names:
        raise IRError("graph has no outputs")
    if len(set(names)) != len(names):
        raise IRError("duplicate output names")
    for name, ref in graph.outputs:
        if ref not in values:
            raise IRError(f"output {name} refers to unknown value {ref!r}")


def _format_types(types: tuple[TensorType, ...]) -> str:
    """`f32[N, 8]` for one output; `(f32[N, 8], f32[8])` for several."""
    return str(types[0]) if len(types) == 1 else "(" + ", ".join(map(str, types)) + ")"


def _format_attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_attr(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _format_node(node: Node, indent: str) -> list[str]:
    """One line for `node`; a fused node's line names its region's kind and anchor and is
    followed by the members, indented, in braces (they name the node's inputs `$0`, `$1`,
    ...)."""
    region = node.region
    shown = {k: v for k, v in node.attrs.items() if not isinstance(v, Region)}
    if region is not None:
        shown = {"anchor": region.anchor_id, "kind": region.kind, **shown}
    attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in shown.items())
    args = ", ".join(i if Region.argument_position(i) is not None else f"%{i}"
                     for i in node.inputs)
    call = node.op + "(" + ", ".join(p for p in (args, attrs) if p) + ")"
    where = f"  # {node.span}" if node.span else ""
    layer = f"  [{node.layer}]" if node.layer and node.op != "param" else ""
    opening = " {" if region is not None else ""
    lines = [f"{indent}%{node.id}: {_format_types(node.types)} = {call}{opening}{layer}{where}"]
    if region is not None:
        for member in region.members:
            lines.extend(_format_node(member, indent + "    "))
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
