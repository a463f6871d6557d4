"""ONNX export of the graph IR (opset 17, the one TensorRT 10 parses best).

Every value keeps its name: inputs and outputs as in the `.net` file, parameters by their full
layer names (`basic_1.conv2d_0.weight`), as initializers in PyTorch's layouts. Each named
(batch) dimension becomes a `dim_param`, so one model serves every batch size. Each op is
found through the registry (`export_rule`): an op that is one ONNX node says so in its entry
(`OpDef.onnx`); an op that needs more registers its lowering here with `@exports(op)`; an op
with neither is exported as its decomposition (`OpDef.decompose`, silu as Mul and Sigmoid).
Where an op needs a newer opset than 17 it is spelled out in opset-17 nodes (gelu through
Erf); a `fused` group exports as the ops in its body. The model is checked with
`onnx.checker` (full check) before it is returned.

PyTorch semantics kept on the way: MaxPool pads never win (ONNX pads MaxPool with -inf),
AveragePool excludes padding (`count_include_pad=0`), conv "same" padding is already explicit
and asymmetric in the IR, reshape copies the batch dimension (`0` in the shape, never its size).
"""

from __future__ import annotations

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
from netc.dtypes import f32_to_bf16_bits
from netc.ir import SOURCE_OPS, Dim, Graph, Node, TensorType
from netc.ops import REGISTRY, OnnxForm
from netc.ops.builder import GraphBuilder
from netc.ops.decompose import decomposition_nodes
from netc.ops.registry import OpTable, RegistryView
from netc.ops.windows import Window

OPSET = 17
IR_VERSION = 8
"""The ONNX IR version that goes with opset 17 (ONNX 1.12); older parsers accept it."""

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


class ExportError(Exception):
    """The graph or its weights cannot be exported as given."""


def tensor_proto(name: str, dtype: str, array: np.ndarray) -> TensorProto:
    """An initializer holding `array` (any float array) in the `.net` dtype `dtype`."""
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


def _pool(op_type: str, **extra: int) -> Lowering:
    def lower(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
        window = Window.from_attrs(node.op, node.attrs)
        emit.node(op_type, inputs, output, kernel_shape=list(window.kernel),
                  strides=list(window.stride), pads=list(window.padding), **extra)
    return lower


@exports("layernorm")
def _layernorm(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    emit.node("LayerNormalization", inputs, output, axis=-1, epsilon=node.attrs["eps"])


@exports("gelu")
def _gelu(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # ONNX's Gelu arrives in opset 20: 0.5 * x * (1 + erf(x / sqrt(2))) in opset-17 nodes.
    (x,) = inputs
    dtype = node.type.dtype
    erf = emit.node("Erf", [emit.node("Mul", [x, emit.constant("gelu_rsqrt2", dtype,
                                                               1 / math.sqrt(2))])])
    one_plus = emit.node("Add", [erf, emit.constant("gelu_one", dtype, 1.0)])
    half_x = emit.node("Mul", [x, emit.constant("gelu_half", dtype, 0.5)])
    emit.node("Mul", [half_x, one_plus], output)


@exports("reshape")
def _reshape(emit: Emitter, node: Node, inputs: list[str], output: str) -> None:
    # 0 copies the input's dimension: the batch stays symbolic instead of baked in.
    shape = emit.int64s("reshape_shape", [0, *node.attrs["dims"]])
    emit.node("Reshape", [inputs[0], shape], output)


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
exports("avgpool2d")(_pool("AveragePool", count_include_pad=0))
exports("softmax")(_with_attr("Softmax", "axis", "axis"))
exports("log_softmax")(_with_attr("LogSoftmax", "axis", "axis"))
exports("flatten")(_plain("Flatten", axis=1))
exports("dropout")(_plain("Identity"))


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
