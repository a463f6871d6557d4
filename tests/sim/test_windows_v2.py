"""Version 2's window and resampling kernels on the simulator against the reference: pools
with ceil_mode and count_include_pad, adaptive_avgpool2d, pad and interpolate (outputs
poisoned before each run by `check_graph`), in every block tile and in 16-bit storage, with
NaN and infinity propagated as the reference (PyTorch) does."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph
from netc.passes.pipeline import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder, parallel, random_weights
from tests.sim.variants import BLOCK_TILES, CONV_TILES, LOW_PRECISION

pytestmark = pytest.mark.sim

RAGGED = st.sampled_from((1, 2, 7, 31, 33))


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Any]:
    """A pool with ceil_mode (often dropping the last window) and count_include_pad drawn."""
    op = draw(st.sampled_from(("maxpool2d", "avgpool2d")))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = max(1, kernel[0] - 2 * padding[0] + draw(st.integers(0, 9)))
    width = max(1, kernel[1] - 2 * padding[1] + draw(st.integers(0, 9)))
    attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding,
                             "ceil_mode": draw(st.booleans())}
    if op == "avgpool2d":
        attrs["count_include_pad"] = draw(st.booleans())
    return {"op": op, "shape": ("N", draw(st.sampled_from((1, 3))), height, width),
            "attrs": attrs, "batch": draw(st.sampled_from((1, 2, 3)))}


@given(pool=pools(), seed=seeds())
# The last window starts in the bottom padding (5 + 1 = 6 = 2 * 3): dropped.
@example(pool={"op": "avgpool2d", "shape": ("N", 2, 5, 6), "batch": 2,
               "attrs": {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True,
                         "count_include_pad": True}}, seed=0)
# A ceil-mode window past the padded input: the divisor stops at the padding.
@example(pool={"op": "avgpool2d", "shape": ("N", 1, 6, 7), "batch": 1,
               "attrs": {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                         "count_include_pad": True}}, seed=1)
@example(pool={"op": "maxpool2d", "shape": ("N", 2, 7, 8), "batch": 2,
               "attrs": {"kernel": 2, "stride": 2, "padding": 0, "ceil_mode": True}}, seed=2)
def test_pools_v2_match_reference_for_every_block(pool: dict[str, Any], seed: int) -> None:
    graph, tiles = parallel(pool["op"], {"x": ("f32", pool["shape"])}, BLOCK_TILES,
                            **pool["attrs"])
    check_graph(graph, tiles, batch=pool["batch"], seed=seed, same_outputs=True)


@given(height=RAGGED, width=RAGGED, out_h=st.integers(1, 9), out_w=st.integers(1, 9),
       batch=st.sampled_from((1, 2)), seed=seeds())
@example(height=7, width=33, out_h=3, out_w=5, batch=2, seed=0)  # overlapping windows
@example(height=2, width=1, out_h=5, out_w=3, batch=1, seed=0)  # more outputs than inputs
def test_adaptive_avgpool_matches_reference(height: int, width: int, out_h: int, out_w: int,
                                            batch: int, seed: int) -> None:
    graph, tiles = parallel("adaptive_avgpool2d", {"x": ("f32", ("N", 3, height, width))},
                            BLOCK_TILES, output_size=(out_h, out_w))
    check_graph(graph, tiles, batch=batch, seed=seed, same_outputs=True)


@st.composite
def pads(draw: st.DrawFn) -> dict[str, Any]:
    """A 4-D input and F.pad pads over its last 1 to 3 dims (never the batch)."""
    shape = ("N", draw(st.integers(1, 3)), draw(RAGGED), draw(RAGGED))
    mode = draw(st.sampled_from(("constant", "reflect", "replicate")))
    pairs = draw(st.integers(1, 3))
    values = []
    for axis in range(3, 3 - pairs, -1):
        size = shape[axis]
        assert isinstance(size, int)
        if mode == "reflect":
            pair = [draw(st.integers(0, min(size - 1, 4))) for _ in range(2)]
        elif mode == "constant":  # a negative pad crops, leaving at least one element
            before = draw(st.integers(-(size - 1), 4))
            pair = [before, draw(st.integers(-(size - 1 + min(before, 0)), 4))]
        else:
            pair = [draw(st.integers(0, 4)) for _ in range(2)]
        values += pair
    return {"shape": shape, "batch": draw(st.sampled_from((1, 2))),
            "attrs": {"pads": tuple(values), "mode": mode, "value": draw(st.sampled_from(
                (0.0, -1.5, 7.0)))}}


@given(case=pads(), seed=seeds())
@example(case={"shape": ("N", 2, 5, 6), "batch": 2,
               "attrs": {"pads": (2, 1, 4, 3), "mode": "reflect", "value": 0.0}}, seed=0)
@example(case={"shape": ("N", 2, 5, 6), "batch": 1,
               "attrs": {"pads": (-2, 3, 1, -4, 1, 0), "mode": "constant", "value": 2.5}},
         seed=0)
def test_pad_matches_reference(case: dict[str, Any], seed: int) -> None:
    graph, tiles = parallel("pad", {"x": ("f32", case["shape"])}, BLOCK_TILES, **case["attrs"])
    check_graph(graph, tiles, batch=case["batch"], seed=seed, same_outputs=True)


def test_pad_of_every_dim_of_a_fixed_shape() -> None:
    graph, tiles = parallel("pad", {"x": ("f32", (3, 4, 5, 2))}, BLOCK_TILES,
                            pads=(1, 0, 0, 2, 1, 1, 2, 0), mode="replicate")
    check_graph(graph, tiles, same_outputs=True)


@st.composite
def resizes(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(("nearest", "bilinear")))
    height, width = draw(RAGGED), draw(RAGGED)
    attrs: dict[str, Any] = {"mode": mode,
                             "align_corners": mode == "bilinear" and draw(st.booleans())}
    if draw(st.booleans()):
        attrs["size"] = (draw(st.sampled_from((1, height, 2 * height, 5, 33))),
                         draw(st.sampled_from((1, width, 2 * width, 3, 31))))
    else:
        smallest = 1 / min(height, width)
        attrs["scale_factor"] = draw(st.sampled_from((2.0, 0.5, 1.5, 3.0, 0.7, 1.01)).filter(
            lambda scale: scale >= smallest))
    return {"shape": ("N", draw(st.integers(1, 3)), height, width), "attrs": attrs,
            "batch": draw(st.sampled_from((1, 2)))}


@given(case=resizes(), seed=seeds())
@example(case={"shape": ("N", 2, 5, 7), "batch": 2,
               "attrs": {"mode": "bilinear", "align_corners": False, "scale_factor": 1.5}},
         seed=0)
@example(case={"shape": ("N", 2, 5, 7), "batch": 1,
               "attrs": {"mode": "nearest", "align_corners": False, "size": (12, 3)}}, seed=0)
def test_interpolate_matches_reference(case: dict[str, Any], seed: int) -> None:
    graph, tiles = parallel("interpolate", {"x": ("f32", case["shape"])}, BLOCK_TILES,
                            **case["attrs"])
    check_graph(graph, tiles, batch=case["batch"], seed=seed, same_outputs=True)


LOW_PRECISION_CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("avgpool2d", ("N", 2, 7, 6), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("adaptive_avgpool2d", ("N", 2, 7, 6), {"output_size": (3, 4)}),
    ("pad", ("N", 2, 7, 6), {"pads": (1, 2, 3, 0), "mode": "reflect"}),
    ("interpolate", ("N", 2, 7, 6), {"size": (9, 4), "mode": "bilinear"}),
    ("interpolate", ("N", 2, 7, 6), {"scale_factor": 1.5}),
    ("conv1d", ("N", 4, 33), {"filters": 6, "kernel": 3, "padding": 1, "groups": 2}),
    ("conv_transpose2d", ("N", 4, 5, 3), {"filters": 6, "kernel": 3, "stride": 2,
                                          "padding": 1, "output_padding": 1, "groups": 2}),
]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("op, shape, attrs", LOW_PRECISION_CASES,
                         ids=[op for op, *_ in LOW_PRECISION_CASES])
def test_low_precision_windows_v2(dtype: str, op: str, shape: tuple[Any, ...],
                                  attrs: dict[str, Any]) -> None:
    # The default tile of each family (the catalog's 16-bit variants).
    graph, tiles = parallel(op, {"x": (dtype, shape)}, (None,), **attrs)
    plan = check_graph(graph, tiles, batch=3, shared_weights=True)
    assert all(f"_{dtype}_" in kernel for kernel in plan.kernels)


def _nan_graph(op: str, **attrs: Any) -> Graph:
    builder = GraphBuilder("nan")
    x = builder.input("x", "f32", ("N", 2, 6, 7))
    builder.output("y", builder.op(op, x, **attrs))
    return builder.build()


@pytest.mark.parametrize("op, attrs", [
    ("maxpool2d", {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avgpool2d", {"kernel": 2, "ceil_mode": True, "count_include_pad": False}),
    ("adaptive_avgpool2d", {"output_size": (4, 3)}),
    ("pad", {"pads": (2, 2, 1, 3), "mode": "reflect"}),
    ("interpolate", {"scale_factor": 1.7, "mode": "bilinear"}),
    ("interpolate", {"size": (5, 9), "mode": "nearest"}),
])
def test_nan_and_infinity_propagate_as_the_reference(op: str, attrs: dict[str, Any]) -> None:
    graph = _nan_graph(op, **attrs)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
    x[0, 0, 0, 1] = np.nan
    x[0, 1, 3, 3] = np.inf
    x[1, 0, 5, 6] = np.nan   # the last row and column
    x[1, 1, 2, :] = -np.inf  # a whole row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in the reference's sums
        expected = run_reference(graph, {}, {"x": x})["y"]
    actual = run_plan(generate(graph), simulator(), {}, {"x": x}, poison=True)["y"]
    assert np.isnan(expected).any() and np.isinf(expected).any()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@given(length=RAGGED, channels=st.sampled_from((2, 4)), groups=st.sampled_from((1, 2)),
       kernel=st.integers(1, 4), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       batch=st.sampled_from((1, 3)), seed=seeds())
def test_conv1d_matches_reference_for_every_conv_tile(length: int, channels: int, groups: int,
                                                      kernel: int, stride: int, dilation: int,
                                                      batch: int, seed: int) -> None:
    padding = min(dilation * (kernel - 1) // 2 + 1, 2)
    if length + 2 * padding < dilation * (kernel - 1) + 1:
        length = dilation * (kernel - 1) + 1
    graph, tiles = parallel("conv1d", {"x": ("f32", ("N", channels, length))}, CONV_TILES,
                            filters=2 * groups, kernel=kernel, stride=stride, padding=padding,
                            dilation=dilation, groups=groups)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


@pytest.mark.parametrize("op, shape, attrs", [
    ("conv1d", ("N", 3, 31), {"filters": 5, "kernel": 3, "padding": 1}),
    ("conv_transpose2d", ("N", 3, 5, 4), {"filters": 5, "kernel": 3, "stride": 2,
                                          "output_padding": 1}),
])
def test_convolutions_with_a_fused_epilogue(op: str, shape: tuple[Any, ...],
                                            attrs: dict[str, Any]) -> None:
    builder = GraphBuilder("fused")
    x = builder.input("x", "f32", shape)
    builder.output("y", builder.op("relu", builder.op(op, x, name="conv", **attrs)))
    graph = builder.build()
    plan = generate(run_pipeline(graph, 2).graph)
    assert len(plan.launches) == 1, f"relu should fuse into the {op} kernel"
    rng = np.random.default_rng(7)
    weights = random_weights(graph, rng)
    x_value = rng.standard_normal((2, *shape[1:])).astype(np.float32)
    actual = run_plan(plan, simulator(), weights, {"x": x_value}, poison=True)["y"]
    expected = run_reference(graph, weights, {"x": x_value})["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@given(height=st.sampled_from((1, 5, 9)), width=st.sampled_from((1, 3, 7)),
       groups=st.sampled_from((1, 2)), kernel=st.tuples(st.integers(1, 4), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 2)), dilation=st.integers(1, 2),
       batch=st.sampled_from((1, 3)), seed=seeds())
@example(height=5, width=3, groups=2, kernel=(3, 2), stride=(2, 2), dilation=2, batch=2, seed=0)
def test_conv_transpose2d_matches_reference_for_every_conv_tile(
        height: int, width: int, groups: int, kernel: tuple[int, int], stride: tuple[int, int],
        dilation: int, batch: int, seed: int) -> None:
    output_padding = (max(stride[0], dilation) - 1, 0)
    # Some cropping, leaving at least one output row.
    padding = min(kernel[0] // 2,
                  ((height - 1) * stride[0] + dilation * (kernel[0] - 1) + output_padding[0]) // 2)
    graph, tiles = parallel("conv_transpose2d", {"x": ("f32", ("N", 2 * groups, height, width))},
                            CONV_TILES, filters=3 * groups, kernel=kernel, stride=stride,
                            padding=(padding, 0), output_padding=output_padding,
                            groups=groups, dilation=dilation)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


UNET_BITS = """
network unet_bits {
    input x: f32[N, 3, 17, 19]
    input s: f32[N, 4, 33]
    h = conv2d(x, 8, 3, padding=1) |> relu
    h = maxpool2d(h, 3, stride=2, ceil_mode=true)
    h = conv_transpose2d(h, 8, 3, stride=2, padding=1, output_padding=1) |> relu
    h = interpolate(h, scale_factor=0.5, mode="bilinear")
    h = pad(h, [1, 2, 0, 1], mode="replicate")
    h = avgpool2d(h, 3, stride=2, padding=1, ceil_mode=true)
    output a = adaptive_avgpool2d(h, [3, 2])
    output b = conv1d(s, 6, 5, padding=2, groups=2) |> relu
}
"""


def test_a_network_of_the_new_ops_runs_on_cudasim_as_the_reference() -> None:
    """Through the public API: the optimiser, fusion and the tiling heuristic's tiles."""
    import netc

    model = netc.loads(UNET_BITS)
    weights = model.init_weights(seed=0)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 3, 17, 19)).astype(np.float32),
              "s": rng.standard_normal((3, 4, 33)).astype(np.float32)}
    expected = model.run(inputs, weights, backend="reference")
    actual = model.run(inputs, weights, backend="cudasim")
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
