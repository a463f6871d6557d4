"""The op handlers: how each ONNX op type becomes `.net` ops (`@_handles(op types, ops=...)`),
and the registry that finds them (a one-node ONNX form on an op's registry entry imports
without a handler of its own)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from netc.frontend.unparse import is_valid_name
from netc.ir import INTEGER_DTYPES, Attrs, Dim, TensorType, format_shape
from netc.onnx.importer.model import (
    _DTYPES,
    _NUMPY_DTYPES,
    E_CONSTANT_TENSOR,
    E_DTYPE,
    E_EXTRA_OUTPUT,
    E_MODEL,
    E_NOT_CONSTANT,
    E_NOT_EXPRESSIBLE,
    E_SHAPE,
    E_UNSUPPORTED_ATTRIBUTE,
    PARAMETER_OPERANDS,
    PATTERN_OPS,
)
from netc.onnx.importer.patterns import _FINDERS, Match, _pattern, _View
from netc.onnx.importer.translate import (
    Value,
    _attributes,
    _decode,
    _float_kind,
    _Importer,
    _is_scalar_for,
    _Poisoned,
    _Problems,
    _Shape,
)
from netc.ops import REGISTRY, OpDef, ShapeError
from netc.ops.arithmetic import number_problem
from netc.ops.attention import attention_steps
from netc.ops.windows import Window

# Op handlers ------------------------------------------------------------------------------

Handler = Callable[[_Importer, int, onnx.NodeProto, _Problems], dict[str, Value]]
_HANDLERS: dict[str, Handler] = {}
_BUILDS: dict[str, tuple[str, ...]] = {}
"""ONNX op type -> the `.net` ops its handler builds."""


def _handles(*op_types: str, ops: Sequence[str] = (),
             parameters: Sequence[int] = ()) -> Callable[[Handler], Handler]:
    """Registers the decorated function as the handler of ONNX `op_types`; `ops` are the
    `.net` ops it builds, `parameters` the operand positions that must be constants."""
    def register(function: Handler) -> Handler:
        for op in ops:
            if op not in REGISTRY:
                raise ValueError(f"an ONNX import handler builds `{op}`, which is no "
                                 "registered op")
        for op_type in op_types:
            _HANDLERS[op_type] = function
            _BUILDS[op_type] = tuple(ops)
            if parameters:
                PARAMETER_OPERANDS[op_type] = tuple(parameters)
        return function
    return register


def _one_node_forms() -> dict[str, OpDef]:
    """ONNX op type -> the registered op that is exactly that node (`OpDef.onnx`)."""
    return {opdef.onnx.op_type: opdef for opdef in REGISTRY.values() if opdef.onnx is not None}


def _handler(op_type: str) -> Handler | None:
    """The handler of an ONNX op type: its registered one, else the one-node form's."""
    if op_type in _HANDLERS:
        return _HANDLERS[op_type]
    opdef = _one_node_forms().get(op_type)
    return _one_node_handler(opdef) if opdef is not None else None


def supported_ops() -> tuple[str, ...]:
    """Every op type of the default ONNX domain that imports, sorted."""
    return tuple(sorted({*_HANDLERS, *_SHAPE_HANDLERS, *PATTERN_OPS, *_one_node_forms()}))


def imported_ops() -> dict[str, tuple[str, ...]]:
    """Every `.net` op the import can build -> the ONNX op types it is built from."""
    found: dict[str, list[str]] = {}
    builds: dict[str, tuple[str, ...]] = {
        op_type: (opdef.name,) for op_type, opdef in _one_node_forms().items()}
    for op_type, ops in _BUILDS.items():  # a handler may defer to the one-node form
        builds[op_type] = (*builds.get(op_type, ()), *ops)
    for op_type, ops in builds.items():
        for op in ops:
            found.setdefault(op, []).append(op_type)
    for anchor, finders in _FINDERS.items():  # ops recognised in patterns (patterns.py)
        for op, _ in finders:
            found.setdefault(op, []).append(anchor)
    return {op: tuple(sorted(set(types))) for op, types in found.items()}


_LEGACY_ATTRIBUTES = ("consumed_inputs",)
"""Attributes of opsets before 6 that only guided memory reuse: ignored."""


def _one_node_handler(opdef: OpDef) -> Handler:
    """Imports a node that is exactly `opdef` (`OpDef.onnx`): the same operands, and the
    attributes the form maps (one left out takes the `.net` default, which is ONNX's)."""
    assert opdef.onnx is not None
    renamed = dict(opdef.onnx.attrs)

    def handle(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
        attrs = {name: _decode(value) for name, value in _attributes(node).items()
                 if name not in _LEGACY_ATTRIBUTES}
        for name in sorted(set(attrs) - set(renamed)):
            problems.add(E_UNSUPPORTED_ATTRIBUTE, f"{name}={attrs[name]!r} is not supported "
                         f"(`.net`'s `{opdef.name}` has no such attribute)")
        inputs = [importer.tensor(node, position, problems) for position in range(len(node.input))]
        if problems.found or any(x is None for x in inputs):
            return {}
        values: dict[str, Any] = {renamed[name]: tuple(value) if isinstance(value, list)
                                  else value for name, value in attrs.items()}
        return {node.output[0]: importer.apply(problems, opdef.name,
                                               *(str(x) for x in inputs), **values)}
    return handle


def _no_extra_outputs(node: onnx.NodeProto, problems: _Problems, names: Sequence[str]) -> None:
    for position, name in enumerate(node.output[1:], start=1):
        if name:
            what = names[position - 1] if position - 1 < len(names) else f"output {position}"
            problems.add(E_EXTRA_OUTPUT, f"its output {position} ({what}) is used; `.net` "
                         "computes only the main result",
                         help="remove the extra output from the model")


def _expect(problems: _Problems, attrs: Mapping[str, Any], name: str, allowed: Any,
            why: str) -> None:
    if name in attrs and _decode(attrs[name]) != allowed:
        problems.add(E_UNSUPPORTED_ATTRIBUTE,
                     f"{name}={_decode(attrs[name])!r} is not supported ({why})")


@_handles("Swish", ops=("silu",))
def _swish(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    alpha = float(_attributes(node).get("alpha", 1.0))
    if alpha != 1.0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"alpha={alpha}: `.net`'s silu is x * sigmoid(x)")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, "silu", x)}


@_handles("Gelu", ops=("gelu",))
def _gelu(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    approximate = _decode(_attributes(node).get("approximate", b"none"))
    if approximate not in ("none", "tanh"):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"approximate={approximate!r} is not supported "
                     '(`.net`\'s gelu takes "none" or "tanh")')
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, "gelu", x, approximate=approximate)}


@_handles("Identity")
def _identity(importer: _Importer, index: int, node: onnx.NodeProto,
              problems: _Problems) -> dict[str, Value]:
    value = importer.operand(node, 0)
    if value is None:
        problems.add(E_MODEL, "has no input")
        return {}
    return {node.output[0]: value}


@_handles("Cast", "CastLike", ops=("cast",))
def _cast(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None:
        return {}
    if node.op_type == "Cast":
        to = int(_attributes(node).get("to", 0))
        target = _DTYPES.get(to)
    else:
        like = importer.operand(node, 1)
        target = importer.type_of(like).dtype if isinstance(like, str) else \
            _NUMPY_DTYPES.get(np.asarray(like).dtype.name)
    if target is None:
        problems.add(E_DTYPE, "casts to a type `.net` has no tensors of (it has f32, f16, bf16, "
                     "i32, i64 and bool)")
        return {}
    if target == importer.type_of(x).dtype:
        return {node.output[0]: x}  # a cast to the tensor's own type is the identity
    return {node.output[0]: importer.apply(problems, "cast", x, dtype=target)}


_COMPARISONS = {"Equal": ("eq", "eq"), "Less": ("lt", "gt"), "LessOrEqual": ("le", "ge"),
                "Greater": ("gt", "lt"), "GreaterOrEqual": ("ge", "le")}
"""ONNX comparison -> (the `.net` op, the same comparison with its operands swapped)."""


def _tensor_or_number(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                      tensor: Value | None, constant: Value | None) -> float | None:
    """The number a comparison or `Where` operand `constant` stands for beside `tensor`."""
    if not isinstance(tensor, str) or not isinstance(constant, np.ndarray) or \
            not _is_scalar_for(constant, importer.type_of(tensor).rank):
        problems.add(E_CONSTANT_TENSOR, "compares or selects with a constant that is not one "
                     "number, or without a tensor operand; `.net` has numbers and tensors but "
                     "no constant tensors")
        return None
    number = float(np.asarray(constant, dtype=np.float64).reshape(()))
    if not math.isfinite(number):
        problems.add(E_CONSTANT_TENSOR, f"the constant {number} has no `.net` literal")
        return None
    return number


@_handles(*_COMPARISONS, ops=("eq", "ne", "lt", "le", "gt", "ge"))
def _comparison(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    op, swapped = _COMPARISONS[node.op_type]
    output = node.output[0]
    user = importer.only_user(output)
    if op == "eq" and user is not None and user not in importer.consumed and \
            user not in importer.patterns and importer.nodes[user].op_type == "Not":
        # Not(Equal(a, b)), how `ne` is exported: one `ne`.
        op = swapped = "ne"
        importer.consumed.add(user)
        output = importer.nodes[user].output[0]
    a, b = importer.operand(node, 0), importer.operand(node, 1)
    if isinstance(a, str) and isinstance(b, str):
        return {output: importer.apply(problems, op, a, b)}
    tensor, constant = (a, b) if isinstance(a, str) else (b, a)
    number = _tensor_or_number(importer, node, problems, tensor, constant)
    if number is None:
        return {}
    return {output: importer.apply(problems, op if tensor is a else swapped, str(tensor),
                                   other=number)}


@_handles("Not", ops=("eq",))
def _not(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, "eq", x, other=0.0)}  # a bool's negation


@_handles("Where", ops=("where", "masked_fill", "eq"))
def _where(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    a, b = importer.operand(node, 1), importer.operand(node, 2)
    known = importer.operand(node, 0)
    if isinstance(known, np.ndarray) and known.size and (known.all() or not known.any()):
        # A constant condition, the same everywhere (attention's rows that are never all
        # masked): the operand it picks, where that already has the result's shape.
        chosen, other = (a, b) if known.all() else (b, a)
        if isinstance(chosen, str):
            shape = importer.type_of(chosen).shape
            others = (known.shape, other.shape if isinstance(other, np.ndarray)
                      else importer.type_of(str(other)).shape)
            if all(len(s) <= len(shape) and _broadcasts_into(s, shape) for s in others):
                return {node.output[0]: chosen}
    condition = importer.tensor(node, 0, problems, "condition")
    if condition is None or problems.found:
        return {}
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _float_kind(a) and \
            _float_kind(b) and a.dtype == b.dtype:
        # Two constants (a loss's weights 0 and 1): parameters, of at least one dimension.
        a, b = (importer.free_param(name, np.asarray(value, np.float32).reshape(
            value.shape or (1,))) for name, value in zip(node.input[1:], (a, b)))
        dtype = _NUMPY_DTYPES.get(np.asarray(importer.operand(node, 1)).dtype.name, "f32")
        if dtype != "f32":
            a, b = (importer.apply(problems, "cast", v, dtype=dtype) for v in (a, b))
    if isinstance(a, str) and isinstance(b, str):
        return {node.output[0]: importer.apply(problems, "where", condition, a, b)}
    # A number on one side: x with that number where (or where not) the condition holds.
    x, constant = (b, a) if isinstance(b, str) else (a, b)
    value = _tensor_or_number(importer, node, problems, x, constant)
    if value is None:
        return {}
    mask = condition if x is b else importer.apply(problems, "eq", condition, other=0.0)
    return {node.output[0]: importer.apply(problems, "masked_fill", str(x), mask, value=value)}


@_handles("Range", ops=("arange",))
def _range(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    start, limit, delta = (_integer_constant(importer, node, position) for position in range(3))
    if start != 0 or delta != 1 or limit is None or limit < 1 or \
            np.asarray(importer.operand(node, 1)).dtype != np.int64:
        problems.add(E_NOT_EXPRESSIBLE, "only an int64 Range(0, n, 1) with n >= 1 has a `.net` "
                     "form (`arange(n)`)")
        return {}
    return {node.output[0]: importer.apply(problems, "arange", n=limit)}


def _integer_constant(importer: _Importer, node: onnx.NodeProto, position: int) -> int | None:
    """Operand `position` when it is one constant integer, else None."""
    value = importer.operand(node, position)
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "iu":
        return None
    return int(value.reshape(()))


@_handles("Trilu", ops=("triu", "tril"), parameters=(1,))
def _trilu(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    diagonal = _integer_constant(importer, node, 1) if len(node.input) > 1 and node.input[1] \
        else 0
    if diagonal is None:
        problems.add(E_NOT_CONSTANT, "its k (the diagonal) is not one constant integer")
    if x is None or diagonal is None or problems.found:
        return {}
    op = "triu" if int(_attributes(node).get("upper", 1)) else "tril"
    return {node.output[0]: importer.apply(problems, op, x, diagonal=diagonal)}


_QK_STEPS = {0: "scores", 1: "scores", 2: "biased", 3: "weights"}
"""ONNX Attention's qk_matmul_output_mode -> the step of `attention_steps` it outputs."""


@_handles("Attention", ops=("attention", "reshape", "transpose", "concat", "unsqueeze", "expand",
                            "matmul", "mul", "div", "tanh", "add", "eq", "masked_fill", "cast",
                            "triu", "tril", "softmax", "amax", "where", "ge", "gt", "lt",
                            "sub"))
def _attention(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    """ONNX's Attention (opset 23): q, k, v of [batch, heads, length, features], or 3-D
    [batch, length, heads * features] split by `q_num_heads`/`kv_num_heads`; an optional
    mask (bool: true attends; float: added), `is_causal`, `scale`; past_key/past_value
    joined before k and v (their joins are the present_key/present_value outputs); kv heads
    repeated for grouped queries. `.net` attention where it is that; with `softcap`, a causal
    diagonal moved by a cache, or the qk_matmul_output used, its steps one by one."""
    attrs = {name: _decode(value) for name, value in _attributes(node).items()}
    # The softmax's precision is at least f32 in netc whatever it asks.
    known = {"softcap", "qk_matmul_output_mode", "is_causal", "scale", "q_num_heads",
             "kv_num_heads", "softmax_precision", "left_window_size", "right_window_size"}
    for name in sorted(set(attrs) - known):  # what follows opset 25
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"{name}={attrs[name]!r} is not "
                     "supported (`.net`'s attention has no such attribute)")
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if mode not in _QK_STEPS:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"qk_matmul_output_mode={mode} is not one of "
                     "ONNX's modes 0 to 3")
    tensors = [importer.tensor(node, position, problems, what)
               for position, what in enumerate(("q", "k", "v"))]
    optional = [importer.tensor(node, position, problems, what)
                if len(node.input) > position and node.input[position] else None
                for position, what in ((3, "mask"), (4, "past_key"), (5, "past_value"))]
    mask, past_key, past_value = optional
    lengths = importer.tensor(node, 6, problems, "nonpad_kv_seqlen") \
        if len(node.input) > 6 and node.input[6] else None
    if problems.found or any(t is None for t in tensors):
        return {}
    if (past_key is None) != (past_value is None) or (lengths and past_key):
        problems.add(E_MODEL, "has only one of past_key and past_value, or a past_key with "
                     "nonpad_kv_seqlen")
        return {}
    q, k, v = (str(t) for t in tensors)
    ranks = {importer.type_of(t).rank for t in (q, k, v)}
    if ranks == {3}:
        heads = [attrs.get("q_num_heads"), attrs.get("kv_num_heads")]
        if None in heads:
            problems.add(E_MODEL, "3-D q, k and v need the q_num_heads and kv_num_heads "
                         "attributes")
            return {}
        q, k, v = (_split_heads(importer, problems, t, int(str(n)))
                   for t, n in ((q, heads[0]), (k, heads[1]), (v, heads[1])))
    elif ranks != {4}:
        problems.add(E_NOT_EXPRESSIBLE, "q, k and v are [batch, heads, length, features] "
                     "(4-D) or [batch, length, hidden] (3-D), all three alike")
        return {}
    offset: Dim = 0
    if past_key is not None and past_value is not None:
        offset = importer.type_of(past_key).shape[2]
        k = importer.apply(problems, "concat", past_key, k, axis=2)
        v = importer.apply(problems, "concat", past_value, v, axis=2)
    results: dict[str, Value] = {}
    for position, value in ((1, k), (2, v)):
        if len(node.output) > position and node.output[position]:
            results[node.output[position]] = value
    k, v = (_repeat_heads(importer, problems, t, importer.type_of(q).shape[1]) for t in (k, v))
    causal = bool(attrs.get("is_causal", 0))
    softcap = float(attrs.get("softcap", 0.0))
    features = importer.type_of(q).shape[-1]
    if "scale" in attrs:
        scale = float(attrs["scale"])
    elif isinstance(features, int):
        scale = 1.0 / math.sqrt(features)
    else:
        problems.add(E_NOT_EXPRESSIBLE, "needs `scale` when the feature size is a named "
                     "dimension")
        return {}
    qk_output = node.output[3] if len(node.output) > 3 and node.output[3] else None
    operands = [q, k, v] + ([mask] if mask is not None else [])
    window = (int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1)))
    steps = _Steps(importer, problems, node.output[0])
    keys = importer.type_of(k).shape[2]
    if mask is not None and isinstance(keys, int) and \
            isinstance(given := importer.type_of(mask).shape[-1], int) and given < keys:
        # A mask of fewer keys than there are masks the others (ONNX pads it).
        if importer.type_of(mask).dtype == "bool":
            fill = importer.apply(problems, "eq", importer.free_param(
                f"{node.output[0]}_zero", np.zeros(1, np.float32)), other=1.0)
        else:
            fill = steps.minus_infinity(mask)
        block = importer.apply(problems, "expand", fill,
                               dims=(*importer.type_of(mask).shape[:-1], keys - given))
        mask = importer.apply(problems, "concat", mask, block, axis=-1)
    masked: list[str] = []
    if lengths is not None:  # the keys from each item's length on, and its own diagonal
        masked = _padded_cache(importer, problems, lengths, importer.type_of(q).shape[2],
                               importer.type_of(k).shape[2], causal, window)
        causal, window = False, (-1, -1)
    if softcap <= 0 and qk_output is None and (not causal or offset == 0) and \
            max(window) < 0 and not masked:
        y = importer.apply(problems, "attention", *operands, causal=causal, scale=scale)
    else:
        if not isinstance(offset, int):
            problems.add(E_NOT_EXPRESSIBLE, "a causal mask or window after a cache of named "
                         "(run-time) length has no `.net` form")
            return {}
        # In f32 whatever the inputs' dtype (as `attention` computes), rounded once at the end.
        dtype = importer.type_of(q).dtype
        wide = [t if t is None or importer.type_of(t).dtype in ("f32", "bool") else
                importer.apply(problems, "cast", t, dtype="f32") for t in (q, k, v, mask)]
        parts = attention_steps(steps, str(wide[0]), str(wide[1]), str(wide[2]), wide[3],
                                causal=causal, scale=scale, softcap=max(softcap, 0.0),
                                offset=offset, window=window, masked=masked)
        y = parts["output"] if dtype == "f32" else \
            importer.apply(problems, "cast", parts["output"], dtype=dtype)
        if qk_output is not None:
            qk = parts[_QK_STEPS[mode]]
            results[qk_output] = qk if dtype == "f32" else \
                importer.apply(problems, "cast", qk, dtype=dtype)
    if ranks == {3}:  # back to [batch, length, heads * features]
        shape = importer.type_of(y).shape
        y = importer.apply(problems, "transpose", y, perm=(0, 2, 1, 3))
        y = _shaped(importer, problems, y, [shape[0], shape[2], _product(shape[1], shape[3])],
                    node.output[0], "_heads")
    results[node.output[0]] = y
    return results


def _padded_cache(importer: _Importer, problems: _Problems, lengths: str, queries: Dim,
                  keys: Dim, causal: bool, window: tuple[int, int]) -> list[str]:
    """The masks (true: masked) of a key-value cache padded per batch item, of `lengths`
    [B] valid keys each: the keys j >= length, and, the queries being the last of the valid
    keys (offset length - queries), a causal diagonal and window sides moved by that offset:
    each [B, 1, L, S], from j - i (a parameter) against the offsets (f32: exact below 2^24)."""
    if not isinstance(queries, int) or not isinstance(keys, int):
        problems.add(E_NOT_EXPRESSIBLE, "nonpad_kv_seqlen with query or key lengths that are "
                     "named (run-time) sizes has no `.net` form")
        raise _Poisoned
    valid = importer.apply(problems, "cast", lengths, dtype="f32")
    for _ in range(3):
        valid = importer.apply(problems, "unsqueeze", valid, axis=-1)  # [B, 1, 1, 1]
    positions = importer.free_param(f"key_positions_{keys}", np.arange(keys, dtype=np.float32))
    masked = [importer.apply(problems, "ge", positions, valid)]
    offset = importer.apply(problems, "sub", valid, importer.builder.constant(float(queries)))
    ahead = importer.free_param(f"key_minus_query_{queries}_{keys}",
                                np.subtract.outer(np.arange(keys), np.arange(queries)).T
                                .astype(np.float32))  # [L, S]: j - i
    left, right = window
    for bound, side in (((0 if causal else None), "gt"),
                        ((right if right >= 0 else None), "gt"),
                        ((-left if left >= 0 else None), "lt")):
        if bound is not None:
            edge = importer.apply(problems, "add", offset,
                                  importer.builder.constant(float(bound)))
            masked.append(importer.apply(problems, side, ahead, edge))
    return masked


class _Steps:
    """The importer as the builder of `attention_steps`: each op through `importer.apply`, and
    a -inf fill (`.net` has no literal for it) as `where` of a parameter holding -inf."""

    def __init__(self, importer: _Importer, problems: _Problems, name: str) -> None:
        self.importer, self.problems, self.name = importer, problems, name

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        if op == "masked_fill" and attrs.get("value") == -math.inf:
            x, mask = inputs
            return self.importer.apply(self.problems, "where", mask, self.minus_infinity(x), x)
        if op == "eq" and attrs.get("other") == -math.inf:
            return self.importer.apply(self.problems, "eq", inputs[0],
                                       self.minus_infinity(inputs[0]))
        return self.importer.apply(self.problems, op, *inputs, **attrs)

    def minus_infinity(self, like: str) -> str:
        """-inf of `like`'s dtype, from a parameter [1] holding it."""
        fill = self.importer.free_param(self.name + "_minus_infinity",
                                        np.array([-np.inf], np.float32))
        dtype = self.type_of(like).dtype
        return fill if dtype == "f32" else self.importer.apply(self.problems, "cast", fill,
                                                               dtype=dtype)

    def constant(self, value: float, dtype: str = "f32") -> str:
        return self.importer.builder.constant(value, dtype)

    def type_of(self, value: str) -> TensorType:
        return self.importer.type_of(value)


def _product(a: Dim, b: Dim) -> Dim:
    return a * b if isinstance(a, int) and isinstance(b, int) else f"{a}*{b}"


def _split_heads(importer: _Importer, problems: _Problems, x: str, heads: int) -> str:
    """[batch, length, heads * features] as [batch, heads, length, features]."""
    batch, length, hidden = importer.type_of(x).shape
    if not isinstance(hidden, int) or heads < 1 or hidden % heads:
        problems.add(E_SHAPE, f"splits {format_shape((batch, length, hidden))} into {heads} "
                     "heads, which do not divide its last dimension")
        raise _Poisoned
    split = importer.apply(problems, "reshape", x, dims=(length, heads, hidden // heads))
    return importer.apply(problems, "transpose", split, perm=(0, 2, 1, 3))


def _repeat_heads(importer: _Importer, problems: _Problems, x: str, heads: Dim) -> str:
    """Keys or values [batch, kv_heads, length, features] for `heads` query heads: each kv
    head repeated heads / kv_heads times in a row (grouped-query attention)."""
    batch, kv_heads, length, features = importer.type_of(x).shape
    if kv_heads == heads:
        return x
    if not (isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads == 0):
        problems.add(E_SHAPE, f"{heads} query heads and {kv_heads} key/value heads: "
                     "grouped-query attention needs kv heads that divide the query heads")
        raise _Poisoned
    lifted = importer.apply(problems, "unsqueeze", x, axis=2)
    repeated = importer.apply(problems, "expand", lifted,
                              dims=(batch, kv_heads, heads // kv_heads, length, features))
    return importer.apply(problems, "reshape", repeated, dims=(heads, length, features))


def _embedding(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    """Gather of rows (axis 0) of a constant [rows, dim] table by a tensor of ids."""
    table = importer.constant(node, 0, problems, "table")
    ids = importer.tensor(node, 1, problems, "ids")
    if table is None or ids is None or problems.found:
        return {}
    if table.ndim != 2 or int(_attributes(node).get("axis", 0)) != 0:
        problems.add(E_NOT_EXPRESSIBLE, "a Gather by a tensor of ids has a `.net` form only for "
                     "rows (axis 0) of a 2-D table (`embedding`)")
        return {}
    rows, dim = table.shape
    layer = importer.layer_name(node, "embedding", 0)
    return {node.output[0]: importer.apply(
        problems, "embedding", ids, num_embeddings=int(rows), dim=int(dim),
        dtype=_NUMPY_DTYPES.get(table.dtype.name, "f32"), layer=layer,
        params={"weight": table.astype(np.float32)})}


@_handles("Dropout", ops=("dropout", "mul", "add", "cast"), parameters=(1, 2))
def _dropout(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    ratio: float | None = float(attrs["ratio"]) if "ratio" in attrs else None
    if importer.opset >= 12:
        ratio_value = importer.operand(node, 1)
        training = importer.operand(node, 2)
        if isinstance(ratio_value, np.ndarray):
            ratio = float(ratio_value.reshape(()))
        elif ratio_value is not None:
            ratio = None  # computed at run time: irrelevant at inference
        if training is not None:
            if not isinstance(training, np.ndarray):
                problems.add(E_NOT_CONSTANT, "training_mode is computed at run time; `.net` "
                             "runs dropout in inference mode only")
            elif bool(np.asarray(training).reshape(())) and ratio != 0.0:
                problems.add(E_UNSUPPORTED_ATTRIBUTE, "training_mode=true drops values at "
                             "random; `.net` runs dropout in inference mode only")
    elif attrs.get("is_test", 1) == 0 and importer.opset < 7:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "is_test=0 (training mode) is not supported")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    results: dict[str, Value] = {node.output[0]: x}  # the identity at inference
    if ratio is not None and 0.0 <= ratio <= 1.0:
        results[node.output[0]] = importer.apply(problems, "dropout", x, p=ratio)
    if len(node.output) > 1 and node.output[1]:
        # The mask keeps every element: true of x's shape (x * 0 + 1 is 1, or NaN for an
        # infinite or NaN x: nonzero, true, either way).
        dtype = importer.type_of(x).dtype
        one = importer.apply(problems, "add", importer.apply(
            problems, "mul", x, importer.builder.constant(0.0, dtype)),
            importer.builder.constant(1.0, dtype))
        results[node.output[1]] = importer.apply(problems, "cast", one, dtype="bool")
    return results


def _binary_constant(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                     op: str, tensor: str, constant: np.ndarray, tensor_first: bool) -> str:
    tensor_type = importer.type_of(tensor)
    if tensor_type.dtype in INTEGER_DTYPES and constant.dtype.kind in "iu" and \
            constant.size == 1 and len(constant.shape) <= tensor_type.rank:
        # An integer number beside an integer tensor (`ids + 1`), exact to 2^53.
        value = int(constant.reshape(()))
        problem = number_problem(tensor_type.dtype, value)
        if problem is not None or abs(value) > 2 ** 53:
            problems.add(E_CONSTANT_TENSOR, problem or f"the constant {value} is beyond 2^53, "
                         "where `.net` numbers are exact")
            raise _Poisoned
        number = importer.builder.constant(float(value), tensor_type.dtype)
        operands = (tensor, number) if tensor_first else (number, tensor)
        return importer.apply(problems, op, *operands)
    if not _float_kind(constant):
        problems.add(E_DTYPE, f"the constant operand has dtype {constant.dtype}")
        raise _Poisoned
    if _is_scalar_for(constant, tensor_type.rank) or (
            constant.size > 0 and np.all(constant == constant.flat[0])
            and len(constant.shape) <= tensor_type.rank
            and _broadcasts_into(constant.shape, tensor_type.shape)):
        number = importer.number(constant.flat[0], problems, tensor_type.dtype)
        operands = (tensor, number) if tensor_first else (number, tensor)
        return importer.apply(problems, op, *operands)
    if constant.dtype == np.float32 and tensor_type.dtype == "f32":
        # A constant tensor (a positional embedding): a free parameter holds it.
        param = importer.constant_tensor(node.input[1 if tensor_first else 0], constant,
                                         problems)
        operands = (tensor, param) if tensor_first else (param, tensor)
        return importer.apply(problems, op, *operands)
    problems.add(E_CONSTANT_TENSOR,
                 f"its constant operand has shape {format_shape(constant.shape)} and dtype "
                 f"{constant.dtype} against a {tensor_type.dtype} tensor; `.net` holds constant "
                 "tensors only as f32 parameters (`param`)",
                 help="a bias right after MatMul/Gemm/Conv is folded into that layer; other "
                      "constant tensors are imported as f32 parameters")
    raise _Poisoned


def _broadcasts_into(small: Sequence[int], shape: Sequence[Dim]) -> bool:
    return all(a in (1, b) for a, b in zip(reversed(small), reversed(shape)))


_ARITHMETIC = {"Add": "add", "Sub": "sub", "Mul": "mul"}


@_handles("Add", "Sub", "Mul", ops=("add", "sub", "mul"))
def _arithmetic(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    if attrs.get("broadcast", 0) == 1 and "axis" in attrs:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "legacy broadcast with axis is not supported")
        return {}
    op = _ARITHMETIC[node.op_type]
    a, b = importer.operand(node, 0), importer.operand(node, 1)
    if isinstance(a, str) and isinstance(b, str):
        return {node.output[0]: importer.apply(problems, op, a, b)}
    if isinstance(a, str) and isinstance(b, np.ndarray):
        return {node.output[0]: _binary_constant(importer, node, problems, op, a, b, True)}
    if isinstance(b, str) and isinstance(a, np.ndarray):
        return {node.output[0]: _binary_constant(importer, node, problems, op, b, a, False)}
    problems.add(E_MODEL, "needs two operands")
    return {}


@_handles("Sum", ops=("add",))
def _sum(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    operands = [importer.operand(node, i) for i in range(len(node.input))]
    tensors = [v for v in operands if isinstance(v, str)]
    constants = [v for v in operands if isinstance(v, np.ndarray)]
    if not tensors:
        problems.add(E_MODEL, "has no tensor operand")
        return {}
    result = tensors[0]
    for other in tensors[1:]:
        result = importer.apply(problems, "add", result, other)
    for constant in constants:
        result = _binary_constant(importer, node, problems, "add", result, constant, True)
    return {node.output[0]: result}


@_handles("Div", ops=("div", "mul"))
def _div(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    a, b = importer.operand(node, 0), importer.operand(node, 1)
    if isinstance(a, str) and isinstance(b, str):
        return {node.output[0]: importer.apply(problems, "div", a, b)}
    if isinstance(a, str) and isinstance(b, np.ndarray):
        if _float_kind(b) and _is_scalar_for(b, importer.type_of(a).rank) and \
                float(b.reshape(())) != 0.0:
            # x / c is imported as x * (1 / c), as `.net` source writes it; it can differ from
            # the division in the last bit.
            reciprocal = np.asarray(1.0 / np.float64(b.reshape(())), dtype=np.float32)
            return {node.output[0]: _binary_constant(importer, node, problems, "mul", a,
                                                     reciprocal, True)}
        return {node.output[0]: _binary_constant(importer, node, problems, "div", a, b, True)}
    if isinstance(a, np.ndarray) and isinstance(b, str):
        return {node.output[0]: _binary_constant(importer, node, problems, "div", b, a, False)}
    problems.add(E_MODEL, "needs two operands")
    return {}


# Float pointwise ops of language version 2 --------------------------------------------------


def _bound(importer: _Importer, node: onnx.NodeProto, problems: _Problems, position: int,
           which: str) -> float | None:
    """A Clip bound: None where it is left out or unbounded (±inf, ±FLT_MAX as PyTorch's
    exporter writes an absent one), else its value. Operand `position` since opset 11,
    attribute `which` before."""
    if importer.opset < 11:
        value = _attributes(node).get(which)
        array = None if value is None else np.asarray(value, dtype=np.float32)
    else:
        array = importer.constant(node, position, problems, f"`{which}` bound", required=False)
    if array is None:
        return None
    if array.size != 1:
        problems.add(E_CONSTANT_TENSOR, f"the `{which}` bound has shape "
                     f"{format_shape(array.shape)}; Clip's bounds are scalars")
        return None
    number = float(array.reshape(()))
    unbounded = float(np.finfo(np.float32).max) * (-1 if which == "min" else 1)
    if (number <= unbounded) if which == "min" else (number >= unbounded):
        return None
    if not math.isfinite(number):
        problems.add(E_CONSTANT_TENSOR, f"the `{which}` bound is {number}, which has no `.net` "
                     "literal")
    return number


@_handles("Clip", ops=("relu6", "hardtanh", "clamp"), parameters=(1, 2))
def _clip(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    # As PyTorch's exporter writes relu6 (0, 6), hardtanh (both bounds, min <= max) and clamp.
    low = _bound(importer, node, problems, 1, "min")
    high = _bound(importer, node, problems, 2, "max")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if (low, high) == (0.0, 6.0):
        return {node.output[0]: importer.apply(problems, "relu6", x)}
    if low is None and high is None:
        return {node.output[0]: x}  # no bounds: the identity
    op = "hardtanh" if low is not None and high is not None and low <= high else "clamp"
    return {node.output[0]: importer.apply(problems, op, x, min=low, max=high)}


@_handles("HardSigmoid", ops=("hardsigmoid", "mul", "add", "clamp"))
def _hardsigmoid(importer: _Importer, index: int, node: onnx.NodeProto,
                 problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if np.float32(alpha) == np.float32(1 / 6) and beta == 0.5:  # PyTorch's hardsigmoid
        return {node.output[0]: importer.apply(problems, "hardsigmoid", x)}
    # max(0, min(1, alpha·x + beta)), spelled out.
    dtype = importer.type_of(x).dtype
    scaled = importer.apply(problems, "mul", x, importer.number(np.asarray(alpha), problems,
                                                                dtype))
    shifted = importer.apply(problems, "add", scaled, importer.number(np.asarray(beta),
                                                                      problems, dtype))
    return {node.output[0]: importer.apply(problems, "clamp", shifted, min=0.0, max=1.0)}


@_handles("Softplus", "Mish", ops=("softplus", "mish"))
def _softplus(importer: _Importer, index: int, node: onnx.NodeProto,
              problems: _Problems) -> dict[str, Value]:
    # Softplus is log(1 + exp(x)): PyTorch's softplus with its defaults (beta 1, threshold 20,
    # above which log(1 + exp(x)) rounds to x). Mish (opset 18) is x·tanh(softplus(x)).
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, node.op_type.lower(), x)}


@_handles("Reciprocal", ops=("div",))
def _reciprocal(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    one = importer.number(np.asarray(1.0), problems, importer.type_of(x).dtype)
    return {node.output[0]: importer.apply(problems, "div", one, x)}


@_handles("Pow", ops=("pow", "cast"))
def _pow(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems, "base")
    exponent = importer.operand(node, 1)
    if isinstance(exponent, str) and x is not None and not problems.found:
        # A tensor exponent (`pow(x, y)`, as torch.pow(x, y)): of x's float dtype; an integer
        # exponent converted to it first, as ONNX's Pow and PyTorch compute x^y in x's type.
        dtype = importer.type_of(x).dtype
        if importer.type_of(exponent).dtype in INTEGER_DTYPES and dtype in _LARGEST:
            exponent = importer.apply(problems, "cast", exponent, dtype=dtype)
        return {node.output[0]: importer.apply(problems, "pow", x, exponent)}
    if not isinstance(exponent, np.ndarray) or exponent.size != 1 or \
            exponent.dtype.kind not in "fiu":
        problems.add(E_NOT_EXPRESSIBLE, "only a constant scalar exponent or a tensor exponent "
                     "has a `.net` form (`pow(x, exponent)`, `pow(x, y)`)")
        return {}
    if x is None or problems.found:
        return {}
    number = float(exponent.reshape(()))
    if not math.isfinite(number):
        problems.add(E_CONSTANT_TENSOR, f"the exponent {number} has no `.net` literal")
        return {}
    return {node.output[0]: importer.apply(problems, "pow", x, exponent=number)}


@_pattern("Softplus", "mish")
def _mish(view: _View, index: int) -> Match | None:
    """Mul(x, Tanh(Softplus(x))), as exporters write mish (the Mul's operands either way)."""
    x = view.nodes[index].input[0]
    tanh = view.only_user(view.nodes[index].output[0])
    if tanh is None or view.node(tanh, "Tanh") is None:
        return None
    mul = view.only_user(view.nodes[tanh].output[0])
    if mul is None or view.node(mul, "Mul") is None or not view.is_tensor(x) or \
            view.other(mul, view.nodes[tanh].output[0]) != x:
        return None
    return Match("mish", x, view.nodes[mul].output[0], frozenset({index, tanh, mul}))


@_pattern("Sqrt", "rsqrt")
def _rsqrt(view: _View, index: int) -> Match | None:
    """Reciprocal(Sqrt(x)) or Div(1, Sqrt(x))."""
    x = view.nodes[index].input[0]
    root = view.nodes[index].output[0]
    user = view.only_user(root)
    node = view.node(user, "Reciprocal", "Div")
    if user is None or node is None or not view.is_tensor(x) or (
            node.op_type == "Div" and (list(node.input[1:]) != [root] or
                                       not view.near(node.input[0], 1.0))):
        return None
    return Match("rsqrt", x, node.output[0], frozenset({index, user}))


@_handles("Max", "Min", ops=("maximum", "minimum", "clamp"))
def _extremum(importer: _Importer, index: int, node: onnx.NodeProto,
              problems: _Problems) -> dict[str, Value]:
    # Max / Min take one or more operands: a chain of `maximum` / `minimum` over the tensors,
    # then constant scalars as a `clamp` bound (`maximum` takes tensors only, as in PyTorch;
    # torch.clamp(x, min=c) is torch.maximum(x, c), NaN included).
    largest = node.op_type == "Max"
    operands = [importer.operand(node, i) for i in range(len(node.input))]
    tensors = [v for v in operands if isinstance(v, str)]
    constants = [v for v in operands if isinstance(v, np.ndarray)]
    if not tensors or len(tensors) + len(constants) != len(operands):
        problems.add(E_MODEL, "needs a tensor operand, and only tensors and constants")
        return {}
    result = tensors[0]
    for other in tensors[1:]:
        result = importer.apply(problems, "maximum" if largest else "minimum", result, other)
    rank = importer.type_of(result).rank
    if not constants:
        return {node.output[0]: result}
    if any(not _float_kind(c) or not _is_scalar_for(c, rank) for c in constants):
        problems.add(E_CONSTANT_TENSOR, "a constant operand that is not a float scalar has no "
                     "`.net` form; `.net` has numbers and layer parameters but no constant "
                     "tensors")
        return {}
    values = [float(c.reshape(())) for c in constants]
    if not all(math.isfinite(v) for v in values):
        problems.add(E_CONSTANT_TENSOR, f"the constant operands {values} have no `.net` "
                     "literal for NaN or infinity")
        return {}
    bound = max(values) if largest else min(values)
    return {node.output[0]: importer.apply(problems, "clamp", result,
                                           **{"min" if largest else "max": bound})}


@_handles("Mean", ops=("add", "div"))
def _mean(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    """The sum of the operands (an `add` chain, broadcasting) divided by their count, as
    ONNX's Mean computes it."""
    tensors = [importer.tensor(node, i, problems, f"operand {i}") for i in range(len(node.input))]
    if problems.found or not tensors or any(t is None for t in tensors):
        return {}
    total = str(tensors[0])
    for other in tensors[1:]:
        total = importer.apply(problems, "add", total, str(other))
    if len(tensors) == 1:
        return {node.output[0]: total}
    count = importer.builder.constant(float(len(tensors)), importer.type_of(total).dtype)
    return {node.output[0]: importer.apply(problems, "div", total, count)}


@_handles("And", "Or", "Xor", ops=("where", "ne"))
def _logical(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    """On bools, exactly: a and b = where(a, b, a), a or b = where(a, a, b), a xor b =
    a != b (all three broadcasting)."""
    a, b = (importer.tensor(node, i, problems) for i in (0, 1))
    if a is None or b is None or problems.found:
        return {}
    if importer.type_of(a).dtype != "bool" or importer.type_of(b).dtype != "bool":
        problems.add(E_DTYPE, f"{node.op_type} takes bool tensors, got {importer.type_of(a)} "
                     f"and {importer.type_of(b)}")
        return {}
    if node.op_type == "Xor":
        return {node.output[0]: importer.apply(problems, "ne", a, b)}
    operands = (b, a) if node.op_type == "And" else (a, b)
    return {node.output[0]: importer.apply(problems, "where", a, *operands)}


_LARGEST = {"f32": float(np.finfo(np.float32).max), "f16": 65504.0,
            "bf16": 3.3895313892515355e38}
"""Each float dtype's largest finite number: only an infinity is beyond it."""


@_handles("IsNaN", "IsInf", ops=("ne", "gt", "lt", "abs"))
def _is_special(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    """IsNaN(x) = x != x; IsInf(x) = |x| > the dtype's largest finite number (x > it for
    +inf only, x < -it for -inf only)."""
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    dtype = importer.type_of(x).dtype
    if dtype not in _LARGEST:
        problems.add(E_DTYPE, f"{node.op_type} takes a float tensor, got {importer.type_of(x)}")
        return {}
    if node.op_type == "IsNaN":
        return {node.output[0]: importer.apply(problems, "ne", x, x)}
    attrs = _attributes(node)
    positive, negative = int(attrs.get("detect_positive", 1)), int(attrs.get("detect_negative", 1))
    largest = _LARGEST[dtype]
    if positive and negative:
        found = importer.apply(problems, "gt", importer.apply(problems, "abs", x), other=largest)
    elif positive or negative:
        found = importer.apply(problems, "gt" if positive else "lt", x,
                               other=largest if positive else -largest)
    else:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "detect_positive=0 with detect_negative=0 (all "
                     "false) is not supported")
        return {}
    return {node.output[0]: found}


def _negation(importer: _Importer, problems: _Problems, condition: str) -> str:
    """The negation of a bool tensor."""
    return importer.apply(problems, "eq", condition, other=0.0)


@_handles("Sign", "Softsign", "Selu", "ThresholdedRelu", "Shrink", "Celu",
          ops=("where", "ne", "gt", "lt", "eq", "cast", "sub", "add", "abs", "div", "mul",
               "elu", "masked_fill"))
def _float_function(importer: _Importer, index: int, node: onnx.NodeProto,
                    problems: _Problems) -> dict[str, Value]:
    """ONNX activations that are functions of `.net` ops, as ONNX's definitions spell them
    (NaN gives NaN except where ONNX's own definition gives 0: ThresholdedRelu, Shrink). An
    op registered as exactly this node (`OpDef.onnx`) is imported as itself instead."""
    own = _one_node_forms().get(node.op_type)
    if own is not None:
        return _one_node_handler(own)(importer, index, node, problems)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    dtype = importer.type_of(x).dtype
    if dtype not in _LARGEST:
        problems.add(E_DTYPE, f"{node.op_type} is imported for float tensors only, got "
                     f"{importer.type_of(x)}")
        return {}
    attrs = _attributes(node)

    def number(value: float) -> str:
        return importer.number(np.asarray(value), problems, dtype)

    def apply(op: str, *inputs: str, **values: Any) -> str:
        return importer.apply(problems, op, *inputs, **values)

    op = node.op_type
    if op == "Sign":  # (x > 0) - (x < 0), NaN where x is NaN
        steps = apply("sub", apply("cast", apply("gt", x, other=0.0), dtype=dtype),
                      apply("cast", apply("lt", x, other=0.0), dtype=dtype))
        result = apply("where", apply("ne", x, x), x, steps)
    elif op == "Softsign":  # x / (1 + |x|)
        result = apply("div", x, apply("add", apply("abs", x), number(1.0)))
    elif op == "Selu":  # gamma · elu(x, alpha)
        alpha = float(attrs.get("alpha", 1.67326319217681884765625))
        gamma = float(attrs.get("gamma", 1.05070102214813232421875))
        result = apply("mul", apply("elu", x, alpha=alpha), number(gamma))
    elif op == "Celu":  # x where x > 0, else alpha · (exp(x / alpha) - 1) = alpha · elu(x / alpha)
        alpha = float(attrs.get("alpha", 1.0))
        if alpha == 1.0:
            result = apply("elu", x, alpha=1.0)
        else:
            scaled = apply("mul", apply("elu", apply("div", x, number(alpha))), number(alpha))
            result = apply("where", apply("gt", x, other=0.0), x, scaled)
    elif op == "ThresholdedRelu":  # x where x > alpha, else 0 (NaN too)
        alpha = float(attrs.get("alpha", 1.0))
        below = _negation(importer, problems, apply("gt", x, other=alpha))
        result = apply("masked_fill", x, below, value=0.0)
    else:  # Shrink: x + bias below -lambd, x - bias above lambd, else 0 (NaN too)
        lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
        above = apply("masked_fill", apply("sub", x, number(bias)) if bias else x,
                      _negation(importer, problems, apply("gt", x, other=lambd)), value=0.0)
        below = apply("lt", x, other=-lambd)
        result = apply("where", below, apply("add", x, number(bias)) if bias else x, above)
    return {node.output[0]: result}


@_handles("Hardmax", ops=("argmax", "arange", "unsqueeze", "eq", "cast"))
def _hardmax(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    """1 at the first position of the max along `axis`, 0 elsewhere: `argmax` compared with
    the positions (`arange`), exactly."""
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    x_type = importer.type_of(x)
    axis = int(_attributes(node).get("axis", -1 if importer.opset >= 13 else 1))
    axis = axis + x_type.rank if axis < 0 else axis
    if importer.opset < 13 and axis != x_type.rank - 1:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={axis} before opset 13 flattens the "
                     "dimensions from it on into one; only the last axis imports")
        return {}
    if not 0 <= axis < x_type.rank or not isinstance(x_type.shape[axis], int):
        problems.add(E_NOT_EXPRESSIBLE, f"Hardmax along axis {axis} of {x_type} needs a "
                     "dimension of fixed size")
        return {}
    found = importer.apply(problems, "argmax", x, axis=axis, keepdim=True)
    positions = importer.apply(problems, "arange", n=int(x_type.shape[axis]))
    for _ in range(x_type.rank - axis - 1):
        positions = importer.apply(problems, "unsqueeze", positions, axis=-1)
    hot = importer.apply(problems, "eq", found, positions)
    return {node.output[0]: importer.apply(problems, "cast", hot, dtype=x_type.dtype)}


@_handles("PRelu", ops=("where", "lt", "mul"), parameters=(1,))
def _prelu(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    """x where x >= 0 (NaN too), slope · x below 0: `where(x < 0, x * slope, x)`; a slope of
    one value is a number, a constant of several a parameter."""
    x = importer.tensor(node, 0, problems)
    slope = importer.operand(node, 1)
    if x is not None and isinstance(slope, np.ndarray) and slope.size == 1 and \
            _float_kind(slope):
        factor: str | None = importer.number(slope, problems, importer.type_of(x).dtype)
    else:
        factor = importer.tensor(node, 1, problems, "slope")
    if x is None or factor is None or problems.found:
        return {}
    scaled = importer.apply(problems, "mul", x, factor)
    below = importer.apply(problems, "lt", x, other=0.0)
    return {node.output[0]: importer.apply(problems, "where", below, scaled, x)}


@_handles("GlobalMaxPool", ops=("amax",))
def _global_maxpool(importer: _Importer, index: int, node: onnx.NodeProto,
                    problems: _Problems) -> dict[str, Value]:
    """The max over every dimension after the first two, kept with size 1."""
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    rank = importer.type_of(x).rank
    if rank < 3:
        problems.add(E_SHAPE, f"GlobalMaxPool needs an input of rank 3 or more, got "
                     f"{importer.type_of(x)}")
        return {}
    return {node.output[0]: importer.apply(problems, "amax", x, axis=tuple(range(2, rank)),
                                           keepdim=True)}


@_handles("DepthToSpace", "SpaceToDepth", ops=("reshape", "transpose", "unsqueeze", "squeeze"))
def _depth_space(importer: _Importer, index: int, node: onnx.NodeProto,
                 problems: _Problems) -> dict[str, Value]:
    """ONNX's own definitions, a reshape to 6-D, a transpose and a reshape back (NCHW, the
    channel, height and width of fixed size): DepthToSpace moves blocks of channels into
    b x b pixels, SpaceToDepth the reverse (mode DCR or CRD)."""
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    attrs = _attributes(node)
    block = int(attrs.get("blocksize", 0))
    mode = _decode(attrs.get("mode", b"DCR"))
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or block < 1:
        problems.add(E_NOT_EXPRESSIBLE, f"{node.op_type} needs an NCHW input with C, H and W "
                     f"of fixed size and a blocksize of 1 or more, got {importer.type_of(x)}")
        return {}
    n, c, h, w = shape
    c, h, w = int(c), int(h), int(w)
    if node.op_type == "DepthToSpace":
        split, perm = ([n, block, block, c // block ** 2, h, w], (0, 3, 4, 1, 5, 2)) \
            if mode == "DCR" else ([n, c // block ** 2, block, block, h, w], (0, 1, 4, 2, 5, 3))
        final = [n, c // block ** 2, h * block, w * block]
        fits = c % (block * block) == 0
    else:
        split = [n, c, h // block, block, w // block, block]
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
        final = [n, c * block * block, h // block, w // block]
        fits = h % block == 0 and w % block == 0
    if not fits or mode not in ("DCR", "CRD"):
        problems.add(E_NOT_EXPRESSIBLE, f"{node.op_type} with blocksize {block} (mode {mode}) "
                     f"does not fit {importer.type_of(x)}")
        return {}
    name = node.output[0]
    blocks = _reshaped(importer, problems, x, split, name)
    moved = importer.apply(problems, "transpose", str(blocks), perm=perm) \
        if blocks is not None else None
    result = _reshaped(importer, problems, moved, final, name) if moved is not None else None
    if result is None:
        problems.add(E_NOT_EXPRESSIBLE, f"{node.op_type} of {importer.type_of(x)} has no "
                     "`.net` reshape")
        return {}
    return {node.output[0]: result}


def _following_bias(importer: _Importer, output: str, channels: int,
                    conv: bool) -> tuple[np.ndarray, int, str] | None:
    """A constant bias added by the only user of `output` (Add or Sub), in the layout of a
    dense ([..., C]) or a conv2d ([C, 1, 1]) result: (bias vector, user index, its output)."""
    user = importer.only_user(output)
    if user is None or user in importer.consumed or user in importer.patterns:
        return None
    node = importer.nodes[user]
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2:
        return None
    other = importer.other_operand(user, output)
    if other is None or (node.op_type == "Sub" and node.input[0] != output):
        return None
    constant = importer.values.get(other)
    if not isinstance(constant, np.ndarray) or not _float_kind(constant) or constant.size <= 1:
        return None
    shape = constant.shape
    if conv:
        matches = shape in ((channels, 1, 1), (1, channels, 1, 1))
    else:
        matches = constant.size == channels and shape[-1] == channels
    if not matches:
        return None
    bias = constant.reshape(channels).astype(np.float32)
    return (-bias if node.op_type == "Sub" else bias), user, node.output[0]


def _dense(importer: _Importer, index: int, node: onnx.NodeProto, problems: _Problems,
           x: str, weight: np.ndarray, bias: np.ndarray | None, output: str,
           weight_position: int = 1) -> dict[str, Value]:
    """`dense` with `weight` [units, in] (PyTorch's layout), absorbing a following bias add."""
    units = weight.shape[0]
    following = _following_bias(importer, output, units, conv=False)
    also: tuple[str, ...] = ()  # the bias added after, for the layer's name
    if following is not None:
        also = (importer.other_operand(following[1], output) or "",)
        extra, user, output = following
        bias = extra if bias is None else bias + extra
        importer.consumed.add(user)
    layer = importer.layer_name(node, "dense", weight_position, also=also)
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return {output: importer.apply(problems, "dense", x, units=units, bias=bias is not None,
                                   layer=layer, params=params)}


@_handles("Gemm", ops=("dense", "matmul", "mul", "add", "transpose"), parameters=(1, 2))
def _gemm(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if trans_a:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "transA=1 is not supported: A's rows are the "
                     "batch, and `.net` never moves the batch dimension")
    a = importer.tensor(node, 0, problems, "A")
    b, c = importer.operand(node, 1), importer.operand(node, 2)
    if a is None or problems.found:
        return {}
    if importer.type_of(a).rank != 2:
        problems.add(E_SHAPE, f"A has shape {format_shape(importer.type_of(a).shape)}; Gemm "
                     "needs a matrix")
        return {}
    if isinstance(b, np.ndarray):
        if not _float_kind(b) or b.ndim != 2:
            problems.add(E_DTYPE if not _float_kind(b) else E_SHAPE,
                         f"B must be a float matrix, got {b.dtype} {format_shape(b.shape)}")
            return {}
        weight = (b if trans_b else b.T).astype(np.float32) * np.float32(alpha)
        units = weight.shape[0]
        bias: np.ndarray | None = None
        if isinstance(c, np.ndarray):
            if c.ndim > 2 or not _broadcasts_into(c.shape, (1, units)) or \
                    (c.ndim == 2 and c.shape[0] != 1):
                problems.add(E_CONSTANT_TENSOR, f"C has shape {format_shape(c.shape)}; only a "
                             f"bias that is the same for every row ([{units}], [1, {units}] or "
                             "a scalar) has a `.net` form")
                return {}
            bias = np.broadcast_to(c.astype(np.float32) * np.float32(beta), (1, units)) \
                .reshape(units).copy()
        if isinstance(c, str):
            product = next(iter(_dense(importer, index, node, problems, a, weight, None,
                                       node.output[0] + "_product").values()))
            if beta != 1.0:
                c = importer.apply(problems, "mul", c,
                                   importer.number(np.float32(beta), problems, "f32"))
            return {node.output[0]: importer.apply(problems, "add", product, c)}
        return _dense(importer, index, node, problems, a, weight, bias, node.output[0])
    if b is None:
        problems.add(E_MODEL, "B is missing")
        return {}
    if trans_b:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "transB=1 with a B computed at run time is not "
                     "supported: transposing B would move its first dimension")
        return {}
    result = importer.apply(problems, "matmul", a, b)
    dtype = importer.type_of(result).dtype
    if alpha != 1.0:
        result = importer.apply(problems, "mul", result,
                                importer.number(np.float32(alpha), problems, dtype))
    if c is not None:
        if isinstance(c, np.ndarray):
            c = c * np.float32(beta)
            result = _binary_constant(importer, node, problems, "add", result, c, True)
        else:
            if beta != 1.0:
                c = importer.apply(problems, "mul", c,
                                   importer.number(np.float32(beta), problems, dtype))
            result = importer.apply(problems, "add", result, c)
    return {node.output[0]: result}


@_handles("MatMul", ops=("matmul", "dense", "transpose"))
def _matmul(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    a, b = importer.operand(node, 0), importer.operand(node, 1)
    if isinstance(a, str) and isinstance(b, str):
        return {node.output[0]: importer.apply(problems, "matmul", a, b)}
    if isinstance(a, str) and isinstance(b, np.ndarray):
        if not _float_kind(b) or b.ndim != 2:
            problems.add(E_CONSTANT_TENSOR, f"its constant B has shape {format_shape(b.shape)}; "
                         "only a constant matrix (a `dense` weight) has a `.net` form")
            return {}
        return _dense(importer, index, node, problems, a, b.T.astype(np.float32), None,
                      node.output[0])
    if isinstance(a, np.ndarray) and isinstance(b, str):
        # W @ x for x [N, ..., K, M] is (x^T W^T)^T: dense on x with its last two dims swapped.
        rank = importer.type_of(b).rank
        if not _float_kind(a) or a.ndim != 2 or rank < 3:
            problems.add(E_CONSTANT_TENSOR, f"its constant A has shape {format_shape(a.shape)} "
                         f"against B of rank {rank}; only a constant matrix times a tensor of "
                         "rank 3 or more has a `.net` form")
            return {}
        perm = (*range(rank - 2), rank - 1, rank - 2)
        swapped = importer.apply(problems, "transpose", b, perm=perm)
        product = _dense(importer, index, node, problems, swapped, a.astype(np.float32), None,
                         node.output[0] + "_transposed", weight_position=0)
        value = next(iter(product.values()))
        return {node.output[0]: importer.apply(problems, "transpose", value, perm=perm)}
    problems.add(E_MODEL, "needs two operands")
    return {}


def _spatial(node: onnx.NodeProto, problems: _Problems, spatial: Sequence[Dim] | None,
             kernel: Sequence[int], dilation: Sequence[int]
             ) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """Strides and explicit (top, left, bottom, right) pads from the ONNX attributes; SAME
    padding needs the input's (height, width) in `spatial` (None: unknown, not checked)."""
    attrs = _attributes(node)
    strides = tuple(attrs.get("strides", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    auto_pad = _decode(attrs.get("auto_pad", "NOTSET"))
    if len(strides) != 2 or len(pads) != 4:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"strides {list(strides)} / pads {list(pads)} "
                     "are not those of a 2-D window")
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if spatial is None:
            return None
        totals = []
        for size, k, s, d in zip(spatial, kernel, strides, dilation):
            out = -(-int(size) // s)
            totals.append(max((out - 1) * s + d * (k - 1) + 1 - int(size), 0))
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in totals]
        else:
            begin = [t - t // 2 for t in totals]
        pads = (begin[0], begin[1], totals[0] - begin[0], totals[1] - begin[1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad != "NOTSET":
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"auto_pad={auto_pad!r} is not supported")
        return None
    top, left, bottom, right = (int(p) for p in pads)
    return (int(strides[0]), int(strides[1])), (top, left, bottom, right)


def _windowed_input(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                    what: str) -> tuple[str | None, tuple[Dim, ...] | None, bool]:
    """(x, its (height, width), whether it is poisoned): attribute checks go on for a
    poisoned input, so that every problem of the node is reported."""
    try:
        x = importer.tensor(node, 0, problems)
    except _Poisoned:
        return None, None, True
    if x is None or not _require_4d(importer, x, problems, what):
        return None, None, False
    return x, importer.type_of(x).shape[2:], False


def _require_4d(importer: _Importer, x: str, problems: _Problems, what: str) -> bool:
    shape = importer.type_of(x).shape
    if len(shape) != 4:
        problems.add(E_SHAPE, f"its input has shape {format_shape(shape)}; `.net` has only "
                     f"2-D {what} over NCHW (rank 4)")
        return False
    return True


def _conv1d(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
            weight: np.ndarray, bias: np.ndarray | None) -> dict[str, Value]:
    """A Conv with a 3-D W: `conv1d` (symmetric pads only, as its int padding)."""
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    kernel = [int(k) for k in attrs.get("kernel_shape", weight.shape[2:])]
    pads = [int(p) for p in attrs.get("pads", (0, 0))]
    auto_pad = _decode(attrs.get("auto_pad", "NOTSET"))
    if kernel != [weight.shape[2]]:
        problems.add(E_SHAPE, f"kernel_shape {kernel} does not match W's shape "
                     f"{format_shape(weight.shape)}")
    if auto_pad not in ("NOTSET", "VALID"):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"auto_pad={auto_pad!r} is not supported for "
                     "1-D convolutions (give explicit pads)")
    elif len(pads) != 2 or pads[0] != pads[1]:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"pads {pads}: `.net`'s conv1d pads both ends "
                     "alike")
    if x is None or problems.found:
        return {}
    if importer.type_of(x).rank != 3:
        problems.add(E_SHAPE, f"its input has shape {format_shape(importer.type_of(x).shape)}; "
                     "a 1-D convolution needs [N, C, L]")
        return {}
    stride = [int(v) for v in attrs.get("strides", (1,))]
    dilation = [int(v) for v in attrs.get("dilations", (1,))]
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return {node.output[0]: importer.apply(
        problems, "conv1d", x, filters=weight.shape[0], kernel=kernel[0], stride=stride[0],
        padding=0 if auto_pad == "VALID" else pads[0], dilation=dilation[0],
        groups=int(attrs.get("group", 1)), bias=bias is not None,
        layer=importer.layer_name(node, "conv1d"), params=params)}


@_handles("Conv", ops=("conv2d", "conv1d"), parameters=(1, 2))
def _conv(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    weight = importer.constant(node, 1, problems, "weight W")
    bias = importer.constant(node, 2, problems, "bias B", required=False)
    if weight is not None and weight.ndim == 3:
        return _conv1d(importer, node, problems, weight, bias)
    x, spatial, poisoned = _windowed_input(importer, node, problems, "convolutions")
    if weight is None:
        return {}
    if weight.ndim != 4:
        problems.add(E_SHAPE, f"W has shape {format_shape(weight.shape)}; `.net` has only "
                     "1-D and 2-D convolutions")
        return {}
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", weight.shape[2:]))
    if kernel != tuple(weight.shape[2:]):
        problems.add(E_SHAPE, f"kernel_shape {list(kernel)} does not match W's shape "
                     f"{format_shape(weight.shape)}")
        return {}
    dilation = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    window = _spatial(node, problems, spatial, kernel, dilation)
    if window is None:
        return {}
    stride, (top, left, bottom, right) = window
    padding: Any = (top, left)
    if (top, left) != (bottom, right):
        same = Window.from_attrs("conv2d", Attrs(kernel=kernel, stride=stride,
                                                 dilation=dilation, padding="same")) \
            if stride == (1, 1) else None
        if same is None or same.padding != (top, left, bottom, right):
            problems.add(E_UNSUPPORTED_ATTRIBUTE,
                         f"asymmetric padding (top, left, bottom, right) = "
                         f"{(top, left, bottom, right)} has no `.net` form (only symmetric "
                         "padding, and PyTorch's \"same\" for stride 1)")
            return {}
        padding = "same"
    if poisoned:
        raise _Poisoned
    if x is None or problems.found:
        return {}
    filters = weight.shape[0]
    output = node.output[0]
    following = _following_bias(importer, output, filters, conv=True)
    also: tuple[str, ...] = ()  # the bias added after, for the layer's name
    if following is not None:
        also = (importer.other_operand(following[1], output) or "",)
        extra, user, output = following
        bias = extra if bias is None else bias.astype(np.float32) + extra
        importer.consumed.add(user)
    layer = importer.layer_name(node, "conv2d", also=also)
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return {output: importer.apply(
        problems, "conv2d", x, filters=filters, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=int(attrs.get("group", 1)), bias=bias is not None,
        layer=layer, params=params)}


@_handles("ConvTranspose", ops=("conv_transpose2d",), parameters=(1, 2))
def _conv_transpose(importer: _Importer, index: int, node: onnx.NodeProto,
                    problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    weight = importer.constant(node, 1, problems, "weight W")
    bias = importer.constant(node, 2, problems, "bias B", required=False)
    x, _, poisoned = _windowed_input(importer, node, problems, "transposed convolutions")
    if weight is not None and weight.ndim != 4:
        problems.add(E_SHAPE, f"W has shape {format_shape(weight.shape)}; `.net` has only "
                     "2-D transposed convolutions")
        return {}
    for name in ("output_shape", "auto_pad"):
        if name in attrs and _decode(attrs[name]) not in ("NOTSET",):
            problems.add(E_UNSUPPORTED_ATTRIBUTE, f"{name}={_decode(attrs[name])!r} is not "
                         "supported (give pads and output_padding, as PyTorch exports)")
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    extra = [int(p) for p in attrs.get("output_padding", (0, 0))]
    if len(pads) == 4 and len(extra) == 2:
        # A smaller end pad is PyTorch's output_padding (netc exports it so at or above the
        # stride, which onnxruntime refuses as output_padding).
        extra = [e + begin - end for e, begin, end in zip(extra, pads[:2], pads[2:])]
        pads = [*pads[:2], *pads[:2]]
    if len(pads) != 4 or min(extra) < 0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"pads {list(attrs.get('pads', ()))}: `.net`'s "
                     "conv_transpose2d crops the start as much as the end or more")
    if poisoned:
        raise _Poisoned
    if x is None or weight is None or problems.found:
        return {}
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", weight.shape[2:]))
    if kernel != tuple(weight.shape[2:]):
        problems.add(E_SHAPE, f"kernel_shape {list(kernel)} does not match W's shape "
                     f"{format_shape(weight.shape)}")
        return {}
    groups = int(attrs.get("group", 1))
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return {node.output[0]: importer.apply(
        problems, "conv_transpose2d", x, filters=weight.shape[1] * groups, kernel=kernel,
        stride=tuple(int(s) for s in attrs.get("strides", (1, 1))), padding=tuple(pads[:2]),
        output_padding=tuple(extra),
        groups=groups, dilation=tuple(int(d) for d in attrs.get("dilations", (1, 1))),
        bias=bias is not None, layer=importer.layer_name(node, "conv_transpose2d"),
        params=params)}


def _extra_padding_is_ceil_mode(node: onnx.NodeProto, attrs: Mapping[str, Any],
                                spatial: Sequence[Dim] | None, kernel: Sequence[int],
                                stride: tuple[int, int], pads: tuple[int, int, int, int]) -> bool:
    """Whether a floor-mode pool whose bottom/right padding exceeds its top/left computes the
    ceil-mode pool with the top/left padding (netc's export of such a pool): the same windows
    where padding never counts (a max, an average without count_include_pad)."""
    top, left, bottom, right = pads
    if attrs.get("ceil_mode", 0) or spatial is None or bottom < top or right < left or (
            node.op_type == "AveragePool" and attrs.get("count_include_pad", 0)):
        return False
    ceil = Window(tuple(kernel), stride, (1, 1), (top, left, top, left),
                  ceil_mode=True)
    floor = Window(tuple(kernel), stride, (1, 1), pads)
    shape = TensorType("f32", (1, 1, *(int(d) for d in spatial)))
    try:
        return ceil.output_size("pool", shape) == floor.output_size("pool", shape)
    except ShapeError:
        return False


@_handles("MaxPool", "AveragePool", ops=("maxpool2d", "avgpool2d", "unsqueeze", "cast", "eq",
                                          "arange", "where", "sum", "transpose", "matmul"))
def _pool(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    """`.net`'s pools where they are that; else an AveragePool (any dilation, padding, rank)
    of fixed sizes as its matrices over each axis (`_by_axis_matrices`)."""
    pooled = _pooled(importer, node, problems)
    return pooled if node.op_type == "MaxPool" else \
        _or_by_axis_matrices(importer, node, problems, pooled)


def _pooled(importer: _Importer, node: onnx.NodeProto, problems: _Problems
            ) -> dict[str, Value]:
    attrs = _attributes(node)
    op = "maxpool2d" if node.op_type == "MaxPool" else "avgpool2d"
    dilation = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    if any(d != 1 for d in dilation):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"dilations={list(dilation)}: `.net` pools have "
                     "no dilation")
    if node.op_type == "MaxPool":
        _no_extra_outputs(node, problems, ["Indices"])
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"kernel_shape {list(kernel)} is not 2-D")
    x, spatial, poisoned = _windowed_input(importer, node, problems, "pooling")
    if problems.found:
        return {}
    window = _spatial(node, problems, spatial, kernel, (1, 1))
    if window is None:
        if poisoned:
            raise _Poisoned
        return {}
    stride, (top, left, bottom, right) = window
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if (top, left) != (bottom, right) and _extra_padding_is_ceil_mode(
            node, attrs, spatial, kernel, stride, (top, left, bottom, right)):
        ceil_mode, bottom, right = True, top, left
    if (top, left) != (bottom, right):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"asymmetric padding (top, left, bottom, right) = "
                     f"{(top, left, bottom, right)} has no `.net` form for pools")
    elif top > kernel[0] // 2 or left > kernel[1] // 2:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"padding {[top, left]} is more than half the "
                     f"kernel {list(kernel)}, which `.net` pools do not allow")
    if poisoned:
        raise _Poisoned
    if x is None or problems.found:
        return {}
    # ceil_mode as onnxruntime and PyTorch read it (a last window starting in the trailing
    # padding is dropped); ONNX's count_include_pad defaults to 0, `.net`'s to true.
    extra = {"ceil_mode": ceil_mode}
    if node.op_type == "AveragePool":
        extra["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
    return {node.output[0]: importer.apply(problems, op, x, kernel=kernel, stride=stride,
                                           padding=(top, left), **extra)}


@_handles("GlobalAveragePool", ops=("global_avgpool",))
def _global_avgpool(importer: _Importer, index: int, node: onnx.NodeProto,
                    problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None or not _require_4d(importer, x, problems, "pooling"):
        return {}
    return {node.output[0]: importer.apply(problems, "global_avgpool", x)}


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@_handles("Pad", ops=("pad",), parameters=(1, 2, 3))
def _pad(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    mode = _decode(attrs.get("mode", "constant"))
    if mode not in _PAD_MODES:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"mode={mode!r} is not supported (`.net`'s pad "
                     "has constant, reflect and edge as replicate)")
    axes_value = importer.operand(node, 3) if len(node.input) > 3 and node.input[3] else None
    if axes_value is not None and not isinstance(axes_value, np.ndarray):
        problems.add(E_NOT_CONSTANT, "the axes are computed at run time; `.net` needs them "
                     "as a constant (an initializer)")
    if importer.opset < 11:
        pads_value: Any = np.asarray(attrs.get("pads", ()), dtype=np.int64)
        fill: Any = np.float32(attrs.get("value", 0.0))
    else:
        pads_value = importer.operand(node, 1)
        fill = importer.constant(node, 2, problems, "constant_value", required=False)
    if not isinstance(pads_value, np.ndarray):
        problems.add(E_NOT_CONSTANT, "the pads are computed at run time; `.net` needs them "
                     "as a constant (an initializer)")
    if fill is not None and np.size(fill) != 1:
        problems.add(E_SHAPE, f"constant_value has shape {format_shape(np.shape(fill))}, not "
                     "a scalar")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    rank = importer.type_of(x).rank
    onnx_pads = [int(p) for p in np.asarray(pads_value).reshape(-1)]
    axes = list(range(rank)) if axes_value is None else \
        [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes_value).reshape(-1)]
    if len(onnx_pads) != 2 * len(axes) or not all(0 <= a < rank for a in axes) or \
            len(set(axes)) != len(axes):
        problems.add(E_SHAPE, f"{len(onnx_pads)} pads for axes {axes} of an input of rank "
                     f"{rank}")
        return {}
    # The pads of the axes given (begins, then ends), as pads of every axis.
    every = [0] * (2 * rank)
    for position, axis in enumerate(axes):
        every[axis], every[rank + axis] = onnx_pads[position], onnx_pads[len(axes) + position]
    onnx_pads = every
    # F.pad's order: (begin, end) from the last axis backwards, leading unpadded axes left out.
    pairs = [(onnx_pads[axis], onnx_pads[rank + axis]) for axis in reversed(range(rank))]
    while len(pairs) > 1 and pairs[-1] == (0, 0):
        pairs.pop()
    value = 0.0 if fill is None else float(np.asarray(fill).reshape(-1)[0])
    return {node.output[0]: importer.apply(
        problems, "pad", x, pads=tuple(p for pair in pairs for p in pair),
        mode=_PAD_MODES[mode], value=value)}


_RESIZE_FORMS = {
    ("nearest", "asymmetric"): ("nearest", False),
    ("linear", "half_pixel"): ("bilinear", False),
    ("linear", "pytorch_half_pixel"): ("bilinear", False),
    ("linear", "align_corners"): ("bilinear", True),
}
"""(ONNX mode, coordinate_transformation_mode) -> `.net` (mode, align_corners): the forms
PyTorch's exporters write."""


_MATRICES_EVALUATED = 1 << 20
"""Elements: how much of ONNX's reference implementation the import may run to read a node's
matrices (the input's size times the sum of its dimensions)."""


def _axis_matrices(importer: _Importer, node: onnx.NodeProto, shape: Sequence[Dim]
                   ) -> list[np.ndarray] | None:
    """A node (a Resize, an AveragePool) of a fixed `shape` as one matrix per axis, [output
    size, input size]: column j of axis d is what ONNX's reference implementation makes of an
    input that is 1 at index j along d (and constant along the other axes). None where the
    shape is not fixed, the work too large, the other operands not constants, or the node not
    such a product of matrices (checked on a random input: tf_crop_and_resize's
    extrapolation is not, nor padding counted in an average)."""
    from onnx.reference import ReferenceEvaluator

    if not all(isinstance(d, int) for d in shape):
        return None
    dims = [int(d) for d in shape]
    if math.prod(dims) * (sum(dims) + 1) > _MATRICES_EVALUATED:
        return None
    feeds = {name: importer.values.get(name) for name in node.input[1:] if name}
    if not all(isinstance(value, np.ndarray) for value in feeds.values()):
        return None
    try:
        evaluator = ReferenceEvaluator(node, opsets={"": importer.opset})

        def resized(x: np.ndarray) -> np.ndarray:
            results: list[Any] = list(evaluator.run(None, {node.input[0]: x, **feeds}))
            return np.asarray(results[0], np.float64)

        matrices = []
        for axis, size in enumerate(dims):
            along = [1] * len(dims)
            along[axis] = size
            columns = [resized(np.broadcast_to(np.eye(size, dtype=np.float32)[j].reshape(along),
                                               dims))
                       for j in range(size)]
            matrices.append(np.stack([c[tuple(slice(None) if a == axis else 0
                                              for a in range(len(dims)))] for c in columns], 1))
        sample = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
        expected, product = resized(sample), sample.astype(np.float64)
        for axis, matrix in enumerate(matrices):
            product = np.moveaxis(np.tensordot(matrix, product, axes=([1], [axis])), 0, axis)
    except Exception:  # leave it to the diagnostics of the interpolate form
        return None
    if product.shape != expected.shape or not np.allclose(product, expected, rtol=1e-5,
                                                          atol=1e-6):
        return None
    return matrices


def _by_axis_matrices(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                      x: str) -> str | None:
    """A node as its matrix along each axis it changes (`_axis_matrices`): a gather
    (`_gathered`, exact) where each output reads one input, else a matmul over that axis."""
    matrices = _axis_matrices(importer, node, importer.type_of(x).shape)
    if matrices is None:
        return None
    rank = len(matrices)
    for axis, matrix in enumerate(matrices):
        if matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(len(matrix))):
            continue
        name = f"{node.output[0]}_axis_{axis}"
        if np.all((matrix == 0) | (matrix == 1)) and np.all(matrix.sum(axis=1) == 1):
            sources = np.argmax(matrix, axis=1).astype(np.float32)
            x = _gathered(importer, problems, x, importer.free_param(name, sources), axis)
            continue
        # x with that axis last, times the matrix's transpose, and the axis back.
        order = (*(a for a in range(rank) if a != axis), axis)
        moved = importer.apply(problems, "transpose", x, perm=order)
        weights = importer.free_param(name, matrix.T.astype(np.float32))
        if importer.type_of(x).dtype != "f32":
            weights = importer.apply(problems, "cast", weights, dtype=importer.type_of(x).dtype)
        product = importer.apply(problems, "matmul", moved, weights)
        x = importer.apply(problems, "transpose", product,
                           perm=tuple(int(i) for i in np.argsort(order)))
    return x


@_handles("Resize", ops=("interpolate", "unsqueeze", "cast", "eq", "arange", "where", "sum",
                         "transpose", "matmul"), parameters=(1, 2, 3))
def _resize(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    """`interpolate` where it is that; else, every size fixed, the matrices of ONNX's own
    Resize along each axis (`_by_axis_matrices`)."""
    return _or_by_axis_matrices(importer, node, problems,
                                _interpolated(importer, node, problems))


@_handles("Upsample", ops=("unsqueeze", "cast", "eq", "arange", "where", "sum", "transpose",
                           "matmul"), parameters=(1,))
def _upsample(importer: _Importer, index: int, node: onnx.NodeProto,
              problems: _Problems) -> dict[str, Value]:
    """Resize's predecessor (opsets 7 to 9), as its matrices over each axis."""
    x = importer.tensor(node, 0, problems)
    if x is None:
        return {}
    problems.add(E_NOT_EXPRESSIBLE, "an Upsample imports only as matrices over each axis: "
                 "every size fixed and constant scales")
    return _or_by_axis_matrices(importer, node, problems, {})


def _or_by_axis_matrices(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                         results: dict[str, Value]) -> dict[str, Value]:
    """`results` where the node was translated without problems; else, if it can be, the
    node as its matrices over each axis (`_by_axis_matrices`), its problems dropped."""
    x = importer.values.get(node.input[0])
    if not problems.found or not isinstance(x, str):
        return results
    by_matrices = _Problems(problems.label)
    value = _by_axis_matrices(importer, node, by_matrices, x)
    if value is None or by_matrices.found:
        return results
    problems.found.clear()
    return {node.output[0]: value}


def _interpolated(importer: _Importer, node: onnx.NodeProto,
                  problems: _Problems) -> dict[str, Value]:
    attrs = {name: _decode(value) for name, value in _attributes(node).items()}
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    form = _RESIZE_FORMS.get((mode, transform))
    if form is None:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"mode={mode!r} with coordinate_transformation_"
                     f"mode={transform!r} is not supported (as `interpolate`: nearest with "
                     "asymmetric; linear with half_pixel, pytorch_half_pixel or align_corners; "
                     "as matrices over each axis: a resize of fixed sizes, linear in its input)")
    if mode == "nearest":
        _expect(problems, attrs, "nearest_mode", "floor", "only PyTorch's floor rule")
    for name, neutral in (("antialias", 0), ("exclude_outside", 0), ("axes", None),
                          ("keep_aspect_ratio_policy", "stretch")):
        if name in attrs and attrs[name] != neutral:
            problems.add(E_UNSUPPORTED_ATTRIBUTE, f"{name}={attrs[name]!r} is not supported")
    if importer.opset < 11:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"Resize of opset {importer.opset} (before 11) "
                     "is not supported")
    x = importer.tensor(node, 0, problems)
    scales, sizes = importer.operand(node, 2), importer.operand(node, 3)
    if x is None or problems.found or form is None:
        return {}
    shape = importer.type_of(x).shape
    if len(shape) != 4:
        problems.add(E_SHAPE, f"its input has shape {format_shape(shape)}; `.net` resizes "
                     "only NCHW (rank 4)")
        return {}
    size: tuple[int, int] | None = None
    scale: float | None = None
    if sizes is not None:
        entries = list(sizes.entries) if isinstance(sizes, _Shape) else (
            [int(v) for v in np.asarray(sizes).reshape(-1)] if isinstance(sizes, np.ndarray)
            else None)
        # The importer names the model's batch: a constant size there is that batch.
        if entries is None or len(entries) != 4 or not all(
                entry == dim or isinstance(dim, str) for entry, dim in zip(entries[:2], shape)) \
                or not all(isinstance(e, int) for e in entries[2:]):
            problems.add(E_NOT_EXPRESSIBLE, "sizes must keep N and C and give a constant "
                         "height and width")
            return {}
        size = (int(entries[2]), int(entries[3]))
    elif isinstance(scales, np.ndarray) and scales.size == 4:
        factors = [float(v) for v in scales.reshape(-1)]
        if factors[:2] != [1.0, 1.0] or factors[2] != factors[3]:
            problems.add(E_NOT_EXPRESSIBLE, f"scales {factors}: `.net`'s interpolate takes one "
                         "scale factor for height and width and keeps N and C")
            return {}
        scale = factors[2]
        spatial = [int(d) for d in shape[2:]]
        if transform == "align_corners" and any(size * scale != math.floor(size * scale)
                                                for size in spatial):
            problems.add(E_NOT_EXPRESSIBLE, f"align_corners with scale {scale} on {spatial}: "
                         "ONNX reads the fractional output length, PyTorch the output size")
            return {}
    else:
        problems.add(E_NOT_CONSTANT, "needs constant scales (4 values) or sizes")
        return {}
    interpolation, corners = form
    if transform == "pytorch_half_pixel":
        # It reads position 0 for an output of size 1, where PyTorch (and half_pixel) reads
        # the centre: the same only where that axis is not resized to 1.
        outs = size if size is not None else tuple(
            math.floor(int(d) * (scale or 1.0)) for d in shape[2:])
        if any(out == 1 and int(d) > 1 for out, d in zip(outs, shape[2:])):
            problems.add(E_UNSUPPORTED_ATTRIBUTE, "pytorch_half_pixel with an output size of "
                         "1 reads the first position, not PyTorch's centre")
            return {}
    return {node.output[0]: importer.apply(
        problems, "interpolate", x, size=size, scale_factor=scale, mode=interpolation,
        align_corners=corners)}


@_handles("BatchNormalization", ops=("batchnorm",), parameters=(1, 2, 3, 4))
def _batchnorm(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    if attrs.get("training_mode", 0):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "training_mode=1 normalises with the batch's "
                     "statistics; `.net` batchnorm uses the running statistics")
    if importer.opset < 7 and attrs.get("is_test", 0) == 0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "is_test=0 (training mode) is not supported")
    if attrs.get("spatial", 1) == 0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "spatial=0 (per-element statistics) is not "
                     "supported")
    _no_extra_outputs(node, problems, ["running_mean", "running_var", "saved_mean",
                                       "saved_var"])
    x = importer.tensor(node, 0, problems)
    arrays = [importer.constant(node, i, problems, what) for i, what in
              enumerate(("scale", "bias B", "input_mean", "input_var"), start=1)]
    if x is None or problems.found:
        return {}
    scale, shift, mean, var = (np.asarray(a, dtype=np.float32) for a in arrays)
    layer = importer.layer_name(node, "batchnorm")
    params = {"weight": scale, "bias": shift, "running_mean": mean, "running_var": var}
    # ONNX's momentum weighs the old running statistic, PyTorch's (and netc's) the new one.
    momentum = 1.0 - float(attrs.get("momentum", 0.9))
    return {node.output[0]: importer.apply(problems, "batchnorm", x,
                                           eps=float(attrs.get("epsilon", 1e-5)),
                                           momentum=min(max(momentum, 0.0), 1.0),
                                           layer=layer, params=params)}


def _channel_vectors(node: onnx.NodeProto, problems: _Problems, arrays: Sequence[np.ndarray],
                     channels: int, groups: int | None = None) -> list[np.ndarray] | None:
    """Per-channel scale and shift from ONNX's [C] (or, for a per-group form, [groups])."""
    vectors = []
    for array in arrays:
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        if groups is not None and flat.size == groups != channels:
            flat = np.repeat(flat, channels // groups)
        if flat.size != channels:
            problems.add(E_SHAPE, f"scale/bias of shape {format_shape(np.shape(array))} do not "
                         f"match the {channels} channels")
            return None
        vectors.append(flat)
    return vectors


@_handles("InstanceNormalization", ops=("instancenorm",), parameters=(1, 2))
def _instancenorm(importer: _Importer, index: int, node: onnx.NodeProto,
                  problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    arrays = [importer.constant(node, i, problems, what)
              for i, what in ((1, "scale"), (2, "bias B"))]
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    vectors = _channel_vectors(node, problems, [a for a in arrays if a is not None],
                               int(shape[1]) if len(shape) > 1 else 0)
    if vectors is None:
        return {}
    weight, bias = vectors
    layer = importer.layer_name(node, "instancenorm")
    return {node.output[0]: importer.apply(
        problems, "instancenorm", x, eps=float(_attributes(node).get("epsilon", 1e-5)),
        affine=True, layer=layer, params={"weight": weight, "bias": bias})}


@_handles("GroupNormalization", ops=("groupnorm",), parameters=(1, 2))
def _groupnorm(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    if int(attrs.get("stash_type", 1)) != 1:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "stash_type other than 1 (float32 statistics)")
    x = importer.tensor(node, 0, problems)
    arrays = [importer.constant(node, i, problems, what)
              for i, what in ((1, "scale"), (2, "bias"))]
    groups = int(attrs.get("num_groups", 0))
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    channels = int(shape[1]) if len(shape) > 1 else 0
    # Opsets 18 to 20 scale per group, 21 and later per channel.
    vectors = _channel_vectors(node, problems, [a for a in arrays if a is not None], channels,
                               groups if importer.opset < 21 else None)
    if vectors is None:
        return {}
    weight, bias = vectors
    layer = importer.layer_name(node, "groupnorm")
    return {node.output[0]: importer.apply(
        problems, "groupnorm", x, groups=groups, eps=float(attrs.get("epsilon", 1e-5)),
        layer=layer, params={"weight": weight, "bias": bias})}


def _shaped(importer: _Importer, problems: _Problems, value: str, dims: Sequence[Dim],
            name: str, suffix: str) -> str:
    """`value` reshaped to `dims`, whose sizes that change are fixed (`_reshaped`)."""
    if tuple(dims) == importer.type_of(value).shape:
        return value
    result = _reshaped(importer, problems, value, dims, name)
    assert result is not None  # the callers check that the sizes that change are fixed
    importer.proposed_names[result] = name + suffix
    return result


def _normalised_axes(importer: _Importer, problems: _Problems, x: str, attrs: Mapping[str, Any],
                     parameter: np.ndarray) -> tuple[int, int] | None:
    """The first normalised dimension (`axis`, from the end where negative) and the number
    of elements normalised together, for a LayerNormalization or RMSNormalization of `x`
    whose scale is `parameter`; None (and a problem) where `.net` has no form."""
    shape = importer.type_of(x).shape
    rank = len(shape)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={attrs.get('axis')} is out of range for "
                     f"{format_shape(shape)}")
        return None
    if not all(isinstance(d, int) for d in shape[max(axis, 1):]) or (
            axis == 0 and not isinstance(shape[0], int)):
        problems.add(E_NOT_EXPRESSIBLE, f"normalises over dimensions {axis} on of "
                     f"{format_shape(shape)}, one of them a named (run-time) size; `.net` "
                     "normalises over one dimension of known size (their product)")
        return None
    features = math.prod(int(d) for d in shape[axis:])
    if parameter.size != features:
        problems.add(E_SHAPE, f"scale/bias of shape {format_shape(parameter.shape)} do not "
                     f"match the normalised dimensions {format_shape(shape[axis:])}")
        return None
    return axis, features


def _rows(importer: _Importer, problems: _Problems, x: str, axis: int, features: int,
          name: str) -> str:
    """`x` with its dimensions from `axis` on made one: [N, ..., features], or [1, features]
    for axis 0 (every size fixed)."""
    shape = importer.type_of(x).shape
    return _shaped(importer, problems, x, [*shape[:axis], features] if axis else [1, features],
                   name, "_rows")


@_handles("RMSNormalization", ops=("rmsnorm", "reshape", "unsqueeze", "squeeze"), parameters=(1,))
def _rmsnorm(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    scale = importer.constant(node, 1, problems, "scale")
    if x is None or scale is None or problems.found:
        return {}
    found = _normalised_axes(importer, problems, x, attrs, scale)
    if found is None:
        return {}
    axis, features = found
    layer = importer.layer_name(node, "rmsnorm")
    normalised = importer.apply(
        problems, "rmsnorm", _rows(importer, problems, x, axis, features, node.output[0]),
        eps=float(attrs.get("epsilon", 1e-5)), layer=layer,
        params={"weight": scale.reshape(-1).astype(np.float32)})
    return {node.output[0]: _shaped(importer, problems, normalised, importer.type_of(x).shape,
                                    node.output[0], "_normalised")}


def _reshape_to(importer: _Importer, problems: _Problems, x: str,
                dims: Sequence[int]) -> str:
    return importer.apply(problems, "reshape", x, dims=tuple(int(d) for d in dims))


@_handles("LayerNormalization", ops=("layernorm", "reshape", "unsqueeze", "squeeze", "mean",
                                     "sub", "mul", "add", "rsqrt", "cast"), parameters=(1, 2))
def _layernorm(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    """Normalises over the dimensions from `axis` on: `.net` layernorm over the last one,
    after a reshape that makes them one (and keeps the batch, or, every size fixed, folds it
    in for axis 0). The Mean and InvStdDev outputs, where used, are computed beside it (f32,
    ONNX's stash type), from `mean` and `rsqrt`."""
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    scale = importer.constant(node, 1, problems, "scale")
    shift = importer.constant(node, 2, problems, "bias B", required=False)
    if x is None or scale is None or problems.found:
        return {}
    found = _normalised_axes(importer, problems, x, attrs, scale)
    if found is None:
        return {}
    axis, features = found
    if shift is not None and shift.size != features:
        problems.add(E_SHAPE, f"bias B of shape {format_shape(shift.shape)} does not match the "
                     f"scale, of {features} elements")
        return {}
    bias = np.zeros(features, np.float32) if shift is None else shift.reshape(features)
    params = {"weight": scale.reshape(features), "bias": bias}
    eps = float(attrs.get("epsilon", 1e-5))
    shape = importer.type_of(x).shape
    name = node.output[0] or node.output[1]
    rows = _rows(importer, problems, x, axis, features, name)
    results: dict[str, Value] = {}
    if node.output[0]:
        layer = importer.layer_name(node, "layernorm")
        normalised = importer.apply(problems, "layernorm", rows, eps=eps, layer=layer,
                                    params=params)
        results[node.output[0]] = _shaped(importer, problems, normalised, shape, name,
                                          "_normalised")
    if any(node.output[1:3]):
        stats = rows if importer.type_of(rows).dtype == "f32" else \
            importer.apply(problems, "cast", rows, dtype="f32")
        mean = importer.apply(problems, "mean", stats, axis=-1, keepdim=True)
        reduced = [*shape[:axis], *[1] * (len(shape) - axis)]
        if len(node.output) > 1 and node.output[1]:
            results[node.output[1]] = _shaped(importer, problems, mean, reduced, name, "_mean")
        if len(node.output) > 2 and node.output[2]:
            deviation = importer.apply(problems, "sub", stats, mean)
            variance = importer.apply(problems, "mean", importer.apply(
                problems, "mul", deviation, deviation), axis=-1, keepdim=True)
            inverse = importer.apply(problems, "rsqrt", importer.apply(
                problems, "add", variance, importer.builder.constant(eps)))
            results[node.output[2]] = _shaped(importer, problems, inverse, reduced, name,
                                              "_inv_std_dev")
    return results


@_handles("Softmax", "LogSoftmax", ops=("softmax", "log_softmax", "reshape"))
def _softmax(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    x = importer.tensor(node, 0, problems)
    if x is None:
        return {}
    shape = importer.type_of(x).shape
    rank = len(shape)
    attrs = _attributes(node)
    if importer.opset >= 13:
        return {node.output[0]: importer.apply(problems, op, x, axis=int(attrs.get("axis", -1)))}
    # Before opset 13 the input is seen as a matrix [prod(dims before axis), prod(the rest)]
    # and normalised along its rows: over all dimensions from `axis` on.
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return {node.output[0]: importer.apply(problems, op, x, axis=-1)}
    if axis <= 0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={attrs.get('axis', 1)} (opset "
                     f"{importer.opset}) normalises over the batch dimension too")
        return {}
    features = math.prod(int(d) for d in shape[axis:])
    flat = _reshape_to(importer, problems, x, [*shape[1:axis], features])
    importer.proposed_names[flat] = node.output[0] + "_flat"
    result = importer.apply(problems, op, flat, axis=-1)
    importer.proposed_names[result] = node.output[0] + "_rows"
    return {node.output[0]: _reshape_to(importer, problems, result, shape[1:])}


@_handles("Flatten", ops=("flatten", "reshape", "unsqueeze", "squeeze"))
def _flatten(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    """[prod(dims before axis), prod(the rest)]: `.net` flatten for axis 1, else a reshape
    (every size fixed where the first dimension changes)."""
    axis = int(_attributes(node).get("axis", 1))
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    rank = len(shape)
    if not -rank <= axis <= rank:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={axis} is out of range for "
                     f"{format_shape(shape)}")
        return {}
    axis = axis + rank if axis < 0 else axis
    if axis == 1:
        return {node.output[0]: importer.apply(problems, "flatten", x)}
    if all(isinstance(d, int) for d in shape):
        dims = [math.prod(int(d) for d in shape[:axis]), math.prod(int(d) for d in shape[axis:])]
        flat = _reshaped(importer, problems, x, dims, node.output[0])
        if flat is not None:
            return {node.output[0]: flat}
    problems.add(E_NOT_EXPRESSIBLE, f"axis={axis} on {format_shape(shape)} merges the named "
                 "(run-time) first dimension with others; a `.net` dimension is a name or a "
                 "number, never a product such as N * 12",
                 help="export with fixed sizes (no dynamic_axes)")
    return {}


def _reshaped(importer: _Importer, problems: _Problems, x: str, dims: Sequence[int | str],
              name: str) -> str | None:
    """`x` reshaped to `dims` (the first dimension included): `.net` reshape where the first
    dimension stays, else, every size fixed, `squeeze(reshape(unsqueeze(x, 0), dims), 0)`;
    None where neither is (a named dimension merged or split)."""
    shape = importer.type_of(x).shape
    first, rest = dims[0], dims[1:]
    fixed_rest = all(isinstance(d, int) for d in (*shape[1:], *rest))
    item = math.prod(int(d) for d in shape[1:]) if fixed_rest else None
    if first == shape[0] or (first == -1 and -1 not in rest and item is not None
                             and math.prod(int(d) for d in rest) == item):
        return importer.apply(problems, "reshape", x, dims=tuple(rest))
    if all(isinstance(d, int) for d in (*shape, *dims)):
        # Every size is fixed: a new first dimension of 1 is kept, the rest reshaped.
        lifted = importer.apply(problems, "unsqueeze", x, axis=0)
        reshaped = importer.apply(problems, "reshape", lifted, dims=tuple(dims))
        importer.proposed_names[reshaped] = name + "_lifted"
        return importer.apply(problems, "squeeze", reshaped, axis=0)
    return None


@_handles("Reshape", ops=("reshape", "unsqueeze", "squeeze"), parameters=(1,))
def _reshape(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    """`.net` reshape keeps the first dimension and reshapes the rest, each named dimension
    kept by name. A target that changes a fixed first dimension is written
    `squeeze(reshape(unsqueeze(x, 0), [dims]), 0)`; one that would merge or split a named
    dimension (`[N * 12, ...]`) has no `.net` form."""
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    target: list[int | str] | None
    if importer.opset < 5:
        target = [int(d) for d in attrs.get("shape", ())]
    elif isinstance(shape_target := importer.operand(node, 1), _Shape):
        target = list(shape_target.entries)  # named dimensions stand for themselves
        computed = [e for e in target if isinstance(e, str) and not is_valid_name(e)]
        if computed:
            problems.add(E_NOT_EXPRESSIBLE, f"reshapes to a shape with the size {computed[0]}, "
                         "computed from a run-time (named) dimension; a `.net` dimension is a "
                         "name or a number, never a product or sum such as N*4",
                         help="export with fixed sizes (no dynamic_axes), or keep the named "
                              "dimension whole in the reshape")
            return {}
    else:
        found = importer.constant(node, 1, problems, "shape")
        target = None if found is None else [int(d) for d in np.asarray(found).reshape(-1)]
    if x is None or target is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    if attrs.get("allowzero", 0) and 0 in target:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "allowzero=1 with a 0 in the shape makes an "
                     "empty tensor")
        return {}
    if not target:
        problems.add(E_NOT_EXPRESSIBLE, "reshapes to a scalar; `.net` reshape keeps the first "
                     "dimension")
        return {}
    dims: list[int | str] = []
    for position, size in enumerate(target):
        if size == 0:  # copies the input's dimension
            if position >= len(shape):
                problems.add(E_SHAPE, f"copies dimension {position}, which the input "
                             f"{format_shape(shape)} does not have")
                return {}
            size = shape[position]
        dims.append(size)
    reshaped = _reshaped(importer, problems, x, dims, node.output[0])
    if reshaped is not None:
        return {node.output[0]: reshaped}
    problems.add(E_NOT_EXPRESSIBLE, f"reshapes {format_shape(shape)} to {format_shape(tuple(dims))}, "
                 "which merges or splits a named (run-time) dimension; a `.net` dimension is a "
                 "name or a number, never a product such as N * 12",
                 help="export with fixed sizes (no dynamic_axes), or keep the named dimension "
                      "whole in the reshape")
    return {}


@_handles("Transpose", ops=("transpose",))
def _transpose(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    rank = importer.type_of(x).rank
    # Dimension 0 may move; the shape rule refuses to move a named dimension from first.
    perm = tuple(int(p) for p in attrs.get("perm", range(rank - 1, -1, -1)))
    return {node.output[0]: importer.apply(problems, "transpose", x, perm=perm)}


@_handles("Concat", ops=("concat", "stack"))
def _concat(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    values = [importer.tensor(node, i, problems) for i in range(len(node.input))
              if node.input[i]]
    if problems.found or any(v is None for v in values):
        return {}
    tensors = [str(v) for v in values]
    stacked = _stacked_axis(importer, index)
    if stacked is not None:  # its Unsqueezes passed their inputs through
        return {node.output[0]: importer.apply(problems, "stack", *tensors, axis=stacked)}
    if len(tensors) == 1:
        return {node.output[0]: tensors[0]}
    return {node.output[0]: importer.apply(problems, "concat", *tensors,
                                           axis=int(attrs.get("axis", 1)))}


# Reductions, shape ops and slicing (`netc.ops.reductions`, `netc.ops.shape`) -------------

_REDUCTIONS = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "amax",
               "ReduceMin": "amin", "ReduceLogSumExp": "logsumexp"}
_ALL = np.iinfo(np.int64).max


def _int_list(importer: _Importer, node: onnx.NodeProto, position: int, problems: _Problems,
              what: str) -> list[int] | None:
    """An optional operand of constant ints (axes, starts, ...) as a list; None when absent."""
    value = importer.operand(node, position)
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        problems.add(E_NOT_CONSTANT, f"the {what} (operand {position}) must be constant ints "
                     "(an initializer); `.net` needs them at compile time")
        raise _Poisoned
    return [int(v) for v in value.reshape(-1)]


def _axes(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
          input_since: int) -> list[int] | None:
    """The `axes` of a node that takes them as an attribute before opset `input_since` and as
    operand 1 from it on; None when not given."""
    if importer.opset >= input_since:
        return _int_list(importer, node, 1, problems, "axes")
    axes = _attributes(node).get("axes")
    return None if axes is None else [int(a) for a in axes]


@_handles(*_REDUCTIONS, ops=tuple(_REDUCTIONS.values()), parameters=(1,))
def _reduce(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    axes = _axes(importer, node, problems, 13 if node.op_type == "ReduceSum" else 18)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return {node.output[0]: x}
        axes = list(range(importer.type_of(x).rank))  # no axes: every dimension
    op = _REDUCTIONS[node.op_type]
    keepdim = bool(attrs.get("keepdims", 1))
    if importer.type_of(x).dtype == "bool" and op in ("amax", "amin"):
        # Over bools, max is "any" and min "all": computed on 0.0 and 1.0, exactly.
        number = importer.apply(problems, "cast", x, dtype="f32")
        found = importer.apply(problems, op, number, axis=tuple(axes), keepdim=keepdim)
        return {node.output[0]: importer.apply(problems, "cast", found, dtype="bool")}
    return {node.output[0]: importer.apply(problems, op, x, axis=tuple(axes), keepdim=keepdim)}


_SUM_OF = {"ReduceL1": "abs", "ReduceL2": "square", "ReduceSumSquare": "square",
           "ReduceLogSum": None}
"""The ONNX reductions `.net` writes as a `sum` of a term: what each sums (None: x itself);
ReduceL2 takes the square root of the sum, ReduceLogSum its logarithm."""


@_handles(*_SUM_OF, ops=("sum", "abs", "mul", "sqrt", "log"), parameters=(1,))
def _reduce_sum_of(importer: _Importer, index: int, node: onnx.NodeProto,
                   problems: _Problems) -> dict[str, Value]:
    """ReduceL1 = sum(abs(x)), ReduceL2 = sqrt(sum(x·x)), ReduceSumSquare = sum(x·x),
    ReduceLogSum = log(sum(x)): as ONNX's own function bodies compute them."""
    attrs = _attributes(node)
    axes = _axes(importer, node, problems, 18)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            problems.add(E_UNSUPPORTED_ATTRIBUTE, "noop_with_empty_axes=1 with no axes is not "
                         "supported (ONNX leaves what it computes unclear for this op)")
            return {}
        axes = list(range(importer.type_of(x).rank))  # no axes: every dimension
    term = _SUM_OF[node.op_type]
    summed = x if term is None else importer.apply(problems, "abs", x) if term == "abs" \
        else importer.apply(problems, "mul", x, x)
    total = importer.apply(problems, "sum", summed, axis=tuple(axes),
                           keepdim=bool(attrs.get("keepdims", 1)))
    finish = {"ReduceL2": "sqrt", "ReduceLogSum": "log"}.get(node.op_type)
    return {node.output[0]: total if finish is None else importer.apply(problems, finish, total)}


@_handles("ArgMax", "ArgMin", ops=("argmax", "neg", "sub", "amax", "eq", "ne", "where",
                                   "arange", "unsqueeze", "cast", "add", "mul"))
def _argmax(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    """ArgMax as `argmax`; ArgMin as the argmax of an order-reversed copy: -x for floats
    (exact, NaN stays NaN, so the first NaN wins as in ONNX and PyTorch), -x - 1 (the
    bitwise complement, which cannot overflow) for integers. With select_last_index, the
    largest position holding the max (`_last_position`)."""
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    dtype = importer.type_of(x).dtype
    if node.op_type == "ArgMin":
        x = importer.apply(problems, "neg", x)
        if dtype in INTEGER_DTYPES:
            x = importer.apply(problems, "sub", x, importer.builder.constant(1.0, dtype))
    axis, keepdim = int(attrs.get("axis", 0)), bool(attrs.get("keepdims", 1))
    if int(attrs.get("select_last_index", 0)):
        return {node.output[0]: _last_position(importer, problems, x, axis, keepdim)}
    return {node.output[0]: importer.apply(problems, "argmax", x, axis=axis, keepdim=keepdim)}


def _last_position(importer: _Importer, problems: _Problems, x: str, axis: int,
                   keepdim: bool) -> str:
    """The last position of the max of `x` along `axis` (of the last NaN, if any), exactly:
    the largest of (position + 1 where x is the max, else 0), minus 1, in `i64`."""
    x_type = importer.type_of(x)
    axis = axis % x_type.rank if -x_type.rank <= axis < x_type.rank else axis
    if not 0 <= axis < x_type.rank or not isinstance(x_type.shape[axis], int):
        problems.add(E_NOT_EXPRESSIBLE, f"select_last_index=1 along axis {axis} of {x_type} "
                     "needs a dimension of fixed size")
        raise _Poisoned
    largest = importer.apply(problems, "amax", x, axis=(axis,), keepdim=True)
    found = importer.apply(problems, "eq", x, largest)
    if x_type.dtype in _LARGEST:  # a NaN is the max: where the max is NaN, take the NaNs
        found = importer.apply(problems, "where", importer.apply(problems, "ne", largest, largest),
                               importer.apply(problems, "ne", x, x), found)
    one = importer.builder.constant(1.0, "i64")
    positions = importer.apply(problems, "add", importer.apply(
        problems, "arange", n=int(x_type.shape[axis])), one)
    for _ in range(x_type.rank - axis - 1):
        positions = importer.apply(problems, "unsqueeze", positions, axis=-1)
    marked = importer.apply(problems, "mul", importer.apply(problems, "cast", found, dtype="i64"),
                            positions)
    last = importer.apply(problems, "amax", marked, axis=(axis,), keepdim=keepdim)
    return importer.apply(problems, "sub", last, one)


@_handles("Squeeze", "Unsqueeze", ops=("squeeze", "unsqueeze"), parameters=(1,))
def _squeeze(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    axes = _axes(importer, node, problems, 13)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    if node.op_type == "Unsqueeze":
        user = importer.only_user(node.output[0])
        if user is not None and _stacked_axis(importer, user) is not None:
            return {node.output[0]: x}  # the Concat it feeds imports as `stack` of the inputs
        if not axes:
            problems.add(E_MODEL, "Unsqueeze needs axes")
            return {}
        rank = len(shape) + len(axes)
        # Inserted in increasing order, each lands at its final position.
        for axis in sorted({a + rank if a < 0 else a for a in axes}):
            x = importer.apply(problems, "unsqueeze", x, axis=axis)
        return {node.output[0]: x}
    if axes is None:
        axes = [axis for axis, size in enumerate(shape) if size == 1]
    resolved = sorted({a + len(shape) if a < 0 else a for a in axes}, reverse=True)
    for axis in resolved:
        if not 0 <= axis < len(shape) or shape[axis] != 1:
            problems.add(E_SHAPE, f"squeezes axis {axis} of {format_shape(shape)}, which is not "
                         "a dimension of size 1")
            return {}
    for axis in resolved:  # from the last, so the others keep their positions
        x = importer.apply(problems, "squeeze", x, axis=axis)
    return {node.output[0]: x}


def _stacked_axis(importer: _Importer, index: int) -> int | None:
    """For a Concat (node `index`) of Unsqueezes, each of one tensor, each used by it alone and
    all along the Concat's axis (`torch.stack` exports so): that axis, else None."""
    node = importer.nodes[index]
    if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    axes = set()
    for name in node.input:
        producer = importer.producer(name)
        if producer is None or importer.only_user(name) != index:
            return None
        unsqueeze = importer.nodes[producer]
        source = importer.values.get(unsqueeze.input[0]) if unsqueeze.input else None
        if unsqueeze.op_type != "Unsqueeze" or not isinstance(source, str):
            return None
        if importer.opset >= 13:
            given = importer.values.get(unsqueeze.input[1]) if len(unsqueeze.input) > 1 else None
            found = given.reshape(-1).tolist() if isinstance(given, np.ndarray) else None
        else:
            found = _attributes(unsqueeze).get("axes")
        if found is None or len(found) != 1:
            return None
        rank = importer.type_of(source).rank + 1
        axes.add(int(found[0]) % rank)
        axes.add(int(_attributes(node).get("axis", 0)) % rank)
    return axes.pop() if len(axes) == 1 else None


@_handles("Expand", ops=("expand",), parameters=(1,))
def _expand(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    target = _int_list(importer, node, 1, problems, "shape")
    x = importer.tensor(node, 0, problems)
    if x is None or target is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    rank = max(len(shape), len(target))
    padded_shape = (1,) * (rank - len(shape)) + tuple(shape)
    padded_target = [1] * (rank - len(target)) + target
    lead = rank - len(shape)
    # ONNX broadcasts both ways: a 1 in the target keeps the input's dimension.
    dims = [size if axis < lead else -1 if size in (1, padded_shape[axis]) else size
            for axis, size in enumerate(padded_target)]
    return {node.output[0]: importer.apply(problems, "expand", x, dims=tuple(dims))}


def _slice_value(importer: _Importer, problems: _Problems, x: str, axes: Sequence[int],
                 starts: Sequence[int], ends: Sequence[int], steps: Sequence[int]) -> str:
    """`x` sliced as ONNX Slice does it, leaving out the axes it keeps whole (so that a whole
    named dimension passes)."""
    shape = importer.type_of(x).shape
    kept: list[tuple[int, int, int, int]] = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = axis + len(shape) if axis < 0 else axis
        size = shape[axis] if 0 <= axis < len(shape) else None
        whole_name = isinstance(size, str) and start == 0 and end >= _ALL // 2
        if step == 1 and (whole_name or (isinstance(size, int) and start in (0, -size) and
                                         end >= size)):
            continue
        kept.append((axis, start, min(end, _ALL // 2), step))
    if not kept:
        return x
    return importer.apply(problems, "slice", x, axes=tuple(k[0] for k in kept),
                          starts=tuple(k[1] for k in kept), ends=tuple(k[2] for k in kept),
                          steps=tuple(k[3] for k in kept))


@_handles("Slice", ops=("slice",), parameters=(1, 2, 3, 4))
def _slice(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    if importer.opset >= 10:
        starts, ends, axes, steps = (_int_list(importer, node, position, problems, what)
                                     for position, what in enumerate(
                                         ("starts", "ends", "axes", "steps"), start=1))
    else:
        starts, ends, axes, steps = (
            [int(v) for v in attrs[name]] if name in attrs else None
            for name in ("starts", "ends", "axes", "steps"))
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if starts is None or ends is None or len(starts) != len(ends):
        problems.add(E_MODEL, "needs as many starts as ends")
        return {}
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if any(step < 1 for step in steps):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"steps={steps}: `.net` slices (as PyTorch) "
                     "have steps of at least 1")
        return {}
    return {node.output[0]: _slice_value(importer, problems, x, axes, starts, ends, steps)}


@_handles("Gather", ops=("select", "embedding", "unsqueeze", "cast", "lt", "add", "where",
                         "eq", "arange", "sum"), parameters=(1,))
def _gather(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    """Rows of a constant table by a tensor of ids: `embedding`; one constant position:
    `select`; else `_picked` (positions as a one-hot mask)."""
    indices = importer.operand(node, 1)
    if isinstance(indices, str) and isinstance(importer.operand(node, 0), np.ndarray):
        return _embedding(importer, index, node, problems)  # rows of a table by their ids
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    axis = int(_attributes(node).get("axis", 0))
    if isinstance(indices, np.ndarray) and indices.ndim == 0 and indices.dtype.kind in "iu":
        return {node.output[0]: importer.apply(problems, "select", x, axis=axis,
                                               index=int(indices))}
    shape = importer.type_of(x).shape
    axis = axis + len(shape) if axis < 0 else axis
    positions = _positions(importer, node, problems, shape, axis)
    if positions is None:
        return {}
    return {node.output[0]: _gathered(importer, problems, x, positions, axis)}


def _gathered(importer: _Importer, problems: _Problems, x: str, positions: str,
              axis: int) -> str:
    """Gather: `x` [..., C, ...] at the f32 `positions` [i, ..., j] along `axis`, giving
    [..., i, ..., j, ...]: the data with a dimension of 1 for each of the positions' before the
    gathered one, [..., 1, ..., 1, C, ...], and the positions [i, ..., j, 1, 1, ...] against
    it (`_picked`)."""
    rank, after = importer.type_of(positions).rank, importer.type_of(x).rank - axis - 1
    for _ in range(rank):
        x = importer.apply(problems, "unsqueeze", x, axis=axis)
    for _ in range(after + 1):
        positions = importer.apply(problems, "unsqueeze", positions, axis=-1)
    return _picked(importer, problems, x, positions, axis + rank, after)


@_handles("GatherElements", ops=("unsqueeze", "cast", "lt", "add", "where", "eq", "arange",
                                 "sum"))
def _gather_elements(importer: _Importer, index: int, node: onnx.NodeProto,
                     problems: _Problems) -> dict[str, Value]:
    """out[..., i, ...] = data[..., index[..., i, ...], ...] along `axis`, through `_picked`."""
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    axis = int(_attributes(node).get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    positions = _positions(importer, node, problems, shape, axis)
    if positions is None:
        return {}
    # The positions and the data with a new dimension each, against which the other's
    # gathered one lines up: [..., i, 1, ...] and [..., 1, C, ...].
    positions = importer.apply(problems, "unsqueeze", positions, axis=axis + 1)
    x = importer.apply(problems, "unsqueeze", x, axis=axis)
    return {node.output[0]: _picked(importer, problems, x, positions, axis + 1,
                                    len(shape) - axis - 1)}


def _positions(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
               shape: Sequence[Dim], axis: int) -> str | None:
    """The index operand (1) of a Gather or GatherElements along `axis` of data of `shape`,
    as f32 positions in [0, size) (negative ones counted from the end): a parameter where it
    is a constant (exact: the positions are below 2^24), else computed from the tensor."""
    if not 0 <= axis < len(shape):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={axis} is out of range for "
                     f"{format_shape(tuple(shape))}")
        return None
    size = shape[axis]
    if not isinstance(size, int) or size >= 2 ** 24:
        problems.add(E_NOT_EXPRESSIBLE, f"gathers along dimension {axis} of "
                     f"{format_shape(tuple(shape))}, whose size is not a number below 2^24")
        return None
    value = importer.operand(node, 1)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.ndim == 0:
            problems.add(E_DTYPE, f"the indices have dtype {value.dtype} and shape "
                         f"{format_shape(value.shape)}; integer tensors index")
            return None
        wrapped = np.where(value < 0, value + size, value).astype(np.float32)
        # (Named after the operand, and the size that wrapped its negative positions.)
        return importer.free_param(node.input[1] + (f"_wrapped_{size}" if (value < 0).any()
                                                    else ""), wrapped)
    ids = importer.tensor(node, 1, problems, "indices")
    if ids is None:
        return None
    ids = importer.apply(problems, "cast", ids, dtype="f32")
    negative = importer.apply(problems, "lt", ids, other=0.0)
    return importer.apply(problems, "where", negative, importer.apply(
        problems, "add", ids, importer.builder.constant(float(size))), ids)


def _picked(importer: _Importer, problems: _Problems, x: str, positions: str, axis: int,
            after: int) -> str:
    """`x`'s elements at `positions` along `axis` (`after` dimensions follow it; the two
    broadcast against each other, `positions` of size 1 there): the sum over that axis of `x`
    where the position is the element's, 0 elsewhere (exact: one term; a position out of
    range gives 0, where ONNX and PyTorch fail)."""
    size = importer.type_of(x).shape[axis]
    classes = importer.apply(problems, "cast", importer.apply(problems, "arange", n=size),
                             dtype="f32")
    for _ in range(after):
        classes = importer.apply(problems, "unsqueeze", classes, axis=-1)
    chosen = importer.apply(problems, "eq", positions, classes)
    # `.net`'s where takes tensors: the zero is a parameter [1].
    zero = importer.free_param(f"{positions}_zero", np.zeros(1, np.float32))
    if importer.type_of(x).dtype != "f32":
        zero = importer.apply(problems, "cast", zero, dtype=importer.type_of(x).dtype)
    return importer.apply(problems, "sum", importer.apply(problems, "where", chosen, x, zero),
                          axis=axis)


@_handles("Split", ops=("slice",), parameters=(1,))
def _split(importer: _Importer, index: int, node: onnx.NodeProto,
           problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    sizes = (_int_list(importer, node, 1, problems, "split") if importer.opset >= 13
             else [int(s) for s in attrs["split"]] if "split" in attrs else None)
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    axis = int(attrs.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    size = shape[axis] if 0 <= axis < len(shape) else None
    if not isinstance(size, int):
        problems.add(E_SHAPE, f"splits axis {attrs.get('axis', 0)} of {format_shape(shape)}, "
                     "which is not a dimension of known size")
        return {}
    parts = len(node.output)
    if sizes is None:  # equal parts (the last smaller, from opset 18's num_outputs)
        chunk = -(-size // parts)
        sizes = [min(chunk, size - chunk * k) for k in range(parts)]
    if len(sizes) != parts or sum(sizes) != size or min(sizes) < 1:
        problems.add(E_SHAPE, f"splits {size} elements into {sizes} for {parts} outputs")
        return {}
    results: dict[str, Value] = {}
    start = 0
    for name, length in zip(node.output, sizes):
        if name:
            results[name] = _slice_value(importer, problems, x, [axis], [start],
                                         [start + length], [1])
        start += length
    return results


@_handles("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss",
          ops=("cross_entropy", "nll_loss", "log_softmax"), parameters=(2,))
def _class_loss(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    """The two losses as `cross_entropy` and `nll_loss`, with their reduction and class
    weights (a parameter); SoftmaxCrossEntropyLoss's log_prob output is `log_softmax`."""
    op = "cross_entropy" if node.op_type == "SoftmaxCrossEntropyLoss" else "nll_loss"
    attrs = _attributes(node)
    reduction = str(_decode(attrs.get("reduction", "mean")))
    if reduction not in ("mean", "sum", "none"):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"reduction={reduction!r} is not one of ONNX's "
                     "\"mean\", \"sum\" and \"none\"")
    if op == "nll_loss":
        _no_extra_outputs(node, problems, [])
    scores = importer.tensor(node, 0, problems, "scores")
    target = importer.tensor(node, 1, problems, "labels")
    weight = importer.tensor(node, 2, problems, "class weights") \
        if len(node.input) > 2 and node.input[2] else None
    if scores is None or target is None or problems.found:
        return {}
    # Without ignore_index ONNX ignores no target; -100 (PyTorch's default) is no class id.
    ignore = int(_decode(attrs["ignore_index"])) if "ignore_index" in attrs else -100
    results: dict[str, Value] = {node.output[0]: importer.apply(
        problems, op, scores, target, *([] if weight is None else [weight]),
        ignore_index=ignore, reduction=reduction)}
    if len(node.output) > 1 and node.output[1]:
        results[node.output[1]] = importer.apply(problems, "log_softmax", scores, axis=1)
    return results


# Shape arithmetic handlers register here (`netc.onnx.importer.shapes`).

_SHAPE_HANDLERS: dict[str, Handler] = {}


def _shape_handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            _SHAPE_HANDLERS[op_type] = function
        return function
    return register
