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
from netc.ir import Attrs, Dim, TensorType, format_shape
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
    builds.update(_BUILDS)
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
    condition = importer.tensor(node, 0, problems, "condition")
    a, b = importer.operand(node, 1), importer.operand(node, 2)
    if condition is None or problems.found:
        return {}
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


@_handles("Trilu", ops=("triu", "tril"))
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


@_handles("Attention", ops=("attention",))
def _attention(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    """ONNX's Attention (opset 23) on 4-D q, k, v ([batch, heads, length, features]), with
    an optional mask (bool: true attends; float: added), `is_causal` and `scale`."""
    attrs = _attributes(node)
    for name, plain in (("softcap", 0.0), ("qk_matmul_output_mode", 0)):
        _expect(problems, attrs, name, plain, "`.net`'s attention has no such step")
    # The head counts matter only for 3-D inputs (refused below); the softmax's precision is
    # at least f32 in netc whatever it asks.
    known = {"softcap", "qk_matmul_output_mode", "is_causal", "scale", "q_num_heads",
             "kv_num_heads", "softmax_precision"}
    for name in sorted(set(attrs) - known):  # opset 25's attention windows, and what follows
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"{name}={_decode(attrs[name])!r} is not "
                     "supported (`.net`'s attention has no such attribute)")
    if any(name for name in node.input[4:]):
        problems.add(E_NOT_EXPRESSIBLE, "past_key/past_value (a key-value cache) are not "
                     "supported; `.net`'s attention takes q, k, v and a mask")
    _no_extra_outputs(node, problems, ["present_key", "present_value", "qk_matmul_output"])
    tensors = [importer.tensor(node, position, problems, what)
               for position, what in enumerate(("q", "k", "v"))]
    mask = importer.tensor(node, 3, problems, "mask") if len(node.input) > 3 and \
        node.input[3] else None
    if problems.found or any(t is None for t in tensors):
        return {}
    if any(importer.type_of(str(t)).rank != 4 for t in tensors):
        problems.add(E_NOT_EXPRESSIBLE, "only 4-D q, k and v ([batch, heads, length, features]) "
                     "import; 3-D ones need their head counts split out")
        return {}
    scale = float(attrs["scale"]) if "scale" in attrs else None
    operands = [str(t) for t in tensors] + ([mask] if mask is not None else [])
    return {node.output[0]: importer.apply(problems, "attention", *operands,
                                           causal=bool(attrs.get("is_causal", 0)),
                                           scale=scale)}


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


@_handles("Dropout", ops=("dropout",), parameters=(1, 2))
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
    _no_extra_outputs(node, problems, ["mask"])
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if ratio is None or not 0.0 <= ratio <= 1.0:
        return {node.output[0]: x}  # the identity at inference, whatever the ratio
    return {node.output[0]: importer.apply(problems, "dropout", x, p=ratio)}


def _binary_constant(importer: _Importer, node: onnx.NodeProto, problems: _Problems,
                     op: str, tensor: str, constant: np.ndarray, tensor_first: bool) -> str:
    tensor_type = importer.type_of(tensor)
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


@_handles("Pow", ops=("pow",), parameters=(1,))
def _pow(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems, "base")
    exponent = importer.operand(node, 1)
    if not isinstance(exponent, np.ndarray) or exponent.size != 1 or \
            exponent.dtype.kind not in "fiu":
        problems.add(E_NOT_EXPRESSIBLE, "only a constant scalar exponent has a `.net` form "
                     "(`pow(x, exponent)` takes a number)")
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


@_handles("MaxPool", "AveragePool", ops=("maxpool2d", "avgpool2d"))
def _pool(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
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


@_handles("Pad", ops=("pad",), parameters=(1, 2))
def _pad(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    mode = _decode(attrs.get("mode", "constant"))
    if mode not in _PAD_MODES:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"mode={mode!r} is not supported (`.net`'s pad "
                     "has constant, reflect and edge as replicate)")
    if importer.operand(node, 3) is not None:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "the axes operand is not supported (pads for "
                     "every axis only)")
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
    if len(onnx_pads) != 2 * rank:
        problems.add(E_SHAPE, f"{len(onnx_pads)} pads for an input of rank {rank}")
        return {}
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


@_handles("Resize", ops=("interpolate",), parameters=(1, 2, 3))
def _resize(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    attrs = {name: _decode(value) for name, value in _attributes(node).items()}
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    form = _RESIZE_FORMS.get((mode, transform))
    if form is None:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"mode={mode!r} with coordinate_transformation_"
                     f"mode={transform!r} is not supported (nearest with asymmetric; linear "
                     "with half_pixel, pytorch_half_pixel or align_corners)")
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


@_handles("RMSNormalization", ops=("rmsnorm",), parameters=(1,))
def _rmsnorm(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    scale = importer.constant(node, 1, problems, "scale")
    if x is None or scale is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    if int(attrs.get("axis", -1)) not in (-1, len(shape) - 1):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={attrs.get('axis')}: `.net` rmsnorm "
                     "normalises over the last dimension only")
        return {}
    if scale.size != int(shape[-1]):
        problems.add(E_SHAPE, f"scale of shape {format_shape(scale.shape)} does not match the "
                     f"last dimension of {format_shape(shape)}")
        return {}
    layer = importer.layer_name(node, "rmsnorm")
    return {node.output[0]: importer.apply(
        problems, "rmsnorm", x, eps=float(attrs.get("epsilon", 1e-5)), layer=layer,
        params={"weight": scale.reshape(-1).astype(np.float32)})}


def _reshape_to(importer: _Importer, problems: _Problems, x: str,
                dims: Sequence[int]) -> str:
    return importer.apply(problems, "reshape", x, dims=tuple(int(d) for d in dims))


@_handles("LayerNormalization", ops=("layernorm", "reshape"), parameters=(1, 2))
def _layernorm(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    _no_extra_outputs(node, problems, ["Mean", "InvStdDev"])
    x = importer.tensor(node, 0, problems)
    scale = importer.constant(node, 1, problems, "scale")
    shift = importer.constant(node, 2, problems, "bias B", required=False)
    if x is None or scale is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    rank = len(shape)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={attrs.get('axis')} is out of range for "
                     f"{format_shape(shape)}")
        return {}
    if axis == 0:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "axis=0 normalises over the batch dimension, "
                     "which `.net` layernorm never does")
        return {}
    features = math.prod(int(d) for d in shape[axis:])
    if scale.size != features or (shift is not None and shift.size != features):
        problems.add(E_SHAPE, f"scale/bias of shape {format_shape(scale.shape)} do not match "
                     f"the normalised dimensions {format_shape(shape[axis:])}")
        return {}
    bias = np.zeros(features, np.float32) if shift is None else shift.reshape(features)
    params = {"weight": scale.reshape(features), "bias": bias}
    eps = float(attrs.get("epsilon", 1e-5))
    layer = importer.layer_name(node, "layernorm")
    if axis == rank - 1:
        return {node.output[0]: importer.apply(problems, "layernorm", x, eps=eps, layer=layer,
                                               params=params)}
    # Several normalised dimensions: flatten them into one, normalise, and restore the shape.
    flat = _reshape_to(importer, problems, x, [*shape[1:axis], features])
    importer.proposed_names[flat] = node.output[0] + "_flat"
    normalised = importer.apply(problems, "layernorm", flat, eps=eps, layer=layer, params=params)
    importer.proposed_names[normalised] = node.output[0] + "_normalised"
    return {node.output[0]: _reshape_to(importer, problems, normalised, shape[1:])}


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


@_handles("Flatten", ops=("flatten",))
def _flatten(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    axis = int(_attributes(node).get("axis", 1))

    def reject(rank: int | None) -> dict[str, Value]:
        on = f" on a rank-{rank} input" if rank is not None else ""
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"axis={axis}{on}: `.net` flatten keeps the "
                     "batch and flattens the rest (axis=1 only)")
        return {}

    if axis == 0 or axis > 1:
        reject(None)  # known without the input's rank, so reported even after an error
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    rank = importer.type_of(x).rank
    if (axis + rank if axis < 0 else axis) != 1:
        return reject(rank)
    return {node.output[0]: importer.apply(problems, "flatten", x)}


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
    first, rest = dims[0], dims[1:]
    fixed_rest = all(isinstance(d, int) for d in (*shape[1:], *rest))
    item = math.prod(int(d) for d in shape[1:]) if fixed_rest else None
    if first == shape[0] or (first == -1 and -1 not in rest and item is not None
                             and math.prod(int(d) for d in rest) == item):
        return {node.output[0]: importer.apply(problems, "reshape", x, dims=tuple(rest))}
    if all(isinstance(d, int) for d in (*shape, *dims)):
        # Every size is fixed: a new first dimension of 1 is kept, the rest reshaped.
        lifted = importer.apply(problems, "unsqueeze", x, axis=0)
        reshaped = importer.apply(problems, "reshape", lifted, dims=tuple(dims))
        importer.proposed_names[reshaped] = node.output[0] + "_lifted"
        return {node.output[0]: importer.apply(problems, "squeeze", reshaped, axis=0)}
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
    return {node.output[0]: importer.apply(problems, _REDUCTIONS[node.op_type], x,
                                           axis=tuple(axes),
                                           keepdim=bool(attrs.get("keepdims", 1)))}


@_handles("ArgMax", ops=("argmax",))
def _argmax(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    _expect(problems, attrs, "select_last_index", 0,
            "`.net`'s argmax gives the first position of the max, as PyTorch")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, "argmax", x, axis=int(attrs.get("axis", 0)),
                                           keepdim=bool(attrs.get("keepdims", 1)))}


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


@_handles("Gather", ops=("select", "embedding"), parameters=(1,))
def _gather(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    indices = importer.operand(node, 1)
    if isinstance(indices, str) and isinstance(importer.operand(node, 0), np.ndarray):
        return _embedding(importer, index, node, problems)  # rows of a table by their ids
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    if not isinstance(indices, np.ndarray) or indices.ndim != 0 or indices.dtype.kind not in "iu":
        problems.add(E_NOT_EXPRESSIBLE, "only a Gather of one constant position (a scalar "
                     "index, PyTorch's `x[:, i]`) has a `.net` form (`select`)")
        return {}
    return {node.output[0]: importer.apply(problems, "select", x,
                                           axis=int(_attributes(node).get("axis", 0)),
                                           index=int(indices))}


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
          ops=("cross_entropy", "nll_loss"))
def _class_loss(importer: _Importer, index: int, node: onnx.NodeProto,
                problems: _Problems) -> dict[str, Value]:
    op = "cross_entropy" if node.op_type == "SoftmaxCrossEntropyLoss" else "nll_loss"
    attrs = _attributes(node)
    _expect(problems, attrs, "reduction", "mean",
            f"`.net`'s `{op}` is PyTorch's default reduction=\"mean\"")
    if len(node.input) > 2 and node.input[2]:
        problems.add(E_NOT_EXPRESSIBLE, f"class weights (operand 2) are not supported: "
                     f"`.net`'s `{op}` weighs every class alike")
    _no_extra_outputs(node, problems, ["log_prob"])
    scores = importer.tensor(node, 0, problems, "scores")
    target = importer.tensor(node, 1, problems, "labels")
    if scores is None or target is None or problems.found:
        return {}
    # Without ignore_index ONNX ignores no target; -100 (PyTorch's default) is no class id.
    ignore = int(_decode(attrs["ignore_index"])) if "ignore_index" in attrs else -100
    return {node.output[0]: importer.apply(problems, op, scores, target, ignore_index=ignore)}


# Shape arithmetic handlers register here (`netc.onnx.importer.shapes`).

_SHAPE_HANDLERS: dict[str, Handler] = {}


def _shape_handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            _SHAPE_HANDLERS[op_type] = function
        return function
    return register
