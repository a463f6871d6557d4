"""`fused`: a group of ops that one kernel computes, made by the fusion passes.

A fused node is never written in `.net` source; `netc.passes` builds it. Its one attribute,
`region`, is a `netc.ir.Region`: the members in topological order (reading the fused node's
inputs as arguments `$k`), the anchor that shapes the kernel and the kernel's kind (see
`Region`). Its meaning is exactly the unfused computation: `reference` runs the members with
the other ops' references and rounds every intermediate to its dtype, as the interpreter would
between separate nodes; `infer` checks every member's type against its op's rule.

See `docs/passes.md` for the rules that decide what is fused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netc.dtypes import round_to
from netc.ir import Attrs, IRError, Region, TensorType
from netc.ops.registry import REGISTRY, OpDef, ShapeError, register


def region_of(attrs: Attrs) -> Region:
    """The region a fused node's attributes hold (ShapeError when they hold none)."""
    region = attrs.get("region")
    if not isinstance(region, Region):
        raise ShapeError("a fused node needs a region")
    return region


def _member_types(region: Region, inputs: Sequence[TensorType]) -> dict[str, TensorType]:
    """Every member's type inferred from the fused node's input types."""
    try:
        region.check(len(inputs))
        types: dict[str, TensorType] = {}
        for member in region.members:
            if member.op not in REGISTRY:
                raise ShapeError(f"fused member {member.id} has op {member.op!r}, which cannot "
                                 "be inside a fused group")
            args = [region.resolve(ref, inputs, types) for ref in member.inputs]
            types[member.id] = REGISTRY[member.op].infer_all(member.attrs, args)
    except IRError as error:
        raise ShapeError(str(error)) from None
    return types


def _infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    region = region_of(attrs)
    types = _member_types(region, inputs)
    for member in region.members:
        if types[member.id] != member.type:
            raise ShapeError(f"fused member {member.id} ({member.op}) has type {member.type} "
                             f"but its inputs give {types[member.id]}")
    return region.result.type


def _reference(attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
    region = region_of(attrs)
    values: dict[str, np.ndarray] = {}
    for member in region.members:
        args = [region.resolve(ref, arrays, values) for ref in member.inputs]
        values[member.id] = round_to(member.type.dtype,
                                     REGISTRY[member.op].reference(member.attrs, *args))
    return values[region.result.id]


def _flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    # Concrete input shapes give concrete member shapes; the dtype does not change a FLOP count.
    region = region_of(attrs)
    concrete = [TensorType("f32", shape) for shape in inputs]
    types = _member_types(region, concrete)
    return sum(REGISTRY[member.op].flops(
        member.attrs, [region.resolve(ref, concrete, types).shape for ref in member.inputs],
        types[member.id].shape) for member in region.members)


FUSED = register(OpDef(
    name="fused",
    infer=_infer,
    reference=_reference,
    min_inputs=1,
    max_inputs=None,
    flops=_flops,
    kind="fused",
    role="fused",
    internal=True,
    summary="internal: a group of ops computed by one kernel (made by the fusion passes)",
))
