"""Pictures of graphs (`netc graph`): DOT, Mermaid and SVG text."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from netc.graphviz import (
    GraphvizUnavailable,
    dot_string,
    format_for,
    mermaid_text,
    render_graph,
    write_graph,
)
from netc.ir import Graph
from netc.ops.builder import GraphBuilder
from netc.passes import run_pipeline

from .passes_testing import net

pytestmark = pytest.mark.unit

BLOCK = """
    y = conv2d(x, 4, kernel=3, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, 4, kernel=3, padding=1, bias=false) |> batchnorm
    output out = relu(y + x) |> global_avgpool |> flatten |> dense(3, name="head")
"""


def _optimized() -> Graph:
    return run_pipeline(net(BLOCK), 2).graph


def test_dot_source_stage() -> None:
    text = render_graph(net(BLOCK), "dot")
    assert text.startswith('digraph "t" {')
    assert "subgraph" not in text  # nothing is fused before optimisation
    assert 'label="conv2d_0\\nconv2d\\nf32[N, 4, 6, 6]"' in text
    assert 'label="x\\ninput\\nf32[N, 4, 6, 6]", shape=ellipse' in text
    assert 'label="output out\\nf32[N, 3]", shape=ellipse' in text
    assert "param" not in text and "running_mean" not in text


def test_dot_draws_fused_groups_as_clusters() -> None:
    text = render_graph(_optimized(), "dot")
    clusters = re.findall(r'subgraph (cluster_\d+) \{\n    label="(fused_\d+: \w+)";', text)
    assert [title for _, title in clusters] == ["fused_0: conv_epilogue",
                                                "fused_1: conv_epilogue"]
    # The residual edge from the input reaches the add inside the second cluster.
    second = text.split("subgraph cluster_")[2]
    add_box = re.search(r"(n\d+_1) \[label=\"add", second)
    assert add_box is not None
    assert f"n0 -> {add_box.group(1)};" in text


def test_mermaid_draws_fused_groups_as_subgraphs() -> None:
    text = render_graph(_optimized(), "mermaid")
    assert text.splitlines()[:4] == ["---", "title: t", "---", "flowchart TD"]
    assert text.count("subgraph ") == 2 and text.count("\n  end\n") == 2
    assert '["conv2d_0<br/>conv2d<br/>f32[N, 4, 6, 6]"]' in text
    assert re.search(r"n\d+_\d+ --> n\d+_\d+", text)


def test_user_text_is_escaped() -> None:
    assert dot_string('a "b" \\ <c>') == '"a \\"b\\" \\\\ <c>"'
    assert mermaid_text('a "b" <c> #1 & d') == "a #quot;b#quot; #lt;c#gt; #35;1 #amp; d"
    builder = GraphBuilder('evil "name" <script>')
    x = builder.input("x", "f32", ("N", 2))
    builder.output("y", builder.op("relu", x))
    graph = builder.build()
    assert render_graph(graph, "dot").startswith('digraph "evil \\"name\\" <script>" {')
    assert "title: evil #quot;name#quot; #lt;script#gt;" in render_graph(graph, "mermaid")


def test_formats_from_file_names(tmp_path: Path) -> None:
    assert format_for("net.mmd") == "mermaid" and format_for("net.gv") == "dot"
    assert format_for("net.svg") == "svg" and format_for("net.txt", "dot") == "dot"
    assert write_graph(net(BLOCK), tmp_path / "g.dot") == "dot"
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    with pytest.raises(ValueError, match="unknown graph format"):
        render_graph(net(BLOCK), "png")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_svg_through_graphviz() -> None:
    svg = render_graph(_optimized(), "svg")
    assert "<svg" in svg and "fused_1: conv_epilogue" in svg


def test_svg_without_graphviz_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizUnavailable, match="--format mermaid"):
        render_graph(net(BLOCK), "svg")
