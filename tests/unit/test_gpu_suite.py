"""The GPU benchmark suite (benchmarks/gpu/suite.py) without a GPU: its dry run builds the small
problems' plans and sm_90 cubins and checks them on cudasim against float64, so the suite cannot
rot between the rare runs on a lent device."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import suite  # noqa: E402

pytestmark = pytest.mark.unit

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc for sm_90 cubins")


@needs_nvcc
def test_the_dry_run_checks_the_small_problems_and_measures_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = "gemm_f32,dense_m1_f32,gemm_bf16,attention_t512_causal"
    assert suite.main(["--dry-run", "--problems", names, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = {row["problem"]: row for row in record["rows"]}
    assert sorted(rows) == sorted(names.split(","))
    for row in rows.values():
        assert row["netc_ms"] is None and row["peer_ms"] is None  # nothing was timed
        assert row["cubin_bytes"] > 0 and row["passed"]
        assert 0 <= row["rel_error"] <= 2e-2
    assert rows["gemm_f32"]["rel_error"] < 1e-5
    table = capsys.readouterr().out
    assert "attention_t512_causal | n/a | n/a" in table


@needs_nvcc
def test_a_wrong_result_fails_the_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a reference that disagrees with the kernel makes the exit status 1."""
    broken = [suite.Problem(p.name, p.group, p.source, p.flops, p.peer,
                            lambda inputs, weights: 2 * suite._matmul64(inputs, weights))
              for p in suite.PROBLEMS if p.name == "gemm_f32"]
    monkeypatch.setattr(suite, "PROBLEMS", broken)
    assert suite.main(["--dry-run", "--out", str(tmp_path)]) == 1


def test_an_unknown_problem_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite.main(["--dry-run", "--problems", "nope"]) == 2
    assert "known: gemm_f32" in capsys.readouterr().err


def test_the_timed_replay_alone_recomputes_a_poisoned_output() -> None:
    """What the GPU run times (the plan's launches alone, `PlanRunner.launch_all`) does the
    whole work: on cudasim, an output overwritten with NaN after a run is computed again."""
    import numpy as np

    from netc.driver import build_binary
    from netc.runtime.executor import PlanRunner
    from netc.sim import CudaSim

    (problem,) = [p for p in suite.PROBLEMS if p.name == "attention_t512_causal"]
    model, compiled, weights = suite.prepare(problem, "tiny")
    device = CudaSim()
    inputs = suite._inputs(model.graph, 1, seed=1)
    with PlanRunner(compiled.plan, device, compiled.weights_for(weights),
                    build_binary(compiled.plan, device)) as runner:
        (first,) = runner.run(inputs).values()
        ((_, output),) = compiled.plan.outputs
        device.upload(runner._handle(output), np.full(first.shape, np.nan, np.float32))
        assert np.isnan(runner.buffer_value(output)).all()
        runner.launch_all()
        again = runner.buffer_value(output)
    np.testing.assert_array_equal(again, first)
    assert suite._rel_error(again, suite._reference64(problem, model, weights, inputs)) < 1e-5
