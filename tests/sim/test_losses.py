"""The losses (netc.ops.losses) as generated CUDA on the simulator against the reference:
ragged batches and class counts, spatial dims, ignored and out-of-range targets, label
smoothing, NaN and infinity, f16 logits (accumulated in f32), outputs poisoned before each
run; and the arena never puts a result in place of an input of another element size."""

from __future__ import annotations

import numpy as np
import pytest

import netc
from netc.codegen.emit import generate
from netc.driver import CompileOptions, compile_graph, run_plan
from netc.ir import DTYPE_BYTES, Graph
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from tests.sim.codegen_support import simulator

pytestmark = pytest.mark.sim

BATCHES = (1, 2, 31, 33, 129)


def class_graph(classes: int, spatial: tuple[int, ...]) -> Graph:
    """Every class-loss form on one f32 and one f16 input of [N, C, ...]."""
    builder = GraphBuilder("losses")
    logits = builder.input("logits", "f32", ("N", classes, *spatial))
    half = builder.input("half", "f16", ("N", classes, *spatial))
    target = builder.input("target", "i64", ("N", *spatial))
    small = builder.input("small", "i32", ("N", *spatial))
    builder.output("plain", builder.op("cross_entropy", logits, target))
    builder.output("smoothed", builder.op("cross_entropy", logits, target, label_smoothing=0.2))
    builder.output("ignoring", builder.op("cross_entropy", logits, small, ignore_index=1))
    builder.output("half", builder.op("cross_entropy", half, target, label_smoothing=0.1))
    builder.output("nll", builder.op("nll_loss", builder.op("log_softmax", logits, axis=1),
                                     target))
    return builder.build()


def pair_graph(shape: tuple[int, ...]) -> Graph:
    builder = GraphBuilder("pairs")
    a = builder.input("a", "f32", ("N", *shape))
    b = builder.input("b", "f32", ("N", *shape))
    half = builder.input("h", "f16", ("N", *shape))
    for op in ("mse_loss", "l1_loss", "bce_with_logits"):
        builder.output(op, builder.op(op, a, b))
    builder.output("half_mse", builder.op("mse_loss", half, builder.op("cast", b, dtype="f16")))
    return builder.build()


def class_inputs(classes: int, spatial: tuple[int, ...], batch: int, seed: int,
                 special: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((batch, classes, *spatial))).astype(np.float32)
    target = rng.integers(0, classes, (batch, *spatial))
    target[rng.random(target.shape) < 0.25] = -100
    small = rng.integers(0, classes, (batch, *spatial)).astype(np.int32)
    if special:
        logits.flat[int(rng.integers(0, logits.size))] = np.nan
        logits.flat[int(rng.integers(0, logits.size))] = -np.inf
        target.flat[int(rng.integers(0, target.size))] = classes  # out of range: NaN
    return {"logits": logits, "half": logits.astype(np.float16), "target": target,
            "small": small}


def check(graph: Graph, inputs: dict[str, np.ndarray], level: int) -> None:
    plan = compile_graph(graph, CompileOptions(level=level)).plan if level else generate(graph)
    actual = run_plan(plan, simulator(), {}, inputs, poison=True)
    expected = run_reference(graph, {}, inputs)
    for name, value in expected.items():
        assert actual[name].shape == () and actual[name].dtype == np.float32, name
        # The loss is f32 whatever the logits' dtype (f16 accumulates in f32): f32's bound.
        np.testing.assert_allclose(actual[name], value, rtol=2e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("classes, spatial", [(1, ()), (33, ()), (129, ()), (5, (3,)),
                                              (31, (2, 3))])
@pytest.mark.parametrize("level", [0, 2])
def test_class_losses_match_reference(classes: int, spatial: tuple[int, ...],
                                      level: int) -> None:
    graph = class_graph(classes, spatial)
    for index, batch in enumerate(BATCHES):
        check(graph, class_inputs(classes, spatial, batch, index, special=False), level)


def test_special_values_and_all_ignored_match_reference() -> None:
    graph = class_graph(7, (2,))
    special = class_inputs(7, (2,), 5, 1, special=True)
    check(graph, special, 2)
    ignored = class_inputs(7, (2,), 3, 2, special=False)
    ignored["target"][:] = -100
    ignored["small"][:] = 1
    expected = run_reference(graph, {}, ignored)
    assert np.isnan(expected["plain"]) and np.isnan(expected["ignoring"])
    check(graph, ignored, 2)


@pytest.mark.parametrize("shape", [(), (31,), (4, 33)])
def test_pair_losses_match_reference(shape: tuple[int, ...]) -> None:
    graph = pair_graph(shape)
    for index, batch in enumerate(BATCHES):
        rng = np.random.default_rng(index)
        a = (4 * rng.standard_normal((batch, *shape))).astype(np.float32)
        b = rng.random((batch, *shape)).astype(np.float32)
        if index == 2:
            a.flat[0], a.flat[-1] = np.inf, -np.inf
        check(graph, {"a": a, "b": b, "h": a.astype(np.float16)}, 2)


def test_a_network_with_a_scalar_loss_output_runs_on_cudasim() -> None:
    model = netc.loads("""network loss {
    input x: f32[N, 10]
    input label: i64[N]
    output loss = cross_entropy(dense(x, 10, name="fc"), label, label_smoothing=0.1)
}
""")
    weights = model.init_weights(seed=2)
    rng = np.random.default_rng(5)
    inputs = {"x": rng.standard_normal((33, 10)).astype(np.float32),
              "label": rng.integers(0, 10, 33)}
    actual = model.run(inputs, weights, backend="cudasim")["loss"]
    expected = model.run(inputs, weights, backend="reference")["loss"]
    assert actual.shape == () and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=2e-4)


def test_no_result_is_in_place_of_an_input_of_another_element_size() -> None:
    """`ne` of i64 ids into a bool in place of the ids let one thread's byte clobber ids other
    threads had still to read (nll_loss's count of valid targets came out wrong)."""
    builder = GraphBuilder("in_place")
    ids = builder.op("cast", builder.input("t", "i32", ("N",)), dtype="i64")
    valid = builder.op("ne", ids, other=-100.0)
    count = builder.op("sum", builder.op("cast", valid, dtype="f32"), axis=0)
    builder.output("count", count)
    graph = builder.build()
    plan = compile_graph(graph, CompileOptions(level=2)).plan
    sizes = {b.name: DTYPE_BYTES[b.dtype] for b in plan.buffers}
    for buffer in plan.buffers:
        for candidate in buffer.in_place:
            assert sizes[buffer.name] == sizes[candidate], buffer
    for batch in (4, 129):
        inputs = {"t": np.arange(batch, dtype=np.int32)}
        actual = run_plan(plan, simulator(), {}, inputs, poison=True)
        assert float(actual["count"]) == batch
