"""`netc compare` with the CPU CUDA simulator: its per-layer view reads the launch plan's
buffers, so a fault is located at the right layer on that side too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import netc
from netc.compare import CompareReport, compare
from netc.ops import REGISTRY
from netc.reference import random_inputs

pytestmark = pytest.mark.sim

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _lenet() -> tuple[netc.Model, dict[str, np.ndarray]]:
    model = netc.load(EXAMPLES / "lenet5.net")
    return model, model.init_weights(seed=1)


def _require_ran(report: CompareReport, backend: str) -> None:
    result = report.result(backend)
    if result.status == "skipped":
        pytest.skip(f"{backend}: {result.reason}")
    assert result.status in ("ran", "baseline"), report.format()


def test_cudasim_agrees_layer_by_layer() -> None:
    model, weights = _lenet()
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["reference", "cudasim"], layers=True)
    _require_ran(report, "cudasim")
    assert report.agree, report.format()
    assert "nodes compared, none diverges" in report.result("cudasim").layer_note


def test_cudasim_as_baseline_locates_a_broken_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _lenet()
    monkeypatch.setitem(REGISTRY, "maxpool2d", dataclasses.replace(
        REGISTRY["maxpool2d"], reference=lambda attrs, x: -x[:, :, ::2, ::2]))
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["cudasim", "reference"], layers=True)
    _require_ran(report, "cudasim")
    divergence = report.result("reference").divergence
    assert divergence is not None, report.format()
    first_pool = next(n for n in model.graph.compute_nodes if n.op == "maxpool2d")
    assert divergence.node == first_pool.id and divergence.compared_before == 2
