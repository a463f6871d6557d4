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
    assert any(line.startswith("basic_1.conv2d_0 ") and "f32[N, 64, 56, 56]" in line
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
