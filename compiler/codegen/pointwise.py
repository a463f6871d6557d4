"""Pointwise code: chains of elementwise ops as CUDA statements, generated from the IR.

Every pointwise computation netc emits goes through here: a single activation or arithmetic op,
an inference batchnorm, a fused group of them (`fused` kind `elementwise`), the epilogue of a
GEMM, conv or pool kernel, and the prologue and epilogue of a row-wise reduction. Each becomes a
*functor* (`templates/pointwise.jinja`): `operator()(float value, long long index)` computes
the chain for output element `index`, where `value` is what the host kernel computed there (the
anchor's result, for an epilogue; unused otherwise). Values are float for the float dtypes and
int, long long or bool for i32, i64 and bool (exact); a load whose dtype is not the functor's
(a comparison's operands, a `where`'s condition, a `cast`'s input) says so in `load_ctypes`.

The expressions are the ops' own (`OpDef.expression`, plain data in the registry: a pointwise op
needs nothing here), filled in with netc-made variable names: x0, x1, ... (inputs loaded at
`index`), p0, p1, ... (float arguments: scalar `constant` nodes and attributes such as
leaky_relu's alpha or batchnorm's eps), v0, v1, ... (earlier members), `value`; an `i32` /
`i64` constant is an integer literal instead (`integer_literal`: exact, where a float argument
rounds beyond 2^24). No user text reaches them.

A functor's *code* (statements, counts of loads and floats, rank) is part of the kernel's
specialisation and names it; its *arguments* (input buffers, the merged dims' sizes and each
input's strides, the float values) are run-time kernel arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netc.codegen.layout import broadcast_strides, coalesce, contiguous_strides
from netc.dtypes import round_scalar
from netc.ir import INTEGER_DTYPES, Dim, Node, Region
from netc.ops import REGISTRY, CudaExpression
from netc.ops.decompose import decomposition_nodes
from netc.plan import Arg, SizeLike, size_arg

CTYPES = {"f32": "float", "f16": "netc_f16", "bf16": "netc_bf16", "i32": "int",
          "i64": "long long", "bool": "netc_bool"}
"""Storage types by IR dtype (common.cuh defines netc_f16, netc_bf16 and netc_bool)."""
_DTYPE_OF = {ctype: dtype for dtype, ctype in CTYPES.items()}


def expression(op: str) -> CudaExpression | None:
    """The CUDA expression of a pointwise op (None: `op` is not one)."""
    opdef = REGISTRY.get(op)
    return opdef.expression if opdef is not None else None


def computes(op: str) -> bool:
    """Whether a functor computes `op`: by its expression, or by inlining its decomposition."""
    opdef = REGISTRY.get(op)
    return opdef is not None and opdef.is_pointwise


def pointwise_ops() -> frozenset[str]:
    """Every registered op a functor computes."""
    return frozenset(name for name in REGISTRY if computes(name))


def __getattr__(name: str) -> frozenset[str]:
    # `POINTWISE_OPS` reads the registry when asked, so an op registered later is in it.
    if name == "POINTWISE_OPS":
        return pointwise_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PointwiseCode:
    """The specialisation of a pointwise functor: what the generated C++ depends on."""

    label: str
    """The ops, for kernel names (`relu`, `sub_st`, `add_relu`)."""
    statements: tuple[str, ...]
    result: str
    loads: int
    floats: int
    rank: int
    """Dims of the merged output view; 0: every input is read at the output's own index."""
    labelled: bool = True
    """Whether `label` and `rank` determine the code (one op, no value passed in)."""
    load_ctypes: tuple[str, ...] = ()
    """The storage type of each load, when one differs from the functor's own dtype (a
    comparison's float inputs, a `where`'s bool condition); empty: all are the functor's."""

    @property
    def tag(self) -> str:
        """The code's part of a kernel name: `label` and rank, and a digest of the statements
        when those do not determine them (chains, epilogues)."""
        # The loads' types are part of the code when they are not all the functor's own.
        loaded = "".join(_DTYPE_OF[ctype] for ctype in self.load_ctypes)
        stem = f"{self.label}_{loaded}_r{self.rank}" if loaded else f"{self.label}_r{self.rank}"
        if self.labelled:
            return stem
        text = "\n".join((*self.statements, self.result, str(self.loads), str(self.floats)))
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        return f"{stem}_{digest}"


@dataclass(frozen=True)
class Pointwise:
    """A pointwise functor of one launch: its code and its run-time arguments."""

    code: PointwiseCode
    args: tuple[Arg, ...]
    """Input buffers, sizes of merged dims 1.., each input's strides, float values."""
    same_index: tuple[bool, ...] = ()
    """Per input buffer (the first `code.loads` args): whether it is read only at the index of
    the output element computed, so that an elementwise kernel may write over it."""

    @property
    def own_index_buffers(self) -> tuple[str, ...]:
        """Buffers read only at the output element's own index, by every load of them."""
        loaded = [arg.buffer for arg in self.args[:self.code.loads]]
        other = {b for b, same in zip(loaded, self.same_index) if not same}
        return tuple(dict.fromkeys(b for b, same in zip(loaded, self.same_index)
                                   if same and b is not None and b not in other))


IDENTITY = Pointwise(PointwiseCode("identity", (), "value", 0, 0, 0), ())
"""The epilogue that stores what the kernel computed."""


def _label(body: Sequence[Node], operand_kinds: Sequence[str]) -> str:
    # A binary op's code depends on which operands are scalar constants (float arguments), an
    # op of a varying number of operands (a comparison with a tensor or a number) on how many.
    opdef = REGISTRY[body[0].op] if len(body) == 1 else None
    if opdef is not None and (opdef.min_inputs >= 2 or opdef.max_inputs != opdef.min_inputs):
        return f"{body[0].op}_{''.join(operand_kinds)}"
    ops = [node.op for node in body]
    return "_".join(ops[:3] + (["etc"] if len(ops) > 3 else []))


def build(body: Sequence[Node], inputs: Sequence[Node], buffer: Callable[[str], str],
          out_shape: tuple[Dim, ...], seed: str | None = None) -> Pointwise:
    """The functor computing `body` (pointwise nodes in order; the last is the result) for
    each element of `out_shape`.

    A body node's inputs name earlier body nodes, `seed` (the value the host kernel passes in),
    or a region argument (`Region.argument(k)`): `inputs[k]`, which is read from `buffer(inputs[k].id)` broadcast to `out_shape`
    (a scalar `constant` becomes a float argument instead). The [C] parameters of an op whose
    expression has `channel_params` (batchnorm) repeat along every dim but dim 1. An op with a
    decomposition instead of an expression is computed by its decomposition's statements.
    """
    expanded = _inline_decompositions(body, inputs, seed)
    names: dict[str, str] = {} if seed is None else {seed: "value"}
    loads: dict[tuple[int, str], str] = {}
    load_strides: list[tuple[SizeLike, ...]] = []
    load_buffers: list[str] = []
    load_dtypes: list[str] = []
    floats: list[float] = []
    statements: list[str] = []
    kinds: list[str] = []
    literals: list[str] = []

    def number(constant: Node) -> str:
        """A scalar constant: an integer one as a literal of its type (exact: a float kernel
        argument would round i64 values beyond 2^24), a float one as a float argument,
        rounded to the dtype as the reference rounds it (70000.0 in f16 is inf)."""
        literal = integer_literal(constant.type.dtype, float(constant.attrs["value"]))
        if literal is not None:
            literals.append(literal)
            return literal
        floats.append(round_scalar(constant.type.dtype, float(constant.attrs["value"])))
        return f"p{len(floats) - 1}"

    def operand(ref: str, as_channel: bool) -> str:
        if ref in names:
            kinds.append("t")
            return names[ref]
        position = Region.argument_position(ref)
        if position is None:
            raise ValueError(f"pointwise operand {ref!r} is neither a body node nor an input")
        source = inputs[position]
        if source.op == "constant":
            kinds.append("s")
            return number(source)
        kinds.append("t")
        key = (position, "channel" if as_channel else "broadcast")
        if key not in loads:
            loads[key] = f"x{len(loads)}"
            load_buffers.append(buffer(source.id))
            load_dtypes.append(source.type.dtype)
            load_strides.append(_channel_strides(out_shape) if as_channel
                                else broadcast_strides(source.type.shape, out_shape))
        return loads[key]

    for index, node in enumerate(expanded):
        if node.op == "constant":  # from a decomposition: like any constant
            names[node.id] = number(node)
            continue
        code = expression(node.op)
        if code is None:
            raise ValueError(f"{node.id}: `{node.op}` is not a pointwise op")
        tensors = len(node.inputs) - len(REGISTRY[node.op].param_names(node.attrs))
        operands = [operand(ref, code.channel_params and position >= tensors)
                    for position, ref in enumerate(node.inputs)]
        for attr in code.floats:
            if node.attrs[attr] is None:  # an optional operand given as a tensor instead
                continue
            floats.append(float(node.attrs[attr]))
            operands.append(f"p{len(floats) - 1}")
        names[node.id] = f"v{index}"
        statements.append(f"const auto v{index} = {code.text.format(*operands)};")

    view = coalesce(out_shape, load_strides)
    rank = 0 if view.contiguous else view.rank
    args: list[Arg] = [Arg("buffer", buffer=name) for name in load_buffers]
    if rank:
        args += [size_arg(size) for size in view.sizes[1:]]
        args += [size_arg(stride) for strides in view.strides for stride in strides]
    args += [Arg("float", value=value) for value in floats]
    own = body[-1].type.dtype
    code = PointwiseCode(_label(body, kinds), tuple(statements), names[body[-1].id],
                         len(load_buffers), len(floats), rank,
                         labelled=len(expanded) == 1 and seed is None and not literals,
                         load_ctypes=tuple(CTYPES[d] for d in load_dtypes)
                         if any(d != own for d in load_dtypes) else ())
    return Pointwise(code, tuple(args), _same_index(out_shape, load_strides))


def integer_literal(dtype: str, value: float) -> str | None:
    """`value` as a C++ literal of an `i32` / `i64` constant's type (None for other dtypes):
    `int` and `long long` (the smallest value written as a difference, which C++ needs)."""
    if dtype not in INTEGER_DTYPES:
        return None
    number = int(value)
    suffix = "LL" if dtype == "i64" else ""
    if number < 0:
        return f"({number + 1}{suffix} - 1{suffix})"
    return f"{number}{suffix}"


def _inline_decompositions(body: Sequence[Node], inputs: Sequence[Node],
                           seed: str | None) -> list[Node]:
    """`body` with every member computed by its decomposition (no expression) replaced by the
    decomposition's nodes, recursively; they read the member's own operands."""
    types = {Region.argument(position): node.type for position, node in enumerate(inputs)}
    taken = {node.id for node in body}
    if seed is not None:
        types[seed] = body[-1].type  # every member of a group has the anchor's type
    expanded: list[Node] = []
    pending = list(body)
    while pending:
        node = pending.pop(0)
        opdef = REGISTRY.get(node.op)
        if node.op != "constant" and expression(node.op) is None and \
                opdef is not None and opdef.is_pointwise:
            inner = decomposition_nodes(node, [types[ref] for ref in node.inputs],
                                        taken | set(types))
            taken.update(n.id for n in inner)
            pending[:0] = inner
            continue
        expanded.append(node)
        types[node.id] = node.type
    return expanded


def _same_index(out_shape: tuple[Dim, ...],
                strides: Sequence[Sequence[SizeLike]]) -> tuple[bool, ...]:
    """For each load, whether its strides are the contiguous output's own."""
    own = tuple(contiguous_strides(out_shape))
    return tuple(tuple(s) == own for s in strides)


def gather(out_shape: tuple[Dim, ...], buffer: str,
           strides: Sequence[SizeLike]) -> Pointwise:
    """The functor reading `buffer` through `strides` (a transpose, a broadcast expansion)."""
    view = coalesce(out_shape, [strides])
    rank = 0 if view.contiguous else view.rank
    args: list[Arg] = [Arg("buffer", buffer=buffer)]
    if rank:
        args += [size_arg(size) for size in view.sizes[1:]]
        args += [size_arg(stride) for stride in view.strides[0]]
    return Pointwise(PointwiseCode("copy", (), "x0", 1, 0, rank), tuple(args),
                     _same_index(out_shape, [strides]))


def fill(value: float, dtype: str = "f32") -> Pointwise:
    """The functor giving `value` everywhere (a constant some kernel reads from memory): a
    float argument, or for an integer dtype a literal (exact beyond 2^24)."""
    literal = integer_literal(dtype, value)
    if literal is not None:
        return Pointwise(PointwiseCode("fill", (), literal, 0, 0, 0, labelled=False), ())
    return Pointwise(PointwiseCode("fill", (), "p0", 0, 1, 0), (Arg("float", value=value),))


def _channel_strides(out_shape: tuple[Dim, ...]) -> tuple[int, ...]:
    """A [C] tensor repeated along every dim of [N, C, ...] but dim 1."""
    return tuple(1 if axis == 1 else 0 for axis in range(len(out_shape)))
