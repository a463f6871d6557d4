"""Issue 9, item 3: no ONNX file text escapes into the `.net` that `netc import` writes.

Every piece of text the importer copies from the file (producer name and version, the file
name, the graph name, doc strings, node, initializer, input and output names, batch
dimension names) carries a newline followed by statements: closing the network and opening
another, or adding an output.  The imported `.net` must hold exactly the one network the
model is, compute what onnxruntime computes, and show the text only escaped, in comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from netc.frontend import load_string
from netc.frontend.unparse import comment_text
from tests.hostile.support import changed, netc, tree_state

pytestmark = pytest.mark.unit

INJECTION = ("\noutput pwned = relu(x)\n}\nnetwork pwn {\n    input q: f32[N, 4]\n"
             "    output r = relu(q)\n}\n# \r\x1b[2K\u202e\u2028")


def _evil(name: str) -> str:
    return f"{name}{INJECTION}"


def _hostile_model() -> onnx.ModelProto:
    rng = np.random.default_rng(9)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), _evil("W"))
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), _evil("b"))
    x, skip, y = _evil("x"), _evil("skip"), _evil("y")
    nodes = [
        helper.make_node("MatMul", [x, weight.name], ["mm"], name=_evil("matmul"),
                         doc_string=_evil("doc")),
        helper.make_node("Add", ["mm", bias.name], [_evil("biased")], name=_evil("add")),
        helper.make_node("Relu", [_evil("biased")], ["act"], name=_evil("relu")),
        helper.make_node("Add", ["act", skip], [y], name=_evil("residual")),
    ]
    graph = helper.make_graph(
        nodes, _evil("graph"),
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [_evil("N"), 4]),
         helper.make_tensor_value_info(skip, TensorProto.FLOAT, [_evil("M"), 3]),
         # An initializer listed as a graph input: the importer notes its name.
         helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [_evil("N"), 3])],
        [weight, bias], doc_string=_evil("graph doc"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name=_evil("producer"),
                              producer_version=_evil("1.0"), doc_string=_evil("model doc"))
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def _statements(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("file_name", ["model.onnx", "evil\noutput z = x\n.onnx"])
def test_hostile_metadata_reaches_the_net_file_only_escaped(tmp_path: Path,
                                                            file_name: str) -> None:
    model = _hostile_model()
    onnx_file = tmp_path / file_name
    onnx_file.write_bytes(model.SerializeToString())
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    before = tree_state(tmp_path)
    result = netc("import", onnx_file.name, "-o", "m.net", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.codes() == []
    assert changed(before, tree_state(tmp_path)) == ["m.net", "m.safetensors"]

    text = (tmp_path / "m.net").read_text()
    assert text.isascii() and all(" " <= c <= "~" or c == "\n" for c in text), repr(text)
    statements = _statements(text)
    # One network, its two inputs, three assignments, one output: the statements the model
    # has. (Sanitised names may still spell `output_pwned`: as names, which is harmless.)
    assert statements[0].startswith("network ") and statements[-1] == "}", text
    kinds = [s.split()[0] if s.split()[0] in ("network", "input", "output", "}") else "="
             for s in statements]
    assert kinds == ["network", "input", "input", "=", "=", "=", "output", "}"], text
    # The escaped producer is there for the reader to see.
    assert "producer\\noutput pwned = relu(x)" in text
    network = load_string(text, filename="m.net")
    assert len(network.outputs) == 1

    # It computes what the ONNX model computes.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    skip = rng.standard_normal((2, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {_evil("x"): x, _evil("skip"): skip})
    inputs = [(line.split()[1].rstrip(":")) for line in statements if line.startswith("input ")]
    assert len(inputs) == 2
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", skip)
    run = netc("run", "m.net", "--weights", "m.safetensors", "--backend", "reference",
               "--input", f"{inputs[0]}=a.npy", "--input", f"{inputs[1]}=b.npy", "-o", "out.npz",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (actual,) = np.load(tmp_path / "out.npz").values()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_comment_text_is_one_printable_ascii_line_of_bounded_length() -> None:
    text = comment_text(INJECTION * 100)
    assert "\n" not in text and text.isprintable() and text.isascii()
    assert len(text) <= 400 and text.endswith("...")
    assert comment_text("plain producer 1.2") == "plain producer 1.2"
