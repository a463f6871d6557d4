"""conv2d's weight gradient (`conv2d_weight_grad`, templates/conv2d_wgrad.cuh): the split
implicit GEMM on the simulator against its NumPy reference (outputs poisoned), the reference
against PyTorch's, and conv2d's VJP built on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from netc.ir import Graph, TensorType
from netc.ops.linear import WEIGHT_GRAD_MAX_SPLITS, weight_grad_splits
from netc.ops.windows import Window
from netc.reference import run_reference
from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import GraphBuilder
from tests.unit.test_autodiff import check_op


def weight_grad_graph(channels: int, height: int, width: int, filters: int,
                      dtype: str = "f32", **attrs: Any) -> Graph:
    """dW of a conv2d from inputs x [N, channels, height, width] and its output's cotangent."""
    attrs.setdefault("stride", 1)  # conv2d's default (a window's default is the kernel)
    window = Window.from_attrs("conv2d", attrs)
    out_h, out_w = window.output_size("conv2d", TensorType(dtype, ("N", channels, height, width)))
    builder = GraphBuilder("wgrad")
    x = builder.input("x", dtype, ("N", channels, height, width))
    dy = builder.input("dy", dtype, ("N", filters, out_h, out_w))
    builder.output("dw", builder.op("conv2d_weight_grad", x, dy, filters=filters, **attrs))
    return builder.build()


@given(batch=st.sampled_from((1, 2, 3)), groups=st.sampled_from((1, 2)),
       channels=st.sampled_from((1, 3, 5)), filters=st.sampled_from((1, 7, 33)),
       height=st.sampled_from((1, 6, 9)), width=st.sampled_from((4, 7)),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 3)), dilation=st.integers(1, 2),
       padding=st.tuples(*[st.integers(0, 2)] * 4), splits=st.sampled_from((1, 2, 3, 16)),
       seed=seeds())
@example(batch=2, groups=2, channels=3, filters=7, height=9, width=7, kernel=(3, 2),
         stride=(2, 1), dilation=2, padding=(2, 0, 1, 2), splits=3, seed=0)
@example(batch=1, groups=1, channels=1, filters=1, height=1, width=4, kernel=(1, 1),
         stride=(1, 1), dilation=1, padding=(0, 0, 0, 0), splits=16, seed=1)  # empty splits
def test_weight_grad_matches_reference(batch: int, groups: int, channels: int, filters: int,
                                       height: int, width: int, kernel: tuple[int, int],
                                       stride: tuple[int, int], dilation: int,
                                       padding: tuple[int, int, int, int], splits: int,
                                       seed: int) -> None:
    top, left, bottom, right = padding
    span = (dilation * (kernel[0] - 1) + 1, dilation * (kernel[1] - 1) + 1)
    if height + top + bottom < span[0] or width + left + right < span[1]:
        return  # the window does not fit: no conv2d to differentiate
    graph = weight_grad_graph(channels * groups, height, width, filters * groups,
                              kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                              groups=groups, splits=splits)
    check_graph(graph, batch=batch, seed=seed)


@pytest.mark.parametrize("filters, channels, kernel", [
    (31, 4, 3), (33, 4, 3), (64, 7, 3), (65, 2, 5), (129, 1, 1)])
def test_weight_grad_on_every_tile(filters: int, channels: int, kernel: int) -> None:
    """Extents around the 32 and 64 of the tiles the lowering picks (M = filters, N = channels
    times the window), K ragged: 3 images of 11 x 9 pixels, 4 splits."""
    graph = weight_grad_graph(channels, 11, 9, filters, kernel=kernel, padding=1, splits=4)
    plan = check_graph(graph, batch=3, seed=filters)
    assert any("conv2d_wgrad" in name for name in plan.kernels)


@pytest.mark.parametrize("splits", [1, 5])
def test_reference_matches_pytorch(splits: int) -> None:
    """The sum of the partials is PyTorch's weight gradient (float64 oracle)."""
    rng = np.random.default_rng(3)
    attrs = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    graph = weight_grad_graph(4, 10, 7, 6, splits=splits, **attrs)
    out_shape = [2 if d == "N" else d for d in graph["dy"].type.shape]
    x = rng.standard_normal((2, 4, 10, 7)).astype(np.float32)
    dy = rng.standard_normal(out_shape).astype(np.float32)
    partials = run_reference(graph, {}, {"x": x, "dy": dy})["dw"]
    assert partials.shape == (splits, 6, 2, 3, 2)
    padded = torch.nn.functional.pad(torch.from_numpy(x).double(), (0, 1, 1, 2))
    expected = torch.nn.grad.conv2d_weight(padded, (6, 2, 3, 2), torch.from_numpy(dy).double(),
                                           stride=(2, 1), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(partials.sum(axis=0), expected.numpy(), rtol=1e-5, atol=1e-5)
    if splits > 1:  # each split holds a part, not the whole
        assert not np.allclose(partials[0], expected.numpy(), atol=1e-3)


def test_splits_fill_the_gpu_and_stay_bounded() -> None:
    # LeNet's first conv (6 x 25 from 24 x 24 pixels): one tile, so as many splits as allowed.
    assert weight_grad_splits(6, 25, 1, 24 * 24) == min(WEIGHT_GRAD_MAX_SPLITS, 24 * 24 // 64)
    # ResNet-18's last 3x3 conv: 8 x 72 tiles already fill the GPU.
    assert weight_grad_splits(512, 512 * 9, 1, 7 * 7) == 1
    # ResNet-18's layer3 3x3 conv: 4 x 36 tiles, two waves with 2 splits.
    assert weight_grad_splits(256, 256 * 9, 1, 14 * 14) == 2
    # layer1's: 1 x 9 tiles; 16 splits wanted, 49 pixels a split of one 56 x 56 image.
    assert weight_grad_splits(64, 64 * 9, 1, 56 * 56) == WEIGHT_GRAD_MAX_SPLITS
    # A tiny feature map: no more splits than 64-pixel parts of an image.
    assert weight_grad_splits(8, 8, 1, 100) == 1


@given(batch=st.sampled_from((1, 2)), groups=st.sampled_from((1, 2)),
       height=st.sampled_from((1, 4, 5)), width=st.sampled_from((3, 6)),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 2)), dilation=st.integers(1, 2),
       padding=st.integers(0, 1), bias=st.booleans(), seed=seeds())
@example(batch=2, groups=2, height=5, width=6, kernel=(3, 2), stride=(2, 1), dilation=2,
         padding=1, bias=True, seed=0)
@example(batch=1, groups=1, height=1, width=3, kernel=(1, 1), stride=(3, 1), dilation=1,
         padding=1, bias=True, seed=0)  # the padding crops all that x reaches: zero gradients
def test_conv_transpose2d_gradients_match_pytorch(
        batch: int, groups: int, height: int, width: int, kernel: tuple[int, int],
        stride: tuple[int, int], dilation: int, padding: int, bias: bool, seed: int) -> None:
    """conv_transpose2d's VJP (conv2d of g by the same weight; conv2d_weight_grad with the
    roles swapped; output_padding rows cropped) against PyTorch autograd."""
    output_padding = (max(stride[0], dilation) - 1, 0)
    out_h = (height - 1) * stride[0] - 2 * padding + dilation * (kernel[0] - 1) + \
        output_padding[0] + 1
    out_w = (width - 1) * stride[1] - 2 * padding + dilation * (kernel[1] - 1) + 1
    if min(out_h, out_w) < 1:
        return
    rng = np.random.default_rng(seed)
    operands = {"x": rng.standard_normal((batch, 2 * groups, height, width)).astype(np.float32),
                "up.weight": rng.standard_normal((2 * groups, 3, *kernel)).astype(np.float32)}
    if bias:
        operands["up.bias"] = rng.standard_normal(3 * groups).astype(np.float32)
    attrs = dict(filters=3 * groups, kernel=kernel, stride=stride, padding=padding,
                 output_padding=output_padding, groups=groups, dilation=dilation, bias=bias)
    check_op(lambda b, v: b.op("conv_transpose2d", v["x"], name="up", **attrs),
             lambda t: torch.nn.functional.conv_transpose2d(t["x"], t["up.weight"], t.get("up.bias"), stride,
                                          padding, output_padding, groups, dilation),
             operands)


def test_conv_transpose2d_backward_runs_on_cudasim() -> None:
    """conv_transpose2d's backward graph (asymmetric conv2d padding, the roles of the weight
    gradient swapped) compiled at -O2 on the simulator equals the reference."""
    from netc.autodiff import backward
    from netc.codegen.emit import generate
    from netc.driver import run_plan
    from netc.passes.pipeline import run_pipeline
    from tests.sim.codegen_support import simulator

    builder = GraphBuilder("up")
    x = builder.input("x", "f32", ("N", 4, 5, 6))
    up = builder.op("conv_transpose2d", x, filters=6, kernel=3, stride=2, padding=(1, 0),
                    output_padding=(1, 1), groups=2, name="up")
    builder.output("loss", builder.op("sum", builder.op("mul", up, up), axis=[0, 1, 2, 3]))
    graph = backward(builder.build(), "loss")
    plan = generate(run_pipeline(graph, 2).graph)
    assert any("conv2d_wgrad" in name for name in plan.kernels)
    rng = np.random.default_rng(2)
    weights = {"up.weight": rng.uniform(-0.5, 0.5, (4, 3, 3, 3)).astype(np.float32),
               "up.bias": rng.uniform(-0.5, 0.5, 6).astype(np.float32)}
    inputs = {"x": rng.standard_normal((3, 4, 5, 6)).astype(np.float32)}
    actual = run_plan(plan, simulator(), weights, inputs, poison=True)
    expected = run_reference(graph, weights, inputs)
    for name in ("grad:up.weight", "grad:up.bias"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-4,
                                   err_msg=name)
