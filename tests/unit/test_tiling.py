"""The tiling heuristic, the tuning database and `--tile` overrides (no GPU, no simulator)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from netc.codegen.emit import generate
from netc.codegen.targets import ARCHS, H100, GpuArch, planning_arch
from netc.codegen.tiles import GemmTile, MmaTile, Tf32Tile
from netc.codegen.tiling import (
    CANDIDATES,
    TILE_TABLE,
    TUNING_DB_ENV,
    GemmShape,
    choose_tiles,
    format_tile_table,
    gemm_shape,
    heuristic_tile,
    load_tuning_db,
    misfit,
    parse_tile,
    parse_tile_overrides,
    plan_tiles,
    splits_of,
    tile_text,
)
from netc.diagnostics import CompileError
from netc.frontend import load_file, load_string
from netc.ir import Graph
from netc.passes import run_pipeline

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def optimized(name: str, level: int = 2) -> Graph:
    return run_pipeline(load_file(EXAMPLES / name), level).graph


def net(body: str, inputs: str = "input x: f32[N, 16, 12, 12]") -> Graph:
    return load_string(f"network t {{\n    {inputs}\n    {body}\n}}\n", filename="t.net")


def name_of(tile: GemmTile) -> str:
    """The candidate `tile` is, split-K or not (tests/sim/test_split_k.py checks the splits)."""
    unsplit = dataclasses.replace(tile, splits=1) if splits_of(tile) > 1 else tile
    return next(name for name, candidate in CANDIDATES.items() if candidate == unsplit)


# The heuristic on representative shapes -------------------------------------------------------


@pytest.mark.parametrize("shape, arch, expected", [
    # ResNet-18's stage-1 conv at batch 1: 64x64 tiles give 49 blocks, 32x32 give 196.
    (GemmShape("conv2d", 64, 3136, 576), "sm_90", "small"),
    # The same at batch 32: the largest wide tile already fills the GPU.
    (GemmShape("conv2d", 64, 100352, 576), "sm_90", "wide"),
    # A big square-ish GEMM, more rows than columns.
    (GemmShape("dense", 8192, 4096, 1024), "sm_90", "large"),
    # 120 blocks of 64x64: enough for an A100's 108 SMs, not an H100's 132.
    (GemmShape("conv2d", 64, 7680, 576), "sm_80", "medium"),
    (GemmShape("conv2d", 64, 7680, 576), "sm_90", "small"),
    # A dense layer at batch 1 (M = 1): the GEMV kernel, 4 warps (columns) a block give 250
    # blocks (8 would give 125); and a classifier head (N = 10).
    (GemmShape("dense", 1, 1000, 512), "sm_90", "gemv_rows1_warps4"),
    (GemmShape("dense", 1, 16384, 512), "sm_90", "gemv_rows1_warps8"),
    (GemmShape("dense", 16384, 10, 512), "sm_90", "narrow_n"),
    (GemmShape("dense", 2048, 10, 512), "sm_90", "narrow_n_small"),
    # Depthwise: one output channel per group.
    (GemmShape("conv2d", 1, 12544, 9, 32), "sm_90", "narrow_m"),
    # 20 rows: 64-row tiles would be two-thirds padding, so the 32-row tile.
    (GemmShape("dense", 20, 10000, 64), "sm_90", "small"),
])
def test_heuristic_choices(shape: GemmShape, arch: str, expected: str) -> None:
    tile, why = heuristic_tile(shape, arch)
    assert name_of(tile) == expected, why
    assert shape.shape_class in why


def test_the_table_is_data_keyed_by_family_class_and_arch() -> None:
    for (family, shape_class, arch), names in TILE_TABLE.items():
        assert family in ("gemm", "conv2d", "mma", "tf32") and arch in ARCHS
        assert shape_class in ("narrow_m", "narrow_n", "tall", "wide")
        assert names and all(name in CANDIDATES for name in names)
        # Tensor-core tiles for the mma and tf32 families alone (TF32 ones for tf32), SIMT
        # tiles for the others.
        assert all(isinstance(CANDIDATES[name], MmaTile) == (family in ("mma", "tf32")) and
                   isinstance(CANDIDATES[name], Tf32Tile) == (family == "tf32") for name in names)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_candidate_fits_every_architecture(arch: str) -> None:
    for name, tile in CANDIDATES.items():
        assert misfit(tile, ARCHS[arch]) is None, name
        assert tile.threads <= ARCHS[arch].max_threads_per_block


def test_limits_of_a_smaller_gpu_rule_out_candidates() -> None:
    shape = GemmShape("dense", 8192, 4096, 1024)
    few_registers = GpuArch("sm_90", H100, sms=132, registers_per_sm=16384)
    # 16384 registers for 256 threads leave 64 a thread: the 8x4 register tile (about 84) is out.
    assert misfit(CANDIDATES["large"], few_registers) is not None
    assert name_of(heuristic_tile(shape, few_registers)[0]) == "medium"
    # 5 KiB: the 32 x 32 tile's two buffers (4608 bytes) fit, the 64 x 64 tile's do not.
    little_shared = GpuArch("sm_90", H100, sms=132, shared_bytes_per_block=5120)
    assert "shared memory" in (misfit(CANDIDATES["large"], little_shared) or "")
    assert name_of(heuristic_tile(shape, little_shared)[0]) == "small"


@pytest.mark.parametrize("example", ["resnet18.net", "lenet5.net", "transformer.net",
                                     "vgg.net", "mlp.net"])
@pytest.mark.parametrize("batch", [1, 64])
def test_every_choice_on_the_examples_is_a_candidate_within_the_limits(example: str,
                                                                       batch: int) -> None:
    graph = optimized(example)
    choices = plan_tiles(graph, "sm_90", batch=batch)
    kernels = [n for n in graph.compute_nodes if gemm_shape(graph, n) is not None]
    assert [c.node for c in choices] == [n.id for n in kernels]
    for choice in choices:
        assert name_of(choice.tile) in CANDIDATES  # split-K or not
        assert misfit(choice.tile, ARCHS["sm_90"]) is None
        assert choice.source == "heuristic"


def test_tiles_are_keyed_by_the_fused_node_and_reach_the_kernels() -> None:
    graph = optimized("resnet18.net")
    tiles = choose_tiles(graph)
    assert all(graph[node_id].op in ("fused", "conv2d", "dense") for node_id in tiles)
    assert any(graph[node_id].op == "fused" for node_id in tiles)
    plan = generate(graph, tiles)
    names = set(plan.kernels)
    for tile in set(tiles.values()):
        assert any(tile.suffix in name for name in names), tile


def test_gemm_shapes_of_each_op() -> None:
    graph = net("y = conv2d(x, 8, kernel=3, padding=1, groups=2)\n"
                "    f = flatten(y)\n"
                "    output d = dense(f, 10)\n"
                "    output m = matmul(y, y)")
    shapes = {n.op: gemm_shape(graph, n, batch=3) for n in graph.compute_nodes}
    assert shapes["conv2d"] == GemmShape("conv2d", 4, 3 * 144, 8 * 9, 2)
    assert shapes["dense"] == GemmShape("dense", 3, 10, 8 * 144)
    assert shapes["matmul"] == GemmShape("matmul", 12, 12, 12, 3 * 8)
    assert shapes["flatten"] is None


def test_unknown_architectures() -> None:
    assert planning_arch("sm_89").name == "sm_80"
    assert planning_arch("sm_100").name == "sm_90"
    assert planning_arch("sm_75").name == "sm_80"
    with pytest.raises(CompileError, match="E0443"):
        planning_arch("volta")


# The tuning database -------------------------------------------------------------------------


def write_db(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"format": 1, "entries": entries}))
    return path


def conv_entry(tile: dict[str, int], arch: str = "sm_90") -> dict[str, object]:
    return {"op": "conv2d", "m": 64, "n": 3136, "k": 576, "arch": arch, "tile": tile,
            "note": "measured"}


def test_a_tuning_db_entry_overrides_the_heuristic(tmp_path: Path) -> None:
    graph = optimized("resnet18.net")
    measured = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}
    db = write_db(tmp_path / "tuning.json", [conv_entry(measured)])
    choices = plan_tiles(graph, "sm_90", tuning_db=db)
    tuned = [c for c in choices if (c.shape.m, c.shape.n, c.shape.k) == (64, 3136, 576)]
    assert len(tuned) == 4
    assert all(c.tile == GemmTile(**measured) and c.source == "tuning-db" for c in tuned)
    assert all(c.source == "heuristic" for c in choices if c not in tuned)
    assert "tuning-db: entry in tuning.json" in format_tile_table(choices)
    # Keyed by architecture: on sm_80 the heuristic decides.
    assert all(c.source == "heuristic" for c in plan_tiles(graph, "sm_80", tuning_db=db))


def test_the_tuning_db_comes_from_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    graph = optimized("resnet18.net")
    db = write_db(tmp_path / "tuning.json",
                  [conv_entry({"bm": 16, "bn": 64, "bk": 16, "tm": 2, "tn": 2})])
    monkeypatch.setenv(TUNING_DB_ENV, str(db))
    assert GemmTile(16, 64, 16, 2, 2) in choose_tiles(graph).values()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "cannot read"),
    ('{"entries": []}', "not a netc tuning database"),
    ('{"format": 1, "entries": [{"op": "conv2d"}]}', "entry 0"),
    ('{"format": 1, "entries": [{"op": "softmax", "m": 1, "n": 1, "k": 1, "arch": "sm_90", '
     '"tile": {"bm": 64}}]}', "not one of"),
    ('{"format": 1, "entries": [{"op": "dense", "m": 1, "n": 1, "k": 1, "arch": "sm_90", '
     '"tile": {"bm": 256, "bn": 256}}]}', "threads"),
])
def test_a_bad_tuning_db_is_a_diagnostic(tmp_path: Path, content: str | None,
                                         message: str) -> None:
    path = tmp_path / "db.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CompileError, match="E0442") as caught:
        load_tuning_db(path)
    assert message in caught.value.render()


# --tile --------------------------------------------------------------------------------------


def test_parse_tile() -> None:
    assert parse_tile("bm32,bn32,bk8,tm4,tn4") == GemmTile(32, 32, 8, 4, 4)
    assert parse_tile("tn2, bm16") == GemmTile(bm=16, tn=2)
    assert tile_text(parse_tile("bm128,tm8")) == "bm128,bn64,bk8,tm8,tn4"


@pytest.mark.parametrize("spec, message", [
    ("conv=bq32", "`bq32` in `bq32` is not one of bm, bn, bk, tm, tn, wm, wn, stages"),
    ("conv=bm", "`bm` in `bm` is not one of"),
    ("conv=bm32,bm64", "`bm` appears twice"),
    ("conv", "is not of the form LAYER=bm64,bn64,bk8,tm4,tn4"),
    ("=bm32", "is not of the form"),
])
def test_tile_syntax_errors(spec: str, message: str) -> None:
    with pytest.raises(CompileError, match="E0440") as caught:
        parse_tile_overrides([spec])
    assert message in caught.value.render()


def test_overrides_by_layer_name_and_all() -> None:
    graph = optimized("resnet18.net")
    overrides = parse_tile_overrides(["all=bm64,bn64", "layer1.0.conv2=bm32,bn32,bk8,tm4,tn4"])
    choices = {c.layer: c for c in plan_tiles(graph, "sm_90", overrides)}
    assert choices["layer1.0.conv2"].tile == GemmTile(32, 32, 8, 4, 4)
    assert choices["layer1.0.conv2"].node.startswith("fused_")
    assert choices["fc"].tile == GemmTile(64, 64)
    assert all(c.source == "--tile" for c in choices.values())


@pytest.mark.parametrize("layer, message", [
    ("nothere", "no layer `nothere`"),
    ("maxpool2d#0",
     "is a maxpool2d; tiles apply to dense, matmul, conv2d, conv1d and conv_transpose2d"),
    ("relu#0", "is fused into the kernel of `conv1`"),
])
def test_overrides_of_unknown_or_non_gemm_layers(layer: str, message: str) -> None:
    graph = optimized("resnet18.net")
    with pytest.raises(CompileError, match="E0441") as caught:
        plan_tiles(graph, "sm_90", parse_tile_overrides([f"{layer}=bm32"]))
    assert message in caught.value.render()
    assert "layers with GEMM tiles here: conv1" in caught.value.render()


def test_an_invalid_tile_is_a_diagnostic() -> None:
    graph = optimized("lenet5.net")
    with pytest.raises(CompileError, match="E0441") as caught:
        plan_tiles(graph, "sm_90", parse_tile_overrides(["dense_0=bm64,bn64,tm1,tn1"]))
    assert "4096 threads" in caught.value.render()
    with pytest.raises(CompileError, match="shared memory"):
        plan_tiles(graph, "sm_90", parse_tile_overrides(["all=bm512,bn512,bk16,tm16,tn16"]))


def test_tensor_core_tiles_go_to_16_bit_gemms_only(tmp_path: Path) -> None:
    graph = net("y = dense(flatten(x), 24, name=\"head\")\n    output z = conv2d(x, 4, kernel=3)"
                "\n    output w = y", inputs="input x: bf16[N, 16, 12, 12]")
    mma = "bm64,bn64,bk32,wm2,wn2,stages3"
    # `all=` gives the tensor-core tile to the bf16 dense and conv.
    choices = {c.shape.op: c for c in plan_tiles(graph, "sm_90",
                                                 parse_tile_overrides([f"all={mma}"]))}
    assert choices["dense"].tile == choices["conv2d"].tile == MmaTile(64, 64, 32, 2, 2, 3)
    assert choices["dense"].source == choices["conv2d"].source == "--tile"
    # A tile whose threads split the conv's k-tile into runs of 4 (not whole 16-byte stores):
    # the dense takes it, the conv keeps the heuristic's; named, the conv refuses it.
    odd = "bm64,bn16,bk32,wm4,wn1,stages2"
    choices = {c.shape.op: c for c in plan_tiles(graph, "sm_90",
                                                 parse_tile_overrides([f"all={odd}"]))}
    assert choices["dense"].tile == MmaTile(64, 16, 32, 4, 1, 2)
    assert choices["conv2d"].source == "heuristic"
    assert isinstance(choices["conv2d"].tile, MmaTile)
    conv = next(c.layer for c in choices.values() if c.shape.op == "conv2d")
    with pytest.raises(CompileError, match="E0441") as caught:
        plan_tiles(graph, "sm_90", parse_tile_overrides([f"{conv}={odd}"]))
    assert "a thread's run of k, bk / max(threads / bn, 1) = 32 / 8, must be a multiple of 8" \
        in caught.value.render()
    # An f32 conv takes no tensor-core tile.
    f32 = net("output z = conv2d(x, 4, kernel=3)", inputs="input x: f32[N, 16, 12, 12]")
    (f32_conv,) = plan_tiles(f32, "sm_90")
    with pytest.raises(CompileError, match="not f32 conv2d"):
        plan_tiles(f32, "sm_90", parse_tile_overrides([f"{f32_conv.layer}={mma}"]))
    # And the tuning database takes them as the command line does.
    db = write_db(tmp_path / "tuning.json", [{
        "op": "dense", "m": 1, "n": 24, "k": 2304, "arch": "sm_90",
        "tile": {"bm": 16, "bn": 32, "bk": 32, "wm": 1, "wn": 2, "stages": 2}}])
    tuned = {c.shape.op: c for c in plan_tiles(graph, "sm_90", tuning_db=db)}
    assert tuned["dense"].tile == MmaTile(16, 32, 32, 1, 2, 2)
    assert tuned["dense"].source == "tuning-db"


def test_a_tile_mixing_simt_and_tensor_core_fields_is_refused() -> None:
    with pytest.raises(CompileError, match="mixes SIMT fields"):
        parse_tile_overrides(["all=bm64,tm4,wm2"])
    assert tile_text(parse_tile("wm1,stages3")) == "bm128,bn128,bk32,wm1,wn4,stages3"
