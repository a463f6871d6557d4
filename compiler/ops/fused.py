"""`fused`: a group of ops that one kernel computes, made by the fusion passes.

A fused node is never written in `.net` source; `netc.passes` builds it. Its meaning is exactly
the unfused computation: `reference` runs the body with the other ops' references and rounds
every intermediate to its dtype, as the interpreter would between separate nodes.

Attributes:
* `body`: the group's nodes in topological order. A body node's inputs are either `$k`, the
  fused node's k-th input, or the id of an earlier body node. The last body node is the
  group's value. Body nodes keep the ids, spans and layers of the graph nodes they were, so
  every source layer can still be traced to the kernel that computes it.
* `kind`: what the kernel looks like, for code generation: `conv_epilogue`, `gemm_epilogue`,
  `pool_epilogue`, `reduction` (a softmax, log_softmax, layernorm or global_avgpool with
  an elementwise prologue and/or epilogue) or `elementwise`.
* `anchor`: the id of the body node that shapes the kernel (the conv, the GEMM, the reduction;
  for an elementwise group, its last node).

See `docs/passes.md` for the rules that decide what is fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from netc.dtypes import round_to
from netc.ir import Attrs, Node, TensorType
from netc.ops.registry import REGISTRY, OpDef, ShapeError, register

T = TypeVar("T")
FUSED_KINDS = ("conv_epilogue", "gemm_epilogue", "pool_epilogue", "reduction", "elementwise")


def input_position(ref: str) -> int | None:
    """k for a body input `$k` (an input of the fused node), None for a body node's id."""
    return int(ref[1:]) if ref.startswith("$") else None


def _resolve(ref: str, inputs: Sequence[T], values: dict[str, T], owner: str) -> T:
    position = input_position(ref)
    if position is None:
        if ref not in values:
            raise ShapeError(f"fused body node {owner} uses {ref!r}, which is not an earlier "
                             "body node")
        return values[ref]
    if position >= len(inputs):
        raise ShapeError(f"fused body node {owner} uses {ref}, but the group has only "
                         f"{len(inputs)} inputs")
    return inputs[position]


def body_of(attrs: Attrs) -> tuple[Node, ...]:
    body = attrs["body"]
    if not body:
        raise ShapeError("a fused node needs a non-empty body")
    return tuple(body)


def _body_types(attrs: Attrs, inputs: Sequence[TensorType]) -> dict[str, TensorType]:
    """Every body node's type inferred from the group's input types."""
    types: dict[str, TensorType] = {}
    for node in body_of(attrs):
        if node.op == "fused" or node.op not in REGISTRY:
            raise ShapeError(f"fused body node {node.id} has op {node.op!r}, which cannot be "
                             "inside a fused group")
        args = [_resolve(ref, inputs, types, node.id) for ref in node.inputs]
        types[node.id] = REGISTRY[node.op].infer_all(node.attrs, args)
    return types


def _infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    types = _body_types(attrs, inputs)
    for node in body_of(attrs):
        if types[node.id] != node.type:
            raise ShapeError(f"fused body node {node.id} ({node.op}) has type {node.type} but "
                             f"its inputs give {types[node.id]}")
    return body_of(attrs)[-1].type


def _reference(attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
    values: dict[str, np.ndarray] = {}
    for node in body_of(attrs):
        args = [_resolve(ref, arrays, values, node.id) for ref in node.inputs]
        values[node.id] = round_to(node.type.dtype, REGISTRY[node.op].reference(node.attrs, *args))
    return values[body_of(attrs)[-1].id]


def _flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    # Concrete input shapes give concrete body shapes; the dtype does not change a FLOP count.
    concrete = [TensorType("f32", shape) for shape in inputs]
    types = _body_types(attrs, concrete)
    total = 0
    for node in body_of(attrs):
        shapes = [_resolve(ref, concrete, types, node.id).shape for ref in node.inputs]
        total += REGISTRY[node.op].flops(node.attrs, shapes,
                                         types[node.id].shape)
    return total


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
