"""Helpers for Before/Expected tests of passes.

`expected_fusion` writes an expected fused graph from a list of groups with its own, simple
construction (not the passes' `make_fused`), so a test states *which* nodes form a kernel and
the structural comparison checks everything else the pass produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from netc.frontend import load_string
from netc.ir import Graph, Region
from netc.ops import verify
from netc.passes.pass_manager import Pass, PassContext, run_passes
from netc.passes.pipeline import PIPELINES


def net(body: str, inputs: str = "x: f32[N, 4, 6, 6]") -> Graph:
    """A network from its statements (one input, `x`, unless told otherwise)."""
    declared = "\n".join(f"    input {spec.strip()}" for spec in inputs.split(";"))
    statements = "\n".join(f"    {line.strip()}" for line in body.strip().splitlines())
    return load_string(f"network t {{\n{declared}\n{statements}\n}}\n", filename="t.net")


def run_one(graph: Graph, item: Pass) -> tuple[Graph, PassContext]:
    """`graph` after `item` alone (requirements not checked), verified."""
    context = PassContext()
    result = item.run(graph, context)
    verify(result)
    return result, context


def after(graph: Graph, level: int, *more: Pass) -> Graph:
    """`graph` after the -O`level` pipeline and then `more` passes, verified between passes."""
    result, _ = run_passes(graph, (*PIPELINES[level], *more), PassContext(), verify_each=True)
    return result


def apply(graph: Graph, *passes: Pass) -> Graph:
    """`graph` after `passes` in order (requirements not checked: the graph given is taken to
    satisfy them), verified after each."""
    for item in passes:
        graph, _ = run_one(graph, item)
    return graph


def nth(graph: Graph, op: str, index: int = 0) -> str:
    """The id of the `index`-th node with `op` (in graph order), fused bodies excluded."""
    return [n.id for n in graph.nodes if n.op == op][index]


def expected_fusion(graph: Graph, groups: Sequence[tuple[str, Sequence[str], str]]) -> Graph:
    """`graph` with each (kind, member ids in order, anchor id) group made one fused node."""
    nodes = list(graph.nodes)
    for number, (kind, members, anchor) in enumerate(groups):
        by_id = {n.id: n for n in nodes}
        outside: list[str] = []

        def ref(value: str, members: Sequence[str] = members, outside: list[str] = outside) -> str:
            if value in members:
                return value
            if value not in outside:
                outside.append(value)
            return Region.argument(outside.index(value))

        body = tuple(replace(by_id[m], inputs=tuple(ref(i) for i in by_id[m].inputs))
                     for m in members)
        last = by_id[members[-1]]
        fused = Region(body, anchor, kind).fused_node(f"expected_{number}", outside)
        rebuilt = []
        for node in nodes:
            if node.id == last.id:
                rebuilt.append(fused)
            elif node.id not in members:
                rebuilt.append(replace(node, inputs=tuple(
                    fused.id if i == last.id else i for i in node.inputs)))
        nodes = rebuilt
        graph = Graph(graph.name, tuple(nodes), tuple(
            (name, fused.id if value == last.id else value) for name, value in graph.outputs))
    verify(graph)
    return graph
