"""The gradients of the resampling ops: adaptive_avgpool2d (`pool2d_grad` mode "adaptive",
templates/pool_grad.cuh) and interpolate (`interpolate_grad`, templates/interpolate_grad.cuh).
Their VJPs against PyTorch's autograd (the NumPy references running the backward graph), the
gather kernels on the simulator against those references (outputs poisoned), and the kernels
against PyTorch where the order of additions and NaN/infinity are PyTorch's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st

from netc.autodiff import backward
from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph, TensorType
from netc.ops import REGISTRY
from netc.ops.apply import bind_attrs
from netc.passes.pipeline import run_pipeline
from netc.reference import run_reference
from tests.sim.codegen_support import check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder
from tests.unit.test_autodiff import check_op, normal

RAGGED = st.sampled_from((1, 3, 7, 9))
"""Input heights and widths."""
OUT_SIZES = st.sampled_from((1, 2, 5, 9, 13))
"""Output heights and widths: smaller and larger than the inputs."""
SCALES = st.sampled_from((0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0))
MODES = st.sampled_from((("nearest", False), ("bilinear", False), ("bilinear", True)))
"""interpolate's (mode, align_corners)."""


def interpolate_attrs(mode: str, align_corners: bool, size: tuple[int, int] | None,
                      scale: float | None) -> dict[str, Any]:
    return {"mode": mode, "align_corners": align_corners,
            **({"size": size} if size is not None else {"scale_factor": scale})}


def torch_interpolate(x: Any, attrs: dict[str, Any]) -> Any:
    return F.interpolate(x, size=attrs.get("size"), scale_factor=attrs.get("scale_factor"),
                         mode=attrs["mode"],
                         align_corners=attrs["align_corners"] if attrs["mode"] != "nearest"
                         else None)


def terms(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """About how many cotangents one input element's gradient sums (the tolerance's scale)."""
    return 4 * math.prod(-(-o // i) for i, o in zip(in_shape[2:], out_shape[2:]))


def grad_graph(op: str, shape: tuple[Any, ...], **attrs: Any) -> Graph:
    """dx of `op` (adaptive_avgpool2d or interpolate) over x of `shape` from its output's
    cotangent, as its VJP builds it."""
    out = REGISTRY[op].infer(bind_attrs(REGISTRY[op], attrs), [TensorType("f32", shape)])
    builder = GraphBuilder("resample_grad")
    x = builder.input("x", "f32", shape)
    dy = builder.input("dy", "f32", out.shape)
    if op == "adaptive_avgpool2d":
        builder.output("dx", builder.op("pool2d_grad", x, dy, mode="adaptive"))
    else:
        builder.output("dx", builder.op("interpolate_grad", x, dy, **attrs))
    return builder.build()


# The VJPs against PyTorch -----------------------------------------------------------------


@given(batch=st.sampled_from((1, 2)), height=RAGGED, width=RAGGED,
       output_size=st.tuples(OUT_SIZES, OUT_SIZES))
@example(batch=2, height=7, width=3, output_size=(5, 9))
@example(batch=1, height=9, width=7, output_size=(2, 13))
def test_adaptive_avgpool2d_vjp_matches_pytorch(batch: int, height: int, width: int,
                                                output_size: tuple[int, int]) -> None:
    shape = (batch, 3, height, width)
    check_op(lambda b, v: b.op("adaptive_avgpool2d", v["x"], output_size=output_size),
             lambda t: F.adaptive_avg_pool2d(t["x"], output_size), {"x": normal(shape)},
             terms=terms(shape, (0, 0, *output_size)))


@given(mode=MODES, batch=st.sampled_from((1, 2)), height=RAGGED, width=RAGGED,
       size=st.none() | st.tuples(OUT_SIZES, OUT_SIZES), scale=SCALES)
@example(mode=("bilinear", False), batch=1, height=3, width=7, size=(13, 2), scale=1.0)
@example(mode=("bilinear", True), batch=2, height=7, width=9, size=None, scale=1.5)
@example(mode=("nearest", False), batch=1, height=9, width=7, size=(5, 13), scale=1.0)
@example(mode=("nearest", False), batch=1, height=7, width=3, size=None, scale=2.0)
def test_interpolate_vjp_matches_pytorch(mode: tuple[str, bool], batch: int, height: int,
                                         width: int, size: tuple[int, int] | None,
                                         scale: float) -> None:
    assume(size is not None or min(height, width) * scale >= 1)
    attrs = interpolate_attrs(*mode, size, scale if size is None else None)
    shape = (batch, 2, height, width)
    out = REGISTRY["interpolate"].infer(bind_attrs(REGISTRY["interpolate"], attrs),
                                        [TensorType("f32", shape)])
    check_op(lambda b, v: b.op("interpolate", v["x"], **attrs),
             lambda t: torch_interpolate(t["x"], attrs), {"x": normal(shape)},
             terms=terms(shape, tuple(int(d) for d in out.shape)))


# The kernels ------------------------------------------------------------------------------


@given(height=RAGGED, width=RAGGED, output_size=st.tuples(OUT_SIZES, OUT_SIZES), seed=seeds())
@example(height=7, width=9, output_size=(13, 2), seed=0)
@example(height=1, width=3, output_size=(5, 1), seed=1)
def test_adaptive_grad_kernel_matches_reference(height: int, width: int,
                                                output_size: tuple[int, int],
                                                seed: int) -> None:
    check_graph(grad_graph("adaptive_avgpool2d", ("N", 3, height, width),
                           output_size=output_size), seed=seed)


@given(mode=MODES, height=RAGGED, width=RAGGED, size=st.none() | st.tuples(OUT_SIZES, OUT_SIZES),
       scale=SCALES, seed=seeds())
@example(mode=("bilinear", False), height=7, width=3, size=(13, 2), seed=0, scale=1.0)
@example(mode=("bilinear", True), height=9, width=1, size=(5, 9), seed=1, scale=1.0)
@example(mode=("nearest", False), height=3, width=9, size=None, seed=2, scale=2.5)
def test_interpolate_grad_kernel_matches_reference(mode: tuple[str, bool], height: int,
                                                   width: int, size: tuple[int, int] | None,
                                                   scale: float, seed: int) -> None:
    assume(size is not None or min(height, width) * scale >= 1)
    attrs = interpolate_attrs(*mode, size, scale if size is None else None)
    check_graph(grad_graph("interpolate", ("N", 2, height, width), **attrs), seed=seed)


@pytest.mark.parametrize("op, size, attrs", [
    ("adaptive_avgpool2d", (7, 3), {"output_size": (5, 13)}),
    ("adaptive_avgpool2d", (33, 129), {"output_size": (127, 31)}),
    ("adaptive_avgpool2d", (127, 33), {"output_size": (38, 9)}),
    ("interpolate", (7, 5), interpolate_attrs("nearest", False, (13, 3), None)),
    ("interpolate", (127, 33), interpolate_attrs("nearest", False, None, 0.3)),
    ("interpolate", (33, 129), interpolate_attrs("bilinear", False, (127, 31), None)),
    ("interpolate", (7, 5), interpolate_attrs("bilinear", False, (7, 2), None)),
    ("interpolate", (7, 5), interpolate_attrs("bilinear", True, (3, 13), None)),
    ("interpolate", (31, 33), interpolate_attrs("bilinear", True, None, 1.7)),
])
def test_kernel_matches_pytorch_to_the_bit(op: str, size: tuple[int, int],
                                           attrs: dict[str, Any]) -> None:
    """Each input element adds its shares in PyTorch's order with PyTorch's weights: for
    interpolate, cudasim equals PyTorch's CPU autograd exactly, an infinite cotangent times a
    weight of 0 NaN in both, a NaN spread only to the elements its output read. An adaptive
    window's share is one division by its size (PyTorch divides by its rows, then its
    columns): within a few ulps, NaN and infinity where PyTorch has them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, *size)).astype(np.float32)
    torch_x = torch.from_numpy(x).requires_grad_()
    out = (F.adaptive_avg_pool2d(torch_x, attrs["output_size"]) if op == "adaptive_avgpool2d"
           else torch_interpolate(torch_x, attrs))
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dy[0, 0, 1, 1], dy[0, 1, 2, 0] = np.inf, np.nan
    out.backward(torch.from_numpy(dy))
    graph = grad_graph(op, x.shape, **attrs)
    actual = run_plan(generate(graph), simulator(), {}, {"x": x, "dy": dy}, poison=True)["dx"]
    assert torch_x.grad is not None
    if op == "interpolate":
        np.testing.assert_array_equal(actual, torch_x.grad.numpy())
    else:
        np.testing.assert_allclose(actual, torch_x.grad.numpy(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("op, attrs", [
    ("adaptive_avgpool2d", {"output_size": (3, 9)}),
    ("interpolate", {"size": (9, 4), "mode": "bilinear"}),
    ("maxpool2d", {"kernel": 3, "stride": 2, "padding": 1}),  # pool2d_grad's max mode
])
def test_backward_pointwise_ops_fuse_into_the_gradient(op: str, attrs: dict[str, Any]) -> None:
    """relu's backward (where x > 0) after the gradient runs in the gather kernel's epilogue:
    one launch for both, the numbers as the reference's."""
    builder = GraphBuilder("resample_relu")
    x = builder.input("x", "f32", ("N", 2, 7, 5))
    w = builder.param("w", "f32", (2, 1, 1))
    resampled = builder.op(op, builder.op("relu", builder.op("mul", x, w)), **attrs)
    builder.output("loss", builder.op("sum", builder.op("mul", resampled, resampled),
                                      axis=[0, 1, 2, 3]))
    graph = backward(builder.build(), "loss")
    plan = generate(run_pipeline(graph, 2).graph)
    fused = [name for name in plan.kernels if "_grad_" in name]
    assert len(fused) == 1 and "_ep_" in fused[0], plan.kernels
    rng = np.random.default_rng(5)
    weights = {"w": rng.uniform(-1, 1, (2, 1, 1)).astype(np.float32)}
    inputs = {"x": rng.standard_normal((3, 2, 7, 5)).astype(np.float32)}
    actual = run_plan(plan, simulator(), weights, inputs, poison=True)
    expected = run_reference(graph, weights, inputs)
    np.testing.assert_allclose(actual["grad:w"], expected["grad:w"], rtol=1e-5, atol=1e-5)


def test_the_gradients_are_not_exported_to_onnx() -> None:
    from netc.onnx.export import ExportError, export_graph

    for op, attrs in (("adaptive_avgpool2d", {"output_size": 2}),
                      ("interpolate", {"scale_factor": 2.0})):
        with pytest.raises(ExportError, match="part of a backward pass"):
            export_graph(grad_graph(op, (1, 2, 3, 3), **attrs))
