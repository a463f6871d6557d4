"""`netc import` of transformer models, language version 2: the shapes of ViT, Swin and
`nn.TransformerEncoderLayer` as `torch.onnx.export` (the legacy exporter, opset 17) writes
them.

- A first dimension the ONNX model fixes stays fixed; a symbolic one (`dim_param`) becomes a
  named dimension, with its ONNX name where that is a valid `.net` name.
- Constant f32 tensors that are no layer's parameter (a class token, a positional embedding,
  a relative position bias) become free parameters, `param NAME: f32[...]`, their values in
  the weights under that name.
- A Reshape that changes a fixed first dimension is written
  `squeeze(reshape(unsqueeze(x, 0), [dims]), 0)`; one computed from a named dimension keeps
  it by name, and one that multiplies it (`N * heads`) is rejected, saying so.

torchvision is not installed here: the models are small equivalents built with plain torch.
Every import is checked against PyTorch and onnxruntime on the reference interpreter, and the
text read back by the front end gives the same numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.onnx.importer import ImportedModel, import_onnx
from netc.reference import run_reference

from .test_onnx_import import _const, _model

pytestmark = pytest.mark.unit


def _export(module: torch.nn.Module, x: torch.Tensor, dynamic: bool = False) -> onnx.ModelProto:
    buffer: Any = io.BytesIO()
    options: dict[str, Any] = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} \
        if dynamic else {}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(module.eval(), (x,), buffer, input_names=["x"],
                              output_names=["y"], dynamo=False, opset_version=17, **options)
        finally:
            logging.disable(logging.NOTSET)
    return onnx.load_from_string(buffer.getvalue())


def _matches(module: torch.nn.Module, x: torch.Tensor) -> ImportedModel:
    """`module` exported with a fixed batch and imported; its output matches PyTorch's and
    onnxruntime's, from the IR built and from the text read back by the front end."""
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    model = _export(module, x)
    imported = import_onnx(model)
    feeds = {"x": x.numpy()}
    (from_ort,) = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(from_ort, expected, rtol=1e-4, atol=1e-5)
    (net_input,) = imported.inputs.values()
    for graph in (imported.graph, load_string(imported.text)):
        (actual,) = run_reference(graph, imported.weights, {net_input: x.numpy()}).values()
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    return imported


class _TinyViT(torch.nn.Module):
    """ViT's shapes, small: patch conv, class token, positional embedding, encoder layers."""

    def __init__(self, dim: int = 16, patch: int = 4, size: int = 8) -> None:
        super().__init__()
        self.conv_proj = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        count = (size // patch) ** 2 + 1
        self.pos_embedding = torch.nn.Parameter(torch.randn(1, count, dim))
        self.layer = torch.nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0,
                                                      batch_first=True)
        self.head = torch.nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.class_token.shape[-1], -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.layer(x)[:, 0])


class _Windows(torch.nn.Module):
    """Swin's window partition: the batch merged with the windows, attention-like mixing in
    each window, and the windows put back."""

    def __init__(self, channels: int = 6, window: int = 2) -> None:
        super().__init__()
        self.window = window
        self.mix = torch.nn.Linear(channels, channels)
        self.bias = torch.nn.Parameter(torch.randn(window * window, window * window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        windows = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, s * s, c)
        q = self.mix(windows)
        scores = (q @ windows.transpose(1, 2) + self.bias).softmax(-1)
        mixed = (scores @ windows).view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return mixed.reshape(b, h, w, c)


def test_a_tiny_vit_with_a_fixed_batch_matches_torch() -> None:
    torch.manual_seed(0)
    imported = _matches(_TinyViT(), torch.randn(2, 3, 8, 8))
    assert "input x: f32[2, 3, 8, 8]" in imported.text  # the fixed batch stays fixed
    assert "param pos_embedding: f32[1, 5, 16]" in imported.text, imported.text
    # The class token, expanded to the fixed batch by the exporter, is stored once.
    assert "param class_token: f32[1, 1, 16]" in imported.text
    assert "expand(class_token, [2, 1, 16])" in imported.text
    free = {line.split()[1].rstrip(":") for line in imported.text.splitlines()
            if line.strip().startswith("param ")}
    assert "pos_embedding" in free and free <= set(imported.weights)


def test_window_partition_changing_the_fixed_batch_matches_torch() -> None:
    torch.manual_seed(1)
    imported = _matches(_Windows(), torch.randn(2, 4, 6, 6))
    # [2, 2, 3, 2, 2, 6] to [12, 4, 6]: the first dimension changes.
    assert "unsqueeze(" in imported.text and "squeeze(" in imported.text, imported.text
    assert "param bias: f32[4, 4]" in imported.text


def test_the_encoder_layer_imports_with_a_fixed_batch_and_names_its_limit_dynamic() -> None:
    def layer() -> torch.nn.Module:  # a fresh one each time: tracing leaves one unusable
        torch.manual_seed(2)
        # Wrapped in a module: exported bare, the tracer makes its `is_causal` a tensor.
        return torch.nn.Sequential(torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0,
                                                                    batch_first=True))

    x = torch.randn(2, 5, 16)
    _matches(layer(), x)
    with pytest.raises(CompileError) as caught:
        import_onnx(_export(layer(), x, dynamic=True))
    first = caught.value.diagnostics[0]
    # PyTorch splits the heads with a Reshape to [length, batch * heads, head size].
    assert first.code == "E0607" and "batch*4" in first.message
    assert "never a product or sum" in first.message


def _reshape_by_shape(dims: list[Any], gathered: list[int], tail: list[int],
                      scale: int | None = None) -> onnx.ModelProto:
    """Reshape(x, Concat(Gather(Shape(x), gathered) [* scale], tail)) on x of `dims`."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "at"], ["kept"], axis=0)]
    constants = [_const("at", gathered, np.int64), _const("tail", tail, np.int64)]
    kept = "kept"
    if scale is not None:
        nodes.append(helper.make_node("Mul", ["kept", "scale"], ["scaled"]))
        constants.append(_const("scale", scale, np.int64))
        kept = "scaled"
    nodes += [helper.make_node("Concat", [kept, "tail"], ["target"], axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])]
    return _model(nodes, {"x": dims}, ["y"], constants)


def test_named_dimensions_keep_their_onnx_names_and_reshapes_keep_them() -> None:
    model = _reshape_by_shape(["batch", "seq", 8], [0, 1], [2, 4])
    imported = import_onnx(model)
    assert "input x: f32[batch, seq, 8]" in imported.text
    assert "reshape(x, [seq, 2, 4])" in imported.text, imported.text
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    (expected,) = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (actual,) = run_reference(load_string(imported.text), imported.weights, {"x": x}).values()
    np.testing.assert_array_equal(actual, expected)
    # Times one is the dimension itself.
    same = import_onnx(_reshape_by_shape(["batch", "seq", 8], [0, 1], [8], scale=1))
    assert "input x: f32[batch, seq, 8]" in same.text


def test_symbolic_sizes_without_valid_names_become_n_t_and_so_on() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["batch size", "", 4]},
                   ["y"])
    imported = import_onnx(model)
    assert "input x: f32[N, T, 4]" in imported.text, imported.text
    assert "named dimension N" in imported.text


def test_products_of_named_dimensions_are_rejected_clearly() -> None:
    with pytest.raises(CompileError) as caught:
        import_onnx(_reshape_by_shape(["N", "T", 8], [0, 1], [2, 4], scale=2))
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E0607" and "N*2" in diagnostic.message


def test_constant_tensors_that_are_not_f32_are_still_rejected() -> None:
    model = _model([helper.make_node("Concat", ["x", "table"], ["y"], axis=0)],
                   {"x": [2, 3]}, ["y"], [_const("table", np.ones((1, 3)), np.int64)])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E0606" and "only as f32 parameters" in diagnostic.message


def test_a_free_parameter_keeps_its_name_beside_a_value_of_that_name() -> None:
    # The initializer `pos.0` and the value `pos_0` sanitise alike: the parameter keeps it.
    model = _model([helper.make_node("Relu", ["x"], ["pos_0"]),
                    helper.make_node("Add", ["pos_0", "pos.0"], ["y"])],
                   {"x": [2, 3]}, ["y"], [_const("pos.0", np.arange(3.0), np.float32)])
    imported = import_onnx(model)
    assert "param pos_0: f32[3]" in imported.text, imported.text
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    (expected,) = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (actual,) = run_reference(load_string(imported.text), imported.weights, {"x": x}).values()
    np.testing.assert_array_equal(actual, expected)


def test_a_constant_range_folds_and_is_arange_only_where_a_tensor_needs_it() -> None:
    # Swin's shift mask is integer arithmetic (`Mod`, `Equal`) on a constant `Range`.
    scalars = [_const(name, value, np.int64) for name, value in
               (("start", 0), ("limit", 4), ("delta", 1), ("two", 2), ("zero", 0))]
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Mod", ["r", "two"], ["odd"]),
             helper.make_node("Equal", ["odd", "zero"], ["even"]),
             helper.make_node("Cast", ["even"], ["mask"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "mask"], ["y"])]
    model = _model(nodes, {"x": ["N", 4]}, ["y"], scalars)
    # The Range is an output too: there it is the tensor `arange(4)`.
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.INT64, None))
    imported = import_onnx(model)
    assert "param mask: f32[4]" in imported.text and "arange(4)" in imported.text, \
        imported.text
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)}
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    actual = run_reference(load_string(imported.text), imported.weights, feeds)
    for want, name in zip(expected, ("y", "r")):
        np.testing.assert_array_equal(actual[imported.outputs[name]], want)
