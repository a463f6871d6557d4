"""Semantic analysis: naming, block expansion, repeat, attributes, imports, errors, the IR."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from netc.diagnostics import CompileError, Diagnostic
from netc.frontend import list_networks, load_file, load_string
from netc.ir import Graph, Node, TensorType
from netc.ops import REGISTRY, verify
from tests.examples import RESNET18, RESNET_BLOCKS

pytestmark = pytest.mark.unit

BLOCKS = RESNET_BLOCKS



def compile_text(body: str, header: str = "input x: f32[N, 8]", prelude: str = "") -> Graph:
    return load_string(f"{prelude}network n {{\n    {header}\n{body}\n}}\n", "t.net")


def diagnostics(body: str, header: str = "input x: f32[N, 8]", prelude: str = "",
                ) -> list[Diagnostic]:
    with pytest.raises(CompileError) as caught:
        compile_text(body, header, prelude)
    return list(caught.value.diagnostics)


def codes(body: str, header: str = "input x: f32[N, 8]", prelude: str = "") -> list[str]:
    return [d.code for d in diagnostics(body, header, prelude)]


def layer_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.compute_nodes if REGISTRY[n.op].has_params]


@pytest.fixture
def resnet_dir(tmp_path: Path) -> Path:
    (tmp_path / "resnet_blocks.net").write_text(BLOCKS)
    (tmp_path / "resnet18.net").write_text(RESNET18)
    return tmp_path


# Layer and parameter names --------------------------------------------------------------


def test_named_and_counted_layers() -> None:
    graph = compile_text('    y = dense(x, 8, name="head")\n    output z = dense(y, 4)')
    assert [n.id for n in layer_nodes(graph)] == ["head", "dense_0"]
    assert [n.id for n in graph.params] == ["head.weight", "head.bias", "dense_0.weight",
                                            "dense_0.bias"]


def test_counters_are_per_op_kind() -> None:
    graph = compile_text("    h = dense(x, 8)\n    g = layernorm(h)\n    output y = dense(g, 4)")
    assert [n.id for n in layer_nodes(graph)] == ["dense_0", "layernorm_0", "dense_1"]


def test_repeat_unrolls_in_source_order() -> None:
    graph = compile_text("    repeat 3 { x = dense(x, 8) |> relu }\n    output x")
    assert [n.id for n in layer_nodes(graph)] == ["dense_0", "dense_1", "dense_2"]
    assert [n.id for n in graph.compute_nodes if n.op == "relu"] == ["relu#0", "relu#1",
                                                                    "relu#2"]


def test_block_calls_prefix_their_layers(resnet_dir: Path) -> None:
    graph = load_file(resnet_dir / "resnet18.net")
    params = [n.id for n in graph.params]
    assert params[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                          "bn1.running_var"]
    for name in ("layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv1.weight",
                 "layer1.0.bn1.running_mean", "layer2.0.downsample.0.weight",
                 "layer4.1.bn2.running_var", "fc.weight", "fc.bias"):
        assert name in graph, name
    assert "layer4.2.conv1.weight" not in graph
    assert graph["layer1.1.conv1"].layer == "layer1.1.conv1"
    assert graph["layer1.1.conv1.weight"].layer == "layer1.1.conv1"


def test_resnet18_matches_torchvision(resnet_dir: Path) -> None:
    graph = load_file(resnet_dir / "resnet18.net")
    verify(graph)
    assert graph["fc"].type == TensorType("f32", ("N", 1000))
    assert graph["layer1.1.conv1"].type == TensorType("f32", ("N", 64, 56, 56))
    trainable = sum(n.type.numel() for n in graph.params if "running_" not in n.id)
    assert trainable == 11_689_512  # torchvision.models.resnet18(): same count, same names
    assert graph["conv1.weight"].type.shape == (64, 3, 7, 7)
    assert graph["layer2.0.downsample.0.weight"].type.shape == (128, 64, 1, 1)


def test_resnet18_front_end_is_fast(resnet_dir: Path) -> None:
    load_file(resnet_dir / "resnet18.net")  # warm: grammar tables and imports loaded
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        load_file(resnet_dir / "resnet18.net")
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.2, timings


def test_nested_blocks_nest_prefixes() -> None:
    prelude = ("block inner(x) {\n    return dense(x, 8)\n}\n"
               "block outer(x) {\n    y = inner(x)\n    return inner(y) |> dense(8)\n}\n")
    graph = compile_text("    y = outer(x)\n    output z = outer(y)", prelude=prelude)
    assert [n.id for n in layer_nodes(graph)] == [
        "outer_0.inner_0.dense_0", "outer_0.inner_1.dense_0", "outer_0.dense_0",
        "outer_1.inner_0.dense_0", "outer_1.inner_1.dense_0", "outer_1.dense_0"]


def test_named_block_call_and_named_layer_inside_a_block() -> None:
    prelude = 'block mlp(x) {\n    h = dense(x, 8, name="up")\n    return dense(h, 8)\n}\n'
    graph = compile_text('    y = mlp(x, name="encoder")\n    output z = mlp(y)', prelude=prelude)
    assert [n.id for n in layer_nodes(graph)] == ["encoder.up", "encoder.dense_0", "mlp_0.up",
                                                  "mlp_0.dense_0"]


def test_block_call_counters_are_per_scope() -> None:
    prelude = ("block leaf(x) {\n    return dense(x, 8)\n}\n"
               "block pair(x) {\n    return leaf(leaf(x))\n}\n")
    graph = compile_text("    y = leaf(x)\n    y = pair(y)\n    output z = leaf(y)",
                         prelude=prelude)
    assert [n.id for n in layer_nodes(graph)] == [
        "leaf_0.dense_0", "pair_0.leaf_0.dense_0", "pair_0.leaf_1.dense_0", "leaf_1.dense_0"]


def test_duplicate_layer_names() -> None:
    assert codes('    y = dense(x, 8, name="fc")\n    output z = dense(y, 8, name="fc")') == [
        "E0211"]
    assert codes('    y = dense(x, 8)\n    output z = dense(y, 8, name="dense_0")') == ["E0211"]
    assert codes("    output z = dense(dense_0, 8)", header="input dense_0: f32[N, 8]") == [
        "E0211"]


# The IR ---------------------------------------------------------------------------------


def test_ir_conventions() -> None:
    graph = compile_text("    h = dense(x, 8) |> relu\n    h = h * 0.5 + x\n    output y = -h")
    verify(graph)
    by_id = {n.id: n for n in graph.nodes}
    assert list(by_id) == ["x", "dense_0.weight", "dense_0.bias", "dense_0", "relu#0",
                           "constant#0", "mul#0", "add#0", "neg#0"]
    assert by_id["dense_0"].inputs == ("x", "dense_0.weight", "dense_0.bias")
    assert by_id["constant#0"].attrs["value"] == 0.5
    assert by_id["constant#0"].type == TensorType("f32", ())
    assert by_id["neg#0"].inputs == ("add#0",)
    assert graph.outputs == (("y", "neg#0"),)
    for node in graph.nodes:
        assert node.span is not None and node.span.file == "t.net"
    assert by_id["relu#0"].span is not None and by_id["relu#0"].span.column == 24
    assert by_id["dense_0.bias"].layer == "dense_0" and by_id["relu#0"].layer is None


def test_params_follow_the_ops_param_names() -> None:
    graph = compile_text("    output y = dense(x, 4, bias=false) |> layernorm")
    assert graph["dense_0"].inputs == ("x", "dense_0.weight")
    names = REGISTRY["layernorm"].param_names(graph["layernorm_0"].attrs)
    assert graph["layernorm_0"].inputs == ("dense_0", *(f"layernorm_0.{n}" for n in names))


def test_pipe_is_a_call_with_the_value_first() -> None:
    piped = compile_text("    output y = x |> dense(4, bias=false) |> softmax(axis=-1)")
    direct = compile_text("    output y = softmax(dense(x, 4, bias=false), axis=-1)")
    assert [(n.id, n.op, n.inputs, n.attrs, n.type) for n in piped.nodes] == [
        (n.id, n.op, n.inputs, n.attrs, n.type) for n in direct.nodes]


def test_constant_takes_the_dtype_of_the_other_operand() -> None:
    graph = compile_text("    output y = 2 * x", header="input x: f16[N, 8]")
    assert graph["constant#0"].type == TensorType("f16", ())
    assert graph["mul#0"].inputs == ("constant#0", "x")


def test_attributes_are_normalised_by_the_op() -> None:
    graph = compile_text('    output y = conv2d(x, 4, kernel=3, padding="same")',
                         header="input x: f32[N, 2, 8, 8]")
    assert graph["conv2d_0"].type == TensorType("f32", ("N", 4, 8, 8))
    assert graph["conv2d_0"].attrs == REGISTRY["conv2d"].normalize(
        graph["conv2d_0"].attrs, [TensorType("f32", ("N", 2, 8, 8))])


def test_ints_widen_to_float_attributes() -> None:
    graph = compile_text("    output y = leaky_relu(x, 1)")
    assert graph["leaky_relu#0"].attrs["alpha"] == 1.0
    assert isinstance(graph["leaky_relu#0"].attrs["alpha"], float)


def test_symbolic_batch_dimension() -> None:
    graph = compile_text("    output y = a + b",
                         header="input a: f32[B, 8]\n    input b: f32[B, 8]")
    assert graph["add#0"].type.shape == ("B", 8)
    assert codes("    output y = a + b", header="input a: f32[B, 8]\n    input b: f32[M, 8]") == [
        "E0304"]


# Attribute arithmetic and values --------------------------------------------------------


def test_attribute_arithmetic() -> None:
    prelude = ("block conv(x, filters: int, k: int = 5) {\n"
               "    return conv2d(x, filters * 2, kernel=k, padding=(k - 1) // 2)\n}\n")
    graph = compile_text("    output y = conv(x, 3)", header="input x: f32[N, 1, 9, 9]",
                         prelude=prelude)
    assert graph["conv_0.conv2d_0"].type == TensorType("f32", ("N", 6, 9, 9))


def test_names_can_hold_attribute_values() -> None:
    graph = compile_text("    width = 4 * 2\n    scale = width / 16.0\n"
                         "    output y = dense(x, width) * scale")
    assert graph["dense_0"].type.shape == ("N", 8)
    assert graph["constant#0"].attrs["value"] == 0.5


def test_integer_division_needs_double_slash() -> None:
    (diagnostic,) = diagnostics("    k = 7\n    output y = dense(x, (k - 1) / 2)")
    assert diagnostic.code == "E0215" and "`//`" in diagnostic.message
    assert diagnostic.help == "write `6 // 2`, or make one side a float"


def test_repeat_count_from_a_block_parameter() -> None:
    prelude = ("block stack(x, n: int = 2) {\n    repeat n { x = dense(x, 8) }\n    return x\n}\n")
    graph = compile_text("    y = stack(x)\n    output z = stack(y, n=3)", prelude=prelude)
    assert len(layer_nodes(graph)) == 5
    assert codes("    output z = stack(x, n=0 - 1)", prelude=prelude) == ["E0220"]


def test_repeat_zero_times() -> None:
    graph = compile_text("    repeat 0 { x = relu(x) }\n    output x")
    assert [n.id for n in graph.nodes] == ["x"]


# Several errors, no cascades ------------------------------------------------------------


def test_two_unknown_ops_on_two_lines_are_both_reported() -> None:
    found = diagnostics("    a = conv2(x)\n    b = rleu(x)\n    output y = a + b")
    assert [(d.code, d.span.line if d.span else 0) for d in found] == [("E0201", 3),
                                                                        ("E0201", 4)]
    assert [d.help for d in found] == ["did you mean `conv2d`?", "did you mean `relu`?"]


def test_an_error_does_not_cascade() -> None:
    found = diagnostics("    a = relu(z)\n    b = dense(a, 8) |> relu\n    c = a + b\n"
                        "    output y = c * z")
    assert [d.code for d in found] == ["E0202"]


def test_errors_are_reported_in_source_order() -> None:
    found = diagnostics("    output y = dense(x, 8.5, bais=true)")
    assert [d.code for d in found] == ["E0205", "E0204"]


def test_an_error_inside_a_block_is_reported_once_with_its_call() -> None:
    prelude = "block b(x) {\n    return rleu(x)\n}\n"
    (diagnostic,) = diagnostics("    repeat 3 { x = b(x) }\n    y = b(x)\n    output y",
                                prelude=prelude)
    assert diagnostic.code == "E0201" and diagnostic.span and diagnostic.span.line == 2
    assert diagnostic.notes == ("in `b_0`, the call of block `b` at t.net:6:20",)


def test_shape_error_names_both_shapes_and_their_sources() -> None:
    (diagnostic,) = diagnostics(
        "    a = dense(x, 4)\n    b = dense(x, 5) |> relu\n    output y = a + b")
    assert diagnostic.code == "E0304"
    assert "[N, 4]" in diagnostic.message and "[N, 5]" in diagnostic.message
    assert diagnostic.notes == (
        "input 1, f32[N, 4], comes from `dense_0` at t.net:3:9",
        "input 2, f32[N, 5], comes from `relu` at t.net:4:24")


def test_shape_error_in_a_layer_names_the_layer() -> None:
    (diagnostic,) = diagnostics("    y = flatten(x)\n    output z = conv2d(y, 4, kernel=3)")
    assert diagnostic.notes == ("in layer `conv2d_0`",
                                "the input f32[N, 8] comes from `flatten` at t.net:3:9")


def test_unused_block_is_still_checked_for_unknown_ops() -> None:
    assert codes("    output x", prelude="block b(x) {\n    return sigmod(x)\n}\n") == ["E0201"]


def test_internal_ops_are_not_part_of_the_language() -> None:
    assert codes("    output y = fused(x)") == ["E0201"]


def test_missing_attribute_after_a_misspelt_one_is_not_reported() -> None:
    assert codes("    output y = dense(x, unit=4)") == ["E0204"]


# Imports --------------------------------------------------------------------------------


def test_imports_are_relative_to_the_importing_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "layers.net").write_text(
        'import "more/act.net"\nblock mlp(x) {\n    return dense(x, 4) |> act\n}\n')
    (tmp_path / "lib" / "more").mkdir()
    (tmp_path / "lib" / "more" / "act.net").write_text("block act(x) {\n    return relu(x)\n}\n")
    (tmp_path / "main.net").write_text(
        'import "lib/layers.net"\nnetwork n {\n    input x: f32[N, 8]\n    output y = mlp(x)\n}\n')
    graph = load_file(tmp_path / "main.net")
    assert "mlp_0.dense_0" in graph
    # The block `act` is visible in layers.net, which imports it, but not in main.net.
    (tmp_path / "main2.net").write_text(
        'import "lib/layers.net"\nnetwork n {\n    input x: f32[N, 8]\n    output y = act(x)\n}\n')
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "main2.net")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E0201"
    assert diagnostic.help is not None and "lib/more/act.net" in diagnostic.help


def test_diamond_imports_load_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "base.net").write_text("block act(x) {\n    return relu(x)\n}\n")
    (tmp_path / "a.net").write_text('import "base.net"\nblock a(x) {\n    return act(x)\n}\n')
    (tmp_path / "b.net").write_text('import "base.net"\nblock b(x) {\n    return act(x)\n}\n')
    (tmp_path / "m.net").write_text('import "a.net"\nimport "b.net"\nnetwork n {\n'
                                    "    input x: f32[N, 8]\n    output y = b(a(x))\n}\n")
    assert len(load_file(tmp_path / "m.net").compute_nodes) == 2


def test_import_cycle_names_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.net").write_text('import "b.net"\n')
    (tmp_path / "b.net").write_text('import "a.net"\n')
    (tmp_path / "m.net").write_text('import "a.net"\nnetwork n {\n    input x: f32[N, 8]\n'
                                    "    output x\n}\n")
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "m.net")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E0103"
    a, b = tmp_path / "a.net", tmp_path / "b.net"
    assert diagnostic.message == f"import cycle: `{a}` → `{b}` → `{a}`"
    assert diagnostic.span is not None and diagnostic.span.file == str(b)


def test_import_depth_limit(tmp_path: Path) -> None:
    for index in range(40):
        (tmp_path / f"f{index}.net").write_text(f'import "f{index + 1}.net"\n')
    (tmp_path / "f40.net").write_text("")
    (tmp_path / "m.net").write_text('import "f0.net"\nnetwork n {\n    input x: f32[N, 8]\n'
                                    "    output x\n}\n")
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "m.net")
    assert [d.code for d in caught.value.diagnostics] == ["E0506"]


def test_errors_in_imported_files_quote_their_lines(tmp_path: Path) -> None:
    (tmp_path / "blocks.net").write_text("block b(x) {\n    return rleu(x)\n}\n")
    (tmp_path / "m.net").write_text('import "blocks.net"\nnetwork n {\n'
                                    "    input x: f32[N, 8]\n    output y = b(x)\n}\n")
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "m.net")
    rendered = caught.value.render()
    assert f"{tmp_path / 'blocks.net'}:2:12: error[E0201]" in rendered
    assert "    return rleu(x)" in rendered


def test_load_string_imports_from_base_dir(resnet_dir: Path) -> None:
    graph = load_string(RESNET18, "resnet18.net", base_dir=resnet_dir)
    assert graph.name == "resnet18"


def test_missing_main_file_and_directory() -> None:
    for path, message in (("/nonexistent/x.net", "no such file"), ("/", "directory")):
        with pytest.raises(CompileError) as caught:
            load_file(path)
        (diagnostic,) = caught.value.diagnostics
        assert diagnostic.code == "E0101" and message in diagnostic.message


def test_binary_and_oversized_files(tmp_path: Path) -> None:
    (tmp_path / "bin.net").write_bytes(b"network n {\xff\xfe}")
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "bin.net")
    assert caught.value.diagnostics[0].code == "E0001"
    assert "0xFF" in caught.value.diagnostics[0].message
    (tmp_path / "big.net").write_bytes(b"#" * (1 << 20))
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "big.net")
    assert caught.value.diagnostics[0].code == "E0508"


# Networks -------------------------------------------------------------------------------

TWO_NETWORKS = """\
network small {
    input x: f32[N, 8]
    output y = dense(x, 2)
}

network large {
    input x: f32[N, 8]
    output y = dense(x, 4) |> relu |> dense(2)
}
"""


def test_network_choice(tmp_path: Path) -> None:
    path = tmp_path / "two.net"
    path.write_text(TWO_NETWORKS)
    assert list_networks(path) == ["small", "large"]
    assert load_file(path).name == "large"
    assert load_file(path, network="small").name == "small"
    with pytest.raises(CompileError) as caught:
        load_file(path, network="smal")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E0107" and diagnostic.help == "did you mean `small`?"


def test_every_example_compiles_and_verifies() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(examples.glob("*.net")):
        if list_networks(path):
            verify(load_file(path))


# Recursion safety -----------------------------------------------------------------------


def test_deep_block_and_expression_nesting_stays_within_the_stack() -> None:
    nested = "".join(f"block b{i}(x) {{\n    return relu(relu(relu(b{i + 1}(x))))\n}}\n"
                     for i in range(31))
    prelude = nested + "block b31(x) {\n    return x\n}\n"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(600)  # far less than Python's default: the limits must bite first
    try:
        found = codes("    output y = b0(x)", prelude=prelude)
    finally:
        sys.setrecursionlimit(limit)
    assert found == ["E0502"]


def test_long_chains_compile() -> None:
    graph = compile_text("    output y = x" + " + x" * 2_000)
    assert len(graph.compute_nodes) == 2_000
    graph = compile_text("    output y = x" + " |> relu" * 2_000)
    assert len(graph.compute_nodes) == 2_000
