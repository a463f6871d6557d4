"""Small networks shared by unit tests, written in the language itself."""

from __future__ import annotations

from netc.frontend import load_string
from netc.ir import Graph

MLP = """
network mlp {
    input x: f32[N, 12]
    h = dense(x, 8, name="hidden") |> relu
    output y = dense(h, 4)
}
"""


def mlp_graph() -> Graph:
    return load_string(MLP, filename="mlp.net")
