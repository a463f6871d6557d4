"""Arithmetic and elementwise math: `a + b`, `a - b`, `a * b`, `div`, `maximum`, `minimum`
(broadcasting, two tensors), and `neg`, `exp`, `log`, `sqrt`, `rsqrt`, `abs`, `erf`, `sin`,
`cos`, `pow` (one tensor; `netc.ops.activations.register_unary` rows).

Either operand of a binary op may be a shape-() tensor, which is how the IR's scalar
`constant` nodes (`x * 0.5`) enter arithmetic. Both operands must have the same dtype: netc
never promotes. NaN and infinity follow PyTorch and IEEE: `maximum` and `minimum` return NaN
when either operand is NaN (`netc_max` / `netc_min`, not `fmaxf` / `fminf`), `x / 0` is ±inf,
`log(-1)` and `sqrt(-1)` are NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import Attrs, TensorType
from netc.ops.activations import Unary, erf, register_unary
from netc.ops.registry import (
    AttrSpec,
    CudaExpression,
    OnnxForm,
    OpDef,
    OpDoc,
    broadcast_shapes,
    per_element_flops,
    register,
    same_dtype,
)

Binary = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _binary_infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        a, b = inputs
        dtype = same_dtype(op, inputs)
        return TensorType(dtype, broadcast_shapes(op, a, b))
    return infer


def _binary_reference(function: Binary) -> Callable[[Attrs, np.ndarray, np.ndarray], np.ndarray]:
    def reference(attrs: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(function(a, b), dtype=np.float32)
    return reference


for _name, _function, _summary, _code, _onnx in (
    ("add", np.add, "a + b, NumPy broadcasting", "{0} + {1}", OnnxForm("Add")),
    ("sub", np.subtract, "a - b, NumPy broadcasting", "{0} - {1}", OnnxForm("Sub")),
    ("mul", np.multiply, "a * b, NumPy broadcasting", "{0} * {1}", OnnxForm("Mul")),
    ("div", np.divide, "a / b, NumPy broadcasting (IEEE: x / 0 is ±inf)", "{0} / {1}",
     OnnxForm("Div", since=7)),
    ("maximum", np.maximum, "the larger of a and b, NaN where either is NaN; broadcasting",
     "netc_max({0}, {1})", OnnxForm("Max", since=8)),
    ("minimum", np.minimum, "the smaller of a and b, NaN where either is NaN; broadcasting",
     "netc_min({0}, {1})", OnnxForm("Min", since=8)),
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
    ))


def _math(function: Callable[[np.ndarray], np.ndarray]
          ) -> Callable[[Attrs, np.ndarray], np.ndarray]:
    """A reference from a NumPy function of x alone, quiet about NaN and infinity (log(0),
    sqrt(-1) and the like give what IEEE and PyTorch give)."""
    def reference(attrs: Attrs, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(function(x), dtype=np.float32)
    return reference


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / np.sqrt(x)


def _pow(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    # torch.pow computes x^0.5 and x^-0.5 as sqrt and rsqrt: sqrt(-inf) is NaN where
    # C's pow(-inf, 0.5) is +inf. Other exponents agree with pow (x·x, x·x·x, 1/x: the same
    # special values, within an ulp elsewhere).
    exponent = np.float32(attrs["exponent"])
    roots: dict[float, Callable[[np.ndarray], np.ndarray]] = {0.5: np.sqrt, -0.5: _rsqrt}
    function = roots.get(float(exponent), lambda base: np.power(base, exponent))
    return _math(function)(attrs, x)


register_unary((
    Unary("neg", _math(np.negative), 1, "-x", CudaExpression("(-{0})"), OnnxForm("Neg")),
    Unary("exp", _math(np.exp), 1, "e^x", CudaExpression("expf({0})"), OnnxForm("Exp")),
    Unary("log", _math(np.log), 1, "the natural logarithm (-inf at 0, NaN below)",
          CudaExpression("logf({0})"), OnnxForm("Log")),
    Unary("sqrt", _math(np.sqrt), 1, "√x (NaN below 0)", CudaExpression("sqrtf({0})"),
          OnnxForm("Sqrt")),
    # ONNX has no rsqrt: exported as Reciprocal(Sqrt(x)).
    Unary("rsqrt", _math(_rsqrt), 2, "1 / √x (inf at 0)",
          CudaExpression("rsqrtf({0})")),
    Unary("abs", _math(np.abs), 1, "|x|", CudaExpression("fabsf({0})"), OnnxForm("Abs")),
    Unary("erf", _math(erf), 1, "the error function", CudaExpression("erff({0})"),
          OnnxForm("Erf", since=9)),
    Unary("sin", _math(np.sin), 1, "sin x (radians)", CudaExpression("sinf({0})"),
          OnnxForm("Sin", since=7)),
    Unary("cos", _math(np.cos), 1, "cos x (radians)", CudaExpression("cosf({0})"),
          OnnxForm("Cos", since=7)),
    # ONNX's Pow takes the exponent as a second input: exported with an initializer.
    Unary("pow", _pow, 1, "x^exponent (torch.pow with a number exponent)",
          CudaExpression("({1} == 0.5f ? sqrtf({0}) : ({1} == -0.5f ? rsqrtf({0}) "
                         ": powf({0}, {1})))", floats=("exponent",)),
          attrs=(AttrSpec("exponent", "float", help="the power, a number"),)),
))
