"""Integer arithmetic and reductions through the CUDA path on the simulator: the exact
generated kernels against the reference, bit for bit, at ragged sizes, outputs poisoned before
each run, unfused and through the passes (fused chains, reduction prologues): values over the
whole i32 / i64 range so that sums, products and negations wrap around, integer numbers beyond
float precision, rows long enough to span several warps; and `pow` with a tensor exponent.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.backends import prepare
from netc.ops.builder import GraphBuilder
from netc.reference import run_reference
from tests.sim.codegen_support import RAGGED
from tests.sim.test_int_bool import check
from tests.unit.test_int_arithmetic import integers

pytestmark = pytest.mark.sim


@given(st.sampled_from(("i32", "i64")), st.sampled_from(RAGGED), st.sampled_from((1, 3, 33)),
       st.integers(0, 2**32))
@settings(max_examples=6, deadline=None)
def test_integer_arithmetic_and_reductions_are_exact(dtype: str, columns: int, rows: int,
                                                     seed: int) -> None:
    rng = np.random.default_rng(seed)
    builder = GraphBuilder("integers")
    a = builder.input("a", dtype, ("N", columns))
    b = builder.input("b", dtype, (1, columns))
    product = builder.op("mul", a, b)
    shifted = builder.op("sub", builder.op("add", product, builder.constant(-7.0, dtype)), b)
    extreme = builder.op("maximum", builder.op("neg", shifted), builder.op("abs", a))
    outputs = {
        "product": product,
        "shifted": shifted,
        "extreme": extreme,
        "low": builder.op("minimum", a, b),
        "sum_rows": builder.op("sum", shifted, axis=(1,), keepdim=False),
        "sum_all": builder.op("sum", a, axis=(0, 1), keepdim=True),
        "sum_batch": builder.op("sum", builder.op("abs", a), axis=(0,), keepdim=False),
        "amax": builder.op("amax", extreme, axis=(1,), keepdim=True),
        "amin": builder.op("amin", a, axis=(0, 1), keepdim=False),
        "argmax": builder.op("argmax", shifted, axis=1, keepdim=False),
    }
    for name, value in outputs.items():
        builder.output(name, value)
    inputs = {"a": integers(rng, dtype, (rows, columns)), "b": integers(rng, dtype, (1, columns))}
    inputs["a"][0, -1] = inputs["a"][0, 0]  # a tie: argmax keeps the first
    check(builder.build(), inputs)


@pytest.mark.parametrize("dtype", ("i32", "i64"))
def test_long_rows_reduce_exactly_across_warps(dtype: str) -> None:
    """Rows of 5,000 elements: a block per row, partials combined through shared memory."""
    builder = GraphBuilder("long_rows")
    x = builder.input("x", dtype, ("N", 5000))
    for op in ("sum", "amax", "amin"):
        builder.output(op, builder.op(op, x, axis=(1,), keepdim=False))
    builder.output("argmax", builder.op("argmax", x, axis=1, keepdim=False))
    inputs = {"x": integers(np.random.default_rng(4), dtype, (3, 5000))}
    check(builder.build(), inputs)


def test_integer_numbers_beyond_float_precision_stay_exact_in_fused_code() -> None:
    """An i64 number of 2^40 - 1 (a float kernel argument would round it to 2^40) inside a
    fused chain, before a reduction (its prologue), and written to memory for a layout op
    (`expand` of a number: the fill kernel)."""
    builder = GraphBuilder("numbers")
    ids = builder.input("ids", "i64", ("N", 33))
    big = builder.op("add", builder.op("mul", ids, builder.constant(3.0, "i64")),
                     builder.constant(float(2**40 - 1), "i64"))
    builder.output("big", builder.op("sub", big, builder.constant(-(2.0**40) + 5, "i64")))
    builder.output("total", builder.op("sum", big, axis=(1,), keepdim=False))
    row = builder.op("expand", builder.constant(float(2**40 + 3), "i64"), dims=(33,))
    builder.output("filled", builder.op("add", ids, row))
    inputs = {"ids": np.random.default_rng(6).integers(-2**50, 2**50, size=(4, 33))}
    check(builder.build(), inputs)


def test_pow_with_a_tensor_exponent_runs_on_the_simulator() -> None:
    builder = GraphBuilder("power")
    x = builder.input("x", "f32", ("N", 33))
    e = builder.input("e", "f32", (33,))
    builder.output("y", builder.op("pow", x, e))
    builder.output("z", builder.op("pow", builder.op("relu", x), e))
    graph = builder.build()
    rng = np.random.default_rng(8)
    e_values = rng.uniform(-3, 3, size=33).astype(np.float32)
    e_values[:6] = [0.5, -0.5, 2.0, 0.0, 1.0, 3.0]
    inputs = {"x": rng.uniform(-4, 4, size=(5, 33)).astype(np.float32), "e": e_values}
    inputs["x"][0, :3] = [-np.inf, np.nan, 0.0]
    expected = run_reference(graph, {}, inputs)
    actual = prepare("cudasim", graph, {})(inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-6, equal_nan=True)
