"""One compile driver: every entry point compiles a network to the same plan and launches the
same kernels, and the runtime never compiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import netc
import netc.backends
from netc.cli import main
from netc.driver import CompileOptions, compile_graph
from netc.explain import explain
from netc.runtime.executor import PlanRunner
from tests.unit.test_codegen_executor import FakeDevice

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = ["mlp.net", "lenet5.net", "resnet18.net", "resnet50.net", "vgg.net",
                 "transformer.net"]

Launched = list[tuple[str, tuple[int, ...], tuple[int, ...], int, int]]


class RecordingDevice(FakeDevice):
    """The fake device of the executor tests, with a toolchain step: what it launches is
    recorded (kernel, grid, block, shared bytes, argument count); nothing runs."""

    def build(self, source: str, kernels: Sequence[str], *, name: str = "module") -> str:
        return f"binary of {name}"


def _launched(device: RecordingDevice) -> Launched:
    return [(name, grid, block, shared, len(args))
            for name, grid, block, shared, args in device.launches]


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> list[RecordingDevice]:
    """Every device a `cudasim` backend is prepared on, in order."""
    made: list[RecordingDevice] = []

    def simulator(options: Any) -> RecordingDevice:
        made.append(RecordingDevice())
        return made[-1]

    monkeypatch.setattr(netc.backends, "simulator", simulator)
    return made


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_the_api_and_the_command_line_launch_the_same_kernels(
        example: str, devices: list[RecordingDevice], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / example
    model = netc.load(path)
    weights = model.init_weights(seed=0)
    weights_file = tmp_path / "w.safetensors"
    netc.save_weights(weights, weights_file)
    inputs = netc.reference.random_inputs(model.graph, batch=2, seed=0)
    model.compile("cudasim", weights)(inputs)
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value)
    specs = [f"{name}={tmp_path / name}.npy" for name in inputs]
    assert main(["run", str(path), "--backend", "cudasim", "--weights", str(weights_file),
                 *[arg for spec in specs for arg in ("--input", spec)]]) == 0, \
        capsys.readouterr().err
    api, cli = devices
    assert api.loaded and _launched(api), "the API ran no kernel"
    assert _launched(api) == _launched(cli)
    assert api.loaded == cli.loaded


def test_the_api_optimises_as_the_command_line_does() -> None:
    graph = netc.load(EXAMPLES / "resnet18.net").graph
    # -O2, the default everywhere; split-K adds a reduce launch to the layers it splits.
    for options, kernels in ((CompileOptions(), 23), (CompileOptions(level=0), 68)):
        launches = [launch.kernel for launch in compile_graph(graph, options).plan.launches]
        assert len(launches) - sum(name.startswith("netc_splitk_reduce_")
                                   for name in launches) == kernels


def test_explain_reports_the_plan_that_compiles() -> None:
    graph = netc.load(EXAMPLES / "resnet50.net").graph
    compiled = compile_graph(graph, CompileOptions(arch="sm_80"))
    report = explain(graph, 2, "sm_80")
    assert report.launches == len(compiled.plan.launches)
    assert report.arena_bytes == compiled.plan.arena_bytes(compiled.plan.every_dim(1))
    assert [(c.node, c.tile) for c in report.tiles] == [(c.node, c.tile) for c in compiled.tiles]


def test_the_runtime_loads_binaries_and_compiles_nothing() -> None:
    compiled = compile_graph(netc.load(EXAMPLES / "mlp.net").graph)
    weights = compiled.weights_for(netc.load(EXAMPLES / "mlp.net").init_weights(0))
    with pytest.raises(ValueError, match="compiled module"):
        PlanRunner(compiled.plan, RecordingDevice(), weights)
    device = RecordingDevice()
    with PlanRunner(compiled.plan, device, weights, "prebuilt") as runner:
        runner.run({"pixels": np.zeros((1, 784), np.float32)})
    assert device.loaded == [("prebuilt", list(compiled.plan.kernels))]
