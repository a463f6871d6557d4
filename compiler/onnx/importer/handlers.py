"""The op handlers: how each ONNX op type becomes `.net` ops (`@_handles(op types, ops=...)`),
and the registry that finds them (a one-node ONNX form on an op's registry entry imports
without a handler of its own)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from netc.ir import Attrs, Dim, format_shape
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
from netc.ops import REGISTRY, OpDef
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
    return {op: tuple(sorted(types)) for op, types in found.items()}


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
    _expect(problems, _attributes(node), "approximate", "none",
            "`.net`'s gelu is the exact erf form")
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, "gelu", x)}


@_handles("Identity")
def _identity(importer: _Importer, index: int, node: onnx.NodeProto,
              problems: _Problems) -> dict[str, Value]:
    value = importer.operand(node, 0)
    if value is None:
        problems.add(E_MODEL, "has no input")
        return {}
    return {node.output[0]: value}


@_handles("Cast", "CastLike")
def _cast(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None:
        return {}
    if node.op_type == "Cast":
        target = _DTYPES.get(int(_attributes(node).get("to", 0)))
    else:
        like = importer.operand(node, 1)
        target = importer.type_of(like).dtype if isinstance(like, str) else \
            _NUMPY_DTYPES.get(np.asarray(like).dtype.name)
    dtype = importer.type_of(x).dtype
    if target != dtype:
        problems.add(E_DTYPE, f"casts {dtype} to {target or 'a non-float type'}; `.net` never "
                     "converts between dtypes inside a network")
        return {}
    return {node.output[0]: x}  # a cast to the tensor's own type is the identity


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
    problems.add(E_CONSTANT_TENSOR,
                 f"its constant operand has shape {format_shape(constant.shape)} and is not a "
                 "scalar; `.net` has numbers and layer parameters but no constant tensors",
                 help="a bias right after MatMul/Gemm/Conv is folded into that layer; other "
                      "constant tensors cannot be imported")
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


@_handles("Div", ops=("mul",))
def _div(importer: _Importer, index: int, node: onnx.NodeProto,
         problems: _Problems) -> dict[str, Value]:
    a, b = importer.operand(node, 0), importer.operand(node, 1)
    if isinstance(a, str) and isinstance(b, np.ndarray) and _float_kind(b) and \
            _is_scalar_for(b, importer.type_of(a).rank) and float(b.reshape(())) != 0.0:
        # `.net` has no division of tensors: x / c is imported as x * (1 / c), which can
        # differ from the division in the last bit.
        reciprocal = np.asarray(1.0 / np.float64(b.reshape(())), dtype=np.float32)
        return {node.output[0]: _binary_constant(importer, node, problems, "mul", a, reciprocal,
                                                 True)}
    problems.add(E_NOT_EXPRESSIBLE, "only division of a tensor by a nonzero constant scalar "
                 "has a `.net` form (as multiplication by its reciprocal)")
    return {}


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
    if following is not None:
        extra, user, output = following
        bias = extra if bias is None else bias + extra
        importer.consumed.add(user)
    layer = importer.layer_name(node, "dense", weight_position)
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


@_handles("Conv", ops=("conv2d",), parameters=(1, 2))
def _conv(importer: _Importer, index: int, node: onnx.NodeProto,
          problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    weight = importer.constant(node, 1, problems, "weight W")
    bias = importer.constant(node, 2, problems, "bias B", required=False)
    x, spatial, poisoned = _windowed_input(importer, node, problems, "convolutions")
    if weight is None:
        return {}
    if weight.ndim != 4:
        problems.add(E_SHAPE, f"W has shape {format_shape(weight.shape)}; `.net` has only "
                     "2-D convolutions")
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
    if following is not None:
        extra, user, output = following
        bias = extra if bias is None else bias.astype(np.float32) + extra
        importer.consumed.add(user)
    layer = importer.layer_name(node, "conv2d")
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return {output: importer.apply(
        problems, "conv2d", x, filters=filters, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=int(attrs.get("group", 1)), bias=bias is not None,
        layer=layer, params=params)}


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
    if (top, left) != (bottom, right):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"asymmetric padding (top, left, bottom, right) = "
                     f"{(top, left, bottom, right)} has no `.net` form for pools")
    elif top > kernel[0] // 2 or left > kernel[1] // 2:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, f"padding {[top, left]} is more than half the "
                     f"kernel {list(kernel)}, which `.net` pools do not allow")
    if node.op_type == "AveragePool" and attrs.get("count_include_pad", 0) and (top or left):
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "count_include_pad=1 with padding: `.net`'s "
                     "avgpool2d counts only the real elements of a window")
    if attrs.get("ceil_mode", 0) and spatial is not None:
        for size, k, s, before, after in zip(spatial, kernel, stride, (top, left),
                                             (bottom, right)):
            span = int(size) + before + after - k
            if span >= 0 and span % s != 0 and -(-span // s) * s < int(size) + before:
                problems.add(E_UNSUPPORTED_ATTRIBUTE, "ceil_mode=1 gives a larger output here "
                             "than the floor rule of `.net` pools")
                break
    if poisoned:
        raise _Poisoned
    if x is None or problems.found:
        return {}
    return {node.output[0]: importer.apply(problems, op, x, kernel=kernel, stride=stride,
                                           padding=(top, left))}


@_handles("GlobalAveragePool", ops=("global_avgpool",))
def _global_avgpool(importer: _Importer, index: int, node: onnx.NodeProto,
                    problems: _Problems) -> dict[str, Value]:
    x = importer.tensor(node, 0, problems)
    if x is None or not _require_4d(importer, x, problems, "pooling"):
        return {}
    return {node.output[0]: importer.apply(problems, "global_avgpool", x)}


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
    return {node.output[0]: importer.apply(problems, "batchnorm", x,
                                           eps=float(attrs.get("epsilon", 1e-5)),
                                           layer=layer, params=params)}


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


@_handles("Reshape", ops=("reshape",), parameters=(1,))
def _reshape(importer: _Importer, index: int, node: onnx.NodeProto,
             problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    x = importer.tensor(node, 0, problems)
    target: np.ndarray | None
    batch_kept_by_shape = False
    if importer.opset < 5:
        target = np.asarray(attrs.get("shape", ()), dtype=np.int64)
    elif isinstance(shape_target := importer.operand(node, 1), _Shape):
        # A target computed from the run-time shape: the batch entry copies the batch.
        entries = shape_target.entries
        if any(isinstance(e, str) for e in entries[1:]) or not isinstance(entries[0], str):
            problems.add(E_NOT_EXPRESSIBLE, "reshapes to a run-time shape that moves the batch "
                         "dimension")
            return {}
        target = np.array([0, *entries[1:]], dtype=np.int64)
        batch_kept_by_shape = True
    else:
        found = importer.constant(node, 1, problems, "shape")
        target = None if found is None else np.asarray(found, dtype=np.int64).reshape(-1)
    if x is None or target is None or problems.found:
        return {}
    shape = importer.type_of(x).shape
    dims = [int(d) for d in target]
    if batch_kept_by_shape and attrs.get("allowzero", 0):
        attrs = {**attrs, "allowzero": 0}  # the 0 standing for the batch is ours
    if attrs.get("allowzero", 0) and 0 in dims:
        problems.add(E_UNSUPPORTED_ATTRIBUTE, "allowzero=1 with a 0 in the shape makes an "
                     "empty tensor")
        return {}
    if not dims:
        problems.add(E_NOT_EXPRESSIBLE, "reshapes to a scalar, dropping the batch")
        return {}
    for position, size in enumerate(dims[1:], start=1):
        if size == 0:
            if position >= len(shape):
                problems.add(E_SHAPE, f"copies dimension {position}, which the input "
                             f"{format_shape(shape)} does not have")
                return {}
            dims[position] = int(shape[position])
    first = dims[0]
    rest = dims[1:]
    item = math.prod(int(d) for d in shape[1:]) if all(
        isinstance(d, int) for d in shape[1:]) else None
    keeps_batch = (
        first == 0
        or (isinstance(shape[0], int) and first == shape[0])
        or (first == -1 and -1 not in rest and item is not None and math.prod(rest) == item)
    )
    if not keeps_batch and shape[0] == "N" and first == importer.batch_value:
        keeps_batch = True
        importer.notes.append(f"{importer.label(index)} fixes the batch at {first} in the ONNX "
                              "model; imported as keeping the batch N")
    if not keeps_batch:
        problems.add(E_NOT_EXPRESSIBLE, f"reshapes {format_shape(shape)} to "
                     f"{[int(d) for d in target]}, "
                     "which changes the batch (first) dimension; `.net` reshape keeps it",
                     help="export with the batch copied (0 or -1 first) or re-export with "
                          "the reshape after the batch dimension")
        return {}
    return {node.output[0]: _reshape_to(importer, problems, x, rest)}


@_handles("Transpose", ops=("transpose",))
def _transpose(importer: _Importer, index: int, node: onnx.NodeProto,
               problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)

    def reject(perm: Sequence[int]) -> None:
        problems.add(E_NOT_EXPRESSIBLE, f"perm={list(perm)} moves the batch dimension; `.net` "
                     "transpose keeps dimension 0 first")

    if "perm" in attrs and (not attrs["perm"] or attrs["perm"][0] != 0):
        reject(attrs["perm"])  # known without the input, so reported even after an error
    x = importer.tensor(node, 0, problems)
    if x is None or problems.found:
        return {}
    rank = importer.type_of(x).rank
    perm = tuple(int(p) for p in attrs.get("perm", range(rank - 1, -1, -1)))
    if not perm or perm[0] != 0:
        reject(perm)
        return {}
    return {node.output[0]: importer.apply(problems, "transpose", x, perm=perm)}


@_handles("Concat", ops=("concat",))
def _concat(importer: _Importer, index: int, node: onnx.NodeProto,
            problems: _Problems) -> dict[str, Value]:
    attrs = _attributes(node)
    values = [importer.tensor(node, i, problems) for i in range(len(node.input))
              if node.input[i]]
    if problems.found or any(v is None for v in values):
        return {}
    tensors = [str(v) for v in values]
    if len(tensors) == 1:
        return {node.output[0]: tensors[0]}
    return {node.output[0]: importer.apply(problems, "concat", *tensors,
                                           axis=int(attrs.get("axis", 1)))}


# Shape arithmetic handlers register here (`netc.onnx.importer.shapes`).

_SHAPE_HANDLERS: dict[str, Handler] = {}


def _shape_handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            _SHAPE_HANDLERS[op_type] = function
        return function
    return register
