"""Every op's NumPy reference against onnxruntime, plus PyTorch-semantics spot checks.

The property test draws shapes (ragged sizes 1, 31, 33, 127, 129 among small ones) and
attributes for each op, exports the single op to ONNX, and compares onnxruntime's result with
the reference within the op's tolerance in `TOLERANCES`. The spot checks pin PyTorch's
semantics with values computed by hand, where onnxruntime could share a mistake with us.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netc.ir import Attrs, TensorType
from netc.onnx.export import export_op
from netc.ops import REGISTRY, ShapeError
from netc.ops.builder import GraphBuilder, make_attrs
from netc.weights import init_weights

pytestmark = pytest.mark.unit

Shape = tuple[int, ...]

V1_OPS = {
    "dense", "conv2d", "matmul", "maxpool2d", "avgpool2d", "global_avgpool", "batchnorm",
    "layernorm", "relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu", "softmax",
    "log_softmax", "flatten", "reshape", "transpose", "concat", "dropout", "add", "sub", "mul",
}
"""The standard ops of the language spec, version 1."""
Draw = Callable[[st.SearchStrategy[Any]], Any]

# (rtol, atol) for |onnxruntime - reference| <= atol + rtol * |reference|, on inputs of
# magnitude 0.1 to 3. Data movement, max and IEEE-exact arithmetic must agree exactly; sums
# and transcendental functions differ by onnxruntime's summation order and its vectorised
# approximations of exp, tanh and erf. Dot products of up to 129 terms of size up to 9 carry
# rounding errors of ~1e-5 in absolute terms even where they cancel to a small result.
TOLERANCES: dict[str, tuple[float, float]] = {
    "dense": (1e-5, 1e-4),
    "conv2d": (1e-5, 1e-4),
    "matmul": (1e-5, 1e-4),
    "maxpool2d": (0.0, 0.0),
    "avgpool2d": (1e-6, 1e-6),
    "global_avgpool": (1e-5, 1e-6),
    "batchnorm": (1e-6, 1e-6),
    "layernorm": (1e-5, 1e-5),
    "relu": (0.0, 0.0),
    "sigmoid": (1e-6, 1e-6),
    "tanh": (1e-6, 1e-6),
    "gelu": (1e-6, 1e-6),
    "silu": (1e-6, 1e-6),
    "leaky_relu": (0.0, 0.0),
    "softmax": (1e-6, 1e-7),
    "log_softmax": (1e-6, 1e-6),
    "flatten": (0.0, 0.0),
    "reshape": (0.0, 0.0),
    "transpose": (0.0, 0.0),
    "concat": (0.0, 0.0),
    "dropout": (0.0, 0.0),
    "add": (0.0, 0.0),
    "sub": (0.0, 0.0),
    "mul": (0.0, 0.0),
}

RAGGED = st.sampled_from([1, 31, 33, 127, 129])
SIZES = st.one_of(RAGGED, st.integers(1, 8))
SMALL = st.integers(1, 3)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float,
                 what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}shape {actual.shape} != {expected.shape}"
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bad = ~(difference <= atol + rtol * np.abs(expected.astype(np.float64)))
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, difference, -1)), bad.shape)
        raise AssertionError(
            f"{what}{int(bad.sum())} of {bad.size} elements differ beyond rtol={rtol}, "
            f"atol={atol}; largest difference {difference.max():.3g} at {tuple(map(int, worst))} "
            f"({actual[worst]!r} vs expected {expected[worst]!r})")


def nonzero(rng: np.random.Generator, shape: Sequence[int], low: float = 0.1,
            high: float = 3.0) -> np.ndarray:
    """Random values of magnitude [low, high) and random sign: never zero."""
    magnitude = rng.uniform(low, high, size=tuple(shape))
    return np.where(rng.random(size=tuple(shape)) < 0.5, -magnitude, magnitude).astype(np.float32)


# Strategies: each draws (attrs, input shapes) that the op accepts -------------------------


@st.composite
def tensor_shape(draw: Draw, min_rank: int = 1, max_rank: int = 4, ragged: bool = True) -> Shape:
    """Small dims with one (maybe ragged) dim at a random position."""
    rank = draw(st.integers(min_rank, max_rank))
    dims = [draw(SMALL) for _ in range(rank)]
    if rank and ragged:
        dims[draw(st.integers(0, rank - 1))] = draw(SIZES)
    return tuple(dims)


def unary(attrs: st.SearchStrategy[dict[str, Any]] | None = None, min_rank: int = 1,
          max_rank: int = 4) -> st.SearchStrategy[tuple[dict[str, Any], list[Shape]]]:
    return st.tuples(attrs if attrs is not None else st.just({}),
                     tensor_shape(min_rank, max_rank).map(lambda shape: [shape]))


@st.composite
def axis_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    shape = draw(tensor_shape())
    return {"axis": draw(st.integers(-len(shape), len(shape) - 1))}, [shape]


@st.composite
def dense_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    shape = (*draw(tensor_shape(0, 2)), draw(SIZES))
    return {"units": draw(SIZES), "bias": draw(st.booleans())}, [shape]


@st.composite
def conv2d_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding: Any = draw(st.one_of(st.just("same"), st.integers(0, 2),
                                  st.tuples(st.integers(0, 2), st.integers(0, 2))))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if padding == "same" else (padding, padding) if isinstance(padding, int) \
        else padding
    # At least one output pixel: the padded input must hold the dilated kernel.
    smallest = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, pads)]
    height = max(smallest[0], draw(st.one_of(st.sampled_from([1, 31, 33]), st.integers(1, 9))))
    width = max(smallest[1], draw(st.integers(1, 9)))
    attrs = {"filters": groups * draw(SMALL), "kernel": kernel, "stride": stride,
             "padding": padding, "dilation": dilation, "groups": groups,
             "bias": draw(st.booleans())}
    return attrs, [(draw(st.integers(1, 2)), groups * draw(SMALL), height, width)]


@st.composite
def pool_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = max(kernel[0], draw(st.one_of(RAGGED, st.integers(1, 9))))
    width = max(kernel[1], draw(st.integers(1, 9)))
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    return attrs, [(draw(st.integers(1, 2)), draw(SMALL), height, width)]


@st.composite
def spatial_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    return {}, [(draw(st.integers(1, 2)), draw(SMALL), draw(SIZES), draw(st.integers(1, 9)))]


@st.composite
def reshape_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    shape = draw(tensor_shape(2, 4))
    # New item dims: the old ones shuffled, neighbours merged, maybe one left to -1.
    dims = list(draw(st.permutations(shape[1:])))
    merged: list[int] = [dims[0]]
    for size in dims[1:]:
        if draw(st.booleans()):
            merged[-1] *= size
        else:
            merged.append(size)
    if draw(st.booleans()):
        merged[draw(st.integers(0, len(merged) - 1))] = -1
    return {"dims": tuple(merged)}, [shape]


@st.composite
def transpose_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    shape = draw(tensor_shape(2, 4))
    return {"perm": tuple(draw(st.permutations(range(len(shape)))))}, [shape]  # 0 moves too


@st.composite
def concat_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    shape = draw(tensor_shape(1, 4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    count = draw(st.integers(2, 4))
    shapes = []
    for _ in range(count):
        sizes = list(shape)
        sizes[axis] = draw(SIZES)
        shapes.append(tuple(sizes))
    return {"axis": axis}, shapes


@st.composite
def broadcast_pair(draw: Draw, max_rank: int = 4, ragged: bool = True) -> tuple[Shape, Shape]:
    """Two shapes that broadcast: one a suffix of the other, 1s put on either side."""
    full = draw(tensor_shape(1, max_rank, ragged)) if draw(st.booleans()) else ()
    dropped = draw(st.integers(0, len(full)))
    left, right = list(full), list(full[dropped:])
    for position in range(len(right)):
        side = draw(st.sampled_from(["none", "left", "right"]))
        if side == "left":
            left[dropped + position] = 1
        elif side == "right":
            right[position] = 1
    pair = (tuple(left), tuple(right))
    return pair if draw(st.booleans()) else (pair[1], pair[0])


@st.composite
def binary_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    return {}, list(draw(broadcast_pair()))


@st.composite
def matmul_case(draw: Draw) -> tuple[dict[str, Any], list[Shape]]:
    rows, inner, columns = draw(SIZES), draw(SIZES), draw(st.integers(1, 9))
    batch_a, batch_b = draw(broadcast_pair(max_rank=2, ragged=False))
    a = (inner,) if draw(st.integers(0, 4)) == 0 else (*batch_a, rows, inner)
    b = (inner,) if draw(st.integers(0, 4)) == 0 else (*batch_b, inner, columns)
    return {}, [a, b]


CASES: dict[str, st.SearchStrategy[tuple[dict[str, Any], list[Shape]]]] = {
    "dense": dense_case(),
    "conv2d": conv2d_case(),
    "matmul": matmul_case(),
    "maxpool2d": pool_case(),
    "avgpool2d": pool_case(),
    "global_avgpool": spatial_case(),
    "batchnorm": unary(st.fixed_dictionaries({"eps": st.sampled_from([1e-5, 1e-3, 0.5])}),
                       min_rank=2),
    "layernorm": unary(st.fixed_dictionaries({"eps": st.sampled_from([1e-5, 1e-3, 0.5])}),
                       max_rank=3),
    "relu": unary(),
    "sigmoid": unary(),
    "tanh": unary(),
    "gelu": unary(),
    "silu": unary(),
    "leaky_relu": unary(st.fixed_dictionaries({"alpha": st.sampled_from([0.01, 0.2, 1.5,
                                                                         -0.3])})),
    "softmax": axis_case(),
    "log_softmax": axis_case(),
    "flatten": unary(min_rank=2),
    "reshape": reshape_case(),
    "transpose": transpose_case(),
    "concat": concat_case(),
    "dropout": unary(st.fixed_dictionaries({"p": st.sampled_from([0.0, 0.1, 0.5, 1.0])})),
    "add": binary_case(),
    "sub": binary_case(),
    "mul": binary_case(),
}


def random_params(op: str, attrs: Attrs, types: Sequence[TensorType],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Non-default parameter values (so that e.g. batchnorm does more than scale by 1)."""
    arrays = {}
    for spec in REGISTRY[op].params(attrs, types):
        if not spec.operand:  # a buffer no op reads (num_batches_tracked)
            continue
        low = 0.5 if spec.name == "running_var" else 0.1
        arrays[spec.name] = (np.abs(nonzero(rng, spec.shape, low, 2.0))
                             if spec.name == "running_var" else nonzero(rng, spec.shape, low, 1.0))
    return arrays


def run_onnx(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session.run(["output"], feeds)[0]


def test_every_op_has_a_case_and_a_tolerance() -> None:
    assert set(CASES) == set(TOLERANCES) == V1_OPS
    assert set(REGISTRY) >= V1_OPS


@pytest.mark.parametrize("op", sorted(CASES))
@given(data=st.data())
def test_reference_matches_onnxruntime(op: str, data: st.DataObject) -> None:
    values, shapes = data.draw(CASES[op], label="attrs, shapes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    # A named batch dimension on single-input ops: the exported model must not bake it in.
    symbolic = len(shapes) == 1 and len(shapes[0]) >= 2 and data.draw(st.booleans(),
                                                                       label="named batch")
    types = [TensorType("f32", (("N", *shape[1:]) if symbolic else shape)) for shape in shapes]
    attrs = make_attrs(op, values, types)
    params = random_params(op, attrs, types, rng)
    inputs = [nonzero(rng, shape) for shape in shapes]
    expected = REGISTRY[op].reference(attrs, *inputs, *params.values())
    inferred = REGISTRY[op].infer(attrs, types)
    assert expected.dtype == np.float32
    sizes = {"N": shapes[0][0]} if symbolic else {}
    assert expected.shape == inferred.concrete(sizes)
    model = export_op(op, attrs, types, params)
    actual = run_onnx(model, {f"input_{i}": x for i, x in enumerate(inputs)})
    rtol, atol = TOLERANCES[op]
    assert_close(actual, expected, rtol, atol, f"{op}{dict(attrs)} on {shapes}: ")


# PyTorch semantics, computed by hand ------------------------------------------------------


def reference(op: str, *arrays: Any, **values: Any) -> np.ndarray:
    """The op's reference on tensor inputs then params, attributes completed and normalised."""
    opdef = REGISTRY[op]
    given_or_default = Attrs({spec.name: values.get(spec.name, spec.default)
                              for spec in opdef.attrs})
    count = len(arrays) - len(opdef.param_names(given_or_default))
    floats = [np.asarray(a, dtype=np.float32) for a in arrays]
    attrs = make_attrs(op, values, _types(floats[:count]))
    return opdef.reference(attrs, *floats)


def _types(arrays: Sequence[np.ndarray]) -> list[TensorType]:
    return [TensorType("f32", np.shape(a)) for a in arrays]


def grid(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)[None, None]


def test_maxpool_padding_never_wins() -> None:
    x = grid([[-1, -2], [-3, -4]])
    y = reference("maxpool2d", x, kernel=2, stride=1, padding=1)
    # Every window holds padding; zero padding would give 0 everywhere.
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -2], [-1, -1, -2], [-3, -3, -4]])


def test_maxpool_stride_defaults_to_kernel() -> None:
    attrs = make_attrs("maxpool2d", {"kernel": (3, 2)}, [TensorType("f32", (1, 1, 9, 9))])
    assert attrs["stride"] == (3, 2)
    assert attrs["padding"] == (0, 0, 0, 0)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(reference("maxpool2d", x, kernel=2)[0, 0], [[5, 7], [13, 15]])


def test_avgpool_excludes_padding_when_asked() -> None:
    x = grid([[1, 2], [3, 4]])
    y = reference("avgpool2d", x, kernel=3, stride=1, padding=1, count_include_pad=False)
    # Each 3x3 window covers all four real elements: 10 / 4, not 10 / 9.
    np.testing.assert_allclose(y[0, 0], [[2.5, 2.5], [2.5, 2.5]], rtol=0, atol=1e-7)
    y = reference("avgpool2d", grid([[1, 2, 3], [4, 5, 6], [7, 8, 9]]), kernel=2, stride=2,
                  padding=1, count_include_pad=False)
    np.testing.assert_allclose(y[0, 0], [[1, 2.5], [5.5, 7]], rtol=0, atol=1e-7)


def test_avgpool_counts_padding_by_default() -> None:
    # Version 2 (PyTorch's default): every 3x3 window divides by 9.
    y = reference("avgpool2d", grid([[1, 2], [3, 4]]), kernel=3, stride=1, padding=1)
    np.testing.assert_allclose(y[0, 0], [[10 / 9, 10 / 9], [10 / 9, 10 / 9]], rtol=0,
                               atol=1e-7)


def test_same_padding_puts_the_extra_bottom_right() -> None:
    x_type = TensorType("f32", (1, 1, 2, 2))
    attrs = make_attrs("conv2d", {"filters": 1, "kernel": 2, "padding": "same"}, [x_type])
    assert attrs["padding"] == (0, 0, 1, 1)
    assert make_attrs("conv2d", {"filters": 1, "kernel": (3, 4), "dilation": (1, 2),
                                 "padding": "same"}, [x_type])["padding"] == (1, 3, 1, 3)
    y = reference("conv2d", grid([[1, 2], [3, 4]]), np.ones((1, 1, 2, 2)), filters=1,
                  kernel=2, padding="same", bias=False)
    # Padding top/left instead would give [[1, 3], [4, 10]].
    np.testing.assert_array_equal(y[0, 0], [[10, 6], [7, 4]])


def test_conv2d_groups_stride_dilation_by_hand() -> None:
    x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)
    weight = np.array([[[[1, -1]]], [[[2, 0]]]], dtype=np.float32)  # [2, 1, 1, 2]
    y = reference("conv2d", x, weight, np.array([0.5, -1], dtype=np.float32), filters=2,
                  kernel=(1, 2), stride=(2, 3), dilation=(1, 2), groups=2)
    # Channel 0: x0[r, c] - x0[r, c + 2] + 0.5; channel 1: 2 * x1[r, c] - 1; rows 0, 2, 4;
    # dilated, the kernel spans 3 columns, so with stride 3 only column 0 fits.
    assert y.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(y[0, 0, :, 0], [-2 + 0.5] * 3)
    np.testing.assert_array_equal(y[0, 1, :, 0], [2 * 25 - 1, 2 * 35 - 1, 2 * 45 - 1])


def test_gelu_is_the_erf_form() -> None:
    y = reference("gelu", np.array([1.0, -1.0, 0.5, -3.0]))
    # x * Phi(x); the tanh approximation gives 0.841192 at 1.
    np.testing.assert_allclose(y, [0.8413447460685429, -0.15865525393145707,
                                   0.34573123063700656, -0.004049694172446165], rtol=1e-7)


def test_leaky_relu_alpha() -> None:
    np.testing.assert_allclose(reference("leaky_relu", np.array([-2.0, 3.0]), alpha=0.1),
                               [-0.2, 3.0], rtol=1e-7)
    np.testing.assert_allclose(reference("leaky_relu", np.array([-2.0, 3.0])), [-0.02, 3.0],
                               rtol=1e-7)


def test_sigmoid_silu_tanh_by_hand() -> None:
    x = np.array([0.0, 2.0, -100.0, 100.0])
    sigmoid = [0.5, 1 / (1 + math.exp(-2)), 0.0, 1.0]
    np.testing.assert_allclose(reference("sigmoid", x), sigmoid, rtol=1e-7, atol=1e-30)
    np.testing.assert_allclose(reference("silu", x), x * np.array(sigmoid), rtol=1e-7, atol=1e-30)
    np.testing.assert_allclose(reference("tanh", x), np.tanh(x), rtol=1e-7)


def test_softmax_is_stable() -> None:
    np.testing.assert_allclose(reference("softmax", np.array([1000.0, 1001.0])),
                               [0.2689414213699951, 0.7310585786300049], rtol=1e-6)
    np.testing.assert_allclose(reference("log_softmax", np.array([1000.0, 1000.0])),
                               [-math.log(2)] * 2, rtol=1e-6)
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(reference("softmax", x, axis=0),
                               [[1 / (1 + math.e**2), 1 / (1 + math.e**3)],
                                [1 / (1 + math.e**-2), 1 / (1 + math.e**-3)]], rtol=1e-6)


def test_batchnorm_uses_running_statistics() -> None:
    x = np.array([[1.0, 2.0]])
    f = np.float32
    y = reference("batchnorm", x, np.array([1, 2], f), np.array([0, 1], f), np.array([0, 1], f),
                  np.array([4, 1], f), eps=0.0)
    np.testing.assert_array_equal(y, [[0.5, 3.0]])
    x4 = np.full((1, 2, 1, 1), 3.0)
    y4 = reference("batchnorm", x4, np.ones(2, f), np.zeros(2, f), np.array([1, 2], f),
                   np.array([1, 4], f), eps=0.0)
    np.testing.assert_array_equal(y4[0, :, 0, 0], [2.0, 0.5])


def test_layernorm_over_last_dim_with_biased_variance() -> None:
    y = reference("layernorm", np.array([[1.0, 2.0, 3.0]]), np.array([1.0, 2.0, 1.0]),
                  np.array([0.0, 0.0, 1.0]), eps=0.0)
    scale = 1 / math.sqrt(2 / 3)
    np.testing.assert_allclose(y, [[-scale, 0.0, scale + 1]], rtol=1e-6)


def test_layout_ops_by_hand() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(reference("flatten", x), x.reshape(2, 12))
    np.testing.assert_array_equal(reference("reshape", x, dims=(4, -1)), x.reshape(2, 4, 3))
    np.testing.assert_array_equal(reference("transpose", x, perm=(0, 2, 1)),
                                  x.transpose(0, 2, 1))
    np.testing.assert_array_equal(reference("concat", x, x[:, :1], axis=1)[:, 3], x[:, 0])
    np.testing.assert_array_equal(reference("dropout", x, p=0.9), x)


# Shape rules ------------------------------------------------------------------------------


def t(*shape: int | str, dtype: str = "f32") -> TensorType:
    return TensorType(dtype, tuple(shape))


def infer(op: str, *inputs: TensorType, **values: Any) -> TensorType:
    return REGISTRY[op].infer(make_attrs(op, values, inputs), list(inputs))


@pytest.mark.parametrize(("op", "inputs", "values", "expected"), [
    ("dense", [t("N", 3, 400)], {"units": 10}, t("N", 3, 10)),
    ("conv2d", [t("N", 3, 224, 224)], {"filters": 64, "kernel": 7, "stride": 2, "padding": 3},
     t("N", 64, 112, 112)),
    ("conv2d", [t(1, 4, 7, 8)], {"filters": 6, "kernel": (2, 3), "padding": "same",
                                  "groups": 2}, t(1, 6, 7, 8)),
    ("maxpool2d", [t("N", 64, 112, 112)], {"kernel": 3, "stride": 2, "padding": 1},
     t("N", 64, 56, 56)),
    ("avgpool2d", [t(2, 3, 7, 7)], {"kernel": 2}, t(2, 3, 3, 3)),
    ("global_avgpool", [t("N", 512, 7, 7)], {}, t("N", 512, 1, 1)),
    ("flatten", [t("N", 16, 5, 5)], {}, t("N", 400)),
    ("reshape", [t("N", 1024)], {"dims": [16, -1]}, t("N", 16, 64)),
    ("transpose", [t("N", 16, 4, 8)], {"perm": [0, 2, 1, 3]}, t("N", 4, 16, 8)),
    ("concat", [t("N", 2, 5), t("N", 3, 5), t("N", 1, 5)], {}, t("N", 6, 5)),
    ("concat", [t(2, 5), t(3, 5)], {"axis": 0}, t(5, 5)),
    ("matmul", [t("N", 4, 16, 8), t("N", 4, 8, 16)], {}, t("N", 4, 16, 16)),
    ("matmul", [t("N", 8), t(8, 3)], {}, t("N", 3)),
    ("matmul", [t(5), t("N", 5, 2)], {}, t("N", 2)),
    ("matmul", [t(2, 1, 3, 4), t(5, 4, 6)], {}, t(2, 5, 3, 6)),
    ("add", [t("N", 3, 4), t()], {}, t("N", 3, 4)),
    ("mul", [t("N", 1, 4), t(3, 1)], {}, t("N", 3, 4)),
    ("sub", [t(1, 4), t("N", 1, 1)], {}, t("N", 1, 4)),
    ("add", [t("N", 3), t(2, 1, 3)], {}, t(2, "N", 3)),  # v2: a named dimension anywhere
    ("matmul", [t("N", 4), t(3, 4, 5)], {}, t(3, "N", 5)),
    ("layernorm", [t("N", 16, 64)], {}, t("N", 16, 64)),
    ("batchnorm", [t("N", 8)], {}, t("N", 8)),
    ("softmax", [t("N", 10, dtype="f16")], {"axis": 0}, t("N", 10, dtype="f16")),
    ("gelu", [t("N", 7, dtype="bf16")], {}, t("N", 7, dtype="bf16")),
])
def test_shape_rule(op: str, inputs: list[TensorType], values: dict[str, Any],
                    expected: TensorType) -> None:
    assert infer(op, *inputs, **values) == expected


@pytest.mark.parametrize(("op", "inputs", "values", "shown"), [
    ("add", [t("N", 3), t(5, 3)], {}, ["[N, 3]", "[5, 3]", "named dimension N"]),
    ("mul", [t(2, 3), t(4, 3)], {}, ["[2, 3]", "[4, 3]"]),
    ("sub", [t(3), t(3, dtype="f16")], {}, ["f32[3]", "f16[3]"]),
    ("matmul", [t("N", 4, 5), t(6, 7)], {}, ["[N, 4, 5]", "[6, 7]"]),
    ("concat", [t("N", 2), t("N", 3)], {"axis": 0}, ["[N, 2]", "[N, 3]", "named"]),
    ("concat", [t("N", 2, 4), t("N", 3, 5)], {}, ["[N, 2, 4]", "[N, 3, 5]"]),
    ("concat", [t("N", 2, 4), t("N", 3)], {}, ["[N, 2, 4]", "[N, 3]"]),
    ("concat", [t("N", 2, 4), t("N", 2, 4)], {"axis": 3}, ["[N, 2, 4]", "axis 3"]),
    ("conv2d", [t("N", 3, 4, 4)], {"filters": 8, "kernel": 5}, ["[N, 3, 4, 4]", "[5, 5]"]),
    ("conv2d", [t("N", 3, 8, 8)], {"filters": 8, "kernel": 3, "stride": 2, "padding": "same"},
     ["same", "[2, 2]"]),
    ("conv2d", [t("N", 6, 8, 8)], {"filters": 8, "kernel": 3, "groups": 4},
     ["[N, 6, 8, 8]", "groups=4"]),
    ("conv2d", [t("N", 8, 8)], {"filters": 8, "kernel": 3}, ["[N, 8, 8]", "rank 4"]),
    ("maxpool2d", [t("N", 3, 8, 8)], {"kernel": 2, "padding": 2},
     ["[2, 2, 2, 2]", "[2, 2]"]),
    ("avgpool2d", [t(1, 3, 2, 2)], {"kernel": 3}, ["[1, 3, 2, 2]", "[3, 3]"]),
    ("global_avgpool", [t("N", 3, 8)], {}, ["[N, 3, 8]"]),
    ("dense", [t("N")], {"units": 4}, ["[N]"]),
    ("batchnorm", [t("N")], {}, ["[N]"]),
    ("layernorm", [t("N")], {}, ["[N]"]),
    ("flatten", [t("N")], {}, ["[N]"]),
    ("reshape", [t("N", 10)], {"dims": [3, -1]}, ["[N, 10]", "[N, 3, -1]"]),
    ("reshape", [t("N", 10)], {"dims": [4, 2]}, ["[N, 10]", "[N, 4, 2]"]),
    ("reshape", [t("N", 12)], {"dims": [-1, -1]}, ["[N, 12]", "-1"]),
    ("transpose", [t("N", 2, 3)], {"perm": [0, 2, 2]}, ["[N, 2, 3]", "[0, 2, 2]"]),
    ("transpose", [t("N", 2, 3)], {"perm": [0, 1]}, ["[N, 2, 3]", "[0, 1]"]),
    ("softmax", [t("N", 4)], {"axis": 2}, ["[N, 4]", "axis 2"]),
    ("dropout", [t("N", 4)], {"p": 1.5}, ["1.5"]),
])
def test_shape_error_shows_the_shapes(op: str, inputs: list[TensorType], values: dict[str, Any],
                                      shown: list[str]) -> None:
    with pytest.raises(ShapeError) as caught:
        infer(op, *inputs, **values)
    for text in shown:
        assert text in str(caught.value), f"{text!r} missing from: {caught.value}"


def test_normalized_attributes_are_canonical_and_stable() -> None:
    x = t("N", 3, 32, 32)
    attrs = make_attrs("conv2d", {"filters": 4, "kernel": 3, "padding": [1, 2]}, [x])
    assert (attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["padding"]) == (
        (3, 3), (1, 1), (1, 1), (1, 2, 1, 2))
    assert make_attrs("conv2d", attrs, [x]) == attrs
    assert make_attrs("softmax", {}, [x])["axis"] == 3
    assert make_attrs("concat", {"axis": -2}, [x, x])["axis"] == 2
    with pytest.raises(ValueError, match="at least 1"):
        make_attrs("conv2d", {"filters": 0, "kernel": 3}, [x])


def test_attribute_schemas() -> None:
    from netc.ops.registry import ATTR_KINDS

    kinds = {"elementwise", "gemm", "conv", "pool", "reduction", "normalization", "view",
             "layout"}
    for opdef in (REGISTRY[op] for op in V1_OPS):
        assert opdef.kind in kinds, opdef.name
        assert opdef.summary, opdef.name
        for spec in opdef.attrs:
            assert spec.kind in ATTR_KINDS, (opdef.name, spec.name)
            if spec.kind in ("int_pair", "padding") or spec.name in ("units", "filters",
                                                                      "groups"):
                assert spec.minimum is not None, (opdef.name, spec.name)
    assert REGISTRY["concat"].max_inputs is None and REGISTRY["concat"].min_inputs == 2
    assert REGISTRY["reshape"].kind == "view"


# Parameters and FLOPs ---------------------------------------------------------------------


def test_param_init_matches_pytorch() -> None:
    builder = GraphBuilder()
    x = builder.input("x", "f32", ("N", 6, 33, 33))
    conv = builder.op("conv2d", x, filters=129, kernel=(3, 5), groups=3, name="conv")
    normed = builder.op("batchnorm", conv, name="bn")
    flat = builder.op("flatten", builder.op("global_avgpool", normed))
    builder.output("y", builder.op("layernorm", builder.op("dense", flat, units=31), name="ln"))
    weights = init_weights(builder.build(), seed=4)
    bound = 1 / math.sqrt(6 // 3 * 3 * 5)
    assert weights["conv.weight"].shape == (129, 2, 3, 5)
    assert weights["conv.bias"].shape == (129,)
    for name in ("conv.weight", "conv.bias"):
        values = weights[name]
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound, "draws should fill the range"
    # U(-b, b) has standard deviation b / sqrt(3); 3870 draws pin it to a few percent.
    assert abs(weights["conv.weight"].std() / (bound / math.sqrt(3)) - 1) < 0.1
    assert abs(weights["conv.weight"].mean()) < 0.05 * bound
    for name, value in (("bn.weight", 1), ("bn.bias", 0), ("bn.running_mean", 0),
                        ("bn.running_var", 1), ("ln.weight", 1), ("ln.bias", 0)):
        np.testing.assert_array_equal(weights[name], np.full(weights[name].shape, value))
    assert weights["bn.running_var"].shape == (129,) and weights["ln.bias"].shape == (31,)
    assert weights["dense_0.weight"].shape == (31, 129)


@pytest.mark.parametrize(("op", "values", "shapes", "expected"), [
    ("conv2d", {"filters": 8, "kernel": 3, "groups": 2}, [(1, 4, 10, 10)],
     2 * 8 * 8 * 8 * (2 * 9) + 8 * 8 * 8),
    ("dense", {"units": 5, "bias": False}, [(2, 7)], 2 * 2 * 5 * 7),
    ("matmul", {}, [(3, 4, 6), (6, 2)], 2 * 3 * 4 * 2 * 6),
    ("maxpool2d", {"kernel": 2}, [(1, 2, 4, 4)], 2 * 2 * 2 * 4),
    ("add", {}, [(3, 1), (1, 5)], 15),
    ("flatten", {}, [(2, 3, 4)], 0),
])
def test_flops(op: str, values: dict[str, Any], shapes: list[Shape], expected: int) -> None:
    types = [TensorType("f32", shape) for shape in shapes]
    attrs = make_attrs(op, values, types)
    output = REGISTRY[op].infer(attrs, types)
    assert REGISTRY[op].flops(attrs, shapes, output.concrete({})) == expected
