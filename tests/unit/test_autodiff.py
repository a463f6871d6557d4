"""Autodiff on the IR (netc.autodiff): every op with a gradient against PyTorch autograd, a few
against central finite differences, whole small networks against PyTorch from the same
weights, and the errors for what cannot be differentiated yet.

How a check works: the op's float operands are free parameters, the loss is sum(y · c) for a
random cotangent c (so every element of the VJP is weighed differently), `backward` builds the
gradient graph, the reference interpreter runs it, and PyTorch computes the same loss's
gradients. Tolerance (float32 on both sides, different summation orders): |netc - torch| <=
ATOL + RTOL·|torch|, ATOL = 1e-5, RTOL = 1e-4, scaled by the number of terms a gradient sums
(`terms`) where it sums many."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netc.autodiff import AutodiffError, backward, trainable_params
from netc.frontend import load_file, load_string
from netc.ir import Graph, Node, TensorType
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder, make_attrs
from netc.ops.verify import verify
from netc.reference import run_reference
from netc.training_mode import training_mode
from netc.weights import init_weights, param_specs

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.unit

ATOL, RTOL = 1e-5, 1e-4
SIZES = st.sampled_from((1, 3, 7))
"""Ragged sizes: 1 (broadcast and single-element edge cases), odd ones."""

Build = Callable[[GraphBuilder, dict[str, str]], str]
TorchFunction = Callable[[dict[str, Any]], Any]


def assert_close(name: str, got: np.ndarray, expected: np.ndarray, terms: int = 1) -> None:
    assert got.shape == expected.shape, f"{name}: shape {got.shape}, torch {expected.shape}"
    scale = max(1.0, terms ** 0.5)
    error = np.abs(got.astype(np.float64) - expected)
    allowed = scale * (ATOL + RTOL * np.abs(expected))
    bad = ~(error <= allowed)
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.size} elements differ, largest "
                           f"difference {float(np.nanmax(error)):.3g}")


def netc_gradients(graph: Graph, loss: str, weights: Mapping[str, np.ndarray],
                   inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    gradients = backward(graph, loss)
    verify(gradients)
    outputs = run_reference(gradients, weights, inputs)
    return {name[len("grad:"):]: value for name, value in outputs.items()
            if name.startswith("grad:")}


def check_op(build: Build, torch_function: TorchFunction, operands: Mapping[str, np.ndarray],
             extra: Mapping[str, np.ndarray] | None = None, terms: int = 1) -> None:
    """`build(builder, values)` applies the op to `values` (a free parameter per entry of
    `operands` without a dot; names with a dot are the op's own layer parameters, which the
    op makes) and the graph inputs `extra` (integer or boolean tensors); `torch_function` does
    the same on tensors. Compares the gradients of sum(y · c) with respect to `operands`
    (`extra`, float ones included, are inputs: held constant)."""
    builder = GraphBuilder("case")
    values = {name: builder.param(name, "f32", array.shape)
              for name, array in operands.items() if "." not in name}
    for name, array in (extra or {}).items():
        dtype = {"b": "bool", "i": "i64", "f": "f32"}[np.asarray(array).dtype.kind]
        values[name] = builder.input(name, dtype, array.shape)
    y = build(builder, values)
    y_type = builder.type_of(y)
    cotangent = builder.input("cotangent", "f32", y_type.shape)
    weighted = builder.op("mul", y, cotangent)
    loss = builder.op("sum", weighted, axis=list(range(y_type.rank))) if y_type.rank else weighted
    builder.output("loss", loss)
    graph = builder.build()
    rng = np.random.default_rng(1)
    c = rng.standard_normal(tuple(int(d) for d in y_type.shape)).astype(np.float32)
    weights = {name: np.asarray(array, np.float32) for name, array in operands.items()}
    got = netc_gradients(graph, "loss", weights, {"cotangent": c, **(extra or {})})
    tensors = {name: torch.tensor(array, requires_grad=True) for name, array in weights.items()}
    tensors.update({name: torch.tensor(array) for name, array in (extra or {}).items()})
    (torch_function(tensors) * torch.tensor(c)).sum().backward()
    assert set(got) == set(weights)
    for name in weights:
        expected = tensors[name].grad
        expected = np.zeros(weights[name].shape) if expected is None else expected.numpy()
        assert_close(name, got[name], expected.astype(np.float64), terms)


def normal(shape: tuple[int, ...], seed: int = 0, low: float | None = None) -> np.ndarray:
    """Standard normal float32 values; with `low`, |x| + low (for log, sqrt, ...)."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return values if low is None else np.abs(values) + np.float32(low)


shapes = st.lists(SIZES, min_size=1, max_size=3).map(tuple)
FEW = settings(max_examples=max(10, settings.default.max_examples // 3))
"""For the tests parametrized over many ops: a third of the profile's examples per op."""


# Elementwise ops of one tensor ----------------------------------------------------------

UNARY: dict[str, tuple[dict[str, Any], Callable[..., Any], float | None]] = {
    # op: (attributes, PyTorch, lowest input (None: any real))
    "relu": ({}, torch.relu, None),
    "sigmoid": ({}, torch.sigmoid, None),
    "tanh": ({}, torch.tanh, None),
    "gelu": ({}, F.gelu, None),
    "silu": ({}, F.silu, None),
    "mish": ({}, F.mish, None),
    "leaky_relu": ({"alpha": 0.2}, lambda x: F.leaky_relu(x, 0.2), None),
    "relu6": ({}, F.relu6, None),
    "hardtanh": ({"min": -0.5, "max": 0.7}, lambda x: F.hardtanh(x, -0.5, 0.7), None),
    "clamp": ({"min": -0.3}, lambda x: torch.clamp(x, min=-0.3), None),
    "hardswish": ({}, F.hardswish, None),
    "hardsigmoid": ({}, F.hardsigmoid, None),
    "elu": ({"alpha": 0.7}, lambda x: F.elu(x, 0.7), None),
    "softplus": ({"beta": 2.0, "threshold": 1.5},
                 lambda x: F.softplus(x, beta=2.0, threshold=1.5), None),
    "neg": ({}, torch.neg, None),
    "exp": ({}, torch.exp, None),
    "log": ({}, torch.log, 0.1),
    "sqrt": ({}, torch.sqrt, 0.1),
    "rsqrt": ({}, torch.rsqrt, 0.1),
    "abs": ({}, torch.abs, None),
    "erf": ({}, torch.erf, None),
    "sin": ({}, torch.sin, None),
    "cos": ({}, torch.cos, None),
    "pow": ({"exponent": 3.0}, lambda x: torch.pow(x, 3.0), None),
    "dropout": ({"p": 0.3}, lambda x: x, None),  # inference: the identity
}


@pytest.mark.parametrize("op", sorted(UNARY))
@FEW
@given(shape=shapes)
def test_unary_ops_match_pytorch(op: str, shape: tuple[int, ...]) -> None:
    attrs, function, low = UNARY[op]
    check_op(lambda builder, v: builder.op(op, v["x"], **attrs), lambda t: function(t["x"]),
             {"x": normal(shape, low=low)})


def test_gelu_tanh_and_pow_zero_match_pytorch() -> None:
    x = normal((3, 7))
    check_op(lambda b, v: b.op("gelu", v["x"], approximate="tanh"),
             lambda t: F.gelu(t["x"], approximate="tanh"), {"x": x})
    check_op(lambda b, v: b.op("pow", v["x"], exponent=0.0), lambda t: torch.pow(t["x"], 0.0),
             {"x": x})


# Broadcasting binary ops ----------------------------------------------------------------


@st.composite
def broadcast_pair(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast: the second drops leading dims and sets some to 1."""
    full = draw(shapes)
    dropped = draw(st.integers(0, len(full)))
    other = tuple(1 if draw(st.booleans()) else d for d in full[dropped:])
    return (full, other) if draw(st.booleans()) else (other, full)


BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
          "maximum": torch.maximum, "minimum": torch.minimum, "pow": torch.pow}


@pytest.mark.parametrize("op", sorted(BINARY))
@FEW
@given(pair=broadcast_pair())
def test_binary_ops_broadcast_like_pytorch(op: str, pair: tuple[tuple[int, ...],
                                                                tuple[int, ...]]) -> None:
    low = 0.5 if op in ("div", "pow") else None  # away from 0 (division, log of the base)
    a, b = normal(pair[0], 1, low), normal(pair[1], 2, low)
    check_op(lambda builder, v: builder.op(op, v["a"], v["b"]),
             lambda t: BINARY[op](t["a"], t["b"]), {"a": a, "b": b}, terms=max(a.size, b.size))


def test_ties_of_maximum_share_the_gradient_as_pytorch() -> None:
    a = np.array([1.0, 2.0, 3.0], np.float32)
    check_op(lambda b, v: b.op("maximum", v["a"], v["b"]), lambda t: torch.maximum(t["a"], t["b"]),
             {"a": a, "b": a.copy()})


# GEMMs and convolutions -----------------------------------------------------------------


@given(lead=st.lists(SIZES, max_size=2).map(tuple), features=SIZES, units=SIZES,
       bias=st.booleans())
def test_dense_matches_pytorch(lead: tuple[int, ...], features: int, units: int,
                               bias: bool) -> None:
    operands = {"x": normal((*lead, features)), "fc.weight": normal((units, features), 3)}
    if bias:
        operands["fc.bias"] = normal((units,), 4)
    check_op(lambda b, v: b.op("dense", v["x"], units=units, bias=bias, name="fc"),
             lambda t: F.linear(t["x"], t["fc.weight"], t.get("fc.bias")), operands,
             terms=int(np.prod(lead or (1,))))


@st.composite
def matmul_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    m, k, n = draw(SIZES), draw(SIZES), draw(SIZES)
    kind = draw(st.sampled_from(("matrices", "batched", "vector_a", "vector_b")))
    if kind == "vector_a":
        return (k,), (*draw(st.lists(SIZES, max_size=1)), k, n)
    if kind == "vector_b":
        return (*draw(st.lists(SIZES, max_size=1)), m, k), (k,)
    if kind == "matrices":
        return (m, k), (k, n)
    batch = draw(SIZES)
    return (batch, m, k), (1 if draw(st.booleans()) else batch, k, n)


@given(pair=matmul_shapes())
def test_matmul_matches_pytorch(pair: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    check_op(lambda b, v: b.op("matmul", v["a"], v["b"]), lambda t: torch.matmul(t["a"], t["b"]),
             {"a": normal(pair[0], 1), "b": normal(pair[1], 2)}, terms=7)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    case = {"batch": draw(st.sampled_from((1, 2))), "channels": groups * draw(st.integers(1, 2)),
            "filters": groups * draw(st.integers(1, 3)), "groups": groups, "kernel": kernel,
            "stride": (draw(st.integers(1, 2)), draw(st.integers(1, 3))),
            "dilation": (draw(st.integers(1, 2)), 1), "bias": draw(st.booleans()),
            "height": draw(st.sampled_from((5, 7))), "width": draw(st.sampled_from((3, 6)))}
    same = case["stride"] == (1, 1) and draw(st.booleans())
    case["padding"] = "same" if same else (draw(st.integers(0, 2)), draw(st.integers(0, 1)))
    return case


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's note on even kernels
@given(case=conv_cases())
# "same" with an even kernel pads one more row after than before: the cropped path.
@example(case={"batch": 2, "channels": 2, "filters": 3, "groups": 1, "kernel": (2, 2),
               "stride": (1, 1), "dilation": (1, 1), "bias": True, "height": 5, "width": 6,
               "padding": "same"})
def test_conv2d_matches_pytorch(case: dict[str, Any]) -> None:
    height, width = case["height"], case["width"]
    reach = [d * (k - 1) + 1 for d, k in zip(case["dilation"], case["kernel"])]
    if case["padding"] != "same" and (height + 2 * case["padding"][0] < reach[0] or
                                      width + 2 * case["padding"][1] < reach[1]):
        return  # the window does not fit
    weight_shape = (case["filters"], case["channels"] // case["groups"], *case["kernel"])
    operands = {"x": normal((case["batch"], case["channels"], height, width)),
                "conv.weight": normal(weight_shape, 5)}
    if case["bias"]:
        operands["conv.bias"] = normal((case["filters"],), 6)
    attrs = {k: case[k] for k in ("filters", "kernel", "stride", "padding", "dilation",
                                  "groups", "bias")}
    check_op(lambda b, v: b.op("conv2d", v["x"], name="conv", **attrs),
             lambda t: F.conv2d(t["x"], t["conv.weight"], t.get("conv.bias"), case["stride"],
                                case["padding"], case["dilation"], case["groups"]),
             operands, terms=case["batch"] * height * width)


@given(batch=st.sampled_from((1, 2)), groups=st.sampled_from((1, 3)), length=SIZES,
       kernel=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       bias=st.booleans())
def test_conv1d_matches_pytorch(batch: int, groups: int, length: int, kernel: int,
                                stride: int, padding: int, bias: bool) -> None:
    if length + 2 * padding < kernel:
        return  # the window does not fit
    operands = {"x": normal((batch, 3, length)), "conv.weight": normal((6, 3 // groups, kernel))}
    if bias:
        operands["conv.bias"] = normal((6,), 2)
    check_op(lambda b, v: b.op("conv1d", v["x"], filters=6, kernel=kernel, stride=stride,
                               padding=padding, groups=groups, bias=bias, name="conv"),
             lambda t: F.conv1d(t["x"], t["conv.weight"], t.get("conv.bias"), stride, padding,
                                groups=groups), operands, terms=batch * length)


@given(batch=st.sampled_from((1, 2)), channels=SIZES, size=st.sampled_from((4, 5, 7)),
       kernel=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 1),
       ceil_mode=st.booleans())
def test_maxpool2d_matches_pytorch(batch: int, channels: int, size: int, kernel: int,
                                   stride: int, padding: int, ceil_mode: bool) -> None:
    padding = min(padding, kernel // 2)
    check_op(lambda b, v: b.op("maxpool2d", v["x"], kernel=kernel, stride=stride,
                               padding=padding, ceil_mode=ceil_mode),
             lambda t: F.max_pool2d(t["x"], kernel, stride, padding, ceil_mode=ceil_mode),
             {"x": normal((batch, channels, size, size + 1))})


def test_maxpool2d_gives_a_tied_window_to_its_first_maximum() -> None:
    """Values 0, 1, 2 tie in most windows: PyTorch's CPU kernel gives the gradient to the
    first maximum in row-major order, and so does netc."""
    ties = np.random.default_rng(5).integers(0, 3, (2, 3, 7, 6)).astype(np.float32)
    check_op(lambda b, v: b.op("maxpool2d", v["x"], kernel=3, stride=2, padding=1,
                               ceil_mode=True),
             lambda t: F.max_pool2d(t["x"], 3, 2, 1, ceil_mode=True), {"x": ties})


@given(batch=st.sampled_from((1, 2)), channels=SIZES, size=st.sampled_from((4, 5, 7)),
       kernel=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 1),
       count_include_pad=st.booleans())
def test_avgpool2d_matches_pytorch(batch: int, channels: int, size: int, kernel: int,
                                   stride: int, padding: int, count_include_pad: bool) -> None:
    padding = min(padding, kernel // 2)
    check_op(lambda b, v: b.op("avgpool2d", v["x"], kernel=kernel, stride=stride,
                               padding=padding, count_include_pad=count_include_pad),
             lambda t: F.avg_pool2d(t["x"], kernel, stride, padding,
                                    count_include_pad=count_include_pad),
             {"x": normal((batch, channels, size, size + 1))})
    check_op(lambda b, v: b.op("global_avgpool", v["x"]),
             lambda t: F.adaptive_avg_pool2d(t["x"], 1), {"x": normal((batch, channels, size, 3))})


# Reductions, softmax, normalisation -----------------------------------------------------

REDUCTIONS = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin,
              "logsumexp": torch.logsumexp}


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@FEW
@given(shape=shapes, data=st.data(), keepdim=st.booleans())
def test_reductions_match_pytorch(op: str, shape: tuple[int, ...], data: st.DataObject,
                                  keepdim: bool) -> None:
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              unique_by=lambda a: a % len(shape)))
    check_op(lambda b, v: b.op(op, v["x"], axis=axes, keepdim=keepdim),
             lambda t: REDUCTIONS[op](t["x"], dim=axes, keepdim=keepdim),
             {"x": normal(shape)}, terms=int(np.prod(shape)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(shape=shapes, data=st.data())
def test_softmax_matches_pytorch(op: str, shape: tuple[int, ...], data: st.DataObject) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    function = F.softmax if op == "softmax" else F.log_softmax
    check_op(lambda b, v: b.op(op, v["x"], axis=axis), lambda t: function(t["x"], dim=axis),
             {"x": normal(shape)}, terms=shape[axis])


@given(lead=st.lists(SIZES, max_size=2).map(tuple), features=SIZES)
def test_layernorm_and_rmsnorm_match_pytorch(lead: tuple[int, ...], features: int) -> None:
    x = normal((*lead, features))
    rows = int(np.prod(lead or (1,)))
    check_op(lambda b, v: b.op("layernorm", v["x"], name="ln"),
             lambda t: F.layer_norm(t["x"], (features,), t["ln.weight"], t["ln.bias"]),
             {"x": x, "ln.weight": normal((features,), 7), "ln.bias": normal((features,), 8)},
             terms=rows * features)
    check_op(lambda b, v: b.op("rmsnorm", v["x"], name="rms"),
             lambda t: F.rms_norm(t["x"], (features,), t["rms.weight"], eps=1e-6),
             {"x": x, "rms.weight": normal((features,), 7)}, terms=rows * features)


# Layout ops -------------------------------------------------------------------------------


def test_layout_ops_match_pytorch() -> None:
    x = normal((3, 2, 7))
    cases: list[tuple[Build, TorchFunction]] = [
        (lambda b, v: b.op("flatten", v["x"]), lambda t: t["x"].flatten(1)),
        (lambda b, v: b.op("reshape", v["x"], dims=[7, 2]), lambda t: t["x"].reshape(3, 7, 2)),
        (lambda b, v: b.op("transpose", v["x"], perm=[2, 0, 1]),
         lambda t: t["x"].permute(2, 0, 1)),
        (lambda b, v: b.op("concat", v["x"], v["x"], axis=2),
         lambda t: torch.cat([t["x"], t["x"]], dim=2)),
        (lambda b, v: b.op("stack", v["x"], v["x"], axis=1),
         lambda t: torch.stack([t["x"], t["x"]], dim=1)),
        (lambda b, v: b.op("unsqueeze", v["x"], axis=1), lambda t: t["x"].unsqueeze(1)),
        (lambda b, v: b.op("squeeze", b.op("unsqueeze", v["x"], axis=3), axis=3),
         lambda t: t["x"]),
        (lambda b, v: b.op("expand", b.op("unsqueeze", v["x"], axis=1), dims=[-1, 4, -1, -1]),
         lambda t: t["x"].unsqueeze(1).expand(-1, 4, -1, -1)),
        (lambda b, v: b.op("slice", v["x"], axes=[0, 2], starts=[1, -5], ends=[3, 6]),
         lambda t: t["x"][1:3, :, -5:6]),
        (lambda b, v: b.op("select", v["x"], axis=2, index=-2), lambda t: t["x"][:, :, -2]),
        (lambda b, v: b.op("pad", v["x"], pads=[2, -1, 0, 1]),
         lambda t: F.pad(t["x"], [2, -1, 0, 1])),
        (lambda b, v: b.op("cast", b.op("cast", v["x"], dtype="f16"), dtype="f32"),
         lambda t: t["x"].half().float()),
    ]
    for build, function in cases:
        check_op(build, function, {"x": x})


def test_embedding_triangles_and_attention_match_pytorch() -> None:
    ids = np.array([[0, 3, 3, 6], [1, 3, 0, 0], [6, 6, 6, 2]], np.int64)
    check_op(lambda b, v: b.op("embedding", v["ids"], num_embeddings=7, dim=5, name="emb"),
             lambda t: F.embedding(t["ids"], t["emb.weight"]), {"emb.weight": normal((7, 5))},
             {"ids": ids}, terms=12)
    check_op(lambda b, v: b.op("embedding", v["ids"], num_embeddings=7, dim=5, name="emb"),
             lambda t: F.embedding(t["ids"], t["emb.weight"]), {"emb.weight": normal((7, 5))},
             {"ids": ids[0]}, terms=4)
    for op, function in (("triu", torch.triu), ("tril", torch.tril)):
        check_op(lambda b, v, op=op: b.op(op, v["x"], diagonal=-1),
                 lambda t, function=function: function(t["x"], diagonal=-1),
                 {"x": normal((2, 3, 7))})
    q, k, v = normal((2, 3, 5, 4), 1), normal((2, 3, 7, 4), 2), normal((2, 3, 7, 3), 3)
    check_op(lambda b, v: b.op("attention", v["q"], v["k"], v["v"], scale=0.4),
             lambda t: F.scaled_dot_product_attention(t["q"], t["k"], t["v"], scale=0.4),
             {"q": q, "k": k, "v": v}, terms=7)
    causal = normal((2, 5, 6), 4)
    operands = {"x": causal, "mha.in_proj_weight": normal((18, 6), 5),
                "mha.in_proj_bias": normal((18,), 6), "mha.out_proj.weight": normal((6, 6), 7),
                "mha.out_proj.bias": normal((6,), 8)}

    def torch_mha(t: dict[str, Any]) -> Any:
        x = t["x"].transpose(0, 1)  # [L, N, E], as the functional form takes it
        mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
        return F.multi_head_attention_forward(
            x, x, x, 6, 2, t["mha.in_proj_weight"], t["mha.in_proj_bias"], None, None, False,
            0.0, t["mha.out_proj.weight"], t["mha.out_proj.bias"], training=False,
            need_weights=False, attn_mask=mask)[0].transpose(0, 1)
    check_op(lambda b, v: b.op("multihead_attention", v["x"], heads=2, causal=True, name="mha"),
             torch_mha, operands, terms=10)


def test_where_and_masked_fill_give_no_gradient_to_the_condition() -> None:
    mask = np.random.default_rng(0).integers(0, 2, (3, 7)).astype(bool)
    check_op(lambda b, v: b.op("where", v["mask"], v["a"], v["b"]),
             lambda t: torch.where(t["mask"], t["a"], t["b"]),
             {"a": normal((3, 7), 1), "b": normal((7,), 2)}, {"mask": mask}, terms=3)
    check_op(lambda b, v: b.op("masked_fill", v["a"], v["mask"], value=-2.0),
             lambda t: t["a"].masked_fill(t["mask"], -2.0), {"a": normal((3, 7), 1)},
             {"mask": mask})


# Losses -----------------------------------------------------------------------------------


@given(batch=SIZES, classes=SIZES, spatial=st.lists(SIZES, max_size=1).map(tuple),
       reduction=st.sampled_from(("mean", "sum", "none")), weighted=st.booleans(),
       smoothing=st.sampled_from((0.0, 0.2)), ignored=st.booleans())
def test_cross_entropy_and_nll_loss_match_pytorch(batch: int, classes: int,
                                                  spatial: tuple[int, ...], reduction: str,
                                                  weighted: bool, smoothing: float,
                                                  ignored: bool) -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, classes, (batch, *spatial)).astype(np.int64)
    if ignored and target.size > 1:
        target.flat[0] = -100  # ignored, but not every target
    operands = {"x": normal((batch, classes, *spatial))}
    extra: dict[str, np.ndarray] = {"t": target}
    if weighted:  # class weights are inputs: PyTorch differentiates no loss by them
        extra["w"] = normal((classes,), 4, low=0.1)
    terms = target.size
    for op, function in (("cross_entropy", F.cross_entropy), ("nll_loss", F.nll_loss)):
        attrs: dict[str, Any] = {"reduction": reduction}
        if op == "cross_entropy":
            attrs["label_smoothing"] = smoothing
        check_op(lambda b, v, op=op, attrs=attrs: b.op(
                     op, v["x"], v["t"], *([v["w"]] if weighted else []), **attrs),
                 lambda t, function=function, attrs=attrs: function(
                     t["x"], t["t"], t.get("w"), **attrs),
                 operands, extra, terms=terms)


@pytest.mark.parametrize("op", ["mse_loss", "l1_loss", "bce_with_logits"])
@given(shape=shapes)
def test_pair_losses_match_pytorch(op: str, shape: tuple[int, ...]) -> None:
    function = {"mse_loss": F.mse_loss, "l1_loss": F.l1_loss,
                "bce_with_logits": F.binary_cross_entropy_with_logits}[op]
    check_op(lambda b, v: b.op(op, v["a"], v["b"]), lambda t: function(t["a"], t["b"]),
             {"a": normal(shape, 1), "b": normal(shape, 2)}, terms=int(np.prod(shape)))


def test_every_op_with_a_vjp_is_checked_here() -> None:
    """The tests above cover each op whose registry entry has a VJP."""
    checked = {*UNARY, *BINARY, *REDUCTIONS, "dense", "matmul", "conv2d", "maxpool2d",
               "avgpool2d", "global_avgpool", "softmax", "log_softmax", "layernorm", "rmsnorm",
               "flatten", "reshape", "transpose", "concat", "unsqueeze", "squeeze", "expand",
               "slice", "select", "pad", "cast", "where", "masked_fill", "cross_entropy",
               "nll_loss", "mse_loss", "conv1d", "embedding", "triu", "tril",
               # Against PyTorch in tests/unit/test_norm_gradients.py.
               "groupnorm", "instancenorm",
               # Against its mask, in tests/unit/test_training_mode.py (PyTorch draws others).
               "dropout_train",
               # Against PyTorch in tests/sim/test_resample_grad.py.
               "adaptive_avgpool2d", "interpolate",
               # Against PyTorch in tests/sim/test_conv_weight_grad.py.
               "conv_transpose2d",
               # Against F.batch_norm(training=True) in tests/unit/test_training_mode.py.
               "batchnorm_train"}
    with_vjp = {name for name, opdef in REGISTRY.items() if opdef.vjp is not None}
    assert with_vjp - checked == set()


# Central finite differences ---------------------------------------------------------------


def directional_difference(graph: Graph, weights: dict[str, np.ndarray],
                           inputs: Mapping[str, np.ndarray], direction: dict[str, np.ndarray],
                           step: float) -> float:
    """(L(w + h·v) - L(w - h·v)) / 2h, the quotient formed in float64."""
    def loss(sign: float) -> float:
        moved = {k: (w.astype(np.float64) + sign * step * direction.get(k, 0)).astype(np.float32)
                 for k, w in weights.items()}
        return float(np.float64(run_reference(graph, moved, inputs)["loss"]))
    return (loss(1.0) - loss(-1.0)) / (2 * step)


@pytest.mark.parametrize("op", ["tanh", "softmax", "layernorm", "conv2d", "maxpool2d",
                                "groupnorm", "instancenorm"])
def test_gradients_match_central_differences(op: str) -> None:
    """The reference computes in float32, so the step is h = 1e-2: rounding the moved weights
    and the loss to float32 costs about 1e-6 / h = 1e-4 of the quotient, truncation
    h²/6·|L'''| about 2e-5. Tolerance 1e-3, relative to the derivative's size."""
    builder = GraphBuilder("fd")
    x = builder.param("x", "f32", (2, 3, 5, 5))
    y = {"tanh": lambda: builder.op("tanh", x),
         "softmax": lambda: builder.op("softmax", x, axis=1),
         "layernorm": lambda: builder.op("layernorm", x, name="ln"),
         "conv2d": lambda: builder.op("conv2d", x, filters=4, kernel=3, stride=2, padding=1,
                                      name="conv"),
         "maxpool2d": lambda: builder.op("maxpool2d", x, kernel=3, stride=2, padding=1),
         "groupnorm": lambda: builder.op("groupnorm", x, groups=1, name="gn"),
         "instancenorm": lambda: builder.op("instancenorm", x, affine=True, name="inorm")}[op]()
    shape = builder.type_of(y).shape
    c = builder.input("c", "f32", shape)
    builder.output("loss", builder.op("sum", builder.op("mul", y, c), axis=list(range(4))))
    graph = builder.build()
    rng = np.random.default_rng(2)
    weights = {p.id: rng.standard_normal(tuple(int(d) for d in p.type.shape)).astype(np.float32)
               for p in graph.params}
    if op == "maxpool2d":  # values 0.1 apart: no step moves which element is a window's max
        weights["x"] = rng.permutation(weights["x"].size).reshape(weights["x"].shape) \
            .astype(np.float32) * np.float32(0.1)
    inputs = {"c": rng.standard_normal(tuple(int(d) for d in shape)).astype(np.float32)}
    gradients = run_reference(backward(graph, "loss"), weights, inputs)
    for _ in range(3):
        direction = {k: rng.standard_normal(w.shape) for k, w in weights.items()}
        predicted = sum(float(np.vdot(gradients["grad:" + k].astype(np.float64), v))
                        for k, v in direction.items())
        measured = directional_difference(graph, weights, inputs, direction, 1e-2)
        assert abs(predicted - measured) <= 1e-3 * max(1.0, abs(predicted)), \
            (op, predicted, measured)


# Whole networks ---------------------------------------------------------------------------


def torch_state(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {k: torch.tensor(np.asarray(v, np.float32), requires_grad=True)
            for k, v in weights.items()}


def compare_network(graph: Graph, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                    torch_loss: Callable[[dict[str, Any]], Any], terms: int) -> None:
    got = netc_gradients(graph, "loss", weights, inputs)
    state = torch_state(weights)
    torch_loss(state).backward()
    assert set(got) == set(trainable_params(graph))
    for name in got:
        assert_close(name, got[name], state[name].grad.numpy().astype(np.float64), terms)


def test_mlp_gradients_match_pytorch() -> None:
    builder = GraphBuilder("mlp")
    x = builder.input("x", "f32", ("N", 13))
    labels = builder.input("labels", "i64", ("N",))
    hidden = builder.op("relu", builder.op("dense", x, units=31, name="fc1"))
    logits = builder.op("dense", hidden, units=10, name="fc2")
    builder.output("loss", builder.op("cross_entropy", logits, labels))
    graph = builder.build()
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((9, 13)).astype(np.float32),
              "labels": rng.integers(0, 10, 9)}
    weights = init_weights(graph, seed=1)

    def torch_loss(w: dict[str, Any]) -> Any:
        h = F.relu(F.linear(torch.tensor(inputs["x"]), w["fc1.weight"], w["fc1.bias"]))
        return F.cross_entropy(F.linear(h, w["fc2.weight"], w["fc2.bias"]),
                               torch.tensor(inputs["labels"]))
    compare_network(graph, weights, inputs, torch_loss, terms=9)


CNN = """
network tiny_cnn {
    input image: f32[N, 3, 11, 11]
    input labels: i64[N]
    x = conv2d(image, filters=6, kernel=3, padding=1, name="c1") |> relu |> maxpool2d(2)
    x = conv2d(x, filters=8, kernel=3, stride=2, groups=2, name="c2") |> layernorm(name="ln")
    x = avgpool2d(x, 2, stride=1) |> flatten
    logits = dense(x, 5, name="fc")
    output loss = cross_entropy(logits, labels, label_smoothing=0.1)
}
"""


def test_tiny_cnn_gradients_match_pytorch() -> None:
    graph = load_string(CNN, "tiny_cnn.net")
    rng = np.random.default_rng(0)
    inputs = {"image": rng.standard_normal((4, 3, 11, 11)).astype(np.float32),
              "labels": rng.integers(0, 5, 4)}
    weights = {k: v + np.float32(0.1) * rng.standard_normal(v.shape).astype(np.float32)
               for k, v in init_weights(graph, seed=1).items()}

    def torch_loss(w: dict[str, Any]) -> Any:
        x = F.max_pool2d(F.relu(F.conv2d(torch.tensor(inputs["image"]), w["c1.weight"],
                                         w["c1.bias"], padding=1)), 2)
        x = F.conv2d(x, w["c2.weight"], w["c2.bias"], stride=2, groups=2)
        x = F.layer_norm(x, (x.shape[-1],), w["ln.weight"], w["ln.bias"])
        logits = F.linear(F.avg_pool2d(x, 2, stride=1).flatten(1), w["fc.weight"], w["fc.bias"])
        return F.cross_entropy(logits, torch.tensor(inputs["labels"]), label_smoothing=0.1)
    compare_network(graph, weights, inputs, torch_loss, terms=4 * 11 * 11)


def test_attention_block_gradients_match_pytorch() -> None:
    """A transformer block's pieces: layernorm, projections, batched matmuls, softmax, gelu,
    residuals, through the named batch dimension."""
    builder = GraphBuilder("block")
    x = builder.input("x", "f32", ("N", 5, 8))
    target = builder.input("target", "f32", ("N", 5, 8))
    normed = builder.op("layernorm", x, name="ln")
    # A slice of a value with named dimensions (the projection's middle 8 features).
    q = builder.op("slice", builder.op("dense", normed, units=10, name="q"), axes=[2],
                   starts=[1], ends=[9])
    k = builder.op("dense", normed, units=8, name="k")
    scores = builder.op("mul", builder.op("matmul", q, builder.op("transpose", k,
                                                                   perm=[0, 2, 1])),
                        builder.constant(0.35))
    mixed = builder.op("matmul", builder.op("softmax", scores, axis=-1), normed)
    y = builder.op("add", x, builder.op("dense", builder.op("gelu", mixed), units=8, name="out"))
    builder.output("loss", builder.op("mse_loss", y, target))
    graph = builder.build()
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 5, 8)).astype(np.float32),
              "target": rng.standard_normal((3, 5, 8)).astype(np.float32)}
    weights = init_weights(graph, seed=2)

    def torch_loss(w: dict[str, Any]) -> Any:
        tx = torch.tensor(inputs["x"])
        n = F.layer_norm(tx, (8,), w["ln.weight"], w["ln.bias"])
        q = F.linear(n, w["q.weight"], w["q.bias"])[..., 1:9]
        k = F.linear(n, w["k.weight"], w["k.bias"])
        mixed = torch.softmax(q @ k.transpose(1, 2) * 0.35, dim=-1) @ n
        y = tx + F.linear(F.gelu(mixed), w["out.weight"], w["out.bias"])
        return F.mse_loss(y, torch.tensor(inputs["target"]))
    compare_network(graph, weights, inputs, torch_loss, terms=15)


EXAMPLES = sorted(path for path in (Path(__file__).resolve().parents[2] / "examples").glob("*.net")
                  if "network " in path.read_text("utf-8"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_example_differentiates_in_training_mode(path: Path) -> None:
    """The mean of each example's first output, differentiated by every parameter in training
    mode (`netc.training_mode`): a verified graph. Inference batchnorm has no gradient: a
    training step differentiates its training form."""
    graph = load_file(path)
    ref = graph.outputs[0][1]
    kind = graph.value_type(ref)
    mean = Node("the_loss", "mean", (ref,), make_attrs("mean", {"axis": list(range(kind.rank))},
                                                       [kind]), TensorType(kind.dtype, ()))
    graph = Graph(graph.name, (*graph.nodes, mean), (*graph.outputs, ("the_loss", "the_loss")))
    verify(backward(training_mode(graph), "the_loss"))
    if any(node.op == "batchnorm" for node in graph.nodes):
        with pytest.raises(AutodiffError, match=r"`batchnorm` .* has no gradient yet"):
            backward(graph, "the_loss")


# The graph and its errors -----------------------------------------------------------------


def test_backward_graph_keeps_the_forward_and_the_parameters() -> None:
    graph = load_string(CNN, "tiny_cnn.net")
    result = backward(graph, "loss")
    assert result.nodes[:len(graph.nodes)] == graph.nodes
    assert [name for name, _ in result.outputs] == \
        ["loss", *(f"grad:{p}" for p in trainable_params(graph))]
    # The backward part reuses the layers' weights without making them anyone else's.
    assert param_specs(result) == param_specs(graph)
    for node in result.nodes[len(graph.nodes):]:
        assert node.span is not None and node.span.file == "tiny_cnn.net"


def test_a_slice_ending_at_a_named_dimension_matches_pytorch() -> None:
    """Learned positions `pos[:, :T]` (gpt.net): the gradient fills the first T rows."""
    source = """
network positions {
    input x: f32[N, T, 4]
    param pos: f32[1, 6, 4]
    output loss = mean((x + pos[:, :T]) * x, axis=[0, 1, 2])
}
"""
    graph = load_string(source, "positions.net")
    x = normal((2, 3, 4))
    pos = normal((1, 6, 4), 1)
    got = netc_gradients(graph, "loss", {"pos": pos}, {"x": x})
    tensor = torch.tensor(pos, requires_grad=True)
    ((torch.tensor(x) + tensor[:, :3]) * torch.tensor(x)).mean().backward()
    assert_close("pos", got["pos"], tensor.grad.numpy().astype(np.float64))


def test_a_parameter_the_loss_does_not_read_gets_zeros() -> None:
    builder = GraphBuilder("two_heads")
    x = builder.input("x", "f32", (2, 3))
    builder.output("loss", builder.op("sum", builder.op("dense", x, units=2, name="used"),
                                      axis=[0, 1]))
    builder.output("other", builder.op("dense", x, units=2, name="unused"))
    graph = builder.build()
    out = run_reference(backward(graph, "loss"), init_weights(graph, seed=0),
                        {"x": np.ones((2, 3), np.float32)})
    assert np.array_equal(out["grad:unused.weight"], np.zeros((2, 3), np.float32))
    assert np.array_equal(out["grad:used.bias"], np.full(2, 2.0, np.float32))


def test_an_op_without_a_gradient_is_named_with_its_line() -> None:
    source = """
network norm {
    input image: f32[2, 4, 5, 5]
    x = conv2d(image, filters=4, kernel=3, name="conv")
    x = batchnorm(x, name="bn")
    output loss = mean(x, axis=[0, 1, 2, 3])
}
"""
    graph = load_string(source, "norm.net")
    # Inference batchnorm: training differentiates its training form (`training_mode`).
    with pytest.raises(AutodiffError, match=r"norm\.net:5:\d+: `batchnorm` \(bn, layer bn\) "
                                            r"has no gradient yet"):
        backward(graph, "loss")
    # Integers stop the gradient without asking for one: argmax feeds no float value here.
    builder = GraphBuilder("argmax")
    x = builder.param("x", "f32", (3, 4))
    top = builder.op("argmax", x, axis=1)
    builder.output("loss", builder.op("sum", builder.op("mul", x, x), axis=[0, 1]))
    builder.output("top", top)
    verify(backward(builder.build(), "loss"))


def test_the_loss_must_be_a_float_scalar() -> None:
    builder = GraphBuilder("vector")
    x = builder.param("x", "f32", (3,))
    builder.output("y", builder.op("relu", x))
    with pytest.raises(AutodiffError, match="must be a float scalar"):
        backward(builder.build(), "y")
