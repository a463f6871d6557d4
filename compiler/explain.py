"""`netc explain`: where every source layer ended up, and what each kernel costs on a GPU.

    from netc.explain import explain
    report = explain(graph, level=2, arch="sm_90", batch=1)   # compile=False: no ptxas
    print(report.format())          # text tables
    data = report.to_json()         # the same as a JSON string

The network goes through the `-O` pipeline, the tiling heuristic and code generation, exactly as
`netc compile` would take it, and then:

* **Layers.** For every compute node of the source (its layer name, or its node id for an op
  without parameters, and its `file:line`): the kernel that computes it (`Optimized.kernel_of`
  through the pipeline's lineage), what it was fused with, or why it was not — folded into a
  conv's weights, removed as the identity, merged with an equal computation, dead code, a view
  (no kernel), `-O0`/`-O1` (fusion off), or the fusion rule that kept it apart at `-O2` (its
  value is used by several ops, its user is not pointwise or has another shape, ...).
* **Kernels.** For every kernel (a compute node of the optimised graph that launches
  something; a `matmul` that first expands a broadcast operand and a `concat` launch more than
  once): its kernel functions, tile, GEMM shape, FLOPs (the registry's count; a fused node's is
  its members'), bytes moved (every buffer argument of every launch read or written once: the
  compulsory traffic, not the re-reads that tiles cost: `LaunchPlan.launch_bytes`), arithmetic
  intensity (FLOPs a byte)
  and the roofline time `max(FLOPs / peak FLOP/s, bytes / peak bandwidth)`, where the peak is
  the tensor cores' for a tensor-core GEMM (a kernel named `..._mma_...`; half of it for TF32,
  `..._tf32_mma_...`) and fp32 otherwise.
* **Occupancy and grid fill** (`netc.codegen.occupancy`), per launch: the blocks its grid
  launches at `batch`, the blocks an SM holds (from registers, shared memory and warps; the
  `limiter` says which), the waves they run in, and the utilisation: the share of the GPU's
  peak the grid can use. Registers come from ptxas (`netc.toolchain.compile_module`, cached)
  when a CUDA compiler is available and `compile` is true ("ptxas"), else from the tile's
  `registers_estimate`, else `DEFAULT_REGISTERS` ("estimate"); shared memory is the launch's
  dynamic shared memory plus ptxas' static count. A kernel's predicted time is the sum over
  its launches of `roofline / utilisation` (its FLOPs counted in the launch that computes:
  the one running its tile's kernel, else its last); its blocks, occupancy and registers are
  those of that launch. A split-K GEMM or conv (`splits` in its tile) launches its main
  kernel with the splits along grid z (so its blocks count them) and writes the float
  partials, which the reduce launch after it reads back: both launches' bytes count them.
* **Totals.** Launches, FLOPs, bytes moved, the arena (`LaunchPlan.arena_bytes`: the
  intermediates placed by lifetime over the launches, as the executor allocates them), the sum
  of every intermediate's size (`LaunchPlan.intermediate_bytes`), peak memory (inputs,
  parameters and outputs plus the arena), the roofline time (the sum of the kernels' roofline
  times) and the predicted time: the sum of the kernels' predicted times (no launch overhead).

Peaks come from the architecture (`netc.codegen.targets`): sm_90 is an H100 SXM (66.9 TFLOP/s
fp32, 989.4 TFLOP/s f16/bf16 on tensor cores, 3.35 TB/s), sm_80 an A100 SXM (19.5, 312 and
2.04); `peaks=` overrides them. Sizes are taken at `batch` (default 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from netc.codegen.occupancy import grid_fill, occupancy
from netc.codegen.targets import DEFAULT_ARCH, GpuArch, Peaks, planning_arch
from netc.codegen.tiles import MatrixTile
from netc.codegen.tiling import (
    TileChoice,
    TuningDb,
    format_tile_table,
    tile_chains,
    tile_text,
)
from netc.ir import SOURCE_OPS, Graph, Node
from netc.ops import REGISTRY, node_flops
from netc.passes.fusion import why_not_fused
from netc.passes.pipeline import Optimized
from netc.plan import Launch, LaunchPlan
from netc.text import format_table
from netc.toolchain import KernelResources

TOTALS = ("launches", "bytes_moved", "arena_bytes", "intermediate_bytes", "flops",
          "roofline_time_s", "predicted_time_s", "peak_memory_bytes")
"""The totals `to_json` puts at the top level of its document."""
DEFAULT_REGISTERS = 32
"""Registers a thread assumed for a kernel without ptxas' count or a tile's estimate (the
pointwise, pooling and row kernels: short bodies, few live values)."""
TENSOR_CORE_MARK = "_mma_"
"""In a kernel's name: a tensor-core GEMM (`MmaTile.suffix`), predicted at the tensor peak."""
TF32_MARK = "_tf32_mma_"
"""In a kernel's name: a TF32 tensor-core GEMM (`Tf32Tile.suffix`), at half that peak."""


@dataclass(frozen=True)
class LayerRow:
    """One compute node of the source network and where it went."""

    layer: str
    """Its layer name (`basic_0.conv2d_1`), or its node id (`relu#3`)."""
    node: str
    op: str
    location: str
    """`file.net:line`, or "" for a node without a source position."""
    kernel: int | None
    """1-based index into `Explanation.kernels`; None when no kernel computes it."""
    fused_with: tuple[str, ...]
    """The other layers computed by the same kernel."""
    note: str
    """How it was fused, or why not."""


@dataclass(frozen=True)
class LaunchCost:
    """A launch's occupancy, grid fill and predicted time (`netc.codegen.occupancy`)."""

    blocks: int
    """Blocks it launches at the batch."""
    blocks_per_sm: int
    occupancy: float
    """Resident warps an SM over the most it can hold."""
    limiter: str
    """What limits `blocks_per_sm`: warps | registers | shared memory | blocks."""
    registers: int
    """Registers a thread."""
    registers_source: str
    """ptxas | estimate"""
    waves: int
    utilisation: float
    """The share of the GPU's peak the grid can use (`netc.codegen.occupancy.grid_fill`)."""
    predicted_time_s: float
    """Roofline time over utilisation."""


@dataclass(frozen=True)
class KernelRow:
    """One kernel of the optimised network: a compute node that launches something."""

    index: int
    node: str
    """The node of the optimised graph (`fused_3`, `dense_0`)."""
    what: str
    """`conv2d+add+relu`, `softmax`."""
    layers: tuple[str, ...]
    location: str
    functions: tuple[str, ...]
    """The kernel functions it launches, in order (one per launch)."""
    tile: str
    """`bm64,bn64,bk8,tm4,tn4` for the GEMM family, else the block size (`256 threads`)."""
    gemm: str
    """The GEMM shape `MxNxK`, or "" outside the GEMM family."""
    flops: int
    bytes_moved: int
    seconds: float
    """Roofline time."""
    bound: str
    """compute | memory"""
    tensor_cores: bool
    """Its FLOPs run on the tensor cores (a `..._mma_...` kernel)."""
    cost: LaunchCost
    """The occupancy and grid fill of its launch that computes (its tile's kernel; split-K's
    main kernel, not its reduce), with the predicted time of all its launches."""

    @property
    def launches(self) -> int:
        return len(self.functions)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0


@dataclass(frozen=True)
class Explanation:
    network: str
    level: int
    arch: str
    peaks: Peaks
    batch: int
    layers: tuple[LayerRow, ...]
    kernels: tuple[KernelRow, ...]
    tiles: tuple[TileChoice, ...]
    launches: int
    flops: int
    bytes_moved: int
    arena_bytes: int
    intermediate_bytes: int
    peak_memory_bytes: int
    roofline_time_s: float
    predicted_time_s: float
    registers_from: str
    """Where the register counts came from: `ptxas (<compiler>)`, or `estimate (<why>)`."""
    pipeline_log: str

    def totals(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in TOTALS}

    def to_data(self) -> dict[str, Any]:
        return {
            "network": self.network, "level": self.level, "arch": self.arch, "batch": self.batch,
            "gpu": {"name": self.peaks.gpu, "flops_per_second": self.peaks.flops_per_second,
                    "tensor_flops_per_second": self.peaks.tensor_flops_per_second,
                    "bytes_per_second": self.peaks.bytes_per_second},
            **self.totals(),
            "registers_from": self.registers_from,
            "kernels_count": len(self.kernels),
            "layers": [{"layer": r.layer, "node": r.node, "op": r.op, "location": r.location,
                        "kernel": r.kernel, "fused_with": list(r.fused_with), "note": r.note}
                       for r in self.layers],
            "kernels": [{"index": k.index, "node": k.node, "what": k.what,
                         "layers": list(k.layers), "location": k.location,
                         "functions": list(k.functions), "launches": k.launches,
                         "tile": k.tile, "gemm": k.gemm, "flops": k.flops,
                         "bytes_moved": k.bytes_moved, "intensity": k.intensity,
                         "roofline_s": k.seconds, "bound": k.bound,
                         "tensor_cores": k.tensor_cores, **dataclasses.asdict(k.cost)}
                        for k in self.kernels],
            "tiles": [choice.to_json() for choice in self.tiles],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_data(), indent=2) + "\n"

    def format(self) -> str:
        p = self.peaks
        lines = [f"{self.network} at -O{self.level} for {self.arch} ({p.gpu}: "
                 f"{p.flops_per_second / 1e12:.1f} TFLOP/s fp32, "
                 f"{p.bytes_per_second / 1e12:.2f} TB/s) with "
                 f"{p.tensor_flops_per_second / 1e12:.1f} TFLOP/s on f16/bf16 tensor cores, "
                 f"batch {self.batch}; registers from {self.registers_from}", ""]
        lines.append("layers, in source order")
        rows: list[tuple[str, ...]] = [("layer", "op", "source", "kernel", "with",
                                        "how, or why not fused")]
        for r in self.layers:
            kernel = f"#{r.kernel}" if r.kernel is not None else "-"
            rows.append((r.layer, r.op, r.location or "-", kernel,
                         ", ".join(r.fused_with) or "-", r.note))
        lines += format_table(rows, right={3}, indent="  ")
        lines += ["", "kernels, in launch order (roofline: max(FLOPs / peak, bytes / bandwidth); "
                  "per SM: resident blocks, occupancy and its limiter; regs: a thread's, ~ for "
                  "an estimate; fill: share of the peak the grid can use; predicted: roofline "
                  "/ fill)"]
        rows = [("#", "node", "computes", "launches", "tile", "M x N x K", "FLOPs", "bytes",
                 "FLOP/B", "roofline", "bound", "blocks", "per SM", "regs", "fill",
                 "predicted")]
        for k in self.kernels:
            c = k.cost
            regs = f"{c.registers}" if c.registers_source == "ptxas" else f"~{c.registers}"
            rows.append((str(k.index), k.node, k.what, str(k.launches), k.tile or "-",
                         k.gemm or "-", _si(k.flops), _si(k.bytes_moved, "B"),
                         f"{k.intensity:.1f}", _seconds(k.seconds),
                         k.bound + (" (tensor)" if k.tensor_cores else ""), str(c.blocks),
                         f"{c.blocks_per_sm} {c.occupancy:.0%} {c.limiter}", regs,
                         f"{c.utilisation:.0%}", _seconds(c.predicted_time_s)))
        lines += format_table(rows, right={0, 3, 6, 7, 8, 9, 11, 13, 14, 15}, indent="  ")
        lines += ["", "tiles of the GEMM and convolution kernels", format_tile_table(self.tiles)]
        lines += ["", "totals",
                  f"  launches            {self.launches} ({len(self.kernels)} kernels)",
                  f"  FLOPs               {_si(self.flops)}",
                  f"  bytes moved         {_si(self.bytes_moved, 'B')}",
                  f"  arena               {_si(self.arena_bytes, 'B')} (intermediates placed "
                  f"by lifetime)",
                  f"  intermediates       {_si(self.intermediate_bytes, 'B')} (their sum)",
                  f"  peak memory         {_si(self.peak_memory_bytes, 'B')} (inputs, "
                  f"parameters, outputs and the arena)",
                  f"  roofline time       {_seconds(self.roofline_time_s)} (sum of the "
                  f"kernels' roofline times at peak)",
                  f"  predicted time      {_seconds(self.predicted_time_s)} (sum of the "
                  f"kernels' roofline / fill, no launch overhead)"]
        return "\n".join(lines) + "\n"


def _si(value: float, unit: str = "") -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {prefix}{unit}".rstrip()
    return f"{value:.0f} {unit}".rstrip()


def _seconds(value: float) -> str:
    if value >= 1e-3:
        return f"{value * 1e3:.3f} ms"
    if value >= 1e-6:
        return f"{value * 1e6:.2f} us"
    return f"{value * 1e9:.1f} ns"


def _where(node: Node) -> str:
    return f"{PurePath(node.span.file).name}:{node.span.line}" if node.span else ""


def _name(node: Node) -> str:
    return node.layer or node.id


def _members(node: Node) -> tuple[Node, ...]:
    return node.members


def _what(node: Node) -> str:
    return "+".join(member.op for member in _members(node))


# Cost accounting ---------------------------------------------------------------------------


def _storage_bytes(plan: LaunchPlan, sizes: Mapping[str, int], roles: set[str]) -> int:
    return sum(b.nbytes(sizes) for b in plan.buffers if b.alias_of is None and b.role in roles)


# Why a layer is where it is ------------------------------------------------------------------


def _resolved(optimized: Optimized, node_id: str) -> str | None:
    """Where the value of source node `node_id` went: itself, or what the lineage leads to."""
    current: str | None = node_id
    for _ in range(len(optimized.lineage) + 1):
        if current is None or current not in optimized.lineage:
            return current
        current = optimized.lineage[current]
    return current


def _moved_note(source: Graph, optimized: Optimized, node: Node) -> tuple[str | None, str]:
    """(the node it moved into, a note) for a source node the pipeline removed."""
    target = optimized.lineage.get(node.id)
    view = REGISTRY[node.op].kind == "view"
    if target is None:
        return None, ("removed: a view no kernel reads any more (a chain of views merged, or "
                      "dead code)" if view else "removed: no output needs it (dead code)")
    name = f"`{_name(source[target])}`" if target in source else f"`{target}`"
    if node.op == "batchnorm":
        return target, f"folded into the weights of {name}"
    if node.op == "dropout":
        return None, f"removed: dropout is the identity at inference; its users read {name}"
    if target in {_resolved(optimized, value) for value in node.inputs}:
        what = "an identity view" if view else "an arithmetic identity"
        return None, f"removed: {what}; its users read {name}"
    return target, f"merged with the equal computation {name}"


def _layer_rows(source: Graph, optimized: Optimized,
                kernel_index: Mapping[str, int]) -> list[LayerRow]:
    graph = optimized.graph
    placed: list[tuple[Node, int | None, str]] = []
    for node in source.compute_nodes:
        kernel_id = optimized.kernel_of(node.id)
        kernel = graph[kernel_id] if kernel_id is not None else None
        inside = kernel is not None and node.id in {m.id for m in _members(kernel)}
        note = ""
        if not inside:
            moved, note = _moved_note(source, optimized, node)
            if moved is None:
                placed.append((node, None, note))
                continue
        if kernel is None or kernel.id not in kernel_index:
            placed.append((node, None, note or ("a view: no kernel, its buffer aliases its "
                                                "input's" if REGISTRY[node.op].kind == "view"
                                                else "no kernel")))
            continue
        if not note:
            note = _kernel_note(graph, kernel, node, optimized.level)
        placed.append((node, kernel_index[kernel.id], note))
    together: dict[int, list[str]] = {}
    for node, index, _ in placed:
        if index is not None:
            together.setdefault(index, []).append(_name(node))
    return [LayerRow(_name(node), node.id, node.op, _where(node), index,
                     tuple(n for n in together.get(index, []) if n != _name(node))
                     if index is not None else (), note)
            for node, index, note in placed]


def _kernel_note(graph: Graph, kernel: Node, node: Node, level: int) -> str:
    """How `node` (a member of `kernel`, or `kernel` itself) came to be computed there."""
    region = kernel.region
    if region is not None:
        kind = region.kind
        if kind == "elementwise":
            return "fused into an elementwise kernel"
        anchor = region.anchor
        what = kind.replace("_", " ")
        if node.id == anchor.id:
            return f"anchors a {what} kernel"
        return f"fused into the {what} kernel of `{_name(anchor)}`"
    if level < 2:
        return f"-O{level}: fusion off"
    return why_not_fused(graph, kernel)


# The explanation ---------------------------------------------------------------------------


def explain(graph: Graph, level: int = 2, arch: str = DEFAULT_ARCH, peaks: Peaks | None = None,
            *, batch: int = 1, overrides: Mapping[str, MatrixTile] | None = None,
            tuning_db: TuningDb | str | Path | None = None,
            compile: bool = True, precision: str = "f32") -> Explanation:
    """Optimise `graph` at `level`, tile it for `arch`, generate its kernels and account for
    every layer and kernel (see the module docstring). `overrides` are `--tile` values by
    layer name; `tuning_db` as for `netc.codegen.tiling.plan_tiles`; `compile=False` takes
    registers from estimates instead of compiling the kernels for ptxas' counts; `precision`
    as `netc compile --precision` (f16/bf16 storage, or TF32 tensor cores)."""
    from netc.driver import CompileOptions, compile_graph

    target = planning_arch(arch)
    peaks = peaks or target.peaks
    compiled = compile_graph(graph, CompileOptions(
        level=level, arch=arch, batch=batch, tile_overrides=dict(overrides or {}),
        tuning_db=tuning_db, precision=precision))
    optimized, choices, plan = compiled.optimized, compiled.tiles, compiled.plan
    resources, registers_from = _ptxas_resources(plan, arch, compile)
    kernels = _kernel_rows(optimized.graph, plan, choices, batch, peaks, target, resources)
    kernel_index = {row.node: row.index for row in kernels}
    intermediates = plan.intermediate_bytes(plan.every_dim(batch))
    arena = plan.arena_bytes(plan.every_dim(batch))
    resident = _storage_bytes(plan, plan.every_dim(batch), {"input", "param", "output"})
    return Explanation(
        network=graph.name, level=level, arch=arch, peaks=peaks, batch=batch,
        layers=tuple(_layer_rows(graph, optimized, kernel_index)), kernels=tuple(kernels),
        tiles=tuple(choices), launches=len(plan.launches),
        flops=sum(k.flops for k in kernels), bytes_moved=sum(k.bytes_moved for k in kernels),
        arena_bytes=arena, intermediate_bytes=intermediates,
        peak_memory_bytes=resident + arena,
        roofline_time_s=math.fsum(k.seconds for k in kernels),
        predicted_time_s=math.fsum(k.cost.predicted_time_s for k in kernels),
        registers_from=registers_from, pipeline_log=optimized.log())


def _ptxas_resources(plan: LaunchPlan, arch: str,
                     compile: bool) -> tuple[dict[str, KernelResources], str]:
    """ptxas' resource usage of every kernel of `plan` on `arch`, and where registers come
    from: empty, with the reason, when compilation is off or no CUDA compiler is found."""
    from netc.toolchain import CompilerNotFound, compile_module

    if not compile:
        return {}, "estimate (compilation off)"
    try:
        binary = compile_module(plan.source, plan.module, archs=(arch,))
    except CompilerNotFound:
        return {}, "estimate (no CUDA compiler)"
    return binary.kernel_resources(arch), f"ptxas ({binary.compiler_version})"




def _launch_cost(launch: Launch, sizes: Mapping[str, int], target: GpuArch,
                 resources: Mapping[str, KernelResources], choice: TileChoice | None,
                 roofline_s: float) -> LaunchCost:
    """Occupancy, grid fill and predicted time of one launch whose roofline time is
    `roofline_s`."""
    usage = resources.get(launch.kernel)
    tile = choice.tile if choice is not None and choice.tile.suffix in launch.kernel else None
    if usage is not None:
        registers, static_shared, source = usage.registers, usage.shared_static_bytes, "ptxas"
    else:
        registers = getattr(tile, "registers_estimate", DEFAULT_REGISTERS)
        static_shared, source = 0, "estimate"
    x, y, z = launch.block
    occ = occupancy(target, x * y * z, registers, launch.shared_bytes + static_shared)
    gx, gy, gz = launch.grid_size(sizes)
    fill = grid_fill(target, gx * gy * gz, occ, tile_chains(tile))
    return LaunchCost(fill.blocks, occ.blocks_per_sm, occ.fraction, occ.limiter,
                       registers, source, fill.waves, fill.utilisation,
                       roofline_s / fill.utilisation)


def _kernel_rows(graph: Graph, plan: LaunchPlan, choices: Sequence[TileChoice], batch: int,
                 peaks: Peaks, target: GpuArch,
                 resources: Mapping[str, KernelResources]) -> list[KernelRow]:
    owner: dict[str, str] = {}
    for node in graph.nodes:
        for member in _members(node):
            owner[member.id] = node.id
    grouped: dict[str, list[int]] = {}
    for position, launch in enumerate(plan.launches):
        grouped.setdefault(owner[launch.nodes[0]], []).append(position)
    tiles = {choice.node: choice for choice in choices}
    sizes = plan.every_dim(batch)
    rows = []
    for index, (node_id, positions) in enumerate(grouped.items(), 1):
        node = graph[node_id]
        launches = [plan.launches[position] for position in positions]
        flops = 0 if node.op in SOURCE_OPS else node_flops(
            node, [graph[value].type for value in node.inputs], sizes)
        moved = sum(plan.launch_bytes(position, sizes) for position in positions)
        choice = tiles.get(node_id)
        # The launch that computes: its tile's kernel (split-K's reduce launch follows it).
        computing = next((position for position in reversed(positions) if choice is not None
                          and choice.tile.suffix in plan.launches[position].kernel),
                         positions[-1])
        tensor_cores = TENSOR_CORE_MARK in plan.launches[computing].kernel
        tf32 = TF32_MARK in plan.launches[computing].kernel
        seconds = peaks.roofline_seconds(flops, moved, tensor_cores=tensor_cores, tf32=tf32)
        bound = "compute" if flops / peaks.compute_rate(tensor_cores, tf32) >= \
            moved / peaks.bytes_per_second else "memory"
        costs = [_launch_cost(
            plan.launches[position], sizes, target, resources, choice, peaks.roofline_seconds(
                flops if position == computing else 0, plan.launch_bytes(position, sizes),
                tensor_cores=tensor_cores, tf32=tf32))
            for position in positions]
        computed = costs[positions.index(computing)]
        tile = (tile_text(choice.tile) if choice is not None
                else f"{launches[-1].block[0]} threads")
        members = _members(node)
        rows.append(KernelRow(
            index, node_id, "fill" if node.op == "constant" else _what(node),
            tuple(dict.fromkeys(_name(m) for m in members)), _where(node),
            tuple(launch.kernel for launch in launches), tile,
            str(choice.shape) if choice is not None else "", flops, moved, seconds, bound,
            tensor_cores, dataclasses.replace(
                computed, predicted_time_s=math.fsum(cost.predicted_time_s for cost in costs))))
    return rows
