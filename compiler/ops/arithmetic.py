"""Broadcasting binary arithmetic: `a + b`, `a - b`, `a * b`.

Either operand may be a shape-() tensor, which is how the IR's scalar `constant` nodes
(`x * 0.5`) enter arithmetic. Both operands must have the same dtype: netc never promotes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import Attrs, TensorType
from netc.ops.registry import (
    CudaExpression,
    OnnxForm,
    OpDef,
    broadcast_shapes,
    per_element_flops,
    register,
    same_dtype,
)


def _binary_infer(op: str) -> Callable[[Attrs, Sequence[TensorType]], TensorType]:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        a, b = inputs
        dtype = same_dtype(op, inputs)
        return TensorType(dtype, broadcast_shapes(op, a, b))
    return infer


for _name, _function, _summary, _symbol, _onnx in (
    ("add", np.add, "a + b, NumPy broadcasting", "+", "Add"),
    ("sub", np.subtract, "a - b, NumPy broadcasting", "-", "Sub"),
    ("mul", np.multiply, "a * b, NumPy broadcasting", "*", "Mul"),
):
    register(OpDef(
        name=_name,
        infer=_binary_infer(_name),
        reference=lambda attrs, a, b, function=_function: function(a, b),
        min_inputs=2,
        max_inputs=2,
        flops=per_element_flops(1),
        role="pointwise",
        summary=_summary,
        expression=CudaExpression(f"{{0}} {_symbol} {{1}}"),
        onnx=OnnxForm(_onnx),
    ))
