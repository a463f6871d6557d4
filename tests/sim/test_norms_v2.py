"""groupnorm, instancenorm and rmsnorm (`netc_norm_rows` in templates/rowwise.cuh) on the
simulator against the reference: ragged sizes, every row tile, fused neighbours, f16, NaN and
infinity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import netc
from netc.codegen.emit import generate
from netc.driver import CompileOptions, compile_graph, run_plan
from netc.reference import run_reference
from tests.sim.codegen_support import check_graph, seeds, simulator
from tests.sim.graph_builder import GraphBuilder, parallel, random_weights
from tests.sim.variants import LOW_PRECISION_ROW_TILES, ROW_TILES

pytestmark = pytest.mark.sim

SPATIAL = (1, 2, 31, 33, 127, 129)
"""Sizes around the warp and block sizes of ROW_TILES."""


@given(groups=st.sampled_from((1, 2, 3)), per_group=st.sampled_from((1, 2, 5)),
       spatial=st.sampled_from(SPATIAL), batch=st.sampled_from((1, 2, 3)), seed=seeds())
@example(groups=3, per_group=1, spatial=129, batch=2, seed=0)
@example(groups=1, per_group=5, spatial=1, batch=1, seed=0)
def test_groupnorm_matches_reference_for_every_row_tile(groups: int, per_group: int,
                                                         spatial: int, batch: int,
                                                         seed: int) -> None:
    shape = ("N", groups * per_group, spatial)
    graph, tiles = parallel("groupnorm", {"x": ("f32", shape)}, ROW_TILES, groups=groups)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


@given(channels=st.sampled_from((1, 3, 4)), height=st.sampled_from((1, 5, 31)),
       width=st.sampled_from((1, 33)), affine=st.booleans(), batch=st.sampled_from((1, 2)),
       seed=seeds())
@example(channels=3, height=31, width=33, affine=True, batch=2, seed=0)
def test_instancenorm_matches_reference_for_every_row_tile(channels: int, height: int,
                                                            width: int, affine: bool,
                                                            batch: int, seed: int) -> None:
    shape = ("N", channels, height, width)
    graph, tiles = parallel("instancenorm", {"x": ("f32", shape)}, ROW_TILES, affine=affine)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


@given(middle=st.sampled_from(((), (3,), (2, 5))), length=st.sampled_from((*SPATIAL, 1025)),
       batch=st.sampled_from((1, 2, 9)), seed=seeds())
@example(middle=(), length=1, batch=1, seed=0)
@example(middle=(3,), length=1025, batch=2, seed=0)
def test_rmsnorm_matches_reference_for_every_row_tile(middle: tuple[int, ...], length: int,
                                                      batch: int, seed: int) -> None:
    graph, tiles = parallel("rmsnorm", {"x": ("f32", ("N", *middle, length))}, ROW_TILES)
    check_graph(graph, tiles, batch=batch, seed=seed, shared_weights=True)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("op, shape, attrs", [
    ("groupnorm", ("N", 6, 33), {"groups": 2}),
    ("instancenorm", ("N", 3, 31), {"affine": True}),
    ("rmsnorm", ("N", 4, 129), {}),
])
def test_low_precision(dtype: str, op: str, shape: tuple[Any, ...],
                       attrs: dict[str, Any]) -> None:
    graph, tiles = parallel(op, {"x": (dtype, shape)}, LOW_PRECISION_ROW_TILES, **attrs)
    check_graph(graph, tiles, batch=2, shared_weights=True)


@pytest.mark.parametrize("level", [0, 2])
def test_fused_neighbours_and_pytorch(level: int) -> None:
    """conv -> (x * 2 + 1) -> groupnorm -> relu, and a dense -> rmsnorm -> gelu: the pointwise
    ops around the norms fuse into their kernels at -O2; every level matches PyTorch."""
    model = netc.loads("""
network fused {
    input image: f32[N, 3, 9, 9]
    x = conv2d(image, 6, kernel=3, padding=1, name="conv")
    y = groupnorm(x * 2.0 + 1.0, 3, name="gn") |> relu
    z = instancenorm(y, affine=true, name="inorm") |> flatten
    output out = dense(z, 33, name="fc") |> rmsnorm(eps=1e-5, name="rms") |> gelu
}
""")
    rng = np.random.default_rng(0)
    weights = {name: rng.uniform(0.5, 1.5, array.shape).astype(array.dtype)
               if array.dtype == np.float32 else array
               for name, array in model.init_weights(seed=1).items()}
    image = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    actual = model.compile("cudasim", weights, level=level)({"image": image})["out"]
    t = {name: torch.from_numpy(array) for name, array in weights.items()}
    with torch.no_grad():
        x = torch.nn.functional.conv2d(torch.from_numpy(image), t["conv.weight"], t["conv.bias"],
                                       padding=1)
        y = torch.relu(torch.nn.functional.group_norm(x * 2 + 1, 3, t["gn.weight"],
                                                      t["gn.bias"]))
        z = torch.nn.functional.instance_norm(y, weight=t["inorm.weight"],
                                              bias=t["inorm.bias"]).flatten(1)
        h = torch.nn.functional.linear(z, t["fc.weight"], t["fc.bias"])
        expected = torch.nn.functional.gelu(
            torch.nn.functional.rms_norm(h, (33,), t["rms.weight"], eps=1e-5)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    if level == 2:  # the pointwise neighbours really are fused into the norms' kernels
        launches = compile_graph(model.graph, CompileOptions(level=2)).plan.launches
        assert len(launches) < len(model.graph.compute_nodes)


@pytest.mark.parametrize("op, attrs", [("groupnorm", {"groups": 2}),
                                       ("instancenorm", {"affine": True}), ("rmsnorm", {})])
def test_nan_and_infinity_propagate_as_in_pytorch(op: str, attrs: dict[str, Any]) -> None:
    builder = GraphBuilder("special")
    x = builder.input("x", "f32", ("N", 4, 5))
    builder.output("y", builder.op(op, x, name="norm", **attrs))
    graph = builder.build()
    weights = random_weights(graph, np.random.default_rng(1))
    values = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    values[0, 0, 1] = np.nan
    values[1, 3, 2] = np.inf
    values[2, 1, 4] = -np.inf
    actual = run_plan(generate(graph), simulator(), weights, {"x": values}, poison=True)["y"]
    expected = run_reference(graph, weights, {"x": values})["y"]
    t = {name: torch.from_numpy(array) for name, array in weights.items()}
    tx = torch.from_numpy(values)
    if op == "groupnorm":
        by_torch = torch.nn.functional.group_norm(tx, 2, t["norm.weight"], t["norm.bias"])
    elif op == "instancenorm":
        by_torch = torch.nn.functional.instance_norm(tx, weight=t["norm.weight"],
                                                     bias=t["norm.bias"])
    else:
        by_torch = torch.nn.functional.rms_norm(tx, (5,), t["norm.weight"], eps=1e-6)
    np.testing.assert_array_equal(np.isnan(expected), np.isnan(by_torch.numpy()))
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
