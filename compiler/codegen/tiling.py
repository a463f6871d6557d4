"""Tiling: the tile configuration of every GEMM and convolution kernel, from its shape and the
target GPU's limits.

`choose_tiles(graph, arch)` returns `{node id: GemmTile or MmaTile}` for every op with a GEMM view
(`OpDef.gemm_view`: `dense`, `matmul` and `conv2d`), alone or as the anchor of a fused node (keyed by the fused node's id, which is the id
`generate(graph, tiles)` looks up). `plan_tiles` returns the same choices with the GEMM shape
and the reason for each, for the tables of `netc compile` and `netc explain`. A depthwise conv
gets none: it has its own kernel (`netc.codegen.kernels.depthwise_tile` says which convs do).

Every kernel of the GEMM family computes C[M x N] = A[M x K] . B[K x N] for `count`
independent matrices, one BM x BN tile a block. The op's `gemm_view` says how (the CUDA
lowering reads the same view, so the tiles chosen fit the grid launched):

| op | M | N | K | count |
| --- | --- | --- | --- | --- |
| dense | rows of x (the batch, times any middle dims) | units | in features | 1 |
| matmul | rows of a | columns of b | inner dim | the batch of matrices |
| conv2d | out channels / groups | images x out pixels | in channels / groups x kh x kw | groups |

The heuristic (sizes taken at `batch`, default 1, for a size that grows with the batch):

1. **Shape class.** `narrow_m` when M <= 16 (dense at batch 1, grouped convs),
   else `narrow_n` when N <= 16 (classifier heads), else `tall` (M >= N) or `wide` (M < N).
2. **Candidates.** `TILE_TABLE[(family, class, arch)]` lists candidate names in order of
   preference, largest tiles first (more reuse of each staged element); the tiles themselves
   are `CANDIDATES`, a fixed table that the tests compile (ptxas, no spills) and run on the
   simulator (`tests/sim/test_tile_invariance.py`). All have 256 threads: ptxas trades a few
   bytes of spills for occupancy in smaller blocks with fused epilogues (`__launch_bounds__`
   without a minimum of blocks), which these shapes avoid on sm_80 and sm_90. An architecture
   without entries of its own uses sm_90's lists.
3. **Limits.** A candidate must fit the architecture (`netc.codegen.targets`): whole warps, at
   most `max_threads_per_block` threads, at most 48 KiB of shared memory a block, and a
   register estimate (tm·tn + tm + tn + 40) within both 255 and the register file divided by
   the block's threads.
4. **Ragged edges.** A candidate whose blocks would spend more than half their area outside C
   is dropped, unless every candidate would; then those covering the most are kept.
5. **Fill the GPU.** The first remaining candidate giving at least one block per SM (132 on
   H100, 108 on A100) is taken; when none does, the one giving the most blocks.
6. **Split-K.** A tile that still launches fewer blocks than the GPU has SMs (ResNet-18's late
   convs at batch 1: 32 blocks of 32 x 32 on 132 SMs) splits K over `splits` blocks a tile
   (`split_k`; templates/gemm.cuh): each split sums a run of at least `MIN_SPLIT_K_TILES`
   whole k-tiles into float partials, and a second kernel adds them in order and applies the
   bias and the epilogue. Of no split and the counts up to `MAX_SPLITS` whose blocks fit one
   wave at the tile's occupancy (registers estimated), it takes the one `netc explain`'s model
   predicts fastest (`split_k_seconds`: roofline over grid fill, the partials' round trip and
   the reduce kernel counted), the fewest splits of equals. Dense, matmul, conv2d and conv1d
   take it (`SPLIT_K_OPS`), on every kernel but GEMV; the count is chosen at the planning
   batch.

GEMV: a `dense`, `matmul` or `matmul_nt` with M <= `GEMV_MAX_M` (8: batch-1 dense layers,
decoding steps) takes a `GemvTile` (`templates/gemv.cuh`; any dtype, before the tensor-core and
SIMT tables) with `rows` the least of 1 or 8 that holds M, and `warps` the most of 8, 4, 2 whose
grid has at least one block per SM, else the one giving the most blocks. With B stored [N, K]
(dense, matmul_nt) a block computes a column a warp, `warps` columns; with B as [K, N] (matmul)
32 columns whatever `warps`, so it takes 8, splitting K the most. Grid y is N / columns: a
layer wider than 65535 of them keeps the GEMM. A 512 -> 1000 classifier at batch 1 on an H100
takes rows1_warps4: 250 blocks of 128 threads for 132 SMs (the 16 x 32 tile launched 32
blocks of 256 threads, 15 of their 16 rows padding). `--tile LAYER=rows1,warps4` and the
tuning database (`"tile": {"rows": 1, "warps": 4}`) give one to other such layers; conv layers
refuse it (E0441).

Tensor cores: an f16 or bf16 `dense`, `matmul`, `conv2d` or `conv1d` (the GEMM-family ops whose
lowering takes an `MmaTile`; not `conv_transpose2d`, nor depthwise convs, which have their own
kernel) takes an `MmaTile` (the `mma` family of
`TILE_TABLE`, the `mma_*` candidates: 32 to 256 threads, BK 32, 2 to 4 cp.async stages within
48 KiB) by the same steps; a `GemmTile` given for one (`--tile`, the tuning database) forces the
SIMT kernel, and an `MmaTile` for any other GEMM is refused (E0441; for `--tile all=` it applies
to the kernels that take it), as is one the conv kernel's gather cannot split
(`netc.codegen.kernels.conv_mma_misfit`; every `mma_*` candidate fits). Grouped convs take
tensor cores too, whatever M per group: a 16-row tile computes a group of fewer than 16
channels with idle rows, still cheaper than the SIMT kernel's FFMAs.

TF32: with `precision="tf32"` (`--precision tf32`), an f32 `dense` or `matmul` is a `tf32` GEMM
(`GemmShape.dtype`): the `tf32` family of `TILE_TABLE`, the `tf32_*` candidates (`Tf32Tile`:
f32 staged, so BK 16 or 3 stages where the 16-bit tiles have 32 and 4), by the same steps;
an `MmaTile` given for one (`--tile`, the tuning database) becomes a `Tf32Tile`. M <= 8 keeps
the f32 GEMV kernel, and convolutions their f32 kernels.

K-tile: 8 for the square tiles (a k-step stages 8·(BM+BN) floats, enough per barrier); 16 for
the narrow ones, which stage fewer elements a step. The SIMT kernels double-buffer shared
memory, prefetching the next k-tile into registers during the math (templates/gemm.cuh).

The choice is data, for measured tuning later: a tuning database (`NETC_TUNING_DB` or
`--tuning-db FILE`, a JSON file of entries keyed by op, M, N, K and arch) overrides the
heuristic for the shapes it lists, and `--tile LAYER=bm64,bn64,bk8,tm4,tn4` (or `all=...`;
`splits4` after any GEMM or conv tile asks for split-K) overrides both, for experiments. See
`docs/kernels.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from netc.codegen.kernels import (
    MAX_GRID_YZ,
    SPLIT_K_REDUCE_THREADS,
    TENSOR_CORE_DTYPES,
    conv_mma_misfit,
    depthwise_tile,
    kernel_family,
)
from netc.codegen.occupancy import grid_fill, occupancy
from netc.codegen.targets import ARCHS, DEFAULT_ARCH, GpuArch, planning_arch
from netc.codegen.tiles import (
    DEFAULT_MMA,
    GEMV_MAX_ROWS,
    MAX_SPLITS,
    GemmTile,
    GemvTile,
    MatrixTile,
    MmaTile,
    Tf32Tile,
    TileError,
)
from netc.diagnostics import CompileError, Diagnostic, error
from netc.ir import Graph, Node, TensorType
from netc.ops import REGISTRY
from netc.text import format_table


def gemm_ops() -> tuple[str, ...]:
    """Every registered op with a GEMM view: matrix products, then convolutions."""
    found = [opdef for opdef in REGISTRY.values() if opdef.gemm_view is not None]
    return tuple(opdef.name for opdef in sorted(found, key=lambda opdef: opdef.role != "gemm"))


def __getattr__(name: str) -> tuple[str, ...]:
    # `GEMM_OPS` reads the registry when asked, so an op registered later is in it.
    if name == "GEMM_OPS":
        return gemm_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

TUNING_DB_ENV = "NETC_TUNING_DB"
TUNING_DB_FORMAT = 1
NARROW = 16
"""M or N at most this takes a narrow tile."""
MIN_COVERAGE = 0.5
"""The least fraction of a candidate's computed area that must be real output."""
GEMV_MAX_M = GEMV_MAX_ROWS
"""A dense or matmul with at most this many rows takes the GEMV kernel."""
GEMV_OPS = {"dense": True, "matmul": False, "matmul_nt": True}
"""The ops the GEMV kernel computes -> whether B is stored [N, K] (else [K, N])."""
GEMV_ROWS = (1, GEMV_MAX_ROWS)
GEMV_WARPS = (8, 4, 2)
"""The GEMV tiles' rows and warps, in the order the heuristic tries them."""
OWN_TILE_OPS = ("conv2d_weight_grad",)
"""GEMM-family ops outside the tile plan: conv2d's weight gradient takes its tile from its
extents (`kernels.weight_grad_tile`) and is split in the IR (`ops.linear.weight_grad_splits`)
when autodiff builds it, before the batch is known."""
SPLIT_K_OPS = ("dense", "matmul", "matmul_nt", "conv2d", "conv1d")
"""The ops whose lowering takes a split-K tile (`splits` > 1)."""
MIN_SPLIT_K_TILES = 4
"""The fewest k-tiles a split of split-K sums: shorter runs cost more in partials than they
gain in blocks."""

CANDIDATES: dict[str, MatrixTile] = {
    "large": GemmTile(128, 128, 8, 8, 8),
    "tall": GemmTile(128, 64, 8, 8, 4),
    "wide": GemmTile(64, 128, 8, 4, 8),
    "medium": GemmTile(64, 64, 8, 4, 4),
    "small": GemmTile(32, 32, 8, 2, 2),
    "narrow_m": GemmTile(16, 64, 16, 2, 2),
    "narrow_m_small": GemmTile(16, 32, 16, 1, 2),
    "narrow_n": GemmTile(64, 16, 16, 2, 2),
    "narrow_n_small": GemmTile(32, 16, 16, 2, 1),
    # Tensor cores (f16 and bf16 dense and matmul): bm, bn, bk, warps along m and n, stages.
    "mma_large": MmaTile(128, 128, 32, 2, 4, 2),
    "mma_tall": MmaTile(128, 64, 32, 2, 2, 3),
    "mma_wide": MmaTile(64, 128, 32, 2, 2, 3),
    "mma_medium": MmaTile(64, 64, 32, 2, 2, 3),
    "mma_small": MmaTile(32, 32, 32, 1, 1, 4),
    "mma_narrow_m": MmaTile(16, 64, 32, 1, 2, 4),
    "mma_narrow_n": MmaTile(64, 16, 32, 2, 1, 4),
    # TF32 tensor cores (f32 dense and matmul under --precision tf32): f32 in shared memory,
    # so half the k-tile or fewer stages of the 16-bit tiles within 48 KiB.
    "tf32_large": Tf32Tile(128, 128, 16, 2, 4, 2),
    "tf32_tall": Tf32Tile(128, 64, 16, 2, 2, 3),
    "tf32_wide": Tf32Tile(64, 128, 16, 2, 2, 3),
    "tf32_medium": Tf32Tile(64, 64, 32, 2, 2, 2),
    "tf32_small": Tf32Tile(32, 32, 32, 1, 1, 3),
    "tf32_narrow_m": Tf32Tile(16, 64, 32, 1, 2, 3),
    "tf32_narrow_n": Tf32Tile(64, 16, 32, 2, 1, 3),
    # GEMV (dense and matmul with M <= 8): rows of C a block, warps a block.
    **{f"gemv_rows{rows}_warps{warps}": GemvTile(rows, warps)
       for rows in GEMV_ROWS for warps in GEMV_WARPS},
}
"""Every tile the heuristic may choose, by name."""

_PREFERENCES: dict[str, tuple[str, ...]] = {
    "tall": ("large", "tall", "medium", "small"),
    "wide": ("wide", "medium", "small"),
    "narrow_m": ("narrow_m", "narrow_m_small"),
    "narrow_n": ("narrow_n", "narrow_n_small"),
}
_MMA_PREFERENCES: dict[str, tuple[str, ...]] = {
    "tall": ("mma_large", "mma_tall", "mma_medium", "mma_small"),
    "wide": ("mma_large", "mma_wide", "mma_medium", "mma_small"),
    "narrow_m": ("mma_narrow_m", "mma_small"),
    "narrow_n": ("mma_narrow_n", "mma_small"),
}
TILE_TABLE: dict[tuple[str, str, str], tuple[str, ...]] = {
    (family, shape_class, arch): names
    for family, preferences in (("gemm", _PREFERENCES), ("conv2d", _PREFERENCES),
                                ("mma", _MMA_PREFERENCES),
                                ("tf32", {shape_class: tuple(name.replace("mma_", "tf32_")
                                                             for name in names)
                                          for shape_class, names in _MMA_PREFERENCES.items()}))
    for arch in ARCHS for shape_class, names in preferences.items()
}
"""(family, shape class, arch) -> candidate names, preferred first. The same lists serve
every family and architecture today; measured tuning may give each its own."""


class TileSpecError(ValueError):
    """A `--tile` value that is not of the form bm64,bn64,bk8,tm4,tn4."""


# Shapes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmShape:
    """The GEMM a kernel computes, at a concrete batch."""

    op: str
    m: int
    n: int
    k: int
    count: int = 1
    """Independent matrices: matmul's batch, conv2d's groups."""
    dtype: str = "f32"
    """The element type multiplied: the output's dtype, or `tf32` for an f32 dense or matmul
    under `--precision tf32` (`gemm_shape`)."""

    def blocks(self, tile: MatrixTile) -> int:
        """The blocks the main kernel launches: the tiles of C, times split-K's splits."""
        rows, columns = self._block_tile(tile)
        return -(-self.m // rows) * -(-self.n // columns) * self.count * splits_of(tile)

    def coverage(self, tile: MatrixTile) -> float:
        """The fraction of the blocks' tiles that is real output (ragged edges waste the rest)."""
        rows, columns = self._block_tile(tile)
        covered = -(-self.m // rows) * rows * -(-self.n // columns) * columns
        return self.m * self.n / covered if covered else 1.0

    def _block_tile(self, tile: MatrixTile) -> tuple[int, int]:
        """The rows and columns of C a block of `tile` computes."""
        if isinstance(tile, GemvTile):
            return tile.rows, tile.columns(GEMV_OPS[self.op])
        return tile.bm, tile.bn

    @property
    def shape_class(self) -> str:
        if self.m <= NARROW and self.m <= self.n:
            return "narrow_m"
        if self.n <= NARROW:
            return "narrow_n"
        return "tall" if self.m >= self.n else "wide"

    @property
    def family(self) -> str:
        """The kernel family computing it, which keys `TILE_TABLE`: `gemm`, `conv2d`, `mma`
        for a GEMM on tensor cores (f16 and bf16), or `tf32` for one on TF32 tensor cores."""
        found = kernel_family(self.op)
        family = found.name if found is not None else "gemm"
        if family == "gemm" and self.dtype == "tf32":
            return "tf32"
        tensor_cores = found is None or isinstance(DEFAULT_MMA, found.tile)
        return "mma" if tensor_cores and self.dtype in TENSOR_CORE_DTYPES else family

    def takes(self, tile: MatrixTile) -> bool:
        """Whether its kernel can take `tile` (any GEMM a SIMT tile; tensor-core tiles only the
        `mma` family; GEMV tiles dense and matmul in any dtype)."""
        if isinstance(tile, GemvTile):
            return self.op in GEMV_OPS
        if tile.splits > 1 and self.op not in SPLIT_K_OPS:
            return False
        return isinstance(tile, GemmTile) or (self.family in ("mma", "tf32") and
                                              self.conv_misfit(tile) is None)

    def conv_misfit(self, tile: MatrixTile) -> str | None:
        """Why the tensor-core conv cannot take `tile` (None: it can, or this is no conv)."""
        found = kernel_family(self.op)
        conv = found is not None and found.name == "conv2d" and self.family == "mma"
        return conv_mma_misfit(tile) if conv and isinstance(tile, MmaTile) else None

    def __str__(self) -> str:
        count = f" x{self.count}" if self.count > 1 else ""
        return f"{self.m}x{self.n}x{self.k}{count}"


def anchor(graph: Graph, node: Node) -> tuple[Node, list[TensorType]] | None:
    """The node that shapes `node`'s kernel (itself, or a fused node's anchor) with its input
    types; None for a group of pointwise ops alone."""
    region = node.region
    if region is None:
        return node, [graph.value_type(value) for value in node.inputs]
    if region.kind == "elementwise":
        return None
    member = region.anchor
    types = {b.id: b.type for b in region.members}
    arguments = [graph.value_type(value) for value in node.inputs]
    return member, [region.resolve(ref, arguments, types) for ref in member.inputs]


def gemm_shape(graph: Graph, node: Node, batch: int = 1,
               precision: str = "f32") -> GemmShape | None:
    """The GEMM `node`'s kernel computes, with every named dimension set to `batch`; None for a
    node outside the GEMM family, a depthwise conv included (its own kernel takes no GEMM
    tile). `precision` `tf32` makes an f32 dense or matmul a `tf32` one (`netc.precision`)."""
    found = anchor(graph, node)
    if found is None:
        return None
    member, inputs = found
    view = REGISTRY[member.op].gemm_view
    if view is None or member.op in OWN_TILE_OPS or depthwise_tile(
            member.op, member.attrs, inputs[0].shape, member.type.shape) is not None:
        return None
    gemm = view(member.attrs, [t.shape for t in inputs], member.type.shape)
    m, n, k, count = gemm.concrete(dict.fromkeys(graph.batch_dims(), batch))
    shape = GemmShape(member.op, m, n, k, count, member.type.dtype)
    if precision == "tf32" and shape.dtype == "f32" and shape.family == "gemm":
        return GemmShape(member.op, m, n, k, count, "tf32")
    return shape


# Limits and the heuristic --------------------------------------------------------------------


def misfit(tile: MatrixTile, arch: GpuArch) -> str | None:
    """Why `tile` cannot run on `arch` (None: it can)."""
    try:
        tile.validate()
    except TileError as exc:
        return str(exc)
    if tile.threads > arch.max_threads_per_block:
        return f"{tile.threads} threads a block, {arch.name} allows {arch.max_threads_per_block}"
    if tile.shared_bytes > arch.shared_bytes_per_block:
        return (f"{tile.shared_bytes} bytes of shared memory a block, {arch.name} allows "
                f"{arch.shared_bytes_per_block}")
    registers = min(arch.max_registers_per_thread, arch.registers_per_sm // tile.threads)
    if tile.registers_estimate > registers:
        return (f"about {tile.registers_estimate} registers a thread, {tile.threads} threads "
                f"leave {registers} on {arch.name}")
    return None


def tile_text(tile: MatrixTile) -> str:
    """`bm64,bn64,bk8,tm4,tn4` (or `bm128,bn128,bk32,wm2,wn4,stages2`, `...,splits4` with
    split-K): the form `--tile` takes."""
    return ",".join(f"{f.name}{getattr(tile, f.name)}" for f in fields(tile)
                    if f.name != "splits" or getattr(tile, f.name) != 1)


def splits_of(tile: MatrixTile) -> int:
    """Split-K's splits of `tile` (1: none; a GEMV tile splits K within its block)."""
    return 1 if isinstance(tile, GemvTile) else tile.splits


def tile_chains(tile: object) -> int:
    """Independent accumulation chains a warp of the tile's kernel issues (the grid-fill
    model's `chains`): a SIMT GEMM thread's tm x tn accumulators, a tensor-core warp's mma
    tiles; 1 for any other kernel."""
    if isinstance(tile, GemmTile):
        return tile.tm * tile.tn
    if isinstance(tile, MmaTile):  # Tf32Tile too
        return (tile.bm // tile.wm // 16) * (tile.bn // tile.wn // 8)
    return 1


def heuristic_tile(shape: GemmShape,
                   arch: str | GpuArch = DEFAULT_ARCH) -> tuple[MatrixTile, str]:
    """The heuristic's tile for `shape` on `arch`, and why (see the module docstring)."""
    target = arch if isinstance(arch, GpuArch) else planning_arch(arch)
    gemv = gemv_tile(shape, target)
    if gemv is not None:
        return gemv
    names = TILE_TABLE.get((shape.family, shape.shape_class, target.name)) or \
        TILE_TABLE[(shape.family, shape.shape_class, DEFAULT_ARCH)]
    fitting = [name for name in names if misfit(CANDIDATES[name], target) is None]
    if not fitting:
        raise TileError(f"no candidate tile for {shape.op} {shape} fits {target.name}")
    kept = [n for n in fitting if shape.coverage(CANDIDATES[n]) >= MIN_COVERAGE]
    if not kept:
        best = max(shape.coverage(CANDIDATES[n]) for n in fitting)
        kept = [n for n in fitting if shape.coverage(CANDIDATES[n]) >= best - 1e-12]
    for name in kept:
        blocks = shape.blocks(CANDIDATES[name])
        if blocks >= target.sms:
            return CANDIDATES[name], (f"{shape.shape_class}: {name}, {blocks} blocks fill "
                                      f"{target.sms} SMs")
    name = max(kept, key=lambda n: shape.blocks(CANDIDATES[n]))
    tile = CANDIDATES[name]
    why = f"{shape.shape_class}: {name}, the most blocks, {shape.blocks(tile)}"
    splits = split_k(shape, tile, target)
    if splits > 1:
        return replace(tile, splits=splits), (f"{why} x {splits} splits of K = "
                                              f"{shape.blocks(tile) * splits} for "
                                              f"{target.sms} SMs")
    return tile, f"{why} for {target.sms} SMs"


def split_k(shape: GemmShape, tile: GemmTile | MmaTile, target: GpuArch) -> int:
    """The splits of K for `shape` on `tile` (1: none; see the module docstring, step 6)."""
    blocks = shape.blocks(tile)
    if shape.op not in SPLIT_K_OPS or blocks >= target.sms:
        return 1
    k_tiles = -(-shape.k // tile.bk)
    occ = occupancy(target, tile.threads, tile.registers_estimate, tile.shared_bytes)
    most = min(MAX_SPLITS, k_tiles // MIN_SPLIT_K_TILES,
               target.sms * occ.blocks_per_sm // blocks)
    # Counts whose runs of ceil(k_tiles / splits) k-tiles leave no split empty.
    counts = {-(-k_tiles // -(-k_tiles // count)) for count in range(2, most + 1)}
    return min({1} | counts, key=lambda count: (split_k_seconds(shape, tile, target, count),
                                                 count))


SPLIT_K_REDUCE_REGISTERS = 32
"""Registers a thread of split-K's reduce kernel is taken to need (a short loop)."""


def split_k_seconds(shape: GemmShape, tile: GemmTile | MmaTile, target: GpuArch,
                    splits: int) -> float:
    """The time `netc explain`'s model predicts for `shape` on `tile` split `splits` ways
    (whatever the tile's own `splits`; registers estimated): the main kernel's roofline over
    its grid fill, its bytes the operands, the output (1 split) or the float partials; plus,
    split, the reduce kernel's (the partials and the output) over its own fill."""
    tile = replace(tile, splits=splits)
    peaks = target.peaks
    size = 2 if shape.dtype in TENSOR_CORE_DTYPES else 4
    outputs = shape.m * shape.n * shape.count
    operands = (shape.m + shape.n) * shape.k * shape.count * size
    written = 4 * splits * outputs if splits > 1 else size * outputs
    occ = occupancy(target, tile.threads, tile.registers_estimate, tile.shared_bytes)
    fill = grid_fill(target, shape.blocks(tile), occ, tile_chains(tile)).utilisation
    main = peaks.roofline_seconds(2 * shape.m * shape.n * shape.k * shape.count,
                                  operands + written, tensor_cores=shape.family == "mma",
                                  tf32=shape.family == "tf32") / fill
    if splits == 1:
        return main
    threads = SPLIT_K_REDUCE_THREADS
    reduce_fill = grid_fill(target, -(-outputs // threads),
                            occupancy(target, threads, SPLIT_K_REDUCE_REGISTERS, 0)).utilisation
    return main + (written + size * outputs) / peaks.bytes_per_second / reduce_fill


def gemv_tile(shape: GemmShape, target: GpuArch) -> tuple[GemvTile, str] | None:
    """The GEMV kernel's tile for a dense or matmul with few rows, and why; None for any other
    GEMM (see the module docstring)."""
    if shape.m > GEMV_MAX_M or not shape.takes(GemvTile()):
        return None
    rows = next(r for r in GEMV_ROWS if r >= shape.m)
    tiles = [GemvTile(rows, warps) for warps in GEMV_WARPS]
    tiles = [tile for tile in tiles if misfit(tile, target) is None and
             -(-shape.n // tile.columns(GEMV_OPS[shape.op])) <= MAX_GRID_YZ]
    if not tiles:
        return None
    # Else the most blocks (the first of equals: matmul's blocks do not depend on warps).
    tile = next((t for t in tiles if shape.blocks(t) >= target.sms),
                max(tiles, key=shape.blocks))
    return tile, (f"{shape.shape_class}: gemv_{tile.suffix} (M <= {GEMV_MAX_M}), "
                  f"{shape.blocks(tile)} blocks for {target.sms} SMs")


# The tuning database ---------------------------------------------------------------------


TuningKey = tuple[str, int, int, int, str]
"""(op, M, N, K, arch)."""


@dataclass(frozen=True)
class TuningDb:
    """Measured (or hand-picked) tiles by GEMM shape and architecture, from a JSON file:

        {"format": 1, "entries": [
          {"op": "conv2d", "m": 64, "n": 3136, "k": 576, "arch": "sm_90",
           "tile": {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}, "note": "12.1 us"}]}
    """

    path: str
    entries: Mapping[TuningKey, MatrixTile]

    def lookup(self, shape: GemmShape, arch: str) -> MatrixTile | None:
        return self.entries.get((shape.op, shape.m, shape.n, shape.k, arch))


def load_tuning_db(path: str | Path) -> TuningDb:
    """Reads a tuning database; any problem is a `CompileError` (E0442) naming the entry."""
    where = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error("E0442", f"tuning database `{where}` does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error("E0442", f"cannot read tuning database `{where}`: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != TUNING_DB_FORMAT or \
            not isinstance(document.get("entries"), list):
        raise error("E0442", f"tuning database `{where}` is not a netc tuning database",
                    help=f'expected {{"format": {TUNING_DB_FORMAT}, "entries": [...]}}')
    entries: dict[TuningKey, MatrixTile] = {}
    for index, entry in enumerate(document["entries"]):
        try:
            key = (str(entry["op"]), int(entry["m"]), int(entry["n"]), int(entry["k"]),
                   str(entry["arch"]))
            tile = matrix_tile({name: int(value) for name, value in entry["tile"].items()})
            tile.validate()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise error("E0442", f"tuning database `{where}`, entry {index}: {exc}",
                        help='an entry is {"op": "conv2d", "m": 64, "n": 3136, "k": 576, '
                             '"arch": "sm_90", "tile": {"bm": 64, "bn": 64, "bk": 8, '
                             '"tm": 4, "tn": 4}}') from None
        if key[0] not in gemm_ops():
            raise error("E0442", f"tuning database `{where}`, entry {index}: op `{key[0]}` is "
                        f"not one of {', '.join(gemm_ops())}")
        entries[key] = tile
    return TuningDb(where, entries)


def _tuning_db(tuning_db: TuningDb | str | Path | None) -> TuningDb | None:
    if isinstance(tuning_db, TuningDb):
        return tuning_db
    path = tuning_db if tuning_db is not None else os.environ.get(TUNING_DB_ENV) or None
    return load_tuning_db(path) if path is not None else None


# --tile ------------------------------------------------------------------------------------


def matrix_tile(values: Mapping[str, int]) -> MatrixTile:
    """A tile from its fields: GEMV (GemvTile) when `rows` or `warps` is given, tensor cores
    (MmaTile) when any of `wm`, `wn`, `stages` is, else SIMT (GemmTile); the fields not given
    take the type's defaults."""
    mma = {f.name for f in fields(MmaTile)} - {f.name for f in fields(GemmTile)}
    gemv = {f.name for f in fields(GemvTile)}
    kind: type[MatrixTile] = (GemvTile if gemv & set(values) else
                              MmaTile if mma & set(values) else GemmTile)
    return kind(**values)


def parse_tile(text: str) -> MatrixTile:
    """`bm64,bn64,bk8,tm4,tn4` (SIMT: any of the five, in any order) or
    `bm128,bn128,bk32,wm2,wn4,stages2` (tensor cores) or `rows1,warps4` (GEMV) as a tile, the
    fields not given taking the type's defaults; `splits4` with either of the first two asks
    for split-K. Validity against a GPU is checked when it is
    applied."""
    values: dict[str, int] = {}
    simt = [f.name for f in fields(GemmTile) if f.name != "splits"]
    names = simt + [f.name for f in fields(MmaTile) if f.name not in simt]
    names += [f.name for f in fields(GemvTile)]
    for part in (p.strip() for p in text.split(",")):
        name = next((n for n in names if part.startswith(n)), None)
        digits = part[len(name):] if name else ""
        if name is None or not digits.isdigit():
            raise TileSpecError(f"`{part}` in `{text}` is not one of {', '.join(names)} followed "
                                f"by a number (e.g. bm64; wm, wn, stages make a tensor-core "
                                f"tile)")
        if name in values:
            raise TileSpecError(f"`{name}` appears twice in `{text}`")
        values[name] = int(digits)
    try:
        return matrix_tile(values)
    except TypeError:
        raise TileSpecError(f"`{text}` mixes SIMT fields (tm, tn) with tensor-core fields "
                            "(wm, wn, stages) or GEMV fields (rows, warps)") from None


def parse_tile_overrides(specs: Sequence[str]) -> dict[str, MatrixTile]:
    """`--tile` values (`LAYER=bm64,bn64,bk8,tm4,tn4`, or `all=...`) by layer name; errors are
    one `CompileError` (E0440) listing every bad value."""
    overrides: dict[str, MatrixTile] = {}
    problems = []
    for spec in specs:
        layer, sep, text = spec.partition("=")
        if not sep or not layer.strip() or not text.strip():
            problems.append(f"--tile `{spec}` is not of the form LAYER=bm64,bn64,bk8,tm4,tn4")
            continue
        try:
            overrides[layer.strip()] = parse_tile(text.strip())
        except TileSpecError as exc:
            problems.append(f"--tile `{spec}`: {exc}")
    if problems:
        raise CompileError([Diagnostic("E0440", problem, help="e.g. --tile "
                                       "basic_0.conv2d_1=bm32,bn32,bk8,tm4,tn4 or --tile "
                                       "all=bm64,bn64") for problem in problems])
    return overrides


def _names(graph: Graph, node: Node) -> set[str]:
    found = anchor(graph, node)
    names = {node.id}
    if found is not None:
        names |= {found[0].id} | ({found[0].layer} if found[0].layer else set())
    return names


def resolve_overrides(graph: Graph, overrides: Mapping[str, MatrixTile],
                      precision: str = "f32") -> dict[str, MatrixTile]:
    """Tile overrides by layer name (`basic_0.conv2d_1`), node id or `all`, as tiles by the id
    `generate` looks up; an unknown or non-GEMM name is a `CompileError` (E0441). A
    tensor-core tile given for `all` applies to the kernels that take one (f16 and bf16 dense
    and matmul, and f32 ones under `precision` tf32); the others keep their tiles."""
    kernels = [node for node in graph.compute_nodes if gemm_shape(graph, node) is not None]
    resolved: dict[str, MatrixTile] = {}
    if "all" in overrides:
        every = overrides["all"]
        resolved.update(dict.fromkeys(
            (node.id for node in kernels if _shape(graph, node, precision).takes(every)),
            every))
    for name, tile in overrides.items():
        if name == "all":
            continue
        node = next((n for n in kernels if name in _names(graph, n)), None)
        if node is None:
            raise error("E0441", _no_gemm_layer(graph, name),
                        help="layers with GEMM tiles here: " + _listing(graph, kernels))
        resolved[node.id] = tile
    return resolved


def _shape(graph: Graph, node: Node, precision: str = "f32") -> GemmShape:
    shape = gemm_shape(graph, node, precision=precision)
    assert shape is not None, node.id
    return shape


def _no_gemm_layer(graph: Graph, name: str) -> str:
    for node in graph.compute_nodes:
        for member in node.members:
            if name in (member.id, member.layer):
                if node.region is not None and member.id != node.region.anchor_id:
                    found = anchor(graph, node)
                    head = found[0] if found is not None else node
                    if gemm_shape(graph, node) is not None:
                        return (f"--tile: layer `{name}` is fused into the kernel of "
                                f"`{head.layer or head.id}`; give the tile for that layer")
                    # A GEMM-family op outside the GEMM family: a depthwise conv.
                    what = f"depthwise {head.op}" if head.op in gemm_ops() else head.op
                    return (f"--tile: layer `{name}` is fused into a {what} kernel, which "
                            "takes no GEMM tile")
                if member.op in gemm_ops():
                    return (f"--tile: layer `{name}` is a depthwise {member.op}, which has its "
                            "own kernel and takes no GEMM tile")
                written = [op for op in gemm_ops() if not REGISTRY[op].internal]
                return f"--tile: layer `{name}` is a {member.op}; tiles apply to " \
                       f"{_listed(written)} layers"
    return f"--tile: no layer `{name}` in the optimised network"


def _listed(names: Sequence[str]) -> str:
    """`a, b and c`."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def _listing(graph: Graph, kernels: Sequence[Node]) -> str:
    names = [_layer_name(graph, node) for node in kernels]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return shown or "none"


def _layer_name(graph: Graph, node: Node) -> str:
    found = anchor(graph, node)
    member = found[0] if found is not None else node
    return member.layer or member.id


# Choosing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileChoice:
    node: str
    """The id `generate(graph, tiles)` looks the tile up by (a fused node's own id)."""
    layer: str
    """The anchor's layer name (`basic_0.conv2d_1`), or its node id."""
    shape: GemmShape
    tile: MatrixTile
    source: str
    """heuristic | tuning-db | --tile"""
    why: str

    @property
    def blocks(self) -> int:
        return self.shape.blocks(self.tile)

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "layer": self.layer, "op": self.shape.op, "m": self.shape.m,
                "n": self.shape.n, "k": self.shape.k, "count": self.shape.count,
                "tile": tile_text(self.tile), "stages": getattr(self.tile, "stages", 1),
                "splits": splits_of(self.tile), "blocks": self.blocks,
                "source": self.source, "why": self.why}


def plan_tiles(graph: Graph, arch: str = DEFAULT_ARCH,
               overrides: Mapping[str, MatrixTile] | None = None, *, batch: int = 1,
               tuning_db: TuningDb | str | Path | None = None,
               precision: str = "f32") -> list[TileChoice]:
    """The tile of every GEMM and convolution kernel of `graph`, in graph order, with why.

    `overrides` (by layer name, node id or `all`) win over `tuning_db` (default: the file
    named by `NETC_TUNING_DB`, if set), which wins over the heuristic. Every tile is checked
    against `arch`'s limits; an override that breaks them is a `CompileError` (E0441).
    `precision` `tf32` puts f32 dense and matmul on TF32 tensor cores (a `Tf32Tile`, where a
    tensor-core tile is given as an `MmaTile`)."""
    target = planning_arch(arch)
    database = _tuning_db(tuning_db)
    forced = resolve_overrides(graph, overrides or {}, precision)
    choices = []
    for node in graph.compute_nodes:
        shape = gemm_shape(graph, node, batch, precision)
        if shape is None:
            continue
        layer = _layer_name(graph, node)
        stored = database.lookup(shape, arch) if database is not None else None
        if node.id in forced:
            tile, source, why = forced[node.id], "--tile", "given with --tile"
        elif stored is not None and database is not None:
            tile, source, why = stored, "tuning-db", f"entry in {Path(database.path).name}"
        else:
            tile, why = heuristic_tile(shape, target)
            source = "heuristic"
        if shape.family == "tf32" and isinstance(tile, MmaTile):
            tile = Tf32Tile.of(tile)
        problem = misfit(tile, target) if shape.takes(tile) else (
            f"GEMV tiles take dense and matmul, not {shape.op}" if isinstance(tile, GemvTile)
            else f"split-K takes {_listed(SPLIT_K_OPS)}, not {shape.op}" if tile.splits > 1
            and shape.op not in SPLIT_K_OPS
            else shape.conv_misfit(tile)
            or f"tensor-core tiles take f16 and bf16 dense, matmul and conv2d (f32 dense and "
                 f"matmul with --precision tf32), not {shape.dtype} {shape.op}")
        if problem is not None:
            raise error("E0441", f"tile {tile_text(tile)} for layer `{layer}` ({source}) "
                        f"cannot run: {problem}",
                        help="threads = (bm/tm)*(bn/tn) (SIMT) or 32*wm*wn (tensor cores) "
                             "must be whole warps, at most "
                             f"{target.max_threads_per_block}; shared memory at most "
                             f"{target.shared_bytes_per_block} bytes (docs/kernels.md)")
        choices.append(TileChoice(node.id, layer, shape, tile, source, why))
    return choices


def choose_tiles(graph: Graph, arch: str = DEFAULT_ARCH,
                 overrides: Mapping[str, MatrixTile] | None = None, *, batch: int = 1,
                 tuning_db: TuningDb | str | Path | None = None,
                 precision: str = "f32") -> dict[str, MatrixTile]:
    """`{node id: GemmTile or MmaTile}` for every GEMM and convolution kernel of `graph`: what
    `generate(graph, tiles=...)` takes. See `plan_tiles`."""
    return {choice.node: choice.tile
            for choice in plan_tiles(graph, arch, overrides, batch=batch, tuning_db=tuning_db,
                                     precision=precision)}


def format_tile_table(choices: Sequence[TileChoice]) -> str:
    """The table of tile choices for reports: layer, op, M/N/K, tile, blocks, why."""
    rows = [("layer", "op", "M x N x K", "tile", "blocks", "why")]
    rows += [(c.layer, c.shape.op, str(c.shape), tile_text(c.tile), str(c.blocks),
              c.why if c.source == "heuristic" else f"{c.source}: {c.why}") for c in choices]
    lines = format_table(rows, right={4}, indent="  ")
    return "\n".join(lines) if choices else "  (no GEMM or convolution kernels)"
