"""Pictures of a graph: Graphviz DOT, SVG (through Graphviz's `dot`) and Mermaid.

`netc graph MODEL [--stage source|optimized] -o FILE` draws the network before or after
optimisation. Every compute node is a box labelled with its layer (or node) name, op and
output type; inputs and outputs are ovals; parameters and scalar constants are left out (they
would double the picture and say little). A fused group is drawn as a cluster (a Mermaid
subgraph) holding its members, titled with its kind, so fusion is visible at a glance.

Identifiers in the output are made by netc (`n3`, `n3_1`, `cluster_3`); user text (network,
layer and input names) appears only inside quoted labels, escaped for the format. Mermaid
needs nothing installed; SVG needs Graphviz's `dot` on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netc.diagnostics import MissingDependency
from netc.ir import Graph, Node

FORMATS = ("dot", "svg", "mermaid")
SUFFIXES = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid"}


class GraphvizUnavailable(MissingDependency):
    """SVG was asked for but Graphviz's `dot` is not installed: this machine lacks a tool (the
    message says what to do), so the CLI reports it as exit 1."""


@dataclass(frozen=True)
class _Box:
    id: str
    label: tuple[str, ...]
    shape: str  # "box" or "oval"


@dataclass(frozen=True)
class _Cluster:
    id: str
    title: str
    boxes: tuple[_Box, ...]


@dataclass(frozen=True)
class _Picture:
    title: str
    items: tuple[_Box | _Cluster, ...]
    edges: tuple[tuple[str, str], ...]


def _label(node: Node) -> tuple[str, ...]:
    # Layers by name; other ops by op alone (their ids, `relu#3`, are netc's bookkeeping).
    return (node.layer, node.op, str(node.type)) if node.layer else (node.op, str(node.type))


def _picture(graph: Graph) -> _Picture:
    hidden = {n.id for n in graph.nodes if n.op in ("param", "constant")}
    shown: dict[str, str] = {}  # value id -> the box that produces it
    items: list[_Box | _Cluster] = []
    edges: list[tuple[str, str]] = []
    for index, node in enumerate(graph.nodes):
        if node.id in hidden:
            continue
        box_id = f"n{index}"
        if node.op == "input":
            items.append(_Box(box_id, (node.id, "input", str(node.type)), "oval"))
            shown[node.id] = box_id
            continue
        region = node.region
        if region is None:
            items.append(_Box(box_id, _label(node), "box"))
            edges.extend((shown[i], box_id) for i in node.inputs if i not in hidden)
            shown[node.id] = box_id
            continue
        inner_ids: dict[str, str] = {}
        boxes = []
        for position, inner in enumerate(region.members):
            inner_id = f"{box_id}_{position}"
            boxes.append(_Box(inner_id, _label(inner), "box"))
            for ref, value in zip(inner.inputs, region.graph_inputs(inner, node.inputs)):
                if region.argument_position(ref) is not None:  # reads the graph value
                    if value not in hidden:
                        edges.append((shown[value], inner_id))
                else:
                    edges.append((inner_ids[ref], inner_id))
            inner_ids[inner.id] = inner_id
        items.append(_Cluster(f"cluster_{index}", f"{node.id}: {region.kind}",
                              tuple(boxes)))
        shown[node.id] = boxes[-1].id
    for position, (name, value) in enumerate(graph.outputs):
        box_id = f"out{position}"
        items.append(_Box(box_id, (f"output {name}", str(graph[value].type)), "oval"))
        edges.append((shown[value], box_id))
    return _Picture(graph.name, tuple(items), tuple(dict.fromkeys(edges)))


# DOT --------------------------------------------------------------------------------------


def dot_string(text: str) -> str:
    """`text` as a DOT double-quoted string (whose `\\n` are line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_label(lines: tuple[str, ...]) -> str:
    return '"' + "\\n".join(dot_string(line)[1:-1] for line in lines) + '"'


def to_dot(graph: Graph) -> str:
    picture = _picture(graph)
    out = [f"digraph {dot_string(picture.title)} {{",
           "  rankdir=TB;",
           '  graph [fontname="Helvetica", fontsize=11];',
           '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
           '  edge [color="#555555"];']

    def box(item: _Box, indent: str) -> str:
        shape = ', shape=ellipse, style=""' if item.shape == "oval" else ""
        return f"{indent}{item.id} [label={_dot_label(item.label)}{shape}];"

    for item in picture.items:
        if isinstance(item, _Box):
            out.append(box(item, "  "))
        else:
            out.append(f"  subgraph {item.id} {{")
            out.append(f"    label={dot_string(item.title)};")
            out.append('    style="rounded,filled"; fillcolor="#eef3fb"; color="#4a72b0";')
            out.extend(box(inner, "    ") for inner in item.boxes)
            out.append("  }")
    out.extend(f"  {source} -> {target};" for source, target in picture.edges)
    out.append("}")
    return "\n".join(out) + "\n"


def to_svg(graph: Graph) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizUnavailable("SVG output needs Graphviz's `dot`, which is not installed "
                                  "(apt-get install graphviz, brew install graphviz); or write "
                                  "--format mermaid (no dependency) or --format dot")
    done = subprocess.run([dot, "-Tsvg"], input=to_dot(graph), capture_output=True, text=True,
                          check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`dot -Tsvg` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# Mermaid ----------------------------------------------------------------------------------

_MERMAID_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}


def mermaid_text(text: str) -> str:
    """`text` safe inside a quoted Mermaid label (entities for the characters it parses)."""
    return "".join(_MERMAID_ENTITIES.get(char, char) for char in text.replace("\n", " "))


def _mermaid_box(item: _Box) -> str:
    label = "<br/>".join(mermaid_text(line) for line in item.label)
    return f'{item.id}(["{label}"])' if item.shape == "oval" else f'{item.id}["{label}"]'


def to_mermaid(graph: Graph) -> str:
    picture = _picture(graph)
    out = ["---", f"title: {mermaid_text(picture.title)}", "---", "flowchart TD"]
    for item in picture.items:
        if isinstance(item, _Box):
            out.append(f"  {_mermaid_box(item)}")
        else:
            out.append(f'  subgraph {item.id}["{mermaid_text(item.title)}"]')
            out.extend(f"    {_mermaid_box(inner)}" for inner in item.boxes)
            out.append("  end")
    out.extend(f"  {source} --> {target}" for source, target in picture.edges)
    return "\n".join(out) + "\n"


_RENDERERS: dict[str, Callable[[Graph], str]] = {"dot": to_dot, "svg": to_svg,
                                                 "mermaid": to_mermaid}


def render_graph(graph: Graph, fmt: str = "dot") -> str:
    """The picture of `graph` in `fmt`: "dot", "svg" or "mermaid"."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown graph format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](graph)


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """`fmt` if given, else the format the file name's suffix asks for (default: SVG)."""
    if fmt is not None:
        return fmt
    return SUFFIXES.get(Path(path).suffix.lower(), "svg")


def write_graph(graph: Graph, path: str | Path, fmt: str | None = None) -> str:
    """Render `graph` into `path` (format from `fmt` or the suffix); returns the format."""
    chosen = format_for(path, fmt)
    Path(path).write_text(render_graph(graph, chosen))
    return chosen
