"""`netc import`, version 2: every unsupported node reported at once, PyTorch's initializer
names kept as layer paths, a shape as a graph output rejected cleanly (it crashed), and the
decomposed forms PyTorch's exporters write recognised as one op.

The patterns are checked twice: on models that `torch.onnx.export` (the legacy exporter,
`dynamo=False`) writes here, and on graphs spelled out by hand as the `dynamo=True` exporter
writes them (it needs `onnxscript`, which the test environment does not install; the test that
runs it skips without it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import netc.cli
from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.onnx.importer import ImportedModel, import_onnx
from netc.onnx.importer.model import ImportFailure
from netc.reference import run_reference
from netc.weights import check_weights

from .test_onnx_import import _check, _const, _model

pytestmark = pytest.mark.unit


def _export(module: torch.nn.Module, shape: Sequence[int], opset: int = 17,
            dynamo: bool = False, **options: Any) -> onnx.ModelProto:
    """`module` exported by `torch.onnx.export`, the first dimension dynamic."""
    example = torch.randn(*shape)
    buffer: Any = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if dynamo:
                torch.onnx.export(module.eval(), (example,), buffer, input_names=["x"],
                                  dynamo=True, opset_version=opset,
                                  dynamic_shapes=({0: torch.export.Dim("N")},), **options)
            else:
                torch.onnx.export(module.eval(), (example,), buffer, input_names=["x"],
                                  output_names=["y"], dynamo=False, opset_version=opset,
                                  dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **options)
        finally:
            logging.disable(logging.NOTSET)
    return onnx.load_from_string(buffer.getvalue())


def _ops(imported: ImportedModel) -> list[str]:
    return [node.op for node in imported.graph.compute_nodes]


# 1. Every unsupported node in one error ------------------------------------------------------


def _three_unsupported() -> onnx.ModelProto:
    """Three nodes that cannot import (an op `.net` lacks, another domain's op, a flatten
    that merges the named batch with other dimensions), each followed by nodes that depend on
    it, and good nodes between."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Det", ["a"], ["b"], name="det1"),
        helper.make_node("Relu", ["b"], ["c"], name="after_det"),
        helper.make_node("Tanh", ["c"], ["d"], name="after_det_2"),
        helper.make_node("Foo", ["a"], ["e"], name="foo1", domain="com.example"),
        helper.make_node("Relu", ["a"], ["f"], name="r3"),
        helper.make_node("Flatten", ["f"], ["g"], name="flat0", axis=0),
        helper.make_node("Concat", ["d", "e", "g"], ["y"], name="join", axis=1),
    ]
    model = _model(nodes, {"x": ["N", 4, 4]}, ["y"])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_every_unsupported_node_is_reported_in_one_error_in_model_order() -> None:
    with pytest.raises(ImportFailure) as caught:
        import_onnx(_three_unsupported())
    found = [(d.code, d.message.split(":")[0]) for d in caught.value.diagnostics]
    assert found == [("E0601", "Det node `det1`"), ("E0601", "Foo node `foo1`"),
                     ("E0607", "Flatten node `flat0`")]
    # The nodes that depend on a failed one are counted, not reported.
    assert caught.value.summary == ("3 of 8 nodes are not supported: Det (1), "
                                    "com.example.Foo (1), Flatten (1); 3 more not reached (they "
                                    "depend on those)")
    assert caught.value.render().endswith("\n3 errors\n" + caught.value.summary)


def test_the_summary_counts_by_op_type_most_first() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Det", ["a"], ["b"], name="d1"),
             helper.make_node("Acos", ["a"], ["c"], name="h1"),
             helper.make_node("Det", ["a"], ["e"], name="d2"),
             helper.make_node("Relu", ["a"], ["y"])]
    with pytest.raises(ImportFailure) as caught:
        import_onnx(_model(nodes, {"x": ["N", 3, 3]}, ["b", "c", "e", "y"]))
    assert caught.value.summary == "3 of 5 nodes are not supported: Det (2), Acos (1)"


def test_a_failed_input_leaves_its_nodes_unreached_without_errors_of_their_own() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])]
    with pytest.raises(ImportFailure) as caught:
        import_onnx(_model(nodes, {"x": ["N", 3, 0]}, ["y"]))
    assert [d.code for d in caught.value.diagnostics] == ["E0605"]
    assert "size 0 at position 2" in caught.value.diagnostics[0].message
    assert caught.value.summary == ("2 of 2 nodes not reached (they depend on the problems "
                                    "above)")


def test_a_shape_error_downstream_of_a_failed_node_is_not_reported() -> None:
    # `bad` would be [N, 5] if Det were supported; the MatMul after it must stay silent.
    nodes = [helper.make_node("Det", ["x"], ["bad"], name="det"),
             helper.make_node("MatMul", ["bad", "w"], ["y"], name="mm")]
    with pytest.raises(ImportFailure) as caught:
        import_onnx(_model(nodes, {"x": ["N", 5, 5]}, ["y"], [_const("w", np.ones((3, 2)))]))
    assert [d.code for d in caught.value.diagnostics] == ["E0601"]
    assert caught.value.summary.endswith("; 1 more not reached (they depend on those)")


def test_netc_import_lists_every_node_and_exits_1(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "three.onnx"
    onnx.save(_three_unsupported(), str(path))
    assert netc.cli.main(["import", str(path), "-o", str(tmp_path / "three.net")]) == 1
    err = capsys.readouterr().err
    assert err.count("error[") == 3 and "Traceback" not in err
    assert err.rstrip().endswith("3 of 8 nodes are not supported: Det (1), com.example.Foo "
                                 "(1), Flatten (1); 3 more not reached (they depend on those)")
    assert not (tmp_path / "three.net").exists()


# 2. Initializer names become layer paths ------------------------------------------------------


class _SmallCNN(torch.nn.Module):
    """Named as torchvision names its layers: `conv1`, `bn1`, `layer1.0`, `layer1.1`, `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 3, padding=1, bias=False),
                                          torch.nn.BatchNorm2d(6), torch.nn.ReLU())
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(self.layer1(x), 1)
        return self.fc(torch.flatten(x, 1))


def _trained_cnn() -> _SmallCNN:
    torch.manual_seed(0)
    model = _SmallCNN()
    with torch.no_grad():  # statistics that are not the initial ones
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5),
                                          (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                    assert tensor is not None
                    tensor.uniform_(low, high)
    return model.eval()


def test_a_torch_cnn_keeps_its_state_dict_names() -> None:
    model = _trained_cnn()
    # Without constant folding the exporter keeps the batch norms (and their names).
    imported = import_onnx(_export(model, (2, 3, 8, 8), do_constant_folding=False))
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    parameters = {name for name in state if not name.endswith("num_batches_tracked")}
    assert set(imported.weights) == parameters
    for name in parameters:
        np.testing.assert_array_equal(imported.weights[name], state[name], err_msg=name)
    for layer in ("conv1", "bn1", "layer1.0", "layer1.1", "fc"):
        assert f'name="{layer}"' in imported.text, imported.text


def test_the_state_dict_loads_into_the_imported_network_by_name() -> None:
    model = _trained_cnn()
    imported = import_onnx(_export(model, (2, 3, 8, 8), do_constant_folding=False))
    graph = load_string(imported.text, filename="cnn.net")  # the `.net` round trip
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    check_weights(graph, state, "the PyTorch state dict")
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (result,) = run_reference(graph, state, {imported.inputs["x"]: x}).values()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_anonymous_initializers_keep_the_importers_own_names() -> None:
    # The default export folds each batch norm into its conv: `onnx::Conv_<k>` weights.
    imported = import_onnx(_export(_trained_cnn(), (2, 3, 8, 8)))
    assert "fc.weight" in imported.weights
    folded = [name for name in imported.weights if not name.startswith("fc.")]
    assert folded and all("onnx" not in name and name.count(".") == 1 for name in folded), folded
    _check(_export(_trained_cnn(), (2, 3, 8, 8)))


def _two_layers(weight: str, bias: str) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    return _model([helper.make_node("Gemm", ["x", weight, bias], ["y"], name="gemm0",
                                    transB=1)],
                  {"x": ["N", 4]}, ["y"], [_const(weight, rng.standard_normal((3, 4))),
                                          _const(bias, rng.standard_normal(3))])


@pytest.mark.parametrize(("weight", "bias", "layer"), [
    ("encoder.layers.0.fc.weight", "encoder.layers.0.fc.bias", "encoder.layers.0.fc"),
    ("features.3.weight", "features.3.bias", "features.3"),
    ("head.fc.weight", "other.bias", "head_fc"),        # no shared prefix: a plain name
    ("head.fc.weight", "onnx::Gemm_7", "head.fc"),      # an anonymous bias: the weight's
    ("onnx::MatMul_3", "fc.bias", "fc"),                # an anonymous weight: the bias's
    ("onnx::Gemm_3", "onnx::Gemm_4", "gemm0"),          # anonymous: the node's name
    ("a-b.weight", "a-b.bias", "a_b"),                   # not a module path: sanitised
])
def test_layer_names_come_from_the_initializers_shared_prefix(weight: str, bias: str,
                                                              layer: str) -> None:
    imported = _check(_two_layers(weight, bias))
    assert [node.layer for node in imported.graph.compute_nodes] == [layer]
    assert set(imported.weights) == {f"{layer}.weight", f"{layer}.bias"}


def test_a_bias_merged_with_an_earlier_layers_does_not_rename_the_layer() -> None:
    # The exporters keep one initializer of equal ones: `b` adds `a.bias` (both zeros).
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["x", "a.weight", "a.bias"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "b.weight", "a.bias"], ["y"], transB=1)]
    imported = _check(_model(nodes, {"x": ["N", 4]}, ["y"],
                             [_const("a.weight", rng.standard_normal((4, 4))),
                              _const("b.weight", rng.standard_normal((4, 4))),
                              _const("a.bias", np.zeros(4))]))
    assert [node.layer for node in imported.graph.compute_nodes] == ["a", "b"]


def test_a_weight_used_by_two_nodes_gives_two_layers() -> None:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "proj.weight"], ["a"]),
             helper.make_node("MatMul", ["a", "proj.weight"], ["y"])]
    imported = _check(_model(nodes, {"x": ["N", 4]}, ["y"],
                             [_const("proj.weight", rng.standard_normal((4, 4)))]))
    assert [node.layer for node in imported.graph.compute_nodes] == ["proj", "proj_1"]


# 3. A shape as a graph output (it crashed) ------------------------------------------------------


@pytest.mark.parametrize(("attributes", "shown"), [
    ({}, "[N, 4, 5]"), ({"start": 1}, None), ({"end": 1}, "[N]"), ({"end": -1}, "[N, 4]")])
def test_a_graph_output_that_is_the_shape_of_a_batch_tensor_is_rejected(
        attributes: dict[str, Any], shown: str | None) -> None:
    model = _model([helper.make_node("Shape", ["x"], ["y"], **attributes)],
                   {"x": ["N", 4, 5]}, ["y"])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    (diagnostic,) = caught.value.diagnostics
    if shown is None:  # [4, 5]: known now, a constant output
        assert diagnostic.code == "E0606" and "is a constant" in diagnostic.message
    else:
        assert diagnostic.code == "E0607"
        assert f"graph output `y` is the shape {shown} of a tensor" in diagnostic.message


def test_the_onnx_shape_node_tests_are_rejected_not_crashed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The node test `test_shape`: x fixed at [3, 4, 5], so its shape is a constant.
    model = _model([helper.make_node("Shape", ["x"], ["y"])], {"x": [3, 4, 5]}, ["y"])
    path = tmp_path / "shape.onnx"
    onnx.save(model, str(path))
    assert netc.cli.main(["import", str(path), "-o", str(tmp_path / "shape.net")]) == 1
    err = capsys.readouterr().err
    assert "error[E0606]: graph output `y` is a constant" in err, err
    assert "IRError" not in err


# 4. Patterns ---------------------------------------------------------------------------------


class _Named(torch.nn.Module):
    """`module` as the attribute `norm`, so that its parameters are `norm.weight`, ..."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.norm = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _one_op(model: onnx.ModelProto, op: str, **attrs: object) -> ImportedModel:
    imported = _check(model, rtol=1e-4, atol=1e-5)
    assert _ops(imported) == [op], imported.text
    (node,) = imported.graph.compute_nodes
    for name, value in attrs.items():
        assert node.attrs[name] == value, node.attrs
    return imported


def _layernorm(weighted: bool = True) -> torch.nn.Module:
    torch.manual_seed(4)
    norm = torch.nn.LayerNorm(8, elementwise_affine=weighted)
    if weighted:
        assert norm.weight is not None and norm.bias is not None
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return _Named(norm)


def test_legacy_layernorm_decomposition_is_one_layernorm_with_its_weights() -> None:
    module = _layernorm()
    model = _export(module, (2, 5, 8), opset=11)  # LayerNormalization exists from opset 17
    assert "ReduceMean" in [node.op_type for node in model.graph.node]
    imported = _one_op(model, "layernorm", eps=pytest.approx(1e-5))
    assert set(imported.weights) == {"norm.weight", "norm.bias"}
    state = module.state_dict()
    np.testing.assert_array_equal(imported.weights["norm.weight"], state["norm.weight"].numpy())


def test_layernorm_without_affine_parameters_is_a_layernorm_of_ones_and_zeros() -> None:
    imported = _one_op(_export(_layernorm(weighted=False), (2, 5, 8), opset=11), "layernorm")
    weights = sorted(imported.weights.items())
    np.testing.assert_array_equal(weights[0][1], np.zeros(8))  # bias
    np.testing.assert_array_equal(weights[1][1], np.ones(8))  # weight


def test_a_mean_over_another_axis_is_not_a_layernorm() -> None:
    # The same nodes normalising over axis 1 (not the last): translated node by node.
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1]),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["y"])]
    model = _model(nodes, {"x": ["N", 6, 4]}, ["y"],
                   [_const("two", 2.0), _const("eps", 1e-5)], opset=13)
    imported = _check(model)
    assert "layernorm" not in _ops(imported)


@pytest.mark.parametrize("opset", [11, 17])
def test_legacy_gelu_forms_are_one_gelu(opset: int) -> None:
    exact = _export(torch.nn.GELU(), (2, 3, 8), opset=opset)
    assert "Erf" in [node.op_type for node in exact.graph.node]
    _one_op(exact, "gelu", approximate="none")
    tanh = _export(torch.nn.GELU(approximate="tanh"), (2, 3, 8), opset=opset)
    assert "Tanh" in [node.op_type for node in tanh.graph.node]
    _one_op(tanh, "gelu", approximate="tanh")


def test_legacy_silu_and_hardswish_are_one_op() -> None:
    _one_op(_export(torch.nn.SiLU(), (2, 3, 8)), "silu")
    hardswish = _export(torch.nn.Hardswish(), (2, 3, 8), opset=11)  # HardSwish from opset 14
    assert [node.op_type for node in hardswish.graph.node] == ["HardSigmoid", "Mul"]
    _one_op(hardswish, "hardswish")


def test_hard_sigmoid_with_other_constants_is_not_hardswish() -> None:
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=0.2),
             helper.make_node("Mul", ["x", "h"], ["y"])]
    imported = _check(_model(nodes, {"x": ["N", 7]}, ["y"]))
    assert "hardswish" not in _ops(imported) and _ops(imported)[-1] == "mul"


def test_a_pattern_whose_intermediate_value_is_used_elsewhere_is_not_matched() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    imported = _check(_model(nodes, {"x": ["N", 7]}, ["y", "s"]))
    assert sorted(_ops(imported)) == ["mul", "sigmoid"]
    # `x / sqrt 2` of the GELU is read by a Relu too.
    model = _dynamo_gelu_erf()
    model.graph.node.append(helper.make_node("Relu", ["d"], ["r"]))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    imported = _check(model)
    assert "gelu" not in _ops(imported) and "erf" in _ops(imported)


def test_a_pattern_on_a_value_that_shape_arithmetic_makes_constant_is_folded() -> None:
    # `x * (1 / sqrt(x.shape[-1]))`, as the legacy exporter writes attention's scale: the
    # Sqrt's input is known only once `Shape` is translated, after the patterns were found.
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "start", "end"], ["last"]),
             helper.make_node("Cast", ["last"], ["size"], to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["size"], ["root"]),
             helper.make_node("Reciprocal", ["root"], ["scale"]),
             helper.make_node("Mul", ["x", "scale"], ["y"])]
    model = _model(nodes, {"x": ["N", 4, 16]}, ["y"],
                   [_const("start", [-1], np.int64), _const("end", [2 ** 62], np.int64)])
    imported = _check(model)
    assert _ops(imported) == ["mul"] and "* 0.25" in imported.text


class _ChannelShuffle(torch.nn.Module):
    """ShuffleNet's channel shuffle, then its `chunk` of the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


def test_channel_shuffle_and_chunk_need_no_pattern() -> None:
    # The legacy exporter computes the view's target from `Shape`; the batch is kept.
    imported = _check(_export(_ChannelShuffle(), (2, 8, 3, 5)))
    assert _ops(imported) == ["reshape", "transpose", "reshape", "slice", "slice", "sigmoid",
                              "mul"]


class _Attention(torch.nn.Module):
    """`scaled_dot_product_attention` over 2 heads of q, k, v made from x."""

    def __init__(self, causal: bool, scale: float | None = None) -> None:
        super().__init__()
        self.causal, self.scale = causal, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], 4, 2, 8).transpose(1, 2)

        return torch.nn.functional.scaled_dot_product_attention(
            heads(x), heads(x * 2), heads(x - 1), is_causal=self.causal, scale=self.scale)


@pytest.mark.parametrize(("causal", "scale"), [(False, None), (True, None), (False, 0.3)])
def test_legacy_attention_is_one_attention(causal: bool, scale: float | None) -> None:
    imported = _check(_export(_Attention(causal, scale), (2, 4, 16)), rtol=1e-4, atol=1e-5)
    (node,) = [node for node in imported.graph.compute_nodes if node.op == "attention"]
    assert node.attrs["causal"] is causal
    assert node.attrs["scale"] == pytest.approx(scale or 8 ** -0.5)
    assert not {"softmax", "matmul"} & set(_ops(imported))


def _dynamo_attention(mask: np.ndarray | None) -> onnx.ModelProto:
    """As the dynamo exporter writes attention: k^T through a Reshape that merges the batch
    with the heads, both products scaled by the fourth root of the scale."""
    factor = _const("factor", [8 ** -0.25])
    nodes = [helper.make_node("Reshape", ["k", "merged"], ["k3"]),
             helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["k3t", "split"], ["kt"]),
             helper.make_node("Mul", ["q", "factor"], ["qs"]),
             helper.make_node("Mul", ["kt", "factor"], ["kts"]),
             helper.make_node("MatMul", ["qs", "kts"], ["scores"])]
    constants = [factor, _const("merged", [-1, 4, 8], np.int64),
                 _const("split", [-1, 2, 8, 4], np.int64)]
    if mask is not None:
        nodes.append(helper.make_node("Add", ["scores", "mask"], ["masked"]))
        constants.append(_const("mask", mask))
    nodes += [helper.make_node("Softmax", ["masked" if mask is not None else "scores"], ["p"],
                               axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    return _model(nodes, {name: ["N", 2, 4, 8] for name in "qkv"}, ["y"], constants, opset=18)


def test_dynamo_attention_is_one_attention() -> None:
    causal = np.where(np.tril(np.ones((4, 4), bool)), 0.0, np.finfo(np.float32).min)
    for mask in (None, causal):
        imported = _check(_dynamo_attention(mask), rtol=1e-4, atol=1e-5)
        assert _ops(imported) == ["attention"], imported.text
        (node,) = imported.graph.compute_nodes
        assert node.attrs["causal"] is (mask is not None)
        assert node.attrs["scale"] == pytest.approx(8 ** -0.5)


def test_attention_with_another_constant_mask_is_not_matched() -> None:
    # Not the causal mask: the nodes one by one, where the Reshape that merges the batch with
    # the heads has no `.net` form (nor the [4, 4] constant after it).
    mask = np.where(np.triu(np.ones((4, 4), bool)), 0.0, -np.inf)
    with pytest.raises(ImportFailure) as caught:
        import_onnx(_dynamo_attention(mask))
    assert caught.value.summary.startswith("1 of 9 nodes are not supported: Reshape (1)")


class _GPTBlock(torch.nn.Module):
    """A GPT-2 style block: layer norms, causal attention over 4 heads, a tanh-GELU MLP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(32), torch.nn.LayerNorm(32)
        self.qkv, self.proj = torch.nn.Linear(32, 96), torch.nn.Linear(32, 32)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(32, 128),
                                       torch.nn.GELU(approximate="tanh"),
                                       torch.nn.Linear(128, 32))
        with torch.no_grad():  # not all ones: exporters share equal initializers
            for norm in (self.ln_1, self.ln_2):
                assert norm.weight is not None
                norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, 4, 8).transpose(1, 2)
                   for t in self.qkv(self.ln_1(x)).split(32, dim=2))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_2(x))


def test_a_gpt_block_imports_with_its_patterns_and_names() -> None:
    # Opset 14: the legacy exporter writes layer norm, tanh-GELU and attention spelled out.
    module = _GPTBlock().eval()
    imported = _check(_export(module, (2, 6, 32), opset=14), rtol=1e-4, atol=1e-5)
    ops = _ops(imported)
    assert ops.count("layernorm") == 2 and ops.count("attention") == 1, ops
    assert ops.count("gelu") == 1 and not {"softmax", "sqrt", "tanh", "pow"} & set(ops), ops
    state = {name: value.numpy() for name, value in module.state_dict().items()}
    assert set(imported.weights) == set(state)
    x = np.random.default_rng(8).standard_normal((3, 6, 32)).astype(np.float32)
    graph = load_string(imported.text, filename="gpt.net")
    (result,) = run_reference(graph, state, {imported.inputs["x"]: x}).values()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


# The forms the dynamo exporter (`dynamo=True`, opset 18) writes, spelled out as it writes
# them (recorded from torch 2.13 with onnxscript 0.7).

def _dynamo_gelu_tanh() -> onnx.ModelProto:
    nodes = [helper.make_node("Pow", ["x", "three"], ["cube"]),
             helper.make_node("Mul", ["c", "cube"], ["term"]),
             helper.make_node("Add", ["x", "term"], ["inner"]),
             helper.make_node("Mul", ["root", "inner"], ["scaled"]),
             helper.make_node("Tanh", ["scaled"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]),
             helper.make_node("Mul", ["half", "t1"], ["h"]),
             helper.make_node("Mul", ["x", "h"], ["y"])]
    return _model(nodes, {"x": ["N", 4, 8]}, ["y"],
                  [_const("three", 3.0), _const("c", 0.044715), _const("one", 1.0),
                   _const("root", np.sqrt(2 / np.pi)), _const("half", 0.5)], opset=18)


def _dynamo_rmsnorm() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=1,
                              noop_with_empty_axes=0),
             helper.make_node("Add", ["m", "eps"], ["me"]),
             helper.make_node("Sqrt", ["me"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]),
             helper.make_node("Mul", ["x", "r"], ["n"]),
             helper.make_node("Mul", ["n", "norm.weight"], ["y"])]
    return _model(nodes, {"x": ["N", 4, 8]}, ["y"],
                  [_const("two", 2.0), _const("axes", [2], np.int64),
                   _const("eps", 1.1920928955078125e-07),
                   _const("norm.weight", rng.uniform(0.5, 1.5, 8))], opset=18)


def _dynamo_gelu_erf() -> onnx.ModelProto:
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["x", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    return _model(nodes, {"x": ["N", 4, 8]}, ["y"],
                  [_const("root2", np.sqrt(2.0)), _const("one", 1.0), _const("half", 0.5)],
                  opset=18)


def test_dynamo_forms_are_one_op() -> None:
    _one_op(_dynamo_gelu_erf(), "gelu", approximate="none")
    _one_op(_dynamo_gelu_tanh(), "gelu", approximate="tanh")
    imported = _one_op(_dynamo_rmsnorm(), "rmsnorm", eps=pytest.approx(1.1920928955078125e-07))
    assert set(imported.weights) == {"norm.weight"}


@pytest.mark.slow
def test_the_dynamo_exporter_forms_are_one_op() -> None:
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    shape = (2, 3, 8)
    for module, op in ((torch.nn.GELU(), "gelu"), (torch.nn.GELU(approximate="tanh"), "gelu"),
                       (torch.nn.SiLU(), "silu"), (_Named(torch.nn.RMSNorm(8)), "rmsnorm"),
                       (_layernorm(), "layernorm")):
        _one_op(_export(module, shape, opset=18, dynamo=True), op)
    for causal in (False, True):
        imported = _check(_export(_Attention(causal), (2, 4, 16), opset=18, dynamo=True))
        assert "attention" in _ops(imported) and "softmax" not in _ops(imported)
    block = _GPTBlock().eval()
    imported = _check(_export(block, (2, 6, 32), opset=18, dynamo=True), rtol=1e-4, atol=1e-5)
    assert "attention" in _ops(imported) and set(imported.weights) == set(block.state_dict())
