"""Compiled artifacts that run later: `netc compile -o DIR` then `netc run DIR` in a fresh
process, without the `.net` file and without compiling anything; a damaged, edited or
version-mismatched artifact is refused (E0431, exit 1) and never half-loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netc
from netc.artifacts import ArtifactLoadError, load_artifact
from netc.backends import prepare_artifact
from netc.reference import random_inputs

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def netc_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True,
                          cwd=cwd)


def _compiled(tmp_path: Path, example: str, *, weights: bool = True) -> tuple[Path, Path, Path]:
    """A copy of `example` compiled into `tmp_path/out` (with its weights), the copy deleted
    afterwards; returns (artifact, weights file, inputs file)."""
    sources = tmp_path / "src"
    shutil.copytree(EXAMPLES, sources)  # the example and the files it imports
    model = sources / example
    weights_file = tmp_path / "w.safetensors"
    assert netc_cli("init", str(model), "-o", str(weights_file)).returncode == 0
    out = tmp_path / "out"
    extra = ["--weights", str(weights_file)] if weights else []
    result = netc_cli("compile", str(model), "-o", str(out), "--arch", "sm_90", *extra)
    assert result.returncode == 0, result.stderr
    graph = netc.load(model).graph
    inputs = random_inputs(graph, batch=2, seed=5)
    (name, value), = inputs.items()
    inputs_file = tmp_path / f"{name}.npy"
    np.save(inputs_file, value)
    shutil.rmtree(sources)
    return out, weights_file, inputs_file


def _run(target: Path, inputs_file: Path, output: Path, *extra: str) -> np.ndarray:
    name = inputs_file.stem
    result = netc_cli("run", str(target), "--backend", "cudasim", "--input",
                      f"{name}={inputs_file}", "-o", str(output), *extra)
    assert result.returncode == 0, result.stderr
    with np.load(output) as data:
        return {key: data[key] for key in data.files}


def test_resnet18_artifact_runs_without_its_source(tmp_path: Path) -> None:
    out, weights, inputs = _compiled(tmp_path, "resnet18.net")
    manifest = json.loads((out / "netc.json").read_text())
    assert manifest["simulator"]["file"] == "resnet18.cudasim.so"
    assert "weights.safetensors" in manifest["files"]
    from_artifact = _run(out, inputs, tmp_path / "a.npz")
    assert not (tmp_path / "src").exists()
    # The same network run from its source, as `netc run examples/resnet18.net` does.
    from_source = _run(EXAMPLES / "resnet18.net", inputs, tmp_path / "b.npz", "--weights",
                       str(weights))
    assert from_artifact.keys() == from_source.keys()
    for key, value in from_source.items():
        np.testing.assert_array_equal(from_artifact[key], value)


def test_an_artifact_without_weights_takes_the_source_weights(tmp_path: Path) -> None:
    out, weights, inputs = _compiled(tmp_path, "lenet5.net", weights=False)
    refused = netc_cli("run", str(out), "--random-input", "--backend", "cudasim")
    assert refused.returncode == 1 and "error[E0431]" in refused.stderr
    assert "holds no weights" in refused.stderr
    with_weights = _run(out, inputs, tmp_path / "a.npz", "--weights", str(weights))
    graph = netc.load(EXAMPLES / "lenet5.net").graph
    expected = netc.Model(graph).run({"image": np.load(inputs)},
                                     netc.load_weights(weights))["logits"]
    np.testing.assert_allclose(with_weights["logits"], expected, rtol=1e-4, atol=1e-5)


def test_the_api_loads_an_artifact(tmp_path: Path) -> None:
    out, _, inputs = _compiled(tmp_path, "lenet5.net")
    artifact = load_artifact(out)
    assert artifact.network == "lenet5" and artifact.binary is not None
    assert artifact.binary.archs == ("sm_90",)
    run = prepare_artifact(artifact, "cudasim")
    logits = run({"image": np.load(inputs)})["logits"]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    compiled = netc.load_artifact(out)
    assert compiled.inputs == {"image": ("f32", ("N", 1, 28, 28))}
    assert compiled.outputs == ["logits"]
    np.testing.assert_array_equal(compiled.run({"image": np.load(inputs)})["logits"], logits)


def _tamper_cases() -> list[tuple[str, str]]:
    return [("edited", "a byte of the cubin flipped"), ("truncated", "plan.json cut short"),
            ("extra", "a file added"), ("missing", "the weights removed"),
            ("version", "another netc version"), ("manifest", "netc.json garbled"),
            ("machine", "a simulator build for another machine")]


@pytest.mark.parametrize("case", [name for name, _ in _tamper_cases()])
def test_a_damaged_artifact_is_refused(tmp_path: Path, case: str) -> None:
    out, _, inputs = _compiled(tmp_path, "lenet5.net")
    manifest_path = out / "netc.json"
    manifest = json.loads(manifest_path.read_text())
    if case == "edited":
        cubin = out / "lenet5.sm_90.cubin"
        data = bytearray(cubin.read_bytes())
        data[len(data) // 2] ^= 1
        cubin.write_bytes(bytes(data))
    elif case == "truncated":
        plan = out / "plan.json"
        plan.write_bytes(plan.read_bytes()[:100])
    elif case == "extra":
        (out / "notes.txt").write_text("mine")
    elif case == "missing":
        (out / "weights.safetensors").unlink()
    elif case == "version":
        manifest["netc_version"] = "0.0.1"
        manifest_path.write_text(json.dumps(manifest))
    elif case == "manifest":
        manifest_path.write_text("{not json")
    elif case == "machine":
        manifest["simulator"]["machine"] = "sparc64"
        manifest_path.write_text(json.dumps(manifest))
    result = netc_cli("run", str(out), "--input", f"image={inputs}", "--backend", "cudasim")
    assert result.returncode == 1, result.stderr
    assert "error[E0431]" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ArtifactLoadError):
        artifact = load_artifact(out)
        prepare_artifact(artifact, "cudasim")
