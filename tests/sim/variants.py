"""Every kernel variant the code-generation tests may generate, in one catalog.

The sim tests draw their tile configurations from the lists below, and `check_graph` fails a
test whose plan uses a kernel outside `catalog()`. The ptxas test compiles the whole catalog
with nvcc, so "every variant the tests run compiles without spills" holds by construction.
"""

from __future__ import annotations

from functools import cache

from netc.codegen import kernels
from netc.codegen.kernels import ACTIVATIONS, BATCHNORM, BINARY_OPERATORS, COPY, FILL, KernelSpec
from netc.codegen.tiles import BlockTile, GemmTile, RowTile

GEMM_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4), GemmTile(48, 24, 5, 3, 3),
              GemmTile(128, 32, 16, 8, 2))
"""Square and oblong tiles, powers of two and not (48 x 24 with bk 5), small and large
register tiles."""
CONV_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4), GemmTile(48, 24, 5, 3, 3))
ROW_TILES = (RowTile(32, 8), RowTile(64, 2), RowTile(96, 1), RowTile(256, 1))
"""A warp per row, and rows over 2, 3 and 8 warps."""
BLOCK_TILES = (BlockTile(256), BlockTile(96))
LOW_PRECISION = ("f16", "bf16")
LOW_PRECISION_GEMM_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4))
LOW_PRECISION_CONV_TILES = (GemmTile(),)
LOW_PRECISION_ROW_TILES = (RowTile(32, 8), RowTile(256, 1))
MAX_ELEMENTWISE_RANK = 5


def _elementwise_ranks() -> list[tuple[kernels.Elementwise, range]]:
    """Each elementwise function with the ranks (after merging dims) it can be launched at."""
    functions: list[tuple[kernels.Elementwise, range]] = [
        (function, range(1)) for function in ACTIVATIONS.values()]
    for op in BINARY_OPERATORS:
        functions.append((kernels.binary(op, "tt"), range(MAX_ELEMENTWISE_RANK + 1)))
        # A scalar constant operand leaves one tensor, read at the output's index.
        functions += [(kernels.binary(op, operands), range(1)) for operands in ("ts", "st", "ss")]
    functions += [(BATCHNORM, range(4)), (COPY, range(MAX_ELEMENTWISE_RANK + 1)),
                  (FILL, range(1))]
    return functions


@cache
def catalog() -> dict[str, KernelSpec]:
    specs: list[KernelSpec] = []
    for dtype in ("f32", *LOW_PRECISION):
        low = dtype in LOW_PRECISION
        for tile in LOW_PRECISION_GEMM_TILES if low else GEMM_TILES:
            specs += [kernels.gemm_kernel(dtype, tile, b_transposed=transposed, has_bias=bias)
                      for transposed in (True, False) for bias in (True, False)]
        for tile in LOW_PRECISION_CONV_TILES if low else CONV_TILES:
            specs += [kernels.conv2d_kernel(dtype, tile, has_bias=bias) for bias in (True, False)]
        for tile in LOW_PRECISION_ROW_TILES if low else ROW_TILES:
            specs += [kernels.row_kernel(op, dtype, tile) for op in kernels.ROW_OPERATIONS]
        for block in BLOCK_TILES[:1] if low else BLOCK_TILES:
            specs += [kernels.pool_kernel(dtype, block, is_max=is_max) for is_max in (True, False)]
            specs.append(kernels.concat_kernel(dtype, block))
            specs += [kernels.elementwise_kernel(function, dtype, rank, block)
                      for function, ranks in _elementwise_ranks() for rank in ranks]
    return {spec.name: spec for spec in specs}
