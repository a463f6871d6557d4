"""Every kernel variant the code-generation tests may generate, in one catalog.

The sim tests draw their tile configurations from the lists below, and `check_graph` fails a
test whose plan uses a kernel outside `catalog()`. The ptxas test compiles the whole catalog
with nvcc, so "every variant the tests run compiles without spills" holds by construction.
"""

from __future__ import annotations

import dataclasses
from functools import cache

from netc.codegen import kernels, pointwise
from netc.codegen.emit import lower
from netc.codegen.kernels import KernelSpec
from netc.codegen.pointwise import PointwiseCode
from netc.codegen.tiles import (
    BlockTile,
    DepthwiseTile,
    GemmTile,
    GemvTile,
    MmaTile,
    RowTile,
    Tf32Tile,
)
from netc.codegen.tiling import CANDIDATES, choose_tiles, parse_tile_overrides
from netc.ir import ALL_DTYPES, FLOAT_DTYPES, INTEGER_DTYPES, Attrs, Node, Region, TensorType
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder
from netc.ops.pooling import GRAD_MODES
from tests.sim.networks import NETWORKS, network

GEMM_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4), GemmTile(48, 24, 5, 3, 3),
              GemmTile(128, 32, 16, 8, 2))
"""Square and oblong tiles, powers of two and not (48 x 24 with bk 5), small and large
register tiles."""
CONV_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4), GemmTile(48, 24, 5, 3, 3))
ROW_TILES = (RowTile(32, 8), RowTile(64, 2), RowTile(96, 1), RowTile(256, 1))
"""A warp per row, and rows over 2, 3 and 8 warps."""
BLOCK_TILES = (BlockTile(256), BlockTile(96))
TILING_TILES = tuple(tile for tile in CANDIDATES.values()
                     if isinstance(tile, GemmTile) and tile not in GEMM_TILES)
"""Every other SIMT tile the tiling heuristic may choose, for GEMMs and convs in every dtype
(tests/sim/test_tile_invariance.py runs each on ragged shapes)."""
GEMV_TILES = tuple(tile for tile in CANDIDATES.values() if isinstance(tile, GemvTile))
"""Every GEMV tile the heuristic may choose, in every dtype: dense with and without a bias,
and matmul (tests/sim/test_gemv.py)."""
MMA_TILES = tuple(tile for tile in CANDIDATES.values() if type(tile) is MmaTile)
"""Every tensor-core tile the heuristic may choose (f16 and bf16 dense, with and without a
bias, and matmul, tests/sim/test_gemm_mma.py; conv2d, tests/sim/test_conv_mma.py)."""
TF32_TILES = tuple(tile for tile in CANDIDATES.values() if isinstance(tile, Tf32Tile))
"""Every TF32 tile the heuristic may choose (f32 dense with and without a bias, and matmul,
under --precision tf32; tests/sim/test_gemm_tf32.py)."""
LOW_PRECISION = ("f16", "bf16")
LOW_PRECISION_GEMM_TILES = (GemmTile(), GemmTile(32, 32, 8, 4, 4))
LOW_PRECISION_CONV_TILES = (GemmTile(),)
LOW_PRECISION_ROW_TILES = (RowTile(32, 8), RowTile(256, 1))
MAX_ELEMENTWISE_RANK = 5
ATTENTION_HEADS = ((1, 1), (8, 8), (33, 7), (24, 40), (128, 128), (64, 64))
"""(q/k features, v features) of the fused attention kernels the tests draw (compile-time in
that family): odd and tiny ones, the largest it takes, and a common head size (last: the
f16 and bf16 tests draw it alone)."""
ATTENTION_MASKED_HEADS = ((33, 7), (64, 64))
"""The head sizes drawn with a bool and an additive mask too."""
DEPTHWISE_KERNELS = ((3, 3), (5, 5), (7, 7), (1, 3), (3, 1))
"""Kernel sizes (compile-time in the depthwise family) the f32 tests draw: MobileNet's,
EfficientNet's, ConvNeXt's, oblong ones (and conv1d's 1 x k); f16 and bf16 draw the first."""
DEPTHWISE_TILES = tuple(DepthwiseTile(columns=columns) for columns in (1, 2, 4))
"""What `default_depthwise_tile` chooses, by output width."""
DEPTHWISE_NETWORK = """
# MobileNetV2's depthwise stage: conv (groups = channels) |> batchnorm |> relu6, a residual.
network depthwise {
    input x: DTYPE[N, 6, 9, 13]
    y = conv2d(x, 6, kernel=3, padding=1, groups=6, bias=false) |> batchnorm |> relu6
    output residual = x + y
    output strided = conv2d(x, 12, kernel=5, stride=2, padding=2, groups=6) |> hardswish
}
"""
GEMV_NETWORK = """
# Layers the GEMV kernel takes at batch 1 (M = N): dense with and without a bias, epilogues fused.
network gemv {
    input x: DTYPE[N, 33]
    input w: DTYPE[33, 40]
    output y = dense(x, 127) |> relu
    output z = dense(x, 31, bias=false)
    output p = matmul(x, w) |> sigmoid
}
"""


SPLIT_K_GEMM_TILES = {
    "f32": (GemmTile(32, 32, 8, 4, 4, splits=3), GemmTile(48, 24, 5, 3, 3, splits=16),
            Tf32Tile(32, 32, 32, 1, 1, 3, splits=4)),
    "bf16": (MmaTile(32, 32, 32, 1, 1, 4, splits=3), MmaTile(64, 64, 32, 2, 2, 3, splits=16)),
}
"""Split-K GEMM tiles by dtype (tests/sim/test_split_k.py): few and many splits (some empty
on short K), an odd k-tile, TF32 and the tensor cores."""
SPLIT_K_CONV_TILES = {"f32": SPLIT_K_GEMM_TILES["f32"][:2],
                      "bf16": SPLIT_K_GEMM_TILES["bf16"][:1]}
SPLIT_K_NETWORK = """
# Split-K under fused epilogues: conv + bias |> relu, a residual, dense |> relu, matmul.
network splitk {
    input x: DTYPE[N, 5, 9, 11]
    input v: DTYPE[N, 77]
    input w: DTYPE[77, 33]
    output conv = conv2d(x, 7, kernel=3, stride=2, padding=1) |> relu
    output residual = relu(conv2d(x, 5, kernel=3, padding=1, bias=false) + x)
    output dense = dense(v, 33) |> relu
    output product = matmul(v, w) |> sigmoid
}
"""
SPLIT_K_OVERRIDES = {"f32": "all=bm32,bn32,bk8,tm4,tn4,splits3",
                     "bf16": "all=bm32,bn32,bk32,wm1,wn1,stages4,splits3"}
"""The `--tile` SPLIT_K_NETWORK's layers take, by dtype."""


def split_k_kernels() -> list[KernelSpec]:
    specs = []
    for dtype, tiles in SPLIT_K_GEMM_TILES.items():
        specs += [kernels.gemm_kernel(dtype, tile, b_transposed=transposed, has_bias=False,
                                      split_k=True)
                  for tile in tiles for transposed in (True, False)]
        specs += [kernels.conv2d_kernel(dtype, tile, has_bias=False, split_k=True)
                  for tile in SPLIT_K_CONV_TILES[dtype]]
        specs += [kernels.split_k_reduce_kernel(dtype, has_bias=bias) for bias in (True, False)]
        graph = network(SPLIT_K_NETWORK, dtype, 2)
        overrides = parse_tile_overrides([SPLIT_K_OVERRIDES[dtype]])
        specs += lower(graph, choose_tiles(graph, overrides=overrides)).kernels.values()
    return specs


def standalone(op: str, operands: str = "") -> PointwiseCode:
    """The code of `op` alone, its tensor operands read ("t") or scalar constants ("s")."""
    opdef = REGISTRY[op]
    operands = operands or "t" * (5 if op == "batchnorm" else opdef.min_inputs)
    shape = (2, 3)
    inputs = [Node(f"i{k}", "input" if kind == "t" else "constant", (),
                   Attrs() if kind == "t" else Attrs(value=0.5),
                   TensorType("f32", shape if kind == "t" else ()))
              for k, kind in enumerate(operands)]
    attrs = Attrs({spec.name: spec.default for spec in opdef.attrs})
    body = [Node("n", op, Region.arguments(len(operands)), attrs,
                 TensorType("f32", shape))]
    return pointwise.build(body, inputs, lambda value: value, shape).code


def _pointwise_variants() -> list[tuple[PointwiseCode, range]]:
    """Each single-op code with the ranks (after merging dims) it can be launched at."""
    any_rank = range(MAX_ELEMENTWISE_RANK + 1)
    # Activations read one input of the output's shape; a scalar constant operand leaves at
    # most one tensor, of the output's shape.
    variants = [(standalone(op), range(1)) for op in
                ("relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu")]
    for op in ("add", "sub", "mul"):
        variants.append((standalone(op, "tt"), any_rank))
        variants += [(standalone(op, operands), range(1)) for operands in ("ts", "st", "ss")]
    copy = copy_code()
    variants += [(standalone("batchnorm"), range(1, 4)), (copy, any_rank),
                 (pointwise.fill(0.0).code, range(1)), (dropout_code(), range(1, 2))]
    return variants


def dropout_code() -> PointwiseCode:
    """Training-mode dropout alone: x, and the i64 scalars seed and step (broadcast: rank 1)."""
    inputs = [Node("x", "input", (), Attrs(), TensorType("f32", (2, 3))),
              *(Node(name, "input", (), Attrs(), TensorType("i64", ())) for name in ("s", "t"))]
    body = [Node("n", "dropout_train", Region.arguments(3), Attrs(p=0.5, stream=0),
                 TensorType("f32", (2, 3)))]
    return pointwise.build(body, inputs, lambda value: value, (2, 3)).code


def copy_code() -> PointwiseCode:
    """The code of a strided copy (transpose, expand, slice, select)."""
    return pointwise.gather((2,), "", (1,)).code


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
            specs += [kernels.conv_transpose2d_kernel(dtype, tile, has_bias=bias)
                      for bias in (True, False)]
        for tile in TILING_TILES:
            # In 16 bits, the dense and conv forms (both with a bias) stand for the family.
            flags = [(True, True)] if low else [(t, b) for t in (True, False) for b in (True, False)]
            specs += [kernels.gemm_kernel(dtype, tile, b_transposed=transposed, has_bias=bias)
                      for transposed, bias in flags]
            specs += [kernels.conv2d_kernel(dtype, tile, has_bias=bias)
                      for bias in ((True,) if low else (True, False))]
        # conv2d's weight gradient: each tile its lowering picks (tests/sim/test_conv_weight_grad.py).
        specs += [kernels.conv2d_weight_grad_kernel(dtype, kernels.weight_grad_tile(rows, columns))
                  for rows in (32, 64) for columns in (32, 64)]
        specs += [kernels.gemm_kernel(dtype, tile, b_transposed=transposed, has_bias=bias)
                  for tile in GEMV_TILES
                  for transposed, bias in ((True, True), (True, False), (False, False))]
        for tile in MMA_TILES if low else TF32_TILES:
            specs += [kernels.gemm_kernel(dtype, tile, b_transposed=transposed, has_bias=bias)
                      for transposed, bias in ((True, True), (True, False), (False, False))]
        for tile in MMA_TILES if low else ():
            # The tensor-core conv (tests/sim/test_conv_mma.py; with a bias: without one it
            # differs by a template flag only, and the networks' convs have their own forms).
            specs.append(kernels.conv2d_kernel(dtype, tile, has_bias=True))
        for tile in LOW_PRECISION_ROW_TILES if low else ROW_TILES:
            specs += [kernels.row_kernel(op, dtype, tile) for op in kernels.ROW_OPERATIONS]
            # Reductions over any axes: up to two kept and two reduced dims after merging
            # (argmax reduces one axis: one reduced dim).
            specs += [kernels.reduce_kernel(op, dtype, tile, kept, reduced)
                      for op in kernels.REDUCTIONS for kept in (1, 2)
                      for reduced in ((1,) if op in kernels.INDEX_REDUCTIONS else (1, 2))]
        for block in BLOCK_TILES[:1] if low else BLOCK_TILES:
            specs += [kernels.pool_kernel(op, dtype, block) for op in kernels.POOL_KINDS]
            specs += [kernels.pool_grad_kernel(mode, dtype, block) for mode in GRAD_MODES]
            specs.append(kernels.concat_kernel(dtype, block))
            specs += [kernels.pad_kernel(mode, rank, dtype, block) for mode in kernels.PAD_MODES
                      for rank in ((2,) if low else range(1, 5))]
            specs += [factory(mode, corners, dtype, block)
                      for factory in (kernels.interpolate_kernel, kernels.interpolate_grad_kernel)
                      for mode, corners in (("nearest", False), ("bilinear", False),
                                            ("bilinear", True))]
            specs += [kernels.gather_kernel(dataclasses.replace(copy_code(), rank=rank), dtype,
                                            block) for rank in range(MAX_ELEMENTWISE_RANK + 1)]
            specs += [kernels.elementwise_kernel(dataclasses.replace(code, rank=rank), dtype,
                                                 block)
                      for code, ranks in _pointwise_variants() for rank in ranks]
    for dtype in ("f32", *LOW_PRECISION):
        for kernel in DEPTHWISE_KERNELS[:1] if dtype in LOW_PRECISION else DEPTHWISE_KERNELS:
            specs += [kernels.depthwise_conv2d_kernel(dtype, tile, kernel, has_bias=bias)
                      for tile in DEPTHWISE_TILES for bias in (True, False)]
    for source, dtype in [*NETWORKS, *((DEPTHWISE_NETWORK, d) for d in ("f32", *LOW_PRECISION)),
                          *((GEMV_NETWORK, d) for d in ("f32", *LOW_PRECISION))]:
        for level in (0, 2):
            graph = network(source, dtype, level)
            specs += lower(graph).kernels.values()
            # What the plan backends (cudasim, cuda) generate: the tiling heuristic's tiles.
            specs += lower(graph, choose_tiles(graph)).kernels.values()
    specs += integer_kernels()
    specs += integer_arithmetic_kernels()
    specs += split_k_kernels()
    specs += [kernels.attention_kernel(dtype, features, value_features, causal, mask)
              for dtype in ("f32", *LOW_PRECISION)
              for features, value_features in (ATTENTION_HEADS if dtype == "f32"
                                               else ATTENTION_HEADS[-1:])
              for causal in (False, True)
              for mask in ((None, *kernels.ATTENTION_MASKS)
                           if (features, value_features) in ATTENTION_MASKED_HEADS else (None,))]
    return {spec.name: spec for spec in specs}


def integer_kernels() -> list[KernelSpec]:
    """The kernels of `netc.ops.integers` (casts, comparisons, where, masked_fill, embedding,
    arange, triu, tril) for inputs of every dtype, as one unfused graph lowers them."""
    specs: list[KernelSpec] = []
    for dtype in ALL_DTYPES:
        builder = GraphBuilder(f"integers_{dtype}")
        x = builder.input("x", dtype, ("N", 5))
        condition = builder.op("lt", x, builder.input("y", dtype, (1, 5)))
        values = [condition, builder.op("eq", x, other=1.0),
                  builder.op("where", condition, x, x),
                  builder.op("masked_fill", x, condition, value=1.0),
                  builder.op("triu", x), builder.op("tril", x), builder.op("arange", n=5)]
        values += [builder.op("cast", x, dtype=target) for target in ALL_DTYPES]
        if dtype in INTEGER_DTYPES:
            values += [builder.op("embedding", x, num_embeddings=7, dim=5, dtype=table)
                       for table in FLOAT_DTYPES]
        for index, value in enumerate(values):
            builder.output(f"out{index}", value)
        specs += lower(builder.build()).kernels.values()
    return specs


def integer_arithmetic_kernels() -> list[KernelSpec]:
    """The i32 and i64 kernels of arithmetic (an integer number inlined as a literal) and of
    the reductions that take integers: a warp per row and a block per row."""
    specs: list[KernelSpec] = []
    for dtype in INTEGER_DTYPES:
        builder = GraphBuilder(f"arithmetic_{dtype}")
        x = builder.input("x", dtype, ("N", 5))
        y = builder.input("y", dtype, (1, 5))
        values = [builder.op(op, x, y) for op in ("add", "sub", "mul", "maximum", "minimum")]
        values += [builder.op("add", x, builder.constant(-3.0, dtype)),
                   builder.op("neg", x), builder.op("abs", x)]
        for index, value in enumerate(values):
            builder.output(f"out{index}", value)
        specs += lower(builder.build()).kernels.values()
        specs += [kernels.reduce_kernel(op, dtype, tile, 1, reduced)
                  for tile in (ROW_TILES[0], ROW_TILES[-1])
                  for op in ("sum", "amax", "amin", "argmax")
                  for reduced in ((1,) if op in kernels.INDEX_REDUCTIONS else (1, 2))]
    return specs
