"""Kernel families and the one table that lowers each IR op to kernel launches.

A *family* is a `.cuh` header (the kernel's logic) and a thin `.jinja` entry point. A
`KernelSpec` is one specialisation of a family: its name spells out every specialisation
parameter (dtype, tiles, flags), so two launches with the same name share one kernel, and a
name never comes from user text. A `KernelLaunch` is a spec with the launch geometry and
arguments of one IR node.

`LOWERINGS` maps every non-view op of the registry to the function that lowers it; views
(reshape, flatten, dropout: `OpDef.kind == "view"`) launch nothing, they alias their input's
buffer. Kernel arguments follow one rule: pointers first (inputs, then output, in the entry
point's order), then the run-time batch, then sizes, a size that may grow with the batch as
the pair (per_batch, fixed), then float constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from netc.codegen.layout import BatchLinear, broadcast_strides, coalesce, contiguous_strides
from netc.codegen.plan import Arg, GridDim
from netc.codegen.render import render
from netc.codegen.tiles import (
    DEFAULT_BLOCK,
    DEFAULT_GEMM,
    BlockTile,
    GemmTile,
    RowTile,
    Tile,
    default_row_tile,
)
from netc.ir import Dim, Graph, Node
from netc.ops.windows import Window

CTYPES = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}
MAX_GRID_YZ = 65535


class CodegenError(Exception):
    """A graph that this code generator cannot lower (always a limit of netc, named in words)."""


# Kernel specialisations --------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    name: str
    template: str
    headers: tuple[str, ...]
    """The `.cuh` files the kernel needs, in the order they must appear."""
    dtype: str
    threads: int
    context: tuple[tuple[str, Any], ...] = ()
    """Template variables besides name, ctype and threads."""

    def render(self) -> str:
        return render(self.template, name=self.name, ctype=CTYPES[self.dtype],
                      threads=self.threads, **dict(self.context))


def gemm_kernel(dtype: str, tile: GemmTile, *, b_transposed: bool, has_bias: bool) -> KernelSpec:
    tile.validate()
    layout = "nt" if b_transposed else "nn"
    return KernelSpec(
        f"netc_gemm_{dtype}_{tile.suffix}_{layout}{'_bias' if has_bias else ''}",
        "gemm.jinja", ("gemm.cuh",), dtype, tile.threads,
        (("tile", tile), ("b_transposed", b_transposed), ("has_bias", has_bias)))


def conv2d_kernel(dtype: str, tile: GemmTile, *, has_bias: bool) -> KernelSpec:
    tile.validate()
    return KernelSpec(
        f"netc_conv2d_{dtype}_{tile.suffix}{'_bias' if has_bias else ''}",
        "conv2d.jinja", ("gemm.cuh", "conv2d.cuh"), dtype, tile.threads,
        (("tile", tile), ("has_bias", has_bias)))


def pool_kernel(dtype: str, tile: BlockTile, *, is_max: bool) -> KernelSpec:
    tile.validate()
    kind = "maxpool2d" if is_max else "avgpool2d"
    return KernelSpec(f"netc_{kind}_{dtype}_{tile.suffix}", "pool.jinja", ("pool.cuh",), dtype,
                      tile.threads, (("is_max", is_max),))


ROW_OPERATIONS = ("softmax", "log_softmax", "layernorm", "mean")


def row_kernel(operation: str, dtype: str, tile: RowTile) -> KernelSpec:
    if operation not in ROW_OPERATIONS:
        raise ValueError(f"unknown row operation {operation!r}")
    tile.validate()
    return KernelSpec(f"netc_{operation}_{dtype}_{tile.suffix}", "rowwise.jinja",
                      ("rowwise.cuh",), dtype, tile.threads,
                      (("operation", operation), ("tile", tile)))


def concat_kernel(dtype: str, tile: BlockTile) -> KernelSpec:
    tile.validate()
    return KernelSpec(f"netc_concat_{dtype}_{tile.suffix}", "concat.jinja", ("concat.cuh",),
                      dtype, tile.threads)


@dataclass(frozen=True)
class Elementwise:
    """f of an elementwise kernel: a float expression of inputs x0, x1, ... and float
    arguments p0, p1, ... `key` names it in kernel names and determines `expression`."""

    key: str
    expression: str
    inputs: int
    params: int


def elementwise_kernel(function: Elementwise, dtype: str, rank: int,
                       tile: BlockTile) -> KernelSpec:
    tile.validate()
    return KernelSpec(
        f"netc_ew_{function.key}_{dtype}_r{rank}_{tile.suffix}", "elementwise.jinja",
        ("elementwise.cuh",), dtype, tile.threads,
        (("expression", function.expression), ("inputs", function.inputs),
         ("params", function.params), ("rank", rank)))


# The elementwise functions, generated from the IR op (never from user text). ------------------

ACTIVATIONS: dict[str, Elementwise] = {
    "relu": Elementwise("relu", "fmaxf(x0, 0.0f)", 1, 0),
    "sigmoid": Elementwise("sigmoid", "1.0f / (1.0f + expf(-x0))", 1, 0),
    "tanh": Elementwise("tanh", "tanhf(x0)", 1, 0),
    "gelu": Elementwise("gelu", "0.5f * x0 * (1.0f + erff(x0 * 0.70710678118654752f))", 1, 0),
    "silu": Elementwise("silu", "x0 / (1.0f + expf(-x0))", 1, 0),
    "leaky_relu": Elementwise("leaky_relu", "(x0 >= 0.0f ? x0 : x0 * p0)", 1, 1),
}
ACTIVATION_ATTRS: dict[str, tuple[str, ...]] = {"leaky_relu": ("alpha",)}
"""The attributes an activation passes as p0, p1, ..."""

BINARY_OPERATORS = {"add": "+", "sub": "-", "mul": "*"}

# Inputs: x, weight, bias, running_mean, running_var (the IR's order); p0 = eps.
BATCHNORM = Elementwise("batchnorm", "(x0 - x3) * rsqrtf(x4 + p0) * x1 + x2", 5, 1)
COPY = Elementwise("copy", "x0", 1, 0)
FILL = Elementwise("fill", "p0", 0, 1)


def binary(op: str, operands: str) -> Elementwise:
    """`a op b` where `operands` says, for a and b in turn, whether it is a tensor ("t", read
    as the next x) or a scalar constant ("s", the next p)."""
    names = []
    counts = {"t": 0, "s": 0}
    for kind in operands:
        names.append(("x" if kind == "t" else "p") + str(counts[kind]))
        counts[kind] += 1
    return Elementwise(f"{op}_{operands}", f"{names[0]} {BINARY_OPERATORS[op]} {names[1]}",
                       counts["t"], counts["s"])


# Lowering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLaunch:
    kernel: KernelSpec
    grid: tuple[GridDim, GridDim, GridDim]
    block: int
    shared_bytes: int
    args: tuple[Arg, ...]


TileT = TypeVar("TileT", GemmTile, RowTile, BlockTile)


class LoweringContext(Protocol):
    """What a lowering function may ask of the code generator."""

    graph: Graph

    def buffer(self, node_id: str) -> str:
        """The buffer holding the value of node `node_id`."""
        ...

    def scratch(self, owner: Node, shape: tuple[Dim, ...]) -> str:
        """A new intermediate buffer of `owner`'s dtype, for a value inside its lowering."""
        ...

    def tile(self, node: Node, default: TileT) -> TileT:
        """The tile configuration chosen for `node`, or `default`."""
        ...



Lowering = Callable[[LoweringContext, Node], list[KernelLaunch]]
ONE = GridDim(0, 1, 1)
BATCH = Arg("batch")


def _buffer(name: str) -> Arg:
    return Arg("buffer", buffer=name)


def _ints(*values: int) -> tuple[Arg, ...]:
    return tuple(Arg("int", value=int(v)) for v in values)


def _fixed_grid(count: int, what: str) -> GridDim:
    if count > MAX_GRID_YZ:
        raise CodegenError(f"{count} blocks along grid y or z for {what}; CUDA allows "
                           f"{MAX_GRID_YZ}")
    return GridDim(0, count, 1)


def elementwise_launch(node: Node, function: Elementwise, tile: BlockTile, out: str,
                       out_shape: tuple[Dim, ...], inputs: Sequence[tuple[str, Sequence[int]]],
                       params: Sequence[float]) -> KernelLaunch:
    """out[i] = function(inputs read through their strides over `out_shape`, params)."""
    assert len(inputs) == function.inputs and len(params) == function.params
    view = coalesce(out_shape, [strides for _, strides in inputs])
    rank = 0 if view.contiguous else view.rank
    total = BatchLinear.of(out_shape)
    args: list[Arg] = [_buffer(out), *(_buffer(name) for name, _ in inputs), BATCH,
                       *total.args()]
    if rank:
        args += _ints(*(size or 0 for size in view.sizes[1:]))
        args += _ints(*(stride for strides in view.strides for stride in strides))
    args += [Arg("float", value=float(p)) for p in params]
    return KernelLaunch(elementwise_kernel(function, node.type.dtype, rank, tile),
                        (total.grid(tile.threads), ONE, ONE), tile.threads, 0, tuple(args))


def _lower_activation(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    shape = node.type.shape
    (x,) = node.inputs
    params = [float(node.attrs[name]) for name in ACTIVATION_ATTRS.get(node.op, ())]
    return [elementwise_launch(node, ACTIVATIONS[node.op], ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), shape,
                               [(ctx.buffer(x), contiguous_strides(shape))], params)]


def _lower_binary(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    out_shape = node.type.shape
    operands = ""
    tensors: list[tuple[str, Sequence[int]]] = []
    scalars: list[float] = []
    for input_id in node.inputs:
        source = ctx.graph[input_id]
        if source.op == "constant":
            operands += "s"
            scalars.append(float(source.attrs["value"]))
        else:
            operands += "t"
            tensors.append((ctx.buffer(input_id),
                            broadcast_strides(source.type.shape, out_shape)))
    return [elementwise_launch(node, binary(node.op, operands), ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), out_shape, tensors, scalars)]


def _lower_batchnorm(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    shape = node.type.shape
    channels = shape[1]
    # Viewed as [N, C, rest]: x is contiguous, the four [C] parameters repeat over N and rest.
    rest = math.prod(int(d) for d in shape[2:])
    view = (shape[0], channels, rest)
    x_strides = contiguous_strides(view)
    inputs = [(ctx.buffer(node.inputs[0]), x_strides)]
    inputs += [(ctx.buffer(param), (0, 1, 0)) for param in node.inputs[1:]]
    return [elementwise_launch(node, BATCHNORM, ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), view, inputs, [node.attrs["eps"]])]


def _lower_transpose(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    (x,) = node.inputs
    in_strides = contiguous_strides(ctx.graph[x].type.shape)
    strides = [in_strides[axis] for axis in node.attrs["perm"]]
    return [elementwise_launch(node, COPY, ctx.tile(node, DEFAULT_BLOCK), ctx.buffer(node.id),
                               node.type.shape, [(ctx.buffer(x), strides)], [])]


def fill_constant(node: Node, out: str) -> KernelLaunch:
    """Writes a scalar `constant` node into a buffer, for a consumer that reads memory (the
    arithmetic ops take constants as kernel arguments instead)."""
    return elementwise_launch(node, FILL, DEFAULT_BLOCK, out, node.type.shape, [],
                              [node.attrs["value"]])


def _gemm_launch(ctx: LoweringContext, node: Node, *, a: str, b: str, bias: str | None,
                 m: BatchLinear, n: int, k: BatchLinear, count: BatchLinear, inner_count: int,
                 a_strides: tuple[int, int], b_strides: tuple[int, int],
                 b_transposed: bool) -> KernelLaunch:
    """C [count, M, N] = A [.., M, K] . B [.., K, N] (or B^T for a [N, K] B) (+ bias[n]).

    The matrices are counted outer * inner_count + inner; *_strides are each operand's
    (outer, inner) strides in elements."""
    tile = ctx.tile(node, DEFAULT_GEMM)
    if m.batched and count != BatchLinear(0, 1):
        raise CodegenError(f"{node.id}: rows and matrix count both grow with the batch")
    # One of the matrix count and the row count may grow with the batch; grid x covers both.
    grid_x = m.grid(tile.bm) if m.batched else count.times(-(-m.fixed // tile.bm)).grid()
    grid_y = _fixed_grid(-(-n // tile.bn), node.id)
    pointers = [_buffer(a), _buffer(b)] + ([_buffer(bias)] if bias else [])
    args = (*pointers, _buffer(ctx.buffer(node.id)), BATCH, *m.args(), *_ints(n), *k.args(),
            *_ints(inner_count, *a_strides, *b_strides))
    spec = gemm_kernel(node.type.dtype, tile, b_transposed=b_transposed,
                       has_bias=bias is not None)
    return KernelLaunch(spec, (grid_x, grid_y, ONE), tile.threads, tile.shared_bytes, args)


def _lower_dense(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    x, weight, *bias = node.inputs
    x_shape = ctx.graph[x].type.shape
    return [_gemm_launch(
        ctx, node, a=ctx.buffer(x), b=ctx.buffer(weight),
        bias=ctx.buffer(bias[0]) if bias else None, m=BatchLinear.of(x_shape[:-1]),
        n=node.attrs["units"], k=BatchLinear.of(x_shape[-1:]), count=BatchLinear(0, 1),
        inner_count=1, a_strides=(0, 0), b_strides=(0, 0), b_transposed=True)]


def _lower_matmul(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    launches: list[KernelLaunch] = []
    a_type, b_type = (ctx.graph[i].type for i in node.inputs)
    # NumPy's rules: a vector is a one-row (first) or one-column (second) matrix; dropping that
    # dim from the result changes nothing in memory.
    a_shape = a_type.shape if a_type.rank > 1 else (1, *a_type.shape)
    b_shape = b_type.shape if b_type.rank > 1 else (*b_type.shape, 1)
    out = node.type.shape
    batch_shape = out[:len(out) - (a_type.rank > 1) - (b_type.rank > 1)]
    operands = [(ctx.buffer(i), shape) for i, shape in zip(node.inputs, (a_shape, b_shape))]

    def batch_strides(shape: tuple[Dim, ...]) -> tuple[int, ...]:
        if len(shape) == 2:
            return (0,) * len(batch_shape)
        matrix = math.prod(int(d) for d in shape[-2:])
        return tuple(s * matrix for s in broadcast_strides(shape[:-2], batch_shape))

    view = coalesce(batch_shape, [batch_strides(shape) for _, shape in operands])
    if view.rank > 2:
        # The kernel walks two levels of batch dims; materialise the broadcast operands so
        # that the batch dims of both are contiguous and merge into one.
        for position, (buffer, shape) in enumerate(operands):
            expanded = (*batch_shape, *shape[-2:])
            if shape == expanded:
                continue
            copy = ctx.scratch(node, expanded)
            launches.append(elementwise_launch(
                node, COPY, DEFAULT_BLOCK, copy, expanded,
                [(buffer, broadcast_strides(shape, expanded))], []))
            operands[position] = (copy, expanded)
        view = coalesce(batch_shape, [batch_strides(shape) for _, shape in operands])
    inner_count = int(view.sizes[1] or 0) if view.rank == 2 else 1
    a_strides, b_strides = (
        (strides[0], strides[1] if view.rank == 2 else 0) for strides in view.strides)
    launches.append(_gemm_launch(
        ctx, node, a=operands[0][0], b=operands[1][0], bias=None, m=BatchLinear.of(a_shape[-2:-1]),
        n=int(b_shape[-1]), k=BatchLinear.of(a_shape[-1:]), count=BatchLinear.of(batch_shape),
        inner_count=inner_count, a_strides=a_strides, b_strides=b_strides, b_transposed=False))
    return launches


def _lower_conv2d(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    x, weight, *bias = node.inputs
    tile = ctx.tile(node, DEFAULT_GEMM)
    images, channels, height, width = ctx.graph[x].type.shape
    _, filters, out_height, out_width = node.type.shape
    window = Window.from_attrs("conv2d", node.attrs)
    groups = node.attrs["groups"]
    images_size = BatchLinear.of((images,))
    pixels = int(out_height) * int(out_width)
    grid = (images_size.times(pixels).grid(tile.bn),
            _fixed_grid(-(-int(filters) // groups // tile.bm), node.id),
            _fixed_grid(groups, node.id))
    pointers = [_buffer(ctx.buffer(x)), _buffer(ctx.buffer(weight))]
    pointers += [_buffer(ctx.buffer(bias[0]))] if bias else []
    args = (*pointers, _buffer(ctx.buffer(node.id)), BATCH, *images_size.args(),
            *_ints(channels, height, width, filters, out_height, out_width, *window.kernel,
                   *window.stride, window.padding[0], window.padding[1], *window.dilation,
                   groups))
    spec = conv2d_kernel(node.type.dtype, tile, has_bias=bool(bias))
    return [KernelLaunch(spec, grid, tile.threads, tile.shared_bytes, args)]


def _lower_pool(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    (x,) = node.inputs
    tile = ctx.tile(node, DEFAULT_BLOCK)
    _, channels, height, width = ctx.graph[x].type.shape
    out_height, out_width = node.type.shape[2:]
    window = Window.from_attrs(node.op, node.attrs)
    total = BatchLinear.of(node.type.shape)
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(node.id)), BATCH, *total.args(),
            *_ints(channels, height, width, out_height, out_width, *window.kernel,
                   *window.stride, window.padding[0], window.padding[1]))
    spec = pool_kernel(node.type.dtype, tile, is_max=node.op == "maxpool2d")
    return [KernelLaunch(spec, (total.grid(tile.threads), ONE, ONE), tile.threads, 0, args)]


def _row_launch(ctx: LoweringContext, node: Node, operation: str, shape: tuple[Dim, ...],
                axis: int, extra_inputs: Sequence[str] = (),
                params: Sequence[float] = ()) -> KernelLaunch:
    """Reduces the first input, viewed as `shape`, along `axis`: one row per position of the
    other dims."""
    length = BatchLinear.of(shape[axis:axis + 1])
    rows = BatchLinear.of(shape[:axis] + shape[axis + 1:])
    inner = math.prod(int(d) for d in shape[axis + 1:])
    # A row as long as the batch is taken as long.
    tile = ctx.tile(node, default_row_tile(1 << 30 if length.batched else length.fixed))
    pointers = [_buffer(ctx.buffer(i)) for i in (node.inputs[0], *extra_inputs)]
    args = (*pointers, _buffer(ctx.buffer(node.id)), BATCH, *rows.args(), *length.args(),
            *_ints(inner), *(Arg("float", value=float(p)) for p in params))
    spec = row_kernel(operation, node.type.dtype, tile)
    return KernelLaunch(spec, (rows.grid(tile.rows_per_block), ONE, ONE), tile.threads,
                        tile.shared_bytes, args)


def _lower_softmax(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    return [_row_launch(ctx, node, node.op, node.type.shape, node.attrs["axis"])]


def _lower_layernorm(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    _, weight, bias = node.inputs
    return [_row_launch(ctx, node, "layernorm", node.type.shape, node.type.rank - 1,
                        (weight, bias), (node.attrs["eps"],))]


def _lower_global_avgpool(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    # A row is one channel of one image: [N, C, H, W] viewed as [N, C, H * W].
    images, channels, height, width = ctx.graph[node.inputs[0]].type.shape
    return [_row_launch(ctx, node, "mean", (images, channels, int(height) * int(width)), 2)]


def _lower_concat(ctx: LoweringContext, node: Node) -> list[KernelLaunch]:
    axis = node.attrs["axis"]
    tile = ctx.tile(node, DEFAULT_BLOCK)
    out_shape = node.type.shape
    inner = math.prod(int(d) for d in out_shape[axis + 1:])
    pitch = int(out_shape[axis]) * inner
    launches = []
    offset = 0
    for input_id in node.inputs:
        shape = ctx.graph[input_id].type.shape
        total = BatchLinear.of(shape)
        chunk = int(shape[axis]) * inner
        args = (_buffer(ctx.buffer(input_id)), _buffer(ctx.buffer(node.id)), BATCH,
                *total.args(), *_ints(chunk, pitch, offset))
        launches.append(KernelLaunch(concat_kernel(node.type.dtype, tile),
                                     (total.grid(tile.threads), ONE, ONE), tile.threads, 0,
                                     args))
        offset += chunk
    return launches


LOWERINGS: dict[str, Lowering] = {
    "dense": _lower_dense,
    "matmul": _lower_matmul,
    "conv2d": _lower_conv2d,
    "maxpool2d": _lower_pool,
    "avgpool2d": _lower_pool,
    "global_avgpool": _lower_global_avgpool,
    "softmax": _lower_softmax,
    "log_softmax": _lower_softmax,
    "layernorm": _lower_layernorm,
    "batchnorm": _lower_batchnorm,
    **dict.fromkeys(ACTIVATIONS, _lower_activation),
    **dict.fromkeys(BINARY_OPERATORS, _lower_binary),
    "transpose": _lower_transpose,
    "concat": _lower_concat,
}
"""Every op that computes (all but views) -> the function that lowers one node of it."""


def tile_kind(op: str) -> type[Tile]:
    """The tile configuration type an op's kernels take (for validating overrides)."""
    if op in ("dense", "matmul", "conv2d"):
        return GemmTile
    if op in ("softmax", "log_softmax", "layernorm", "global_avgpool"):
        return RowTile
    return BlockTile
