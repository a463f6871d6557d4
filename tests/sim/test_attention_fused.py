"""The fused attention kernel (templates/attention.cuh) on the simulator: `attention(q, k, v[,
mask])`, causal or not, bool and additive masks broadcast in every way the kernel takes, against the reference for ragged lengths (1, 31, 33, ... around
its 16-row and 32-key tiles), every head size the catalog draws, f32/f16/bf16, a given scale,
NaN and infinity where PyTorch puts them; outputs poisoned before each run. Attention the
kernel does not take (a mask broadcast over three batch strides, broadcast q/k/v batch dims, a
head of more than 128) runs as its decomposition, checked here to give the same results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.codegen.emit import generate
from netc.driver import run_plan
from netc.ir import Graph
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from tests.sim.codegen_support import TOLERANCE, check_graph, seeds, simulator
from tests.sim.variants import ATTENTION_HEADS, ATTENTION_MASKED_HEADS, catalog

pytestmark = pytest.mark.sim

LENGTHS = (1, 2, 15, 16, 17, 31, 32, 33, 64, 65)


def _graph(dtype: str, batch: tuple[int | str, ...], length: int, keys: int, heads: tuple[int, int],
           causal: bool, scale: float | None = None) -> Graph:
    features, value_features = heads
    builder = GraphBuilder("attention")
    q = builder.input("q", dtype, (*batch, length, features))
    k = builder.input("k", dtype, (*batch, keys, features))
    v = builder.input("v", dtype, (*batch, keys, value_features))
    builder.output("y", builder.op("attention", q, k, v, causal=causal, scale=scale))
    return builder.build()


def _fused(plan_kernels: tuple[str, ...]) -> bool:
    return any(name.startswith("netc_attention_") for name in plan_kernels)


@settings(deadline=None)
@given(length=st.sampled_from(LENGTHS), keys=st.sampled_from(LENGTHS),
       heads=st.sampled_from(ATTENTION_HEADS), causal=st.booleans(), seed=seeds())
def test_fused_attention_matches_the_reference(length: int, keys: int, heads: tuple[int, int],
                                               causal: bool, seed: int) -> None:
    plan = check_graph(_graph("f32", ("N", 3), length, keys, heads, causal), seed=seed)
    assert _fused(plan.kernels) and len(plan.launches) == 1


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_accumulates_in_float(dtype: str, causal: bool) -> None:
    plan = check_graph(_graph(dtype, ("N",), 33, 47, ATTENTION_HEADS[-1], causal), seed=3)
    assert _fused(plan.kernels)


def test_a_given_scale_and_pytorch_as_the_oracle() -> None:
    graph = _graph("f32", ("N", 2), 33, 40, (24, 40), True, scale=0.3)
    plan = generate(graph)
    rng = np.random.default_rng(7)
    inputs = {name: rng.standard_normal(graph[name].type.concrete({"N": 3})).astype(np.float32)
              for name in ("q", "k", "v")}
    actual = run_plan(plan, simulator(), {}, inputs)["y"]
    # PyTorch's causal mask is the top-left tril of ones(L, S), as the reference's.
    mask = torch.ones(33, 40, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(inputs[n]) for n in ("q", "k", "v")), attn_mask=mask,
        scale=0.3).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_nan_and_infinity_propagate_as_in_the_reference(causal: bool) -> None:
    graph = _graph("f32", ("N",), 20, 36, (33, 7), causal)
    plan = generate(graph)
    rng = np.random.default_rng(11)
    inputs = {name: rng.standard_normal(graph[name].type.concrete({"N": 2})).astype(np.float32)
              for name in ("q", "k", "v")}
    inputs["q"][0, 3, 5] = np.nan            # a NaN score: row 3 of item 0 is NaN
    inputs["k"][1, 30, 2] = np.inf           # an infinite score: NaN where it is seen
    inputs["q"][1, 4, :] = -np.inf           # every score -inf or NaN on row 4
    inputs["v"][0, 0, 6] = np.inf            # an infinite value: inf or NaN in its column
    actual = run_plan(plan, simulator(), {}, inputs)["y"]
    expected = run_reference(graph, {}, inputs)["y"]
    assert np.isnan(expected).any() and np.isinf(expected).any()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


MASKS = {
    "scores": ("N", 3, "L", "S"), "per_item": ("N", 1, "L", "S"), "per_head": (3, "L", "S"),
    "shared": ("L", "S"), "keys": (1, "S"), "row": ("L", 1)}
"""Mask shapes broadcast to the scores [N, 3, L, S] ("L", "S": the lengths drawn)."""


@settings(deadline=None)
@given(length=st.sampled_from(LENGTHS), keys=st.sampled_from(LENGTHS),
       heads=st.sampled_from(ATTENTION_MASKED_HEADS), shape=st.sampled_from(list(MASKS)),
       kind=st.sampled_from(["bool", "add"]), causal=st.booleans(), seed=seeds())
def test_fused_attention_with_a_mask_matches_the_reference(
        length: int, keys: int, heads: tuple[int, int], shape: str, kind: str, causal: bool,
        seed: int) -> None:
    features, value_features = heads
    builder = GraphBuilder("masked")
    q = builder.input("q", "f32", ("N", 3, length, features))
    k = builder.input("k", "f32", ("N", 3, keys, features))
    v = builder.input("v", "f32", ("N", 3, keys, value_features))
    dims = tuple({"L": length, "S": keys}.get(d, d) for d in MASKS[shape])
    mask = builder.input("m", "bool" if kind == "bool" else "f32", dims)
    builder.output("y", builder.op("attention", q, k, v, mask, causal=causal))
    graph = builder.build()
    plan = generate(graph)
    assert _fused(plan.kernels) and len(plan.launches) == 1
    assert set(plan.kernels) <= set(catalog()), "the kernel is in the ptxas catalog"
    rng = np.random.default_rng(seed)
    inputs = {name: rng.standard_normal(graph[name].type.concrete({"N": 2})).astype(np.float32)
              for name in ("q", "k", "v")}
    # A bool mask attends where true (about 70%), an additive one shifts the scores.
    mask_shape = graph["m"].type.concrete({"N": 2})
    inputs["m"] = (rng.random(mask_shape) < 0.7 if kind == "bool"
                   else rng.standard_normal(mask_shape).astype(np.float32))
    actual = run_plan(plan, simulator(), {}, inputs)["y"]
    expected = run_reference(graph, {}, inputs)["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_a_row_that_may_attend_to_nothing_gives_zeros(causal: bool) -> None:
    builder = GraphBuilder("nothing")
    q, k, v = (builder.input(name, "f32", ("N", 2, 40, 8)) for name in "qkv")
    mask = builder.input("m", "bool", (40, 40))
    builder.output("y", builder.op("attention", q, k, v, mask, causal=causal))
    graph = builder.build()
    rng = np.random.default_rng(2)
    inputs = {name: rng.standard_normal((2, 2, 40, 8)).astype(np.float32) for name in "qkv"}
    inputs["m"] = rng.random((40, 40)) > 0.5
    inputs["m"][[0, 17, 39]] = False  # rows 0, 17 and 39 attend to nothing
    plan = generate(graph)
    assert _fused(plan.kernels)
    actual = run_plan(plan, simulator(), {}, inputs)["y"]
    expected = run_reference(graph, {}, inputs)["y"]
    assert (expected[:, :, [0, 17, 39]] == 0).all()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["mask", "broadcast", "large_head"])
def test_what_the_kernel_does_not_take_runs_as_the_decomposition(case: str) -> None:
    builder = GraphBuilder("fallback")
    features = 136 if case == "large_head" else 16
    # A mask over [N, 2, 3, ...] batch dims that broadcasts along the middle one: three
    # strides, where the kernel takes two.
    batch: tuple[int | str, ...] = ("N", 2, 3) if case == "mask" else ("N", 2)
    q = builder.input("q", "f32", (*batch, 9, features))
    shared = (1, *batch[1:]) if case == "broadcast" else batch
    k = builder.input("k", "f32", (*shared, 12, features))
    v = builder.input("v", "f32", (*shared, 12, 8))
    mask = [builder.input("m", "bool", ("N", 1, 3, 9, 12))] if case == "mask" else []
    builder.output("y", builder.op("attention", q, k, v, *mask))
    graph = builder.build()
    rng = np.random.default_rng(5)
    inputs = {node.id: (rng.random(node.type.concrete({"N": 2})) > 0.3 if node.type.dtype == "bool"
                        else rng.standard_normal(node.type.concrete({"N": 2})).astype(np.float32))
              for node in graph.inputs}
    plan = generate(graph)
    assert not _fused(plan.kernels)
    actual = run_plan(plan, simulator(), {}, inputs)["y"]
    np.testing.assert_allclose(actual, run_reference(graph, {}, inputs)["y"],
                               rtol=TOLERANCE["f32"][0], atol=TOLERANCE["f32"][1])
