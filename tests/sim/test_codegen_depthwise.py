"""Depthwise conv2d (groups = in channels) on its own kernel, `templates/depthwise_conv2d.cuh`:
against the NumPy reference on the simulator, PyTorch as the oracle once, the dispatch (which
convs take the kernel, which keep the implicit GEMM), fusion of MobileNetV2's epilogue.

`python -m tests.sim.test_codegen_depthwise` prints the simulator's time for MobileNetV2's
depthwise layers on this kernel and on the implicit GEMM (docs/kernels.md quotes it)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.codegen.tiles import DepthwiseTile, GemmTile, default_depthwise_tile
from netc.codegen.tiling import plan_tiles, resolve_overrides
from netc.diagnostics import CompileError
from netc.driver import run_plan
from netc.explain import explain
from netc.ir import Graph
from netc.plan import LaunchPlan
from netc.reference import run_reference
from tests.sim.codegen_support import TOLERANCE, assert_close, check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder, random_inputs, random_weights
from tests.sim.networks import network
from tests.sim.test_nan_inf import assert_same_special_values
from tests.sim.variants import DEPTHWISE_KERNELS, DEPTHWISE_NETWORK, LOW_PRECISION, catalog

pytestmark = pytest.mark.sim

SIZES = (1, 2, 5, 7, 31, 33, 127, 129)
"""Heights and widths: 1, odd, around a warp and a block's positions (the kernel's edges)."""


def depthwise_graph(dtype: str, channels: int, height: int, width: int,
                    **attrs: Any) -> Graph:
    builder = GraphBuilder("depthwise")
    x = builder.input("x", dtype, ("N", channels, height, width))
    attrs.setdefault("groups", channels)
    builder.output("y", builder.op("conv2d", x, **attrs))
    return builder.build()


def kernel_names(plan: LaunchPlan) -> list[str]:
    return [launch.kernel for launch in plan.launches]


@st.composite
def depthwise_convs(draw: st.DrawFn, kernels: tuple[tuple[int, int], ...] = DEPTHWISE_KERNELS,
                    ) -> dict[str, Any]:
    """A depthwise conv and an input it fits: every attribute drawn per axis (stride 1 or 2,
    dilation 1 or 2, each pad 0, 1 or 3, or "same"), a channel multiplier of 1 or 2, height
    and width independently from `SIZES`; fewer channels and images for the large planes."""
    kernel = draw(st.sampled_from(kernels))
    dilation = (draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2))))
    stride = (draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2))))
    padding: Any = tuple(draw(st.sampled_from((0, 1, 3))) for _ in range(4))
    if stride == (1, 1) and draw(st.booleans()):
        padding = "same"
    pads = (0, 0, 0, 0) if padding == "same" else padding
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    height = max(draw(st.sampled_from(SIZES)), reach[0] - pads[0] - pads[2])
    width = max(draw(st.sampled_from(SIZES)), reach[1] - pads[1] - pads[3])
    large = height * width > 1000
    channels = draw(st.sampled_from((2, 3) if large else (2, 3, 5, 11)))
    return {"channels": channels, "height": height, "width": width,
            "batch": 1 if large else draw(st.sampled_from((1, 2, 3))),
            "attrs": {"filters": channels * draw(st.sampled_from((1, 2))), "kernel": kernel,
                      "stride": stride, "padding": padding, "dilation": dilation,
                      "bias": draw(st.booleans())}}


def check_depthwise(conv: dict[str, Any], seed: int, dtype: str = "f32") -> LaunchPlan:
    graph = depthwise_graph(dtype, conv["channels"], conv["height"], conv["width"],
                            **conv["attrs"])
    plan = check_graph(graph, batch=conv["batch"], seed=seed)
    (name,) = kernel_names(plan)
    assert name.startswith(f"netc_dwconv2d_{dtype}_k{'x'.join(map(str, conv['attrs']['kernel']))}")
    return plan


@given(conv=depthwise_convs(), seed=seeds())
@example(conv={"channels": 3, "height": 129, "width": 127, "batch": 1,
               "attrs": {"filters": 6, "kernel": (7, 7), "stride": (2, 1),
                         "padding": (3, 1, 0, 3), "dilation": (1, 2), "bias": True}}, seed=0)
@example(conv={"channels": 5, "height": 1, "width": 1, "batch": 2,
               "attrs": {"filters": 5, "kernel": (3, 3), "stride": (1, 1),
                         "padding": "same", "dilation": (1, 1), "bias": False}}, seed=1)
@example(conv={"channels": 11, "height": 33, "width": 31, "batch": 3,
               "attrs": {"filters": 22, "kernel": (5, 5), "stride": (1, 2),
                         "padding": (1, 3, 3, 0), "dilation": (2, 2), "bias": True}}, seed=2)
def test_depthwise_conv2d_matches_the_reference(conv: dict[str, Any], seed: int) -> None:
    check_depthwise(conv, seed)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@given(conv=depthwise_convs(kernels=DEPTHWISE_KERNELS[:1]), seed=seeds())
def test_depthwise_conv2d_in_16_bits_accumulates_in_float(dtype: str, conv: dict[str, Any],
                                                         seed: int) -> None:
    check_depthwise(conv, seed, dtype)


def test_every_split_of_a_block_between_planes_and_positions() -> None:
    """A plane of 1, of fewer positions than a block (several planes a block, the last block
    ragged), of exactly a block's, of more (one plane over several blocks along grid y); 4, 2
    and 1 columns a thread (the widths 13, 5 and 1)."""
    for height, width in ((1, 1), (7, 13), (64, 13), (200, 5), (129, 1)):
        plan = check_depthwise({"channels": 11, "height": height, "width": width, "batch": 2,
                                "attrs": {"filters": 11, "kernel": (3, 3), "stride": (1, 1),
                                          "padding": (1, 1, 1, 1), "dilation": (1, 1),
                                          "bias": True}}, seed=height)
        (launch,) = plan.launches
        positions = height * -(-width // dict(zip((13, 5, 1), (4, 2, 1)))[width])
        assert launch.grid[1].size({}) == -(-positions // 256), (height, width)


def test_depthwise_conv2d_matches_pytorch() -> None:
    """PyTorch's F.conv2d(groups=C) is the oracle: multiplier 2, an oblong kernel, every
    attribute different along the two axes."""
    graph = depthwise_graph("f32", 4, 17, 23, filters=8, kernel=(3, 5), stride=(2, 1),
                            padding=(2, 1), dilation=(1, 2))
    rng = np.random.default_rng(3)
    weights = random_weights(graph, rng)
    x = rng.standard_normal((2, 4, 17, 23)).astype(np.float32)
    plan = generate(graph)
    assert kernel_names(plan) == ["netc_dwconv2d_f32_k3x5_c4_b256_bias"]
    actual = run_plan(plan, simulator(), weights, {"x": x})["y"]
    weight, bias = (torch.from_numpy(weights[f"{graph.outputs[0][1]}.{name}"])
                    for name in ("weight", "bias"))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), weight, bias, stride=(2, 1),
                                          padding=(2, 1), dilation=(1, 2), groups=4).numpy()
    assert_close("y", actual, expected, *TOLERANCE["f32"])


def test_nan_and_infinity_propagate_as_in_the_reference() -> None:
    """A NaN or an inf input reaches every output whose window covers it (inf - inf and
    0 * inf are NaN); an inf tap gives NaN wherever it falls on the zero padding too, as in the
    reference and the implicit GEMM (PyTorch's general CPU conv agrees; its depthwise kernel
    skips padding taps), so the result does not depend on the kernel chosen."""
    graph = depthwise_graph("f32", 3, 6, 7, filters=3, kernel=3, padding=1)
    rng = np.random.default_rng(4)
    weights = random_weights(graph, rng)
    weights[f"{graph.outputs[0][1]}.weight"][2, 0, 0, 0] = np.inf
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 0, 0] = np.inf
    x[1, 1, 5, 6] = -np.inf
    x[1, 0, 3, 3], x[1, 0, 3, 4] = np.inf, -np.inf
    actual = run_plan(generate(graph), simulator(), weights, {"x": x})["y"]
    expected = run_reference(graph, weights, {"x": x})["y"]
    assert np.isnan(expected[0, 0, 1:4, 2:5]).all() and np.isnan(expected[:, 2, 0, :]).all()
    assert_same_special_values("y", actual, expected)
    gemm = run_plan(generate(graph, {graph.outputs[0][1]: GemmTile()}), simulator(), weights,
                    {"x": x})["y"]
    assert_same_special_values("y (implicit GEMM)", gemm, actual)


@pytest.mark.parametrize("dtype", ["f32", *LOW_PRECISION])
def test_mobilenets_depthwise_stage_fuses_into_one_launch(dtype: str) -> None:
    """conv (groups = channels) |> batchnorm |> relu6, plus the residual: one launch of the
    depthwise kernel at -O2 (batchnorm folded, relu6 and the add in its epilogue); a
    multiplier-2 conv with hardswish likewise. The fused plan computes the unfused graph."""
    from netc.passes import run_pipeline

    original = network(DEPTHWISE_NETWORK, dtype)
    rng = np.random.default_rng(6)
    weights = random_weights(original, rng)
    inputs = random_inputs(original, 3, rng)
    optimized = run_pipeline(original, 2, weights, verify=True)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    names = kernel_names(plan)
    assert len(names) == 2, names
    assert all(name.startswith(f"netc_dwconv2d_{dtype}_") for name in names), names
    assert "_ep_relu6_add_" in names[0] and "_ep_hardswish_" in names[1], names
    assert set(names) <= set(catalog())
    actual = run_plan(plan, simulator(), optimized.weights, inputs)
    # Fused kernels keep intermediates in float registers where the reference rounds each
    # op's result to the dtype: some room for 16 bits, as for the other fused networks.
    rtol, atol = TOLERANCE[dtype]
    for name, value in run_reference(original, weights, inputs).items():
        assert_close(name, actual[name], value, 2 * rtol, 2 * atol)


# Which convs take the kernel ----------------------------------------------------------------


def single_kernel(graph: Graph, tiles: dict[str, Any] | None = None) -> str:
    (name,) = kernel_names(generate(graph, tiles))
    return name


def test_only_depthwise_convs_take_the_depthwise_kernel() -> None:
    depthwise = depthwise_graph("f32", 6, 8, 8, filters=6, kernel=3)
    assert single_kernel(depthwise).startswith("netc_dwconv2d_f32_k3x3_")
    multiplier = depthwise_graph("f32", 6, 8, 8, filters=18, kernel=3)
    assert single_kernel(multiplier).startswith("netc_dwconv2d_f32_k3x3_")
    # groups < channels (2 channels a group), groups = 1: the implicit GEMM.
    grouped = depthwise_graph("f32", 6, 8, 8, filters=6, kernel=3, groups=3)
    assert single_kernel(grouped).startswith("netc_conv2d_f32_")
    dense = depthwise_graph("f32", 1, 8, 8, filters=4, kernel=3, groups=1)
    assert single_kernel(dense).startswith("netc_conv2d_f32_")


def test_a_gemm_tile_given_for_a_depthwise_conv_keeps_the_implicit_gemm() -> None:
    graph = depthwise_graph("f32", 3, 9, 10, filters=6, kernel=3, padding=1)
    node = graph.outputs[0][1]
    tile = GemmTile(32, 32, 8, 4, 4)
    assert single_kernel(graph, {node: tile}) == "netc_conv2d_f32_bm32_bn32_bk8_tm4_tn4_bias"
    # and both compute the same
    rng = np.random.default_rng(7)
    weights = random_weights(graph, rng)
    inputs = random_inputs(graph, 2, rng)
    direct = run_plan(generate(graph), simulator(), weights, inputs)["y"]
    gemm = run_plan(generate(graph, {node: tile}), simulator(), weights, inputs)["y"]
    assert_close("y", direct, gemm, *TOLERANCE["f32"])


def test_a_depthwise_conv1d_takes_the_depthwise_kernel() -> None:
    builder = GraphBuilder("conv1d")
    x = builder.input("x", "f32", ("N", 4, 37))
    builder.output("y", builder.op("conv1d", x, filters=8, kernel=3, stride=2, padding=1,
                                   dilation=2, groups=4))
    graph = builder.build()
    plan = check_graph(graph, batch=2)
    assert kernel_names(plan) == ["netc_dwconv2d_f32_k1x3_c4_b256_bias"]


def test_a_depthwise_conv_transpose2d_keeps_its_own_kernel() -> None:
    builder = GraphBuilder("transposed")
    x = builder.input("x", "f32", ("N", 4, 5, 6))
    builder.output("y", builder.op("conv_transpose2d", x, filters=4, kernel=3, groups=4))
    assert single_kernel(builder.build()).startswith("netc_convt2d_f32_")


def test_the_tiling_plan_gives_depthwise_convs_no_gemm_tile() -> None:
    graph = network(DEPTHWISE_NETWORK, "f32", 2)
    assert plan_tiles(graph) == []
    region = graph.compute_nodes[0].region
    assert region is not None
    with pytest.raises(CompileError, match="depthwise conv2d, which has its own kernel"):
        resolve_overrides(graph, {region.anchor.id: GemmTile()})
    with pytest.raises(CompileError, match="fused into a depthwise conv2d kernel"):
        resolve_overrides(graph, {region.members[-1].id: GemmTile()})
    rows = explain(network(DEPTHWISE_NETWORK, "f32")).kernels
    assert [row.functions[0].startswith("netc_dwconv2d_f32_") for row in rows] == [True, True]
    assert all(row.tile == "256 threads" for row in rows)


def test_the_depthwise_tile_validates_itself() -> None:
    DepthwiseTile(96, 8).validate()
    # 4 columns unless the last segment of a row wastes more than a quarter of the row's.
    assert [default_depthwise_tile(width).columns for width in (1, 2, 3, 5, 6, 7, 9, 10)] == \
        [1, 2, 4, 2, 4, 4, 4, 4]
    for bad in (DepthwiseTile(columns=0), DepthwiseTile(columns=9), DepthwiseTile(threads=100)):
        with pytest.raises(ValueError):
            bad.validate()


# Measurement: python -m tests.sim.test_codegen_depthwise ------------------------------------

MOBILENET_V2 = ((32, 112, 1, 1), (96, 112, 2, 1), (144, 56, 1, 1), (144, 56, 2, 1),
                (192, 28, 1, 2), (192, 28, 2, 1), (384, 14, 1, 4), (576, 14, 1, 2),
                (576, 14, 2, 1), (960, 7, 1, 3))
"""MobileNetV2's 17 depthwise layers at 224 x 224: (channels, input size, stride, count)."""


def measure() -> None:
    """The simulator's time (one worker, batch 1, best of 2) of each distinct depthwise layer
    with its folded bias and relu6, on the depthwise kernel and on the implicit GEMM with the
    tile the tiling heuristic chose for it before (`GemmTile(16, 64, 16, 2, 2)` or 16 x 32)."""
    from netc.codegen.tiling import GemmShape, heuristic_tile
    from netc.driver import build_binary
    from netc.passes import run_pipeline
    from netc.runtime.executor import PlanRunner
    from netc.sim import CudaSim

    sim = CudaSim(workers=1)
    totals = [0.0, 0.0]
    for channels, size, stride, count in MOBILENET_V2:
        builder = GraphBuilder("dw")
        x = builder.input("x", "f32", ("N", channels, size, size))
        y = builder.op("relu6", builder.op("conv2d", x, filters=channels, kernel=3,
                                           stride=stride, padding=1, groups=channels))
        builder.output("y", y)
        source = builder.build()
        optimized = run_pipeline(source, 2, random_weights(source, np.random.default_rng(0)))
        graph, weights = optimized.graph, optimized.weights
        assert weights is not None
        node = graph.compute_nodes[0]
        out = -(-size // stride)
        tile, _ = heuristic_tile(GemmShape("conv2d", 1, out * out, 9, channels))
        image = {"x": np.random.default_rng(1).standard_normal(
            (1, channels, size, size)).astype(np.float32)}
        times = []
        for tiles in ({}, {node.id: tile}):
            plan = generate(graph, tiles)
            with PlanRunner(plan, sim, weights, build_binary(plan, sim)) as runner:
                runner.run(image)
                best = float("inf")
                for _ in range(2):
                    started = time.perf_counter()
                    runner.run(image)
                    best = min(best, time.perf_counter() - started)
            times.append(best)
        totals = [total + count * t for total, t in zip(totals, times)]
        print(f"C={channels:4d} {size:3d}x{size:<3d} stride {stride} (x{count}): depthwise "
              f"{times[0] * 1000:7.1f} ms, implicit GEMM {times[1] * 1000:7.1f} ms "
              f"({times[1] / times[0]:.1f}x)", flush=True)
    print(f"all 17 layers: depthwise {totals[0]:.2f} s, implicit GEMM {totals[1]:.2f} s "
          f"({totals[1] / totals[0]:.1f}x)")


if __name__ == "__main__":
    measure()
