"""The losses (netc.ops.losses) against PyTorch, onnxruntime and the ONNX import: ragged N and
C, spatial dims, ignored targets (all ignored is NaN), label smoothing, NaN and infinity."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

import netc
from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import TensorType
from netc.onnx.export import export_op
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder, make_attrs
from netc.ops.decompose import expand_decompositions
from netc.reference import run_reference

SIZES = (1, 31, 33, 127, 129)
CLASS_OPS = ("cross_entropy", "nll_loss")
PAIR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse_loss": F.mse_loss, "l1_loss": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits}
LOSSES = {*CLASS_OPS, *PAIR_OPS}


def torch_loss(op: str, a: np.ndarray, b: np.ndarray, **attrs: Any) -> np.ndarray:
    if op in CLASS_OPS:
        scores, target = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.int64)
        result = (F.cross_entropy(scores, target, **attrs) if op == "cross_entropy" else
                  F.nll_loss(scores, target, **attrs))
    else:
        result = PAIR_OPS[op](torch.tensor(a, dtype=torch.float64),
                              torch.tensor(b, dtype=torch.float64))
    return np.asarray(result.numpy(), dtype=np.float32)


def class_case(seed: int, n: int, c: int, spatial: tuple[int, ...], ignored: float,
               special: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((n, c, *spatial))).astype(np.float32)
    target = rng.integers(0, c, (n, *spatial))
    target[rng.random(target.shape) < ignored] = -100
    if special:  # one NaN, one -inf and one +inf logit, somewhere
        for value in (np.nan, -np.inf, np.inf):
            logits[tuple(int(rng.integers(0, d)) for d in logits.shape)] = value
    return logits, target


def assert_same(actual: Any, expected: Any, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=rtol, atol=1e-6)


def reference(op: str, *arrays: np.ndarray, **attrs: Any) -> np.ndarray:
    return REGISTRY[op].reference(make_attrs(op, attrs, []), *arrays)


def decomposed(op: str, *arrays: np.ndarray, **attrs: Any) -> np.ndarray:
    """What the CUDA code and the ONNX export compute: the op's decomposition (expanded until
    no loss is left), each op's reference in turn."""
    builder = GraphBuilder(op)
    names = [builder.input(f"input_{i}", "f32" if a.dtype.kind == "f" else "i64", a.shape)
             for i, a in enumerate(arrays)]
    builder.output("output", builder.op(op, *names, **attrs))
    graph = expand_decompositions(builder.build(), lambda name: name not in LOSSES)
    assert not LOSSES & {node.op for node in graph.nodes}
    feed = {f"input_{i}": a for i, a in enumerate(arrays)}
    return run_reference(graph, {}, feed)["output"]


@given(op=st.sampled_from(CLASS_OPS), n=st.sampled_from(SIZES), c=st.sampled_from(SIZES),
       spatial=st.sampled_from(((), (3,), (2, 5))), ignored=st.sampled_from((0.0, 0.3, 1.0)),
       smoothing=st.sampled_from((0.0, 0.1, 1.0)), special=st.booleans(),
       seed=st.integers(0, 2**16))
@example(op="cross_entropy", n=3, c=5, spatial=(), ignored=1.0, smoothing=0.0, special=False,
         seed=0)
@example(op="cross_entropy", n=33, c=129, spatial=(3,), ignored=0.3, smoothing=0.1,
         special=True, seed=1)
def test_class_losses_match_pytorch(op: str, n: int, c: int, spatial: tuple[int, ...],
                                    ignored: float, smoothing: float, special: bool,
                                    seed: int) -> None:
    scores, target = class_case(seed, n, c, spatial, ignored, special)
    attrs: dict[str, Any] = {"label_smoothing": smoothing} if op == "cross_entropy" else {}
    if op == "nll_loss":
        scores = torch.log_softmax(torch.tensor(scores), 1).numpy()
    expected = torch_loss(op, scores, target, **attrs)
    assert_same(reference(op, scores, target, **attrs), expected)
    assert_same(decomposed(op, scores, target, **attrs), expected, rtol=1e-4)


def test_all_targets_ignored_is_nan_as_pytorch() -> None:
    scores, target = class_case(0, 4, 3, (), 1.0, False)
    assert np.isnan(torch_loss("cross_entropy", scores, target))
    assert np.isnan(reference("cross_entropy", scores, target))
    assert np.isnan(reference("nll_loss", scores, target))


def test_a_class_id_out_of_range_gives_nan() -> None:
    scores, target = class_case(0, 4, 3, (), 0.0, False)
    target[1] = 3
    assert np.isnan(reference("cross_entropy", scores, target))
    assert np.isnan(decomposed("cross_entropy", scores, target))


@given(op=st.sampled_from(sorted(PAIR_OPS)), n=st.sampled_from(SIZES),
       rest=st.sampled_from(((), (3,), (2, 5))), special=st.booleans(),
       seed=st.integers(0, 2**16))
def test_pair_losses_match_pytorch(op: str, n: int, rest: tuple[int, ...], special: bool,
                                   seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = (4 * rng.standard_normal((n, *rest))).astype(np.float32)
    b = (rng.random((n, *rest)) if op == "bce_with_logits" else
         rng.standard_normal((n, *rest))).astype(np.float32)
    if special:
        a.flat[int(rng.integers(0, a.size))] = rng.choice([np.nan, np.inf, -np.inf])
    expected = torch_loss(op, a, b)
    assert_same(reference(op, a, b), expected)
    assert_same(decomposed(op, a, b), expected, rtol=1e-4)


def test_bce_with_logits_is_stable_for_large_logits() -> None:
    x = np.array([-200.0, -30.0, 0.0, 30.0, 200.0], dtype=np.float32)
    y = np.array([1.0, 0.0, 0.5, 1.0, 0.0], dtype=np.float32)
    expected = torch_loss("bce_with_logits", x, y)
    assert np.isfinite(expected)
    assert_same(reference("bce_with_logits", x, y), expected)


# ONNX ---------------------------------------------------------------------------------------


def run_onnxruntime(model: onnx.ModelProto, *arrays: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feed = {info.name: array for info, array in zip(session.get_inputs(), arrays)}
    return np.asarray(session.run(None, feed)[0])


def imported_value(model: onnx.ModelProto, *arrays: np.ndarray) -> tuple[str, np.ndarray]:
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="imported.net")
    feed = {imported.inputs[f"input_{i}"]: a for i, a in enumerate(arrays)}
    return imported.text, run_reference(graph, imported.weights, feed)[imported.outputs["output"]]


@pytest.mark.parametrize("op, attrs, native", [
    ("cross_entropy", {}, "cross_entropy("),
    ("cross_entropy", {"ignore_index": 1}, "cross_entropy("),
    ("cross_entropy", {"label_smoothing": 0.25}, "log_softmax("),
    ("nll_loss", {}, "nll_loss("),
    ("mse_loss", {}, "mean("),
    ("l1_loss", {}, "mean("),
    ("bce_with_logits", {}, "mean("),
])
@pytest.mark.parametrize("spatial", [(), (3,)])
def test_export_matches_onnxruntime_and_imports_back(op: str, attrs: dict[str, Any],
                                                     native: str,
                                                     spatial: tuple[int, ...]) -> None:
    if op in CLASS_OPS:
        a, b = class_case(3, 5, 7, spatial, 0.0 if "ignore_index" in attrs else 0.3, False)
        types = [TensorType("f32", ("N", 7, *spatial)), TensorType("i64", ("N", *spatial))]
    else:
        rng = np.random.default_rng(3)
        a = rng.standard_normal((5, 7, *spatial)).astype(np.float32)
        b = rng.random((5, 7, *spatial)).astype(np.float32)
        types = [TensorType("f32", ("N", 7, *spatial))] * 2
    expected = torch_loss(op, a, b, **attrs)
    model = export_op(op, attrs, types)
    assert_same(run_onnxruntime(model, a, b), expected, rtol=1e-4)
    text, value = imported_value(model, a, b)
    assert native in text
    assert_same(value, expected, rtol=1e-4)


def test_all_ignored_is_nan_in_onnxruntime_too() -> None:
    a, b = class_case(0, 4, 3, (), 1.0, False)
    model = export_op("cross_entropy", {}, [TensorType("f32", ("N", 3)),
                                            TensorType("i64", ("N",))])
    assert np.isnan(run_onnxruntime(model, a, b))


def test_f16_logits_export_as_f32_loss() -> None:
    a, b = class_case(1, 6, 5, (), 0.0, False)
    model = export_op("cross_entropy", {}, [TensorType("f16", ("N", 5)),
                                            TensorType("i32", ("N",))])
    expected = torch_loss("cross_entropy", a.astype(np.float16).astype(np.float32), b)
    assert_same(run_onnxruntime(model, a.astype(np.float16), b.astype(np.int32)), expected,
                rtol=1e-4)


def _loss_model(op_type: str, **attrs: Any) -> onnx.ModelProto:
    node = onnx.helper.make_node(op_type, ["x", "t"], ["y"], **attrs)
    values = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4]),
              onnx.helper.make_tensor_value_info("t", onnx.TensorProto.INT64, ["N"])]
    graph = onnx.helper.make_graph(
        [node], "loss", values, [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                                     None)])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op_type", ["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"])
def test_unknown_loss_reduction_is_an_import_error(op_type: str) -> None:
    # (Reductions "sum" and "none", class weights and log_prob import:
    # tests/unit/test_onnx_import_nn.py.)
    with pytest.raises(Exception, match="reduction='max' is not one of"):
        import_onnx(_loss_model(op_type, reduction="max"))


# The language: diagnostics, and a scalar output end to end ---------------------------------


@pytest.mark.parametrize("body, code, message", [
    ("input t: i64[N, 3]\n    output l = cross_entropy(x, t)", "E0304", "target of shape"),
    ("input t: f32[N]\n    output l = cross_entropy(x, t)", "E0313", "class ids"),
    ("input t: i64[N]\n    output l = cross_entropy(x, t, label_smoothing=1.5)", "E0304",
     "label_smoothing in [0, 1]"),
    ("input t: i64[N]\n    output l = cross_entropy(x, t, label_smoothing=-0.1)", "E0212",
     "at least 0.0"),
    ("input t: i64[N]\n    output l = nll_loss(t, t)", "E0313", "float scores"),
    ("input t: f32[N, 4]\n    output l = mse_loss(x, t)", "E0304", "one shape"),
    ("input y: f32[N, C]\n    input t: i64[N]\n    output l = cross_entropy(y, t)", "E0304",
     "a known number of classes"),
    ("input y: f32[N]\n    input t: i64[N]\n    output l = nll_loss(y, t)", "E0304", "rank"),
    ("input t: i64[N, 5]\n    output l = l1_loss(x, t)", "E0313", "float tensors"),
])
def test_bad_loss_inputs_are_diagnostics(body: str, code: str, message: str) -> None:
    with pytest.raises(CompileError) as raised:
        netc.loads(f"network bad {{\n    input x: f32[N, 5]\n    {body}\n}}\n")
    text = str(raised.value)
    assert code in text and message in text, text


LOSS_NET = """network loss {
    input x: f32[N, 10]
    input label: i64[N]
    logits = dense(x, 10, name="fc")
    output loss = cross_entropy(logits, label)
}
"""


def test_scalar_loss_output_runs_on_every_backend() -> None:
    model = netc.loads(LOSS_NET)
    weights = model.init_weights(seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 10)).astype(np.float32)
    label = rng.integers(0, 10, 7)
    logits = x @ weights["fc.weight"].T + weights["fc.bias"]
    expected = torch_loss("cross_entropy", logits, label)
    for backend in ("reference", "onnx"):
        value = model.run({"x": x, "label": label}, weights, backend=backend)["loss"]
        assert value.shape == () and value.dtype == np.float32, backend
        assert_same(value, expected, rtol=1e-4)


def test_netc_run_writes_the_loss_as_a_0d_array(tmp_path: Path) -> None:
    source = tmp_path / "loss.net"
    source.write_text(LOSS_NET)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((5, 10)).astype(np.float32))
    np.save(tmp_path / "label.npy", rng.integers(0, 10, 5))
    out = tmp_path / "out.npz"
    result = subprocess.run(
        [sys.executable, "-m", "netc", "run", str(source), "--backend", "reference",
         "--input", f"x={tmp_path / 'x.npy'}", "--input", f"label={tmp_path / 'label.npy'}",
         "-o", str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    with np.load(out) as written:
        assert written["loss"].shape == () and np.isfinite(written["loss"])
