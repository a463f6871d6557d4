"""NaN and infinity go through every op as NumPy's reference (and PyTorch) say, on every backend.

relu(NaN) = NaN, a max-pool window holding a NaN is NaN, a softmax row holding a NaN or a
+inf (or made only of -inf) is a NaN row, -inf in a softmax row (an attention mask) counts as
exp(-inf) = 0, and so on: each op's NumPy reference is the definition (issue 9). Inputs
carry NaN, +inf and -inf in rows of their own and mixed; every output of every op is compared
position by position: the same NaNs, the same infinities, the finite values close.

Also: f16 and bf16 networks round and overflow as the reference does, after every op and for
every constant (`v * 70000.0` is inf in f16 on every backend), fused or not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest

import netc

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The simulator's builds go into this module's temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETC_CACHE_DIR", str(tmp_path_factory.mktemp("nan-inf-cache")))
        yield

ROWS = netc.loads("""network rows {
    input x: f32[N, 12]
    input m: f32[12, 5]
    output relu_ = relu(x)
    output sigmoid_ = sigmoid(x)
    output tanh_ = tanh(x)
    output gelu_ = gelu(x)
    output silu_ = silu(x)
    output leaky = leaky_relu(x, alpha=0.1)
    output soft = softmax(x)
    output log_soft = log_softmax(x)
    output norm = layernorm(x)
    output sum_ = x + x
    output difference = x - 1.5
    output product = x * 2.0
    output chain = relu(x * 2.0 - 1.0) + x
    output dense_ = dense(x, 5)
    output matmul_ = matmul(x, m)
    output dropped = dropout(x, p=0.5)
}""")

IMAGES = netc.loads("""network images {
    input x: f32[N, 2, 6, 6]
    output max_ = maxpool2d(x, 2)
    output max_padded = maxpool2d(x, 3, stride=1, padding=1)
    output average = avgpool2d(x, 2)
    output global_ = global_avgpool(x)
    output conv = conv2d(x, 3, 3, padding=1)
    output norm = batchnorm(x)
    output joined = concat(x, x, axis=1)
    output turned = transpose(x, perm=[0, 1, 3, 2])
    output flat = flatten(x) |> relu
    output pooled_relu = maxpool2d(relu(x), 2)
}""")

NAN, INF = np.float32(np.nan), np.float32(np.inf)


def _rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    x[0, 3] = NAN                              # a NaN among numbers
    x[1, 7] = INF                              # +inf among numbers
    x[2, 0] = -INF                             # -inf among numbers (a masked position)
    x[2, 11] = -INF
    x[3, :] = -INF                             # nothing but -inf
    x[4, 2], x[4, 9] = INF, -INF               # both infinities
    x[5, :] = NAN                              # nothing but NaN
    x[6, 0:6] = -INF                           # a half-masked row
    m = rng.standard_normal((12, 5)).astype(np.float32)
    return {"x": x, "m": m}


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 1] = NAN      # in the first pooling window
    x[0, 0, 3, 3] = INF
    x[0, 1, 2, 2] = -INF
    x[1, 0, 5, 5] = NAN      # in the last window, at its last element
    x[1, 1, :, :] = -INF     # a whole channel of -inf
    return {"x": x}


@cache
def _weights(network: str) -> dict[str, np.ndarray]:
    model = {"rows": ROWS, "images": IMAGES}[network]
    return model.init_weights(seed=1)


def _run(network: str, backend: str, **options: object) -> dict[str, np.ndarray]:
    model = {"rows": ROWS, "images": IMAGES}[network]
    inputs = _rows() if network == "rows" else _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference must not warn about NaN or inf either
        return model.run(inputs, _weights(network), backend=backend, **options)


def assert_same_special_values(name: str, actual: np.ndarray, expected: np.ndarray,
                               rtol: float = 1e-4, atol: float = 1e-4) -> None:
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    problems = []
    for what, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        differ = mask(actual) != mask(expected)
        if differ.any():
            where = tuple(int(i) for i in np.argwhere(differ)[0])
            problems.append(f"{int(differ.sum())} elements differ in being {what}, first at "
                            f"{where}: got {actual[where]}, expected {expected[where]}")
    finite = np.isfinite(actual) & np.isfinite(expected)
    bad = finite & ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        problems.append(f"{int(bad.sum())} finite elements differ; largest difference "
                        f"{np.abs(actual - expected)[bad].max():.3g}")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("network", ["rows", "images"])
@pytest.mark.parametrize("level", [0, 2])
def test_cudasim_propagates_nan_and_infinity_like_the_reference(network: str,
                                                                level: int) -> None:
    expected = _run(network, "reference")
    actual = _run(network, "cudasim", level=level)
    for name, value in expected.items():
        assert_same_special_values(f"{network}.{name} at -O{level}", actual[name], value)


def test_the_reference_is_pytorch_semantics() -> None:
    # The cases people get wrong, spelled out (the values PyTorch gives).
    out = _run("rows", "reference")
    assert np.isnan(out["relu_"][0, 3]) and np.isnan(out["leaky"][0, 3])
    assert np.isnan(out["soft"][0]).all() and np.isnan(out["soft"][1]).all()
    assert np.isnan(out["soft"][3]).all() and np.isnan(out["log_soft"][4]).all()
    assert out["soft"][2, 0] == 0 and np.isfinite(out["soft"][2, 1:11]).all()
    assert np.isclose(out["soft"][6].sum(), 1) and out["log_soft"][6, 0] == -np.inf
    images = _run("images", "reference")
    assert np.isnan(images["max_"][0, 0, 0, 0]) and np.isnan(images["max_"][1, 0, 2, 2])
    assert images["max_"][0, 0, 1, 1] == np.inf and (images["max_"][1, 1] == -np.inf).all()


# Where onnxruntime (1.x, CPU execution provider) differs from NumPy and PyTorch; documented in
# docs/simulator.md. Everything else agrees, NaN through Relu included.
ONNX_DIFFERS = {
    ("images", "max_"): "MaxPool drops a NaN when another element of the window is larger",
    ("images", "max_padded"): "MaxPool drops NaN, and a window of -inf and padding gives "
                              "-FLT_MAX (its padding value), not -inf",
    ("images", "pooled_relu"): "MaxPool drops a NaN when another element of the window is larger",
}


@pytest.mark.parametrize("network", ["rows", "images"])
def test_onnxruntime_agrees_except_where_documented(network: str) -> None:
    pytest.importorskip("onnxruntime")
    expected = _run(network, "reference")
    actual = _run(network, "onnx")
    differed = set()
    for name, value in expected.items():
        try:
            assert_same_special_values(f"{network}.{name}", actual[name], value)
        except AssertionError:
            if (network, name) not in ONNX_DIFFERS:
                raise
            differed.add((network, name))
    assert differed == {key for key in ONNX_DIFFERS if key[0] == network}, \
        "onnxruntime agrees now where it did not: update ONNX_DIFFERS and docs/simulator.md"


F16 = """network narrow {
    input v: DTYPE[N, 6]
    output scaled = v * 70000.0
    output overflow_inside = (v * 300.0) * 300.0 * 0.001
    output small = v * 0.0001 * 0.0001 * 10000.0
    output shifted = relu(v + 0.1) - 0.1
    output soft = softmax(v * 3000.0)
}"""


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("level", [0, 2])
def test_narrow_dtypes_round_and_overflow_like_the_reference(dtype: str, level: int) -> None:
    model = netc.loads(F16.replace("DTYPE", dtype))
    v = np.array([[0.5, 1.0, -1.0, 0.001, 3.0, 100.0], [-0.25, 7.0, 0.3, -5.0, 2.0, 1e4]],
                 dtype=np.float32)
    weights = model.init_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = model.run({"v": v}, weights, backend="reference")
    actual = model.run({"v": v}, weights, backend="cudasim", level=level)
    for name, value in expected.items():
        # Bit for bit: both round every op's result and every constant to the dtype.
        assert_same_special_values(f"{dtype}.{name} at -O{level}", actual[name], value,
                                   rtol=0, atol=0)
    if dtype == "f16":
        assert np.isposinf(expected["scaled"][0, 0])
