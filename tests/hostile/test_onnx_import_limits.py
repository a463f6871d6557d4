"""Issue 9, item 5 (ONNX): `netc import` refuses what it cannot honestly translate.

An opset newer than the installed onnx package knows used to import as if it were an old one;
two nodes writing one value name kept the second writer silently; a 20,000-node model imported
to a `.net` file that netc's own front end then rejected.  Each is now a diagnostic with exit
status 1 (E0610, E0609, E0611), and nothing is written: the working directory is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.hostile.support import Run, changed, netc, tree_state

pytestmark = pytest.mark.unit


def _chain(count: int, *, opset: int = 17, name: str = "v{}",
           extra: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """x -> Relu -> ... -> y, `count` nodes, value names from `name`."""
    nodes, previous = [], "x"
    for index in range(count):
        output = name.format(index) if index < count - 1 else "y"
        nodes.append(helper.make_node("Relu", [previous], [output], name=f"relu{index}"))
        previous = output
    for position, node in enumerate(extra or []):
        nodes.insert(1 + position, node)
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _import(tmp_path: Path, model: onnx.ModelProto) -> tuple[Run, list[str]]:
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    before = tree_state(tmp_path)
    result = netc("import", "m.onnx", "-o", "m.net", cwd=tmp_path)
    return result, changed(before, tree_state(tmp_path))


def _assert_refused(result: Run, touched: list[str], code: str, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.codes() == [code], result.stderr
    assert "bug in netc" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert touched == []


def test_an_opset_newer_than_onnx_knows_is_refused(tmp_path: Path) -> None:
    result, touched = _import(tmp_path, _chain(3, opset=99))
    _assert_refused(result, touched, "E0610", "opset 99",
                    f"up to {onnx.defs.onnx_opset_version()}")


def test_two_nodes_writing_one_value_are_refused(tmp_path: Path) -> None:
    second = helper.make_node("Sigmoid", ["x"], ["v0"], name="again")
    result, touched = _import(tmp_path, _chain(3, extra=[second]))
    _assert_refused(result, touched, "E0609", "Sigmoid node `again`", "Relu node `relu0`",
                    "`v0`", "SSA")


def test_a_node_overwriting_a_graph_input_is_refused(tmp_path: Path) -> None:
    shadow = helper.make_node("Sigmoid", ["v0"], ["x"], name="shadow")
    result, touched = _import(tmp_path, _chain(3, extra=[shadow]))
    _assert_refused(result, touched, "E0609", "Sigmoid node `shadow`", "a graph input")


def test_a_model_beyond_the_front_ends_node_limit_is_refused_at_import(tmp_path: Path) -> None:
    result, touched = _import(tmp_path, _chain(20_000))
    _assert_refused(result, touched, "E0611", "10,000", "MAX_NODES", "20,000")


def test_a_model_beyond_the_front_ends_file_size_is_refused_at_import(tmp_path: Path) -> None:
    # 5,000 nodes are within MAX_NODES, but 60-character names make the text over 256 KiB.
    result, touched = _import(tmp_path, _chain(5_000, name="value_{:0>54}"))
    _assert_refused(result, touched, "E0611", "262,144", "MAX_SOURCE_BYTES")


def test_a_model_at_the_node_limit_imports_and_checks(tmp_path: Path) -> None:
    """The limit is the front end's own: a chain one node short of it imports, and the
    `.net` written passes `netc check`."""
    result, touched = _import(tmp_path, _chain(9_999))
    assert result.returncode == 0, result.stderr
    assert touched == ["m.net", "m.safetensors"]
    check = netc("check", "m.net", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
