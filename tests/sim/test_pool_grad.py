"""maxpool2d's and avgpool2d's input gradient (`pool2d_grad`, templates/pool_grad.cuh): the
gather kernel on the simulator against the NumPy reference (outputs poisoned), and both
against PyTorch's autograd where ties, NaN and infinity decide where a max's gradient goes.
(A fused backward epilogue: tests/sim/test_resample_grad.py, with the other gathers.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph, TensorType
from netc.ops import REGISTRY
from netc.ops.apply import bind_attrs
from netc.reference import run_reference
from tests.sim.codegen_support import check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder


def pool_grad_graph(mode: str, shape: tuple[Any, ...], **attrs: Any) -> Graph:
    """dx of a pool over x of `shape` from its output's cotangent."""
    op = f"{mode}pool2d"
    out = REGISTRY[op].infer(bind_attrs(REGISTRY[op], attrs), [TensorType("f32", shape)])
    builder = GraphBuilder("pool_grad")
    x = builder.input("x", "f32", shape)
    dy = builder.input("dy", "f32", out.shape)
    builder.output("dx", builder.op("pool2d_grad", x, dy, mode=mode, **attrs))
    return builder.build()


@given(mode=st.sampled_from(("max", "avg")), batch=st.sampled_from((1, 2)),
       height=st.sampled_from((1, 2, 7, 9)), width=st.sampled_from((3, 8)),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 2)), pad=st.booleans(),
       ceil_mode=st.booleans(), count_include_pad=st.booleans(), seed=seeds())
@example(mode="max", batch=2, height=9, width=8, kernel=(3, 3), stride=(2, 2), pad=True,
         ceil_mode=True, count_include_pad=True, seed=0)
@example(mode="avg", batch=1, height=7, width=3, kernel=(3, 2), stride=(2, 1), pad=True,
         ceil_mode=True, count_include_pad=False, seed=1)
def test_pool_grad_matches_reference(mode: str, batch: int, height: int, width: int,
                                     kernel: tuple[int, int], stride: tuple[int, int], pad: bool,
                                     ceil_mode: bool, count_include_pad: bool, seed: int) -> None:
    padding = (kernel[0] // 2, kernel[1] // 2) if pad else (0, 0)
    if height + 2 * padding[0] < kernel[0] or width + 2 * padding[1] < kernel[1]:
        return  # no window fits: no pool to differentiate
    extra = {"count_include_pad": count_include_pad} if mode == "avg" else {}
    graph = pool_grad_graph(mode, ("N", 3, height, width), kernel=kernel, stride=stride,
                            padding=padding, ceil_mode=ceil_mode, **extra)
    check_graph(graph, batch=batch, seed=seed)


def test_max_gradient_goes_where_pytorch_sends_it() -> None:
    """Ties (the first largest wins), NaN (the last NaN wins), an all -inf window (its first
    real element), overlapping windows and padding: cudasim, the reference and PyTorch agree
    exactly."""
    x = np.array([[[[1, 3, 3, 0, 2],
                    [3, 1, np.nan, 5, 5],
                    [-np.inf, -np.inf, 4, np.nan, 0],
                    [-np.inf, -np.inf, 1, 2, 2],
                    [0, 7, 7, 7, 1]]]], np.float32)
    attrs = dict(kernel=(3, 3), stride=(2, 1), padding=(1, 1), ceil_mode=True)
    torch_x = torch.from_numpy(x).requires_grad_()
    out = F.max_pool2d(torch_x, (3, 3), (2, 1), (1, 1), ceil_mode=True)
    dy = np.random.default_rng(0).uniform(1, 2, out.shape).astype(np.float32)
    out.backward(torch.from_numpy(dy))
    graph = pool_grad_graph("max", x.shape, **attrs)
    expected = torch_x.grad.numpy()
    reference = run_reference(graph, {}, {"x": x, "dy": dy})["dx"]
    np.testing.assert_array_equal(reference, expected)
    actual = run_plan(generate(graph), simulator(), {}, {"x": x, "dy": dy}, poison=True)["dx"]
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_gradient_matches_pytorch_in_ceil_mode(count_include_pad: bool) -> None:
    """The divisor of a ceil-mode window past the padded input, with and without the padding
    counted (PyTorch's autograd as the oracle)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    torch_x = torch.from_numpy(x).requires_grad_()
    out = F.avg_pool2d(torch_x, (3, 2), (2, 2), (1, 1), ceil_mode=True,
                       count_include_pad=count_include_pad)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(torch.from_numpy(dy))
    graph = pool_grad_graph("avg", x.shape, kernel=(3, 2), stride=(2, 2), padding=(1, 1),
                            ceil_mode=True, count_include_pad=count_include_pad)
    actual = run_plan(generate(graph), simulator(), {}, {"x": x, "dy": dy}, poison=True)["dx"]
    np.testing.assert_allclose(actual, torch_x.grad.numpy(), rtol=1e-6, atol=1e-6)
