"""`multihead_attention` against `torch.nn.MultiheadAttention(batch_first=True)`: the NumPy
reference and the decomposition the CUDA code generator and the ONNX exporter compute (run
through onnxruntime), with PyTorch's parameter names and initialisation."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime
import pytest
import torch

from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Attrs, Graph, TensorType
from netc.onnx.export import export_graph
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, ShapeError
from netc.reference import run_reference
from netc.weights import init_weights

pytestmark = pytest.mark.unit


def mha_graph(embed: int, heads: int, causal: bool, bias: bool = True,
              length: int | str = "T") -> Graph:
    return load_string(f"""network n {{
    input x: f32[N, {length}, {embed}]
    output y = multihead_attention(x, {heads}, causal={str(causal).lower()},
                                   bias={str(bias).lower()}, name="attn")
}}
""", "mha.net")


def torch_mha(embed: int, heads: int, bias: bool, seed: int) -> torch.nn.MultiheadAttention:
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True, bias=bias).eval()
    with torch.no_grad():  # nonzero biases, so that a bias in the wrong place shows
        for name, tensor in mha.named_parameters():
            if "bias" in name:
                tensor.uniform_(-0.5, 0.5)
    return mha


def torch_forward(mha: torch.nn.MultiheadAttention, x: np.ndarray, causal: bool) -> np.ndarray:
    length = x.shape[1]
    mask = torch.nn.Transformer.generate_square_subsequent_mask(length) if causal else None
    tensor = torch.from_numpy(x)
    with torch.no_grad():
        out, _ = mha(tensor, tensor, tensor, attn_mask=mask, is_causal=causal,
                     need_weights=False)
    return out.numpy()


def weights_of(mha: torch.nn.Module, layer: str = "attn") -> dict[str, np.ndarray]:
    return {f"{layer}.{name}": tensor.detach().numpy().copy()
            for name, tensor in mha.state_dict().items()}


def onnx_run(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    model = export_graph(graph, weights)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("embed,heads", [(8, 2), (12, 3), (32, 4), (16, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 5, 33])
def test_mha_matches_torch(embed: int, heads: int, causal: bool, length: int) -> None:
    graph = mha_graph(embed, heads, causal)
    mha = torch_mha(embed, heads, True, seed=embed + length)
    weights = weights_of(mha)
    assert set(weights) == set(init_weights(graph, 0))  # PyTorch's names, dots included
    x = np.random.default_rng(length).standard_normal((2, length, embed)).astype(np.float32)
    expected = torch_forward(mha, x, causal)
    reference = run_reference(graph, weights, {"x": x})["y"]
    np.testing.assert_allclose(reference, expected, rtol=1e-4, atol=1e-5)
    # The decomposition (what CUDA and ONNX compute).
    np.testing.assert_allclose(onnx_run(graph, weights, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_mha_without_bias_matches_torch(causal: bool) -> None:
    graph = mha_graph(16, 4, causal, bias=False)
    mha = torch_mha(16, 4, False, seed=3)
    weights = weights_of(mha)
    assert sorted(weights) == ["attn.in_proj_weight", "attn.out_proj.weight"]
    x = np.random.default_rng(1).standard_normal((3, 7, 16)).astype(np.float32)
    expected = torch_forward(mha, x, causal)
    np.testing.assert_allclose(run_reference(graph, weights, {"x": x})["y"], expected,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onnx_run(graph, weights, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_nan_and_infinity_spread_as_in_torch(causal: bool) -> None:
    graph = mha_graph(8, 2, causal)
    mha = torch_mha(8, 2, True, seed=4)
    x = np.random.default_rng(4).standard_normal((2, 6, 8)).astype(np.float32)
    x[0, 3, 1], x[1, 0, 2] = np.nan, np.inf  # causal: only later positions see them
    expected = torch_forward(mha, x, causal)
    assert np.isnan(expected[0, 3:]).all()
    for actual in (run_reference(graph, weights_of(mha), {"x": x})["y"],
                   onnx_run(graph, weights_of(mha), x)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("bias,length", [(True, "7"), (False, "7"), (True, "T")])
def test_the_export_imports_back_as_its_parts_with_the_same_numbers(bias: bool,
                                                                     length: str) -> None:
    # Not causal: what imports back today (see netc.ops.attention's docstring).
    graph = mha_graph(16, 4, False, bias, length)
    mha = torch_mha(16, 4, bias, seed=5)
    imported = import_onnx(export_graph(graph, weights_of(mha)))
    ops = [node.op for node in imported.graph.compute_nodes]
    assert {"dense", "reshape", "transpose", "softmax", "matmul"} <= set(ops)
    x = np.random.default_rng(2).standard_normal((3, 7, 16)).astype(np.float32)
    np.testing.assert_allclose(run_reference(imported.graph, imported.weights, {"x": x})["y"],
                               torch_forward(mha, x, False), rtol=1e-4, atol=1e-5)


def test_mha_initialises_as_torch() -> None:
    embed = 64
    weights = init_weights(mha_graph(embed, 8, False), seed=0)
    mha = torch.nn.MultiheadAttention(embed, 8, batch_first=True)
    assert {k: v.shape for k, v in weights.items()} == \
        {f"attn.{k}": tuple(v.shape) for k, v in mha.state_dict().items()}
    xavier = math.sqrt(6.0 / (4 * embed))
    in_proj = weights["attn.in_proj_weight"]
    assert np.abs(in_proj).max() <= xavier and np.abs(in_proj).max() > 0.9 * xavier
    out_proj = weights["attn.out_proj.weight"]
    assert np.abs(out_proj).max() <= 1 / math.sqrt(embed)
    assert np.abs(out_proj).max() > 0.9 / math.sqrt(embed)
    assert not weights["attn.in_proj_bias"].any() and not weights["attn.out_proj.bias"].any()


def test_mha_refuses_heads_that_do_not_divide() -> None:
    with pytest.raises(CompileError, match="must divide by 3"):
        mha_graph(16, 3, False)
    with pytest.raises(ShapeError, match="rank 3"):
        REGISTRY["multihead_attention"].infer(Attrs(heads=2), [TensorType("f32", ("N", 8))])
