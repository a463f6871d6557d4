"""Shape arithmetic: exporters that keep a size dynamic compute a Reshape's target from
`Shape(x)`; these handlers follow such int vectors with each named dimension as its name, so
that the Reshape can keep it (and arithmetic on it as text, `N*4`, so that the Reshape can say
why it cannot)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from netc.onnx.importer.handlers import (
    _shape_handles,
)
from netc.onnx.importer.model import (
    E_NOT_EXPRESSIBLE,
)
from netc.onnx.importer.translate import (
    Value,
    _attributes,
    _Importer,
    _Poisoned,
    _Problems,
    _Shape,
)

# Shape arithmetic -------------------------------------------------------------------------
# Exporters that keep a size dynamic compute a Reshape's target from `Shape(x)`; these
# handlers follow such int vectors with named dimensions as names, so the Reshape keeps them.

def _entries(value: Any, problems: _Problems) -> tuple[tuple[int | str, ...], bool]:
    """A shape operand as (entries, whether it is a scalar)."""
    if isinstance(value, _Shape):
        return value.entries, value.scalar
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.ndim <= 1:
        return tuple(int(v) for v in value.reshape(-1)), value.ndim == 0
    problems.add(E_NOT_EXPRESSIBLE, "mixes the run-time shape with a tensor")
    raise _Poisoned


@_shape_handles("Shape")
def _shape(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None:
        return {}
    attrs = _attributes(node)
    shape = importer.type_of(x).shape
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    entries = shape[start:int(end)] if end is not None else shape[start:]
    return {node.output[0]: _Shape(tuple(entries)).value()}


@_shape_handles("Gather")
def _gather(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    entries, _ = _entries(importer.operand(node, 0), problems)
    indices = importer.operand(node, 1)
    if int(_attributes(node).get("axis", 0)) != 0 or not isinstance(indices, np.ndarray) or \
            indices.ndim > 1:
        problems.add(E_NOT_EXPRESSIBLE, "only gathers constant positions of a shape")
        return {}
    picked = tuple(entries[int(i)] for i in indices.reshape(-1))
    return {node.output[0]: _Shape(picked, scalar=indices.ndim == 0).value()}


@_shape_handles("Unsqueeze", "Squeeze")
def _reshape_shape(importer: _Importer, index: int, node: onnx.NodeProto,
                   problems: _Problems) -> dict[str, Value]:
    entries, scalar = _entries(importer.operand(node, 0), problems)
    if node.op_type == "Unsqueeze":
        if not scalar:
            problems.add(E_NOT_EXPRESSIBLE, "only unsqueezes a scalar taken from a shape")
            return {}
        return {node.output[0]: _Shape(entries).value()}
    if len(entries) != 1:
        problems.add(E_NOT_EXPRESSIBLE, "only squeezes a one-element shape")
        return {}
    return {node.output[0]: _Shape(entries, scalar=True).value()}


@_shape_handles("Concat")
def _concat_shapes(importer: _Importer, index: int, node: onnx.NodeProto,
                   problems: _Problems) -> dict[str, Value]:
    joined: list[int | str] = []
    for position in range(len(node.input)):
        entries, _ = _entries(importer.operand(node, position), problems)
        joined.extend(entries)
    return {node.output[0]: _Shape(tuple(joined)).value()}


@_shape_handles("Slice")
def _slice_shape(importer: _Importer, index: int, node: onnx.NodeProto,
                 problems: _Problems) -> dict[str, Value]:
    entries, _ = _entries(importer.operand(node, 0), problems)
    bounds = [importer.operand(node, i) for i in range(1, 5)]
    if not all(b is None or isinstance(b, np.ndarray) for b in bounds):
        problems.add(E_NOT_EXPRESSIBLE, "only slices a shape at constant positions")
        return {}
    starts, ends, _, steps = (None if b is None else int(np.asarray(b).reshape(-1)[0])
                              for b in bounds)
    return {node.output[0]: _Shape(entries[slice(starts, ends, steps)]).value()}


@_shape_handles("Cast", "Identity")
def _cast_shape(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    value = importer.operand(node, 0)
    if node.op_type == "Cast" and int(_attributes(node).get("to", 0)) not in (
            TensorProto.INT64, TensorProto.INT32):
        problems.add(E_NOT_EXPRESSIBLE, "casts the run-time shape to a non-integer type")
        return {}
    return {node.output[0]: value}



_ARITHMETIC = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Mod": "%"}
_IDENTITY = {"Add": 0, "Sub": 0, "Mul": 1, "Div": 1}
"""The operand that leaves a named dimension as it is (`N * 1`)."""


def _combine(op: str, a: int | str, b: int | str) -> int | str:
    """One entry of shape arithmetic: ints computed as ONNX computes int64 tensors, a named
    dimension kept where the other operand is the identity, else the expression as text
    (`N*4`), which no `.net` dimension can be: a Reshape given it says so."""
    if isinstance(a, int) and isinstance(b, int):
        if op in ("Div", "Mod") and b == 0:
            return f"{a}{_ARITHMETIC[op]}0"
        return {"Add": a + b, "Sub": a - b, "Mul": a * b, "Div": int(a / b),
                "Mod": a % b}[op]
    if isinstance(a, str) and b == _IDENTITY.get(op):
        return a
    if isinstance(b, str) and op in ("Add", "Mul") and a == _IDENTITY[op]:
        return b
    return f"{a}{_ARITHMETIC[op]}{b}"


@_shape_handles(*_ARITHMETIC)
def _shape_arithmetic(importer: _Importer, index: int, node: onnx.NodeProto,
                      problems: _Problems) -> dict[str, Value]:
    (a, a_scalar), (b, b_scalar) = (_entries(importer.operand(node, i), problems)
                                    for i in (0, 1))
    if node.op_type == "Mod" and int(_attributes(node).get("fmod", 0)):
        problems.add(E_NOT_EXPRESSIBLE, "fmod=1 on a run-time shape")
        return {}
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        problems.add(E_NOT_EXPRESSIBLE, f"combines shapes of lengths {len(a)} and {len(b)}")
        return {}
    size = max(len(a), len(b))
    a, b = (a * size if len(a) == 1 else a), (b * size if len(b) == 1 else b)
    entries = tuple(_combine(node.op_type, x, y) for x, y in zip(a, b))
    return {node.output[0]: _Shape(entries, scalar=a_scalar and b_scalar).value()}


@_shape_handles("ConstantOfShape")
def _constant_of_shape(importer: _Importer, index: int, node: onnx.NodeProto,
                       problems: _Problems) -> dict[str, Value]:
    entries, _ = _entries(importer.operand(node, 0), problems)
    problems.add(E_NOT_EXPRESSIBLE, f"fills a tensor of the run-time shape "
                 f"[{', '.join(map(str, entries))}]; `.net` makes no tensor from a shape alone",
                 help="export with fixed sizes (no dynamic_axes)")
    return {}
