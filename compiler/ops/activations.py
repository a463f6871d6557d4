"""Activations: elementwise ones from one table, and softmax / log_softmax along an axis."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from netc.ir import Attrs, TensorType
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    Decomposition,
    OnnxForm,
    OpDef,
    per_element_flops,
    register,
    resolve_axis,
    same_type,
)

_erf = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so large |x| neither overflows nor warns.
    decay = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + decay), decay / (1 + decay)).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    # The exact (erf) form, in float64: NumPy has no vectorised erf, math.erf is exact.
    wide = np.asarray(x, dtype=np.float64)
    cdf = 0.5 * (1.0 + np.asarray(_erf(wide / math.sqrt(2.0)), dtype=np.float64))
    return (wide * cdf).astype(np.float32)


@dataclass(frozen=True)
class Activation:
    name: str
    function: Callable[[Attrs, np.ndarray], np.ndarray]
    flops_per_element: int
    """A convention (an exp or erf counts as one): for rough roofline estimates only."""
    summary: str
    expression: CudaExpression
    onnx: OnnxForm | None = None
    attrs: tuple[AttrSpec, ...] = ()
    decompose: Decomposition | None = None


def _silu_parts(builder: Composer, attrs: Attrs, x: str) -> str:
    return builder.op("mul", x, builder.op("sigmoid", x))


ACTIVATIONS = (
    Activation("relu", lambda attrs, x: np.maximum(x, np.float32(0)), 1, "max(x, 0)",
               CudaExpression("({0} < 0.0f ? 0.0f : {0})"), OnnxForm("Relu")),
    Activation("sigmoid", lambda attrs, x: _sigmoid(x), 4, "1 / (1 + exp(-x))",
               CudaExpression("1.0f / (1.0f + expf(-{0}))"), OnnxForm("Sigmoid")),
    Activation("tanh", lambda attrs, x: np.tanh(x), 5, "tanh(x)", CudaExpression("tanhf({0})"),
               OnnxForm("Tanh")),
    # ONNX's Gelu needs opset 20: the exporter spells it out, the importer reads both forms.
    Activation("gelu", lambda attrs, x: _gelu(x), 8, "x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))",
               CudaExpression("0.5f * {0} * (1.0f + erff({0} * 0.70710678118654752f))")),
    # No ONNX op before opset 22's Swish: exported as its decomposition.
    Activation("silu", lambda attrs, x: x * _sigmoid(x), 5, "x * sigmoid(x)",
               CudaExpression("{0} / (1.0f + expf(-{0}))"), decompose=_silu_parts),
    Activation("leaky_relu",
               lambda attrs, x: np.where(x >= 0, x, x * np.float32(attrs["alpha"])), 2,
               "x if x >= 0 else alpha * x",
               CudaExpression("({0} >= 0.0f ? {0} : {0} * {1})", floats=("alpha",)),
               OnnxForm("LeakyRelu", (("alpha", "alpha"),), since=6),
               (AttrSpec("alpha", "float", default=0.01, help="slope for negative inputs"),)),
)

for _activation in ACTIVATIONS:
    register(OpDef(
        name=_activation.name,
        attrs=_activation.attrs,
        infer=same_type,
        reference=_activation.function,
        flops=per_element_flops(_activation.flops_per_element),
        role="pointwise",
        summary=_activation.summary,
        expression=_activation.expression,
        onnx=_activation.onnx,
        decompose=_activation.decompose,
    ))


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


for _name, _reference, _summary in (
    ("softmax", _softmax_reference, "exp(x) / sum(exp(x)) along axis, computed stably"),
    ("log_softmax", _log_softmax_reference, "x - log(sum(exp(x))) along axis, computed stably"),
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
    ))
