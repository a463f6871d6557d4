"""Kernel families, and how each IR op is lowered to kernel launches.

A *family* is a `.cuh` header (the kernel's logic) and a thin `.jinja` entry point. A
`KernelSpec` is one specialisation of a family: its name spells out every specialisation
parameter (dtype, tiles, flags, the code of fused pointwise functors), so two launches with the
same name share one kernel, and a name never comes from user text. A `KernelLaunch` is a spec
with the launch geometry and arguments of one IR node.

An op is lowered by the function registered for it with `@lowers(op, ..., family=, tile=)`
beside that function (its kernel family and the tile configuration type the family takes), or,
for a pointwise op, by its own CUDA expression (`OpDef.expression`) or its decomposition into
pointwise ops, inlined (the elementwise family; no registration needed). `kernel_family(op)` finds either; `LOWERINGS` is the same as a mapping.
A lowering gets the node and the pointwise ops fused around it (`Fusion`: a prologue computing
a reduction's input, an epilogue applied to every result). GEMM-shaped ops take M, N, K and
the matrix count from the op's `gemm_view`, as the tile heuristic does. Views (`OpDef.role ==
"view"`) launch nothing; they alias their input's buffer. A `fused` node lowers its anchor
with the rest of its body as prologue and epilogue, or, for a group of pointwise ops, as one
elementwise kernel.

Kernel arguments follow one rule: pointers of the family's own data first, then sizes (64-bit;
one that depends on a named dimension is a `Size`, evaluated at launch) and float attributes,
then the arguments of the pointwise functors (prologue, then epilogue).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from netc.codegen import pointwise
from netc.codegen.layout import StridedView, broadcast_strides, coalesce, contiguous_strides
from netc.codegen.pointwise import CTYPES, IDENTITY, Pointwise, PointwiseCode
from netc.codegen.render import render
from netc.codegen.tiles import (
    DEFAULT_BLOCK,
    DEFAULT_GEMM,
    DEFAULT_MMA,
    BlockTile,
    DepthwiseTile,
    GemmTile,
    GemvTile,
    MatrixTile,
    MmaTile,
    RowTile,
    Tf32Tile,
    Tile,
    default_depthwise_tile,
    default_row_tile,
)
from netc.ir import Attrs, Dim, Graph, Node, Region, TensorType
from netc.ops import REGISTRY, GemmView
from netc.ops.attention import scale_of
from netc.ops.convolution import as_conv2d, height_one
from netc.ops.pooling import GRAD_MODES
from netc.ops.registry import OpTable, RegistryView
from netc.ops.spatial import pad_widths, source_ratio
from netc.ops.windows import Window
from netc.plan import Arg, GridDim, SizeLike, exact_div, size_arg, size_of

MAX_GRID_YZ = 65535


class CodegenError(Exception):
    """A graph that this code generator cannot lower (always a limit of netc, named in words)."""


class CodegenLimit(CodegenError):
    """A limit of CUDA that a valid network can exceed (a grid dimension): the user's to know
    about, not a bug; `netc.codegen.emit.lower` reports it as E0450 at the node's line."""


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


def _fused_suffix(prologue: PointwiseCode | None, epilogue: PointwiseCode) -> str:
    suffix = f"_pro_{prologue.tag}" if prologue is not None else ""
    return suffix + (f"_ep_{epilogue.tag}" if epilogue != IDENTITY.code else "")


TENSOR_CORE_DTYPES = ("f16", "bf16")
"""The dtypes whose GEMMs run on tensor cores (an MmaTile) unless given a SIMT tile."""


def gemm_kernel(dtype: str, tile: MatrixTile, *, b_transposed: bool, has_bias: bool,
                epilogue: PointwiseCode = IDENTITY.code, split_k: bool = False) -> KernelSpec:
    """The GEMM family's kernel: SIMT for a GemmTile, tensor cores for an MmaTile (f16 and
    bf16 only; `templates/gemm_mma.cuh`; TF32 for f32 with a Tf32Tile, `templates/gemm_tf32.cuh`),
    the GEMV kernel for a GemvTile (few rows;
    `templates/gemv.cuh`, the same arguments). `split_k`: the kernel of a split's float
    partial sums (no bias, no epilogue: `split_k_reduce_kernel` applies them)."""
    tile.validate()
    if split_k and (has_bias or epilogue != IDENTITY.code or isinstance(tile, GemvTile)):
        raise CodegenError("a split-K GEMM kernel stores raw partials: no bias, no epilogue, "
                           "no GEMV tile")
    if not isinstance(tile, GemvTile):
        tile = dataclasses.replace(tile, splits=1)  # a grid dimension: one kernel for any
    layout = "nt" if b_transposed else "nn"
    headers: tuple[str, ...] = ("elementwise.cuh", "gemm.cuh")
    if isinstance(tile, GemvTile):
        return KernelSpec(
            f"netc_gemv_{dtype}_{tile.suffix}_{layout}{'_bias' if has_bias else ''}"
            f"{_fused_suffix(None, epilogue)}",
            "gemv.jinja", (*headers, "gemv.cuh"), dtype, tile.threads,
            (("tile", tile), ("b_transposed", b_transposed), ("has_bias", has_bias),
             ("epilogue", epilogue)))
    tf32 = isinstance(tile, Tf32Tile)
    if tf32:  # f32 on TF32 tensor cores (--precision tf32)
        if dtype != "f32":
            raise CodegenError(f"a TF32 tile ({tile.suffix}) for a {dtype} GEMM; TF32 takes f32")
        headers += ("mma.cuh", "gemm_mma.cuh", "gemm_tf32.cuh")  # its shape is the MMA one
    elif isinstance(tile, MmaTile):
        if dtype not in TENSOR_CORE_DTYPES:
            raise CodegenError(f"a tensor-core tile ({tile.suffix}) for a {dtype} GEMM; "
                               f"tensor cores take {' and '.join(TENSOR_CORE_DTYPES)}")
        headers += ("mma.cuh", "gemm_mma.cuh")
    return KernelSpec(
        f"netc_gemm_{dtype}_{tile.suffix}_{layout}{'_bias' if has_bias else ''}"
        f"{_fused_suffix(None, epilogue)}{'_splitk' if split_k else ''}",
        "gemm.jinja", headers, dtype, tile.threads,
        (("tile", tile), ("tf32", tf32), ("b_transposed", b_transposed), ("has_bias", has_bias),
         ("epilogue", epilogue), ("split_k", split_k)))


def conv_mma_misfit(tile: MmaTile) -> str | None:
    """Why the tensor-core conv (`templates/conv2d_mma.cuh`) cannot take `tile` (None: it
    can): a thread gathers whole pixels' runs of k, stored 16 bytes at a time, so the threads
    must divide the pixels (bn) or the pixels the threads, and each run (bk * bn / threads
    elements, bk when bn >= threads) must be a multiple of 8."""
    threads, bn = tile.threads, tile.bn
    if threads % bn and bn % threads:
        return f"{threads} threads and bn {bn}: one must divide the other"
    splits = max(threads // bn, 1)
    if tile.bk % (8 * splits):
        return (f"a thread's run of k, bk / max(threads / bn, 1) = {tile.bk} / {splits}, "
                "must be a multiple of 8")
    return None


def conv2d_kernel(dtype: str, tile: GemmTile | MmaTile, *, has_bias: bool,
                  epilogue: PointwiseCode = IDENTITY.code, split_k: bool = False) -> KernelSpec:
    """The conv2d implicit GEMM: SIMT for a GemmTile, tensor cores for an MmaTile (f16 and
    bf16; `templates/conv2d_mma.cuh`). `split_k`: as `gemm_kernel`'s."""
    tile.validate()
    if split_k and (has_bias or epilogue != IDENTITY.code):
        raise CodegenError("a split-K conv2d kernel stores raw partials: no bias, no epilogue")
    tile = dataclasses.replace(tile, splits=1)  # a grid dimension: one kernel for any
    headers: tuple[str, ...] = ("elementwise.cuh", "gemm.cuh", "conv2d.cuh")
    if isinstance(tile, MmaTile):
        problem = (conv_mma_misfit(tile) if dtype in TENSOR_CORE_DTYPES else
                   f"tensor cores take {' and '.join(TENSOR_CORE_DTYPES)}")
        if problem is not None:
            raise CodegenError(f"a tensor-core tile ({tile.suffix}) for a {dtype} conv2d: "
                               f"{problem}")
        headers += ("mma.cuh", "gemm_mma.cuh", "conv2d_mma.cuh")
    return KernelSpec(
        f"netc_conv2d_{dtype}_{tile.suffix}{'_bias' if has_bias else ''}"
        f"{_fused_suffix(None, epilogue)}{'_splitk' if split_k else ''}",
        "conv2d.jinja", headers, dtype, tile.threads,
        (("tile", tile), ("has_bias", has_bias), ("epilogue", epilogue), ("split_k", split_k)))


SPLIT_K_REDUCE_THREADS = 256


def split_k_reduce_kernel(dtype: str, *, has_bias: bool,
                          epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """Split-K's second kernel (`netc_split_k_reduce`, templates/gemm.cuh): the sum of the
    splits' float partials, in order, plus the bias, through the epilogue, into the output."""
    return KernelSpec(
        f"netc_splitk_reduce_{dtype}{'_bias' if has_bias else ''}"
        f"{_fused_suffix(None, epilogue)}",
        "split_k_reduce.jinja", ("elementwise.cuh", "gemm.cuh"), dtype, SPLIT_K_REDUCE_THREADS,
        (("has_bias", has_bias), ("epilogue", epilogue)))


POOL_KINDS = {"maxpool2d": "NETC_POOL_MAX", "avgpool2d": "NETC_POOL_AVG",
              "adaptive_avgpool2d": "NETC_POOL_ADAPTIVE_AVG"}
"""The ops `templates/pool.cuh` computes, with its name for each."""


def conv_transpose2d_kernel(dtype: str, tile: GemmTile, *, has_bias: bool,
                            epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    tile.validate()
    return KernelSpec(
        f"netc_convt2d_{dtype}_{tile.suffix}{'_bias' if has_bias else ''}"
        f"{_fused_suffix(None, epilogue)}",
        "conv_transpose2d.jinja",
        ("elementwise.cuh", "gemm.cuh", "conv2d.cuh", "conv_transpose2d.cuh"), dtype,
        tile.threads, (("tile", tile), ("has_bias", has_bias), ("epilogue", epilogue)))


def weight_grad_tile(rows: int, columns: int) -> GemmTile:
    """conv2d_weight_grad's tile: 64 x 64 (the tiles `netc.ops.linear.weight_grad_splits`
    counts), halved along an extent of at most 32, so a 6-filter layer does not waste 90% of
    its block."""
    return GemmTile(bm=32 if rows <= 32 else 64, bn=32 if columns <= 32 else 64, bk=8, tm=4,
                    tn=4)


def conv2d_weight_grad_kernel(dtype: str, tile: GemmTile,
                              epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """conv2d's weight gradient as a split implicit GEMM (`templates/conv2d_wgrad.cuh`)."""
    tile.validate()
    return KernelSpec(
        f"netc_conv2d_wgrad_{dtype}_{tile.suffix}{_fused_suffix(None, epilogue)}",
        "conv2d_wgrad.jinja", ("elementwise.cuh", "gemm.cuh", "conv2d.cuh", "conv2d_wgrad.cuh"),
        dtype, tile.threads, (("tile", tile), ("epilogue", epilogue)))


def pool_kernel(op: str, dtype: str, tile: BlockTile, *,
                epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    tile.validate()
    return KernelSpec(f"netc_{op}_{dtype}_{tile.suffix}{_fused_suffix(None, epilogue)}",
                      "pool.jinja", ("elementwise.cuh", "pool.cuh"), dtype, tile.threads,
                      (("pool_kind", POOL_KINDS[op]), ("epilogue", epilogue)))


def pool_grad_kernel(mode: str, dtype: str, tile: BlockTile, *,
                     epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """The input gradient of the pool of `mode` (`GRAD_MODES`: maxpool2d, avgpool2d or
    adaptive_avgpool2d; `templates/pool_grad.cuh`)."""
    tile.validate()
    op = GRAD_MODES[mode]
    return KernelSpec(f"netc_{op}_grad_{dtype}_{tile.suffix}"
                      f"{_fused_suffix(None, epilogue)}", "pool_grad.jinja",
                      ("elementwise.cuh", "pool.cuh", "pool_grad.cuh"), dtype, tile.threads,
                      (("pool_kind", POOL_KINDS[op]), ("epilogue", epilogue)))


PAD_MODES = {"constant": "NETC_PAD_CONSTANT", "reflect": "NETC_PAD_REFLECT",
             "replicate": "NETC_PAD_REPLICATE"}
"""The modes `templates/pad.cuh` implements, with its name for each."""


def pad_kernel(mode: str, rank: int, dtype: str, tile: BlockTile) -> KernelSpec:
    """`pad` over the last `rank` dims (at least 1)."""
    tile.validate()
    return KernelSpec(f"netc_pad_{mode}_r{rank}_{dtype}_{tile.suffix}", "pad.jinja",
                      ("pad.cuh",), dtype, tile.threads,
                      (("mode", PAD_MODES[mode]), ("rank", rank)))


def interpolate_kernel(mode: str, align_corners: bool, dtype: str,
                       tile: BlockTile) -> KernelSpec:
    tile.validate()
    corners = "_corners" if align_corners else ""
    return KernelSpec(f"netc_interpolate_{mode}{corners}_{dtype}_{tile.suffix}",
                      "interpolate.jinja", ("interpolate.cuh",), dtype, tile.threads,
                      (("bilinear", mode == "bilinear"), ("align_corners", align_corners)))


def interpolate_grad_kernel(mode: str, align_corners: bool, dtype: str, tile: BlockTile, *,
                            epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """interpolate's input gradient (`templates/interpolate_grad.cuh`)."""
    tile.validate()
    corners = "_corners" if align_corners else ""
    return KernelSpec(f"netc_interpolate_grad_{mode}{corners}_{dtype}_{tile.suffix}"
                      f"{_fused_suffix(None, epilogue)}", "interpolate_grad.jinja",
                      ("elementwise.cuh", "interpolate.cuh", "interpolate_grad.cuh"), dtype,
                      tile.threads, (("bilinear", mode == "bilinear"),
                                     ("align_corners", align_corners), ("epilogue", epilogue)))


ROW_OPERATIONS = ("softmax", "log_softmax", "layernorm", "mean", "groupnorm", "instancenorm",
                  "instancenorm_affine", "rmsnorm")
"""The operations `templates/rowwise.cuh` implements (a lowering picks one for its op)."""
PLAIN_LOAD = pointwise.gather((1,), "", (1,)).code
"""The prologue of an unfused reduction: its input, read as it is."""


def row_kernel(operation: str, dtype: str, tile: RowTile, *,
               prologue: PointwiseCode = PLAIN_LOAD,
               epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    if operation not in ROW_OPERATIONS:
        raise ValueError(f"unknown row operation {operation!r}")
    tile.validate()
    fused = _fused_suffix(prologue if prologue != PLAIN_LOAD else None, epilogue)
    return KernelSpec(f"netc_{operation}_{dtype}_{tile.suffix}{fused}", "rowwise.jinja",
                      ("elementwise.cuh", "rowwise.cuh"), dtype, tile.threads,
                      (("operation", operation), ("tile", tile), ("prologue", prologue),
                       ("epilogue", epilogue)))


REDUCTIONS = {"sum": "NetcReduceSum", "mean": "NetcReduceMean", "amax": "NetcReduceMax",
              "amin": "NetcReduceMin", "logsumexp": "NetcReduceLogSumExp",
              "argmax": "NetcReduceArgMax"}
"""The reductions `templates/reduce.cuh` implements, by op, with their functor."""
INDEX_REDUCTIONS = ("argmax",)
"""Reductions whose result is an `i64` position (a 16-byte running value, no epilogue)."""


def reduce_kernel(operation: str, dtype: str, tile: RowTile, kept_rank: int, reduced_rank: int,
                  *, prologue: PointwiseCode = PLAIN_LOAD,
                  epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """`operation` over an input of `dtype` (the result is `i64` for an index reduction)."""
    if operation not in REDUCTIONS:
        raise ValueError(f"unknown reduction {operation!r}")
    tile.validate()
    fused = _fused_suffix(prologue if prologue != PLAIN_LOAD else None, epilogue)
    out_dtype = "i64" if operation in INDEX_REDUCTIONS else dtype
    return KernelSpec(
        f"netc_reduce_{operation}_{dtype}_k{kept_rank}_r{reduced_rank}_{tile.suffix}{fused}",
        "reduce.jinja", ("elementwise.cuh", "rowwise.cuh", "reduce.cuh"), out_dtype,
        tile.threads,
        (("reduction", REDUCTIONS[operation]), ("tile", tile), ("kept_rank", kept_rank),
         ("reduced_rank", reduced_rank), ("prologue", prologue), ("epilogue", epilogue),
         ("in_ctype", CTYPES[dtype])))


def gather_kernel(function: PointwiseCode, dtype: str, tile: BlockTile) -> KernelSpec:
    """out[i] = in[offset + ...]: a strided copy from an offset (slice, select)."""
    tile.validate()
    return KernelSpec(f"netc_gather_{dtype}_{function.tag}_{tile.suffix}", "gather.jinja",
                      ("elementwise.cuh",), dtype, tile.threads, (("function", function),))


def concat_kernel(dtype: str, tile: BlockTile) -> KernelSpec:
    tile.validate()
    return KernelSpec(f"netc_concat_{dtype}_{tile.suffix}", "concat.jinja", ("concat.cuh",),
                      dtype, tile.threads)


def embedding_kernel(dtype: str, id_dtype: str, tile: BlockTile) -> KernelSpec:
    tile.validate()
    return KernelSpec(f"netc_embedding_{dtype}_{id_dtype}_{tile.suffix}", "embedding.jinja",
                      ("embedding.cuh",), dtype, tile.threads, (("id_ctype", CTYPES[id_dtype]),))


def triangle_kernel(op: str, dtype: str, tile: BlockTile) -> KernelSpec:
    """`triu` or `tril`."""
    tile.validate()
    return KernelSpec(f"netc_{op}_{dtype}_{tile.suffix}", "triangle.jinja", ("triangle.cuh",),
                      dtype, tile.threads, (("upper", op == "triu"),))


def elementwise_kernel(function: PointwiseCode, dtype: str, tile: BlockTile) -> KernelSpec:
    tile.validate()
    return KernelSpec(f"netc_ew_{dtype}_{function.tag}_{tile.suffix}", "elementwise.jinja",
                      ("elementwise.cuh",), dtype, tile.threads, (("function", function),))


# Lowering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLaunch:
    kernel: KernelSpec
    grid: tuple[GridDim, GridDim, GridDim]
    block: int
    shared_bytes: int
    args: tuple[Arg, ...]
    in_place: tuple[tuple[str, str], ...] = ()
    """(output, input) buffer pairs: the output may overwrite the input's storage, since the
    kernel reads that input only at the element it is writing, in the thread that writes it,
    before it writes: any input of an elementwise kernel read that way, and a residual read only
    by the fused epilogue of any other family (`_epilogue_in_place`). GEMM, conv, pool,
    row-wise and concat kernels read their main inputs at other elements."""


@dataclass(frozen=True)
class Fusion:
    """Pointwise ops fused around a node's kernel."""

    prologue: Pointwise | None = None
    """Computes the node's first input element by element (reductions only)."""
    epilogue: Pointwise = IDENTITY
    """Applied to every element of the node's result before it is stored."""


NO_FUSION = Fusion()
TileKind = type[Tile] | types.UnionType
"""The tile configuration type(s) a kernel family takes (the GEMM family: `MatrixTile`)."""
TileT = TypeVar("TileT", GemmTile, MmaTile, RowTile, BlockTile)


class LoweringContext(Protocol):
    """What a lowering function may ask of the code generator."""

    @property
    def graph(self) -> Graph: ...

    def buffer(self, value: str) -> str:
        """The buffer holding value `value` (a node id, or `id:k` for output k)."""
        ...

    def type_of(self, value: str) -> TensorType:
        """The type of value `value` (a node id, `id:k`, or a member of the fused node
        lowered)."""
        ...

    def scratch(self, owner: Node, shape: tuple[Dim, ...], dtype: str | None = None) -> str:
        """A new intermediate buffer of `dtype` (default: `owner`'s), for a value inside its
        lowering."""
        ...

    def tile(self, node: Node, default: TileT) -> TileT:
        """The tile configuration chosen for `node`, or `default`."""
        ...


Lowering = Callable[[LoweringContext, Node, Fusion], list[KernelLaunch]]


@dataclass(frozen=True)
class KernelFamily:
    """How one op is lowered: the family's name (`gemm`, `conv2d`, `rowwise`, ...), the
    function lowering a node, and the tile configuration type its kernels take. `takes`, for
    an op that also has a decomposition, says which nodes the family computes (by their input
    types); the code generator computes the others by the decomposition."""

    name: str
    lower: Lowering
    tile: TileKind
    takes: Callable[[Node, Sequence[TensorType]], bool] | None = None


_REGISTERED: OpTable[KernelFamily] = OpTable("CUDA lowering")


def lowers(*ops: str, family: str, tile: TileKind = BlockTile,
           takes: Callable[[Node, Sequence[TensorType]], bool] | None = None,
           ) -> Callable[[Lowering], Lowering]:
    """Registers the decorated function as the CUDA lowering of `ops` (registered op names),
    of the nodes `takes` accepts when given (see `KernelFamily`)."""
    def register(function: Lowering) -> Lowering:
        _REGISTERED.add(ops, KernelFamily(family, function, tile, takes))
        return function
    return register


def kernel_takes(node: Node, inputs: Sequence[TensorType]) -> bool:
    """Whether `node`'s kernel family computes it (a node of an op without one: False)."""
    family = kernel_family(node.op)
    return family is not None and (family.takes is None or family.takes(node, inputs))


def kernel_family(op: str) -> KernelFamily | None:
    """How `op` is lowered: its registered family, or the elementwise family for an op with a
    CUDA expression; None for views and ops without a lowering."""
    registered = _REGISTERED.get(op)
    if registered is not None:
        return registered
    return _POINTWISE_FAMILY if pointwise.computes(op) else None


def _lowering(op: str) -> Lowering | None:
    family = kernel_family(op)
    return family.lower if family is not None else None


LOWERINGS: Mapping[str, Lowering] = RegistryView(_lowering)
"""Every op that computes (all but views) -> the function that lowers one node of it."""


def gemm_view(ctx: LoweringContext, node: Node) -> GemmView:
    """The op's own GEMM view (`OpDef.gemm_view`) of `node`."""
    view = REGISTRY[node.op].gemm_view
    if view is None:
        raise CodegenError(f"{node.id}: `{node.op}` has no GEMM view")
    return view(node.attrs, [ctx.type_of(i).shape for i in node.inputs], node.type.shape)


ONE = GridDim()


def _buffer(name: str) -> Arg:
    return Arg("buffer", buffer=name)


def _ints(*values: Dim | SizeLike | bool) -> tuple[Arg, ...]:
    """64-bit arguments: constants, or sizes known at launch (named dimensions)."""
    return tuple(size_arg(int(v) if isinstance(v, (bool, int)) else v) for v in values)


def _known(dim: Dim, what: str) -> int:
    """A dimension that a kernel needs at compile time; a named one is a limit of the kernel."""
    if isinstance(dim, str):
        raise CodegenLimit(f"the {what} known when compiling, not the named dimension {dim}")
    return dim


def _yz_grid(blocks: SizeLike, divisor: int, what: str) -> GridDim:
    """ceil(blocks / divisor) blocks along grid y or z: checked here when known, else by the
    runtime at launch."""
    if isinstance(blocks, int) and -(-blocks // divisor) > MAX_GRID_YZ:
        raise CodegenLimit(f"{-(-blocks // divisor):,} thread blocks along grid y or z for "
                           f"{what} (CUDA allows {MAX_GRID_YZ:,})")
    return GridDim(blocks, divisor)


def _no_prologue(node: Node, fusion: Fusion) -> Pointwise:
    if fusion.prologue is not None:
        raise CodegenError(f"{node.id}: `{node.op}` takes no fused prologue")
    return fusion.epilogue


def elementwise_launch(node: Node, function: Pointwise, tile: BlockTile, out: str,
                       out_shape: tuple[Dim, ...]) -> KernelLaunch:
    """out[i] = function(i) for every element of `out_shape`."""
    total = size_of(out_shape)
    args = (_buffer(out), *_ints(total), *function.args)
    # Thread i loads every input element it needs, then stores out[i] once: an input read at
    # i alone may be the output's own storage.
    return KernelLaunch(elementwise_kernel(function.code, node.type.dtype, tile),
                        (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0, args,
                        in_place=tuple((out, read) for read in function.own_index_buffers))


def _standalone(node: Node) -> Node:
    """`node` as the body of a group of one: its inputs become $0, $1, ..."""
    return dataclasses.replace(node, inputs=Region.arguments(len(node.inputs)))


def _lower_pointwise(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """Any op with a CUDA expression: one elementwise kernel."""
    _no_prologue(node, fusion)
    operands = [ctx.graph.value_node(i) for i in node.inputs]
    function = pointwise.build([_standalone(node)], operands,
                               ctx.buffer, node.type.shape)
    return [elementwise_launch(node, function, ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), node.type.shape)]


_POINTWISE_FAMILY = KernelFamily("elementwise", _lower_pointwise, BlockTile)


@lowers("transpose", family="elementwise")
def _lower_transpose(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: transpose takes no fused ops")
    (x,) = node.inputs
    in_strides = contiguous_strides(ctx.type_of(x).shape)
    function = pointwise.gather(node.type.shape, ctx.buffer(x),
                                [in_strides[axis] for axis in node.attrs["perm"]])
    return [elementwise_launch(node, function, ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), node.type.shape)]


def fill_constant(node: Node, out: str) -> KernelLaunch:
    """Writes a scalar `constant` node into a buffer, for a consumer that reads memory (the
    pointwise ops take constants as kernel arguments instead)."""
    function = pointwise.fill(node.attrs["value"], node.type.dtype)
    return elementwise_launch(node, function, DEFAULT_BLOCK, out, node.type.shape)


def _split_k_reduce(ctx: LoweringContext, node: Node, epilogue: Pointwise, partials: str,
                    splits: int, bias: str | None, bias_inner: SizeLike,
                    bias_count: SizeLike) -> KernelLaunch:
    """Split-K's second launch: out = epilogue(sum of the `splits` partials + bias), element by
    element; output element i's bias is bias[(i / bias_inner) % bias_count]."""
    total = size_of(node.type.shape)
    args = (_buffer(partials), *([_buffer(bias)] if bias else []), _buffer(ctx.buffer(node.id)),
            *_ints(total, splits, bias_inner, bias_count), *epilogue.args)
    spec = split_k_reduce_kernel(node.type.dtype, has_bias=bias is not None,
                                 epilogue=epilogue.code)
    return KernelLaunch(spec, (GridDim(total, spec.threads), ONE, ONE), spec.threads, 0, args)


def _partials(ctx: LoweringContext, node: Node, splits: int) -> str:
    """Split-K's float partial sums: the output's elements, once a split."""
    return ctx.scratch(node, (splits, *node.type.shape), "f32")


def _gemm_launch(ctx: LoweringContext, node: Node, epilogue: Pointwise, *, a: str, b: str,
                 bias: str | None, m: SizeLike, n: SizeLike, k: SizeLike, count: SizeLike,
                 inner_count: SizeLike, a_strides: tuple[SizeLike, SizeLike],
                 b_strides: tuple[SizeLike, SizeLike], b_transposed: bool) -> list[KernelLaunch]:
    """C [count, M, N] = A [.., M, K] . B [.., K, N] (or B^T for a [N, K] B) (+ bias[n]).

    The matrices are counted outer * inner_count + inner; *_strides are each operand's
    (outer, inner) strides in elements. A tile with `splits` > 1 launches split-K: the GEMM
    over grid z = splits into float partials, then `_split_k_reduce`."""
    default: MatrixTile = DEFAULT_MMA if node.type.dtype in TENSOR_CORE_DTYPES else DEFAULT_GEMM
    tile = ctx.tile(node, default)
    rows, columns, shared_bytes = (
        (tile.rows, tile.columns(b_transposed), 0 if b_transposed else tile.shared_bytes)
        if isinstance(tile, GemvTile) else (tile.bm, tile.bn, tile.shared_bytes))
    # The matrices and the row tiles share grid x (either may depend on a named dimension).
    grid_x = GridDim(m, rows, times=count)
    grid_y = _yz_grid(n, columns, node.id)
    sizes = _ints(m, n, k, inner_count, *a_strides, *b_strides)
    splits = getattr(tile, "splits", 1)  # a GemvTile splits K within its block
    if splits > 1:
        partials = _partials(ctx, node, splits)
        spec = gemm_kernel(node.type.dtype, tile, b_transposed=b_transposed, has_bias=False,
                           split_k=True)
        main = KernelLaunch(spec, (grid_x, grid_y, _yz_grid(splits, 1, node.id)), tile.threads,
                            shared_bytes, (_buffer(a), _buffer(b), _buffer(partials), *sizes,
                                           *_ints(size_of(node.type.shape))))
        return [main, _split_k_reduce(ctx, node, epilogue, partials, splits, bias, 1, n)]
    pointers = [_buffer(a), _buffer(b)] + ([_buffer(bias)] if bias else [])
    args = (*pointers, _buffer(ctx.buffer(node.id)), *sizes, *epilogue.args)
    spec = gemm_kernel(node.type.dtype, tile, b_transposed=b_transposed,
                       has_bias=bias is not None, epilogue=epilogue.code)
    return [KernelLaunch(spec, (grid_x, grid_y, ONE), tile.threads, shared_bytes, args)]


@lowers("dense", family="gemm", tile=MatrixTile)
def _lower_dense(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    x, weight, *bias = node.inputs
    view = gemm_view(ctx, node)
    return _gemm_launch(
        ctx, node, _no_prologue(node, fusion), a=ctx.buffer(x), b=ctx.buffer(weight),
        bias=ctx.buffer(bias[0]) if bias else None, m=size_of(view.m), n=size_of(view.n),
        k=size_of(view.k), count=size_of(view.count), inner_count=1, a_strides=(0, 0),
        b_strides=(0, 0),
        b_transposed=True)


@lowers("matmul", "matmul_nt", family="gemm", tile=MatrixTile)
def _lower_matmul(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """matmul, and matmul_nt: b's matrices stored [N, K] (read as dense reads its weight)."""
    epilogue = _no_prologue(node, fusion)
    launches: list[KernelLaunch] = []
    a_type, b_type = (ctx.type_of(i) for i in node.inputs)
    gemm = gemm_view(ctx, node)
    # NumPy's rules: a vector is a one-row (first) or one-column (second) matrix; dropping that
    # dim from the result changes nothing in memory.
    a_shape = a_type.shape if a_type.rank > 1 else (1, *a_type.shape)
    b_shape = b_type.shape if b_type.rank > 1 else (*b_type.shape, 1)
    batch_shape = gemm.count
    operands = [(ctx.buffer(i), shape) for i, shape in zip(node.inputs, (a_shape, b_shape))]

    def batch_strides(shape: tuple[Dim, ...]) -> tuple[SizeLike, ...]:
        if len(shape) == 2:
            return (0,) * len(batch_shape)
        matrix = size_of(shape[-2:])
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
                node, pointwise.gather(expanded, buffer, broadcast_strides(shape, expanded)),
                DEFAULT_BLOCK, copy, expanded))
            operands[position] = (copy, expanded)
        view = coalesce(batch_shape, [batch_strides(shape) for _, shape in operands])
    inner_count = view.sizes[1] if view.rank == 2 else 1
    a_strides, b_strides = (
        (strides[0], strides[1] if view.rank == 2 else 0) for strides in view.strides)
    launches += _gemm_launch(
        ctx, node, epilogue, a=operands[0][0], b=operands[1][0], bias=None,
        m=size_of(gemm.m), n=size_of(gemm.n), k=size_of(gemm.k),
        count=size_of(gemm.count), inner_count=inner_count, a_strides=a_strides,
        b_strides=b_strides, b_transposed=node.op == "matmul_nt")
    return launches


@lowers("conv2d", family="conv2d", tile=GemmTile | MmaTile)
def _lower_conv2d(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    epilogue = _no_prologue(node, fusion)
    x, weight, *bias = node.inputs
    tile: GemmTile | MmaTile = ctx.tile(node, _NO_GEMM_TILE)
    depthwise = depthwise_tile(node.op, node.attrs, ctx.type_of(x).shape, node.type.shape)
    if tile is _NO_GEMM_TILE and depthwise is not None:
        return [_depthwise_launch(ctx, node, epilogue, depthwise)]
    if tile is _NO_GEMM_TILE and node.op == "conv2d" and node.type.dtype in TENSOR_CORE_DTYPES:
        tile = DEFAULT_MMA  # as dense and matmul (conv_transpose2d keeps the SIMT kernel)
    images, channels, height, width = ctx.type_of(x).shape
    _, filters, out_height, out_width = node.type.shape
    window = Window.from_attrs("conv2d", node.attrs)
    groups = node.attrs["groups"]
    # One block a BM x BN tile of the GEMM: N (images x pixels) along x, M along y, a group
    # (matrix) along z, times the splits of split-K (the group fastest).
    view = gemm_view(ctx, node)
    splits = tile.splits
    grid = (GridDim(size_of(view.n), tile.bn), _yz_grid(size_of(view.m), tile.bm, node.id),
            _yz_grid(size_of((*view.count, splits)), 1, node.id))
    geometry = _ints(images, channels, height, width, filters, out_height, out_width,
                     *window.kernel, *window.stride, window.padding[0], window.padding[1],
                     *window.dilation, groups)
    if splits > 1:
        partials = _partials(ctx, node, splits)
        spec = conv2d_kernel(node.type.dtype, tile, has_bias=False, split_k=True)
        main = KernelLaunch(spec, grid, tile.threads, tile.shared_bytes,
                            (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(weight)),
                             _buffer(partials), *geometry))
        bias_buffer = ctx.buffer(bias[0]) if bias else None
        return [main, _split_k_reduce(ctx, node, epilogue, partials, splits, bias_buffer,
                                      size_of((out_height, out_width)), filters)]
    pointers = [_buffer(ctx.buffer(x)), _buffer(ctx.buffer(weight))]
    pointers += [_buffer(ctx.buffer(bias[0]))] if bias else []
    args = (*pointers, _buffer(ctx.buffer(node.id)), *geometry, *epilogue.args)
    spec = conv2d_kernel(node.type.dtype, tile, has_bias=bool(bias), epilogue=epilogue.code)
    # An MmaTile's shared_bytes covers the conv: B takes two of the `stages` B buffers.
    return [KernelLaunch(spec, grid, tile.threads, tile.shared_bytes, args)]


# Its own template, but conv2d's mainloop, arguments and registers: conv2d's tile choices.
@lowers("conv_transpose2d", family="conv2d", tile=GemmTile)
def _lower_conv_transpose2d(ctx: LoweringContext, node: Node,
                            fusion: Fusion) -> list[KernelLaunch]:
    # The arguments are conv2d's: the geometry, with PyTorch's padding as pad_top/pad_left.
    if ctx.tile(node, DEFAULT_GEMM).splits > 1:
        raise CodegenError(f"{node.id}: conv_transpose2d takes no split-K tile")
    (launch,) = _lower_conv2d(ctx, dataclasses.replace(
        node, attrs=node.attrs.replace(padding=(*node.attrs["padding"], *node.attrs["padding"]))),
        fusion)
    conv = launch.kernel
    spec = conv_transpose2d_kernel(conv.dtype, dict(conv.context)["tile"],
                                   has_bias=len(node.inputs) == 3,
                                   epilogue=dict(conv.context)["epilogue"])
    return [dataclasses.replace(launch, kernel=spec)]


@lowers("conv2d_weight_grad", family="conv2d_weight_grad", tile=GemmTile)
def _lower_conv2d_weight_grad(ctx: LoweringContext, node: Node,
                              fusion: Fusion) -> list[KernelLaunch]:
    epilogue = _no_prologue(node, fusion)
    x, cotangent = node.inputs
    images, channels, height, width = ctx.type_of(x).shape
    _, filters, out_height, out_width = ctx.type_of(cotangent).shape
    window = Window.from_attrs("conv2d", node.attrs)
    groups, splits = node.attrs["groups"], node.attrs["splits"]
    rows = int(filters) // groups
    columns = int(channels) // groups * window.kernel[0] * window.kernel[1]
    tile: GemmTile = ctx.tile(node, weight_grad_tile(rows, columns))
    # One block a BM x BN tile of one group's dW and one split: N along x, M along y, the
    # groups times the splits along z.
    grid = (GridDim(columns, tile.bn), _yz_grid(rows, tile.bm, node.id),
            _yz_grid(groups * splits, 1, node.id))
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(cotangent)), _buffer(ctx.buffer(node.id)),
            *_ints(images, channels, height, width, filters, out_height, out_width,
                   *window.kernel, *window.stride, window.padding[0], window.padding[1],
                   *window.dilation, groups, splits), *epilogue.args)
    spec = conv2d_weight_grad_kernel(node.type.dtype, tile, epilogue.code)
    return [KernelLaunch(spec, grid, tile.threads, tile.shared_bytes, args)]


@lowers("conv1d", family="conv2d", tile=GemmTile | MmaTile)
def _lower_conv1d(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """conv1d as the conv2d over a height-1 input: the same buffers, seen with a height of 1
    (the weight [filters, C/groups, k] is [filters, C/groups, 1, k] in memory)."""
    seen = {value: TensorType(ctx.type_of(value).dtype, height_one(ctx.type_of(value).shape))
            for value in node.inputs[:2]}
    as_2d = dataclasses.replace(node, op="conv2d", attrs=as_conv2d(node.attrs),
                                type=TensorType(node.type.dtype, height_one(node.type.shape)))
    return _lower_conv2d(_SeenAs(ctx, seen), as_2d, fusion)


# Depthwise conv2d: groups = in channels, computed directly (templates/depthwise_conv2d.cuh)
# rather than as an implicit GEMM whose K is kh * kw. `_lower_conv2d` hands it a depthwise
# conv (conv1d's too) unless a GEMM tile was chosen for the node: the tiling plan chooses none
# for one (`netc.codegen.tiling.gemm_shape`), a tile given by hand keeps the GEMM.

_NO_GEMM_TILE = GemmTile()
"""The default `_lower_conv2d` asks `ctx.tile` for: this very object back means that no GEMM
tile was chosen for the node (equal to `DEFAULT_GEMM`, which the GEMM then takes)."""


def depthwise_conv2d_kernel(dtype: str, tile: DepthwiseTile, kernel: tuple[int, int], *,
                            has_bias: bool,
                            epilogue: PointwiseCode = IDENTITY.code) -> KernelSpec:
    """A depthwise conv2d of a `kernel` (kh, kw) filter, a compile-time size."""
    tile.validate()
    kernel_h, kernel_w = kernel
    return KernelSpec(
        f"netc_dwconv2d_{dtype}_k{kernel_h}x{kernel_w}_{tile.suffix}"
        f"{'_bias' if has_bias else ''}{_fused_suffix(None, epilogue)}",
        "depthwise_conv2d.jinja", ("elementwise.cuh", "depthwise_conv2d.cuh"), dtype,
        tile.threads, (("tile", tile), ("kernel_h", kernel_h), ("kernel_w", kernel_w),
                       ("has_bias", has_bias), ("epilogue", epilogue)))


def depthwise_tile(op: str, attrs: Attrs, x_shape: Sequence[Dim],
                   out_shape: Sequence[Dim]) -> DepthwiseTile | None:
    """The depthwise kernel's tile for a conv2d or conv1d of `attrs` from `x_shape` to
    `out_shape`, or None where the implicit GEMM computes it: a conv that is not depthwise
    (groups = in channels > 1; any multiplier filters / groups), or one the kernel cannot take:
    an output height or width known only at run time (the tile depends on the width), more
    planes' positions than grid y holds."""
    if op == "conv1d":
        attrs, x_shape, out_shape = as_conv2d(attrs), height_one(x_shape), height_one(out_shape)
    elif op != "conv2d":
        return None
    out_height, out_width = out_shape[2:]
    if attrs["groups"] == 1 or x_shape[1] != attrs["groups"] or \
            not isinstance(out_height, int) or not isinstance(out_width, int):
        return None
    tile = default_depthwise_tile(out_width)
    positions = out_height * -(-out_width // tile.columns)
    return tile if -(-positions // tile.threads) <= MAX_GRID_YZ else None


def _depthwise_launch(ctx: LoweringContext, node: Node, epilogue: Pointwise,
                      tile: DepthwiseTile) -> KernelLaunch:
    """A block covers `channels_per_block` planes (channels of one image) times
    `positions_per_block` (row, segment of `columns`) positions of each: all of a small plane,
    or a part of a large one, the rest along grid y."""
    x, weight, *bias = node.inputs
    images, channels, height, width = ctx.type_of(x).shape
    _, filters, out_height, out_width = node.type.shape
    window = Window.from_attrs("conv2d", node.attrs)
    positions = int(out_height) * -(-int(out_width) // tile.columns)
    positions_per_block = min(positions, tile.threads)
    channels_per_block = tile.threads // positions_per_block
    grid = (GridDim(size_of((images,)), times=-(-int(filters) // channels_per_block)),
            _yz_grid(positions, positions_per_block, node.id), ONE)
    pointers = [_buffer(ctx.buffer(x)), _buffer(ctx.buffer(weight))]
    pointers += [_buffer(ctx.buffer(bias[0]))] if bias else []
    args = (*pointers, _buffer(ctx.buffer(node.id)),
            *_ints(channels, height, width, filters, out_height, out_width, *window.stride,
                   window.padding[0], window.padding[1], *window.dilation, positions_per_block,
                   channels_per_block), *epilogue.args)
    spec = depthwise_conv2d_kernel(node.type.dtype, tile, window.kernel, has_bias=bool(bias),
                                   epilogue=epilogue.code)
    return KernelLaunch(spec, grid, tile.threads, 0, args)


@lowers("maxpool2d", "avgpool2d", "adaptive_avgpool2d", family="pool")
def _lower_pool(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    epilogue = _no_prologue(node, fusion)
    (x,) = node.inputs
    tile = ctx.tile(node, DEFAULT_BLOCK)
    _, channels, height, width = ctx.type_of(x).shape
    out_height, out_width = node.type.shape[2:]
    # An adaptive pool's windows come from the sizes alone; its window arguments are unused.
    window = (Window((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)) if node.op == "adaptive_avgpool2d"
              else Window.from_attrs(node.op, node.attrs))
    total = size_of(node.type.shape)
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(node.id)),
            *_ints(total, channels, height, width, out_height, out_width, *window.kernel,
                   *window.stride, *window.padding,
                   node.attrs.get("count_include_pad", False)), *epilogue.args)
    spec = pool_kernel(node.op, node.type.dtype, tile, epilogue=epilogue.code)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


@lowers("pool2d_grad", family="pool")
def _lower_pool_grad(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    epilogue = _no_prologue(node, fusion)
    x, cotangent = node.inputs
    tile = ctx.tile(node, DEFAULT_BLOCK)
    _, channels, height, width = node.type.shape
    out_height, out_width = ctx.type_of(cotangent).shape[2:]
    # An adaptive pool's windows come from the sizes alone; its window arguments are unused.
    window = (Window((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)) if node.attrs["mode"] == "adaptive"
              else Window.from_attrs("pool", node.attrs))
    total = size_of(node.type.shape)
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(cotangent)), _buffer(ctx.buffer(node.id)),
            *_ints(total, channels, height, width, out_height, out_width, *window.kernel,
                   *window.stride, *window.padding, node.attrs["count_include_pad"]),
            *epilogue.args)
    spec = pool_grad_kernel(node.attrs["mode"], node.type.dtype, tile, epilogue=epilogue.code)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


@lowers("pad", family="pad")
def _lower_pad(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: pad takes no fused ops")
    (x,) = node.inputs
    in_shape = ctx.type_of(x).shape
    widths = pad_widths("pad", node.attrs, ctx.type_of(x))
    # The kernel pads the last `rank` dims (`pads` covers them, last first); the dims before
    # them are the outer part, which the kernel takes as what is left of the index.
    rank = min(len(node.attrs["pads"]) // 2, len(in_shape))
    if any(widths[axis] != (0, 0) for axis in range(len(in_shape) - rank)):
        raise CodegenError(f"{node.id}: pad of a dim `pads` does not cover, {ctx.type_of(x)}")
    dims = [(node.type.shape[axis], in_shape[axis], widths[axis][0])
            for axis in range(len(in_shape) - rank, len(in_shape))] or [(1, 1, 0)]
    tile = ctx.tile(node, DEFAULT_BLOCK)
    total = size_of(node.type.shape)
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(node.id)),
            *_ints(total, *(size for dim in dims for size in dim)),
            Arg("float", value=float(node.attrs["value"])))
    spec = pad_kernel(node.attrs["mode"], len(dims), node.type.dtype, tile)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


@lowers("interpolate", family="interpolate")
def _lower_interpolate(ctx: LoweringContext, node: Node,
                       fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: interpolate takes no fused ops")
    (x,) = node.inputs
    height, width = (_known(d, "input's height and width") for d in ctx.type_of(x).shape[2:])
    out_height, out_width = (_known(d, "output's height and width")
                             for d in node.type.shape[2:])
    tile = ctx.tile(node, DEFAULT_BLOCK)
    total = size_of(node.type.shape)
    ratios = (source_ratio(node.attrs, height, out_height),
              source_ratio(node.attrs, width, out_width))
    args = (_buffer(ctx.buffer(x)), _buffer(ctx.buffer(node.id)),
            *_ints(total, height, width, out_height, out_width),
            *(Arg("float", value=float(ratio)) for ratio in ratios))
    spec = interpolate_kernel(node.attrs["mode"], node.attrs["align_corners"], node.type.dtype,
                              tile)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


@lowers("interpolate_grad", family="interpolate_grad")
def _lower_interpolate_grad(ctx: LoweringContext, node: Node,
                            fusion: Fusion) -> list[KernelLaunch]:
    epilogue = _no_prologue(node, fusion)
    _, cotangent = node.inputs
    height, width = (_known(d, "input's height and width") for d in node.type.shape[2:])
    out_height, out_width = (_known(d, "output's height and width")
                             for d in ctx.type_of(cotangent).shape[2:])
    tile = ctx.tile(node, DEFAULT_BLOCK)
    total = size_of(node.type.shape)
    ratios = (source_ratio(node.attrs, height, out_height),
              source_ratio(node.attrs, width, out_width))
    args = (_buffer(ctx.buffer(cotangent)), _buffer(ctx.buffer(node.id)),
            *_ints(total, height, width, out_height, out_width),
            *(Arg("float", value=float(ratio)) for ratio in ratios), *epilogue.args)
    spec = interpolate_grad_kernel(node.attrs["mode"], node.attrs["align_corners"],
                                   node.type.dtype, tile, epilogue=epilogue.code)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


def _row_launch(ctx: LoweringContext, node: Node, fusion: Fusion, operation: str,
                shape: tuple[Dim, ...], axis: int, pointers: Sequence[str] = (),
                floats: Sequence[float] = (), ints: Sequence[SizeLike] = ()) -> KernelLaunch:
    """Reduces the first input, viewed as `shape`, along `axis`: one row per position of the
    other dims. `pointers`, `ints` and `floats` are the operation's own parameters."""
    length = size_of(shape[axis:axis + 1])
    rows = size_of(shape[:axis] + shape[axis + 1:])
    inner = size_of(shape[axis + 1:])
    tile = ctx.tile(node, default_row_tile(_planned_length(length)))
    prologue = fusion.prologue or pointwise.gather(shape, ctx.buffer(node.inputs[0]),
                                                   contiguous_strides(shape))
    args = (_buffer(ctx.buffer(node.id)), *(_buffer(ctx.buffer(p)) for p in pointers),
            *_ints(rows, length, inner, *ints),
            *(Arg("float", value=float(f)) for f in floats), *prologue.args,
            *fusion.epilogue.args)
    spec = row_kernel(operation, node.type.dtype, tile, prologue=prologue.code,
                      epilogue=fusion.epilogue.code)
    return KernelLaunch(spec, (GridDim(rows, tile.rows_per_block), ONE, ONE), tile.threads,
                        tile.shared_bytes, args)


def _planned_length(length: SizeLike) -> int:
    """The row length a row tile is chosen for: a run-time length is taken as long."""
    return length if isinstance(length, int) else 1 << 30


@lowers("softmax", "log_softmax", family="rowwise", tile=RowTile)
def _lower_softmax(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    return [_row_launch(ctx, node, fusion, node.op, node.type.shape, node.attrs["axis"])]


@lowers("layernorm", family="rowwise", tile=RowTile)
def _lower_layernorm(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    _, weight, bias = node.inputs
    return [_row_launch(ctx, node, fusion, "layernorm", node.type.shape, node.type.rank - 1,
                        (weight, bias), (node.attrs["eps"],))]


@lowers("groupnorm", "instancenorm", "rmsnorm", family="rowwise", tile=RowTile)
def _lower_norm(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """One row per group of a sample ([N, C, ...] viewed as [N, groups, C / groups * ...]) or,
    for rmsnorm, per position of the last dimension; `netc_norm_rows` in rowwise.cuh."""
    params = node.inputs[1:]
    shape = node.type.shape
    if node.op == "rmsnorm":
        return [_row_launch(ctx, node, fusion, "rmsnorm", shape, len(shape) - 1, params,
                            (node.attrs["eps"],), (1, size_of(shape[-1:]), 1))]
    channels = _known(shape[1], "channel count")
    groups = node.attrs["groups"] if node.op == "groupnorm" else channels
    spatial = size_of(shape[2:])
    operation = "instancenorm_affine" if node.op == "instancenorm" and params else node.op
    return [_row_launch(ctx, node, fusion, operation,
                        (shape[0], groups, channels // groups * spatial), 2, params,
                        (node.attrs["eps"],), (groups, channels // groups, spatial))]


@lowers("global_avgpool", family="rowwise", tile=RowTile)
def _lower_global_avgpool(ctx: LoweringContext, node: Node,
                          fusion: Fusion) -> list[KernelLaunch]:
    # A row is one channel of one image: [N, C, H, W] viewed as [N, C, H * W].
    images, channels, height, width = ctx.type_of(node.inputs[0]).shape
    return [_row_launch(ctx, node, fusion, "mean",
                        (images, channels, size_of((height, width))), 2)]


@lowers(*REDUCTIONS, family="reduce", tile=RowTile)
def _lower_reduce(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """Each output element reduces the elements of its reduced axes (any set of them)."""
    shape = ctx.type_of(node.inputs[0]).shape
    strides = contiguous_strides(shape)
    axis = node.attrs["axis"]
    axes = axis if isinstance(axis, tuple) else (axis,)  # argmax reduces one axis
    kept = [a for a in range(len(shape)) if a not in axes]
    kept_view = coalesce([shape[a] for a in kept], [[strides[a] for a in kept]])
    reduced_view = coalesce([shape[a] for a in axes], [[strides[a] for a in axes]])
    rows = size_of([shape[a] for a in kept])
    length = size_of([shape[a] for a in axes])
    # The positions of the outer reduced dims (all but the innermost merged one).
    outer = exact_div(length, reduced_view.sizes[-1]) if reduced_view.rank > 1 else 1
    tile = ctx.tile(node, default_row_tile(_planned_length(length)))
    prologue = fusion.prologue or pointwise.gather(shape, ctx.buffer(node.inputs[0]), strides)
    views = _ints(*kept_view.sizes[1:], *kept_view.strides[0], *reduced_view.sizes[1:],
                  *reduced_view.strides[0])
    args = (_buffer(ctx.buffer(node.id)), *_ints(rows, length, outer), *views,
            *prologue.args, *fusion.epilogue.args)
    spec = reduce_kernel(node.op, ctx.type_of(node.inputs[0]).dtype, tile, kept_view.rank,
                         reduced_view.rank, prologue=prologue.code,
                         epilogue=fusion.epilogue.code)
    # The tile's shared memory holds 8-byte partials; an index reduction's take 16.
    shared = tile.shared_bytes * (2 if node.op in INDEX_REDUCTIONS else 1)
    return [KernelLaunch(spec, (GridDim(rows, tile.rows_per_block), ONE, ONE), tile.threads,
                         shared, args)]


def _gather_launch(ctx: LoweringContext, node: Node, offset: SizeLike,
                   strides: Sequence[SizeLike]) -> list[KernelLaunch]:
    """out = the input read from element `offset` on with `strides` per output dimension."""
    if offset == 0:  # strides alone: an ordinary strided copy
        function = pointwise.gather(node.type.shape, ctx.buffer(node.inputs[0]), strides)
        return [elementwise_launch(node, function, ctx.tile(node, DEFAULT_BLOCK),
                                   ctx.buffer(node.id), node.type.shape)]
    tile = ctx.tile(node, DEFAULT_BLOCK)
    function = pointwise.gather(node.type.shape, ctx.buffer(node.inputs[0]), strides)
    total = size_of(node.type.shape)
    args = (_buffer(ctx.buffer(node.id)), *_ints(total, offset), *function.args)
    return [KernelLaunch(gather_kernel(function.code, node.type.dtype, tile),
                         (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0, args)]


@lowers("slice", "select", family="elementwise")
def _lower_slice(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: `{node.op}` takes no fused ops")
    in_strides = contiguous_strides(ctx.type_of(node.inputs[0]).shape)
    if node.op == "select":
        axis, index = node.attrs["axis"], node.attrs["index"]
        return _gather_launch(ctx, node, index * in_strides[axis],
                              in_strides[:axis] + in_strides[axis + 1:])
    # An end that is a named dim (`[:T]`) reads within the input: `slice_bounds` bounds it.
    strides = list(in_strides)
    offset: SizeLike = 0
    for axis, start, step in zip(node.attrs["axes"], node.attrs["starts"], node.attrs["steps"]):
        offset += start * in_strides[axis]
        strides[axis] = in_strides[axis] * step
    return _gather_launch(ctx, node, offset, strides)


@lowers("expand", family="elementwise")
def _lower_expand(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: expand takes no fused ops")
    (x,) = node.inputs
    function = pointwise.gather(node.type.shape, ctx.buffer(x),
                                broadcast_strides(ctx.type_of(x).shape, node.type.shape))
    return [elementwise_launch(node, function, ctx.tile(node, DEFAULT_BLOCK),
                               ctx.buffer(node.id), node.type.shape)]


@lowers("embedding", family="embedding")
def _lower_embedding(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: embedding takes no fused ops")
    ids, table = node.inputs
    rows, dim = ctx.type_of(table).shape
    tile = ctx.tile(node, DEFAULT_BLOCK)
    total = size_of(node.type.shape)
    args = (_buffer(ctx.buffer(ids)), _buffer(ctx.buffer(table)), _buffer(ctx.buffer(node.id)),
            *_ints(total, dim, rows))
    spec = embedding_kernel(node.type.dtype, ctx.type_of(ids).dtype, tile)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


@lowers("triu", "tril", family="triangle")
def _lower_triangle(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: {node.op} takes no fused ops")
    tile = ctx.tile(node, DEFAULT_BLOCK)
    total = size_of(node.type.shape)
    rows, columns = node.type.shape[-2:]
    args = (_buffer(ctx.buffer(node.inputs[0])), _buffer(ctx.buffer(node.id)),
            *_ints(total, rows, columns, node.attrs["diagonal"]))
    spec = triangle_kernel(node.op, node.type.dtype, tile)
    return [KernelLaunch(spec, (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                         args)]


ATTENTION_WARPS, ATTENTION_ROWS = 4, 4
"""The fused attention kernel's block: 4 warps of 4 query rows each (16 rows a block)."""
ATTENTION_MAX_FEATURES = 128
"""The largest head size (q/k and v features) the fused kernel stages in shared memory."""


ATTENTION_MASKS = {"bool": "bool", "add": None}
"""The mask kinds of the fused kernel: a bool mask (true attends), or one of the scores' dtype
added to them (None: the scores' own dtype)."""


def attention_kernel(dtype: str, features: int, value_features: int, causal: bool,
                     mask: str | None = None) -> KernelSpec:
    """`mask`: None, or a kind of `ATTENTION_MASKS`."""
    mask_dtype = None if mask is None else ATTENTION_MASKS[mask] or dtype
    return KernelSpec(
        f"netc_attention_{dtype}_e{features}_ev{value_features}_w{ATTENTION_WARPS}"
        f"_r{ATTENTION_ROWS}{'_causal' if causal else ''}{f'_m{mask}' if mask else ''}",
        "attention.jinja", ("attention.cuh",), dtype, ATTENTION_WARPS * 32,
        (("features", features), ("value_features", value_features),
         ("warps", ATTENTION_WARPS), ("rows", ATTENTION_ROWS), ("causal", causal),
         ("mask", mask), ("mask_ctype", CTYPES[mask_dtype] if mask_dtype else None)))


def _mask_view(q: TensorType, k: TensorType,
               mask: TensorType) -> tuple[StridedView, SizeLike, SizeLike]:
    """The mask read for the scores [*batch, L, S]: its batch dims' merged view, and its
    strides along a row and a key (0 where it broadcasts)."""
    batch = q.shape[:-2]
    strides = broadcast_strides(mask.shape, (*batch, q.shape[-2], k.shape[-2]))
    return coalesce(batch, [strides[:-2]]), strides[-2], strides[-1]


def _fused_attention_takes(node: Node, inputs: Sequence[TensorType]) -> bool:
    """One batch shape for q, k and v (no broadcasting), head sizes the kernel stages, and a
    mask (if any) whose batch dims merge into at most two strides: the fused kernel's cases;
    any other attention runs as its decomposition."""
    q, k, v = inputs[:3]
    features, value_features = q.shape[-1], v.shape[-1]
    if len(inputs) == 4 and _mask_view(q, k, inputs[3])[0].rank > 2:
        return False
    return q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and all(
        isinstance(size, int) and size <= ATTENTION_MAX_FEATURES
        for size in (features, value_features))


@lowers("attention", family="attention", takes=_fused_attention_takes)
def _lower_attention(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """softmax(q k^T * scale) v in one kernel (`templates/attention.cuh`)."""
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: attention takes no fused ops")
    q, k, v, *masks = node.inputs
    q_shape, k_shape, v_shape = (ctx.type_of(i).shape for i in (q, k, v))
    features, value_features = int(q_shape[-1]), int(v_shape[-1])
    mask_kind = None
    mask_args: tuple[Arg, ...] = ()
    if masks:
        mask_type = ctx.type_of(masks[0])
        mask_kind = "bool" if mask_type.dtype == "bool" else "add"
        view, row_stride, key_stride = _mask_view(ctx.type_of(q), ctx.type_of(k), mask_type)
        inner, inner_stride = (view.sizes[1], view.strides[0][1]) if view.rank == 2 else (1, 0)
        mask_args = _ints(inner, view.strides[0][0], inner_stride, row_stride, key_stride)
    spec = attention_kernel(node.type.dtype, features, value_features, node.attrs["causal"],
                            mask_kind)
    rows = ATTENTION_WARPS * ATTENTION_ROWS
    shared = 4 * (32 * (features + 1) + 32 * value_features + rows * features +
                  ATTENTION_WARPS * 32)
    scale = scale_of(node.attrs, features)
    args = (_buffer(ctx.buffer(q)), _buffer(ctx.buffer(k)), _buffer(ctx.buffer(v)),
            *(_buffer(ctx.buffer(m)) for m in masks), _buffer(ctx.buffer(node.id)),
            *_ints(q_shape[-2], k_shape[-2]), Arg("float", value=scale), *mask_args)
    grid = GridDim(size_of(q_shape[-2:-1]), rows, times=size_of(q_shape[:-2]))
    return [KernelLaunch(spec, (grid, ONE, ONE), spec.threads, shared, args)]


@lowers("concat", family="concat")
def _lower_concat(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: concat takes no fused ops")
    axis = node.attrs["axis"]
    tile = ctx.tile(node, DEFAULT_BLOCK)
    out_shape = node.type.shape
    inner = size_of(out_shape[axis + 1:])
    pitch = size_of(out_shape[axis:])
    launches = []
    offset: SizeLike = 0
    for input_id in node.inputs:
        shape = ctx.type_of(input_id).shape
        total = size_of(shape)
        chunk = size_of((shape[axis], inner))
        args = (_buffer(ctx.buffer(input_id)), _buffer(ctx.buffer(node.id)),
                *_ints(total, chunk, pitch, offset))
        launches.append(KernelLaunch(concat_kernel(node.type.dtype, tile),
                                     (GridDim(total, tile.threads), ONE, ONE), tile.threads, 0,
                                     args))
        offset += chunk
    return launches


@lowers("fused", family="fused")
def _lower_fused(ctx: LoweringContext, node: Node, fusion: Fusion) -> list[KernelLaunch]:
    """A fused group: its anchor's kernel with the members before the anchor as prologue and
    those after it as epilogue; a group of pointwise ops as one elementwise kernel."""
    if fusion != NO_FUSION:
        raise CodegenError(f"{node.id}: a fused node inside a fused node")
    region = node.region
    if region is None:
        raise CodegenError(f"{node.id}: a fused node without a region")
    inputs = [ctx.graph.value_node(i) for i in node.inputs]
    if region.kind == "elementwise":
        function = pointwise.build(region.members, inputs, ctx.buffer, node.type.shape)
        return [elementwise_launch(node, function, ctx.tile(node, DEFAULT_BLOCK),
                                   ctx.buffer(node.id), node.type.shape)]
    anchor, before, after = region.anchor, region.prologue, region.epilogue
    family = kernel_family(anchor.op)
    if family is None or anchor.op == "fused":
        raise CodegenError(f"{node.id}: no kernel for a fused group anchored at `{anchor.op}`")
    epilogue = (pointwise.build(after, inputs, ctx.buffer, node.type.shape, seed=anchor.id)
                if after else IDENTITY)
    prologue = None
    if before:
        if anchor.inputs[0] != before[-1].id or any(
                region.argument_position(ref) is None for ref in anchor.inputs[1:]):
            raise CodegenError(f"{node.id}: a prologue must compute exactly the first input "
                               f"of `{anchor.op}`")
        prologue = pointwise.build(before, inputs, ctx.buffer, before[-1].type.shape)
    # The anchor as a graph node: it computes the fused node's value from graph values (and,
    # with a prologue, from the prologue's result, which lives only in registers).
    resolved = dataclasses.replace(anchor, id=node.id,
                                   inputs=region.graph_inputs(anchor, node.inputs))
    launches = family.lower(_BodyContext(ctx, {member.id: member.type for member in before}),
                            resolved, Fusion(prologue, epilogue))
    return [*launches[:-1], _epilogue_in_place(launches[-1], epilogue, ctx.buffer(node.id))]


def _epilogue_in_place(launch: KernelLaunch, epilogue: Pointwise, out: str) -> KernelLaunch:
    """`launch` (writing `out` through `epilogue`) offering `out` the storage of each buffer
    the epilogue reads only at the element being stored. Every family applies its epilogue
    once per output element, in the thread that stores it, right before the store, so such a
    residual is read before it is overwritten and never again. A buffer the kernel also takes
    as one of its own operands (read at other elements) is never offered: the epilogue's
    arguments come last, so everything before them is the kernel's own."""
    own = {arg.buffer for arg in launch.args[:len(launch.args) - len(epilogue.args)]
           if arg.kind == "buffer"}
    offered = tuple((out, read) for read in epilogue.own_index_buffers if read not in own)
    return dataclasses.replace(launch, in_place=launch.in_place + offered) if offered else launch


@dataclass
class _BodyContext:
    """A context that also knows the types of a fused node's prologue members."""

    outer: LoweringContext
    body_types: dict[str, TensorType]

    @property
    def graph(self) -> Graph:
        return self.outer.graph

    def buffer(self, value: str) -> str:
        if value in self.body_types:
            raise CodegenError(f"{value} is computed in registers by a fused prologue")
        return self.outer.buffer(value)

    def type_of(self, value: str) -> TensorType:
        return self.body_types[value] if value in self.body_types else self.outer.type_of(value)

    def scratch(self, owner: Node, shape: tuple[Dim, ...], dtype: str | None = None) -> str:
        return self.outer.scratch(owner, shape, dtype)

    def tile(self, node: Node, default: TileT) -> TileT:
        return self.outer.tile(node, default)


@dataclass
class _SeenAs:
    """A context that gives some values other (same-sized) types: a lowering that reuses
    another op's kernel on the same buffers."""

    outer: LoweringContext
    types: dict[str, TensorType]

    @property
    def graph(self) -> Graph:
        return self.outer.graph

    def buffer(self, value: str) -> str:
        return self.outer.buffer(value)

    def type_of(self, value: str) -> TensorType:
        return self.types.get(value) or self.outer.type_of(value)

    def scratch(self, owner: Node, shape: tuple[Dim, ...], dtype: str | None = None) -> str:
        return self.outer.scratch(owner, shape, dtype)

    def tile(self, node: Node, default: TileT) -> TileT:
        return self.outer.tile(node, default)


def tile_kind(node: Node) -> TileKind:
    """The tile configuration type a node's kernel takes (for validating overrides)."""
    op = node.op
    region = node.region
    if region is not None:
        if region.kind == "elementwise":
            return BlockTile
        op = region.anchor.op
    family = kernel_family(op)
    return family.tile if family is not None else BlockTile
