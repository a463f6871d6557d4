"""The import of ONNX's Attention (opset 23): 3-D q, k and v split into heads, grouped-query
attention (kv heads repeated), past_key/past_value joined before k and v (present_key and
present_value outputs, a causal diagonal moved by the cache's length), a cache padded per
batch item (nonpad_kv_seqlen), softcap, the windows of opset 25, and the qk_matmul_output
of each mode; against onnx's reference implementation (ONNX's own
definition), and once on the CUDA simulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from netc.frontend import load_string
from netc.onnx.importer import ImportedModel, import_onnx
from netc.reference import run_reference

from .test_onnx_import import _diagnostics

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(5)


def _attention(shapes: dict[str, tuple[int, ...]], outputs: list[str], bool_mask: bool = False,
               **attrs: Any) -> onnx.ModelProto:
    """One Attention node over inputs named q, k, v, mask, past_key, past_value (those in
    `shapes`), with `outputs` (empty names for the unused)."""
    names = ["q", "k", "v", "mask", "past_key", "past_value"]
    used = [name if name in shapes else "" for name in names]
    while used and not used[-1]:
        used.pop()
    node = helper.make_node("Attention", used, outputs, **attrs)
    inputs = [helper.make_tensor_value_info(
        name, TensorProto.BOOL if name == "mask" and bool_mask else TensorProto.FLOAT,
        list(shape)) for name, shape in shapes.items()]
    graph = helper.make_graph([node], "attention", inputs,
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                               for name in outputs if name])
    opset = 25 if any("window" in name for name in attrs) else 23
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = {}
    for info in model.graph.input:
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if info.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[info.name] = RNG.random(shape) < 0.7
            feeds[info.name][..., 0, :] = False  # a row that attends to nothing: zeros
        else:
            feeds[info.name] = RNG.standard_normal(shape).astype(np.float32)
    return feeds


def _check(model: onnx.ModelProto) -> ImportedModel:
    """Import, load the text, run on the reference backend; each output as onnx's reference
    implementation of Attention computes it."""
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="attention.net")
    feeds = _feeds(model)
    expected = ReferenceEvaluator(model).run(None, feeds)
    ours = run_reference(graph, imported.weights,
                         {imported.inputs[name]: value for name, value in feeds.items()})
    for info, value in zip(model.graph.output, expected):
        actual = ours[imported.outputs[info.name]]
        assert actual.shape == value.shape, (info.name, imported.text)
        np.testing.assert_allclose(actual, value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{info.name}\n{imported.text}")
    return imported


@pytest.mark.parametrize("q_heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [0, 1])
def test_3d_inputs_split_into_heads_and_grouped_queries(q_heads: int, kv_heads: int,
                                                        causal: int) -> None:
    model = _attention({"q": (2, 5, q_heads * 4), "k": (2, 7, kv_heads * 4),
                        "v": (2, 7, kv_heads * 3)}, ["y"], q_num_heads=q_heads,
                       kv_num_heads=kv_heads, is_causal=causal)
    text = _check(model).text
    assert "attention(" in text  # `.net`'s own attention op


def test_4d_grouped_query_attention_with_a_float_mask_and_scale() -> None:
    _check(_attention({"q": (2, 6, 3, 8), "k": (2, 3, 5, 8), "v": (2, 3, 5, 8),
                       "mask": (3, 5)}, ["y"], scale=0.3))


@pytest.mark.parametrize("causal", [0, 1])
def test_past_key_and_value_join_before_k_and_v(causal: int) -> None:
    model = _attention({"q": (2, 3, 4, 8), "k": (2, 3, 4, 8), "v": (2, 3, 4, 8),
                        "mask": (4, 9), "past_key": (2, 3, 5, 8), "past_value": (2, 3, 5, 8)},
                       ["y", "present_key", "present_value"], is_causal=causal)
    _check(model)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_softcap_and_each_qk_matmul_output_mode(mode: int, softcap: float) -> None:
    model = _attention({"q": (2, 2, 4, 8), "k": (2, 2, 6, 8), "v": (2, 2, 6, 8),
                        "mask": (4, 6)}, ["y", "", "", "qk"], bool_mask=True,
                       qk_matmul_output_mode=mode, softcap=softcap, is_causal=1)
    text = _check(model).text
    assert "attention(" not in text  # computed step by step


@pytest.mark.parametrize("left, right, causal", [(2, -1, 1), (1, 2, 0), (0, 0, 0),
                                                 (-1, -1, 1), (3, 1, 1)])
def test_attention_windows_with_and_without_a_cache(left: int, right: int, causal: int) -> None:
    _check(_attention({"q": (2, 2, 4, 8), "k": (2, 2, 4, 8), "v": (2, 2, 4, 8)}, ["y"],
                      left_window_size=left, right_window_size=right, is_causal=causal))
    _check(_attention({"q": (2, 2, 4, 8), "k": (2, 2, 4, 8), "v": (2, 2, 4, 8),
                       "mask": (4, 7), "past_key": (2, 2, 3, 8), "past_value": (2, 2, 3, 8)},
                      ["y"], bool_mask=True, left_window_size=left, right_window_size=right,
                      is_causal=causal))


def test_key_value_heads_that_do_not_divide_the_query_heads_are_an_error() -> None:
    model = _attention({"q": (2, 3, 4, 8), "k": (2, 2, 4, 8), "v": (2, 2, 4, 8)}, ["y"])
    assert _diagnostics(model)[0][0] == "E0605"


@pytest.mark.parametrize("causal, left", [(0, -1), (1, -1), (1, 1)])
def test_a_cache_padded_per_batch_item(causal: int, left: int) -> None:
    names = ["q", "k", "v", "mask", "", "", "n"]
    node = helper.make_node("Attention", names, ["y"], is_causal=causal, left_window_size=left)
    graph = helper.make_graph(
        [node], "a", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [3, 2, 2, 8])] +
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 2, 6, 8]) for n in "kv"] +
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [2, 4]),  # padded to 6
         helper.make_tensor_value_info("n", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    model.ir_version = 10
    imported = import_onnx(model)
    feeds = {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in
             (("q", (3, 2, 2, 8)), ("k", (3, 2, 6, 8)), ("v", (3, 2, 6, 8)), ("mask", (2, 4)))}
    feeds["n"] = np.array([6, 3, 1], np.int64)  # the last: its first query sees no key
    expected = np.asarray(next(iter(ReferenceEvaluator(model).run(None, feeds))))
    graph_net = load_string(imported.text, filename="attention.net")
    ours = run_reference(graph_net, imported.weights,
                         {imported.inputs[name]: value for name, value in feeds.items()})
    np.testing.assert_allclose(ours[imported.outputs["y"]], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.sim
def test_softcapped_attention_runs_on_the_simulator() -> None:
    from netc.driver import CompileOptions, compile_graph, run_plan
    from tests.sim.codegen_support import simulator

    model = _attention({"q": (3, 2, 4, 8), "k": (3, 2, 6, 8), "v": (3, 2, 6, 8),
                        "mask": (4, 6)}, ["y", "", "", "qk"], bool_mask=True, softcap=1.5,
                       qk_matmul_output_mode=2)
    imported = import_onnx(model)
    graph = load_string(imported.text, filename="attention.net")
    feeds = {imported.inputs[name]: value for name, value in _feeds(model).items()}
    expected = run_reference(graph, imported.weights, feeds)
    plan = compile_graph(graph, CompileOptions(level=2)).plan
    actual = run_plan(plan, simulator(), imported.weights, feeds, poison=True)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
