"""The importer's passes over an ONNX graph: inputs, constants (folded with ONNX's reference
implementation), patterns (GELU, SiLU), translation of each node through its handler, outputs;
and the `.net` text written from the graph built."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from netc.diagnostics import CompileError, Diagnostic
from netc.frontend.limits import MAX_NODES, MAX_SOURCE_BYTES
from netc.frontend.unparse import (
    COMMENT_FIELD_LIMIT,
    NameTable,
    comment_text,
    is_valid_name,
    render_net,
)
from netc.ir import Dim, TensorType, format_shape
from netc.onnx.importer.model import (
    _DTYPES,
    _FOLD_LIMIT,
    _NONDETERMINISTIC,
    E_CONSTANT_TENSOR,
    E_DTYPE,
    E_LIMIT,
    E_MODEL,
    E_NOT_CONSTANT,
    E_NOT_EXPRESSIBLE,
    E_OPSET,
    E_SHAPE,
    E_UNSUPPORTED_ATTRIBUTE,
    E_UNSUPPORTED_OP,
    ImportedModel,
    ImportFailure,
)
from netc.onnx.importer.patterns import Match, find_patterns
from netc.ops import ShapeError
from netc.ops.builder import GraphBuilder

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
    each entry an int, a named dimension, or the text of arithmetic on one (`N*4`, which no
    `.net` dimension can be). Exporters build a Reshape's target this way to keep a size
    dynamic (`x.view(x.size(0), -1)`); fully known ones become constants."""

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
holding a named dimension; _POISON: unimportable."""


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


def _shown(dim_param: str) -> str:
    return f"`{dim_param}`" if dim_param else "(unnamed)"


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
        self.patterns: dict[int, Match] = {}
        """Decomposed ops found (`patterns.find_patterns`), by their last node."""
        self.failed: dict[int, str] = {}
        """Node index -> what failed there (its op type, or a pattern), for the summary."""
        self.unreached: set[int] = set()
        """Nodes not translated because an input comes from a node or input that failed."""
        self.users: dict[str, list[int]] = {}
        self.producers: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.users.setdefault(name, []).append(index)
            for name in node.output:
                if name:
                    self.producers.setdefault(name, index)
        self.graph_outputs = {output.name for output in self.graph.output}
        self.elem_types = {info.name: info.type.tensor_type.elem_type
                           for info in (*self.graph.input, *self.graph.value_info,
                                        *self.graph.output)
                           if info.type.HasField("tensor_type")}
        name = network_name or self.graph.name or Path(source).stem or "imported"
        self.network = NameTable.sanitise(name, "imported") if not is_valid_name(name) else name
        self.builder = GraphBuilder(self.network)
        self.dimension_names: dict[str, str] = {}
        """ONNX `dim_param` -> the `.net` named dimension it became."""
        self.initializers: set[str] = set()
        self.ranges: dict[str, int] = {}
        """A folded constant `Range`'s output -> its node, made `arange` if a tensor needs it."""
        self.free_params: dict[str, str] = {}
        """ONNX value -> the free parameter (`param NAME`) that holds its constant value."""
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
            if node.input[position] in self.ranges:
                return self.arange(node.input[position], problems)
            if value.dtype == np.float32:
                return self.constant_tensor(node.input[position], value, problems)
            problems.add(E_CONSTANT_TENSOR,
                         f"the {what} (operand {position}, `{node.input[position]}`) is a constant "
                         f"of shape {format_shape(value.shape)} and dtype {value.dtype}; `.net` "
                         "holds constant tensors only as f32 parameters (`param`)",
                         help="only f32 constant tensors, scalar constants (numbers) and layer "
                              "parameters are expressible")
            return None
        if isinstance(value, _Shape):
            problems.add(E_NOT_EXPRESSIBLE,
                         f"the {what} (operand {position}, `{node.input[position]}`) is computed "
                         "from a run-time (named) size; `.net` uses it only as a Reshape target "
                         "that keeps the named dimensions")
            return None
        return str(value)

    def arange(self, name: str, problems: _Problems) -> str:
        """The constant `Range` that wrote `name`, as the tensor `arange(n)`: a Range of
        constants is folded (so that Swin's masks, computed from it, are constants), and
        becomes an op only where a tensor is needed."""
        from netc.onnx.importer.handlers import _handler

        index = self.ranges.pop(name)
        handler = _handler("Range")
        assert handler is not None
        results = handler(self, index, self.nodes[index], problems)
        if name not in results:
            raise _Poisoned
        self.bind(name, results[name])
        return str(results[name])

    def constant_tensor(self, source: str, value: np.ndarray, problems: _Problems) -> str:
        """An f32 constant tensor as a `param`, or, where an `Expand` of a smaller constant
        made it (ViT's class token repeated for each image of a fixed batch), as `expand` of
        that constant's `param`."""
        producer = self.producer(source)
        node = self.nodes[producer] if producer is not None else None
        if node is not None and node.op_type == "Expand" and source not in self.free_params:
            small = self.values.get(node.input[0])
            if isinstance(small, np.ndarray) and small.dtype == np.float32 and \
                    small.size < value.size and small.ndim <= value.ndim:
                param = self.free_param(node.input[0], small)
                self.free_params[source] = self.apply(problems, "expand", param,
                                                      dims=tuple(value.shape))
                self.proposed_names[self.free_params[source]] = source
        return self.free_params.get(source) or self.free_param(source, value)

    def free_param(self, source: str, value: np.ndarray) -> str:
        """The free parameter (`param NAME: f32[...]`) that holds the constant `source`: one
        per ONNX value, named after it (or the initializer it was computed from), sanitised;
        its value goes into the weights under that name."""
        if source not in self.free_params:
            # Named after the initializer it was computed from (a transposed weight), else
            # after the ONNX value itself.
            origin = self.origin.get(source, source)
            named = origin if origin in self.initializers else source
            base = NameTable.sanitise(named, "param")
            if base in self.input_ids.values():
                base += "_param"
            name = self.layer_names.claim(base, "param")
            self.free_params[source] = self.builder.param(name, "f32", value.shape)
            self.weights[name] = np.ascontiguousarray(value, dtype=np.float32)
        return self.free_params[source]

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

    def layer_name(self, node: onnx.NodeProto, op: str, weight_position: int = 1,
                   sources: Mapping[str, str] | None = None, also: Sequence[str] = ()) -> str:
        """The layer's name, chosen so that the original weights keep their names.

        `sources` gives the ONNX value each parameter comes from; by default the weight is
        operand `weight_position`, and every other constant operand of `node`, and each of
        `also` (a bias added by the next node), is a parameter too. Where those that are
        named `<path>.<param>` share one `<path>` (PyTorch's and netc's own exports:
        `layer1.0.conv1.weight`, `layer1.0.conv1.bias`; anonymous ones such as the legacy
        exporter's pre-transposed `onnx::MatMul_152` aside, and those named after an earlier
        layer, which the exporter merged with this one's because they are equal), the layer
        is `<path>`, a module path as PyTorch writes it; else it is named after the weight's
        prefix (made a plain name), else after the node, else `<op>_<k>`."""
        others = list(also)
        if sources is None:
            sources = {"weight": node.input[weight_position]
                       if weight_position < len(node.input) else ""}
            others += [name for position, name in enumerate(node.input)
                       if position != weight_position and name
                       and isinstance(self.values.get(name), np.ndarray)]
        named = {short: self.parameter_name(source) for short, source in sources.items()}
        prefixes = {name[:-len(short) - 1] if name.endswith(f".{short}") else None
                    for short, name in named.items() if "." in name}
        prefixes |= {name.rsplit(".", 1)[0] for name in map(self.parameter_name, others)
                     if "." in name}
        # Both exporters merge equal initializers (the zero biases of a fresh model): a
        # parameter named after an earlier layer is one of those, and does not count.
        fresh = {prefix for prefix in prefixes
                 if prefix is None or prefix not in self.layer_names.taken}
        if len(fresh) == 1 and (path := fresh.pop()):
            return self.layer_names.claim(path, op, path=True)
        weight = named.get("weight", "")
        if weight.endswith(".weight") and len(weight) > len(".weight"):
            return self.layer_names.claim(weight[:-len(".weight")], op)
        if node.name:
            return self.layer_names.claim(node.name, op)
        count = self.layer_counts.get(op, 0)
        self.layer_counts[op] = count + 1
        return self.layer_names.claim(f"{op}_{count}", op)

    def parameter_name(self, source: str) -> str:
        """The name a parameter's ONNX value goes by: its own where that is `<path>.<name>`,
        else that of the initializer it was computed from (a weight the exporter transposed
        or cast), else its own."""
        if "." in source.strip("."):
            return source
        return self.origin.get(source, source)

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
            raise ImportFailure(self.problems, self.summary())
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
        self.initializers = {tensor.name for tensor in self.graph.initializer}
        for tensor in self.graph.initializer:
            try:
                self.values[tensor.name] = numpy_helper.to_array(tensor)
            except Exception as exc:  # external data that is missing, unknown dtypes
                self.report(E_MODEL, f"cannot read initializer `{tensor.name}`: {exc}")
                self.values[tensor.name] = _POISON

    def declare_inputs(self) -> None:
        names = NameTable()
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
                                 "tensors are f32, f16, bf16, i32, i64 or bool")
                shape = self.input_shape(tensor_type, problems)
                if not problems.found and dtype is not None and shape is not None:
                    net_name = names.claim(info.name, "input")
                    self.input_ids[info.name] = self.builder.input(net_name, dtype, shape)
                    self.values[info.name] = net_name
                    continue
            self.problems.extend(problems.found)
            self.values[info.name] = _POISON

    def input_shape(self, tensor_type: onnx.TypeProto.Tensor,
                    problems: _Problems) -> tuple[Dim, ...] | None:
        """An input's shape: fixed sizes stay fixed, and each symbolic size (`dim_param`, or
        none) becomes a named dimension (`dimension_name`)."""
        if not tensor_type.HasField("shape"):
            problems.add(E_SHAPE, "has no shape (unknown rank); `.net` inputs have a fixed rank",
                         help="give the input a shape, e.g. with onnx.shape_inference")
            return None
        dims = list(tensor_type.shape.dim)
        if not dims:
            problems.add(E_SHAPE, "is a scalar; `.net` inputs have at least one dimension "
                         "(the batch)")
            return None
        empty = next((position for position, dim in enumerate(dims)
                      if dim.HasField("dim_value") and dim.dim_value <= 0), None)
        if empty is not None:
            problems.add(E_SHAPE, f"has size {dims[empty].dim_value} at position {empty} (an "
                         "empty tensor); `.net` dimensions are positive")
            return None
        shape: list[Dim] = []
        for dim in dims:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(self.dimension_name(dim.dim_param, first=not shape))
        return tuple(shape)

    def dimension_name(self, dim_param: str, first: bool) -> str:
        """The named dimension for an ONNX symbolic size: its own name where that is a valid
        `.net` name (`batch`), else `N` for a first dimension and `T`, `S`, ... for the others.
        One ONNX name is one `.net` name everywhere; the symbolic first dimensions of all
        inputs are one, the batch (exporters name each input's apart); any other unnamed size
        gets a name of its own."""
        batch = self.dimension_names.get("?batch") if first else None
        if batch is not None:
            if dim_param not in self.dimension_names:
                self.dimension_names[dim_param or "?"] = batch
                if dim_param and dim_param != batch:
                    self.notes.append(f"the ONNX dimension {_shown(dim_param)}, first in an "
                                      f"input, is imported as the batch {batch}")
            return batch
        name = self.dimension_names.get(dim_param) if dim_param else None
        if name is None:
            taken = {*self.dimension_names.values(), *(
                d.dim_param for i in self.graph.input if i.type.HasField("tensor_type")
                for d in i.type.tensor_type.shape.dim if is_valid_name(d.dim_param))}
            if is_valid_name(dim_param):
                name = dim_param
            else:
                candidates = ("N", "T", "S", "L") if first else ("T", "S", "L", "N")
                name = next((c for c in candidates if c not in taken), "")
                count = 0
                while not name or name in taken:
                    count += 1
                    name = f"D{count}"
                self.notes.append(f"the ONNX dimension {_shown(dim_param)} is imported as the "
                                  f"named dimension {name}")
            self.dimension_names[dim_param or f"?{len(self.dimension_names)}"] = name
        if first:
            self.dimension_names["?batch"] = name
        return name

    def fold_constants(self) -> None:
        for index, node in enumerate(self.nodes):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                try:
                    self.values[node.output[0]] = _constant_value(node)
                except Exception as exc:
                    self.report(E_UNSUPPORTED_ATTRIBUTE, f"{self.label(index)}: {exc}")
                    self.values[node.output[0]] = _POISON
                    self.failed[index] = node.op_type
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
        if node.op_type == "Range":
            self.ranges[node.output[0]] = self.nodes.index(node)
        # A weight that the exporter transposed or cast keeps its name for the layer.
        sources = [self.origin.get(n, n) for n in names
                   if np.asarray(self.values[n]).size == np.asarray(results[0]).size]
        if len(node.output) == 1 and len(sources) == 1:
            self.origin[node.output[0]] = sources[0]
        return True

    # Graph helpers (for the patterns and the handlers) ----------------------------------

    def producer(self, name: str) -> int | None:
        """The index of the node that writes `name` (None: an input or initializer)."""
        return self.producers.get(name)

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
        """Find the decomposed ops (`patterns.find_patterns`); each is translated at its
        last node, and its other nodes are skipped."""
        self.patterns = find_patterns(self)
        for match in self.patterns.values():
            self.consumed.update(match.nodes - {match.last})

    def emit(self, match: Match) -> bool:
        """Translate `match` as its one op, at its last node. False where what is known only
        now rules it out (an operand that shape arithmetic made a constant, an axis that is
        not the last, a mask that is not the causal one): the nodes are then translated one by
        one."""
        index = match.last
        operands = [self.values.get(name, _POISON) for name in (match.x, *match.operands)]
        value = operands[0]
        x = self.type_of(value) if isinstance(value, str) else None
        poisoned = any(operand is _POISON for operand in operands)
        attrs = dict(match.attrs)
        resolved = match.resolve(self.values) if match.resolve and not poisoned else {}
        if (not poisoned and not all(isinstance(o, str) for o in operands)) or (
                x is not None and match.axis is not None and match.axis not in (-1, x.rank - 1)) \
                or resolved is None:
            # An operand became a constant or a shape during translation (shape arithmetic),
            # the axis is not the last, or a value the op needs is not what it must be: the
            # nodes one by one (the earlier ones now: nothing outside the match reads them).
            self.consumed.difference_update(match.nodes)
            for earlier in sorted(match.nodes - {index}):
                self.translate(earlier, self.nodes[earlier])
            return False
        attrs.update(resolved)
        problems = _Problems(f"{match.op} pattern ending at {self.label(index)}")
        try:
            if poisoned or x is None:
                raise _Poisoned
            inputs = [str(operand) for operand in operands]
            for position in sorted(match.swapped):
                rank = self.type_of(inputs[position]).rank
                inputs[position] = self.apply(problems, "transpose", inputs[position],
                                              perm=(*range(rank - 2), rank - 1, rank - 2))
            params = None
            layer = None
            if match.params is not None:
                size = x.shape[-1]
                params = {name: np.broadcast_to(array, (size,)) if array.size == 1 and
                          isinstance(size, int) else array
                          for name, array in match.params.items()}
                layer = self.layer_name(self.nodes[match.first], match.op,
                                        sources=match.sources)
            self.bind(match.output, self.apply(problems, match.op, *inputs, layer=layer,
                                               params=params, **attrs))
        except _Poisoned:
            self.values[match.output] = _POISON
        self.record(index, f"{match.op} pattern", problems)
        return True

    # Translation --------------------------------------------------------------------------

    def bind(self, onnx_name: str, value: Value) -> None:
        self.values[onnx_name] = value
        if isinstance(value, str) and value not in self.proposed_names:
            self.proposed_names[value] = onnx_name

    def record(self, index: int, what: str, problems: _Problems) -> None:
        """The outcome of translating node `index` (or the pattern from it): its problems
        reported and counted under `what`; a node without problems that computed nothing
        depends on one that failed (not reached)."""
        self.problems.extend(problems.found)
        if problems.found:
            self.failed[index] = what
        elif any(self.values.get(name) is _POISON for name in self.nodes[index].output if name):
            self.unreached.add(index)

    def summary(self) -> str:
        """`3 of 240 nodes are not supported: Resize (2), Exp (1)`, and how many more depend
        on them; empty when every node was translated."""
        counts = Counter(self.failed.values())
        listed = ", ".join(f"{what} ({count})" for what, count in
                           sorted(counts.items(), key=lambda item: -item[1]))
        total = len(self.nodes)
        text = f"{len(self.failed)} of {total} nodes are not supported: {listed}" if counts \
            else ""
        if self.unreached:
            more = f"{len(self.unreached)} more" if counts else \
                f"{len(self.unreached)} of {total} nodes"
            text += ("; " if text else "") + f"{more} not reached (they depend on " + \
                ("those)" if counts else "the problems above)")
        return text

    def translate(self, index: int, node: onnx.NodeProto) -> None:
        match = self.patterns.pop(index, None)
        if match is not None and self.emit(match):
            return
        problems = _Problems(self.label(index))
        default_domain = node.domain in ("", "ai.onnx")
        operands = [self.values.get(name) for name in node.input if name]
        if default_domain and self.fold(node):
            return  # its inputs became constants during translation (shape arithmetic)
        from netc.onnx.importer.handlers import _SHAPE_HANDLERS, _handler

        handler = _handler(node.op_type) if default_domain else None
        if default_domain and (node.op_type == "Shape" or (
                node.op_type in _SHAPE_HANDLERS and any(isinstance(v, _Shape)
                                                        for v in operands))):
            handler = _SHAPE_HANDLERS[node.op_type]
        elif handler is not None and node.op_type not in ("Reshape", "Resize") and \
                any(isinstance(v, _Shape) for v in operands):
            problems.add(E_NOT_EXPRESSIBLE, "computes with a run-time (named) size (from a "
                         "`Shape` node); `.net` uses it only as a Reshape target that "
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
                         "the ONNX import supports " + ", ".join(_supported_ops())
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
        for name in node.output:
            if name and name not in self.values:
                self.values[name] = _POISON
        op_type = node.op_type if default_domain else f"{node.domain}.{node.op_type}"
        self.record(index, op_type, problems)

    def declare_outputs(self) -> dict[str, str]:
        # The free parameters keep their names (the weights are stored under them); the
        # `.net` text names outputs and values around them.
        params = {value for value in self.free_params.values() if value in self.weights}
        for value, proposal in list(self.proposed_names.items()):
            if proposal in params or NameTable.sanitise(proposal) in params:
                self.proposed_names[value] = f"{proposal}_value"
        names = NameTable(tuple(params))
        output_map: dict[str, str] = {}
        for info in self.graph.output:
            value = self.values.get(info.name, _POISON)
            if value is _POISON:
                continue
            if isinstance(value, np.ndarray) and info.name in self.ranges:
                problems = _Problems(f"graph output `{info.name}`")
                with contextlib.suppress(_Poisoned):  # reported in `problems`
                    value = self.arange(info.name, problems)
                self.problems.extend(problems.found)
                if problems.found:
                    continue
            if isinstance(value, np.ndarray):
                self.report(E_CONSTANT_TENSOR, f"graph output `{info.name}` is a constant; "
                            "`.net` outputs are computed from the inputs")
                continue
            if isinstance(value, _Shape):
                what = f"the size {value.entries[0]}" if value.scalar else \
                    f"the shape {format_shape(value.entries)}"
                self.report(E_NOT_EXPRESSIBLE, f"graph output `{info.name}` is {what} of a "
                            "tensor, known only at run time (a named dimension); `.net` has no op "
                            "that outputs a shape",
                            help="leave this output out of the model; the caller knows the "
                                 "sizes of its inputs")
                continue
            net_name = names.claim(info.name, "output")
            output_map[info.name] = net_name
            self.builder.output(net_name, value)
        return output_map


def _supported_ops() -> tuple[str, ...]:
    from netc.onnx.importer.handlers import supported_ops

    return supported_ops()
