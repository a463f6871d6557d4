"""Named dimensions in op attributes: `pos[:, :T]` (a `slice` ending at a dimension name) and
`arange(T)`, on the reference interpreter (against PyTorch), in ONNX export (onnxruntime), and
what the CUDA backend refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from netc.cli import main
from netc.codegen.emit import generate
from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Graph
from netc.onnx.export import export_graph
from netc.reference import run_reference
from netc.weights import init_weights, save_weights

pytestmark = pytest.mark.unit

POSITIONS = """\
network n {
    input x: f32[N, T, 16]
    param pos: f32[1, 40, 16] = normal(std=0.02)
    output y = x + pos[:, :T]
    output steps = arange(T)
}
"""


def compile_text(text: str) -> Graph:
    return load_string(text, "t.net")


def codes(text: str) -> list[str]:
    with pytest.raises(CompileError) as caught:
        compile_text(text)
    return [d.code for d in caught.value.diagnostics]


def onnx_outputs(graph: Graph, weights: dict[str, np.ndarray],
                 inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(export_graph(graph, weights).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def test_a_slice_ending_at_a_named_dimension_has_that_length() -> None:
    graph = compile_text(POSITIONS)
    (node,) = [n for n in graph.compute_nodes if n.op == "slice"]
    assert node.attrs["ends"] == ("T",) and node.type.shape == (1, "T", 16)
    assert graph["arange#0"].type.shape == ("T",)


@pytest.mark.parametrize("length", [1, 5, 33, 40])
def test_positions_and_arange_match_torch_on_the_reference_and_onnx(length: int) -> None:
    graph = compile_text(POSITIONS)
    weights = init_weights(graph, seed=1)
    x = np.random.default_rng(length).standard_normal((2, length, 16)).astype(np.float32)
    pos = torch.from_numpy(weights["pos"])
    expected = {"y": (torch.from_numpy(x) + pos[:, :length]).numpy(),
                "steps": torch.arange(length).numpy()}
    for outputs in (run_reference(graph, weights, {"x": x}),
                    onnx_outputs(graph, weights, {"x": x})):
        assert outputs["steps"].dtype == np.int64
        for name, value in expected.items():
            np.testing.assert_array_equal(outputs[name], value)


def test_a_named_dimension_beyond_the_sliced_length_is_reported() -> None:
    graph = compile_text(POSITIONS)
    x = np.zeros((1, 41, 16), np.float32)
    with pytest.raises(CompileError) as caught:
        run_reference(graph, init_weights(graph, seed=0), {"x": x})
    (problem,) = caught.value.diagnostics
    assert problem.code == "E0237" and "T=41" in problem.message
    assert "[1, 40, 16], not [1, 41, 16]" in problem.message


def test_the_cli_reports_a_named_dimension_too_large(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "n.net").write_text(POSITIONS)
    save_weights(init_weights(compile_text(POSITIONS), seed=0), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.zeros((1, 50, 16), np.float32))
    status = main(["run", str(tmp_path / "n.net"), "--weights", str(tmp_path / "w.safetensors"),
                   "--input", f"x={tmp_path / 'x.npy'}", "--backend", "reference"])
    assert status == 1 and "E0237" in capsys.readouterr().err


@pytest.mark.parametrize("index", ["pos[:, 1:T]", "pos[:, :T:2]", "x[:, :T]"])
def test_what_a_named_end_cannot_be_is_e0236(index: str) -> None:
    assert codes(POSITIONS.replace("pos[:, :T]", index)) == ["E0236"]


@pytest.mark.parametrize("call", ['arange("T")', 'arange("M")', 'reshape(x, ["T", 16])'])
def test_a_dimension_is_named_by_a_name_not_a_string(call: str) -> None:
    assert codes(POSITIONS.replace("arange(T)", call)) == ["E0205"]


def test_cuda_bounds_a_slice_ending_at_a_named_dimension() -> None:
    # The kernel reads `[:N]` of the parameter: N may not pass its length, checked at run time.
    graph = compile_text("""network n {
    input x: f32[N, 16]
    param pos: f32[64, 16]
    output y = x + pos[:N]
}
""")
    ((dim, largest, why),) = generate(graph).bounds
    assert (dim, largest) == ("N", 64) and "[:N]" in why and "t.net:4" in why


def test_expand_takes_a_named_dimension_as_a_size() -> None:
    # torch.cat([class_token.expand(N, -1, -1), x], dim=1), as torchvision's ViT writes it.
    graph = compile_text("""network n {
    input x: f32[N, 4, 8]
    param cls: f32[1, 1, 8]
    output y = concat(expand(cls, [N, -1, -1]), x, axis=1)
}
""")
    assert graph[graph.outputs[0][1]].type.shape == ("N", 5, 8)
    weights = {"cls": np.arange(8, dtype=np.float32).reshape(1, 1, 8)}
    x = np.ones((3, 4, 8), np.float32)
    y = run_reference(graph, weights, {"x": x})["y"]
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(weights["cls"][0], (3, 8)))
    np.testing.assert_array_equal(y[:, 1:], x)


def test_expand_makes_a_named_dimension_only_of_a_1() -> None:
    text = """network n {
    input x: f32[N, 1, 8]
    input t: f32[N, T]
    output y = expand(x, [N, T, 8])
}
"""
    graph = compile_text(text)
    assert graph[graph.outputs[0][1]].type.shape == ("N", "T", 8)
    assert codes(text.replace("f32[N, 1, 8]", "f32[N, 4, 8]")) == ["E0304"]
