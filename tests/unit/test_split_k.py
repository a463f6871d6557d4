"""Split-K without the simulator: the heuristic's choice (`netc.codegen.tiling.split_k`), the
`splits` field of tiles and `--tile`, the launches and buffers the lowering plans, and what
`netc explain` counts. The results on the simulator: tests/sim/test_split_k.py; the kernels
compile for sm_80 and sm_90 without spills with the rest of the catalog
(tests/sim/variants.py `split_k_kernels`, tests/sim/test_codegen_ptxas.py)."""

from __future__ import annotations

import dataclasses

import pytest

from netc.codegen.emit import generate
from netc.codegen.targets import ARCHS
from netc.codegen.tiles import MAX_SPLITS, GemmTile, GemvTile, MmaTile
from netc.codegen.tiling import (
    CANDIDATES,
    MIN_SPLIT_K_TILES,
    GemmShape,
    format_tile_table,
    heuristic_tile,
    matrix_tile,
    parse_tile,
    parse_tile_overrides,
    plan_tiles,
    split_k_seconds,
    splits_of,
    tile_text,
)
from netc.diagnostics import CompileError
from netc.explain import explain
from netc.frontend import load_string
from netc.ir import Graph

pytestmark = pytest.mark.unit

RESNET18_LATE_CONV = GemmShape("conv2d", 512, 49, 4608)
"""layer4's 3x3 convs at batch 1: 512 filters, 7 x 7 pixels, 512 x 3 x 3 taps."""


def net(body: str, inputs: str) -> Graph:
    return load_string(f"network t {{\n    {inputs}\n    {body}\n}}\n", filename="t.net")


# The heuristic ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_resnet18_late_convs_at_batch_1_split_to_fill_the_gpu(arch: str, dtype: str) -> None:
    shape = dataclasses.replace(RESNET18_LATE_CONV, dtype=dtype)
    tile, why = heuristic_tile(shape, arch)
    unsplit = dataclasses.replace(tile, splits=1)
    sms = ARCHS[arch].sms
    assert shape.blocks(unsplit) == 32 < sms  # 16 x 2 tiles of 32 x 32
    # About a wave: at least nine tenths of an SM's worth of blocks each.
    assert tile.splits > 1 and shape.blocks(tile) == 32 * tile.splits >= 0.9 * sms, why
    assert f"x {tile.splits} splits of K" in why
    # No split sits idle, and each sums at least MIN_SPLIT_K_TILES whole k-tiles.
    k_tiles = -(-shape.k // tile.bk)
    run = -(-k_tiles // tile.splits)
    assert run >= MIN_SPLIT_K_TILES and (tile.splits - 1) * run < k_tiles
    # What the model predicts for it beats not splitting by more than 2x.
    target = ARCHS[arch]
    assert 2 * split_k_seconds(shape, tile, target, tile.splits) < \
        split_k_seconds(shape, tile, target, 1)


@pytest.mark.parametrize("shape", [
    GemmShape("conv2d", 64, 3136, 576),        # ResNet-18's stage 1 at batch 1: 196 blocks
    GemmShape("conv2d", 512, 1568, 4608),      # layer4 at batch 32: 256 blocks
    GemmShape("dense", 8192, 4096, 1024),      # large: fills the GPU many times
    GemmShape("conv2d", 512, 49, 16),          # few blocks, but K is 2 k-tiles
    GemmShape("dense", 1, 4096, 4096),         # M = 1: the GEMV kernel, no split
    GemmShape("dense", 4, 4096, 4096, 1, "bf16"),
    GemmShape("conv_transpose2d", 512, 49, 4608),  # its kernel takes no split
])
def test_full_short_or_other_layers_do_not_split(shape: GemmShape) -> None:
    tile, why = heuristic_tile(shape, "sm_90")
    assert splits_of(tile) == 1, why
    assert "splits" not in why and "splits" not in tile_text(tile)


def test_the_1x4096x4096_dense_takes_the_gemv_and_32_rows_take_no_split() -> None:
    gemv, _ = heuristic_tile(GemmShape("dense", 1, 4096, 4096), "sm_90")
    assert isinstance(gemv, GemvTile)
    # 32 rows: 128 blocks of 32 x 32 on 132 SMs; 2 splits would add a half-empty second
    # wave's worth of partials for no better fill.
    tile, _ = heuristic_tile(GemmShape("dense", 32, 4096, 4096), "sm_90")
    assert isinstance(tile, GemmTile) and tile.splits == 1


def test_the_heuristic_splits_only_where_the_model_predicts_a_gain() -> None:
    """Its choice is the least predicted time over no split and every count it may take."""
    target = ARCHS["sm_90"]
    for shape in (RESNET18_LATE_CONV, GemmShape("conv2d", 256, 196, 2304),
                  GemmShape("conv2d", 128, 784, 576), GemmShape("matmul", 64, 64, 4096),
                  GemmShape("conv2d", 512, 49, 4608, 1, "bf16")):
        tile, _ = heuristic_tile(shape, target)
        unsplit = dataclasses.replace(tile, splits=1)
        best = split_k_seconds(shape, unsplit, target, tile.splits)
        assert all(best <= split_k_seconds(shape, unsplit, target, count)
                   for count in range(1, MAX_SPLITS + 1)
                   if count == 1 or shape.blocks(unsplit) * count <= 8 * target.sms)


# Tiles and --tile ---------------------------------------------------------------------------


def test_splits_is_a_tile_field_of_the_tile_syntax() -> None:
    assert parse_tile("bm32,bn32,bk8,tm4,tn4,splits4") == GemmTile(32, 32, 8, 4, 4, splits=4)
    assert parse_tile("splits3,bm64") == GemmTile(bm=64, splits=3)
    mma = parse_tile("bm32,bn32,bk32,wm1,wn1,stages4,splits5")
    assert mma == MmaTile(32, 32, 32, 1, 1, 4, splits=5)
    assert tile_text(mma) == "bm32,bn32,bk32,wm1,wn1,stages4,splits5"
    assert tile_text(GemmTile()) == "bm64,bn64,bk8,tm4,tn4"  # 1 split: not written
    assert parse_tile(tile_text(GemmTile(splits=16))) == GemmTile(splits=16)
    # The kernel is the same whatever the splits (a grid dimension, not a specialisation).
    assert GemmTile(splits=7).suffix == GemmTile().suffix
    with pytest.raises(CompileError, match="E0440"):
        parse_tile_overrides(["all=rows1,splits2"])  # GEMV splits K within its block
    # The tuning database's tiles take the same fields.
    assert matrix_tile({"bm": 32, "bn": 32, "tm": 2, "tn": 2, "splits": 4}) == \
        dataclasses.replace(CANDIDATES["small"], splits=4)


def test_tiles_beyond_the_splits_limit_or_on_other_ops_are_refused() -> None:
    graph = net("output y = conv2d(x, 8, kernel=3) + 1.0", "input x: f32[N, 4, 9, 9]")
    with pytest.raises(CompileError, match=f"splits must be 1 to {MAX_SPLITS}"):
        plan_tiles(graph, "sm_90", parse_tile_overrides([f"all=bm32,splits{MAX_SPLITS + 1}"]))
    transposed = net("output y = conv_transpose2d(x, 8, kernel=3)", "input x: f32[N, 4, 9, 9]")
    layer = plan_tiles(transposed, "sm_90")[0].layer
    with pytest.raises(CompileError, match="split-K takes dense, matmul, matmul_nt, conv2d"):
        plan_tiles(transposed, "sm_90", parse_tile_overrides([f"{layer}=bm32,splits2"]))
    # `all` gives the split to the layers that take one and leaves the others alone.
    (choice,) = plan_tiles(transposed, "sm_90", parse_tile_overrides(["all=bm32,splits2"]))
    assert choice.source == "heuristic" and splits_of(choice.tile) == 1


def test_the_tile_table_and_its_json_show_the_splits_and_the_blocks_they_launch() -> None:
    graph = net("output y = conv2d(x, 512, kernel=3, padding=1) |> relu",
                "input x: f32[N, 512, 7, 7]")
    (choice,) = plan_tiles(graph, "sm_90", batch=1)
    assert choice.tile == dataclasses.replace(CANDIDATES["small"], splits=4)
    assert choice.blocks == 128
    assert choice.to_json()["splits"] == 4 and choice.to_json()["blocks"] == 128
    table = format_tile_table([choice])
    assert "bm32,bn32,bk8,tm2,tn2,splits4" in table and " 128 " in table
    assert "32 x 4 splits of K = 128 for 132 SMs" in table


# Lowering and the cost model ---------------------------------------------------------------


def test_a_split_layer_launches_its_kernel_over_grid_z_then_the_reduce() -> None:
    graph = net("output y = dense(x, 33)", "input x: f32[N, 77]")
    (node,) = [n.id for n in graph.compute_nodes]
    plan = generate(graph, {node: GemmTile(32, 32, 8, 4, 4, splits=5)})
    main, reduce = plan.launches
    assert main.kernel == "netc_gemm_f32_bm32_bn32_bk8_tm4_tn4_nt_splitk"
    assert reduce.kernel == "netc_splitk_reduce_f32_bias"
    assert main.grid_size({"N": 7}) == (1, 2, 5)
    assert reduce.grid_size({"N": 7}) == (1, 1, 1)  # 7 x 33 outputs, 256 a block
    # The partials: a float intermediate of 5 x the output, written by one, read by the other.
    (partials,) = [b for b in plan.buffers if b.role == "intermediate"]
    assert partials.dtype == "f32" and partials.nbytes({"N": 7}) == 4 * 5 * 7 * 33
    assert partials.name in {a.buffer for a in main.args} & {a.buffer for a in reduce.args}


def test_explain_counts_the_split_blocks_and_the_partials_round_trip() -> None:
    text = ("network t {\n    input x: f32[N, 512, 7, 7]\n"
            "    output y = conv2d(x, 512, kernel=3, padding=1) |> relu\n}\n")
    graph = load_string(text, filename="t.net")
    split = explain(graph, compile=False)
    unsplit = explain(graph, compile=False, overrides=parse_tile_overrides(["all=bm32,bn32,"
                                                                            "bk8,tm2,tn2"]))
    (kernel,), (plain,) = split.kernels, unsplit.kernels
    assert kernel.tile.endswith(",splits4") and kernel.launches == 2
    assert (kernel.cost.blocks, plain.cost.blocks) == (128, 32)
    outputs = 512 * 7 * 7
    assert kernel.bytes_moved - plain.bytes_moved == 2 * 4 * 4 * outputs  # written, read
    assert kernel.flops == plain.flops
    assert split.predicted_time_s < unsplit.predicted_time_s / 2
