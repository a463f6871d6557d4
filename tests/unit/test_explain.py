"""`netc.explain`: every source layer accounted for, kernel costs, totals, text and JSON."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest

import netc.toolchain
from netc.codegen.emit import generate
from netc.codegen.targets import A100, H100
from netc.codegen.tiles import GemmTile
from netc.codegen.tiling import splits_of
from netc.explain import DEFAULT_REGISTERS, TOTALS, Explanation, KernelRow, explain
from netc.frontend import load_file, load_string
from netc.ir import Graph
from netc.ops import REGISTRY

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED = ("launches", "bytes_moved", "arena_bytes", "intermediate_bytes", "flops",
            "predicted_time_s")


@cache
def resnet18() -> Graph:
    return load_file(EXAMPLES / "resnet18.net")


@cache
def resnet18_at(level: int) -> Explanation:
    return explain(resnet18(), level)


def split_k_layers(report: Explanation) -> int:
    """The kernels split-K gives a second launch (its reduce)."""
    return sum(splits_of(choice.tile) > 1 for choice in report.tiles)


def computing(kernel: KernelRow) -> str:
    """The function of the kernel's launch that computes (split-K's reduce follows it)."""
    return next(f for f in reversed(kernel.functions) if not f.startswith("netc_splitk_reduce"))


def test_resnet18_at_o2_has_at_most_24_kernels() -> None:
    report = resnet18_at(2)
    assert len(report.kernels) <= 24
    assert report.launches == sum(k.launches for k in report.kernels)
    assert report.launches == len(report.kernels) + split_k_layers(report)


def test_resnet18_at_o0_launches_every_op_unfused() -> None:
    graph = resnet18()
    report = resnet18_at(0)
    unfused = [n for n in graph.compute_nodes if REGISTRY[n.op].kind != "view"]
    assert report.launches - split_k_layers(report) == len(unfused) == \
        len(generate(graph).launches) == 68
    assert all(row.note == "-O0: fusion off" for row in report.layers if row.kernel is not None)
    assert all(not row.fused_with for row in report.layers)


def test_every_source_layer_is_listed_with_its_file_and_line() -> None:
    graph = resnet18()
    for level in (0, 1, 2):
        report = resnet18_at(level)
        assert [row.node for row in report.layers] == [n.id for n in graph.compute_nodes]
        for row in report.layers:
            assert row.location.startswith(("resnet18.net:", "resnet_blocks.net:")), row
            assert row.note
            assert row.kernel is not None or row.op == "flatten", row


def test_resnet18_notes_say_how_each_layer_was_fused_or_why_not() -> None:
    rows = {row.layer: row for row in resnet18_at(2).layers}
    assert rows["conv1"].note == "anchors a conv epilogue kernel"
    assert rows["conv1"].fused_with == ("bn1", "relu#0")
    assert rows["bn1"].note == "folded into the weights of `conv1`"
    assert rows["relu#0"].note == "fused into the conv epilogue kernel of `conv1`"
    assert rows["relu#0"].kernel == rows["conv1"].kernel == 1
    assert rows["maxpool2d#0"].note == "not fused: its output is used by 2 ops"
    assert "took its user `add#2` first" in rows["layer2.0.downsample.0"].note
    assert "fusion does not cross views" in rows["global_avgpool#0"].note
    assert rows["flatten#0"].kernel is None and "view" in rows["flatten#0"].note
    o1 = {row.layer: row for row in resnet18_at(1).layers}
    assert o1["relu#0"].note == "-O1: fusion off"
    assert o1["bn1"].note == "folded into the weights of `conv1`"


def test_notes_for_removed_and_shared_values() -> None:
    graph = load_string("""
network t {
    input x: f32[N, 8]
    h = dense(x, 8) |> dropout(0.5)
    a = h * 1.0
    output y = relu(a)
    output s = softmax(a, axis=1)
    output z = sigmoid(x) + tanh(x)
    unused = gelu(x)
}
""", filename="t.net")
    rows = {row.node: row for row in explain(graph, 2).layers}
    assert "dropout is the identity" in rows["dropout#0"].note
    assert rows["mul#0"].note == "removed: an arithmetic identity; its users read `dense_0`"
    assert rows["gelu#0"].note == "removed: no output needs it (dead code)"
    assert rows["gelu#0"].kernel is None
    assert rows["dense_0"].note == "not fused: its output is used by 2 ops"
    assert rows["relu#0"].note.startswith("not fused: a network output")
    assert rows["add#0"].note == "fused into an elementwise kernel"
    assert rows["add#0"].fused_with == ("sigmoid#0", "tanh#0")
    assert all(row.location.startswith("t.net:") for row in rows.values())


def test_kernel_costs_follow_the_roofline() -> None:
    report = resnet18_at(2)
    for kernel in report.kernels:
        assert kernel.flops >= 0 and kernel.bytes_moved > 0
        expected = max(kernel.flops / H100.flops_per_second,
                       kernel.bytes_moved / H100.bytes_per_second)
        assert kernel.seconds == pytest.approx(expected)
        assert kernel.bound == ("compute" if kernel.flops / H100.flops_per_second
                                >= kernel.bytes_moved / H100.bytes_per_second else "memory")
    assert report.roofline_time_s == pytest.approx(math.fsum(k.seconds for k in report.kernels))
    assert report.flops == sum(k.flops for k in report.kernels)
    convs = [k for k in report.kernels if k.what.startswith("conv2d")]
    assert len(convs) == 20 and all(k.tile.startswith("bm") and k.gemm for k in convs)
    # Fusion saves traffic and time; folding and fusion keep the arithmetic nearly the same.
    unfused = resnet18_at(0)
    assert report.bytes_moved < unfused.bytes_moved
    assert report.predicted_time_s < unfused.predicted_time_s
    assert report.flops == pytest.approx(unfused.flops, rel=1e-2)
    assert report.intermediate_bytes < unfused.intermediate_bytes
    assert 0 < report.arena_bytes <= report.intermediate_bytes
    assert report.peak_memory_bytes > 11_000_000 * 4  # the parameters alone


def test_the_arch_chooses_the_peaks_and_the_tiles() -> None:
    report = explain(resnet18(), 2, "sm_80")
    assert report.peaks == A100
    assert report.predicted_time_s > resnet18_at(2).predicted_time_s
    assert "A100 SXM: 19.5 TFLOP/s fp32, 2.04 TB/s" in report.format()
    assert all("108 SMs" in c.why for c in report.tiles)


def test_text_report() -> None:
    text = resnet18_at(2).format()
    assert text.startswith("resnet18 at -O2 for sm_90 (H100 SXM: 66.9 TFLOP/s fp32, 3.35 TB/s)")
    for heading in ("layers, in source order", "kernels, in launch order",
                    "tiles of the GEMM and convolution kernels", "totals"):
        assert heading in text
    assert "resnet_blocks.net:5" in text and "layer1.0.conv2" in text
    launches = 23 + split_k_layers(resnet18_at(2))
    assert f"launches            {launches} (23 kernels)" in text
    assert "predicted time" in text and "peak memory" in text


def test_json_report_has_the_totals_at_the_top_level() -> None:
    data = json.loads(resnet18_at(2).to_json())
    for name in (*REQUIRED, *TOTALS):
        assert isinstance(data[name], int | float), name
    assert data["launches"] == 23 + split_k_layers(resnet18_at(2)) and data["level"] == 2 and data["arch"] == "sm_90"
    assert data["gpu"] == {"name": "H100 SXM", "flops_per_second": 66.9e12,
                           "tensor_flops_per_second": 989.4e12, "bytes_per_second": 3.35e12}
    assert len(data["layers"]) == len(resnet18().compute_nodes)
    assert data["layers"][0] == {"layer": "conv1", "node": "conv1", "op": "conv2d",
                                 "location": "resnet18.net:9", "kernel": 1,
                                 "fused_with": ["bn1", "relu#0"],
                                 "note": "anchors a conv epilogue kernel"}
    assert data["bytes_moved"] == sum(k["bytes_moved"] for k in data["kernels"])
    assert {t["layer"] for t in data["tiles"]} >= {"conv1", "fc"}


# Occupancy, grid fill and the predicted time --------------------------------------------------

DENSE = """
network t {
    input x: f32[N, 64]
    output y = dense(x, 96)
}
"""
SMALL_TILE = {"dense_0": GemmTile(bm=16, bn=32, bk=8, tm=1, tn=2)}
"""256 threads (8 warps); a block computes 16 rows by 32 columns of y."""


def _compiler_missing(*args: object, **kwargs: object) -> None:
    raise netc.toolchain.CompilerNotFound("hidden by the test")


def test_blocks_follow_the_named_dimension() -> None:
    graph = load_string(DENSE, filename="t.net")
    for batch, blocks in ((1, 1 * 3), (40, 3 * 3)):  # ceil(N / 16) * ceil(96 / 32)
        (kernel,) = explain(graph, batch=batch, overrides=SMALL_TILE, compile=False).kernels
        assert kernel.cost.blocks == blocks, batch
        assert kernel.cost.waves == 1


def test_grid_fill_makes_a_small_grid_slower_than_its_roofline() -> None:
    graph = load_string(DENSE, filename="t.net")
    report = explain(graph, batch=1, overrides=SMALL_TILE, compile=False)
    (kernel,) = report.kernels
    # 3 blocks of 8 warps on 132 SMs that each need 16 / 2 warps for peak (2 accumulators a
    # thread): 3 SMs busy at full rate.
    assert kernel.cost.utilisation == pytest.approx(3 / 132)
    assert kernel.cost.predicted_time_s == pytest.approx(kernel.seconds / kernel.cost.utilisation)
    assert kernel.cost.predicted_time_s > 40 * kernel.seconds
    assert report.predicted_time_s == kernel.cost.predicted_time_s
    assert report.roofline_time_s == kernel.seconds


def test_resnet18_at_batch_1_is_predicted_above_its_roofline_and_split_k_fills_layer_4() -> None:
    report = resnet18_at(2)
    for kernel in report.kernels:
        assert kernel.cost.predicted_time_s >= kernel.seconds
        if kernel.launches == 1:
            assert kernel.cost.predicted_time_s == pytest.approx(
                kernel.seconds / kernel.cost.utilisation)
    # Most of its kernels launch a few dozen to a few hundred blocks on 132 SMs.
    assert report.predicted_time_s > 1.2 * report.roofline_time_s
    # Layer 4's convs have 32 tiles of 32 x 32: unsplit, they keep 32 SMs busy and take at
    # least 132 / 32 times their roofline; split 4 ways over K (4608 = 576 k-tiles), 128
    # blocks, and a reduce launch.
    (layer4,) = [k for k in report.kernels if k.node == "fused_15"]
    assert layer4.cost.blocks == 128 and layer4.launches == 2
    assert layer4.functions[-1].startswith("netc_splitk_reduce_f32_bias")
    assert layer4.cost.predicted_time_s < 132 / 32 * layer4.seconds / 2


def test_registers_come_from_ptxas_when_a_compiler_is_present() -> None:
    try:
        netc.toolchain.resolve_compiler()
    except netc.toolchain.CompilerNotFound as missing:
        pytest.skip(f"no CUDA compiler: {missing}")
    graph = load_file(EXAMPLES / "lenet5.net")
    report = explain(graph)
    assert report.registers_from.startswith("ptxas (")
    from netc.driver import CompileOptions, compile_graph
    plan = compile_graph(graph, CompileOptions(level=2, arch="sm_90")).plan
    usage = netc.toolchain.compile_module(plan.source, plan.module,
                                          archs=("sm_90",)).kernel_resources("sm_90")
    for kernel in report.kernels:
        assert kernel.cost.registers_source == "ptxas"
        assert kernel.cost.registers == usage[computing(kernel)].registers, kernel.node


def test_registers_are_estimated_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netc.toolchain, "compile_module", _compiler_missing)
    report = explain(load_file(EXAMPLES / "lenet5.net"))
    assert report.registers_from == "estimate (no CUDA compiler)"
    tiles = {choice.node: choice.tile for choice in report.tiles}
    for kernel in report.kernels:
        assert kernel.cost.registers_source == "estimate"
        expected = (tiles[kernel.node].registers_estimate if kernel.node in tiles
                    else DEFAULT_REGISTERS)
        assert kernel.cost.registers == expected, kernel.node
    assert any(kernel.node in tiles for kernel in report.kernels)
    off = explain(load_file(EXAMPLES / "lenet5.net"), compile=False)
    assert off.registers_from == "estimate (compilation off)"
    assert off.predicted_time_s == report.predicted_time_s


def test_tensor_core_gemms_use_the_tensor_core_peak() -> None:
    graph = load_string(DENSE.replace("f32", "f16"), filename="t.net")
    (kernel,) = explain(graph, batch=4096, compile=False).kernels
    assert "_mma_" in kernel.functions[-1] and kernel.tensor_cores
    assert kernel.seconds == pytest.approx(max(kernel.flops / H100.tensor_flops_per_second,
                                               kernel.bytes_moved / H100.bytes_per_second))
    (simt,) = explain(load_string(DENSE, filename="t.net"), batch=4096, compile=False).kernels
    assert not simt.tensor_cores


def test_json_kernels_have_occupancy_and_predicted_time() -> None:
    data = json.loads(resnet18_at(2).to_json())
    assert data["registers_from"]
    assert data["predicted_time_s"] == pytest.approx(
        math.fsum(k["predicted_time_s"] for k in data["kernels"]))
    for kernel in data["kernels"]:
        assert isinstance(kernel["blocks"], int) and kernel["blocks"] >= 1
        assert 1 <= kernel["blocks_per_sm"] <= 32
        assert 0 < kernel["occupancy"] <= 1 and 0 < kernel["utilisation"] <= 1
        assert kernel["limiter"] in ("warps", "registers", "shared memory", "blocks")
        assert kernel["registers_source"] in ("ptxas", "estimate")
        assert kernel["registers"] >= 1 and kernel["waves"] >= 1
        assert kernel["predicted_time_s"] >= kernel["roofline_s"]
        assert isinstance(kernel["tensor_cores"], bool)
    first = data["kernels"][0]  # conv1 at batch 1: 64 x 12544 in 64 x 64 tiles
    assert first["blocks"] == 196
    text = resnet18_at(2).format()
    assert "predicted time" in text and "roofline time" in text and " fill " in text


def test_the_command_line_can_turn_compilation_off(capsys: pytest.CaptureFixture[str]) -> None:
    from netc.cli import main

    assert main(["explain", str(EXAMPLES / "lenet5.net"), "--json", "--no-compile"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["registers_from"] == "estimate (compilation off)"
    assert {k["registers_source"] for k in data["kernels"]} == {"estimate"}


def test_tf32_gemms_use_half_the_tensor_core_peak() -> None:
    # 2·4096·1024² FLOPs over 37.7 MB: compute-bound at TF32's rate, not at the 16-bit one.
    wide = DENSE.replace("f32[N, 64]", "f32[N, 1024]").replace("dense(x, 96)", "dense(x, 1024)")
    graph = load_string(wide, filename="t.net")
    (kernel,) = explain(graph, batch=4096, compile=False, precision="tf32").kernels
    assert "_tf32_mma_" in kernel.functions[-1] and kernel.tensor_cores
    assert kernel.seconds == pytest.approx(max(kernel.flops / (H100.tensor_flops_per_second / 2),
                                               kernel.bytes_moved / H100.bytes_per_second))
    assert kernel.bound == "compute"
