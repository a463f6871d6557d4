"""`netc compare` with the CPU CUDA simulator: its per-layer view reads the launch plan's
buffers, so a fault is located at the right layer on that side too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import netc
from netc.compare import CompareReport, compare
from netc.driver import CompileOptions
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


@pytest.mark.parametrize(("level", "before"), [(0, 2), (2, 1)])
def test_cudasim_as_baseline_locates_a_broken_reference(monkeypatch: pytest.MonkeyPatch,
                                                        level: int, before: int) -> None:
    model, weights = _lenet()
    monkeypatch.setitem(REGISTRY, "maxpool2d", dataclasses.replace(
        REGISTRY["maxpool2d"], reference=lambda attrs, x: -x[:, :, ::2, ::2]))
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["cudasim", "reference"], layers=True,
                     compile_options=CompileOptions(level=level))
    _require_ran(report, "cudasim")
    divergence = report.result("reference").divergence
    assert divergence is not None, report.format()
    first_pool = next(n for n in model.graph.compute_nodes if n.op == "maxpool2d")
    # At -O0 the conv and the relu before the pool are both seen; at -O2 (the default) the
    # conv's value stays in registers, fused with its relu, so only the relu is.
    assert divergence.node == first_pool.id and divergence.compared_before == before
