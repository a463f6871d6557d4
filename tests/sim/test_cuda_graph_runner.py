"""The executor's CUDA-graph mode (`PlanRunner(cuda_graph=...)`), on the CPU.

The graph itself is the driver's (netc.runtime.cuda_graph, checked on a GPU by
tests/gpu/test_cuda_graph.py). What is checked here is the executor's side, with a simulator
that captures the way a CUDA stream does: during `capture(record)` the launches and copies are
queued instead of run, and `launch()` replays the queue, on the real generated kernels. So the
first run at a set of sizes launches kernel by kernel, the second captures, later ones replay;
new sizes capture again; uploads and downloads stay outside the graph; and a poisoned run's
graph holds the arena's poison fills (a launch lost from the graph shows as NaN, where stale
values of the previous run would otherwise pass for right).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_string
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.runtime.executor import PlanRunner
from tests.sim.codegen_support import assert_close, simulator
from tests.sim.graph_builder import random_weights

pytestmark = pytest.mark.sim

SOURCE = """network mlp {
    input x: f32[N, 24]
    h = x |> dense(40) |> relu |> dense(40) |> gelu
    output y = h |> dense(12) |> softmax
    output z = sum(h, axis=1)
}
"""


class _Queue(list[Any]):
    """The "stream" a capture records into: the operations, in order."""


class _Module:
    def __init__(self, module: Any, device: CapturingSim):
        self.module = module
        self.device = device

    def launch(self, name: str, grid: Any, block: Any, shared_bytes: int, args: Any,
               stream: _Queue | None = None) -> None:
        if stream is None:
            self.device.eager_launches += 1
            self.module.launch(name, grid, block, shared_bytes, args)
        else:
            stream.append(("launch", name, grid, block, shared_bytes, args))


class _Graph:
    def __init__(self, device: CapturingSim, queue: _Queue):
        self.device = device
        self.queue = queue

    def launch(self) -> None:
        self.device.replays += 1
        for step in self.queue:
            if step[0] == "launch" and step[1] not in self.device.lose:
                self.device.module.module.launch(*step[1:])
            elif step[0] == "copy":
                self.device.copy(*step[1:])

    def close(self) -> None:
        self.device.closed += 1


class CapturingSim:
    """The simulator with a graph capture that queues and replays (see the module docstring);
    `lose` names kernels the replay skips (a planted fault)."""

    def __init__(self) -> None:
        self.sim = simulator()
        self.eager_launches = self.captures = self.replays = self.closed = 0
        self.lose: set[str] = set()
        self.module: _Module

    def __getattr__(self, name: str) -> Any:  # alloc, upload, download, free
        return getattr(self.sim, name)

    def load_binary(self, binary: Any, kernels: Any) -> _Module:
        self.module = _Module(self.sim.load_binary(binary, kernels), self)
        return self.module

    def supports_graphs(self) -> bool:
        return True

    def capture(self, record: Any) -> _Graph:
        self.captures += 1
        queue = _Queue()
        record(queue)
        return _Graph(self, queue)

    def copy(self, destination: Any, source: Any, nbytes: int,
             stream: _Queue | None = None) -> None:
        if stream is not None:
            stream.append(("copy", destination, source, nbytes))
            return
        self.sim.upload(destination, self.sim.download(source.view(0, nbytes), np.uint8, nbytes))


@pytest.fixture(scope="module")
def compiled() -> tuple[Any, Any, Any, Any]:
    graph = load_string(SOURCE, "mlp.net")
    weights = random_weights(graph, np.random.default_rng(3))
    optimized = run_pipeline(graph, 2, weights)
    plan = generate(optimized.graph)
    return graph, weights, optimized.weights, plan


def _check(graph: Any, weights: Any, actual: dict[str, np.ndarray],
           inputs: dict[str, np.ndarray], what: str) -> None:
    for name, value in run_reference(graph, weights, inputs).items():
        assert_close(f"{what}: {name}", actual[name], value.astype(np.float32), 1e-4, 1e-5)


def test_the_second_run_captures_and_later_ones_replay(compiled: Any) -> None:
    graph, weights, plan_weights, plan = compiled
    device = CapturingSim()
    rng = np.random.default_rng(0)
    with PlanRunner(plan, device, plan_weights, build_binary(plan, device.sim)) as runner:
        assert runner.cuda_graph
        for run in range(4):
            inputs = {"x": rng.standard_normal((5, 24)).astype(np.float32)}
            _check(graph, weights, runner.run(inputs), inputs, f"run {run}")
        assert (device.eager_launches, device.captures, device.replays) == (
            len(plan.launches), 1, 3)
        runner.launch_all()  # the launches alone: the unpoisoned graph
        assert (device.captures, device.replays) == (2, 4)
        inputs = {"x": rng.standard_normal((9, 24)).astype(np.float32)}  # new sizes
        _check(graph, weights, runner.run(inputs), inputs, "N = 9, first run")
        assert device.closed == 2 and device.eager_launches == 2 * len(plan.launches)
        _check(graph, weights, runner.run(inputs), inputs, "N = 9, replayed")
        assert (device.captures, device.replays) == (3, 5)
    assert device.closed == 3


def test_a_poisoned_graph_refills_the_arena(compiled: Any) -> None:
    _, _, plan_weights, plan = compiled
    device = CapturingSim()
    inputs = {"x": np.random.default_rng(1).standard_normal((4, 24)).astype(np.float32)}
    first = plan.launches[0].kernel
    with PlanRunner(plan, device, plan_weights, build_binary(plan, device.sim)) as runner:
        runner.run(inputs)
        device.lose = {first}  # the graph drops the first layer's launch
        stale = runner.run(inputs, poison=False)
        # Without poison, the previous run's values in the arena hide the lost launch ...
        assert not any(np.isnan(value).any() for value in stale.values())
        poisoned = runner.run(inputs, poison=True)
    # ... with poison, the graph's fills make it show.
    assert device.captures == 2
    assert all(np.isnan(value).all() for value in poisoned.values())


def test_graphs_are_off_when_asked_and_refused_where_unsupported(compiled: Any) -> None:
    _, _, plan_weights, plan = compiled
    device = CapturingSim()
    inputs = {"x": np.ones((2, 24), np.float32)}
    with PlanRunner(plan, device, plan_weights, build_binary(plan, device.sim),
                    cuda_graph=False) as runner:
        for _ in range(3):
            runner.run(inputs)
        with pytest.raises(RuntimeError, match="has not run"):
            PlanRunner(plan, device, plan_weights, build_binary(plan, device.sim)).launch_all()
    assert device.captures == 0 and device.eager_launches == 3 * len(plan.launches)
    with pytest.raises(ValueError, match="cannot capture CUDA graphs"):
        PlanRunner(plan, simulator(), plan_weights, cuda_graph=True)
    with PlanRunner(plan, simulator(), plan_weights,
                    build_binary(plan, simulator())) as plain:
        assert not plain.cuda_graph


def test_the_api_refuses_cuda_graphs_off_the_gpu(compiled: Any) -> None:
    from netc.backends import BackendUnavailable, prepare

    graph, weights, _, _ = compiled
    with pytest.raises(BackendUnavailable, match=r"CUDA graphs .* need the cuda backend"):
        prepare("cudasim", graph, weights, cuda_graph=True)
