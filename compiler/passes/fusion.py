"""What the fusion passes share: which ops fuse, when a group is legal, how a group is built.

The rules (also in `docs/passes.md`):

* A *pointwise* op computes output element i from element i of each (broadcast) input and at
  most per-channel parameters: every op of registry role `pointwise` (activations, add, sub,
  mul, batchnorm with running statistics) with a CUDA expression or a decomposition, which the
  code generator inlines (`OpDef.is_pointwise`). Only pointwise ops join an anchor or each
  other.
* An *anchor* is an op whose kernel applies an epilogue: its role names the group kind
  (`GROUP_KINDS`). Reductions (roles `row_reduction` and `reduction`) also take a prologue.
* Every member of a group has the type of the group's value: a kernel runs one thread per
  output element and computes each member once for it. A value of a smaller shape (the
  [N, C, 1, 1] of a squeeze-excite gate) would be recomputed for every element it is broadcast
  to, so it stays out; it may still be an *input* of the group, broadcast when read.
* Only the group's last node may be used outside the group (or be a network output): an
  intermediate read elsewhere would have to be written out or recomputed, so fusion stops
  there. A group whose other uses all lie inside it (x * sigmoid(x)) is fine.
* A group never depends on itself through an outside node (no cycles after fusion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from netc.ir import Graph, Node, Region
from netc.ops import REGISTRY
from netc.passes.pass_manager import PassContext
from netc.passes.rewrite import all_ids, output_ids, rebuild

GROUP_KINDS = {"conv": "conv_epilogue", "gemm": "gemm_epilogue", "pool": "pool_epilogue",
               "row_reduction": "reduction", "reduction": "reduction"}
"""The fused kind of a group anchored at an op of each role; other roles anchor no group."""
ROW_LIMIT = 4096
"""The longest row (elements along the reduced axis) a softmax/layernorm kernel stages in
on-chip memory. A prologue is fused into a row-wise reduction only up to this length, so that
it is computed once per element; over it, the kernel would re-read (and recompute) the row."""


def role(node: Node) -> str | None:
    """The registry role of `node`'s op (None for input, param and constant nodes)."""
    opdef = REGISTRY.get(node.op)
    return opdef.role if opdef is not None else None


def is_pointwise(node: Node) -> bool:
    opdef = REGISTRY.get(node.op)
    return opdef is not None and opdef.is_pointwise


def is_reduction(node: Node) -> bool:
    """Whether `node` reduces its first input (and so may take a prologue)."""
    return role(node) in ("row_reduction", "reduction")


def kernel_kind(node: Node) -> str | None:
    """The fused kind a group anchored at `node` has (None: `node` anchors no group)."""
    found = role(node)
    return GROUP_KINDS.get(found) if found is not None else None


def anchor_of(node: Node) -> Node:
    """The node that shapes `node`'s kernel: itself, or a fused node's anchor member."""
    region = node.region
    return node if region is None else region.anchor


def row_length(node: Node, input_shape: Sequence[int | str]) -> int | None:
    """Elements along the axis a row-wise reduction reduces (None if not a known size)."""
    reduced_axis = REGISTRY[node.op].reduced_axis
    if reduced_axis is None:
        raise ValueError(f"`{node.op}` is no row-wise reduction")
    size = input_shape[reduced_axis(node.attrs, len(input_shape))]
    return size if isinstance(size, int) else None


@dataclass(frozen=True)
class Group:
    members: frozenset[str]
    kind: str
    anchor: str
    """Id of the anchor node (or, for a fused member, of its anchor body node)."""


class Grouping:
    """One graph's use lists and positions, and the groups chosen in it so far."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.position = {n.id: i for i, n in enumerate(graph.nodes)}
        self.users = {k: [u.id for u in v] for k, v in graph.users().items()}
        self.outputs = output_ids(graph)
        self.taken: set[str] = set()
        self.groups: list[Group] = []

    def add(self, group: Group) -> None:
        self.taken |= group.members
        self.groups.append(group)

    def result(self, members: Iterable[str]) -> str:
        return max(members, key=self.position.__getitem__)

    def _depends_on(self, value: str, members: set[str], floor: int) -> bool:
        """Whether `value` depends on a member; nodes before position `floor` cannot."""
        pending, seen = [value], set()
        while pending:
            node_id = pending.pop()
            if node_id in members:
                return True
            if node_id in seen or self.position[node_id] < floor:
                continue
            seen.add(node_id)
            pending.extend(self.graph[node_id].inputs)
        return False

    def is_valid(self, members: set[str]) -> bool:
        """Only the last member escapes (users outside, or an output); no cycle through an
        outside node."""
        result = self.result(members)
        for member in members:
            if member != result and (member in self.outputs or
                                     any(u not in members for u in self.users[member])):
                return False
        floor = min(self.position[m] for m in members)
        outside = {i for m in members for i in self.graph[m].inputs if i not in members}
        return not any(self._depends_on(value, members, floor) for value in outside)

    def forward_closure(self, seed: str, can_join: Callable[[Node], bool]) -> set[str]:
        """`seed` and every node reachable from it through users that may join."""
        closure, pending = {seed}, [seed]
        while pending:
            for user in self.users[pending.pop()]:
                if user not in closure and user not in self.taken and can_join(self.graph[user]):
                    closure.add(user)
                    pending.append(user)
        return closure

    def best_group(self, closure: set[str], seed: str) -> set[str]:
        """The largest legal group within `closure` that holds `seed`: for each candidate last
        node, the members of the closure on its paths (so nothing dangles), if legal."""
        order = sorted(closure, key=self.position.__getitem__)
        reaches: dict[str, set[str]] = {}
        for node_id in order:
            reaches[node_id] = {node_id}.union(
                *(reaches[i] for i in self.graph[node_id].inputs if i in closure))
        best = {seed}
        for node_id in order:
            candidate = reaches[node_id]
            if seed in candidate and len(candidate) >= len(best) and self.is_valid(candidate):
                best = candidate
        return best

    def absorb_producers(self, members: set[str], can_join: Callable[[Node], bool]) -> set[str]:
        """Pulls in producers of the group's inputs that may join and are used only inside the
        group, as long as the group stays legal."""
        grown = True
        while grown:
            grown = False
            for member in sorted(members, key=self.position.__getitem__):
                for value in self.graph[member].inputs:
                    if (value in members or value in self.taken or value in self.outputs
                            or not can_join(self.graph[value])
                            or any(u not in members for u in self.users[value])):
                        continue
                    candidate = members | {value}
                    if self.is_valid(candidate):
                        members = candidate
                        grown = True
        return members


def make_fused(graph: Graph, group: Group, node_id: str) -> Node:
    """The fused node computing `group` (members in graph order; fused members inlined)."""
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    ordered = sorted(group.members, key=position.__getitem__)
    outside: list[str] = []
    refs: dict[str, str] = {}
    inlined: dict[str, str] = {}  # a fused member's id -> its last body node's id
    body: list[Node] = []

    def ref(value: str) -> str:
        if value in inlined:
            return inlined[value]
        if value in group.members:
            return value
        if value not in refs:
            refs[value] = Region.argument(len(outside))
            outside.append(value)
        return refs[value]

    for member_id in ordered:
        member = graph[member_id]
        region = member.region
        if region is not None:
            body.extend(region.inlined([ref(i) for i in member.inputs]))
            inlined[member_id] = body[-1].id
        else:
            body.append(replace(member, inputs=tuple(ref(i) for i in member.inputs)))
    return Region(tuple(body), group.anchor, group.kind).fused_node(node_id, outside)


def apply_groups(graph: Graph, groups: Sequence[Group], context: PassContext) -> Graph:
    """`graph` with each group replaced by one fused node at its last member's place."""
    if not groups:
        return graph
    taken = all_ids(graph)
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    forward: dict[str, str] = {}
    replaced: dict[str, Node] = {}
    drop: set[str] = set()
    counter = 0
    for group in groups:
        while f"fused_{counter}" in taken:
            counter += 1
        node_id = f"fused_{counter}"
        taken.add(node_id)
        result = max(group.members, key=position.__getitem__)
        replaced[result] = make_fused(graph, group, node_id)
        forward[result] = node_id
        drop |= group.members - {result}
        for member in group.members:
            if graph[member].op == "fused":  # merged into the new group
                context.moved(member, node_id)
    return rebuild(graph, forward=forward, drop=drop, replace_nodes=replaced)


def count_ops(graph: Graph, groups: Sequence[Group]) -> int:
    """How many unfused ops the groups hold (a fused member counts its body)."""
    return sum(len(graph[m].members) for group in groups for m in group.members)


# Explaining ---------------------------------------------------------------------------------


def _layer_name(node: Node) -> str:
    return node.layer or node.id


def why_not_fused(graph: Graph, node: Node) -> str:
    """Why the -O2 pipeline left `node` (of the optimised `graph`) as a kernel of its own: the
    fusion rule that kept it apart, in words (`netc explain` shows it per layer). It lives
    beside the rules it explains, so that explaining never re-derives them elsewhere."""
    users = graph.users()[node.id]
    outputs = {value for _, value in graph.outputs}
    anchors = kernel_kind(node) is not None
    if node.op in ("transpose", "concat"):
        return f"not fused: `{node.op}` is a layout kernel, which fusion does not take (yet)"
    if not anchors and not is_pointwise(node):
        return f"not fused: `{node.op}` is not pointwise and anchors no fused kernel"
    if len(users) > 1:
        return f"not fused: its output is used by {len(users)} ops"
    if node.id in outputs and users:
        return "not fused: it is a network output that another op also reads"
    if not users:
        return ("not fused: nothing follows it (a network output)" if anchors else
                "not fused: a network output with no pointwise neighbour of its shape")
    user = users[0]
    region = user.region
    if region is not None:
        readers = [m for m in region.members if region.reads(m, node.id, user.inputs)]
        taken = next((m for m in readers if is_pointwise(m)), None)
        anchor = region.anchor
        if taken is not None and anchor.id != taken.id:
            return (f"not fused: the {region.kind.replace('_', ' ')} kernel of "
                    f"`{_layer_name(anchor)}` took its user `{_layer_name(taken)}` first (anchors take "
                    "pointwise ops in graph order)")
    if REGISTRY[user.op].is_view:
        return (f"not fused: its only user `{_layer_name(user)}` is a {user.op}, and fusion does not "
                "cross views (yet)")
    if not is_pointwise(user):
        return f"not fused: its only user `{_layer_name(user)}` ({'+'.join(m.op for m in user.members)}) is not pointwise"
    if user.type != node.type:
        return (f"not fused: its user `{_layer_name(user)}` has type {user.type}, not {node.type} "
                "(a broadcast value would be recomputed)")
    return "not fused: one value leaves a group, and no group may depend on itself"
