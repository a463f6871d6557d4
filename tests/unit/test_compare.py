"""`netc compare`: backends cross-checked output by output and, with layers=True, layer by layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import netc
import netc.backends
from netc.backends import BackendUnavailable
from netc.compare import compare, difference
from netc.ir import Graph
from netc.ops import REGISTRY
from netc.reference import random_inputs, run_reference

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str, seed: int = 1) -> tuple[netc.Model, dict[str, np.ndarray]]:
    model = netc.load(EXAMPLES / name)
    return model, model.init_weights(seed=seed)


@pytest.mark.parametrize("example", ["mlp.net", "lenet5.net", "transformer.net"])
def test_reference_and_onnx_agree_on_examples(example: str) -> None:
    model, weights = _example(example)
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["reference", "onnx"], layers=True)
    assert report.agree, report.format()
    onnx_result = report.result("onnx")
    assert onnx_result.divergence is None
    assert f"{len(model.graph.compute_nodes)} nodes compared" in onnx_result.layer_note
    text = report.format()
    assert "agree" in text and "rtol 0.001, atol 0.0001" in text


def test_a_broken_op_is_caught_at_its_first_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _example("lenet5.net")
    # The reference backend's relu goes wrong; onnx (first) is the baseline.
    broken = dataclasses.replace(REGISTRY["relu"], reference=lambda attrs, x: np.abs(x))
    monkeypatch.setitem(REGISTRY, "relu", broken)
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["onnx", "reference"], layers=True)
    assert not report.agree
    divergence = report.result("reference").divergence
    assert divergence is not None, report.format()
    first_relu = next(n for n in model.graph.compute_nodes if n.op == "relu")
    assert divergence.node == first_relu.id and divergence.op == "relu"
    assert divergence.location is not None and divergence.location.endswith("lenet5.net:5")
    assert divergence.compared_before == 1  # conv2d_0 agreed
    assert "first divergence at" in report.format() and "DISAGREE" in report.format()


def _fake_backend(perturb: str | None = None, noise: float = 0.0,
                  fail: Exception | None = None) -> Any:
    """A backend that is the reference with one node's value changed (by node id)."""
    def factory(graph: Graph, weights: Mapping[str, np.ndarray],
                options: Mapping[str, Any]) -> Any:
        if fail is not None:
            raise fail

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return _perturbed(graph, weights, inputs, perturb, noise)[0]
        return run
    return factory


def _perturbed(graph: Graph, weights: Mapping[str, np.ndarray],
               inputs: Mapping[str, np.ndarray], perturb: str | None,
               noise: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Runs the graph node by node like the reference, adding `noise` to node `perturb`."""
    from netc.ops import REGISTRY as ops

    values: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.op == "input":
            value = np.asarray(inputs[node.id], dtype=np.float32)
        elif node.op == "param":
            value = np.asarray(weights[node.id], dtype=np.float32)
        elif node.op == "constant":
            value = np.float32(node.attrs["value"])
        else:
            value = ops[node.op].reference(node.attrs, *(values[i] for i in node.inputs))
            if node.id == perturb:
                value = value + np.float32(noise)
        values[node.id] = np.asarray(value, dtype=np.float32)
    outputs = {name: values[node_id] for name, node_id in graph.outputs}
    layers = {n.id: values[n.id] for n in graph.compute_nodes}
    return outputs, layers


def test_an_injected_fault_is_located_by_a_fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _example("mlp.net")
    graph = model.graph
    target = next(n for n in graph.compute_nodes if n.layer == "fc2")
    monkeypatch.setitem(netc.backends._FACTORIES, "fake", _fake_backend(target.id, 0.5))

    def probe(graph: Graph, weights: Mapping[str, np.ndarray],
              inputs: Mapping[str, np.ndarray], options: Mapping[str, Any]
              ) -> dict[str, np.ndarray]:
        return _perturbed(graph, weights, inputs, target.id, 0.5)[1]

    inputs = random_inputs(graph, batch=3)
    report = compare(graph, weights, inputs, ["reference", "fake"], layers=True,
                     layer_probes={"fake": probe})
    fake = report.result("fake")
    assert not fake.agree
    assert fake.divergence is not None
    assert (fake.divergence.node, fake.divergence.layer) == (target.id, "fc2")
    assert fake.divergence.location is not None
    assert fake.divergence.location.endswith("mlp.net:6")
    assert "layer `fc2` (dense" in report.format()
    # Without a probe the fake backend has no per-layer view, and the report says so.
    plain = compare(graph, weights, inputs, ["reference", "fake"], layers=True)
    assert plain.result("fake").divergence is None
    assert "per-layer view not available" in plain.result("fake").layer_note


def test_tolerance_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _example("mlp.net")
    last = model.graph.outputs[0][1]
    monkeypatch.setitem(netc.backends._FACTORIES, "fake", _fake_backend(last, 1e-3))
    inputs = random_inputs(model.graph, batch=2)
    strict = compare(model.graph, weights, inputs, ["reference", "fake"])
    assert not strict.agree
    loose = compare(model.graph, weights, inputs, ["reference", "fake"], atol=1e-2)
    assert loose.agree, loose.format()
    assert "atol 0.01" in loose.format()


def test_unavailable_backends_are_skipped_and_failures_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _example("mlp.net")
    monkeypatch.setitem(netc.backends._FACTORIES, "absent",
                        _fake_backend(fail=BackendUnavailable("needs a flux capacitor")))
    monkeypatch.setitem(netc.backends._FACTORIES, "crashing",
                        _fake_backend(fail=RuntimeError("kernel exploded")))
    inputs = random_inputs(model.graph, batch=2)
    report = compare(model.graph, weights, inputs, ["reference", "onnx", "absent"])
    assert report.agree
    assert report.result("absent").status == "skipped"
    assert "flux capacitor" in report.format() and "1 skipped" in report.format()
    failing = compare(model.graph, weights, inputs, ["reference", "crashing"])
    assert not failing.agree
    assert failing.result("crashing").status == "failed"
    assert "FAILED to run: crashing" in failing.format()
    # The baseline is the first backend that runs.
    shifted = compare(model.graph, weights, inputs, ["absent", "reference", "onnx"])
    assert shifted.baseline == "reference" and shifted.agree


def test_tensorrt_without_tensorrt_is_skipped_with_the_reason() -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here; the gpu tier checks the backend itself")
    model, weights = _example("mlp.net")
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["reference", "tensorrt"])
    result = report.result("tensorrt")
    assert result.status == "skipped" and "TensorRT" in result.reason


def test_difference_measures() -> None:
    baseline = np.array([1.0, -2.0, 0.0, 1e-6], dtype=np.float32)
    same = difference(baseline, baseline)
    assert same.agree and same.max_abs == 0.0
    off = difference(baseline + np.float32(0.01), baseline)
    assert not off.agree and off.mismatched == 4
    assert off.max_abs == pytest.approx(0.01, rel=1e-3)
    # Relative differences ignore near-zero baseline elements (|b| <= atol).
    assert off.max_rel == pytest.approx(0.01, rel=1e-3)
    nan = np.array([np.nan, 1.0], dtype=np.float32)
    assert difference(nan, nan).agree
    assert not difference(np.array([np.nan, 1.0]), np.array([0.0, 1.0])).agree
    shape = difference(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not shape.agree and shape.shape_problem is not None


def test_reference_probe_matches_the_interpreter() -> None:
    from netc.compare import LAYER_PROBES

    model, weights = _example("mlp.net")
    inputs = random_inputs(model.graph, batch=2)
    layers = LAYER_PROBES["reference"](model.graph, weights, inputs, {})
    outputs = run_reference(model.graph, weights, inputs)
    for name, node_id in model.graph.outputs:
        np.testing.assert_array_equal(layers[node_id], outputs[name])


def test_layers_of_an_f16_network_on_onnx(tmp_path: Path) -> None:
    """The onnx layer view feeds f16 inputs as float16 and declares each value's own type."""
    pytest.importorskip("onnxruntime")
    model = netc.loads("network half {\n    input x: f16[N, 8]\n    h = dense(x, 4) |> relu\n"
                       "    output y = dense(h, 3)\n}\n")
    weights = model.init_weights(seed=0)
    report = compare(model.graph, weights, random_inputs(model.graph, batch=2),
                     ["reference", "onnx"], layers=True)
    assert report.agree, report.format()
    assert report.result("onnx").layer_note == "3 nodes compared, none diverges"
