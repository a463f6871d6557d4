"""ONNX import: an ONNX model becomes a readable `.net` file and its weights.

    imported = import_onnx("resnet18.onnx")       # or an onnx.ModelProto
    imported.write("resnet18.net", "resnet18.safetensors")
    print(imported.text)

How it works, in three passes over the ONNX graph (which ONNX keeps in topological order):

1. Constants. Initializers and `Constant` nodes are constants, and so is every node whose
   inputs are all constants: it is evaluated now with ONNX's own reference implementation
   (`onnx.reference`), so exporter noise such as `Cast`, `CastLike` or `Sqrt` of a constant
   disappears before translation.
2. Patterns. The Erf spelling of GELU, `0.5 * x * (1 + erf(x / sqrt 2))`, becomes one `gelu`.
3. Translation. Every other node becomes ops of the `.net` language, applied through
   `netc.ops.builder.GraphBuilder`, so each result is typed by the op registry's own shape
   rules as it is built: what the language cannot express is found here, not by the front end
   later. Constant operands that are trained parameters in `.net` (a Conv's W and B, a
   BatchNormalization's statistics, a Gemm's B) become the layer's weights under PyTorch's
   names (`<layer>.weight`); a constant scalar operand of Add/Sub/Mul becomes a number in the
   text; a constant bias added right after a MatMul or a Conv is folded into that layer's bias.

The IR graph so built is then printed as `.net` text (`render_net`), one statement a value,
named after the ONNX values (sanitised where they are not valid `.net` names). The batch: the
first dimension of each graph input becomes `N`, also where the ONNX model fixes it (the
generated file says so in a comment).

Everything that cannot be imported is collected and raised as one `CompileError` with one
diagnostic per problem (codes E06xx, documented in docs/onnx.md); nothing is dropped silently.
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
from onnx import AttributeProto, TensorProto, numpy_helper

from netc.diagnostics import CompileError, Diagnostic
from netc.files import write_atomic
from netc.frontend.limits import MAX_NODES, MAX_SOURCE_BYTES
from netc.frontend.unparse import (
    COMMENT_FIELD_LIMIT,
    NameTable,
    comment_text,
    is_valid_name,
    render_net,
)
from netc.ir import Attrs, Dim, Graph, TensorType, format_shape
from netc.ops import REGISTRY, OpDef, ShapeError
from netc.ops.builder import GraphBuilder
from netc.ops.windows import Window

# Error codes (docs/onnx.md lists them with examples).
E_UNSUPPORTED_OP = "E0601"
E_UNSUPPORTED_ATTRIBUTE = "E0602"
E_NOT_CONSTANT = "E0603"
E_DTYPE = "E0604"
E_SHAPE = "E0605"
E_CONSTANT_TENSOR = "E0606"
E_NOT_EXPRESSIBLE = "E0607"
E_EXTRA_OUTPUT = "E0608"
E_MODEL = "E0609"
E_OPSET = "E0610"
E_LIMIT = "E0611"

# Which ONNX op types import, and as which `.net` ops, is found through the registrations
# below: a handler registers with `@_handles(op types, ops=the .net ops it builds)`, and an op
# whose registry entry has a one-node ONNX form (`OpDef.onnx`) imports by that form without a
# handler of its own. `supported_ops()` (also `SUPPORTED_OPS`) and `imported_ops()` list them.
# Beyond the handlers: Erf imports only inside the GELU pattern, Div only by a constant scalar,
# Sum as repeated Add, Cast/CastLike only to the tensor's own type (or of constants), Swish
# with alpha=1 (SiLU), and Shape, Gather, Unsqueeze, Squeeze and Slice only on shapes (a
# Reshape target that keeps a dynamic batch). Any op whose inputs are all constants is
# evaluated at import time, whatever its type.

PATTERN_OPS = ("Constant", "Erf")
"""Op types read by the constant pass and the GELU pattern rather than by a handler."""

HELPER_OPS = ("Erf", "Sum", "Div", "Cast", "CastLike", "Shape", "Gather", "Unsqueeze",
              "Squeeze", "Slice")
"""Supported only in the roles above (patterns, constants, shapes), not as tensor ops."""

PARAMETER_OPERANDS: dict[str, tuple[int, ...]] = {}
"""Operand positions that `.net` holds as trained parameters or attributes, so the ONNX model
must give them as constants (initializers), by op type (each handler registers its own). A
Gemm's B may also be a tensor (it then imports as `matmul`), but a constant B is what makes it
a `dense` layer."""

_DTYPES: dict[int, str] = {TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16", TensorProto.BFLOAT16: "bf16"}
_NUMPY_DTYPES = {"float32": "f32", "float16": "f16"}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"}
_FOLD_LIMIT = 1 << 26
"""Elements: a constant-folded result larger than this is left to translation (and fails)."""


# The imported model -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedModel:
    """An ONNX model as a `.net` network: its text, its weights and the IR graph built."""

    text: str
    weights: dict[str, np.ndarray]
    """float32 arrays by `.net` parameter name (`conv1.weight`)."""
    graph: Graph
    """The IR the importer built; `netc.frontend.load_string(text)` gives the same network."""
    network: str
    inputs: dict[str, str]
    """ONNX input name -> `.net` input name."""
    outputs: dict[str, str]
    """ONNX output name -> `.net` output name."""
    notes: tuple[str, ...] = ()
    """What the import assumed (also written as comments into the text)."""

    def write(self, net_path: str | os.PathLike[str],
              weights_path: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
        """Write the `.net` file and the weights (default: beside it, `.safetensors`); each
        file is replaced atomically, so a failure leaves any earlier file untouched."""
        from netc.weights import save_weights

        net = Path(net_path)
        weights = Path(weights_path) if weights_path is not None else net.with_suffix(".safetensors")
        # Both destinations are checked before either is written: a failure must not leave
        # one file of the pair behind.
        for path in (net, weights):
            if path.is_dir() or (path.exists() and not path.is_file()):
                raise CompileError([Diagnostic(E_MODEL, f"cannot write `{path}`: it exists and "
                                               "is not a regular file")])
        save_weights(self.weights, weights)
        try:
            write_atomic(net, self.text)
        except BaseException:
            weights.unlink(missing_ok=True)
            raise
        return net, weights


# Import -----------------------------------------------------------------------------------


class _Poisoned(Exception):
    """An operand comes from a node that could not be imported (already reported)."""


@dataclass
class _Problems:
    """The problems found with one node; reported together."""

    label: str
    found: list[Diagnostic] = field(default_factory=list)

    def add(self, code: str, message: str, help: str | None = None) -> None:
        self.found.append(Diagnostic(code, f"{self.label}: {message}", help=help))


@dataclass(frozen=True)
class _Shape:
    """An int64 vector (or scalar) computed from tensor shapes by Shape, Gather, Concat, ...:
    each entry an int or the batch name. Exporters build a Reshape's target this way to keep
    the batch dynamic (`x.view(x.size(0), -1)`); fully known ones become constants."""

    entries: tuple[int | str, ...]
    scalar: bool = False

    def value(self) -> _Shape | np.ndarray:
        if any(isinstance(e, str) for e in self.entries):
            return self
        array = np.array(self.entries, dtype=np.int64)
        return array.reshape(()) if self.scalar else array


_POISON = object()
Value = Any
"""str: an IR value id; np.ndarray: a constant known at import time; _Shape: a shape vector
holding the batch; _POISON: unimportable."""


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a `Constant` node, whichever attribute holds it."""
    (attr,) = node.attribute
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    raise ValueError(f"Constant with attribute `{attr.name}` is not supported")


def _is_scalar_for(constant: np.ndarray, rank: int) -> bool:
    """A constant that acts as a number against a tensor of `rank` (one value, no new dims)."""
    return constant.size == 1 and constant.ndim <= rank


def _float_kind(array: np.ndarray) -> bool:
    return array.dtype.kind == "f"


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str, network_name: str | None) -> None:
        self.model = model
        self.source = source
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.nodes = list(self.graph.node)
        self.problems: list[Diagnostic] = []
        self.notes: list[str] = []
        self.values: dict[str, Value] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.proposed_names: dict[str, str] = {}
        self.layer_names = NameTable()
        self.layer_counts: dict[str, int] = {}
        self.consumed: set[int] = set()
        self.origin: dict[str, str] = {}
        """Folded constant -> the initializer it was computed from (for layer names)."""
        self.patterns: dict[int, Callable[[], None]] = {}
        self.users: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.users.setdefault(name, []).append(index)
        self.graph_outputs = {output.name for output in self.graph.output}
        self.elem_types = {info.name: info.type.tensor_type.elem_type
                           for info in (*self.graph.input, *self.graph.value_info,
                                        *self.graph.output)
                           if info.type.HasField("tensor_type")}
        name = network_name or self.graph.name or Path(source).stem or "imported"
        self.network = NameTable.sanitise(name, "imported") if not is_valid_name(name) else name
        self.builder = GraphBuilder(self.network)
        self.batch_value: int | None = None
        """The fixed first dimension of the first input, where the ONNX model fixes it."""
        self.input_ids: dict[str, str] = {}
        self.unsupported_help_given = False

    # Reporting ----------------------------------------------------------------------------

    def label(self, index: int) -> str:
        node = self.nodes[index]
        named = f"`{node.name}`" if node.name else f"#{index} (unnamed)"
        return f"{node.op_type} node {named}"

    def report(self, code: str, message: str, help: str | None = None) -> None:
        self.problems.append(Diagnostic(code, message, help=help))

    # Operands -----------------------------------------------------------------------------

    def operand(self, node: onnx.NodeProto, position: int) -> Value | None:
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.values:
            raise KeyError(name)
        value = self.values[name]
        if value is _POISON:
            raise _Poisoned
        return value

    def tensor(self, node: onnx.NodeProto, position: int, problems: _Problems,
               what: str = "input") -> str | None:
        value = self.operand(node, position)
        if value is None:
            problems.add(E_MODEL, f"the {what} (operand {position}) is missing")
            return None
        if isinstance(value, np.ndarray):
            problems.add(E_CONSTANT_TENSOR,
                         f"the {what} (operand {position}, `{node.input[position]}`) is a constant "
                         f"of shape {format_shape(value.shape)}; `.net` has no constant tensors",
                         help="only scalar constants (numbers) and layer parameters are expressible")
            return None
        if isinstance(value, _Shape):
            problems.add(E_NOT_EXPRESSIBLE,
                         f"the {what} (operand {position}, `{node.input[position]}`) is computed "
                         "from the run-time batch size; `.net` uses it only as a Reshape target "
                         "that keeps the batch")
            return None
        return str(value)

    def constant(self, node: onnx.NodeProto, position: int, problems: _Problems, what: str,
                 required: bool = True) -> np.ndarray | None:
        value = self.operand(node, position)
        if value is None:
            if required:
                problems.add(E_MODEL, f"the {what} (operand {position}) is missing")
            return None
        if not isinstance(value, np.ndarray):
            problems.add(E_NOT_CONSTANT,
                         f"the {what} (operand {position}, `{node.input[position]}`) is computed "
                         "at run time; `.net` needs it as a constant (an initializer)",
                         help="store it as an initializer in the ONNX model")
            return None
        if what != "shape" and not _float_kind(value):
            problems.add(E_DTYPE, f"the {what} has dtype {value.dtype}; only float tensors import")
            return None
        return value

    def type_of(self, value: str) -> TensorType:
        return self.builder.type_of(value)

    # Building -----------------------------------------------------------------------------

    def layer_name(self, node: onnx.NodeProto, op: str, weight_position: int = 1) -> str:
        """The layer's name: from its weight's name where that is `<layer>.weight` (PyTorch's
        and netc's own exports), else from the node's name, else `<op>_<k>`."""
        weight = node.input[weight_position] if weight_position < len(node.input) else ""
        weight = self.origin.get(weight, weight)
        if weight.endswith(".weight") and len(weight) > len(".weight"):
            return self.layer_names.claim(weight[:-len(".weight")], op)
        if node.name:
            return self.layer_names.claim(node.name, op)
        count = self.layer_counts.get(op, 0)
        self.layer_counts[op] = count + 1
        return self.layer_names.claim(f"{op}_{count}", op)

    def apply(self, problems: _Problems, op: str, *inputs: str, layer: str | None = None,
              params: Mapping[str, np.ndarray] | None = None, **attrs: Any) -> str:
        """One `.net` op through the builder (typed by the registry); a shape the language
        rejects becomes a diagnostic. `params` are the layer's weights by short name."""
        try:
            value = self.builder.op(op, *inputs, name=layer, **attrs)
        except (ShapeError, ValueError) as exc:
            shapes = ", ".join(str(self.type_of(i)) for i in inputs)
            problems.add(E_NOT_EXPRESSIBLE, f"as `{op}` on {shapes}: {exc}")
            raise _Poisoned from None
        if layer is not None:
            node = self.builder.nodes[-1]
            for param_id in node.inputs[len(inputs):]:
                short = param_id[len(layer) + 1:]
                array = np.asarray((params or {})[short], dtype=np.float32)
                expected = self.builder.type_of(param_id).shape
                if array.shape != expected:
                    array = array.reshape(expected) if array.size == math.prod(expected) else array
                if array.shape != expected:
                    problems.add(E_NOT_EXPRESSIBLE, f"parameter `{short}` has shape "
                                 f"{format_shape(array.shape)}; `{op}` needs {format_shape(expected)}")
                    raise _Poisoned
                self.weights[param_id] = np.ascontiguousarray(array)
        return value

    def number(self, value: np.ndarray, problems: _Problems, dtype: str) -> str:
        scalar = float(np.asarray(value, dtype=np.float64).reshape(()))
        if not math.isfinite(scalar):
            problems.add(E_CONSTANT_TENSOR, f"the constant {scalar} has no `.net` literal")
            raise _Poisoned
        return self.builder.constant(scalar, dtype)

    # The three passes ---------------------------------------------------------------------

    def run(self) -> ImportedModel:
        self.check_opset()
        self.check_model()
        self.collect_constants()
        self.declare_inputs()
        self.fold_constants()
        self.match_patterns()
        for index, node in enumerate(self.nodes):
            if index in self.consumed:
                continue
            self.translate(index, node)
            if len(self.builder.nodes) > MAX_NODES:
                raise CompileError([*self.problems, self.too_many_nodes()])
        output_map = self.declare_outputs()
        if self.problems:
            raise CompileError(self.problems)
        graph = self.builder.build()
        if len(graph.nodes) > MAX_NODES:
            raise CompileError([self.too_many_nodes()])
        producer = " ".join(comment_text(p, COMMENT_FIELD_LIMIT) for p in
                            (self.model.producer_name, self.model.producer_version) if p) or "unknown"
        comments = [f"imported from {comment_text(self.source, COMMENT_FIELD_LIMIT)} by `netc "
                    f"import` (ONNX opset {self.opset}, producer {producer})"]
        # Notes quote input, initializer and node names: file text, shown and written escaped.
        notes = tuple(comment_text(note) for note in self.notes)
        comments.extend(notes)
        text = render_net(graph, self.proposed_names, comments)
        size = len(text.encode())
        if size > MAX_SOURCE_BYTES:
            raise CompileError([Diagnostic(
                E_LIMIT, f"the imported `.net` file would be {size:,} bytes; netc reads `.net` "
                f"files of at most {MAX_SOURCE_BYTES:,} bytes (MAX_SOURCE_BYTES, E0508), so it "
                "could not compile what the import wrote",
                help="import the model in parts, or shorten its value names")])
        return ImportedModel(text, dict(self.weights), graph, self.network, dict(self.input_ids),
                             output_map, notes)

    def check_opset(self) -> None:
        """An opset newer than the installed onnx package knows has semantics nothing here
        can check (nor can constant folding, which runs onnx's reference implementation)."""
        known = onnx.defs.onnx_opset_version()
        if self.opset > known:
            raise CompileError([Diagnostic(
                E_OPSET, f"the model imports ONNX opset {self.opset}; the installed onnx package "
                f"(version {onnx.__version__}) knows opsets up to {known}",
                help=f"re-export the model with opset {known} or older, or upgrade the onnx "
                     "package if that opset exists")])

    def too_many_nodes(self) -> Diagnostic:
        return Diagnostic(
            E_LIMIT, f"the imported network would have more than {MAX_NODES:,} IR nodes; netc's "
            f"front end accepts at most {MAX_NODES:,} (MAX_NODES, E0504), so it could not "
            f"compile what the import wrote (the ONNX graph has {len(self.nodes):,} nodes)",
            help="import the model in parts")

    def check_model(self) -> None:
        # ONNX graphs are in SSA form: every value is written once. A second writer would
        # silently replace the first for every later reader.
        writers: dict[str, str] = {}
        for info in self.graph.input:
            writers[info.name] = "a graph input"
        for tensor in self.graph.initializer:
            writers.setdefault(tensor.name, "an initializer")
        for index, node in enumerate(self.nodes):
            for name in node.output:
                if not name:
                    continue
                if name in writers:
                    self.report(E_MODEL, f"{self.label(index)} writes `{name}`, which "
                                f"{writers[name]} already writes; an ONNX value is written "
                                "once (the graph is not in SSA form)",
                                help="rename one of the two values")
                else:
                    writers[name] = self.label(index)
        if not self.graph.output:
            self.report(E_MODEL, "the ONNX graph has no outputs")
        if self.graph.sparse_initializer:
            self.report(E_MODEL, "sparse initializers are not supported",
                        help="densify them before import")

    def collect_constants(self) -> None:
        for tensor in self.graph.initializer:
            try:
                self.values[tensor.name] = numpy_helper.to_array(tensor)
            except Exception as exc:  # external data that is missing, unknown dtypes
                self.report(E_MODEL, f"cannot read initializer `{tensor.name}`: {exc}")
                self.values[tensor.name] = _POISON

    def declare_inputs(self) -> None:
        names = NameTable()
        batch_symbols: list[str] = []
        overridable = [i.name for i in self.graph.input if i.name in self.values]
        if overridable:
            self.notes.append("initializers also listed as graph inputs are imported as "
                              f"constants: {', '.join(overridable[:8])}"
                              + (" ..." if len(overridable) > 8 else ""))
        for info in self.graph.input:
            if info.name in self.values:
                continue
            problems = _Problems(f"graph input `{info.name}`")
            if not info.type.HasField("tensor_type"):
                problems.add(E_DTYPE, f"has type {info.type.WhichOneof('value')}; only float "
                             "tensors import")
            else:
                tensor_type = info.type.tensor_type
                dtype = _DTYPES.get(tensor_type.elem_type)
                if dtype is None:
                    problems.add(E_DTYPE, "has element type "
                                 f"{TensorProto.DataType.Name(tensor_type.elem_type)}; `.net` "
                                 "tensors are f32, f16 or bf16")
                shape = self.input_shape(info, tensor_type, problems, batch_symbols)
                if not problems.found and dtype is not None and shape is not None:
                    net_name = names.claim(info.name, "input")
                    self.input_ids[info.name] = self.builder.input(net_name, dtype, shape)
                    self.values[info.name] = net_name
                    continue
            self.problems.extend(problems.found)
            self.values[info.name] = _POISON
        if len(set(batch_symbols)) > 1:
            self.notes.append("the batch dimensions " + ", ".join(sorted(set(batch_symbols)))
                              + " of the ONNX inputs are all imported as N")

    def input_shape(self, info: onnx.ValueInfoProto, tensor_type: onnx.TypeProto.Tensor,
                    problems: _Problems, batch_symbols: list[str]) -> tuple[Dim, ...] | None:
        if not tensor_type.HasField("shape"):
            problems.add(E_SHAPE, "has no shape (unknown rank); `.net` inputs have a fixed rank",
                         help="give the input a shape, e.g. with onnx.shape_inference")
            return None
        dims = list(tensor_type.shape.dim)
        if not dims:
            problems.add(E_SHAPE, "is a scalar; `.net` inputs have at least one dimension "
                         "(the batch)")
            return None
        shape: list[Dim] = ["N"]
        first = dims[0]
        if first.HasField("dim_value"):
            size = first.dim_value
            if self.batch_value is None and not self.input_ids and not batch_symbols:
                self.batch_value = size
            if size == self.batch_value:
                self.notes.append(f"input `{info.name}` has a fixed first dimension {size} in "
                                  "the ONNX model; it is imported as the batch N")
            else:
                shape = [size]  # a different size cannot be the batch; it stays fixed
        else:
            batch_symbols.append(first.dim_param or "?")
        for position, dim in enumerate(dims[1:], start=1):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            else:
                what = f"`{dim.dim_param}`" if dim.dim_param else "unknown"
                problems.add(E_SHAPE, f"has a dynamic dimension {what} at position {position}; "
                             "`.net` allows a named (run-time) dimension only first, the batch",
                             help="fix the other dimensions, e.g. with "
                                  "onnx.tools.update_model_dims or by re-exporting")
                return None
        return tuple(shape)

    def fold_constants(self) -> None:
        for index, node in enumerate(self.nodes):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                try:
                    self.values[node.output[0]] = _constant_value(node)
                except Exception as exc:
                    self.report(E_UNSUPPORTED_ATTRIBUTE, f"{self.label(index)}: {exc}")
                    self.values[node.output[0]] = _POISON
                self.consumed.add(index)
                continue
            if node.op_type == "CastLike" and len(node.input) == 2 and \
                    isinstance(self.values.get(node.input[0]), np.ndarray) and \
                    self.elem_types.get(node.input[1]) in (TensorProto.FLOAT, TensorProto.FLOAT16):
                # A constant cast to the type of a tensor: the tensor's type is declared.
                target = onnx.helper.tensor_dtype_to_np_dtype(self.elem_types[node.input[1]])
                self.values[node.output[0]] = self.values[node.input[0]].astype(target)
                self.consumed.add(index)
                continue
            if self.fold(node):
                self.consumed.add(index)

    def fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate `node` now if all its inputs are constants; whether it was."""
        from onnx.reference import ReferenceEvaluator

        names = [n for n in node.input if n]
        if (not names or node.domain not in ("", "ai.onnx")
                or node.op_type in _NONDETERMINISTIC
                or not all(isinstance(self.values.get(n), np.ndarray) for n in names)
                or any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
                       for a in node.attribute)):
            return False
        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
            feeds = {n: self.values[n] for n in names}
            results: list[Any] = list(evaluator.run(None, feeds))
        except Exception:  # leave it to translation, which reports it
            return False
        if any(np.asarray(r).size > _FOLD_LIMIT for r in results):
            return False
        for name, result in zip(node.output, results):
            if name:
                self.values[name] = np.asarray(result)
        # A weight that the exporter transposed or cast keeps its name for the layer.
        sources = [self.origin.get(n, n) for n in names
                   if np.asarray(self.values[n]).size == np.asarray(results[0]).size]
        if len(node.output) == 1 and len(sources) == 1:
            self.origin[node.output[0]] = sources[0]
        return True

    # Patterns -----------------------------------------------------------------------------

    def producer(self, name: str) -> int | None:
        for index, node in enumerate(self.nodes):
            if name in node.output:
                return index
        return None

    def only_user(self, name: str) -> int | None:
        users = self.users.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def constant_near(self, name: str, target: float, tolerance: float = 1e-6) -> bool:
        value = self.values.get(name)
        return (isinstance(value, np.ndarray) and value.size == 1 and _float_kind(value)
                and abs(float(value.reshape(())) - target) <= tolerance * max(1.0, abs(target)))

    def other_operand(self, index: int, name: str) -> str | None:
        node = self.nodes[index]
        if len(node.input) != 2 or name not in node.input:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]

    def match_patterns(self) -> None:
        for index, node in enumerate(self.nodes):
            if node.op_type == "Erf" and index not in self.consumed:
                self.match_gelu(index)
            elif node.op_type == "Sigmoid" and index not in self.consumed:
                self.match_silu(index)

    def replace_with(self, op: str, x: str, matched: set[int], last: int) -> None:
        """Translate the nodes `matched` as one `op` applied to `x`, at the last of them."""
        final = max(matched)
        self.consumed.update(matched - {final})
        output = self.nodes[last].output[0]

        def emit() -> None:
            problems = _Problems(f"{op} pattern ending at {self.label(final)}")
            value = self.values.get(x, _POISON)
            try:
                if not isinstance(value, str):
                    raise _Poisoned
                self.bind(output, self.apply(problems, op, value))
            except _Poisoned:
                self.values[output] = _POISON
            self.problems.extend(problems.found)

        self.patterns[final] = emit

    def match_silu(self, sigmoid_index: int) -> None:
        """x * sigmoid(x), as exporters write SiLU (Swish)."""
        sigmoid = self.nodes[sigmoid_index]
        x = sigmoid.input[0]
        user = self.only_user(sigmoid.output[0])
        if user is None or self.nodes[user].op_type != "Mul" or \
                self.other_operand(user, sigmoid.output[0]) != x or \
                isinstance(self.values.get(x), np.ndarray):
            return
        self.replace_with("silu", x, {sigmoid_index, user}, user)

    def match_gelu(self, erf_index: int) -> None:
        """0.5 * x * (1 + erf(x / sqrt 2)), in the orders exporters write it."""
        erf = self.nodes[erf_index]
        scaled = self.producer(erf.input[0])
        if scaled is None or self.only_user(erf.input[0]) != erf_index:
            return
        scale_node = self.nodes[scaled]
        if scale_node.op_type == "Div":
            x = scale_node.input[0]
            if not self.constant_near(scale_node.input[1], math.sqrt(2.0)):
                return
        elif scale_node.op_type == "Mul":
            x = self.other_operand(scaled, next((n for n in scale_node.input
                                                 if self.constant_near(n, math.sqrt(0.5))), ""))
            if x is None:
                return
        else:
            return
        add = self.only_user(erf.output[0])
        if add is None or self.nodes[add].op_type not in ("Add", "Sum"):
            return
        one = self.other_operand(add, erf.output[0])
        if one is None or not self.constant_near(one, 1.0):
            return
        first = self.only_user(self.nodes[add].output[0])
        if first is None or self.nodes[first].op_type != "Mul":
            return
        partner = self.other_operand(first, self.nodes[add].output[0])
        if partner is None:
            return
        matched = {scaled, erf_index, add, first}
        if partner == x:  # (x * (1 + erf)) * 0.5
            last = self.only_user(self.nodes[first].output[0])
            if last is None or self.nodes[last].op_type != "Mul":
                return
            half = self.other_operand(last, self.nodes[first].output[0])
            if half is None or not self.constant_near(half, 0.5):
                return
            matched.add(last)
        elif self.constant_near(partner, 0.5):  # x * ((1 + erf) * 0.5)
            last = self.only_user(self.nodes[first].output[0])
            if last is None or self.nodes[last].op_type != "Mul" or \
                    self.other_operand(last, self.nodes[first].output[0]) != x:
                return
            matched.add(last)
        else:  # (x * 0.5) * (1 + erf)
            half_index = self.producer(partner)
            if half_index is None or self.only_user(partner) != first:
                return
            half_node = self.nodes[half_index]
            if half_node.op_type != "Mul" or x not in half_node.input or \
                    not self.constant_near(self.other_operand(half_index, x) or "", 0.5):
                return
            matched.add(half_index)
            last = first
        if isinstance(self.values.get(x), np.ndarray):
            return  # all constant: folded already
        self.replace_with("gelu", x, matched, last)

    # Translation --------------------------------------------------------------------------

    def bind(self, onnx_name: str, value: Value) -> None:
        self.values[onnx_name] = value
        if isinstance(value, str) and value not in self.proposed_names:
            self.proposed_names[value] = onnx_name

    def translate(self, index: int, node: onnx.NodeProto) -> None:
        if index in self.patterns:
            self.patterns[index]()
            return
        problems = _Problems(self.label(index))
        default_domain = node.domain in ("", "ai.onnx")
        operands = [self.values.get(name) for name in node.input if name]
        if default_domain and self.fold(node):
            return  # its inputs became constants during translation (shape arithmetic)
        handler = _handler(node.op_type) if default_domain else None
        if default_domain and (node.op_type == "Shape" or (
                node.op_type in _SHAPE_HANDLERS and any(isinstance(v, _Shape)
                                                        for v in operands))):
            handler = _SHAPE_HANDLERS[node.op_type]
        elif handler is not None and node.op_type != "Reshape" and \
                any(isinstance(v, _Shape) for v in operands):
            problems.add(E_NOT_EXPRESSIBLE, "computes with the run-time batch size (from a "
                         "`Shape` node); `.net` uses the batch only as a Reshape target that "
                         "keeps it")
            handler = None
        if handler is None and problems.found:
            pass
        elif handler is None:
            domain = f" (domain `{node.domain}`)" if node.domain not in ("", "ai.onnx") else ""
            problems.add(E_UNSUPPORTED_OP, f"op `{node.op_type}`{domain} has no `.net` "
                         "equivalent" + (" outside the GELU pattern" if node.op_type == "Erf"
                                         else ""),
                         help=None if self.unsupported_help_given else
                         "the ONNX import supports " + ", ".join(supported_ops())
                         + " (see docs/onnx.md)")
            self.unsupported_help_given = True
        else:
            try:
                results = handler(self, index, node, problems)
                if not problems.found:
                    for name, value in results.items():
                        self.bind(name, value)
            except _Poisoned:
                pass
            except KeyError as exc:
                problems.add(E_MODEL, f"uses `{exc.args[0]}`, which no earlier node, "
                             "initializer or input defines (is the graph topologically sorted?)")
        self.problems.extend(problems.found)
        for name in node.output:
            if name and name not in self.values:
                self.values[name] = _POISON

    def declare_outputs(self) -> dict[str, str]:
        names = NameTable()
        output_map: dict[str, str] = {}
        for info in self.graph.output:
            value = self.values.get(info.name, _POISON)
            if value is _POISON:
                continue
            if isinstance(value, np.ndarray):
                self.report(E_CONSTANT_TENSOR, f"graph output `{info.name}` is a constant; "
                            "`.net` outputs are computed from the inputs")
                continue
            net_name = names.claim(info.name, "output")
            output_map[info.name] = net_name
            self.builder.output(net_name, value)
        return output_map


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


def __getattr__(name: str) -> tuple[str, ...]:
    # `SUPPORTED_OPS` reads the registrations when asked, so an op registered later is in it.
    if name == "SUPPORTED_OPS":
        return supported_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# Shape arithmetic -------------------------------------------------------------------------
# Exporters that keep the batch dynamic compute a Reshape's target from `Shape(x)`; these
# handlers follow such int vectors with the batch as a name, so the Reshape can keep it.

_SHAPE_HANDLERS: dict[str, Handler] = {}


def _shape_handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            _SHAPE_HANDLERS[op_type] = function
        return function
    return register


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


# Entry point ------------------------------------------------------------------------------


def load_model(model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    """The model and a name for it; a file that cannot be read is a CompileError."""
    if isinstance(model, onnx.ModelProto):
        return model, "an ONNX model"
    path = Path(model)
    if not path.is_file():
        raise CompileError([Diagnostic(E_MODEL, f"ONNX file `{path}` does not exist")])
    try:
        return onnx.load(str(path)), path.name
    except Exception as exc:  # protobuf decode errors, missing external data
        raise CompileError([Diagnostic(E_MODEL, f"cannot read `{path}` as an ONNX model: "
                                       f"{exc}")]) from None


def import_onnx(model: onnx.ModelProto | str | os.PathLike[str], *,
                network_name: str | None = None) -> ImportedModel:
    """Import an ONNX model (a ModelProto or a path to a `.onnx` file) as a `.net` network.

    Raises `CompileError` listing every node, attribute, dtype or shape that has no `.net`
    form (codes E06xx).
    """
    proto, source = load_model(model)
    return _Importer(proto, source, network_name).run()
