"""Structural equality of graphs, for Before/Expected tests of passes.

Two graphs are structurally equal when their outputs (by name) are computed the same way:
nodes are matched by what they are and what they read, not by id or position, so an
expected graph can be written without guessing the ids a pass makes up. Network inputs and
parameters must match by name (they are the network's interface and the weights' keys);
constants by value; compute nodes by op, attributes, type and layer; fused nodes also by their
regions, compared the same way. The matching must be one to one (a pass that merged two equal
nodes differs from a graph that computes them twice), and a node that no output needs (dead
code) is a difference too. Spans are not compared.
"""

from __future__ import annotations

from netc.ir import Graph, Node, Region


class _Mismatch(Exception):
    pass


class _Matcher:
    def __init__(self, actual: dict[str, Node], expected: dict[str, Node]):
        self.actual = actual
        self.expected = expected
        self.pairs: dict[str, str] = {}
        self.reverse: dict[str, str] = {}

    def match(self, left: str, right: str, where: str) -> None:
        if left in self.pairs or right in self.reverse:
            if self.pairs.get(left) != right or self.reverse.get(right) != left:
                raise _Mismatch(f"{where}: actual %{left} and expected %{right} are matched "
                                "to different nodes elsewhere (a value computed once in one "
                                "graph is computed twice in the other)")
            return
        self.pairs[left] = right
        self.reverse[right] = left
        a, b = self.actual[left], self.expected[right]
        here = f"{where} <- %{left} ({a.op})"
        if a.op != b.op:
            raise _Mismatch(f"{here}: op {a.op}, expected {b.op}")
        if a.op in ("input", "param") and a.id != b.id:
            raise _Mismatch(f"{here}: named {a.id!r}, expected {b.id!r}")
        if a.type != b.type:
            raise _Mismatch(f"{here}: type {a.type}, expected {b.type}")
        if a.layer != b.layer:
            raise _Mismatch(f"{here}: layer {a.layer!r}, expected {b.layer!r}")
        if a.op == "fused":
            _compare_fused(a, b, here)
        elif a.attrs != b.attrs:
            raise _Mismatch(f"{here}: attributes {a.attrs!r}, expected {b.attrs!r}")
        if len(a.inputs) != len(b.inputs):
            raise _Mismatch(f"{here}: {len(a.inputs)} inputs, expected {len(b.inputs)}")
        for i, (x, y) in enumerate(zip(a.inputs, b.inputs)):
            self._match_ref(x, y, f"{here} input {i}")

    def _match_ref(self, left: str, right: str, where: str) -> None:
        left_position = Region.argument_position(left)
        right_position = Region.argument_position(right)
        if left_position is not None or right_position is not None:
            if left_position != right_position:
                raise _Mismatch(f"{where}: reads {left}, expected {right}")
            return
        self.match(left, right, where)


def _compare_fused(a: Node, b: Node, where: str) -> None:
    region_a, region_b = a.region, b.region
    if region_a is None or region_b is None:
        raise _Mismatch(f"{where}: a fused node without a region")
    if region_a.kind != region_b.kind:
        raise _Mismatch(f"{where}: kind {region_a.kind!r}, expected {region_b.kind!r}")
    members_a = {n.id: n for n in region_a.members}
    members_b = {n.id: n for n in region_b.members}
    if len(members_a) != len(members_b):
        raise _Mismatch(f"{where}: a region of {len(members_a)} members, expected "
                        f"{len(members_b)}")
    inner = _Matcher(members_a, members_b)
    inner.match(region_a.result.id, region_b.result.id, f"{where} region")
    if len(inner.pairs) != len(members_a):
        raise _Mismatch(f"{where}: members that the region's value does not need")
    if inner.pairs.get(region_a.anchor_id) != region_b.anchor_id:
        raise _Mismatch(f"{where}: anchored at %{region_a.anchor_id}, expected the node "
                        f"matching %{region_b.anchor_id}")


def structural_diff(actual: Graph, expected: Graph) -> str | None:
    """None if the graphs are structurally equal, else the first difference, in words."""
    if [name for name, _ in actual.outputs] != [name for name, _ in expected.outputs]:
        return (f"outputs {[n for n, _ in actual.outputs]}, expected "
                f"{[n for n, _ in expected.outputs]}")
    a_inputs = [(n.id, n.type) for n in actual.inputs]
    b_inputs = [(n.id, n.type) for n in expected.inputs]
    if a_inputs != b_inputs:
        return f"inputs {a_inputs}, expected {b_inputs}"
    matcher = _Matcher({n.id: n for n in actual.nodes}, {n.id: n for n in expected.nodes})
    try:
        for (name, left), (_, right) in zip(actual.outputs, expected.outputs):
            matcher.match(left, right, f"output {name}")
    except _Mismatch as exc:
        return str(exc)
    extra = [n.id for n in actual.nodes if n.id not in matcher.pairs and n.op != "input"]
    missing = [n.id for n in expected.nodes if n.id not in matcher.reverse and n.op != "input"]
    if extra:
        return f"nodes no output needs in the actual graph: {', '.join(extra)}"
    if missing:
        return f"nodes no output needs in the expected graph: {', '.join(missing)}"
    return None


def assert_structurally_equal(actual: Graph, expected: Graph) -> None:
    """Raise AssertionError with the first difference (and both graphs printed)."""
    from netc.ir import print_graph

    difference = structural_diff(actual, expected)
    if difference is not None:
        raise AssertionError(f"{difference}\n\nactual:\n{print_graph(actual)}\n\n"
                             f"expected:\n{print_graph(expected)}")
