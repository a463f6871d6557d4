"""Language version 2 in the front end (docs/language.md, "(v2)"): PyTorch module-path names,
tensor `/` and unary `-`, integer, boolean and scalar types, named dimensions anywhere,
`param`, `LAYER.PARAM`, indexing, imported networks, `str` block attributes, and the
`train` section's "not supported yet". Positive cases run on the reference interpreter (and
onnxruntime or cudasim where the feature reaches them); errors are checked by code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netc.cli import main
from netc.codegen.emit import generate
from netc.compare import compare
from netc.diagnostics import CompileError, Diagnostic
from netc.frontend import ast, load_file, load_string, parse
from netc.frontend.unparse import render_net
from netc.ir import FLOAT_DTYPES, Graph, TensorType
from netc.onnx.export import export_graph
from netc.ops import REGISTRY, ShapeError
from netc.ops.apply import DtypeError, apply_op, bind_attrs
from netc.ops.registry import require_batch_first
from netc.reference import run_reference
from netc.weights import init_weights, load_weights, save_weights

pytestmark = pytest.mark.unit

RESNET_BLOCKS = """\
block basic(x, filters: int) {
    y = conv2d(x, filters, kernel=3, padding=1, bias=false, name="conv1") |> batchnorm(name="bn1") |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false, name="conv2") |> batchnorm(name="bn2")
    return relu(y + x)
}
"""

RESNET = """\
import "resnet_blocks.net"

network resnet18 {
    input image: f32[N, 3, 32, 32]
    x = conv2d(image, 64, kernel=7, stride=2, padding=3, bias=false, name="conv1")
        |> batchnorm(name="bn1") |> relu
    x = maxpool2d(x, 3, stride=2, padding=1)
    x = basic(x, 64, name="layer1.0")
    x = basic(x, 64, name="layer1.1")
    # layer2 to layer4 alike, with a `down` block first
    x = global_avgpool(x) |> flatten
    output logits = dense(x, 1000, name="fc")
}
"""


def compile_text(body: str, header: str = "input x: f32[N, 8]", prelude: str = "") -> Graph:
    return load_string(f"{prelude}network n {{\n    {header}\n{body}\n}}\n", "t.net")


def diagnostics(body: str, header: str = "input x: f32[N, 8]",
                prelude: str = "") -> list[Diagnostic]:
    with pytest.raises(CompileError) as caught:
        compile_text(body, header, prelude)
    return list(caught.value.diagnostics)


def codes(body: str, header: str = "input x: f32[N, 8]", prelude: str = "") -> list[str]:
    return [d.code for d in diagnostics(body, header, prelude)]


def run(graph: Graph, inputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    return run_reference(graph, init_weights(graph, seed), inputs)


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def onnx_outputs(graph: Graph, weights: dict[str, np.ndarray],
                 inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = export_graph(graph, weights)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def netc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command line in this process (a subprocess costs a second of start-up):
    (exit status, stdout, stderr)."""
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# 1. PyTorch module-path names -------------------------------------------------------------


@pytest.fixture
def resnet_dir(tmp_path: Path) -> Path:
    (tmp_path / "resnet_blocks.net").write_text(RESNET_BLOCKS)
    (tmp_path / "resnet18.net").write_text(RESNET)
    return tmp_path


def test_the_specs_resnet_names_its_layers_as_torchvision(resnet_dir: Path) -> None:
    graph = load_file(resnet_dir / "resnet18.net")
    params = [n.id for n in graph.params]
    assert params[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer1.0.conv1.weight" in params and "layer1.1.bn2.running_var" in params
    assert params[-2:] == ["fc.weight", "fc.bias"]
    assert graph["layer1.0.conv2"].layer == "layer1.0.conv2"
    out = run(graph, {"image": normal(2, 3, 32, 32)})["logits"]
    assert out.shape == (2, 1000) and np.isfinite(out).all()


def test_dotted_names_reach_weights_files_onnx_and_the_unparser(resnet_dir: Path,
                                                                tmp_path: Path) -> None:
    graph = load_file(resnet_dir / "resnet18.net")
    weights = init_weights(graph, 3)
    path = tmp_path / "w.safetensors"
    save_weights(weights, path)
    loaded = load_weights(path)
    assert set(loaded) == set(weights) and "layer1.1.conv2.weight" in loaded
    image = normal(1, 3, 32, 32, seed=4)
    expected = run_reference(graph, loaded, {"image": image})["logits"]
    got = onnx_outputs(graph, weights, {"image": image})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    again = load_string(render_net(graph), "again.net")
    assert [n.id for n in again.params] == [n.id for n in graph.params]


def test_a_segment_may_be_all_digits_and_prefixes_compose() -> None:
    graph = compile_text('    h = dense(x, 8, name="features.3")\n'
                         '    output y = dense(h, 4, name="0")',
                         prelude='block head(x) {\n    return dense(x, 2, name="proj.0")\n}\n')
    assert [n.id for n in graph.params] == ["features.3.weight", "features.3.bias",
                                            "0.weight", "0.bias"]
    nested = compile_text('    output y = outer(x, name="enc.layers.1")',
                          prelude='block inner(x) {\n    return dense(x, 2, name="fc")\n}\n'
                                  'block outer(x) {\n    return inner(x, name="blk.0")\n}\n')
    assert [n.id for n in nested.params] == ["enc.layers.1.blk.0.fc.weight",
                                             "enc.layers.1.blk.0.fc.bias"]


@pytest.mark.parametrize(("name", "hint"), [
    ("fc-1", "`-` cannot appear"),
    ("layer1..0", "single dots"),
    (".fc", "single dots"),
    ("fc.", "single dots"),
    ("", "at least one character"),
    ("a" * 65, "at most 64"),
])
def test_malformed_layer_names(name: str, hint: str) -> None:
    (found,) = diagnostics(f'    output y = dense(x, 4, name="{name}")')
    assert found.code == "E0210" and found.help is not None and hint in found.help


def test_duplicate_dotted_names() -> None:
    found = diagnostics('    h = basic(x, name="layer1.0")\n    output y = basic(h, name="layer1.0")',
                        prelude='block basic(x) {\n    return dense(x, 8, name="fc")\n}\n')
    assert [d.code for d in found] == ["E0211"]
    assert "layer1.0.fc" in found[0].message
    # A layer whose name is another layer's parameter.
    assert codes('    h = dense(x, 8, name="fc")\n    output y = dense(h, 8, name="fc.weight")') \
        == ["E0211"]


def test_a_path_with_a_bad_segment_or_spaces() -> None:
    assert codes('    h = dense(x, 8, name="fc")\n    output y = h + fc.1e-5') == ["E0009"]
    (spaced,) = diagnostics('    h = dense(x, 8, name="fc")\n    output y = matmul(h, fc . weight)')
    assert spaced.code == "E0004" and spaced.help is not None and "without spaces" in spaced.help
    (number,) = diagnostics("    output y = dropout(x, p=.5)")
    assert number.code == "E0004" and number.help is not None and "digits" in number.help


# 2. Tensor `/` and unary `-` --------------------------------------------------------------


def test_division_and_negation_on_tensors() -> None:
    graph = compile_text("    output a = x / y\n    output b = x / 4\n    output c = 2 / y\n"
                         "    output d = -x\n    output e = -(x - y) * 3",
                         header="input x: f32[N, 8]\n    input y: f32[N, 8]")
    ops = [n.op for n in graph.compute_nodes]
    assert ops.count("div") == 3 and ops.count("neg") == 2 and "mul" in ops
    x, y = normal(3, 8, seed=1), normal(3, 8, seed=2) + 3
    out = run(graph, {"x": x, "y": y})
    np.testing.assert_allclose(out["a"], x / y, rtol=1e-6)
    np.testing.assert_allclose(out["b"], x / 4, rtol=1e-6)
    np.testing.assert_allclose(out["c"], 2 / y, rtol=1e-6)
    np.testing.assert_array_equal(out["d"], -x)
    np.testing.assert_allclose(out["e"], -(x - y) * 3, rtol=1e-6)
    again = load_string(render_net(graph), "again.net")
    assert [n.op for n in again.compute_nodes] == ops


def test_division_stays_an_error_where_the_spec_says() -> None:
    (floor,) = diagnostics("    output y = x // x")
    assert floor.code == "E0216"
    (ints,) = diagnostics("    k = 6 / 2\n    output y = dense(x, k)")
    assert ints.code == "E0215" and ints.help is not None and "//" in ints.help


# 3. Dtypes: integers, booleans, scalars ---------------------------------------------------


def test_integer_boolean_and_scalar_types() -> None:
    graph = compile_text("    output y = x * s",
                         header="input ids: i64[N, T]\n    input idx: i32[4]\n"
                                "    input mask: bool[N, T]\n    input s: f32[]\n"
                                "    input x: f32[N, 8]")
    types = {n.id: n.type for n in graph.inputs}
    assert types["ids"] == TensorType("i64", ("N", "T"))
    assert types["idx"] == TensorType("i32", (4,))
    assert types["mask"] == TensorType("bool", ("N", "T"))
    assert types["s"] == TensorType("f32", ())
    s = np.array(2.5, dtype=np.float32)
    out = run(graph, {"ids": np.zeros((2, 3)), "idx": np.zeros(4), "mask": np.ones((2, 3)),
                      "s": s, "x": normal(2, 8)})
    np.testing.assert_allclose(out["y"], normal(2, 8) * 2.5, rtol=1e-6)


def test_a_float_op_refuses_integer_and_boolean_inputs() -> None:
    found = diagnostics("    a = relu(ids)\n    b = dense(mask, 4)\n    output y = softmax(x)",
                        header="input ids: i64[N, 8]\n    input mask: bool[N, 8]\n"
                               "    input x: f32[N, 8]")
    assert [d.code for d in found] == ["E0313", "E0313"]
    assert "`relu` takes float tensors (f32, f16, bf16), but its input is i64[N, 8]" in \
        found[0].message
    assert found[0].help is not None and 'cast(x, "f32")' in found[0].help
    assert "bool[N, 8]" in found[1].message


def test_every_op_declares_its_dtypes_and_apply_op_checks_them() -> None:
    assert REGISTRY["relu"].dtypes == FLOAT_DTYPES
    assert all(opdef.dtypes for opdef in REGISTRY.values())
    with pytest.raises(DtypeError, match="input 2 is i32"):
        apply_op(REGISTRY["matmul"], bind_attrs(REGISTRY["matmul"], {}),
                 [TensorType("f32", (2, 3)), TensorType("i32", (3, 2))])
    assert issubclass(DtypeError, ShapeError)


@pytest.mark.parametrize("written", ["f64", "i8", "int"])
def test_unknown_dtypes(written: str) -> None:
    assert codes("    output y = relu(z)", header=f"input z: {written}[N, 8]") == ["E0301"]


# 4. Named dimensions anywhere -------------------------------------------------------------

SEQUENCE = """\
network seq {
    input x: f32[N, T, 8]
    h = dense(x, 8, name="proj") |> layernorm(name="ln")
    a = softmax(matmul(h, transpose(h, [0, 2, 1])) * 0.125, axis=-1)
    y = matmul(a, h) + sum(x, axis=1, keepdim=true)
    output y = y[..., ::2] - h[:, :, 1:5] / 2
}
"""


def test_a_named_dimension_anywhere_runs_at_any_size_on_reference_and_onnx() -> None:
    graph = load_string(SEQUENCE, "seq.net")
    assert graph["x"].type.shape == ("N", "T", 8)
    assert graph.outputs and graph[graph.outputs[0][1]].type.shape == ("N", "T", 4)
    weights = init_weights(graph, 1)
    model = export_graph(graph, weights)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for batch, length in ((2, 5), (3, 11)):
        x = normal(batch, length, 8, seed=length)
        expected = run_reference(graph, weights, {"x": x})["y"]
        assert expected.shape == (batch, length, 4)
        (got,) = session.run(["y"], {"x": x})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_named_dimension_in_an_attribute_expression() -> None:
    graph = compile_text("    output y = reshape(x, [T, 2, 4]) * 2", header="input x: f32[N, T, 8]")
    assert graph[graph.outputs[0][1]].type.shape == ("N", "T", 2, 4)
    weights: dict[str, np.ndarray] = {}
    for length in (5, 11):
        x = normal(2, length, 8, seed=length)
        expected = run_reference(graph, weights, {"x": x})["y"]
        np.testing.assert_array_equal(expected, x.reshape(2, length, 2, 4) * 2)
        np.testing.assert_allclose(onnx_outputs(graph, weights, {"x": x})["y"], expected)
    header = "input x: f32[N, T, 8]"
    assert codes("    output y = reshape(x, [T * 2, 4])", header) == ["E0216"]
    (wrong,) = diagnostics("    output y = dense(x, T)", header)
    assert wrong.code == "E0205" and "the named dimension T" in wrong.message


def test_the_same_name_is_the_same_size() -> None:
    found = diagnostics("    output y = x + z", header="input x: f32[N, T]\n    input z: f32[N, S]")
    assert [d.code for d in found] == ["E0304"]
    assert compile_text("    output y = x + z",
                        header="input x: f32[N, T]\n    input z: f32[N, T]").outputs


def test_shape_rules_may_not_invent_a_named_dimension() -> None:
    require_batch_first("add", ("N", "T", 4), TensorType("f32", ("N", "T", 4)))
    with pytest.raises(ShapeError, match="named dimension M that no input has"):
        require_batch_first("add", ("M", 4), TensorType("f32", ("N", 4)))


@pytest.mark.parametrize("header", ["input x: f32[N, T]", "input x: f32[8, T]"])
def test_the_cuda_backend_takes_named_dimensions_anywhere(header: str) -> None:
    graph = compile_text("    output y = relu(x)", header=header)
    plan = generate(graph)
    assert plan.dims == graph.batch_dims() and plan.launches


def test_the_cuda_backend_takes_a_batch_moved_from_first() -> None:
    plan = generate(compile_text("    output y = transpose(x, [1, 0])"))
    assert plan.buffer(dict(plan.outputs)["y"]).shape == (8, "N")


def test_dim_sets_random_input_sizes_in_run_and_compare(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "seq.net"
    source.write_text(SEQUENCE)
    out = tmp_path / "out.npz"
    status, _, err = cli(capsys, "run", str(source), "--random-input", "--batch", "2", "--dim",
                         "T=7", "--backend", "reference", "-o", str(out))
    assert status == 0, err
    assert np.load(out)["y"].shape == (2, 7, 4)
    status, report, err = cli(capsys, "compare", str(source), "--random-input", "--dim", "T=11",
                              "--dim", "N=3", "--backends", "reference,onnx,cudasim")
    assert status == 0, err
    assert "(N=3, T=11)" in report and "agree" in report


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--random-input", "--dim", "T=0"), "E0416", "NAME=SIZE"),
    (("--random-input", "--dim", "T"), "E0416", "NAME=SIZE"),
    (("--random-input", "--dim", "T=2", "--dim", "T=3"), "E0416", "twice"),
    (("--random-input", "--dim", "Q=4"), "E0417", "no named dimension `Q`"),
])
def test_bad_dim_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        args: tuple[str, ...], code: str, words: str) -> None:
    source = tmp_path / "seq.net"
    source.write_text(SEQUENCE)
    status, _, err = cli(capsys, "run", str(source), *args, "--backend", "reference")
    assert status == 1 and f"error[{code}]" in err and words in err
    assert "Traceback" not in err


def test_dim_with_input_files_is_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "seq.net"
    source.write_text(SEQUENCE)
    np.save(tmp_path / "x.npy", normal(1, 3, 8))
    status, _, err = cli(capsys, "run", str(source), "--input", f"x={tmp_path / 'x.npy'}",
                         "--dim", "T=3", "--backend", "reference")
    assert status == 1 and "error[E0417]" in err


# 5. `param` -------------------------------------------------------------------------------


def test_params_and_their_initialisers() -> None:
    graph = compile_text("    output y = x + a + b + c + d",
                         header="input x: f32[N, 8]\n    param a: f32[8] = zeros\n"
                                "    param b: f32[1, 8] = ones\n"
                                "    param c: f32[8] = normal(std=0.5)\n"
                                "    param d: f32[8] = uniform(bound=2)\n"
                                "    param e: f32[4096]")
    weights = init_weights(graph, 0)
    assert set(weights) == {"a", "b", "c", "d", "e"}
    np.testing.assert_array_equal(weights["a"], np.zeros(8))
    np.testing.assert_array_equal(weights["b"], np.ones((1, 8)))
    assert np.abs(weights["d"]).max() <= 2 and weights["d"].std() > 0.5
    assert 0.015 < weights["e"].std() < 0.025  # the default, normal(std=0.02)
    x = normal(2, 8)
    out = run_reference(graph, weights, {"x": x})["y"]
    np.testing.assert_allclose(out, x + 1 + weights["c"] + weights["d"], rtol=1e-6)


def test_a_param_in_a_block_gets_the_call_prefix() -> None:
    graph = compile_text('    output y = encoder(x, name="encoder")',
                         prelude="block encoder(x) {\n"
                                 "    param pos_embedding: f32[1, 8] = zeros\n"
                                 '    return dense(x + pos_embedding, 8, name="fc")\n}\n')
    assert [n.id for n in graph.params] == ["encoder.pos_embedding", "encoder.fc.weight",
                                            "encoder.fc.bias"]


def test_params_in_weights_onnx_and_cudasim(tmp_path: Path) -> None:
    graph = compile_text("    output y = relu(x) + p", header="input x: f32[N, 33]\n"
                         "    param p: f32[33] = normal(std=1.0)")
    weights = init_weights(graph, 5)
    save_weights(weights, tmp_path / "w.safetensors")
    assert set(load_weights(tmp_path / "w.safetensors")) == {"p"}
    x = normal(3, 33, seed=9)
    expected = run_reference(graph, weights, {"x": x})["y"]
    np.testing.assert_allclose(expected, np.maximum(x, 0) + weights["p"], rtol=1e-6)
    np.testing.assert_allclose(onnx_outputs(graph, weights, {"x": x})["y"], expected,
                               rtol=1e-6)
    report = compare(graph, weights, {"x": x}, ["reference", "cudasim"])
    assert report.result("cudasim").status == "ran" and report.agree, report.format()


@pytest.mark.parametrize(("body", "header", "code"), [
    ("    output y = x + p", "input x: f32[N, 8]\n    param p: f32[N, 8]", "E0314"),
    ("    output y = x + p", "input x: f32[N, 8]\n    param p: f32[8] = normal(0.5)", "E0235"),
    ("    output y = x + p", "input x: f32[N, 8]\n    param p: f32[8] = uniform", "E0235"),
    ("    output y = x + p", "input x: f32[N, 8]\n    param p: f32[8] = normal(std=-1)",
     "E0235"),
    ("    output y = x + p", "input x: f32[N, 8]\n    param p: f32[8] = randn", "E0235"),
    ("    output y = x", "input x: f32[N, 8]\n    param x: f32[8]", "E0117"),
    ('    output y = dense(x, 8, name="p")', "input x: f32[N, 8]\n    param p: f32[8]",
     "E0211"),
    ("    repeat 2 { param p: f32[8] }\n    output y = x", "input x: f32[N, 8]", "E0123"),
])
def test_param_errors(body: str, header: str, code: str) -> None:
    assert codes(body, header) == [code]


# 6. `LAYER.PARAM` -------------------------------------------------------------------------


def test_weight_tying_reads_the_layers_own_parameter() -> None:
    graph = compile_text('    h = dense(x, 8, name="wte")\n'
                         "    output y = matmul(h, transpose(wte.weight, [1, 0]))")
    transpose = next(n for n in graph.compute_nodes if n.op == "transpose")
    assert transpose.inputs == ("wte.weight",)
    assert [n.id for n in graph.params] == ["wte.weight", "wte.bias"]
    weights = init_weights(graph, 2)
    x = normal(2, 8)
    h = x @ weights["wte.weight"].T + weights["wte.bias"]
    np.testing.assert_allclose(run_reference(graph, weights, {"x": x})["y"],
                               h @ weights["wte.weight"].T, rtol=1e-5, atol=1e-6)
    again = load_string(render_net(graph), "again.net")
    assert [n.inputs for n in again.compute_nodes] == [n.inputs for n in graph.compute_nodes]


def test_a_path_is_the_name_as_written_in_its_scope() -> None:
    prelude = ('block basic(x) {\n    h = dense(x, 8, name="conv1")\n'
               "    return h + conv1.bias\n}\n")
    graph = compile_text('    h = basic(x, name="layer1.0")\n'
                         "    output y = h * layer1.0.conv1.bias", prelude=prelude)
    reads = [n.inputs for n in graph.compute_nodes if n.op in ("add", "mul")]
    assert reads == [("layer1.0.conv1", "layer1.0.conv1.bias"),
                     ("add#0", "layer1.0.conv1.bias")]
    # A block's free parameter is read through the call's name as well.
    free = compile_text('    h = enc(x, name="encoder")\n    output y = h + encoder.pos',
                        prelude="block enc(x) {\n    param pos: f32[8] = ones\n"
                                "    return x * pos\n}\n")
    assert free.compute_nodes[-1].inputs[1] == "encoder.pos"


def test_unknown_layer_or_parameter_in_a_path() -> None:
    found = diagnostics('    h = dense(x, 8, name="fc1")\n    a = fc2.weight\n'
                        "    b = fc1.weigth\n    c = h.weight\n    output y = h")
    assert [d.code for d in found] == ["E0233", "E0234", "E0233"]
    assert found[0].help == "did you mean `fc1`?"
    assert found[1].help == "did you mean `weight`?"
    assert found[2].help is not None and "`h` is a value" in found[2].help
    # Inside a block, the network's layers are not in scope.
    inner = diagnostics('    h = dense(x, 8, name="fc")\n    output y = b(h)',
                        prelude="block b(x) {\n    return x + fc.bias\n}\n")
    assert [d.code for d in inner] == ["E0233"]


# 7. Indexing ------------------------------------------------------------------------------


def test_the_specs_indexing_examples() -> None:
    graph = compile_text("    output a = x[:, 0]\n    output b = x[:, :, 1:5]\n"
                         "    output c = x[..., ::2]\n    output d = x[:, -1]\n"
                         "    output e = x[:, -3:, ::3]\n    output f = x[..., 2:, 1]",
                         header="input x: f32[N, 6, 8]")
    assert {n.op for n in graph.compute_nodes} == {"slice", "select"}
    x = normal(3, 6, 8)
    out = run(graph, {"x": x})
    expected = {"a": x[:, 0], "b": x[:, :, 1:5], "c": x[..., ::2], "d": x[:, -1],
                "e": x[:, -3:, ::3], "f": x[..., 2:, 1]}
    for name, value in expected.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)


@st.composite
def _index_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], str, tuple[Any, ...]]:
    """A shape, an index as `.net` writes it and the same index for NumPy: ints, slices
    (never empty) and at most one `...`."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    count = draw(st.integers(1, len(shape)))
    ellipsis_at = draw(st.none() | st.integers(0, count))
    axes = list(range(count)) if ellipsis_at is None else \
        list(range(ellipsis_at)) + list(range(len(shape) - (count - ellipsis_at), len(shape)))
    written: list[str] = []
    items: list[Any] = []
    for axis in axes:
        size = shape[axis]
        if draw(st.booleans()):
            index = draw(st.integers(-size, size - 1))
            written.append(str(index))
            items.append(index)
            continue
        start = draw(st.none() | st.integers(-size - 2, size + 2))
        stop = draw(st.none() | st.integers(-size - 2, size + 2))
        step = draw(st.none() | st.integers(1, 3))
        if not range(size)[slice(start, stop, step)]:
            start, stop = None, None  # an empty slice is an error: check it elsewhere
        written.append(":".join("" if v is None else str(v) for v in (start, stop)) +
                       ("" if step is None else f":{step}"))
        items.append(slice(start, stop, step))
    if ellipsis_at is not None:
        written.insert(ellipsis_at, "...")
        items.insert(ellipsis_at, Ellipsis)
    return shape, ", ".join(written), tuple(items)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_index_cases())
def test_indexing_matches_numpy(case: tuple[tuple[int, ...], str, tuple[Any, ...]]) -> None:
    shape, written, items = case
    dims = ", ".join(map(str, shape))
    graph = compile_text(f"    output y = x[{written}] + 0", header=f"input x: f32[{dims}]")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(run_reference(graph, {}, {"x": x})["y"], x[items])


@pytest.mark.parametrize(("body", "code"), [
    ("    output y = x[:, 0, 1]", "E0236"),
    ("    output y = x[..., ...]", "E0236"),
    ("    output y = x[:, 1.5]", "E0236"),
    ("    output y = x[:, x]", "E0236"),
    ("    k = 3\n    output y = x + k[0]", "E0236"),
    ("    output y = x[:, 8]", "E0304"),
    ("    output y = x[:, 5:2]", "E0304"),
    ("    output y = x[:, ::0]", "E0212"),
    ("    output y = x[1:]", "E0236"),
])
def test_indexing_errors(body: str, code: str) -> None:
    assert codes(body) == [code]


# 8. Imported networks and `str` attributes ------------------------------------------------


def test_imported_networks_can_be_chosen(resnet_dir: Path) -> None:
    (resnet_dir / "resnet_blocks.net").write_text(
        RESNET_BLOCKS + 'network tiny {\n    input image: f32[N, 4, 8, 8]\n'
        '    output y = basic(image, 4, name="layer1.0")\n}\n')
    assert load_file(resnet_dir / "resnet18.net").name == "resnet18"
    tiny = load_file(resnet_dir / "resnet18.net", network="tiny")
    assert tiny.name == "tiny" and tiny.params[0].id == "layer1.0.conv1.weight"
    with pytest.raises(CompileError) as caught:
        load_file(resnet_dir / "resnet18.net", network="tinny")
    (found,) = caught.value.diagnostics
    assert found.code == "E0107" and found.help == "did you mean `tiny`?"
    (resnet_dir / "only_import.net").write_text('import "resnet_blocks.net"\n')
    assert load_file(resnet_dir / "only_import.net").name == "tiny"


def test_a_network_name_seen_twice_across_files(tmp_path: Path) -> None:
    (tmp_path / "lib.net").write_text("network n {\n    input x: f32[N, 8]\n    output x\n}\n")
    (tmp_path / "main.net").write_text('import "lib.net"\nnetwork n {\n'
                                       "    input x: f32[N, 8]\n    output y = relu(x)\n}\n")
    with pytest.raises(CompileError) as caught:
        load_file(tmp_path / "main.net")
    assert [d.code for d in caught.value.diagnostics] == ["E0124"]


def test_str_block_attributes() -> None:
    prelude = ('block conv(x, pad: str = "same", act: str = "none") {\n'
               "    return conv2d(x, 4, kernel=3, padding=pad) |> gelu(approximate=act)\n}\n")
    graph = compile_text('    output y = conv(x, act="tanh")', header="input x: f32[N, 2, 6, 6]",
                         prelude=prelude)
    assert graph["conv_0.conv2d_0"].type.shape == ("N", 4, 6, 6)
    assert next(n for n in graph.compute_nodes if n.op == "gelu").attrs["approximate"] == "tanh"
    assert codes("    output y = conv(x, pad=1)", header="input x: f32[N, 2, 6, 6]",
                 prelude=prelude) == ["E0205"]


GPT_BLOCK = """\
# A GPT-style decoder block: integer tokens, a dynamic sequence length, free parameters.
network gpt_block {
    input tokens: i64[N, T]
    param pos: f32[1, 1024, 256] = normal(std=0.02)
    h = embedding(tokens, 50257, 256, name="wte") + pos[:, :T]
    a = layernorm(h, name="ln_1") |> multihead_attention(heads=8, causal=true, name="attn")
    h = h + a
    h = h + (layernorm(h, name="ln_2") |> dense(1024, name="mlp.c_fc") |> gelu(approximate="tanh")
             |> dense(256, name="mlp.c_proj"))
    output logits = matmul(layernorm(h, name="ln_f"), transpose(wte.weight, [1, 0]))
}
"""


def test_the_specs_gpt_block_parses() -> None:
    (network,) = parse(GPT_BLOCK, "gpt.net").networks
    param = network.body[1]
    assert isinstance(param, ast.ParamStmt) and param.name.text == "pos"
    assert isinstance(param.init, ast.Call) and param.init.callee.text == "normal"
    paths = [e for s in network.body if isinstance(s, (ast.AssignStmt, ast.OutputStmt))
             and s.value is not None for e in ast.subexpressions(s.value)
             if isinstance(e, (ast.PathRef, ast.Index))]
    assert [p.segments for p in paths if isinstance(p, ast.PathRef)] == [("wte", "weight")]
    (index,) = [p for p in paths if isinstance(p, ast.Index)]
    assert [type(item) for item in index.items] == [ast.IndexSlice, ast.IndexSlice]


# The `train` section ----------------------------------------------------------------------


LENET = """\
network lenet5 {
    input image: f32[N, 1, 28, 28]
    x = conv2d(image, filters=6, kernel=5, padding=2) |> relu |> maxpool2d(2)
    x = conv2d(x, filters=16, kernel=5) |> relu |> maxpool2d(2)
    x = flatten(x)
    x = dense(x, 120) |> relu
    x = dense(x, 84) |> relu
    output logits = dense(x, 10)
}

train lenet5 {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)
    freeze conv2d_0, layer1.0
    clip_grad_norm = 1.0
}
"""


def test_only_freeze_may_start_a_train_statement_with_a_name() -> None:
    with pytest.raises(CompileError) as caught:
        load_string(LENET.replace("freeze conv2d_0", "frieze conv2d_0"), "lenet.net")
    assert [d.code for d in caught.value.diagnostics] == ["E0005"]
