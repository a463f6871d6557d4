"""The op registry: one `OpDef` holds everything netc knows about an op.

An op is one `OpDef` registered with `register`. Its entry gives:

* the attribute schema (in the order positional attributes are accepted after the tensor
  inputs), the shape and dtype rule, the parameters with PyTorch's names, shapes and default
  initialisation, a NumPy reference implementation (the executable meaning of the op) and its
  FLOP count;
* its `role`, which is all the passes and backends need to know to classify it (fusion,
  tiling, kernel choice, memory planning): `ROLES` below;
* for a GEMM-shaped op, its `gemm_view`: the one derivation of M, N, K and the matrix count
  from its shapes, which both the tile heuristic and the CUDA lowering use;
* for a pointwise op, its CUDA `expression` (plain data: the CUDA code generator fuses and
  emits it, no other kernel is needed), and for an op that is one ONNX node, its `onnx` form
  (export and import both derive their rule from it);
* `decompose`: the op written with other ops. A backend without a rule of its own for the op
  computes the decomposition instead (the reference interpreter, when the entry gives no
  `reference`; the CUDA code generator and the ONNX exporter, when they have no rule; a
  `pointwise` op given so still fuses, its decomposition inlined into the kernel);
* `vjp`: the op's vector-Jacobian product, which `netc.autodiff` calls to build the backward
  graph (convention below; the shared pieces are in `netc.ops.gradients`).

Backends that need code of their own (a kernel family, an ONNX spelling of several nodes)
keep it in their own package and *register* it for the op by name (`codegen.kernels.lowers`,
`onnx.export.exports`, `onnx.importer._handles(..., ops=...)`), so dependencies point from
the backends down to this registry, never up. `tests/unit/test_op_completeness.py` walks
`REGISTRY` and fails, naming the op and the missing piece, when an op lacks a reference, a CUDA
lowering, an ONNX export, an ONNX import or a row in `docs/ops.md`. So a new pointwise op is one
entry (with `expression` and `onnx`) plus its line in `docs/ops.md`; a new kernel-backed op is
its entry plus the backends' registrations. `temporarily_registered` adds an op for a test and
removes it again. Applying an op to typed inputs (binding and checking attributes, inferring
the type, naming the node) is `netc.ops.apply`'s, for the front end and `GraphBuilder` alike.

Conventions for the functions an `OpDef` holds:
* `infer(attrs, inputs)` gets the tensor inputs' types (not the parameters) and returns the
  output type, or raises `ShapeError` with a message that shows the shapes involved.
* `params(attrs, inputs)` returns the op's parameters in the order they follow the tensor
  inputs in the IR, then any buffers it keeps but never reads (`ParamSpec.operand` False);
  `param_names(attrs)` must list the operands' names without needing the inputs.
* `reference(attrs, *arrays)` gets tensor inputs then parameters as NumPy arrays (float32 for
  every float dtype, int32/int64/bool for `i32`/`i64`/`bool`: the interpreter rounds to the
  value's dtype between ops) and returns one array
  (a tuple of arrays, one per output, for an op with `infer_extra`).
* `infer_extra(attrs, inputs)`, only for an op with several outputs, returns the types of
  outputs 1, 2, ... (`infer` gives output 0's); see `netc.ir.Node.extra_types`.
* `flops(attrs, input_shapes, output_shape)` counts floating-point operations (a multiply-add
  is 2) for concrete shapes.
* `gemm_view(attrs, input_shapes, output_shape)` gets the shapes of all IR inputs (parameters
  included), each dimension an int or the batch's name, and returns a `GemmView`.
* `decompose(builder, attrs, *inputs)` gets a `Composer` (`GraphBuilder` is one) and the ids of
  all IR inputs, applies other ops with `builder.op(...)` / `builder.constant(...)`, and
  returns the id of the result.
* `vjp(builder, attrs, inputs, output, cotangent)` gets a `Composer` (which, unlike a
  decomposition's, also applies ops with parameters: pass them after the tensor inputs, as
  the IR does), the ids of all IR inputs (tensor inputs, then parameters), the id of the
  forward output and the id of its cotangent (the loss's gradient with respect to the output,
  of the output's type). It builds the backward nodes with other ops and returns one entry per
  IR input: the id of the gradient with respect to it, of exactly that input's type (summed
  back over broadcast axes), or None where there is none: an integer or boolean input (class
  ids, a mask, a condition) or one the op does not differentiate (running statistics). It may
  read `inputs` and `output` (the forward values are kept) and raise `ShapeError` for
  attributes it cannot differentiate yet; `netc.autodiff` reports that at the node's line.
  Ops of several outputs have no VJP yet. An op without a `vjp` is differentiated through its
  `decompose` when it has one; ops whose result is an integer or a boolean (comparisons,
  `argmax`, `arange`, a cast to an integer) need none, as no gradient flows through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from netc.ir import DTYPE_BYTES, FLOAT_DTYPES, Attrs, Dim, Node, TensorType, format_shape

REQUIRED: Any = object()
"""Marks an attribute without a default."""

ATTR_KINDS = ("int", "float", "bool", "str", "int_pair", "int_list", "padding", "axes",
              "dim_list", "dim")
"""`int_pair`: an int or `[h, w]`, stored as a pair. `int_list`: `[a, b, ...]`, stored as a
tuple. `padding`: an int, `[h, w]`, or the string "same". `axes`: an int or a list of ints,
stored as a tuple. `dim_list`: a list whose elements are ints or dimension names (strings:
`[T, 8, 32]`), stored as a tuple. `dim`: an int or a dimension name (`arange(T)`). The
reference interpreter gives an op's `reference` the sizes of the names in `dim_list` and `dim`
attributes (`netc.reference.resolve_dims`); every other function sees the names."""


class ShapeError(Exception):
    """The inputs' shapes or dtypes do not fit the op; the message shows them."""


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str
    default: Any = REQUIRED
    positional: bool = True
    """Whether the attribute may be given by position after the tensor arguments."""
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    """Smallest allowed value of an int or float (of each element for pairs and lists)."""
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: tuple[str, float]
    """("uniform", bound) draws U(-bound, bound); ("const", value) fills with value."""
    trainable: bool = True
    """False for running statistics, which PyTorch keeps as buffers, not parameters."""
    dtype: str | None = None
    """None: the layer's dtype (its first input's); else a fixed dtype (`"i64"`), which only
    a buffer that is no operand has so far (the IR's `param` nodes take the layer's dtype)."""
    operand: bool = True
    """False for a buffer the op never reads (batchnorm's `num_batches_tracked`): it is in the
    weights and the state dict (`netc.weights.param_specs`) but is no IR input, so no kernel,
    reference or exporter sees it. `params` lists the operands first, in IR order, then these;
    `param_names` lists the operands only."""


ROLES: dict[str, str] = {
    "pointwise": "output element i from element i of each (broadcast) input and at most "
                 "per-channel parameters; joins fused groups (activations, arithmetic, "
                 "inference batchnorm)",
    "gemm": "a matrix product (`gemm_view`); anchors a `gemm_epilogue` group",
    "conv": "a convolution computed as an implicit GEMM (`gemm_view`); anchors a "
            "`conv_epilogue` group",
    "pool": "a sliding-window reduction; anchors a `pool_epilogue` group",
    "row_reduction": "reduces rows along `reduced_axis`, reading each row more than once; "
                     "anchors a `reduction` group, takes a prologue only for rows up to "
                     "`passes.fusion.ROW_LIMIT`",
    "reduction": "reduces its input reading each element once; anchors a `reduction` group "
                 "and takes a prologue of any length",
    "layout": "moves data (a kernel of its own, never fused)",
    "view": "relabels its input's memory: no kernel, no data moved",
    "fused": "internal: a group of ops one kernel computes (made by the fusion passes)",
}
"""Every op's `role`, with what it means to the passes and backends."""

Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class GemmView:
    """An op as C[M x N] = A[M x K] . B[K x N] for `count` independent matrices.

    Each of M, N, K and count is a product of dimensions, kept as the tuple of those
    dimensions, so that a dimension may be the batch's name: the code generator turns a
    product into a batch-linear size, the tile heuristic evaluates it at a batch."""

    m: Shape
    n: Shape
    k: Shape
    count: Shape = ()

    def concrete(self, sizes: Mapping[str, int]) -> tuple[int, int, int, int]:
        """(M, N, K, count) with every named dimension set from `sizes`."""
        def product(dims: Shape) -> int:
            return math.prod(sizes[d] if isinstance(d, str) else int(d) for d in dims)
        return product(self.m), product(self.n), product(self.k), product(self.count)


@dataclass(frozen=True)
class CudaExpression:
    """A pointwise op as one CUDA float expression.

    `{0}`, `{1}`, ... are the op's tensor operands in IR order (inputs, then parameters), then
    the float attributes named in `floats`, in that order. Code generation fills in netc-made
    variable names only, never user text."""

    text: str
    floats: tuple[str, ...] = ()
    """Attributes passed to the kernel as float arguments, after the tensor operands."""
    channel_params: bool = False
    """The parameters are [C] vectors repeated along every dimension but dim 1 (batchnorm)."""


@dataclass(frozen=True)
class OnnxForm:
    """An op that is exactly one ONNX node of the default domain, with the same operands in
    the same order: the exporter writes it and the importer reads it back from this alone."""

    op_type: str
    attrs: tuple[tuple[str, str], ...] = ()
    """(ONNX attribute name, netc attribute name) pairs; an ONNX attribute left out of a model
    takes the netc attribute's default, so the two defaults must agree."""
    since: int = 1
    """The first ONNX opset with this op and these semantics (netc exports opset 17)."""


class Composer(Protocol):
    """What a decomposition builds with: `netc.ops.builder.GraphBuilder` is one."""

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str: ...

    def constant(self, value: float, dtype: str = "f32") -> str: ...

    def type_of(self, value: str) -> TensorType: ...


@dataclass(frozen=True)
class OpDoc:
    """What `docs/ops.md`'s table says of an op beyond what the entry's data already gives
    (the attribute column is written from `OpDef.attrs`; `python -m netc.ops.docs` writes the
    table). Plain text with Markdown code spans."""

    shapes: str = "same"
    """The shape rule in words: `[N, C, H, W]` → `[N, C, H', W']`."""
    params: str = ""
    """The parameters and their initialisation, empty for none."""
    flops: str = "out"
    """The FLOP count in terms of `out` and `in` (element counts)."""
    attrs: str = ""
    """Constraints on the attributes beyond their kinds, defaults, minimums and choices."""


Decomposition = Callable[..., str]
"""`decompose(builder: Composer, attrs: Attrs, *inputs: str) -> str` (see the module doc)."""


def _no_params(attrs: Attrs) -> tuple[str, ...]:
    return ()


def _no_param_shapes(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    return ()


def _zero_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    return 0


def _keep_attrs(attrs: Attrs, inputs: Sequence[TensorType]) -> Attrs:
    return attrs


def _from_decomposition(attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
    """Stands for "no reference given"; `OpDef` replaces it by its decomposition's."""
    raise AssertionError("replaced when the OpDef is made")


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[[Attrs, Sequence[TensorType]], TensorType]
    reference: Callable[..., np.ndarray] = _from_decomposition
    """Left out only with a `decompose`: the reference then runs the decomposition."""
    attrs: tuple[AttrSpec, ...] = ()
    min_inputs: int = 1
    max_inputs: int | None = 1
    """None: any number of tensor inputs (concat)."""
    param_names: Callable[[Attrs], tuple[str, ...]] = _no_params
    params: Callable[[Attrs, Sequence[TensorType]], tuple[ParamSpec, ...]] = _no_param_shapes
    flops: Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]], int] = _zero_flops
    normalize: Callable[[Attrs, Sequence[TensorType]], Attrs] = _keep_attrs
    """Turns user-level attribute forms into the canonical form the IR keeps (e.g. "same")."""
    kind: str = "elementwise"
    """What the op is, in words for docs and reports: elementwise | gemm | conv | pool |
    reduction | normalization | view | layout | fused. Backends read `role`, not this."""
    role: str = "pointwise"
    """How passes and backends treat the op: a key of `ROLES`."""
    summary: str = ""
    doc: OpDoc = OpDoc()
    """Its row of `docs/ops.md` beyond the summary and attributes (see `OpDoc`)."""
    expression: CudaExpression | None = None
    """A pointwise op's CUDA expression (its whole CUDA lowering)."""
    gemm_view: Callable[[Attrs, Sequence[Shape], Shape], GemmView] | None = None
    """For roles gemm and conv: the op's GEMM, from all IR input shapes and the output's."""
    reduced_axis: Callable[[Attrs, int], int] | None = None
    """For role row_reduction: the axis a row runs along, from the attributes and the rank."""
    onnx: OnnxForm | None = None
    decompose: Decomposition | None = None
    vjp: Callable[..., Any] | None = None
    """The vector-Jacobian product (`netc.autodiff`; convention in the module doc)."""
    internal: bool = False
    """Made by passes only, never written in `.net` source (`fused`)."""
    infer_extra: Callable[[Attrs, Sequence[TensorType]], tuple[TensorType, ...]] | None = None
    """For an op with several outputs: the types of outputs 1, 2, ... from the tensor inputs'
    types (`infer` gives output 0's). None for an op of one output, as every op is today."""
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    """The dtypes its tensor inputs may have (`netc.ops.apply.apply_op` refuses others with a
    `DtypeError` naming them); an op that takes integers or booleans lists them."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"op {self.name!r}: unknown role {self.role!r}")
        if (self.role == "view") != (self.kind == "view"):
            raise ValueError(f"op {self.name!r}: a view has kind and role `view`")
        if self.reference is _from_decomposition:
            if self.decompose is None:
                raise ValueError(f"op {self.name!r} needs a reference or a decomposition")
            # Frozen: set once, here, from the decomposition.
            object.__setattr__(self, "reference", _decomposition_reference(self))

    def attr(self, name: str) -> AttrSpec | None:
        return next((spec for spec in self.attrs if spec.name == name), None)

    @property
    def has_params(self) -> bool:
        return self.param_names is not _no_params

    @property
    def is_view(self) -> bool:
        return self.role == "view"

    @property
    def is_pointwise(self) -> bool:
        """Role `pointwise` and computable as pointwise code: by its CUDA expression, or by
        a decomposition (into pointwise ops) that the code generator inlines."""
        return self.role == "pointwise" and (self.expression is not None or
                                             self.decompose is not None)

    def infer_all(self, attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        """The output type from all IR inputs (tensor inputs followed by parameters)."""
        count = len(self.param_names(attrs))
        tensors = list(inputs[: len(inputs) - count]) if count else list(inputs)
        return self.infer(attrs, tensors)

    def infer_types_all(self, attrs: Attrs,
                        inputs: Sequence[TensorType]) -> tuple[TensorType, ...]:
        """Every output's type from all IR inputs, output 0 first (`Node.types`)."""
        first = self.infer_all(attrs, inputs)
        if self.infer_extra is None:
            return (first,)
        count = len(self.param_names(attrs))
        tensors = list(inputs[: len(inputs) - count]) if count else list(inputs)
        return (first, *self.infer_extra(attrs, tensors))

    def bytes_moved(self, attrs: Attrs, inputs: Sequence[TensorType], output: TensorType,
                    sizes: Mapping[str, int] | None = None) -> int:
        """Bytes read and written when each input is read once and the output written once."""
        total = output.numel(sizes) * DTYPE_BYTES[output.dtype]
        for tensor in inputs:
            total += tensor.numel(sizes) * DTYPE_BYTES[tensor.dtype]
        return 0 if self.is_view else total


def _decomposition_reference(opdef: OpDef) -> Callable[..., np.ndarray]:
    def reference(attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
        from netc.ops.decompose import evaluate_decomposition  # it applies registered ops

        return evaluate_decomposition(opdef, attrs, arrays)
    return reference


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in REGISTRY:
        raise ValueError(f"op {opdef.name!r} registered twice")
    REGISTRY[opdef.name] = opdef
    return opdef


@contextmanager
def temporarily_registered(*opdefs: OpDef) -> Iterator[tuple[OpDef, ...]]:
    """Registers `opdefs` for the duration of a `with` block (tests, experiments), then removes
    them, whatever happens inside. Backends find ops through the registry at each use, so
    nothing else needs undoing."""
    added: list[OpDef] = []
    try:
        for opdef in opdefs:
            added.append(register(opdef))
        yield tuple(added)
    finally:
        for opdef in added:
            if REGISTRY.get(opdef.name) is opdef:
                del REGISTRY[opdef.name]


T = TypeVar("T")


class OpTable(Generic[T]):
    """One backend's registrations keyed by op (the CUDA lowerings, the ONNX exporter's
    rules): every key is a registered op, registered once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.entries: dict[str, T] = {}

    def add(self, ops: Sequence[str], value: T) -> None:
        for op in ops:
            if op not in REGISTRY:
                raise ValueError(f"a {self.what} for `{op}`, which is no registered op")
            if op in self.entries:
                raise ValueError(f"`{op}` has two {self.what}s")
            self.entries[op] = value

    def get(self, op: str) -> T | None:
        return self.entries.get(op)


class RegistryView(Mapping[str, T]):
    """Every registered op for which `find(op)` gives something -> that, read from the
    registry at each use (so an op registered later is in it, and one removed is not)."""

    def __init__(self, find: Callable[[str], T | None]) -> None:
        self.find = find

    def __getitem__(self, op: str) -> T:
        found = self.find(op)
        if found is None:
            raise KeyError(op)
        return found

    def __iter__(self) -> Iterator[str]:
        return (op for op in list(REGISTRY) if self.find(op) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def node_flops(node: Node, input_types: Sequence[TensorType], sizes: Mapping[str, int]) -> int:
    opdef = REGISTRY[node.op]
    shapes = [t.concrete(sizes) for t in input_types]
    return opdef.flops(node.attrs, shapes, node.type.concrete(sizes))


# Helpers shared by the op definitions ---------------------------------------------------


def same_dtype(op: str, inputs: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) > 1:
        shown = ", ".join(str(t) for t in inputs)
        raise ShapeError(f"`{op}` needs inputs of one dtype, got {shown}")
    return inputs[0].dtype


def require_rank(op: str, tensor: TensorType, minimum: int, maximum: int | None = None,
                 what: str = "input") -> None:
    rank = tensor.rank
    if rank < minimum or (maximum is not None and rank > maximum):
        wanted = f"rank {minimum}" if maximum == minimum else (
            f"rank {minimum} or more" if maximum is None else f"rank {minimum} to {maximum}")
        raise ShapeError(f"`{op}` expects a {what} of {wanted}, got {format_shape(tensor.shape)}")


def same_type(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    """The shape rule of ops whose output is typed like their (first) input."""
    return inputs[0]


def per_element_flops(count: int) -> Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]],
                                             int]:
    """A FLOP rule charging `count` operations for every output element."""
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return count * math.prod(output)
    return flops


def int_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """An `int_pair` attribute in either user form (3 or [3, 5]) as a pair."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def resolve_axis(op: str, axis: int, tensor: TensorType) -> int:
    """`axis` (negative counts from the end, as in PyTorch) as an index into `tensor`'s shape."""
    if not -tensor.rank <= axis < tensor.rank:
        raise ShapeError(f"`{op}` axis {axis} is out of range for {format_shape(tensor.shape)} "
                         f"(rank {tensor.rank})")
    return axis % tensor.rank


def require_batch_first(op: str, shape: tuple[Dim, ...], *inputs: TensorType) -> None:
    """A named dimension may stand anywhere (language v2), but an op's result may only have
    named dimensions its inputs have: a shape rule must never invent a run-time size."""
    known = {d for t in inputs for d in t.symbolic}
    invented = [d for d in shape if isinstance(d, str) and d not in known]
    if invented:
        shown = " and ".join(format_shape(t.shape) for t in inputs)
        raise ShapeError(f"`{op}` on {shown} would give {format_shape(shape)}, with the named "
                         f"dimension {invented[0]} that no input has")


def broadcast_shapes(op: str, first: TensorType, second: TensorType,
                     first_dims: tuple[Dim, ...] | None = None,
                     second_dims: tuple[Dim, ...] | None = None) -> tuple[Dim, ...]:
    """NumPy broadcasting of two shapes (by default the tensors' whole shapes).

    A named dimension broadcasts with itself or with 1; against any other size it is an error,
    since the size is unknown until run time. Errors show both tensors' full shapes.
    """
    left = first.shape if first_dims is None else first_dims
    right = second.shape if second_dims is None else second_dims
    width = max(len(left), len(right))
    padded_left = (1,) * (width - len(left)) + tuple(left)
    padded_right = (1,) * (width - len(right)) + tuple(right)
    result: list[Dim] = []
    for a, b in zip(padded_left, padded_right):
        if a == b or b == 1:
            result.append(a)
        elif a == 1:
            result.append(b)
        else:
            shown = f"{format_shape(first.shape)} and {format_shape(second.shape)}"
            named = a if isinstance(a, str) else b if isinstance(b, str) else None
            why = (f": the named dimension {named} broadcasts only with itself or 1, not with "
                   f"{b if named == a else a}") if named is not None else f": {a} against {b}"
            raise ShapeError(f"`{op}` cannot broadcast {shown}{why}")
    shape = tuple(result)
    require_batch_first(op, shape, first, second)
    return shape

