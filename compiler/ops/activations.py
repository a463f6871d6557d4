"""Activations: elementwise ones from one table, and softmax / log_softmax along an axis.

An elementwise op of one tensor input is one `Unary` row (`register_unary` turns rows into
registry entries; `netc.ops.arithmetic` registers its math functions, `exp` to `pow`, the same
way). NaN and infinity follow PyTorch: a clamp, a max or a min of a NaN is NaN, so the CUDA
expressions compare with `<` / `>` (`netc_clamp` in templates/common.cuh), never with
`fminf` / `fmaxf`, which drop a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.ir import FLOAT_DTYPES, Attrs, TensorType
from netc.ops.gradients import Gradients, Vjp, both, elementwise, passed_where, scaled
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    Decomposition,
    OnnxForm,
    OpDef,
    OpDoc,
    ShapeError,
    per_element_flops,
    register,
    resolve_axis,
    same_type,
)

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (NumPy has no vectorised erf; `math.erf` is exact), as float32."""
    wide = np.asarray(x, dtype=np.float64)
    return np.asarray(_erf(wide), dtype=np.float64).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so large |x| neither overflows nor warns.
    decay = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + decay), decay / (1 + decay)).astype(np.float32)


def _gelu(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    # In float64, rounded once: PyTorch's formulas, without float32's intermediate rounding.
    wide = np.asarray(x, dtype=np.float64)
    if attrs["approximate"] == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (wide + 0.044715 * wide * wide * wide)
        with np.errstate(invalid="ignore", over="ignore"):
            return (0.5 * wide * (1.0 + np.tanh(inner))).astype(np.float32)
    cdf = 0.5 * (1.0 + np.asarray(_erf(wide / math.sqrt(2.0)), dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return (wide * cdf).astype(np.float32)


def _clip(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """torch.clamp: NaN stays NaN; with low > high everything is high."""
    return np.clip(x, None if low is None else np.float32(low),
                   None if high is None else np.float32(high)).astype(np.float32)


def _softplus(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    beta = np.float32(attrs["beta"])
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = x * beta
        smooth = np.log1p(np.exp(scaled)) / beta
    return np.where(scaled > np.float32(attrs["threshold"]), x, smooth).astype(np.float32)


def _elu(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(x > 0, x, np.float32(attrs["alpha"]) * np.expm1(x)).astype(np.float32)


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return _clip(x + np.float32(3), 0.0, 6.0) / np.float32(6)


def _hardswish(x: np.ndarray) -> np.ndarray:
    # x·clip(x + 3, 0, 6) / 6 in PyTorch's order: -inf·0 is NaN, 3.4e38·6 is inf there too.
    with np.errstate(invalid="ignore", over="ignore"):
        return (x * _clip(x + np.float32(3), 0.0, 6.0) / np.float32(6)).astype(np.float32)


@dataclass(frozen=True)
class Unary:
    """One elementwise op of one tensor input, as a row of a table."""

    name: str
    function: Callable[[Attrs, np.ndarray], np.ndarray] | None
    """The NumPy reference (float32 in, float32 out); None: computed by `decompose`."""
    flops_per_element: int
    """A convention (an exp or erf counts as one): for rough roofline estimates only."""
    summary: str
    expression: CudaExpression | None = None
    onnx: OnnxForm | None = None
    attrs: tuple[AttrSpec, ...] = ()
    decompose: Decomposition | None = None
    check: Callable[[Attrs], None] | None = None
    """Checks the attributes together (one at a time, `AttrSpec` does); raises `ShapeError`."""
    constraints: str = ""
    """What `check` requires, in words for docs/ops.md."""
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    """The dtypes x may have (`OpDef.dtypes`)."""
    vjp: Vjp | None = None
    """The vector-Jacobian product (`OpDef.vjp`); None: through `decompose`, if any."""


def _checked(check: Callable[[Attrs], None] | None
             ) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    if check is None:
        return same_type

    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        check(attrs)
        return inputs[0]
    return infer


def register_unary(rows: Sequence[Unary]) -> None:
    """Registers each row as a `pointwise` op typed like its input."""
    for row in rows:
        flops = row.flops_per_element
        extra: dict[str, Any] = {} if row.function is None else {"reference": row.function}
        register(OpDef(
            name=row.name,
            attrs=row.attrs,
            infer=_checked(row.check),
            flops=per_element_flops(flops),
            role="pointwise",
            summary=row.summary,
            doc=OpDoc(flops="out" if flops == 1 else f"{flops}·out", attrs=row.constraints),
            expression=row.expression,
            onnx=row.onnx,
            decompose=row.decompose,
            dtypes=row.dtypes,
            vjp=row.vjp,
            **extra,
        ))


def _silu_parts(builder: Composer, attrs: Attrs, x: str) -> str:
    return builder.op("mul", x, builder.op("sigmoid", x))


def _mish_parts(builder: Composer, attrs: Attrs, x: str) -> str:
    return builder.op("mul", x, builder.op("tanh", builder.op("softplus", x)))


def _gelu_parts(builder: Composer, attrs: Attrs, x: str) -> str:
    """0.5·x·(1 + erf(x/√2)), or with `approximate="tanh"` 0.5·x·(1 + tanh(√(2/π)·(x +
    0.044715·x³))): PyTorch's formulas, in the order its ONNX exporter writes them."""
    dtype = builder.type_of(x).dtype

    def times(value: str, factor: float) -> str:
        return builder.op("mul", value, builder.constant(factor, dtype))

    if attrs["approximate"] == "tanh":
        cube = builder.op("mul", builder.op("mul", x, x), x)
        inner = times(builder.op("add", x, times(cube, 0.044715)), math.sqrt(2.0 / math.pi))
        bend = builder.op("tanh", inner)
    else:
        bend = builder.op("erf", times(x, 1.0 / math.sqrt(2.0)))
    one_plus = builder.op("add", bend, builder.constant(1.0, dtype))
    return builder.op("mul", times(x, 0.5), one_plus)


def _clamp_parts(builder: Composer, attrs: Attrs, x: str) -> str:
    # maximum then minimum, as torch.clamp: with min > max every element is max.
    dtype = builder.type_of(x).dtype
    result = x
    if attrs["min"] is not None:
        result = builder.op("maximum", result, builder.constant(attrs["min"], dtype))
    if attrs["max"] is not None:
        result = builder.op("minimum", result, builder.constant(attrs["max"], dtype))
    return result


def _check_hardtanh(attrs: Attrs) -> None:
    if attrs["min"] > attrs["max"]:
        raise ShapeError(f"`hardtanh` needs min <= max, got min={attrs['min']!r}, "
                         f"max={attrs['max']!r}")


def _check_clamp(attrs: Attrs) -> None:
    if attrs["min"] is None and attrs["max"] is None:
        raise ShapeError("`clamp` needs `min`, `max` or both (as torch.clamp)")


def _check_softplus(attrs: Attrs) -> None:
    if attrs["beta"] == 0:
        raise ShapeError("`softplus` needs a nonzero `beta` (it divides by beta)")


def _bound(name: str, default: float | None, help: str) -> AttrSpec:
    return AttrSpec(name, "float", default=default, help=help)


# Gradients, with PyTorch's value at the kinks (relu'(0) = 0, hardtanh's bounds pass nothing,
# clamp's bounds pass the gradient). gelu, silu and mish are differentiated through their
# decompositions.


def _compare(op: str, value: float) -> Callable[[Composer, Attrs, str], str]:
    return lambda builder, attrs, x: builder.op(op, x, other=value)


def _inside(builder: Composer, x: str, low: float | None, high: float | None,
            strict: bool) -> str:
    """Where low < x < high (or <= with `strict` false); a bound left out is no bound."""
    tests = [builder.op("gt" if strict else "ge", x, other=low)] if low is not None else []
    if high is not None:
        tests.append(builder.op("lt" if strict else "le", x, other=high))
    return tests[0] if len(tests) == 1 else both(builder, *tests)


def _one_minus(builder: Composer, value: str) -> str:
    return builder.op("sub", builder.constant(1.0, builder.type_of(value).dtype), value)


def _leaky_relu_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                    cotangent: str) -> Gradients:
    positive = builder.op("gt", inputs[0], other=0.0)
    return (builder.op("where", positive, cotangent, scaled(builder, cotangent, attrs["alpha"])),)


def _hardswish_derivative(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    # 0 below -3, x/3 + 1/2 up to 3, 1 above (PyTorch's hardswish_backward).
    dtype = builder.type_of(x).dtype
    middle = builder.op("add", scaled(builder, x, 1 / 3), builder.constant(0.5, dtype))
    upper = builder.op("where", builder.op("le", x, other=3.0), middle,
                       builder.constant(1.0, dtype))
    return builder.op("where", builder.op("lt", x, other=-3.0), builder.constant(0.0, dtype),
                      upper)


def _elu_derivative(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    dtype = builder.type_of(x).dtype
    negative = scaled(builder, builder.op("exp", x), attrs["alpha"])
    return builder.op("where", builder.op("gt", x, other=0.0), builder.constant(1.0, dtype),
                      negative)


def _softplus_derivative(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    scaled_x = scaled(builder, x, attrs["beta"])
    return builder.op("where", builder.op("gt", scaled_x, other=attrs["threshold"]),
                      builder.constant(1.0, builder.type_of(x).dtype),
                      builder.op("sigmoid", scaled_x))


_relu_vjp = passed_where(_compare("gt", 0.0))
_sigmoid_vjp = elementwise(lambda builder, attrs, x, y:
                           builder.op("mul", y, _one_minus(builder, y)))
_tanh_vjp = elementwise(lambda builder, attrs, x, y:
                        _one_minus(builder, builder.op("mul", y, y)))


ACTIVATIONS = (
    Unary("relu", lambda attrs, x: np.maximum(x, np.float32(0)), 1, "max(x, 0)",
          CudaExpression("({0} < 0.0f ? 0.0f : {0})"), OnnxForm("Relu"), vjp=_relu_vjp),
    Unary("sigmoid", lambda attrs, x: _sigmoid(x), 4, "1 / (1 + exp(-x))",
          CudaExpression("1.0f / (1.0f + expf(-{0}))"), OnnxForm("Sigmoid"), vjp=_sigmoid_vjp),
    Unary("tanh", lambda attrs, x: np.tanh(x), 5, "tanh(x)", CudaExpression("tanhf({0})"),
          OnnxForm("Tanh"), vjp=_tanh_vjp),
    # ONNX's Gelu needs opset 20: exported as the decomposition, imported in both forms. The
    # decomposition is also the CUDA code (one expression cannot follow `approximate`).
    Unary("gelu", _gelu, 8,
          "x·Φ(x) = 0.5·x·(1 + erf(x/√2)); `approximate=\"tanh\"`: "
          "0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))",
          attrs=(AttrSpec("approximate", "str", default="none", choices=("none", "tanh"),
                          help='"none" (the erf form) or "tanh", as PyTorch'),),
          decompose=_gelu_parts),
    # No ONNX op before opset 22's Swish: exported as its decomposition.
    Unary("silu", lambda attrs, x: x * _sigmoid(x), 5, "x * sigmoid(x)",
          CudaExpression("{0} / (1.0f + expf(-{0}))"), decompose=_silu_parts),
    Unary("leaky_relu",
          lambda attrs, x: np.where(x >= 0, x, x * np.float32(attrs["alpha"])), 2,
          "x if x >= 0 else alpha * x",
          CudaExpression("({0} >= 0.0f ? {0} : {0} * {1})", floats=("alpha",)),
          OnnxForm("LeakyRelu", (("alpha", "alpha"),), since=6),
          (AttrSpec("alpha", "float", default=0.01, help="slope for negative inputs"),),
          vjp=_leaky_relu_vjp),
    Unary("relu6", lambda attrs, x: _clip(x, 0.0, 6.0), 2, "min(max(x, 0), 6)",
          CudaExpression("netc_clamp({0}, 0.0f, 6.0f)"),
          vjp=passed_where(lambda builder, attrs, x: _inside(builder, x, 0.0, 6.0, True))),
    Unary("hardtanh", lambda attrs, x: _clip(x, attrs["min"], attrs["max"]), 2,
          "min(max(x, min), max)",
          CudaExpression("netc_clamp({0}, {1}, {2})", floats=("min", "max")),
          attrs=(_bound("min", -1.0, "the lower bound"), _bound("max", 1.0, "the upper bound")),
          check=_check_hardtanh, constraints="min ≤ max",
          vjp=passed_where(lambda builder, attrs, x: _inside(builder, x, attrs["min"],
                                                             attrs["max"], True))),
    Unary("clamp", lambda attrs, x: _clip(x, attrs["min"], attrs["max"]), 2,
          "min(max(x, min), max), a bound left out is not applied (torch.clamp)",
          attrs=(_bound("min", None, "the lower bound; leave out for none"),
                 _bound("max", None, "the upper bound; leave out for none")),
          decompose=_clamp_parts, check=_check_clamp,
          constraints="at least one of `min`, `max`; with min > max every element is max",
          vjp=passed_where(lambda builder, attrs, x: _inside(builder, x, attrs["min"],
                                                             attrs["max"], False))),
    Unary("hardswish", lambda attrs, x: _hardswish(x), 5, "x·min(max(x + 3, 0), 6) / 6",
          CudaExpression("{0} * netc_clamp({0} + 3.0f, 0.0f, 6.0f) / 6.0f"),
          OnnxForm("HardSwish", since=14), vjp=elementwise(_hardswish_derivative)),
    Unary("hardsigmoid", lambda attrs, x: _hardsigmoid(x), 4, "min(max(x + 3, 0), 6) / 6",
          CudaExpression("netc_clamp({0} + 3.0f, 0.0f, 6.0f) / 6.0f"),
          vjp=elementwise(lambda builder, attrs, x, y: scaled(builder, builder.op(
              "cast", _inside(builder, x, -3.0, 3.0, True), dtype=builder.type_of(x).dtype),
              1 / 6))),
    Unary("elu", _elu, 3, "x if x > 0 else alpha·(exp(x) - 1)",
          CudaExpression("({0} > 0.0f ? {0} : {1} * expm1f({0}))", floats=("alpha",)),
          OnnxForm("Elu", (("alpha", "alpha"),), since=6),
          (AttrSpec("alpha", "float", default=1.0, help="the value for x → -∞ is -alpha"),),
          vjp=elementwise(_elu_derivative)),
    Unary("softplus", _softplus, 4,
          "log(1 + exp(beta·x)) / beta, or x where beta·x > threshold",
          CudaExpression("({0} * {1} > {2} ? {0} : log1pf(expf({0} * {1})) / {1})",
                         floats=("beta", "threshold")),
          attrs=(AttrSpec("beta", "float", default=1.0, help="the sharpness, nonzero"),
                 AttrSpec("threshold", "float", default=20.0,
                          help="above this, beta·x is returned as x (linear)")),
          check=_check_softplus, constraints="beta ≠ 0",
          vjp=elementwise(_softplus_derivative)),
    Unary("mish", None, 6, "x·tanh(softplus(x))", decompose=_mish_parts),
)

register_unary(ACTIVATIONS)


# softmax and log_softmax ------------------------------------------------------------------


def _axis_infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        resolve_axis(op, attrs["axis"], inputs[0])
        return inputs[0]
    return infer


def _axis_normalize(op: str) -> Callable[[Attrs, Sequence[TensorType]], Attrs]:
    def normalize(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
        return attrs.replace(axis=resolve_axis(op, attrs["axis"], inputs[0]))
    return normalize


def _shifted(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """x minus its max along the axis, so that exp cannot overflow."""
    return x - x.max(axis=attrs["axis"], keepdims=True)


def _softmax_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    exps = np.exp(_shifted(attrs, x))
    return exps / exps.sum(axis=attrs["axis"], keepdims=True, dtype=np.float32)


def _log_softmax_reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    shifted = _shifted(attrs, x)
    return shifted - np.log(np.exp(shifted).sum(axis=attrs["axis"], keepdims=True,
                                                dtype=np.float32))


def _softmax_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                 cotangent: str) -> Gradients:
    # y · (g - sum(g · y)) along the axis.
    total = builder.op("sum", builder.op("mul", cotangent, output), axis=attrs["axis"],
                       keepdim=True)
    return (builder.op("mul", output, builder.op("sub", cotangent, total)),)


def _log_softmax_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                     cotangent: str) -> Gradients:
    # g - exp(y) · sum(g) along the axis.
    total = builder.op("sum", cotangent, axis=attrs["axis"], keepdim=True)
    return (builder.op("sub", cotangent, builder.op("mul", builder.op("exp", output), total)),)


for _name, _reference, _summary, _vjp in (
    ("softmax", _softmax_reference, "exp(x) / sum(exp(x)) along axis, computed stably",
     _softmax_vjp),
    ("log_softmax", _log_softmax_reference, "x - log(sum(exp(x))) along axis, computed stably",
     _log_softmax_vjp),
):
    register(OpDef(
        name=_name,
        attrs=(AttrSpec("axis", "int", default=-1, help="negative counts from the end"),),
        infer=_axis_infer(_name),
        reference=_reference,
        normalize=_axis_normalize(_name),
        # max, subtract, exp, sum and divide (or log and subtract): 5 per element.
        flops=per_element_flops(5),
        kind="reduction",
        role="row_reduction",
        reduced_axis=lambda attrs, rank: int(attrs["axis"]),
        summary=_summary,
        doc=OpDoc(flops="5·out"),
        vjp=_vjp,
    ))
