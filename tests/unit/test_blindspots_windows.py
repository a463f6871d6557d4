"""Sliding windows off the diagonal: H != W, asymmetric kernels, strides, dilations and pads.

Issue 13's mutation run found that every window test was square and symmetric, so a mutant
that checked only the height, or read the left pad where the right one belongs, survived. The
properties here draw height and width (and every per-axis attribute) independently, sizes that
the window divides exactly as well as ragged ones, and compare the registry's shape rule and
NumPy reference with loops written out by hand. The error tests check each axis alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netc.ir import Attrs, TensorType
from netc.ops import REGISTRY, ShapeError
from netc.ops.builder import make_attrs
from netc.ops.windows import Window

pytestmark = pytest.mark.unit


def _type(*shape: int | str) -> TensorType:
    return TensorType("f32", tuple(shape))


def _infer(op: str, x: TensorType, **values: Any) -> TensorType:
    return REGISTRY[op].infer(make_attrs(op, values, [x]), [x])


def _run(op: str, x: np.ndarray, *params: np.ndarray, **values: Any) -> np.ndarray:
    attrs = make_attrs(op, values, [_type(*x.shape)])
    return np.asarray(REGISTRY[op].reference(attrs, x, *params))


def _out(size: int, before: int, after: int, kernel: int, stride: int, dilation: int) -> int:
    """PyTorch's floor rule, written out for one axis."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def _naive_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                stride: tuple[int, int], dilation: tuple[int, int],
                pads: tuple[int, int, int, int], groups: int) -> np.ndarray:
    """Cross-correlation by loops over output pixels and kernel taps (float64)."""
    top, left, bottom, right = pads
    batch, _, height, width = x.shape
    filters, per_group, kernel_h, kernel_w = weight.shape
    out_h = _out(height, top, bottom, kernel_h, stride[0], dilation[0])
    out_w = _out(width, left, right, kernel_w, stride[1], dilation[1])
    y = np.zeros((batch, filters, out_h, out_w))
    per_filter_group = filters // groups
    for f in range(filters):
        g = f // per_filter_group
        for oh in range(out_h):
            for ow in range(out_w):
                total = np.zeros(batch)
                for i in range(kernel_h):
                    h = oh * stride[0] + i * dilation[0] - top
                    if not 0 <= h < height:
                        continue
                    for j in range(kernel_w):
                        w = ow * stride[1] + j * dilation[1] - left
                        if not 0 <= w < width:
                            continue
                        total += x[:, g * per_group:(g + 1) * per_group, h, w].astype(
                            np.float64) @ weight[f, :, i, j].astype(np.float64)
                y[:, f, oh, ow] = total + (0.0 if bias is None else bias[f])
    return y


def _naive_pool(x: np.ndarray, kind: str, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> np.ndarray:
    """Max (padding never wins) or mean over the real elements of each window, by loops."""
    batch, channels, height, width = x.shape
    out_h = _out(height, padding[0], padding[0], kernel[0], stride[0], 1)
    out_w = _out(width, padding[1], padding[1], kernel[1], stride[1], 1)
    y = np.zeros((batch, channels, out_h, out_w))
    for oh in range(out_h):
        for ow in range(out_w):
            h0, w0 = oh * stride[0] - padding[0], ow * stride[1] - padding[1]
            window = x[:, :, max(h0, 0):min(h0 + kernel[0], height),
                       max(w0, 0):min(w0 + kernel[1], width)].astype(np.float64)
            y[:, :, oh, ow] = window.max(axis=(2, 3)) if kind == "max" else window.mean(
                axis=(2, 3))
    return y


def _compare(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    bad = ~np.isclose(actual, expected, rtol=1e-5, atol=atol)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements differ; largest difference "
                           f"{np.abs(actual - expected).max():.3g}")


# Strategies ---------------------------------------------------------------------------------

@st.composite
def axis(draw: st.DrawFn, exact: bool) -> tuple[int, int, int, int, int, int]:
    """(size, kernel, stride, dilation, pad before, pad after) for one axis; `exact`: the
    window steps end exactly on the last (padded) element, else any size that fits."""
    kernel, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(
        st.integers(1, 2))
    before, after = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    effective = dilation * (kernel - 1) + 1
    smallest = max(1, effective - before - after)
    if exact:
        steps = draw(st.integers(0, 3))
        size = max(smallest, effective + steps * stride - before - after)
    else:
        size = draw(st.integers(smallest, smallest + 8))
    return size, kernel, stride, dilation, before, after


@st.composite
def conv_cases(draw: st.DrawFn) -> dict[str, Any]:
    height_axis = draw(axis(exact=draw(st.booleans())))
    width_axis = draw(axis(exact=draw(st.booleans())))
    (height, kernel_h, stride_h, dilation_h, top, bottom) = height_axis
    (width, kernel_w, stride_w, dilation_w, left, right) = width_axis
    padding: Any = draw(st.sampled_from(["four", "pair", "int", "same"]))
    if padding == "four":  # the canonical (top, left, bottom, right), all four independent
        padding = pads = (top, left, bottom, right)
    elif padding == "same":
        stride_h = stride_w = 1
        total_h, total_w = dilation_h * (kernel_h - 1), dilation_w * (kernel_w - 1)
        pads = (total_h // 2, total_w // 2, total_h - total_h // 2, total_w - total_w // 2)
    elif padding == "int":
        padding = top
        pads = (top, top, top, top)
    else:
        padding = (top, left)
        pads = (top, left, top, left)
    # Re-check that the window fits with the pads finally chosen.
    height = max(height, dilation_h * (kernel_h - 1) + 1 - pads[0] - pads[2])
    width = max(width, dilation_w * (kernel_w - 1) + 1 - pads[1] - pads[3])
    groups = draw(st.sampled_from([1, 2]))
    return dict(shape=(draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)), height, width),
                filters=groups * draw(st.integers(1, 2)), kernel=(kernel_h, kernel_w),
                stride=(stride_h, stride_w), dilation=(dilation_h, dilation_w),
                padding=padding, pads=pads, groups=groups, bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@st.composite
def pool_cases(draw: st.DrawFn) -> dict[str, Any]:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    sizes = []
    for k, s, p in zip(kernel, stride, padding):
        smallest = max(1, k - 2 * p)
        if draw(st.booleans()):  # the windows tile the padded input exactly
            sizes.append(max(smallest, k + draw(st.integers(0, 3)) * s - 2 * p))
        else:
            sizes.append(draw(st.integers(smallest, smallest + 8)))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes),
                kernel=kernel, stride=stride, padding=padding,
                kind=draw(st.sampled_from(["max", "avg"])), seed=draw(st.integers(0, 2**16)))


# Properties ---------------------------------------------------------------------------------

@given(conv_cases())
@example(dict(shape=(1, 1, 3, 8), filters=1, kernel=(1, 3), stride=(1, 2), dilation=(1, 1),
              padding=(0, 1), pads=(0, 1, 0, 1), groups=1, bias=False, seed=0))
@example(dict(shape=(1, 2, 7, 4), filters=2, kernel=(2, 3), stride=(1, 1), dilation=(2, 1),
              padding="same", pads=(1, 1, 1, 1), groups=2, bias=True, seed=1))
def test_conv2d_off_the_diagonal_matches_loops(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    x = rng.uniform(-1, 1, case["shape"]).astype(np.float32)
    channels = case["shape"][1]
    weight = rng.uniform(-1, 1, (case["filters"], channels // case["groups"], *case["kernel"])
                         ).astype(np.float32)
    bias = rng.uniform(-1, 1, case["filters"]).astype(np.float32) if case["bias"] else None
    values = {k: case[k] for k in ("filters", "kernel", "stride", "dilation", "padding",
                                   "groups", "bias")}
    attrs = make_attrs("conv2d", values, [_type(*x.shape)])
    assert attrs["padding"] == case["pads"]  # (top, left, bottom, right)
    expected = _naive_conv(x, weight, bias, case["stride"], case["dilation"], case["pads"],
                           case["groups"])
    inferred = _infer("conv2d", _type("N", *x.shape[1:]), **values)
    assert inferred.shape == ("N", *expected.shape[1:])
    params = (weight,) if bias is None else (weight, bias)
    _compare(_run("conv2d", x, *params, **values), expected, atol=1e-5)


@given(pool_cases())
@example(dict(shape=(1, 1, 2, 6), kernel=(1, 3), stride=(1, 3), padding=(0, 1), kind="avg",
              seed=0))
@example(dict(shape=(1, 1, 6, 2), kernel=(3, 1), stride=(2, 1), padding=(1, 0), kind="max",
              seed=0))
def test_pools_off_the_diagonal_match_loops(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    # Negative values, so that a padded zero would win a max.
    x = rng.uniform(-2, -0.5, case["shape"]).astype(np.float32)
    op = "maxpool2d" if case["kind"] == "max" else "avgpool2d"
    values: dict[str, Any] = {k: case[k] for k in ("kernel", "stride", "padding")}
    if op == "avgpool2d":
        values["count_include_pad"] = False  # what _naive_pool computes
    expected = _naive_pool(x, case["kind"], case["kernel"], case["stride"], case["padding"])
    inferred = _infer(op, _type("N", *x.shape[1:]), **values)
    assert inferred.shape == ("N", *expected.shape[1:])
    _compare(_run(op, x, **values), expected, atol=1e-6)


# Errors, one axis at a time -----------------------------------------------------------------

@pytest.mark.parametrize(("op", "shape", "values"), [
    # Only the width is too small (the height has room to spare) ...
    ("conv2d", (1, 1, 9, 2), {"filters": 1, "kernel": (2, 3)}),
    ("conv2d", (1, 1, 9, 4), {"filters": 1, "kernel": (1, 3), "dilation": (1, 2)}),
    ("maxpool2d", (1, 1, 9, 2), {"kernel": (1, 3)}),
    ("avgpool2d", (1, 1, 8, 3), {"kernel": (2, 4), "stride": 1}),
    # ... and only the height.
    ("conv2d", (1, 1, 2, 9), {"filters": 1, "kernel": (3, 2)}),
    ("maxpool2d", (1, 1, 2, 9), {"kernel": (3, 1)}),
])
def test_a_window_that_does_not_fit_on_one_axis_is_an_error(
        op: str, shape: tuple[int, ...], values: dict[str, Any]) -> None:
    with pytest.raises(ShapeError, match="does not fit"):
        _infer(op, _type(*shape), **values)


@pytest.mark.parametrize(("op", "shape", "values", "expected"), [
    # Exactly fits on the short axis: one output column.
    ("conv2d", (1, 1, 9, 3), {"filters": 1, "kernel": (2, 3)}, (1, 1, 8, 1)),
    ("maxpool2d", (1, 1, 9, 3), {"kernel": (1, 3)}, (1, 1, 9, 1)),
    # Padding makes room on the width only.
    ("conv2d", (1, 1, 9, 1), {"filters": 1, "kernel": (1, 3), "padding": (0, 1)}, (1, 1, 9, 1)),
])
def test_a_window_that_just_fits_is_not_an_error(op: str, shape: tuple[int, ...],
                                                 values: dict[str, Any],
                                                 expected: tuple[int, ...]) -> None:
    assert _infer(op, _type(*shape), **values).shape == expected


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize(("kernel", "padding", "allowed"), [
    ((3, 2), (0, 2), False),  # width pad 2 > 2 // 2 (but not > the kernel width 2)
    ((3, 2), (0, 1), True),
    ((4, 3), (0, 2), False),  # 2 > 3 // 2
    ((4, 3), (2, 1), True),
    ((2, 3), (2, 0), False),  # height pad 2 > 2 // 2
    ((2, 3), (1, 1), True),
    ((5, 1), (2, 1), False),  # a width kernel of 1 allows no width padding
])
def test_pool_padding_at_most_half_the_kernel_on_each_axis(op: str, kernel: tuple[int, int],
                                                           padding: tuple[int, int],
                                                           allowed: bool) -> None:
    x = _type("N", 2, 11, 13)
    if allowed:
        y = _infer(op, x, kernel=kernel, padding=padding, stride=1)
        assert y.shape == ("N", 2, 11 + 2 * padding[0] - kernel[0] + 1,
                           13 + 2 * padding[1] - kernel[1] + 1)
    else:
        with pytest.raises(ShapeError, match="at most half"):
            _infer(op, x, kernel=kernel, padding=padding, stride=1)


def test_conv2d_filters_not_divisible_by_groups_is_an_error() -> None:
    with pytest.raises(ShapeError, match="needs filters divisible by 3") as caught:
        _infer("conv2d", _type("N", 6, 8, 8), filters=4, kernel=3, groups=3)
    assert "filters=4" in str(caught.value) and "[N, 6, 8, 8]" in str(caught.value)
    # Channels and filters both divisible: fine; channels not divisible: its own error.
    assert _infer("conv2d", _type("N", 6, 8, 8), filters=9, kernel=3, groups=3).shape == (
        "N", 9, 6, 6)
    with pytest.raises(ShapeError, match="input channels divisible by 4"):
        _infer("conv2d", _type("N", 6, 8, 8), filters=8, kernel=3, groups=4)


def test_window_defaults_for_attributes_left_out() -> None:
    # Backends may build a window from a partial record: stride defaults to the kernel,
    # dilation to 1 and padding to 0 on every side.
    window = Window.from_attrs("maxpool2d", Attrs(kernel=(2, 3)))
    assert (window.kernel, window.stride, window.dilation, window.padding) == (
        (2, 3), (2, 3), (1, 1), (0, 0, 0, 0))
    assert window.output_size("maxpool2d", _type(1, 1, 4, 9)) == (2, 3)
    dilated = Window.from_attrs("conv2d", Attrs(kernel=(2, 3), stride=1, dilation=(3, 2)))
    assert dilated.effective_kernel() == (4, 5)
    assert dilated.padding == (0, 0, 0, 0)


@pytest.mark.parametrize(("op", "per_output"), [("maxpool2d", 2 * 3), ("avgpool2d", 2 * 3 + 1)])
def test_pool_flops_use_both_kernel_axes(op: str, per_output: int) -> None:
    x = _type(2, 3, 8, 9)
    attrs = make_attrs(op, {"kernel": (2, 3)}, [x])
    output = REGISTRY[op].infer(attrs, [x]).shape
    assert output == (2, 3, 4, 3)
    assert REGISTRY[op].flops(attrs, [x.shape], output) == 2 * 3 * 4 * 3 * per_output


def test_global_avgpool_flops_read_every_input_and_write_every_output() -> None:
    opdef = REGISTRY["global_avgpool"]
    x = _type(2, 3, 5, 7)
    attrs = make_attrs("global_avgpool", {}, [x])
    assert opdef.flops(attrs, [x.shape], (2, 3, 1, 1)) == 2 * 3 * 5 * 7 + 2 * 3


@pytest.mark.parametrize("op", ["conv2d", "maxpool2d"])
def test_a_zero_kernel_is_refused_by_the_attribute_bound(op: str) -> None:
    values: dict[str, Any] = {"kernel": (0, 2)} | ({"filters": 1} if op == "conv2d" else {})
    with pytest.raises(ValueError, match=r"must be at least 1, got [\[(]0, 2[\])]"):
        make_attrs(op, values, [_type(1, 1, 5, 5)])


@pytest.mark.parametrize(("a", "b", "expected"), [
    ((5,), (5, 3), (3,)),  # a vector on the left is one row, dropped after
    ((2, 5), (5,), (2,)),  # on the right, one column
    ((5,), (5,), ()),
    (("N", 4, 5), (5, 3), ("N", 4, 3)),
])
def test_matmul_shapes_with_vectors(a: tuple[int | str, ...], b: tuple[int | str, ...],
                                    expected: tuple[int | str, ...]) -> None:
    x, y = _type(*a), _type(*b)
    assert REGISTRY["matmul"].infer(make_attrs("matmul", {}, [x, y]), [x, y]).shape == expected
