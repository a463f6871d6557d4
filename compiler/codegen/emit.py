"""Code generation: a graph becomes one CUDA module and the `LaunchPlan` that runs it.

`generate(graph, tiles)` walks the graph in order and asks each compute node's kernel family
(`netc.codegen.kernels.kernel_family`, found through the op) for its launches; views get no
launch and alias their input's buffer. An op without a CUDA lowering but with a decomposition
is first replaced by its decomposition (`netc.ops.decompose`). Every distinct kernel
specialisation is rendered once into the
module, in order of first use, after the `.cuh` headers the module needs. Intermediates are
then placed in one arena by their lifetimes over the launches (`netc.codegen.arena`).

Text in the module that came from the user (node and layer names, file names) appears only in
comments and `#line` file names, always through `sanitize`. Each kernel is preceded by a
comment listing the layers that launch it and a `#line` directive mapping its body to the
`.net` line of its first user, followed by a `#line` back to the module itself, so that compile
errors in the shared headers still point at the module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from netc._version import __version__
from netc.codegen.arena import plan_launch_arena
from netc.codegen.kernels import (
    NO_FUSION,
    CodegenError,
    CodegenLimit,
    KernelLaunch,
    KernelSpec,
    TileT,
    fill_constant,
    kernel_family,
    kernel_takes,
    tile_kind,
)
from netc.codegen.pointwise import computes
from netc.codegen.render import header, render
from netc.codegen.tiles import MatrixTile, Tile, TileError
from netc.diagnostics import CompileError, Diagnostic, Span
from netc.ir import Dim, Graph, Node, TensorType
from netc.ops import REGISTRY, verify
from netc.ops.decompose import expand_decompositions
from netc.plan import Buffer, BufferRole, Launch, LaunchPlan

COMMON_HEADER = "common.cuh"
"""Inlined first in every module; each kernel lists the other headers it needs, in order."""

LINE_RESET = "//@netc-line-reset@"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.#-]")

def sanitize(text: str) -> str:
    """`text` made safe for a C comment or a `#line` file name: only [A-Za-z0-9_.#-] kept."""
    cleaned = _UNSAFE.sub("", text)
    assert "*/" not in cleaned and "\n" not in cleaned
    return cleaned


def describe_node(node: Node) -> str:
    """`dense_0 dense (lenet.net:9)`, `fused_0 conv2d+relu (...)`: a node for a comment,
    sanitised."""
    place = f" ({sanitize(PurePath(node.span.file).name)}:{node.span.line})" if node.span else ""
    what = "+".join(member.op for member in node.members)
    return f"{sanitize(node.id)} {what}{place}"


@dataclass
class _Lowering:
    """The state of one `generate` call; implements `kernels.LoweringContext`."""

    graph: Graph
    tiles: Mapping[str, Tile]
    buffers: list[Buffer] = field(default_factory=list)
    by_node: dict[str, str] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)

    def buffer(self, node_id: str) -> str:
        return self.by_node[node_id]

    def type_of(self, value: str) -> TensorType:
        return self.graph.value_type(value)

    def add_buffer(self, node: Node, role: BufferRole, shape: tuple[Dim, ...] | None = None,
                   alias_of: str | None = None, dtype: str | None = None) -> str:
        name = f"buf{len(self.buffers)}"
        self.buffers.append(Buffer(name, role, node.type.dtype if dtype is None else dtype,
                                   node.type.shape if shape is None else shape, node.id,
                                   alias_of))
        return name

    def scratch(self, owner: Node, shape: tuple[Dim, ...], dtype: str | None = None) -> str:
        return self.add_buffer(owner, "intermediate", shape, dtype=dtype)

    def tile(self, node: Node, default: TileT) -> TileT:
        chosen = self.tiles.get(node.id, default)
        # A GEMM takes either matrix tile: a SIMT one, or tensor cores for 16-bit operands.
        kind = MatrixTile if isinstance(default, MatrixTile) else type(default)
        if not isinstance(chosen, kind):
            raise TileError(f"{node.id} ({node.op}) takes a "
                            f"{getattr(kind, '__name__', kind)}, got {chosen}")
        return chosen.validate()

    def root(self, name: str) -> str:
        alias = next(b.alias_of for b in self.buffers if b.name == name)
        return name if alias is None else alias


@dataclass(frozen=True)
class Lowered:
    """A graph lowered to launches, before the module is rendered."""

    graph: Graph
    dims: tuple[str, ...]
    """The named dimensions, as the inputs name them."""
    buffers: tuple[Buffer, ...]
    buffer_of: Mapping[str, str]
    launches: tuple[tuple[Node, KernelLaunch], ...]

    @property
    def kernels(self) -> dict[str, KernelSpec]:
        """Every distinct kernel, in order of first use."""
        kernels: dict[str, KernelSpec] = {}
        for _, launch in self.launches:
            spec = kernels.setdefault(launch.kernel.name, launch.kernel)
            if spec != launch.kernel:
                raise AssertionError(f"two different kernels named {spec.name}")
        return kernels


def header_order(specs: Iterable[KernelSpec]) -> list[str]:
    """The headers the kernels need, each once, in an order that keeps every kernel's own
    order (`KernelSpec.headers`: a header follows those it depends on)."""
    order = [COMMON_HEADER]
    for spec in specs:
        position = 1  # after the common header
        for name in spec.headers:
            if name in order:
                position = max(position, order.index(name) + 1)
            else:
                order.insert(position, name)
                position += 1
    return order


def several_outputs_error(graph: Graph) -> CompileError | None:
    """E0450 for the first node of several outputs that no kernel family lowers (none does
    yet; the passes do not take such nodes either); None when there is none."""
    for node in graph.compute_nodes:
        if node.extra_types and kernel_family(node.op) is None:
            return cannot_compile(f"`{node.op}` ({node.id}) has {len(node.types)} outputs, and "
                                  "the CUDA kernels compute ops of one output only (yet)",
                                  node.span)
    return None


def lower(graph: Graph, tiles: Mapping[str, Tile] | None = None) -> Lowered:
    """Buffers and launches for `graph`; `tiles` overrides tile configurations by node id.
    Every value has a buffer, so a node of several outputs has one per output (`buffer_of`
    is keyed by value reference: an id, or `id:k`)."""
    graph = expand_decompositions(graph, lambda op: kernel_family(op) is not None, kernel_takes)
    verify(graph)
    problem = several_outputs_error(graph)
    if problem is not None:
        raise problem
    tiles = dict(tiles or {})
    _check_tiles(graph, tiles)
    dims = graph.batch_dims()
    state = _Lowering(graph, tiles, outputs={node_id for _, node_id in graph.outputs})
    launches: list[tuple[Node, KernelLaunch]] = []
    memory_constants = _constants_in_memory(graph)

    for node in graph.nodes:
        role: BufferRole
        if node.op in ("input", "param"):
            role = "input" if node.op == "input" else "param"
            state.by_node[node.id] = state.add_buffer(node, role)
            continue
        role = "output" if node.id in state.outputs else "intermediate"
        if node.op == "constant":
            if node.id in memory_constants:
                state.by_node[node.id] = state.add_buffer(node, role)
                launches.append((node, fill_constant(node, state.by_node[node.id])))
            continue
        if REGISTRY[node.op].is_view:
            source = state.root(state.buffer(node.inputs[0]))
            state.by_node[node.id] = state.add_buffer(node, role, alias_of=source)
            continue
        family = kernel_family(node.op)
        if family is None:
            raise CodegenError(f"{node.id}: no CUDA kernel for op `{node.op}`")
        for value, kind in zip(node.values, node.types):
            state.by_node[value] = state.add_buffer(
                node, "output" if value in state.outputs else "intermediate", kind.shape,
                dtype=kind.dtype)
        try:
            launches.extend((node, launch) for launch in family.lower(state, node, NO_FUSION))
        except CodegenLimit as limit:
            raise cannot_compile(f"{_what(node)} (output {node.type}) needs {limit}",
                                 node.span) from None
    return Lowered(graph, dims, tuple(state.buffers), state.by_node, tuple(launches))


OTHER_BACKENDS = ("run it with `--backend reference` or `--backend onnx`, or export it with "
                  "`netc compile --target onnx`")
"""Where a network the CUDA backend cannot compile does run (E0450's help)."""


def cannot_compile(reason: str, span: Span | None) -> CompileError:
    """E0450: a valid network beyond a limit of the CUDA kernels (exit status 1, not a bug)."""
    return CompileError([Diagnostic("E0450", f"the CUDA backend cannot compile this network: "
                                    f"{reason}", span, help=OTHER_BACKENDS)])


def _what(node: Node) -> str:
    return "+".join(member.op for member in node.members)


def slice_bounds(graph: Graph) -> tuple[tuple[str, int, str], ...]:
    """(dimension, largest size, why) for every slice that ends at a named dimension
    (`pos[:, :T]`): its kernel reads `[:T]` of the input, so T may not exceed that length
    (checked when a plan's sizes are bound)."""
    bounds = []
    for node in graph.compute_nodes:
        if node.op != "slice":
            continue
        in_shape = graph.value_type(node.inputs[0]).shape
        for axis, end in zip(node.attrs["axes"], node.attrs["ends"]):
            if not isinstance(end, str):
                continue
            length = in_shape[axis]
            if isinstance(length, str):  # the front end refuses it (E0236)
                raise CodegenError(f"{node.id}: a slice of the named dimension {length}")
            where = f" ({node.span.file}:{node.span.line})" if node.span else ""
            bounds.append((end, length, f"`{node.id}` slices [:{end}] of a length of "
                                        f"{length}{where}"))
    return tuple(bounds)


def generate(graph: Graph, tiles: Mapping[str, Tile] | None = None) -> LaunchPlan:
    """Lower `graph` to one CUDA module and its launch plan.

    `tiles` overrides the tile configuration of individual nodes, by node id.
    """
    lowered = lower(graph, tiles)
    module = sanitize(graph.name) or "module"
    kernels = lowered.kernels
    source = render_module(module, graph.name, kernels.values(),
                           [(launch.kernel.name, node) for node, launch in lowered.launches])
    buffers = plan_launch_arena(lowered.buffers, [launch for _, launch in lowered.launches],
                                [lowered.buffer_of[node_id] for _, node_id in graph.outputs])
    return LaunchPlan(
        network=graph.name,
        module=module,
        source=source,
        dims=lowered.dims,
        buffers=buffers,
        launches=tuple(
            Launch(kernel=launch.kernel.name, grid=launch.grid, block=(launch.block, 1, 1),
                   shared_bytes=launch.shared_bytes, args=launch.args, nodes=_computed(node),
                   source=f"{node.span.file}:{node.span.line}" if node.span else "")
            for node, launch in lowered.launches),
        outputs=tuple((name, lowered.buffer_of[node_id]) for name, node_id in graph.outputs),
        kernels=tuple(kernels),
        bounds=slice_bounds(lowered.graph),
    )


def _computed(node: Node) -> tuple[str, ...]:
    """The IR nodes a launch for `node` computes: a fused node's members, or the node."""
    return tuple(member.id for member in node.members)


def _check_tiles(graph: Graph, tiles: Mapping[str, Tile]) -> None:
    for node_id, tile in tiles.items():
        if node_id not in graph or kernel_family(graph[node_id].op) is None:
            raise TileError(f"a tile for {node_id!r}, which is no node with a kernel")
        wanted = tile_kind(graph[node_id])
        if not isinstance(tile, wanted):
            raise TileError(f"{node_id} ({graph[node_id].op}) takes a "
                            f"{getattr(wanted, '__name__', wanted)}, got {tile}")
        tile.validate()


def _constants_in_memory(graph: Graph) -> set[str]:
    """Constants some kernel reads from memory. Pointwise ops (alone or fused) take them as
    float arguments; any other consumer, or an output, needs them in a buffer."""
    found = {value for _, value in graph.outputs if graph.producer(value).op == "constant"}
    for node in graph.compute_nodes:
        if computes(node.op):
            continue
        region = node.region
        if region is not None:
            read = region.arguments_read([m for m in region.members if not computes(m.op)])
            used = [value for position, value in enumerate(node.inputs) if position in read]
        else:
            used = list(node.inputs)
        found.update(value for value in used if graph.producer(value).op == "constant")
    return found


def render_module(module: str, network: str, kernels: Iterable[KernelSpec],
                  uses: Sequence[tuple[str, Node]]) -> str:
    """The module's source: headers, then every kernel in `kernels`, each with the comment and
    `#line` mapping of its `uses` (kernel name, node), which also list the launches."""
    specs = list(kernels)
    rendered = []
    for spec in specs:
        users = [node for name, node in uses if name == spec.name]
        first = next((n for n in users if n.span is not None), None)
        directive = ""
        if first is not None and first.span is not None:
            directive = f'#line {first.span.line} "{sanitize(PurePath(first.span.file).name)}"'
        rendered.append({
            "name": spec.name,
            "users": [describe_node(node) for node in users] or ["(none)"],
            "line_directive": directive,
            "text": spec.render().rstrip("\n"),
        })
    text = render(
        "module.jinja",
        module=sanitize(module),
        network=sanitize(network),
        version=__version__,
        launches=[{"kernel": name, "where": describe_node(node)} for name, node in uses],
        headers=[{"name": name, "text": header(name).rstrip("\n")}
                 for name in header_order(specs)],
        kernels=rendered,
        line_reset=LINE_RESET,
    )
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line == LINE_RESET:
            # The line after the directive is line index + 2 of the file (1-based).
            lines[index] = f'#line {index + 2} "{sanitize(module)}.cu"'
    return "\n".join(lines)
