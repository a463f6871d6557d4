"""The command line, run as users run it: a subprocess, real files, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = ["mlp.net", "lenet5.net", "resnet18.net", "vgg.net", "transformer.net"]


def netc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_check_accepts_every_example(example: str) -> None:
    result = netc("check", str(EXAMPLES / example))
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout


def test_check_table_for_resnet18() -> None:
    result = netc("check", str(EXAMPLES / "resnet18.net"))
    lines = result.stdout.splitlines()
    assert "network resnet18" in lines[0]
    assert any(line.startswith("layer1.1.conv1 ") and "f32[N, 64, 56, 56]" in line
               and "36,864" in line for line in lines), result.stdout
    assert "11,689,512 parameters" in result.stdout  # torchvision's resnet18 has 11,689,512


def test_print_ir() -> None:
    result = netc("check", str(EXAMPLES / "lenet5.net"), "--print-ir")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("graph lenet5 {")
    assert "%conv2d_0.weight: f32[6, 1, 5, 5] = param()" in result.stdout


def test_init_then_run_writes_every_output(tmp_path: Path) -> None:
    weights = tmp_path / "enc.safetensors"
    assert netc("init", str(EXAMPLES / "transformer.net"), "-o", str(weights),
                "--seed", "4").returncode == 0
    tokens = np.random.default_rng(0).standard_normal((3, 16, 64)).astype(np.float32)
    np.save(tmp_path / "tokens.npy", tokens)
    out = tmp_path / "out.npz"
    result = netc("run", str(EXAMPLES / "transformer.net"), "--weights", str(weights), "--input",
                  f"tokens={tmp_path / 'tokens.npy'}", "--backend", "reference", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "hidden: [3, 16, 64]" in result.stdout
    with np.load(out, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["hidden", "token_scores"]
        scores = saved["token_scores"]
    assert scores.shape == (3, 16, 10)
    np.testing.assert_allclose(np.exp(scores).sum(-1), 1.0, rtol=1e-5)


def test_run_random_input_batch(tmp_path: Path) -> None:
    out = tmp_path / "o.npz"
    result = netc("run", str(EXAMPLES / "lenet5.net"), "--random-input", "--batch", "5",
                  "--backend", "reference", "-o", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(out) as saved:
        assert saved["logits"].shape == (5, 10)


@pytest.mark.parametrize(("args", "code"), [
    (["run", "lenet5.net", "--backend", "reference"], "E0401"),
    (["run", "lenet5.net", "--input", "image=nothere.npy", "--backend", "reference"], "E0405"),
    (["run", "lenet5.net", "--input", "pixels=x.npy", "--backend", "reference"], "E0403"),
    (["run", "lenet5.net", "--weights", "w.npz", "--random-input", "--backend", "reference"], "E0410"),
    (["run", "lenet5.net", "--input", "image=x.npy", "--backend", "reference"], "E0402"),
    (["check", "nothere.net"], "E01"),
])
def test_user_errors_exit_1_without_traceback(tmp_path: Path, args: list[str], code: str) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 1, 27, 28), np.float32))
    np.savez(tmp_path / "w.npz", stray=np.ones(3, np.float32))
    (tmp_path / "lenet5.net").write_text((EXAMPLES / "lenet5.net").read_text())
    result = netc(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error[{code}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_command_with_an_example() -> None:
    for command in ("check", "init", "run"):
        result = netc(command, "--help")
        assert result.returncode == 0
        assert "example:" in result.stdout and f"netc {command}" in result.stdout


def test_internal_error_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import netc.cli

    def broken(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(netc.cli, "cmd_check", broken)
    assert netc.cli.main(["check", str(EXAMPLES / "mlp.net")]) == 2
    assert "bug in netc" in capsys.readouterr().err


def test_compile_cuda_writes_a_complete_artifact(tmp_path: Path) -> None:
    out = tmp_path / "lenet"
    result = netc("compile", str(EXAMPLES / "lenet5.net"), "-o", str(out), "--arch", "sm_90")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lenet5.cu", "lenet5.cudasim.so", "lenet5.sm_90.cubin",
                     "lenet5.sm_90.ptx", "netc.json", "optimization.json", "plan.json",
                     "report.txt"]
    assert (out / "lenet5.sm_90.cubin").read_bytes()[:4] == b"\x7fELF"
    assert "compiling for sm_90" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["lenet"], "no staging directory left behind"


def test_compile_refuses_to_clobber_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    result = netc("compile", str(EXAMPLES / "mlp.net"), "-o", str(tmp_path), "--arch", "sm_90")
    assert result.returncode == 1
    assert "error[E0430]" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_onnx_export_then_import_round_trips(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    assert netc("init", str(EXAMPLES / "lenet5.net"), "-o", str(weights)).returncode == 0
    exported = netc("compile", str(EXAMPLES / "lenet5.net"), "--target", "onnx", "--weights",
                    str(weights), "-o", str(tmp_path / "onnx"))
    assert exported.returncode == 0, exported.stderr
    imported = netc("import", str(tmp_path / "onnx" / "lenet5.onnx"), "-o",
                    str(tmp_path / "back.net"), "--weights-out", str(tmp_path / "back.safetensors"))
    assert imported.returncode == 0, imported.stderr
    image = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    outputs = []
    for model, w in (("lenet5.net", weights), ("back.net", tmp_path / "back.safetensors")):
        path = EXAMPLES / model if model == "lenet5.net" else tmp_path / model
        out = tmp_path / f"{model}.npz"
        result = netc("run", str(path), "--weights", str(w), "--input",
                      f"image={tmp_path / 'image.npy'}", "--backend", "reference", "-o", str(out))
        assert result.returncode == 0, result.stderr
        with np.load(out) as saved:
            outputs.append(saved["logits"])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_compare_reports_agreement() -> None:
    result = netc("compare", str(EXAMPLES / "mlp.net"), "--random-input",
                  "--backends", "reference,onnx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agree" in result.stdout


def test_tensorrt_target_says_plainly_that_no_engine_was_built(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the fallback is not taken")
    except ImportError:
        pass
    out = tmp_path / "trt"
    result = netc("compile", str(EXAMPLES / "mlp.net"), "--target", "tensorrt", "--batch",
                  "1:4:16", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "no TensorRT engine was built" in result.stdout
    assert str(out) in result.stdout
    script = (out / "trtexec.sh").read_text()
    assert "--optShapes=pixels:4x784" in script and "--onnx=mlp.onnx" in script


def test_graph_draws_fused_groups_as_clusters(tmp_path: Path) -> None:
    out = tmp_path / "resnet.mmd"
    result = netc("graph", str(EXAMPLES / "resnet18.net"), "--stage", "optimized", "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    # 17 of the 20 convolutions take a pointwise epilogue; the 3 shortcut convs stand alone.
    assert text.count("subgraph") == 17
    assert "layer1.0.conv2" in text and "-->" in text
