"""Arithmetic and elementwise math: `a + b`, `a - b`, `a * b`, `div`, `maximum`, `minimum`
(broadcasting, two tensors), and `neg`, `exp`, `log`, `sqrt`, `rsqrt`, `abs`, `erf`, `sin`,
`cos` (one tensor; `netc.ops.activations.register_unary` rows), and `pow` (a number or a
tensor exponent).

Either operand of a binary op may be a shape-() tensor, which is how the IR's scalar
`constant` nodes (`x * 0.5`) enter arithmetic. Both operands must have the same dtype: netc
never promotes. NaN and infinity follow PyTorch and IEEE: `maximum` and `minimum` return NaN
when either operand is NaN (`netc_max` / `netc_min`, not `fmaxf` / `fminf`), `x / 0` is ±inf,
`log(-1)` and `sqrt(-1)` are NaN.

`add`, `sub`, `mul`, `maximum`, `minimum`, `neg` and `abs` also take `i32` and `i64` tensors,
as PyTorch does: computed exactly in the tensor's own integer type, wrapping around on
overflow as two's complement does (`-(-2^31)` is -2^31 in i32), never through float. `div`
stays float only (PyTorch's `/` on integers gives floats, ONNX's Div truncates: the two
disagree, so netc asks for a `cast` first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from netc.dtypes import INTEGER_RANGES
from netc.ir import FLOAT_DTYPES, INTEGER_DTYPES, Attrs, TensorType
from netc.ops.activations import Unary, erf, register_unary
from netc.ops.gradients import Gradients, Vjp, both, elementwise, scaled, unbroadcast
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    OnnxForm,
    OpDef,
    OpDoc,
    ShapeError,
    broadcast_shapes,
    per_element_flops,
    register,
    same_dtype,
)

Binary = Callable[[np.ndarray, np.ndarray], np.ndarray]

NUMERIC_DTYPES = (*FLOAT_DTYPES, *INTEGER_DTYPES)
"""The dtypes of the ops that compute on integers as PyTorch does (not `div`)."""


def _binary_infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        a, b = inputs
        dtype = same_dtype(op, inputs)
        return TensorType(dtype, broadcast_shapes(op, a, b))
    return infer


def exact(function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """`function` of `arrays`, quiet about NaN and infinity: float32 for float arrays; in the
    arrays' own type for integers, wrapping around as int32 and int64 do (never through
    float)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        result = np.asarray(function(*arrays))
    if np.asarray(arrays[0]).dtype.kind in "iu":
        return result.astype(np.asarray(arrays[0]).dtype)
    return result.astype(np.float32)


def _binary_reference(function: Binary) -> Callable[[Attrs, np.ndarray, np.ndarray], np.ndarray]:
    def reference(attrs: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return exact(function, a, b)
    return reference


_INTEGERS = "; `i32` and `i64` too, exact, wrapping around on overflow"

def number_problem(dtype: str, value: float) -> str | None:
    """Why the number `value` cannot be an operand of arithmetic on a `dtype` tensor (`x + 1`
    on an `i64` x), None when it can: an integer tensor takes integers in its range only, as
    netc never promotes (PyTorch's `ids * 0.5` is a float tensor; write `cast(ids, "f32") *
    0.5`)."""
    if dtype not in INTEGER_RANGES:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return (f"an {dtype} tensor computes with integers only, got the number {value!r} "
                "(netc never promotes a tensor's dtype)")
    info = np.iinfo(INTEGER_RANGES[dtype][0])
    low, high = int(info.min), int(info.max)
    if not low <= value <= high:
        return f"the number {value} is outside the range of {dtype}, [{low}, {high}]"
    return None

# Gradients ------------------------------------------------------------------------------
#
# A binary op's gradient with respect to a broadcast operand is summed back to its shape.
# maximum and minimum give half the gradient to each operand where they are equal, as
# PyTorch does; abs'(0) is 0.


def _binary_vjp(local: Callable[[Composer, str, str, str, str], tuple[str, str]]) -> Vjp:
    """The VJP of a broadcasting op from `local(builder, a, b, y, g)`, the gradients with
    respect to a and b in the result's shape."""
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        a, b = inputs
        first, second = local(builder, a, b, output, cotangent)
        return (unbroadcast(builder, first, builder.type_of(a).shape),
                unbroadcast(builder, second, builder.type_of(b).shape))
    return vjp


def _div_local(builder: Composer, a: str, b: str, y: str, g: str) -> tuple[str, str]:
    over_b = builder.op("div", g, b)
    return over_b, builder.op("neg", builder.op("mul", over_b, y))


def _pick_local(op: str) -> Callable[[Composer, str, str, str, str], tuple[str, str]]:
    """maximum (op "gt") or minimum ("lt"): the gradient to the operand that wins, half of
    it to each where they tie."""
    def local(builder: Composer, a: str, b: str, y: str, g: str) -> tuple[str, str]:
        dtype = builder.type_of(g).dtype
        wins = builder.op("cast", builder.op(op, a, b), dtype=dtype)
        ties = scaled(builder, builder.op("cast", builder.op("eq", a, b), dtype=dtype), 0.5)
        share = builder.op("add", wins, ties)
        first = builder.op("mul", g, share)
        return first, builder.op("sub", g, first)
    return local


_BINARY_VJPS: dict[str, Vjp] = {
    "add": _binary_vjp(lambda builder, a, b, y, g: (g, g)),
    "sub": _binary_vjp(lambda builder, a, b, y, g: (g, builder.op("neg", g))),
    "mul": _binary_vjp(lambda builder, a, b, y, g: (builder.op("mul", g, b),
                                                      builder.op("mul", g, a))),
    "div": _binary_vjp(_div_local),
    "maximum": _binary_vjp(_pick_local("gt")),
    "minimum": _binary_vjp(_pick_local("lt")),
}


for _name, _function, _summary, _code, _onnx, _dtypes in (
    ("add", np.add, "a + b, NumPy broadcasting" + _INTEGERS, "{0} + {1}", OnnxForm("Add"),
     NUMERIC_DTYPES),
    ("sub", np.subtract, "a - b, NumPy broadcasting" + _INTEGERS, "{0} - {1}", OnnxForm("Sub"),
     NUMERIC_DTYPES),
    ("mul", np.multiply, "a * b, NumPy broadcasting" + _INTEGERS, "{0} * {1}", OnnxForm("Mul"),
     NUMERIC_DTYPES),
    ("div", np.divide, "a / b, NumPy broadcasting (IEEE: x / 0 is ±inf); float tensors only",
     "{0} / {1}", OnnxForm("Div", since=7), FLOAT_DTYPES),
    ("maximum", np.maximum, "the larger of a and b, NaN where either is NaN; broadcasting; "
     "`i32` and `i64` too", "netc_max({0}, {1})", OnnxForm("Max", since=8), NUMERIC_DTYPES),
    ("minimum", np.minimum, "the smaller of a and b, NaN where either is NaN; broadcasting; "
     "`i32` and `i64` too", "netc_min({0}, {1})", OnnxForm("Min", since=8), NUMERIC_DTYPES),
):
    register(OpDef(
        name=_name,
        infer=_binary_infer(_name),
        reference=_binary_reference(_function),
        min_inputs=2,
        max_inputs=2,
        flops=per_element_flops(1),
        role="pointwise",
        summary=_summary,
        doc=OpDoc(shapes="broadcast of the two shapes"),
        expression=CudaExpression(_code),
        onnx=_onnx,
        dtypes=_dtypes,
        vjp=_BINARY_VJPS[_name],
    ))


def _math(function: Callable[[np.ndarray], np.ndarray]
          ) -> Callable[[Attrs, np.ndarray], np.ndarray]:
    """A reference from a NumPy function of x alone, quiet about NaN and infinity (log(0),
    sqrt(-1) and the like give what IEEE and PyTorch give); exact on integers (`exact`)."""
    def reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
        return exact(function, x)
    return reference


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / np.sqrt(x)


def _pow(attrs: Attrs, x: np.ndarray, exponent: np.ndarray | None = None) -> np.ndarray:
    # torch.pow computes x^0.5 and x^-0.5 as sqrt and rsqrt: sqrt(-inf) is NaN where
    # C's pow(-inf, 0.5) is +inf. Other exponents agree with pow (x·x, x·x·x, 1/x: the same
    # special values, within an ulp elsewhere). A tensor exponent is treated the same way,
    # element by element (the kernel's one expression does so).
    if exponent is None:
        exponent = np.float32(attrs["exponent"])

    def power(base: np.ndarray, power: np.ndarray) -> np.ndarray:
        return np.where(power == np.float32(0.5), np.sqrt(base),
                        np.where(power == np.float32(-0.5), _rsqrt(base),
                                 np.power(base, power)))
    return exact(power, x, np.asarray(exponent, dtype=np.float32))


def _pow_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    if len(inputs) == 2:
        if attrs["exponent"] is not None:
            raise ShapeError("`pow` takes a tensor exponent or a number, not both: drop the "
                             "number or the second tensor")
        return TensorType(same_dtype("pow", inputs), broadcast_shapes("pow", *inputs))
    if attrs["exponent"] is None:
        raise ShapeError(f"`pow` needs an exponent: a number or a tensor of {inputs[0]}'s dtype")
    return inputs[0]


def _sign(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    """1, -1 or 0 (at 0 and for NaN), as torch.sign: abs's derivative."""
    dtype = builder.type_of(x).dtype
    return builder.op("sub", builder.op("cast", builder.op("gt", x, other=0.0), dtype=dtype),
                      builder.op("cast", builder.op("lt", x, other=0.0), dtype=dtype))


def _rsqrt_derivative(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    return scaled(builder, builder.op("mul", builder.op("mul", y, y), y), -0.5)


def _erf_derivative(builder: Composer, attrs: Attrs, x: str, y: str) -> str:
    return scaled(builder, builder.op("exp", builder.op("neg", builder.op("mul", x, x))),
                  2 / math.sqrt(math.pi))


register_unary((
    Unary("neg", _math(np.negative), 1, "-x; `i32` and `i64` too (wrapping: -(-2^31) is "
          "-2^31 in i32)", CudaExpression("(-{0})"), OnnxForm("Neg"), dtypes=NUMERIC_DTYPES,
          vjp=lambda builder, attrs, inputs, output, g: (builder.op("neg", g),)),
    Unary("exp", _math(np.exp), 1, "e^x", CudaExpression("expf({0})"), OnnxForm("Exp"),
          vjp=elementwise(lambda builder, attrs, x, y: y)),
    Unary("log", _math(np.log), 1, "the natural logarithm (-inf at 0, NaN below)",
          CudaExpression("logf({0})"), OnnxForm("Log"),
          vjp=lambda builder, attrs, inputs, output, g: (builder.op("div", g, inputs[0]),)),
    Unary("sqrt", _math(np.sqrt), 1, "√x (NaN below 0)", CudaExpression("sqrtf({0})"),
          OnnxForm("Sqrt"), vjp=lambda builder, attrs, inputs, output, g: (
              builder.op("div", g, scaled(builder, output, 2.0)),)),
    # ONNX has no rsqrt: exported as Reciprocal(Sqrt(x)).
    Unary("rsqrt", _math(_rsqrt), 2, "1 / √x (inf at 0)",
          CudaExpression("rsqrtf({0})"), vjp=elementwise(_rsqrt_derivative)),
    Unary("abs", _math(np.abs), 1, "|x|; `i32` and `i64` too (wrapping: |-2^31| is -2^31 in "
          "i32)", CudaExpression("netc_abs({0})"), OnnxForm("Abs"), dtypes=NUMERIC_DTYPES,
          vjp=elementwise(_sign)),
    Unary("erf", _math(erf), 1, "the error function", CudaExpression("erff({0})"),
          OnnxForm("Erf", since=9), vjp=elementwise(_erf_derivative)),
    Unary("sin", _math(np.sin), 1, "sin x (radians)", CudaExpression("sinf({0})"),
          OnnxForm("Sin", since=7),
          vjp=elementwise(lambda builder, attrs, x, y: builder.op("cos", x))),
    Unary("cos", _math(np.cos), 1, "cos x (radians)", CudaExpression("cosf({0})"),
          OnnxForm("Cos", since=7), vjp=elementwise(
              lambda builder, attrs, x, y: builder.op("neg", builder.op("sin", x)))),
))

def _pow_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
             cotangent: str) -> Gradients:
    """As PyTorch's pow_backward: g·p·x^(p-1), 0 where p is 0; for a tensor exponent also
    g·y·log(x), 0 where x is 0 and p >= 0."""
    x = inputs[0]
    dtype = builder.type_of(x).dtype
    zero = builder.constant(0.0, dtype)
    if len(inputs) == 1:
        exponent = attrs["exponent"]
        if exponent == 0:
            return (builder.op("mul", cotangent, zero),)
        local = scaled(builder, builder.op("pow", x, exponent=exponent - 1.0), exponent)
        return (builder.op("mul", cotangent, local),)
    p = inputs[1]
    power = builder.op("pow", x, builder.op("sub", p, builder.constant(1.0, dtype)))
    to_x = builder.op("where", builder.op("eq", p, other=0.0), zero,
                      builder.op("mul", cotangent, builder.op("mul", p, power)))
    to_p = builder.op("mul", cotangent, builder.op("mul", output, builder.op("log", x)))
    at_zero = both(builder, builder.op("eq", x, other=0.0), builder.op("ge", p, other=0.0))
    to_p = builder.op("where", at_zero, zero, to_p)
    return (unbroadcast(builder, to_x, builder.type_of(x).shape),
            unbroadcast(builder, to_p, builder.type_of(p).shape))


register(OpDef(
    name="pow",
    attrs=(AttrSpec("exponent", "float", default=None,
                    help="the power, a number (instead of a second tensor)"),),
    infer=_pow_infer,
    reference=_pow,
    min_inputs=1,
    max_inputs=2,
    flops=per_element_flops(1),
    role="pointwise",
    summary="x^exponent, as torch.pow: the exponent a number or a tensor of x's dtype "
            "(broadcasting); an exponent of exactly ±0.5 is computed as sqrt / rsqrt, as "
            "torch.pow does for a number",
    doc=OpDoc(shapes="same as x (a number exponent), or the broadcast of x and the exponent",
              attrs="`exponent` only without a second tensor"),
    # `{1}` is the exponent tensor, or `exponent` when there is none. ONNX's Pow takes the
    # exponent as a second input: a number is exported as an initializer.
    expression=CudaExpression("({1} == 0.5f ? sqrtf({0}) : ({1} == -0.5f ? rsqrtf({0}) "
                              ": powf({0}, {1})))", floats=("exponent",)),
    vjp=_pow_vjp,
))
