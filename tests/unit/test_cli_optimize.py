"""The command line's optimisation options: -O, --dump-ir, --tile, --tuning-db, netc explain."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netc.cli import main

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LENET = str(EXAMPLES / "lenet5.net")
RESNET18 = str(EXAMPLES / "resnet18.net")
PASSES_O2 = ["00_input.txt", "01_remove_dropout.txt", "02_simplify_views.txt",
             "03_fold_constants.txt", "04_fold_batchnorm.txt",
             "05_eliminate_common_subexpressions.txt", "06_eliminate_dead_code.txt",
             "07_fuse_attention.txt", "08_fold_transposes.txt", "09_fuse_epilogues.txt",
             "10_fuse_reduction_prologues.txt", "11_fuse_elementwise.txt"]


def netc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs the CLI in this process (faster than a subprocess); (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_shows_the_source_graph_unless_o_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    code, source, _ = netc(capsys, "check", LENET, "--print-ir")
    assert code == 0 and "fused(" not in source
    code, fused, _ = netc(capsys, "check", LENET, "--print-ir", "-O2")
    assert code == 0 and "fused(" in fused and 'kind="conv_epilogue"' in fused
    assert netc(capsys, "check", LENET, "--print-ir", "-O0")[1] == source


def test_check_with_o_appends_the_pass_log(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = netc(capsys, "check", RESNET18, "-O1")
    assert code == 0
    assert "11,689,512 parameters" in out  # the table is still the source's
    assert "-O1: 69 ops -> 49 in" in out
    assert "fold_batchnorm: folded 20 batchnorms into conv2d" in out
    assert "fuse_epilogues" not in out


@pytest.mark.parametrize("level, count", [(0, 1), (1, 7), (2, 12)])
def test_dump_ir_writes_the_ir_after_each_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               level: int, count: int) -> None:
    dump = tmp_path / "ir"
    code, _, err = netc(capsys, "check", RESNET18, f"-O{level}", "--dump-ir", str(dump))
    assert code == 0
    assert sorted(p.name for p in dump.iterdir() if p.suffix == ".txt") == PASSES_O2[:count]
    assert f"wrote the IR after each pass to {dump}" in err
    if level == 2:
        assert "fused(" in (dump / "09_fuse_epilogues.txt").read_text()


def test_dump_ir_of_a_compile_ends_with_the_memory_plan_that_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The arena written beside the passes is the launch plan's: the one the executor uses."""
    from netc.driver import CompileOptions, compile_graph
    from netc.frontend import load_file

    dump = tmp_path / "ir"
    code, _, _ = netc(capsys, "compile", RESNET18, "-O2", "--dump-ir", str(dump), "-o",
                      str(tmp_path / "out"), "--arch", "sm_90")
    assert code == 0
    assert sorted(p.name for p in dump.iterdir() if p.suffix == ".txt") == [*PASSES_O2, "12_memory_plan.txt"]
    plan = compile_graph(load_file(RESNET18), CompileOptions()).plan
    assert (dump / "12_memory_plan.txt").read_text() == \
        "\n".join(plan.memory_plan(plan.every_dim(1)).describe()) + "\n"


def test_explain_json_through_the_real_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "netc", "explain", RESNET18, "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for name in ("launches", "bytes_moved", "arena_bytes", "intermediate_bytes", "flops",
                 "predicted_time_s"):
        assert isinstance(data[name], int | float) and data[name] > 0, name
    assert data["kernels_count"] <= 24 and data["level"] == 2  # split-K adds launches


def test_explain_levels_arch_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = netc(capsys, "explain", RESNET18, "-O0", "--json", "--arch", "sm_80")
    data = json.loads(out)
    assert code == 0 and data["kernels_count"] == 68 and data["gpu"]["name"] == "A100 SXM"
    code, text, _ = netc(capsys, "explain", LENET, "--batch", "4")
    assert code == 0
    assert text.startswith("lenet5 at -O2 for sm_90 (H100 SXM")
    assert "lenet5.net:5" in text and "anchors a conv epilogue kernel" in text
    assert "batch 4" in text.splitlines()[0]


def test_run_on_the_simulator_at_every_level_and_tile(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {}
    for name, extra in [("reference", ["--backend", "reference"]),
                        ("o0", ["--backend", "cudasim", "-O0"]),
                        ("o2", ["--backend", "cudasim", "-O2"]),
                        ("tiled", ["--backend", "cudasim", "--tile", "all=bm32,bn32,tm2,tn2",
                                   "--tile", "conv2d_1=bm64,bn64"])]:
        out = tmp_path / f"{name}.npz"
        code, _, err = netc(capsys, "run", LENET, "--random-input", "--batch", "3", "-o",
                            str(out), *extra)
        assert code == 0, err
        with np.load(out) as saved:
            outputs[name] = saved["logits"]
    for name in ("o0", "o2", "tiled"):
        np.testing.assert_allclose(outputs[name], outputs["reference"], rtol=1e-4, atol=1e-5)


def test_run_derives_folded_weights_from_the_original_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "bn.net"
    model.write_text("network bn {\n    input x: f32[N, 3, 8, 8]\n"
                     "    output y = conv2d(x, 4, kernel=3, bias=false) |> batchnorm |> relu\n}\n")
    weights = tmp_path / "w.safetensors"
    assert netc(capsys, "init", str(model), "-o", str(weights))[0] == 0
    results = []
    for backend, level in (("reference", "2"), ("cudasim", "1"), ("cudasim", "2")):
        out = tmp_path / f"{backend}{level}.npz"
        code, _, err = netc(capsys, "run", str(model), "--weights", str(weights),
                            "--random-input", "--backend", backend, f"-O{level}", "-o", str(out))
        assert code == 0, err
        with np.load(out) as saved:
            results.append(saved["y"])
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile, code", [
    ("x=bq3", "E0440"),
    ("nolayer", "E0440"),
    ("maxpool2d#0=bm32", "E0441"),
    ("relu#0=bm32", "E0441"),
    ("dense_0=bm64,bn64,tm1,tn1", "E0441"),
])
def test_bad_tiles_exit_1_with_a_diagnostic(capsys: pytest.CaptureFixture[str], tile: str,
                                            code: str) -> None:
    exit_code, _, err = netc(capsys, "run", LENET, "--random-input", "--backend", "cudasim",
                             "--tile", tile)
    assert exit_code == 1
    assert f"error[{code}]" in err and "Traceback" not in err


def test_tuning_db_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db.json"
    db.write_text(json.dumps({"format": 1, "entries": [
        {"op": "dense", "m": 1, "n": 120, "k": 400, "arch": "sm_90",
         "tile": {"bm": 32, "bn": 32, "bk": 8, "tm": 2, "tn": 2}}]}))
    code, out, _ = netc(capsys, "explain", LENET, "--json", "--tuning-db", str(db))
    tiles = {t["layer"]: t for t in json.loads(out)["tiles"]}
    assert code == 0
    assert tiles["dense_0"]["source"] == "tuning-db"
    assert tiles["dense_0"]["tile"] == "bm32,bn32,bk8,tm2,tn2"
    assert tiles["dense_1"]["source"] == "heuristic"
    code, _, err = netc(capsys, "explain", LENET, "--tuning-db", str(tmp_path / "none.json"))
    assert code == 1 and "error[E0442]" in err


BATCHNORM_NET = ("network bn {\n    input x: f32[N, 3, 8, 8]\n"
                 "    y = conv2d(x, 4, kernel=3, bias=false) |> batchnorm |> relu\n"
                 "    output z = maxpool2d(y, 2) + 1.0\n}\n")


@pytest.mark.parametrize("level, compared", [("0", 5), ("1", 4), ("2", 2)])
def test_compare_runs_the_optimised_plan_against_the_unoptimised_reference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], level: str, compared: int) -> None:
    """The plan's values map back to the source nodes they equal (a conv with a folded
    batchnorm holds the batchnorm's value; a fused kernel its last member's)."""
    model = tmp_path / "bn.net"
    model.write_text(BATCHNORM_NET)
    code, out, err = netc(capsys, "compare", str(model), "--random-input", "--backends",
                          "reference,cudasim", "--layers", f"-O{level}")
    assert code == 0, out + err
    assert "all backends that ran agree" in out
    assert f"cudasim: {compared} nodes compared, none diverges" in out


def _device_compiler() -> bool:
    from netc.toolchain import nvrtc_status

    return shutil.which("nvcc") is not None or nvrtc_status()[0] is not None


@pytest.mark.skipif(not _device_compiler(), reason="needs NVRTC or nvcc")
def test_compile_reports_the_tiles_and_the_weight_transforms(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "bn.net"
    model.write_text("network bn {\n    input x: f32[N, 3, 8, 8]\n"
                     "    output y = conv2d(x, 40, kernel=3, bias=false) |> batchnorm |> relu\n}\n")
    out = tmp_path / "build"
    code, report, err = netc(capsys, "compile", str(model), "-o", str(out), "--arch", "sm_90",
                             "--tile", "conv2d_0=bm32,bn32,bk8,tm2,tn2")
    assert code == 0, err
    assert "tiles (chosen for sm_90, batch 1)" in report
    assert "conv2d_0  conv2d  40x36x27" in report and "--tile: given with --tile" in report
    assert "tiles (chosen for sm_90, batch 1)" in (out / "report.txt").read_text()
    document = json.loads((out / "optimization.json").read_text())
    assert document["level"] == 2 and document["tile_arch"] == "sm_90"
    assert [t["rule"] for t in document["weight_transforms"]] == ["batchnorm_weight",
                                                                   "batchnorm_bias"]
    assert document["tiles"][0]["tile"] == "bm32,bn32,bk8,tm2,tn2"
    assert "netc_conv2d_f32_bm32_bn32_bk8_tm2_tn2" in (out / "bn.cu").read_text()


@pytest.mark.parametrize("command", ["check", "run", "compile", "compare", "explain"])
def test_help_documents_the_options_with_examples(capsys: pytest.CaptureFixture[str],
                                                  command: str) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "example:" in text and f"netc {command}" in text
    assert "-O {0,1,2}" in text and "--dump-ir DIR" in text
    if command != "check":
        assert "--tile LAYER=TILE" in text and "--tuning-db FILE" in text
    if command == "explain":
        assert "--arch {sm_80,sm_90}" in text and "--json" in text


def test_run_repeat_reports_the_median_and_keeps_the_outputs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    once, repeated = tmp_path / "once.npz", tmp_path / "repeated.npz"
    common = [LENET, "--random-input", "--backend", "cudasim", "--seed", "3"]
    assert netc(capsys, "run", *common, "-o", str(once))[0] == 0
    code, out, _ = netc(capsys, "run", *common, "--repeat", "3", "-o", str(repeated))
    assert code == 0
    assert "3 runs: first " in out and " ms, then median " in out
    with np.load(once) as a, np.load(repeated) as b:
        np.testing.assert_array_equal(a["logits"], b["logits"])


def test_cuda_graph_needs_the_cuda_backend(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = netc(capsys, "run", LENET, "--random-input", "--backend", "cudasim",
                          "--cuda-graph")
    assert code == 1 and "--cuda-graph needs the cuda backend, not `cudasim`" in err
    assert "generated" not in err  # refused before anything is compiled
    code, _, _ = netc(capsys, "run", LENET, "--random-input", "--backend", "cudasim",
                      "--no-cuda-graph")
    assert code == 0
