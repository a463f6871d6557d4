"""ONNX export of the graph IR (opset 17, the one TensorRT 10 parses best).

Every value keeps its name: inputs and outputs as in the `.net` file, parameters by their full
layer names (`basic_1.conv2d_0.weight`), as initializers in PyTorch's layouts. Each named
(batch) dimension becomes a `dim_param`, so one model serves every batch size. Each op is
found through the registry (`export_rule`): an op that is one ONNX node says so in its entry
(`OpDef.onnx`); an op that needs more registers its lowering here with `@exports(op)`; an op
with neither is exported as its decomposition (`OpDef.decompose`, silu as Mul and Sigmoid).
Where an op needs a newer opset than 17 it is spelled out in opset-17 nodes (gelu through its
decomposition: Erf, or Tanh for `approximate="tanh"`); a `fused` group exports as the ops in
its body. The model is checked with `onnx.checker` (full check) before it is returned.

PyTorch semantics kept on the way: MaxPool pads never win (ONNX pads MaxPool with -inf),
AveragePool writes `count_include_pad` explicitly (ONNX's default 0 is not PyTorch's), conv
"same" padding is already explicit
and asymmetric in the IR, reshape copies the batch dimension (`0` in the shape, never its size).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from netc._version import __version__
from netc.dtypes import f32_to_bf16_bits, round_to
from netc.ir import FLOAT_DTYPES, SOURCE_OPS, Dim, Graph, Node, TensorType
from netc.ops import REGISTRY, OnnxForm
from netc.ops.builder import GraphBuilder
from netc.ops.decompose import decomposition_nodes
from netc.ops.integers import COMPARISON_ONNX
from netc.ops.registry import OpTable, RegistryView
from netc.ops.spatial import pad_widths
from netc.ops.windows import Window

OPSET = 17
IR_VERSION = 8
"""The ONNX IR version that goes with opset 17 (ONNX 1.12); older parsers accept it."""

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
               "i32": TensorProto.INT32, "i64": TensorProto.INT64, "bool": TensorProto.BOOL}


class ExportError(Exception):
    """The graph or its weights cannot be exported as given."""


def tensor_proto(name: str, dtype: str, array: np.ndarray) -> TensorProto:
    """An initializer holding `array` (any array) in the `.net` dtype `dtype`."""
    if dtype in ("i32", "i64", "bool"):
        exact = round_to(dtype, array)
        tensor = TensorProto(name=name, data_type=ONNX_DTYPES[dtype], dims=exact.shape)
        tensor.raw_data = np.ascontiguousarray(
            exact.astype({"i32": "<i4", "i64": "<i8", "bool": np.bool_}[dtype])).tobytes()
        return tensor
    values = np.asarray(array, dtype=np.float32)
    tensor = TensorProto(name=name, data_type=ONNX_DTYPES[dtype], dims=values.shape)
    if dtype == "f32":
        tensor.raw_data = np.ascontiguousarray(values).tobytes()
    elif dtype == "f16":
        with np.errstate(over="ignore"):  # beyond 65504 is inf, as the reference rounds it
            tensor.raw_data = np.ascontiguousarray(values.astype(np.float16)).tobytes()
    else:
        tensor.raw_data = f32_to_bf16_bits(values).astype("<u2").tobytes()
    return tensor


def _value_info(name: str, tensor_type: TensorType) -> onnx.ValueInfoProto:
    shape: list[Dim] = list(tensor_type.shape)
    return helper.make_tensor_value_info(name, ONNX_DTYPES[tensor_type.dtype], shape)


@dataclass
class Emitter:
    """Collects the ONNX nodes and initializers of one graph, with unique value names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    scalars: dict[tuple[str, str, float], str] = field(default_factory=dict)
    types: dict[str, TensorType] = field(default_factory=dict)
    """The IR type of every value emitted so far, by ONNX name (decompositions need them)."""

    def fresh(self, stem: str) -> str:
        name, count = stem, 0
        while name in self.taken:
            count += 1
            name = f"{stem}_{count}"
        self.taken.add(name)
        return name

    def node(self, op_type: str, inputs: Sequence[str], output: str | None = None,
             **attributes: Any) -> str:
        """Adds one node; returns its output's name (a fresh one unless `output` is given)."""
        result = output if output is not None else self.fresh(f"{op_type.lower()}_out")
        self.nodes.append(helper.make_node(op_type, list(inputs), [result],
                                           name=self.fresh(f"{op_type}_node"), **attributes))
        return result

    def constant(self, stem: str, dtype: str, value: float) -> str:
        """A scalar initializer, shared by every node that needs the same one."""
        key = (stem, dtype, value)
        if key not in self.scalars:
            self.scalars[key] = self.fresh(stem)
            self.initializers.append(tensor_proto(self.scalars[key], dtype, np.asarray(value)))
        return self.scalars[key]

    def int64s(self, stem: str, values: Sequence[int]) -> str:
        name = self.fresh(stem)
        self.initializers.append(helper.make_tensor(name, TensorProto.INT64, [len(values)],
                                                    list(values)))
        return name

    def dims(self, stem: str, values: Sequence[int | str]) -> str:
        """An int64 [len(values)] tensor of sizes, each int a constant and each dimension name
        read off a value emitted so far that has it (`Shape`): `pos[:, :T]`'s end."""
        if all(isinstance(v, int) for v in values):
            return self.int64s(stem, [int(v) for v in values])
        return self.node("Concat", [self.int64s(stem, [v]) if isinstance(v, int) else
                                    self.dim_size(v) for v in values], axis=0)

    def dim_size(self, dim: str) -> str:
        """The run-time size of the named dimension `dim`, as an int64 [1] tensor."""
        for name, kind in self.types.items():
            if dim in kind.shape:
                axis = kind.shape.index(dim)
                return self.node("Shape", [name], start=axis, end=axis + 1)
        raise ExportError(f"the named dimension {dim} is in no value before its use")


Lowering = Callable[[Emitter, Node, list[str], str], None]
"""(emitter, IR node, ONNX names of its inputs, ONNX name its result must have)."""

_REGISTERED: OpTable[Lowering] = OpTable("ONNX lowering")


def exports(*ops: str) -> Callable[[Lowering], Lowering]:
    """Registers the decorated function as the ONNX lowering of `ops` (registered op names)."""
    def register(function: Lowering) -> Lowering:
        _REGISTERED.add(ops, function)
        return function
    return register


def _one_node(form: OnnxForm) -> Lowering:
    def lower(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
        emit.node(form.op_type, inputs, output,
                  **{onnx_name: node.attrs[name] for onnx_name, name in form.attrs})
    return lower


def _decomposed(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    """An op without an ONNX rule of its own, as the ops of its decomposition."""
    names = dict(zip(node.inputs, inputs))
    for inner in decomposition_nodes(node, [emit.types[name] for name in inputs]):
        if inner.op == "constant":
            names[inner.id] = emit.constant("constant", inner.type.dtype,
                                            float(inner.attrs["value"]))
            continue
        names[inner.id] = output if inner.id == node.id else emit.fresh(inner.id)
        emit_node(emit, inner, [names[i] for i in inner.inputs], names[inner.id])


def export_rule(op: str) -> Lowering | None:
    """How `op` is exported: its registered lowering, its one-node form, or its
    decomposition; None when it has none of them."""
    opdef = REGISTRY.get(op)
    if opdef is None:
        return None
    registered = _REGISTERED.get(op)
    if registered is not None:
        return registered
    if opdef.onnx is not None:
        return _one_node(opdef.onnx)
    if opdef.decompose is not None:
        return _decomposed
    return None


def emit_node(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    """Adds the ONNX nodes computing IR node `node` into `output`."""
    rule = export_rule(node.op)
    if rule is None:
        raise ExportError(f"op `{node.op}` ({node.id}) has no ONNX lowering")
    rule(emit, node, inputs, output)
    emit.types[output] = node.type


LOWERINGS: Mapping[str, Lowering] = RegistryView(export_rule)
"""Every op that can be exported now -> its lowering."""


def _plain(op_type: str, **fixed: Any) -> Lowering:
    def lower(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
        emit.node(op_type, inputs, output, **fixed)
    return lower


def _with_attr(op_type: str, onnx_name: str, netc_name: str) -> Lowering:
    def lower(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
        emit.node(op_type, inputs, output, **{onnx_name: node.attrs[netc_name]})
    return lower


@exports("dense")
def _dense(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    x, weight, *bias = inputs
    if node.type.rank == 2:
        emit.node("Gemm", [x, weight, *bias], output, transB=1)
        return
    # Gemm is 2-D only; the weight keeps its PyTorch layout and is transposed by a node that
    # every consumer folds.
    transposed = emit.node("Transpose", [weight], perm=[1, 0])
    if bias:
        emit.node("Add", [emit.node("MatMul", [x, transposed]), bias[0]], output)
    else:
        emit.node("MatMul", [x, transposed], output)


@exports("conv2d")
def _conv2d(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    window = Window.from_attrs("conv2d", node.attrs)
    emit.node("Conv", inputs, output, kernel_shape=list(window.kernel),
              strides=list(window.stride), dilations=list(window.dilation),
              pads=list(window.padding), group=node.attrs["groups"])


@exports("conv_transpose2d")
def _conv_transpose2d(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    attrs = node.attrs
    begin, end, extra = list(attrs["padding"]), list(attrs["padding"]), list(attrs["output_padding"])
    for axis, stride in enumerate(attrs["stride"]):
        # onnxruntime takes output_padding below the stride only (PyTorch: below the stride or
        # the dilation); a smaller end pad grows the output alike.
        if extra[axis] >= stride:
            if end[axis] < extra[axis]:
                raise ExportError(f"`conv_transpose2d` ({node.id}): output_padding "
                                  f"{list(attrs['output_padding'])} at or above the stride "
                                  f"{list(attrs['stride'])} and the padding has no onnxruntime "
                                  "form")
            end[axis] -= extra[axis]
            extra[axis] = 0
    emit.node("ConvTranspose", inputs, output, kernel_shape=list(attrs["kernel"]),
              strides=list(attrs["stride"]), dilations=list(attrs["dilation"]),
              pads=[*begin, *end], output_padding=extra, group=attrs["groups"])


@exports("conv1d")
def _conv1d(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    padding = node.attrs["padding"]
    emit.node("Conv", inputs, output, kernel_shape=[node.attrs["kernel"]],
              strides=[node.attrs["stride"]], dilations=[node.attrs["dilation"]],
              pads=[padding, padding], group=node.attrs["groups"])


def _ceil_mode(node: Node, window: Window, x: TensorType) -> tuple[int, list[int]]:
    """ONNX's `ceil_mode` and `pads` for a pool.

    onnxruntime drops a last window starting in the trailing padding, as PyTorch, but the
    opset-17 shape inference of `onnx.checker` rounds up regardless. So: floor mode where ceil
    mode adds no window (a dropped window leaves the floor rule's output); where it adds one,
    and padding never counts (a max, an average without `count_include_pad`), floor mode over
    bottom/right padding grown to fit the extra window (exact: padding never counts); else
    ONNX's ceil mode, unless another axis drops a window, which no one node can say."""
    pads = list(window.padding)
    floor = dataclasses.replace(window, ceil_mode=False).output_size(node.op, x)
    outputs = [int(d) for d in node.type.shape[2:]]
    if outputs == list(floor):
        return 0, pads
    sizes = [int(d) for d in x.shape[2:]]
    if not node.attrs.get("count_include_pad", False):
        for axis in range(2):
            reach = (outputs[axis] - 1) * window.stride[axis] + window.kernel[axis]
            pads[axis + 2] = max(pads[axis + 2], reach - sizes[axis] - pads[axis])
        return 0, pads
    rounded_up = [-(-(size + pads[axis] + pads[axis + 2] - window.kernel[axis]) //
                    window.stride[axis]) + 1 for axis, size in enumerate(sizes)]
    if outputs != rounded_up:
        raise ExportError(f"`{node.op}` ({node.id}) with ceil_mode and count_include_pad gains "
                          "a window along one axis and drops one along the other; ONNX's "
                          "opset-17 shape inference cannot express that")
    return 1, pads


def _pool(op_type: str, *flags: str) -> Lowering:
    """A windowed pool; `flags` are the bool attributes it writes explicitly (ONNX's defaults
    are not always PyTorch's: `count_include_pad`)."""
    def lower(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
        window = Window.from_attrs(node.op, node.attrs)
        ceil_mode, pads = _ceil_mode(node, window, emit.types[inputs[0]])
        emit.node(op_type, inputs, output, kernel_shape=list(window.kernel),
                  strides=list(window.stride), pads=pads, ceil_mode=ceil_mode,
                  **{flag: int(node.attrs[flag]) for flag in flags})
    return lower


@exports("adaptive_avgpool2d")
def _adaptive_avgpool2d(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX has no adaptive pool: the mean of the whole plane, or equal windows tiling it.
    sizes = [int(d) for d in emit.types[inputs[0]].shape[2:]]
    out_sizes = [int(d) for d in node.type.shape[2:]]
    if out_sizes == [1, 1]:
        emit.node("GlobalAveragePool", inputs, output)
        return
    if any(size % out for size, out in zip(sizes, out_sizes)):
        raise ExportError(f"`adaptive_avgpool2d` ({node.id}) from {sizes} to {out_sizes} has "
                          "windows of unequal sizes, which no ONNX pool computes (only an "
                          "output of [1, 1] or one that divides the input exports)")
    kernel = [size // out for size, out in zip(sizes, out_sizes)]
    emit.node("AveragePool", inputs, output, kernel_shape=kernel, strides=kernel)


@exports("pad")
def _pad(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    widths = pad_widths("pad", node.attrs, emit.types[inputs[0]])
    # ONNX's pads: every axis's begin, then every axis's end (F.pad's pairs run backwards).
    pads = emit.int64s("pad_pads", [w[0] for w in widths] + [w[1] for w in widths])
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[node.attrs["mode"]]
    value = emit.constant("pad_value", node.type.dtype, float(node.attrs["value"]))
    emit.node("Pad", [inputs[0], pads, value], output, mode=mode)


@exports("interpolate")
def _interpolate(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # The forms PyTorch's exporter writes: nearest as asymmetric + floor; bilinear as linear
    # with half_pixel (onnxruntime's half_pixel is PyTorch's rule, an output of 1 included,
    # where pytorch_half_pixel reads position 0) or align_corners.
    if node.attrs["mode"] == "nearest":
        attributes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                      "nearest_mode": "floor"}
    else:
        attributes = {"mode": "linear", "coordinate_transformation_mode":
                      "align_corners" if node.attrs["align_corners"] else "half_pixel"}
    scale = node.attrs["scale_factor"]
    # ONNX's align_corners with scales reads a fractional output length (in · scale), where
    # PyTorch's reads the output size: sizes say PyTorch's.
    if scale is not None and not node.attrs["align_corners"]:
        scales = emit.fresh("resize_scales")
        emit.initializers.append(helper.make_tensor(scales, TensorProto.FLOAT, [4],
                                                    [1.0, 1.0, scale, scale]))
        emit.node("Resize", [inputs[0], "", scales], output, **attributes)
        return
    shape = node.type.shape
    if all(isinstance(d, int) for d in shape):
        sizes = emit.int64s("resize_sizes", [int(d) for d in shape])
    else:  # the leading dims at run time, then the fixed spatial size
        leading = emit.node("Slice", [emit.node("Shape", [inputs[0]]),
                                      emit.int64s("resize_start", [0]),
                                      emit.int64s("resize_end", [2])])
        sizes = emit.node("Concat", [leading, emit.int64s("resize_size",
                                                          [int(d) for d in shape[2:]])], axis=0)
    emit.node("Resize", [inputs[0], "", "", sizes], output, **attributes)


@exports("layernorm")
def _layernorm(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    emit.node("LayerNormalization", inputs, output, axis=-1, epsilon=node.attrs["eps"])


def _filled(emit: Emitter, stem: str, dtype: str, size: int, value: float) -> str:
    """A [size] initializer of one value (the unit scale and zero shift ONNX's
    InstanceNormalization requires)."""
    name = emit.fresh(stem)
    emit.initializers.append(tensor_proto(name, dtype, np.full(size, value, np.float32)))
    return name


def _instance_normalization(emit: Emitter, x: str, channels: int, dtype: str, eps: float,
                            output: str | None = None) -> str:
    """x [N, C, ...] normalised per sample and channel, with no scale or shift."""
    return emit.node("InstanceNormalization", [x, _filled(emit, "ones", dtype, channels, 1.0),
                                                _filled(emit, "zeros", dtype, channels, 0.0)],
                     output, epsilon=eps)


@exports("instancenorm")
def _instancenorm(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    if node.attrs["affine"]:
        emit.node("InstanceNormalization", inputs, output, epsilon=node.attrs["eps"])
    else:
        _instance_normalization(emit, inputs[0], int(node.type.shape[1]), node.type.dtype,
                                node.attrs["eps"], output)


@exports("groupnorm")
def _groupnorm(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # GroupNormalization is opset 18 (with per-group scale until opset 21): at opset 17 it is
    # InstanceNormalization of [N, groups, C / groups * ...], then a per-channel scale and shift.
    x, weight, bias = inputs
    shape, dtype, groups = node.type.shape, node.type.dtype, node.attrs["groups"]
    grouped = emit.node("Reshape", [x, emit.int64s("group_shape", [0, groups, -1])])
    normalised = emit.node("Reshape", [
        _instance_normalization(emit, grouped, groups, dtype, node.attrs["eps"]),
        emit.node("Shape", [x])])
    per_channel = emit.int64s("channel_shape", [int(shape[1]), *([1] * (len(shape) - 2))])
    scaled = emit.node("Mul", [normalised, emit.node("Reshape", [weight, per_channel])])
    emit.node("Add", [scaled, emit.node("Reshape", [bias, per_channel])], output)


@exports("rmsnorm")
def _rmsnorm(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # RMSNormalization is opset 23: x / sqrt(mean(x * x, last axis) + eps) * weight.
    x, weight = inputs
    mean_square = emit.node("ReduceMean", [emit.node("Mul", [x, x])], axes=[-1], keepdims=1)
    shifted = emit.node("Add", [mean_square, emit.constant("eps", node.type.dtype,
                                                            node.attrs["eps"])])
    normalised = emit.node("Div", [x, emit.node("Sqrt", [shifted])])
    emit.node("Mul", [normalised, weight], output)


@exports("relu6", "hardtanh", "clamp")
def _clip(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # Clip takes its bounds as inputs (since opset 11) of the tensor's type. A bound left out
    # is ±inf, not an empty input: onnxruntime clips to ±FLT_MAX then, and infinity would not
    # stay infinite as in torch.clamp.
    low, high = (0.0, 6.0) if node.op == "relu6" else (node.attrs["min"], node.attrs["max"])
    dtype = node.type.dtype
    emit.node("Clip", [inputs[0],
                       emit.constant("clip_min", dtype, -math.inf if low is None else low),
                       emit.constant("clip_max", dtype, math.inf if high is None else high)],
              output)


@exports("softplus")
def _softplus(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX's Softplus is log(1 + exp(x)): PyTorch's with beta 1 and its default threshold 20
    # (above it PyTorch returns x, which log(1 + exp(x)) rounds to in every float type).
    # Other beta and threshold: Where(beta·x > threshold, x, Softplus(beta·x) / beta).
    (x,) = inputs
    beta, threshold = node.attrs["beta"], node.attrs["threshold"]
    if beta == 1.0 and threshold == 20.0:
        emit.node("Softplus", [x], output)
        return
    dtype = node.type.dtype
    scaled = emit.node("Mul", [x, emit.constant("softplus_beta", dtype, beta)])
    smooth = emit.node("Div", [emit.node("Softplus", [scaled]),
                               emit.constant("softplus_beta", dtype, beta)])
    linear = emit.node("Greater", [scaled, emit.constant("softplus_threshold", dtype,
                                                         threshold)])
    emit.node("Where", [linear, x, smooth], output)


@exports("rsqrt")
def _rsqrt(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    emit.node("Reciprocal", [emit.node("Sqrt", inputs)], output)


@exports("pow")
def _pow(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # torch.pow takes x^0.5 and x^-0.5 as sqrt and rsqrt (NaN at -inf, where Pow gives +inf).
    exponent = node.attrs["exponent"]
    if exponent is None:  # a tensor exponent: ONNX's Pow as it is (see ops.md on ±0.5)
        emit.node("Pow", inputs, output)
    elif exponent == 0.5:
        emit.node("Sqrt", inputs, output)
    elif exponent == -0.5:
        _rsqrt(emit, node, inputs, output)
    else:
        # An f32 initializer whatever x's type (Pow's T2), as kernels take the exponent.
        emit.node("Pow", [inputs[0], emit.constant("pow_exponent", "f32", exponent)], output)


@exports("reshape")
def _reshape(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # 0 copies the input's dimension: the batch stays symbolic instead of baked in, and so
    # does a named dimension kept in place. Any other named dimension is the one size left to
    # run time (-1): the IR worked out any other -1.
    kept = emit.types[inputs[0]].shape[1:]
    shape = emit.int64s("reshape_shape", [0, *(
        (0 if axis < len(kept) and kept[axis] == d else -1) if isinstance(d, str) else d
        for axis, d in enumerate(node.attrs["dims"]))])
    emit.node("Reshape", [inputs[0], shape], output)


@exports("sum", "mean", "amax", "amin", "logsumexp")
def _reduce(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # Opset 17: ReduceSum takes its axes as an input (since 13), the others as an attribute.
    axes = list(node.attrs["axis"])
    keepdims = int(node.attrs["keepdim"])
    op_type = REDUCE_OP_TYPES[node.op]
    if op_type == "ReduceSum":
        emit.node(op_type, [inputs[0], emit.int64s("axes", axes)], output, keepdims=keepdims)
    else:
        emit.node(op_type, inputs, output, axes=axes, keepdims=keepdims)


REDUCE_OP_TYPES = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax",
                   "amin": "ReduceMin", "logsumexp": "ReduceLogSumExp"}
"""Each reduction's ONNX op type (the importer reads them back)."""


@exports("argmax")
def _argmax(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX's keepdims defaults to 1, netc's keepdim to false: always written.
    emit.node("ArgMax", inputs, output, axis=node.attrs["axis"],
              keepdims=int(node.attrs["keepdim"]))


@exports("squeeze", "unsqueeze")
def _squeeze(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    if node.op == "squeeze" and emit.types[inputs[0]].shape == node.type.shape:
        emit.node("Identity", inputs, output)  # a dimension other than 1 stays, as PyTorch
        return
    emit.node(node.op.capitalize(), [inputs[0], emit.int64s("axes", [node.attrs["axis"]])],
              output)


@exports("expand")
def _expand(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # Expand broadcasts the input against the shape: a 1 keeps the input's dimension, named
    # ones included.
    in_shape = emit.types[inputs[0]].shape
    lead = node.type.rank - len(in_shape)
    shape = [1 if axis >= lead and size == in_shape[axis - lead] else size
             for axis, size in enumerate(node.type.shape)]
    emit.node("Expand", [inputs[0], emit.dims("expand_shape", shape)], output)


@exports("slice")
def _slice(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    attrs = node.attrs
    emit.node("Slice", [inputs[0], emit.int64s("starts", attrs["starts"]),
                        emit.dims("ends", attrs["ends"]), emit.int64s("axes", attrs["axes"]),
                        emit.int64s("steps", attrs["steps"])], output)


@exports("select")
def _select(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    index = emit.fresh("index")
    emit.initializers.append(helper.make_tensor(index, TensorProto.INT64, [],
                                                [node.attrs["index"]]))
    emit.node("Gather", [inputs[0], index], output, axis=node.attrs["axis"])


@exports("fused")
def _fused(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # A fusion group exports as the ops it groups: fusion is netc's own kernel planning.
    region = node.region
    if region is None:
        raise ExportError(f"{node.id}: a fused node without a region")
    names: dict[str, str] = {}
    for member in region.members:
        args = [region.resolve(ref, inputs, names) for ref in member.inputs]
        names[member.id] = output if member is region.result else emit.fresh(member.id)
        emit_node(emit, member, args, names[member.id])


# Ops whose ONNX form is one node with fixed attributes or a renamed attribute (ops that are
# exactly one node with the same attributes say so in their registry entry instead).
exports("maxpool2d")(_pool("MaxPool"))
exports("avgpool2d")(_pool("AveragePool", "count_include_pad"))
exports("softmax")(_with_attr("Softmax", "axis", "axis"))
exports("log_softmax")(_with_attr("LogSoftmax", "axis", "axis"))
exports("flatten")(_plain("Flatten", axis=1))
exports("dropout")(_plain("Identity"))


@exports("dropout_train", "batchnorm_train")
def _training_mode_op(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # Made by `netc.training_mode` for a training step; ONNX models are for inference, where
    # dropout is the identity (`dropout`; ONNX's own Dropout draws another mask) and batchnorm
    # reads its running statistics.
    raise ExportError(f"`{node.op}` ({node.id}) is training mode's; export the network "
                      "before `training_mode`, where batchnorm uses its running statistics and "
                      "dropout is the identity")


@exports("conv2d_weight_grad", "pool2d_grad", "interpolate_grad")
def _gradient_op(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # Made by autodiff for a training step's backward pass; ONNX models are for inference.
    raise ExportError(f"`{node.op}` ({node.id}) is part of a backward pass; export the network "
                      "itself, before `netc.autodiff.backward`")


# Integer and boolean tensors (netc.ops.integers) ------------------------------------------


@exports("cast")
def _cast(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    emit.node("Cast", inputs, output, to=ONNX_DTYPES[node.attrs["dtype"]])


def _comparison(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    operands = list(inputs)
    if len(operands) == 1:
        # A number is compared in float32 (rounded to a float tensor's dtype first, which
        # normalisation did): an integer or bool tensor is cast to f32 for it, as the kernel
        # converts it.
        dtype = emit.types[inputs[0]].dtype
        if dtype not in FLOAT_DTYPES:
            operands[0] = emit.node("Cast", operands, to=TensorProto.FLOAT)
            dtype = "f32"
        operands.append(emit.constant(f"{node.op}_other", dtype, node.attrs["other"]))
    if node.op == "ne":
        emit.node("Not", [emit.node("Equal", operands)], output)
    else:
        emit.node(COMPARISON_ONNX[node.op] or "", operands, output)


exports(*COMPARISON_ONNX)(_comparison)


@exports("masked_fill")
def _masked_fill(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    x, mask = inputs
    value = emit.constant("masked_fill_value", node.type.dtype, node.attrs["value"])
    emit.node("Where", [mask, value, x], output)


@exports("embedding")
def _embedding(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX's Gather also reads a negative id from the end and fails on one out of range, where
    # netc gives a row of NaN (PyTorch raises an error for both).
    ids, weight = inputs
    emit.node("Gather", [weight, ids], output, axis=0)


@exports("arange")
def _arange(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    n = node.attrs["n"]
    limit = emit.node("Squeeze", [emit.dim_size(n)]) if isinstance(n, str) else \
        emit.constant(f"arange_{n}", "i64", n)
    emit.node("Range", [emit.constant("arange_start", "i64", 0), limit,
                        emit.constant("arange_delta", "i64", 1)], output)


def _trilu(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    diagonal = emit.constant(f"{node.op}_diagonal", "i64", node.attrs["diagonal"])
    emit.node("Trilu", [inputs[0], diagonal], output, upper=int(node.op == "triu"))


exports("triu", "tril")(_trilu)


# Losses (netc.ops.losses) -------------------------------------------------------------------


@exports("cross_entropy", "nll_loss")
def _class_loss(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX has no label smoothing: that cross_entropy is its decomposition. ONNX's ops fail on
    # a class id outside [0, C), where netc gives NaN (PyTorch raises an error).
    if node.attrs.get("label_smoothing", 0.0):
        _decomposed(emit, node, inputs, output)
        return
    # The loss is f32, as netc computes it: so are the scores and the class weights.
    operands = [value if i == 1 or emit.types[value].dtype == "f32" else
                emit.node("Cast", [value], to=TensorProto.FLOAT)
                for i, value in enumerate(inputs)]
    op_type = "SoftmaxCrossEntropyLoss" if node.op == "cross_entropy" else \
        "NegativeLogLikelihoodLoss"
    emit.node(op_type, operands, output, reduction=node.attrs["reduction"],
              ignore_index=node.attrs["ignore_index"])
exports("hardsigmoid")(_plain("HardSigmoid", alpha=1 / 6, beta=0.5))  # ONNX's alpha is 0.2


def _value_names(graph: Graph) -> dict[str, str]:
    """The ONNX name of every node's value: its id, except that a compute node that is an
    output takes the output's name, and other ids never shadow an input or output name."""
    reserved = {node.id for node in graph.inputs} | {name for name, _ in graph.outputs}
    names: dict[str, str] = {}
    for output_name, node_id in graph.outputs:
        if node_id not in names and graph[node_id].op not in SOURCE_OPS:
            names[node_id] = output_name
    taken = reserved | set(names.values())
    for node in graph.nodes:
        if node.id in names:
            continue
        if node.op == "input":
            names[node.id] = node.id
            continue
        name, count = node.id, 0
        while name in taken:
            count += 1
            name = f"{node.id}_{count}"
        names[node.id] = name
        taken.add(name)
    return names


def export_graph(graph: Graph, weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The graph as an ONNX model; `weights` (by parameter name) become initializers.

    Without `weights`, the parameters become extra graph inputs, to be fed at run time.
    """
    for node in graph.nodes:
        if node.extra_types:
            raise ExportError(f"op `{node.op}` ({node.id}) has {len(node.types)} outputs; ONNX "
                              "export takes ops of one output only (yet)")
    names = _value_names(graph)
    emit = Emitter(taken=set(names.values()))
    inputs = [_value_info(names[n.id], n.type) for n in graph.inputs]
    value_infos = []
    for node in graph.nodes:
        name = names[node.id]
        emit.types[name] = node.type
        if node.op == "param":
            if weights is None:
                inputs.append(_value_info(name, node.type))
                continue
            if node.id not in weights:
                raise ExportError(f"no weight given for parameter `{node.id}` {node.type}")
            array = np.asarray(weights[node.id])
            if array.shape != node.type.shape:
                raise ExportError(f"weight `{node.id}` has shape {list(array.shape)}, the graph "
                                  f"needs {node.type}")
            emit.initializers.append(tensor_proto(name, node.type.dtype, array))
        elif node.op == "constant":
            emit.initializers.append(tensor_proto(name, node.type.dtype,
                                                  np.asarray(node.attrs["value"])))
        elif node.op != "input":
            emit_node(emit, node, [names[i] for i in node.inputs], name)
            value_infos.append(_value_info(name, node.type))
    outputs = []
    for output_name, node_id in graph.outputs:
        if names[node_id] != output_name:
            emit.node("Identity", [names[node_id]], output_name)
        outputs.append(_value_info(output_name, graph[node_id].type))
    output_names = {name for name, _ in graph.outputs}
    onnx_graph = helper.make_graph(
        emit.nodes, graph.name, inputs, outputs, initializer=emit.initializers,
        value_info=[v for v in value_infos if v.name not in output_names])
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="netc", producer_version=__version__)
    model.ir_version = IR_VERSION
    if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
        onnx.checker.check_model(model, full_check=True)
    return model


def export_op(op: str, attrs: Mapping[str, Any], input_types: Sequence[TensorType],
              param_arrays: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A model of one op (plus the nodes its lowering needs): inputs `input_0`, `input_1`, ...,
    output `output`, parameters (by their short names, `weight`) as initializers."""
    builder = GraphBuilder(op)
    names = [builder.input(f"input_{i}", t.dtype, t.shape) for i, t in enumerate(input_types)]
    result = builder.op(op, *names, name=op, **attrs)
    builder.output("output", result)
    weights = None
    if param_arrays is not None:
        weights = {f"{op}.{name}": array for name, array in param_arrays.items()}
    return export_graph(builder.build(), weights)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str],
               external_data_threshold_bytes: int | None = 1 << 20) -> None:
    """Writes `model` to `path`; initializers of at least the threshold's size go to
    `<file name>.data` beside it (None keeps everything in one file, up to protobuf's 2 GiB)."""
    target = Path(path)
    data_file = target.with_name(target.name + ".data")
    if data_file.exists():
        data_file.unlink()  # ONNX appends to an existing data file
    if external_data_threshold_bytes is None:
        onnx.save_model(model, target)
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # converting to external data rewrites the proto in place
    onnx.save_model(copy, target, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file.name, size_threshold=external_data_threshold_bytes)
