"""TensorRT engines built from netc's ONNX export, run and compared with the reference.

Skipped, with the reason, unless `tensorrt` and PyCUDA import and a CUDA GPU is present
(conftest.py skips the whole gpu tier without a GPU). NOT RUN on the machine this was written
on: it has no GPU, and TensorRT's builder cannot be installed there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import netc
from netc.compare import compare
from netc.onnx.export import export_graph
from netc.reference import random_inputs

pytestmark = pytest.mark.gpu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package (pip install tensorrt) "
                          "is not installed")
pytest.importorskip("pycuda.driver", reason="PyCUDA (pip install pycuda) is not installed")


def _lenet() -> tuple[netc.Model, dict[str, np.ndarray]]:
    model = netc.load(EXAMPLES / "lenet5.net")
    return model, model.init_weights(seed=0)


def test_build_engine_for_lenet5(tmp_path: Path) -> None:
    from netc.backends.tensorrt import build_engine

    model, weights = _lenet()
    lines: list[str] = []
    cache = tmp_path / "timing.cache"
    build = build_engine(export_graph(model.graph, weights), tmp_path / "out",
                         batch=(1, 4, 16), timing_cache=cache, log=lines.append)
    assert build.built, build.summary()
    assert build.engine_path is not None and build.engine_path.stat().st_size > 0
    assert cache.is_file() and cache.stat().st_size > 0  # saved after the build
    assert build.errors == 0, build.summary()
    # A second build loads the timing cache it left.
    again = build_engine(export_graph(model.graph, weights), tmp_path / "again",
                         batch=(1, 4, 16), timing_cache=cache)
    assert again.built, again.summary()


@pytest.mark.parametrize("batch", [1, 3])
def test_tensorrt_backend_matches_reference(batch: int, tmp_path: Path) -> None:
    model, weights = _lenet()
    report = compare(model.graph, weights, random_inputs(model.graph, batch=batch),
                     ["reference", "tensorrt"], rtol=1e-3, atol=1e-3,
                     options={"tensorrt": {"cache_dir": str(tmp_path)}})
    assert report.result("tensorrt").status == "ran", report.format()
    assert report.agree, report.format()


def test_fp16_engine_is_close(tmp_path: Path) -> None:
    model, weights = _lenet()
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["reference", "tensorrt"], rtol=5e-2, atol=5e-2,
                     options={"tensorrt": {"cache_dir": str(tmp_path), "fp16": True}})
    assert report.agree, report.format()
