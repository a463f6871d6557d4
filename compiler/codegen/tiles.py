"""Tile configurations: how a kernel family divides its work among blocks and threads.

A configuration is data (a small frozen dataclass), chosen per IR node: `generate(graph,
tiles={node_id: GemmTile(...)})` overrides the default, which is what a tiling pass will do.
Every configuration validates itself against the limits of the GPUs netc targets (sm_80 and
sm_90): at most 1024 threads a block, whole warps, 48 KiB of (default) shared memory a block,
and few enough registers a thread that the kernel cannot spill (the register estimate is
checked against `ptxas -v` by the test suite).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_THREADS = 1024
WARP = 32
MAX_SHARED_BYTES = 48 * 1024
"""The shared memory a block may use without opting in to more (cudaFuncSetAttribute)."""
REGISTERS_PER_SM = 65536
MAX_REGISTERS_PER_THREAD = 255
GEMM_OVERHEAD_REGISTERS = 40
"""Registers a GEMM thread needs besides its tiles: addresses, indices, loop counters."""
FLOAT_BYTES = 4
MAX_SPLITS = 16
"""The most blocks split-K deals one tile's reduction out to (`GemmTile.splits`)."""


class TileError(ValueError):
    """A tile configuration that cannot run (a bug in whoever chose it, not the user's input)."""


@dataclass(frozen=True)
class GemmTile:
    """The tiles of the GEMM family (dense, matmul, conv2d as an implicit GEMM).

    A block computes a `bm` x `bn` tile of the output, walking the reduction in steps of `bk`;
    each of its (bm / tm) * (bn / tn) threads holds a `tm` x `tn` tile of accumulators.
    `splits` > 1 is split-K: `splits` blocks share each tile, each summing a run of whole
    k-tiles into float partials that a second kernel adds (templates/gemm.cuh). It is a grid
    dimension, not part of the kernel (`suffix`).
    """

    bm: int = 64
    bn: int = 64
    bk: int = 8
    tm: int = 4
    tn: int = 4
    splits: int = 1

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def shared_bytes(self) -> int:
        # Two buffers of A [bk][pitch(bm)] and B [bk][pitch(bn)] in float (templates/gemm.cuh,
        # NetcGemmShape): a pitch keeps rows 16-byte aligned and off each other's banks.
        return FLOAT_BYTES * 2 * self.bk * (_gemm_pitch(self.bm) + _gemm_pitch(self.bn))

    @property
    def registers_estimate(self) -> int:
        return self.tm * self.tn + self.tm + self.tn + GEMM_OVERHEAD_REGISTERS

    @property
    def suffix(self) -> str:
        return f"bm{self.bm}_bn{self.bn}_bk{self.bk}_tm{self.tm}_tn{self.tn}"

    def validate(self) -> GemmTile:
        _check_positive(self, ("bm", "bn", "bk", "tm", "tn"))
        _check_splits(self)
        if self.bm % self.tm or self.bn % self.tn:
            raise TileError(f"{self}: tm must divide bm and tn must divide bn")
        _check_block(self, "shrink tm * tn")
        return self


def _gemm_pitch(extent: int) -> int:
    """A shared tile row of the SIMT GEMM: `extent` rounded up to 4 floats, plus 4."""
    return -(-extent // 4) * 4 + 4


HALF_BYTES = 2
MMA_SHAPE = (16, 8, 16)
"""m, n, k of the tensor-core instruction the MMA family issues (mma.sync m16n8k16)."""


@dataclass(frozen=True)
class MmaTile:
    """The tiles of the tensor-core GEMM (16-bit dense and matmul; `templates/gemm_mma.cuh`).

    A block computes a `bm` x `bn` tile of the output with `wm` x `wn` warps, each warp a
    (bm / wm) x (bn / wn) sub-tile of 16x8 mma tiles, walking the reduction in steps of `bk`
    through `stages` shared-memory buffers filled by cp.async; `splits` as `GemmTile`'s.
    """

    bm: int = 128
    bn: int = 128
    bk: int = 32
    wm: int = 2
    wn: int = 4
    stages: int = 2
    splits: int = 1

    @property
    def threads(self) -> int:
        return WARP * self.wm * self.wn

    @property
    def shared_bytes(self) -> int:
        # A [bm][bk + 8] and B as [bn][bk + 8] or [bk][bn + 8] a stage, whichever layout is
        # larger; at least what the SIMT fallback (sm_75) stages.
        a = self.bm * (self.bk + 8)
        b = max(self.bn * (self.bk + 8), self.bk * (self.bn + 8))
        fallback = GemmTile(self.bm, self.bn, 8).shared_bytes
        return max(HALF_BYTES * self.stages * (a + b), fallback)

    @property
    def registers_estimate(self) -> int:
        # Accumulators (a warp's tile over 32 lanes) plus one k-step's A and B fragments.
        warp_m, warp_n = self.bm // self.wm, self.bn // self.wn
        return (warp_m * warp_n // WARP + 4 * (warp_m // 16) + 2 * (warp_n // 8)
                + GEMM_OVERHEAD_REGISTERS)

    @property
    def suffix(self) -> str:
        return f"mma_bm{self.bm}_bn{self.bn}_bk{self.bk}_wm{self.wm}_wn{self.wn}_s{self.stages}"

    def validate(self) -> MmaTile:
        _check_positive(self, ("bm", "bn", "bk", "wm", "wn"))
        _check_splits(self)
        if self.bm % (16 * self.wm) or self.bn % (16 * self.wn):
            raise TileError(f"{self}: a warp's tile (bm/wm x bn/wn) must be whole 16x16 steps")
        if self.bk % 16:
            raise TileError(f"{self}: bk must be a multiple of 16")
        if self.stages < 2:
            raise TileError(f"{self}: the cp.async pipeline needs 2 stages at least")
        _check_block(self, "use more warps")
        return self


TF32_MMA_SHAPE = (16, 8, 8)
"""m, n, k of the TF32 tensor-core instruction (mma.sync m16n8k8 .tf32)."""


@dataclass(frozen=True)
class Tf32Tile(MmaTile):
    """The tiles of the TF32 tensor-core GEMM (f32 dense and matmul under `--precision tf32`;
    `templates/gemm_tf32.cuh`): an `MmaTile`'s fields and block, with f32 staged in shared
    memory and k-steps of 8. An MmaTile given for such a GEMM (`--tile`, the tuning database)
    becomes one (`Tf32Tile.of`)."""

    bk: int = 16

    @classmethod
    def of(cls, tile: MmaTile) -> Tf32Tile:
        return tile if isinstance(tile, Tf32Tile) else cls(
            tile.bm, tile.bn, tile.bk, tile.wm, tile.wn, tile.stages, tile.splits)

    @property
    def shared_bytes(self) -> int:
        # A [bm][bk + 4] and B as [bn][bk + 4] or [bk][bn + 8] a stage, in float.
        a = self.bm * (self.bk + 4)
        b = max(self.bn * (self.bk + 4), self.bk * (self.bn + 8))
        fallback = GemmTile(self.bm, self.bn, 8).shared_bytes
        return max(FLOAT_BYTES * self.stages * (a + b), fallback)

    @property
    def suffix(self) -> str:
        return f"tf32_{super().suffix}"

    def validate(self) -> Tf32Tile:
        _check_positive(self, ("bm", "bn", "bk", "wm", "wn"))
        _check_splits(self)
        if self.bm % (16 * self.wm) or self.bn % (16 * self.wn):
            raise TileError(f"{self}: a warp's tile (bm/wm x bn/wn) must be whole 16x16 steps")
        if self.bk % TF32_MMA_SHAPE[2]:
            raise TileError(f"{self}: bk must be a multiple of {TF32_MMA_SHAPE[2]}")
        if self.stages < 2:
            raise TileError(f"{self}: the cp.async pipeline needs 2 stages at least")
        _check_block(self, "use more warps")
        return self


GEMV_MAX_ROWS = 8
"""The most rows (float accumulators a thread) a GemvTile takes."""
GEMV_OVERHEAD_REGISTERS = 24
"""Registers a GEMV thread needs besides its accumulators: one 16-byte weight vector and one of
A (as floats, at most 8 + 8 for 16-bit types), addresses, loop counters."""


@dataclass(frozen=True)
class GemvTile:
    """The tiles of the GEMV kernel (dense and matmul with few rows; `templates/gemv.cuh`).

    A block of `warps` warps computes `rows` rows of C, each thread a float accumulator per
    row: dense (B the [N, K] weight) a column a warp, the lanes splitting K; matmul (B as
    [K, N]) 32 columns a block, a column a lane, the warps splitting K.
    """

    rows: int = 1
    warps: int = 4

    @property
    def threads(self) -> int:
        return WARP * self.warps

    def columns(self, b_transposed: bool) -> int:
        """The columns of C a block computes: a warp's each (dense), or a lane's (matmul)."""
        return self.warps if b_transposed else WARP

    @property
    def shared_bytes(self) -> int:
        # Matmul's partial sums, one a row and thread; dense uses none (`kernels` launches 0).
        return FLOAT_BYTES * self.rows * self.threads

    @property
    def registers_estimate(self) -> int:
        return self.rows + 16 + GEMV_OVERHEAD_REGISTERS

    @property
    def suffix(self) -> str:
        return f"rows{self.rows}_warps{self.warps}"

    def validate(self) -> GemvTile:
        _check_positive(self, ("rows", "warps"))
        if self.rows > GEMV_MAX_ROWS:
            raise TileError(f"{self}: at most {GEMV_MAX_ROWS} rows (float accumulators a "
                            "thread); more rows take a GemmTile")
        _check_threads(self, self.threads)
        _check_shared(self, self.shared_bytes)
        return self


MatrixTile = GemmTile | MmaTile | GemvTile
"""A tile of the GEMM family: SIMT (any dtype), tensor cores (16-bit dense and matmul) or the
GEMV kernel (dense and matmul with few rows)."""


@dataclass(frozen=True)
class RowTile:
    """The tiles of the row family (softmax, log_softmax, layernorm, global_avgpool).

    `threads_per_row` threads (whole warps) cooperate on a row; a block holds `rows_per_block`
    rows.
    """

    threads_per_row: int = 32
    rows_per_block: int = 8

    @property
    def threads(self) -> int:
        return self.threads_per_row * self.rows_per_block

    @property
    def shared_bytes(self) -> int:
        # One partial (max, sum) pair of 8 bytes per warp, when a row spans several warps.
        if self.threads_per_row == WARP:
            return 0
        return 8 * self.rows_per_block * (self.threads_per_row // WARP)

    @property
    def suffix(self) -> str:
        return f"tpr{self.threads_per_row}_rpb{self.rows_per_block}"

    def validate(self) -> RowTile:
        if self.threads_per_row < WARP or self.threads_per_row % WARP:
            raise TileError(f"{self}: threads_per_row must be a positive multiple of {WARP}")
        if self.rows_per_block < 1:
            raise TileError(f"{self}: rows_per_block must be positive")
        _check_threads(self, self.threads)
        _check_shared(self, self.shared_bytes)
        return self


@dataclass(frozen=True)
class BlockTile:
    """The block size of the one-thread-per-element families (elementwise, pool, concat)."""

    threads: int = 256

    @property
    def suffix(self) -> str:
        return f"b{self.threads}"

    def validate(self) -> BlockTile:
        _check_threads(self, self.threads)
        return self


MAX_DEPTHWISE_COLUMNS = 8
"""A thread's outputs along a row, each a float accumulator of every tap."""


@dataclass(frozen=True)
class DepthwiseTile:
    """The tiles of the depthwise convolution family (conv2d with groups = in channels).

    A thread computes `columns` consecutive outputs of one output row in registers; a block of
    `threads` threads covers consecutive positions of one or more channel planes.
    """

    threads: int = 256
    columns: int = 4

    @property
    def suffix(self) -> str:
        return f"c{self.columns}_b{self.threads}"

    def validate(self) -> DepthwiseTile:
        if not 1 <= self.columns <= MAX_DEPTHWISE_COLUMNS:
            raise TileError(f"{self}: columns must be 1 to {MAX_DEPTHWISE_COLUMNS}")
        _check_threads(self, self.threads)
        return self


Tile = GemmTile | MmaTile | GemvTile | RowTile | BlockTile | DepthwiseTile

DEFAULT_GEMM = GemmTile()
DEFAULT_MMA = MmaTile()
DEFAULT_BLOCK = BlockTile()
LONG_ROW = 1024
"""Rows at least this long get a block of 256 threads each, shorter ones a warp."""


def default_row_tile(length: int) -> RowTile:
    return RowTile(256, 1) if length >= LONG_ROW else RowTile(32, 8)


def default_depthwise_tile(out_width: int) -> DepthwiseTile:
    """4 columns a thread (each tap is loaded once for 4 outputs), fewer where a row's last
    segment would waste more than a quarter of the columns the row computes (a row of 5: 2
    columns; of 1 or 2: as many as the row has)."""
    columns = next(c for c in (4, 2, 1) if 4 * (-out_width % c) <= -(-out_width // c) * c)
    return DepthwiseTile(columns=columns)


def _check_positive(tile: Tile, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(tile, name) < 1:
            raise TileError(f"{tile}: {name} must be positive")


def _check_splits(tile: GemmTile | MmaTile) -> None:
    if not 1 <= tile.splits <= MAX_SPLITS:
        raise TileError(f"{tile}: splits must be 1 to {MAX_SPLITS}")


def _check_block(tile: GemmTile | MmaTile, fewer_registers: str) -> None:
    """A matrix tile's threads, shared memory and registers fit a block; `fewer_registers`
    says how to need fewer."""
    _check_threads(tile, tile.threads)
    _check_shared(tile, tile.shared_bytes)
    register_limit = min(MAX_REGISTERS_PER_THREAD, REGISTERS_PER_SM // tile.threads)
    if tile.registers_estimate > register_limit:
        raise TileError(
            f"{tile}: about {tile.registers_estimate} registers a thread, but "
            f"{tile.threads} threads a block leave {register_limit}; {fewer_registers}")


def _check_threads(tile: Tile, threads: int) -> None:
    if not WARP <= threads <= MAX_THREADS or threads % WARP:
        raise TileError(f"{tile}: {threads} threads a block; netc needs whole warps, "
                        f"at most {MAX_THREADS}")


def _check_shared(tile: Tile, shared: int) -> None:
    if shared > MAX_SHARED_BYTES:
        raise TileError(f"{tile}: {shared} bytes of shared memory a block, more than "
                        f"{MAX_SHARED_BYTES}")
