"""The float pointwise ops of language version 2, compiled to CUDA and run by the simulator.

Each op (with several attribute sets) alone and in fused groups, at -O0 (one kernel per op)
and -O2 (elementwise groups, conv and dense epilogues), on ragged sizes, outputs poisoned
before the run, against the reference interpreter: the same NaNs and infinities, position by
position (inputs carry NaN, ±inf, the kinks 0 and ±3 and huge values), finite values within
the dtype's tolerance. f16 for a selection of ops.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import netc
import netc.cli
from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph
from netc.passes import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import simulator
from tests.sim.test_nan_inf import assert_same_special_values

pytestmark = pytest.mark.sim

NAN, INF = np.float32(np.nan), np.float32(np.inf)

CALLS = [
    "relu6(x)", "hardtanh(x)", "hardtanh(x, -0.5, 2.0)", "clamp(x, min=0.25)",
    "clamp(x, max=-0.25)", "clamp(x, 2.0, 1.0)", "hardswish(x)", "hardsigmoid(x)", "elu(x)",
    "elu(x, alpha=0.3)", "softplus(x)", "softplus(x, beta=2.0, threshold=3.0)",
    "softplus(x, beta=-1.0, threshold=0.0)", "mish(x)", "exp(x)", "log(x)", "sqrt(x)",
    "rsqrt(x)", "abs(x)", "erf(x)", "sin(x)", "cos(x)", "pow(x, 2)", "pow(x, 3)",
    "pow(x, 0.5)", "pow(x, -0.5)", "pow(x, -1)", "pow(x, 1.5)", "neg(x)", "gelu(x)",
    'gelu(x, approximate="tanh")', "div(x, z)", "maximum(x, z)", "minimum(x, z)",
    "div(x, w)", "maximum(w, x)", "minimum(x, w)",
]
"""Each a `.net` expression of x, z: DTYPE[N, W] and w: DTYPE[W] (broadcast)."""

CHAINS = [
    "hardswish(x) * 0.5 + clamp(z, min=-1.0)",
    "div(exp(x), 1.0 + exp(z))",
    "maximum(relu6(x), hardsigmoid(z)) - minimum(x, neg(z))",
    "pow(abs(x) + 1.0, 1.5) |> log |> sqrt",
    "mish(x) * sin(z) + cos(x) * erf(z)",
    'gelu(softplus(x, beta=0.5), approximate="tanh") |> rsqrt',
]
"""Several ops in one expression: one fused kernel at -O2."""

F16_CALLS = ["relu6(x)", "clamp(x, min=0.25)", "hardswish(x)", "softplus(x)", "mish(x)",
             "exp(x)", "pow(x, 3)", 'gelu(x, approximate="tanh")', "div(x, z)", "maximum(x, z)"]


def _name(expression: str) -> str:
    return "o_" + re.sub(r"[^a-z0-9]+", "_", expression.lower()).strip("_")[:50]


def source(dtype: str, width: int, expressions: list[str]) -> str:
    outputs = "\n".join(f"    output {_name(e)}_{k} = {e}" for k, e in enumerate(expressions))
    return (f"network pointwise_v2 {{\n    input x: {dtype}[N, {width}]\n"
            f"    input z: {dtype}[N, {width}]\n    input w: {dtype}[{width}]\n{outputs}\n}}\n")


def special_inputs(width: int, batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values of magnitude up to ~10 with the kinks and special values mixed in."""
    rng = np.random.default_rng(seed)
    points = np.array([NAN, INF, -INF, 0.0, -0.0, 3.0, -3.0, 6.0, 0.25, 1.5, 20.0, 3.4e38,
                       -3.4e38, 1e-30], dtype=np.float32)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        x = (rng.standard_normal(shape) * rng.choice([0.5, 3.0, 10.0], size=shape))
        chosen = rng.random(shape) < 0.3
        return np.where(chosen, points[rng.integers(0, len(points), size=shape)],
                        x).astype(np.float32)

    return {"x": draw((batch, width)), "z": draw((batch, width)), "w": draw((width,))}


def run_cudasim(graph: Graph, inputs: dict[str, np.ndarray], level: int) -> dict[str, np.ndarray]:
    """`graph` optimised at `level`, generated and run once with poisoned outputs."""
    optimised = run_pipeline(graph, level=level).graph if level else graph
    return run_plan(generate(optimised), simulator(), {}, inputs, poison=True)


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The simulator's builds go into this module's temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETC_CACHE_DIR", str(tmp_path_factory.mktemp("pointwise-v2-cache")))
        yield


TOLERANCE = {"f32": (1e-5, 1e-6), "f16": (5e-3, 5e-3)}
"""f32: the simulator's libm (expf, erff, sinf, powf, ...) against NumPy's, a few ulps; f16:
a rounding step of the output, where the reference and the kernel may round a value just
beside a tie differently."""


def _check(dtype: str, width: int, expressions: list[str], level: int, seed: int = 0) -> None:
    model = netc.loads(source(dtype, width, expressions))
    inputs = special_inputs(width, seed=seed)
    expected = run_reference(model.graph, {}, inputs)
    actual = run_cudasim(model.graph, inputs, level)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert_same_special_values(f"{name} ({dtype}, width {width}, -O{level})",
                                   actual[name], value, *TOLERANCE[dtype])


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("width", [1, 33, 129])
def test_each_op_alone(width: int, level: int) -> None:
    _check("f32", width, CALLS, level, seed=width)


@pytest.mark.parametrize("level", [0, 2])
def test_chains_fuse_into_one_kernel(level: int) -> None:
    _check("f32", 31, CHAINS, level)
    graph = run_pipeline(netc.loads(source("f32", 31, CHAINS[:1])).graph, level=2).graph
    assert [n.op for n in graph.compute_nodes] == ["fused"]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 3.4e38 is inf in f16
@pytest.mark.parametrize("level", [0, 2])
def test_f16(level: int) -> None:
    _check("f16", 127, F16_CALLS, level)


EPILOGUES = """network epilogues {
    input x: f32[N, 3, 9, 7]
    input v: f32[N, 33]
    output conv_hardswish = conv2d(x, 4, 3, padding=1) |> hardswish
    output conv_clamp = conv2d(x, 5, 3) |> clamp(min=-0.5, max=0.75) |> softplus(beta=3.0)
    output conv_relu6_mish = conv2d(x, 4, [1, 3], padding=[0, 1]) |> relu6 |> mish
    output dense_gelu = dense(v, 31) |> gelu(approximate="tanh") |> pow(2)
    output dense_extremes = maximum(dense(v, 31), dense(v, 31)) |> hardsigmoid
    output dense_elu_rsqrt = dense(v, 127) |> elu(alpha=0.5) |> abs |> rsqrt
}"""


def test_fused_into_conv_and_dense_epilogues() -> None:
    model = netc.loads(EPILOGUES)
    graph = run_pipeline(model.graph, level=2).graph
    kinds = {n.region.kind for n in graph.compute_nodes if n.op == "fused" and n.region}
    assert {"conv_epilogue", "gemm_epilogue"} <= kinds
    fused_ops = {m.op for n in graph.compute_nodes if n.op == "fused" for m in n.members}
    assert {"hardswish", "clamp", "softplus", "relu6", "mish", "gelu", "pow", "elu", "abs",
            "rsqrt"} <= fused_ops
    weights = model.init_weights(seed=3)
    rng = np.random.default_rng(4)
    inputs = {"x": (rng.standard_normal((2, 3, 9, 7)) * 3).astype(np.float32),
              "v": (rng.standard_normal((2, 33)) * 3).astype(np.float32)}
    inputs["x"][0, 0, 0, :3] = [NAN, INF, -INF]
    inputs["v"][1, :2] = [INF, -INF]
    expected = run_reference(model.graph, weights, inputs)
    for level in (0, 2):
        optimised = run_pipeline(model.graph, level=level).graph if level else model.graph
        actual = run_plan(generate(optimised), simulator(), weights, inputs, poison=True)
        for name, value in expected.items():
            # Sums in another order: the dense and conv tolerance, as the other sim tests.
            assert_same_special_values(f"{name} at -O{level}", actual[name], value, 1e-4, 1e-4)


def test_maximum_and_clamp_keep_nan_in_the_generated_code() -> None:
    # fmaxf / fminf drop a NaN; the generated code must not use them for these ops.
    model = netc.loads(source("f32", 4, ["maximum(x, z)", "minimum(x, z)", "clamp(x, min=0.0)",
                                         "relu6(x)", "hardtanh(x)"]))
    code = generate(model.graph).source
    kernels = code[code.index("netc_clamp(float"):]  # after common.cuh's own definitions
    assert "fmaxf" not in kernels and "fminf" not in kernels
    assert "netc_max(" in kernels and "netc_min(" in kernels and "netc_clamp(" in kernels


CLI_PROGRAM = """network v2 {
    input x: f32[N, 8]
    output y = clamp(x, min=0.5) |> softplus(beta=2.0) |> hardswish
    output z = div(maximum(x, x |> neg), pow(x |> abs, 1.5) + 1.0)
    output g = gelu(x, approximate="tanh") |> mish |> hardsigmoid
    output h = elu(x) * relu6(x * 4.0) - hardtanh(x, -0.5, 0.5) + exp(sin(x)) * cos(x)
    output k = minimum(log(abs(x) + 0.5), sqrt(abs(x)) |> erf) + rsqrt(abs(x) + 1.0)
}"""


def test_the_cli_runs_a_program_on_every_backend(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v2.net"
    path.write_text(CLI_PROGRAM)
    status = netc.cli.main(["compare", str(path), "--backends", "reference,onnx,cudasim",
                            "--random-input", "--batch", "3"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "all backends that ran agree" in printed
    assert printed.count(" agree") >= 10  # 5 outputs on each of onnx and cudasim
