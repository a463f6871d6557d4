"""The tensor-core conv2d (templates/conv2d_mma.cuh: mma.sync, ldmatrix, cp.async for the
weights, an im2col gather through registers for the input) on the simulator, which runs its
exact source with the PTX instructions emulated lane by lane.

Each case runs one copy of the conv per tensor-core tile the heuristic may choose, outputs
poisoned, against a float64 NumPy conv of the 16-bit-rounded input and weights: the kernel
differs from it by float32 accumulation (at most about K * 2^-24 of the sum of the products'
magnitudes) and the output's rounding (half an ulp), and the copies must agree bit for bit
(every tile sums each output over k in the same order). The cases are ragged around the tiles:
M (filters per group) 1, 7, 33, 129; N (images x pixels) 1 to a few hundred, across images; K
not a multiple of the k-tile of 32, and not of 8 (the weights are staged element by element
instead of by cp.async); H != W, stride, asymmetric padding, dilation, groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.dtypes import round_to
from netc.ops.builder import GraphBuilder
from tests.sim.codegen_support import simulator
from tests.sim.graph_builder import parallel, random_inputs, random_weights
from tests.sim.variants import MMA_TILES, catalog

pytestmark = pytest.mark.sim

MANTISSA_BITS = {"f16": 10, "bf16": 7}

CASES: list[tuple[str, tuple[int, int, int], int, dict[str, Any]]] = [
    # (dtype, input [C, H, W], images, attributes); M, N, K in the comment.
    ("bf16", (16, 7, 9), 2, {"filters": 33, "kernel": 3, "padding": 1}),  # 33, 126, 144
    ("f16", (3, 13, 10), 1, {"filters": 7, "kernel": 3, "stride": (2, 1),  # 7, 63, 27
                             "padding": (1, 0, 2, 1), "dilation": (1, 2)}),
    ("bf16", (16, 1, 1), 1, {"filters": 258, "kernel": 1, "groups": 2}),   # 129 x2, 1, 8
    ("f16", (40, 1, 31), 1, {"filters": 1, "kernel": 1}),                 # 1, 31, 40
    ("f16", (10, 12, 17), 3, {"filters": 32, "kernel": (2, 3), "stride": (1, 2),  # 16 x2,
                              "dilation": (2, 1), "groups": 2}),          # 240, 30
    ("bf16", (40, 6, 5), 1, {"filters": 64, "kernel": 3, "padding": (2, 1, 0, 1)}),  # 64, 30, 360
]


def conv2d_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The conv in float64, and per output the sum of its products' magnitudes."""
    def pair(value: int | tuple[int, int]) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else value

    groups = attrs.get("groups", 1)
    stride_h, stride_w = pair(attrs.get("stride", 1))
    dilation_h, dilation_w = pair(attrs.get("dilation", 1))
    padding = attrs.get("padding", 0)
    top, left, bottom, right = (padding,) * 4 if isinstance(padding, int) else padding
    filters, group_in, kernel_h, kernel_w = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (padded.shape[2] - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (padded.shape[3] - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    total = np.zeros((x.shape[0], filters, out_h, out_w))
    magnitude = np.zeros_like(total)
    group_out = filters // groups
    for g in range(groups):
        channels = slice(g * group_in, (g + 1) * group_in)
        outs = slice(g * group_out, (g + 1) * group_out)
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                window = padded[:, channels, ky * dilation_h:, kx * dilation_w:][
                    :, :, :out_h * stride_h:stride_h, :out_w * stride_w:stride_w]
                tap = weight[outs, :, ky, kx]
                total[:, outs] += np.einsum("nchw,oc->nohw", window, tap)
                magnitude[:, outs] += np.einsum("nchw,oc->nohw", np.abs(window), np.abs(tap))
    if bias is not None:
        total += bias[None, :, None, None]
    return total, magnitude


@pytest.mark.parametrize("dtype, shape, images, attrs", CASES)
def test_every_tensor_core_tile_matches_the_float64_conv(
        dtype: str, shape: tuple[int, int, int], images: int, attrs: dict[str, Any]) -> None:
    graph, tiles = parallel("conv2d", {"x": (dtype, ("N", *shape))}, MMA_TILES, **attrs)
    plan = generate(graph, tiles)
    assert len(set(plan.kernels)) == len(MMA_TILES)
    assert all("_mma_" in name for name in plan.kernels)
    unknown = sorted(set(plan.kernels) - set(catalog()))
    assert not unknown, f"kernels missing from tests/sim/variants.py's catalog: {unknown}"
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape) + images)
    weights = random_weights(graph, rng, shared=True)
    inputs = random_inputs(graph, images, rng)
    actual = run_plan(plan, simulator(), weights, inputs, poison=True)

    kernel = next(v for v in weights.values() if v.ndim == 4)
    bias = next((v for v in weights.values() if v.ndim == 1), None)
    expected, magnitude = conv2d_reference(
        round_to(dtype, next(iter(inputs.values()))).astype(np.float64),
        round_to(dtype, kernel).astype(np.float64),
        None if bias is None else round_to(dtype, bias).astype(np.float64), attrs)
    depth = kernel[0].size  # K
    tolerance = 2.0 * (2.0 ** -(MANTISSA_BITS[dtype] + 1) * np.abs(expected) +
                       depth * 2.0 ** -24 * magnitude) + 1e-30
    for name, value in actual.items():
        got = value.astype(np.float64)
        assert got.shape == expected.shape, name
        error = np.abs(got - expected)
        bad = ~(error <= tolerance)  # NaN (a poisoned, unwritten element) is bad
        assert not bad.any(), (
            f"{name}: {int(bad.sum())} of {got.size} elements differ ({int(np.isnan(got).sum())} "
            f"NaN, never written); largest difference {np.nanmax(error):.3g}, largest "
            f"excess over the tolerance {np.nanmax(error - tolerance):.3g}")
        assert np.array_equal(value, actual["out0"]), f"{name} differs from out0"


def test_conv_transpose_keeps_the_simt_kernel_in_16_bits() -> None:
    builder = GraphBuilder("convt")
    x = builder.input("x", "bf16", ("N", 4, 5, 5))
    builder.output("y", builder.op("conv_transpose2d", x, filters=3, kernel=3))
    builder.output("z", builder.op("conv2d", x, filters=3, kernel=3))
    names = list(generate(builder.build()).kernels)
    assert any(name.startswith("netc_convt2d_bf16_bm") for name in names), names
    assert any(name.startswith("netc_conv2d_bf16_mma_") for name in names), names
