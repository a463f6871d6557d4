"""`--precision`: an f32 network run with 16-bit storage (netc.precision): the graph rewrite,
the driver, `netc compare` against the f32 reference, `netc run` and `netc compile`, the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from netc.api import loads
from netc.cli import main
from netc.driver import CompileOptions, compile_graph
from netc.ops.builder import GraphBuilder
from netc.precision import PrecisionError, with_precision

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MLP = str(EXAMPLES / "mlp.net")

NET = """
network mixed {
    input x: f32[N, 40]
    input ids: i64[N]
    y = dense(x, 24) |> relu
    z = cast(ids, "f32")
    output out = y * 2.0
    output ids_f = z
    output count = ids + ids
}
"""


def _graph():
    builder = GraphBuilder("mixed")
    x = builder.input("x", "f32", ("N", 40))
    ids = builder.input("ids", "i64", ("N",))
    builder.output("out", builder.op("relu", builder.op("dense", x, units=24)))
    builder.output("ids_f", builder.op("cast", ids, dtype="f32"))
    builder.output("twice", builder.op("add", ids, ids))
    return builder.build()


@pytest.mark.parametrize("precision", ["f16", "bf16"])
def test_every_f32_tensor_becomes_16_bit_and_integers_stay(precision: str) -> None:
    graph = _graph()
    converted = with_precision(graph, precision)
    assert [n.id for n in converted.nodes] == [n.id for n in graph.nodes]
    dtypes = {n.id: n.type.dtype for n in converted.nodes}
    for node in graph.nodes:
        expected = precision if node.type.dtype == "f32" else node.type.dtype
        assert dtypes[node.id] == expected, node.id
    cast = next(n for n in converted.nodes if n.op == "cast")
    assert cast.attrs["dtype"] == precision


def test_f32_and_tf32_store_the_network_as_written_and_others_are_refused() -> None:
    graph = _graph()
    assert with_precision(graph, "f32") is graph
    assert with_precision(graph, "tf32") is graph  # f32 storage; TF32 is the GEMMs' tiles'
    with pytest.raises(PrecisionError, match="f64"):
        with_precision(graph, "f64")


def test_the_driver_compiles_16_bit_gemms_for_tensor_cores() -> None:
    graph = _graph()
    # At batch 64: a batch of 1 takes the GEMV kernel (M <= 8) whatever the precision.
    plain = compile_graph(graph, CompileOptions(batch=64))
    half = compile_graph(graph, CompileOptions(precision="bf16", batch=64))
    assert not any("_mma_" in k for k in plain.plan.kernels)
    assert any(k.startswith("netc_gemm_bf16_mma_") for k in half.plan.kernels)
    assert half.options.to_json()["precision"] == "bf16"


def test_the_api_runs_a_network_in_bf16() -> None:
    model = loads(NET)
    weights = model.init_weights(seed=1)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 40)).astype(np.float32),
              "ids": np.array([1, 301, 7])}
    full = model.run(inputs, weights)
    half = model.compile("reference", weights, precision="bf16")(inputs)
    # bf16 keeps 8 significant bits: close to f32, and not equal to it.
    np.testing.assert_allclose(half["out"], full["out"], rtol=5e-2, atol=5e-2)
    assert not np.array_equal(half["out"], full["out"])
    # The cast to f32 became a cast to bf16: 301 is not a bf16 number (steps of 2 above 256).
    np.testing.assert_array_equal(full["ids_f"], [1.0, 301.0, 7.0])
    np.testing.assert_array_equal(half["ids_f"], [1.0, 300.0, 7.0])
    np.testing.assert_array_equal(half["count"], [2, 602, 14])


def test_compare_reports_the_difference_from_the_f32_reference(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", MLP, "--random-input", "--backends", "reference,cudasim",
                 "--precision", "bf16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tolerance rtol 0.05, atol 0.05; cudasim and cuda in bf16" in out
    row = next(line for line in out.splitlines() if line.startswith("cudasim"))
    max_abs = float(row.split()[2])
    assert 0 < max_abs < 0.05  # 16-bit storage shows, within bf16's tolerance


def test_compare_in_f16_with_f32_tolerances_disagrees(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", MLP, "--random-input", "--backends", "reference,cudasim",
                 "--precision", "f16", "--rtol", "1e-6", "--atol", "1e-7"])
    assert code == 3, capsys.readouterr().out


def test_compile_records_the_precision_and_16_bit_buffers(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp16"
    assert main(["compile", MLP, "--precision", "f16", "--arch", "sm_80", "-o", str(out)]) == 0
    capsys.readouterr()
    source = (out / "mlp.cu").read_text()
    assert "netc_gemv_f16_" in source  # batch 1: 16-bit GEMV kernels
    manifest = json.loads((out / "netc.json").read_text())
    assert '"precision": "f16"' in json.dumps(manifest)


def test_a_plan_backend_compiles_with_the_precision_it_is_given() -> None:
    from netc.backends import prepare

    model = loads(NET)
    runner = prepare("cudasim", model.graph, model.init_weights(seed=1), precision="bf16")
    assert runner.compiled.options.precision == "bf16"
    assert any(k.startswith("netc_gemv_bf16_") for k in runner.compiled.plan.kernels)
