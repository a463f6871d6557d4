"""The TensorRT build without TensorRT: the ONNX model and an equivalent trtexec command are
written, and the result says plainly that no engine was built. Runs everywhere (TensorRT's
import is forced to fail); the real build is tests/gpu/test_tensorrt.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest

import netc
from netc.backends import prepare, tensorrt
from netc.backends.tensorrt import (
    EngineInput,
    build_engine,
    engine_inputs,
    load_calibration_batches,
)
from netc.diagnostics import CompileError, MissingDependency
from netc.onnx.export import export_graph, save_model

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WHY = "TensorRT's Python package is not installed here (forced by the test)"


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt, "_import_tensorrt", lambda: (None, WHY))


@pytest.fixture(scope="module")
def lenet() -> tuple[netc.Model, dict[str, np.ndarray], onnx.ModelProto]:
    model = netc.load(EXAMPLES / "lenet5.net")
    weights = model.init_weights(seed=0)
    return model, weights, export_graph(model.graph, weights)


def test_fallback_writes_onnx_and_trtexec_command(lenet: tuple, tmp_path: Path) -> None:
    _, _, proto = lenet
    cache = tmp_path / "timing.cache"
    build = build_engine(proto, tmp_path / "out", fp16=True, batch=(1, 8, 32),
                         timing_cache=cache)
    assert not build.built and build.engine_path is None
    assert build.reason == WHY
    assert not list((tmp_path / "out").glob("*.engine"))
    assert build.onnx_path == tmp_path / "out" / "lenet5.onnx"
    onnx.checker.check_model(onnx.load(str(build.onnx_path)))
    assert build.command == (
        "trtexec --onnx=lenet5.onnx --saveEngine=lenet5.engine "
        "--minShapes=image:1x1x28x28 --optShapes=image:8x1x28x28 "
        "--maxShapes=image:32x1x28x28 --memPoolSize=workspace:1024 --fp16 "
        f"--timingCacheFile={cache.resolve()}")
    script = build.script_path.read_text()
    assert build.script_path == tmp_path / "out" / "trtexec.sh"
    assert os.stat(build.script_path).st_mode & stat.S_IXUSR
    assert script.startswith("#!/bin/sh") and 'cd "$(dirname "$0")"' in script
    assert " \\\n    ".join(build.command.split(" ")) in script
    summary = build.summary()
    assert summary.startswith("no TensorRT engine was built: " + WHY)
    assert "trtexec.sh" in summary and "built TensorRT" not in summary


def test_int8_command_names_the_calibration_cache(lenet: tuple, tmp_path: Path) -> None:
    _, _, proto = lenet
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    rng = np.random.default_rng(0)
    np.save(calibration / "a.npy", rng.standard_normal((5, 1, 28, 28)).astype(np.float32))
    np.save(calibration / "b.npy", rng.standard_normal((1, 28, 28)).astype(np.float32))
    build = build_engine(proto, tmp_path / "out", int8=True, calibration_dir=calibration,
                         batch=(1, 2, 4), timing_cache=tmp_path / "t.cache")
    assert not build.built
    assert build.calibration_batches == 3  # 6 items in batches of OPT=2
    assert "--int8 --calib=lenet5.calibration.cache" in build.command
    assert "calibration *cache*" in build.script_path.read_text()


def test_a_model_file_is_copied_with_its_external_data(lenet: tuple, tmp_path: Path) -> None:
    _, _, proto = lenet
    source = tmp_path / "src" / "lenet.onnx"
    source.parent.mkdir()
    save_model(proto, source, external_data_threshold_bytes=1024)
    assert (source.parent / "lenet.onnx.data").is_file()
    build = build_engine(source, tmp_path / "out", timing_cache=tmp_path / "t.cache")
    assert build.onnx_path == tmp_path / "out" / "lenet.onnx"
    assert (tmp_path / "out" / "lenet.onnx.data").is_file()
    onnx.checker.check_model(onnx.load(str(build.onnx_path)))
    assert "--minShapes=image:1x1x28x28" in build.command and "--fp16" not in build.command


def test_bad_requests_are_compile_errors(lenet: tuple, tmp_path: Path) -> None:
    _, _, proto = lenet
    with pytest.raises(CompileError, match="E0620"):
        build_engine(proto, tmp_path, batch=(4, 2, 8))
    with pytest.raises(CompileError, match="E0620"):
        build_engine(proto, tmp_path, calibration_dir=tmp_path)
    with pytest.raises(CompileError, match="E0620"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "out")
    dynamic = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "S"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]))
    with pytest.raises(CompileError, match="position 1"):
        engine_inputs(dynamic)


def test_calibration_batches(tmp_path: Path) -> None:
    single = [EngineInput("image", (None, 2, 3))]
    rng = np.random.default_rng(1)
    items = rng.standard_normal((7, 2, 3)).astype(np.float32)
    np.save(tmp_path / "0.npy", items[:4])
    np.save(tmp_path / "1.npy", items[4])
    np.save(tmp_path / "2.npy", items[5:].astype(np.float64))
    batches = load_calibration_batches(tmp_path, single, 3)
    assert len(batches) == 2  # the 7th item does not fill a third batch
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), items[:6])
    assert batches[0]["image"].dtype == np.float32
    two = [EngineInput("a", (None, 2)), EngineInput("b", (None, 1))]
    (tmp_path / "pair" / "a").mkdir(parents=True)
    (tmp_path / "pair" / "b").mkdir()
    np.save(tmp_path / "pair" / "a" / "x.npy", np.ones((4, 2), np.float32))
    np.save(tmp_path / "pair" / "b" / "x.npy", np.zeros((4, 1), np.float32))
    paired = load_calibration_batches(tmp_path / "pair", two, 2)
    assert len(paired) == 2 and paired[1]["b"].shape == (2, 1)
    np.save(tmp_path / "pair" / "b" / "y.npy", np.zeros((1,), np.float32))  # one more item
    with pytest.raises(CompileError, match="different numbers"):
        load_calibration_batches(tmp_path / "pair", two, 2)
    np.save(tmp_path / "bad.npy", np.zeros((2, 9), np.float32))
    with pytest.raises(CompileError, match="E0621"):
        load_calibration_batches(tmp_path, single, 1)
    with pytest.raises(CompileError, match="E0621"):
        load_calibration_batches(tmp_path / "nowhere", single, 1)


def test_the_backend_says_what_is_missing(lenet: tuple) -> None:
    model, weights, _ = lenet
    with pytest.raises(MissingDependency, match="TensorRT"):
        prepare("tensorrt", model.graph, weights)
