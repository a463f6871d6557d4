"""Memory planning: the arena planner's property, and the one plan that runs (the launch
plan's arena, from the compile driver)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netc.driver import CompileOptions, compile_graph
from netc.ir import Graph
from netc.memory import ALIGNMENT, BufferLife, MemoryPlan, Placement, plan_arena, verify_plan
from netc.ops.builder import GraphBuilder
from netc.plan import LaunchPlan

pytestmark = pytest.mark.unit


@st.composite
def buffer_lists(draw: st.DrawFn) -> list[BufferLife]:
    """Buffers over up to 30 kernels; each may name earlier buffers as in-place candidates."""
    count = draw(st.integers(0, 30))
    buffers: list[BufferLife] = []
    for index in range(count):
        start = draw(st.integers(0, 30))
        end = start + draw(st.integers(0, 8))
        size = draw(st.sampled_from((1, 4, 100, 256, 257, 1000, 4096, 65536)))
        earlier = [b.name for b in buffers]
        candidates = tuple(draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
                           if earlier else ())
        buffers.append(BufferLife(f"b{index}", size, start, end, candidates))
    return buffers


@given(buffer_lists())
def test_no_two_live_buffers_overlap(buffers: list[BufferLife]) -> None:
    plan = plan_arena(buffers)
    verify_plan(plan, buffers)
    assert plan.total_bytes == sum(b.size for b in buffers)
    # One arena never needs more than separate allocations (rounded up to the alignment).
    assert plan.arena_bytes <= sum(-(-b.size // ALIGNMENT) * ALIGNMENT for b in buffers)
    for placed in plan.placements:
        if placed.shares is not None:  # in place only where the input dies at this kernel
            assert plan.placement(placed.shares).end == placed.start


def test_disjoint_lifetimes_reuse_memory_and_in_place_shares() -> None:
    buffers = [BufferLife("a", 1000, 0, 1), BufferLife("b", 1000, 1, 2),
               BufferLife("c", 1000, 2, 3), BufferLife("d", 1000, 3, 4, inplace=("c",))]
    plan = plan_arena(buffers)
    verify_plan(plan, buffers)
    assert plan.placement("c").offset == plan.placement("a").offset  # a died before c
    assert plan.placement("d").shares == "c"
    assert plan.arena_bytes == 2 * 1024
    assert plan.total_bytes == 4000


def test_in_place_refused_when_the_input_lives_on() -> None:
    buffers = [BufferLife("a", 512, 0, 3), BufferLife("b", 512, 1, 2, inplace=("a",))]
    plan = plan_arena(buffers)
    assert plan.placement("b").shares is None
    assert plan.placement("a").offset != plan.placement("b").offset


def test_in_place_needs_an_input_born_earlier() -> None:
    # Found by the property above: b took over a (both born and dead at kernel 0), then c took
    # over b, so a and c, both live at kernel 0, shared bytes. An input is written by an
    # earlier kernel than the output that takes it over.
    buffers = [BufferLife("a", 1, 0, 0), BufferLife("b", 1, 0, 0, inplace=("a",)),
               BufferLife("c", 1, 0, 0, inplace=("b",))]
    plan = plan_arena(buffers)
    verify_plan(plan, buffers)
    assert [p.shares for p in plan.placements] == [None, None, None]


def test_best_fit_takes_the_smallest_gap() -> None:
    # While a, c and e live on, b and d die, leaving gaps of 4096 bytes (at 0) and 1024 bytes
    # (at 7168). A later 1024-byte buffer goes into the smaller gap, where first fit would
    # have taken the larger one.
    buffers = [BufferLife("b", 4096, 0, 1), BufferLife("a", 2048, 0, 9),
               BufferLife("c", 1024, 0, 9), BufferLife("d", 1024, 0, 1),
               BufferLife("e", 1024, 0, 9), BufferLife("later", 1024, 2, 3)]
    plan = plan_arena(buffers)
    verify_plan(plan, buffers)
    assert [plan.placement(n).offset for n in "bacde"] == [0, 4096, 6144, 7168, 8192]
    assert plan.placement("later").offset == 7168
    assert plan.arena_bytes == 9216


def test_verify_plan_catches_an_overlap() -> None:
    bad = MemoryPlan((Placement("a", 0, 512, 0, 2), Placement("b", 256, 512, 1, 3)), 1024, 1024)
    with pytest.raises(ValueError, match="overlap while both are live"):
        verify_plan(bad)


def _residual_graph(skip_one: bool = True) -> Graph:
    """conv+relu (y1), conv+relu (y2), relu(conv(y2) + residual) * 2 |> sigmoid, pooled; the
    residual is y1 (read by no other later kernel) or y2 (which the last conv also reads)."""
    builder = GraphBuilder("block")
    x = builder.input("x", "f32", ("N", 8, 8, 8))
    y1 = builder.op("relu", builder.op("conv2d", x, filters=8, kernel=3, padding=1))
    y2 = builder.op("relu", builder.op("conv2d", y1, filters=8, kernel=3, padding=1))
    z = builder.op("conv2d", y2, filters=8, kernel=3, padding=1)
    a = builder.op("relu", builder.op("add", z, y1 if skip_one else y2))
    b = builder.op("sigmoid", builder.op("mul", a, builder.constant(2.0)))
    builder.output("out", builder.op("global_avgpool", b))
    return builder.build()


def _plan(graph: Graph, level: int = 2) -> LaunchPlan:
    return compile_graph(graph, CompileOptions(level=level, verify=True)).plan


def _arena(plan: LaunchPlan,
           batch: int = 1) -> dict[str, tuple[str, tuple[int, int] | None, str | None]]:
    """Arena buffers by the IR node whose value they hold: (buffer, lifetime, in place of
    at `batch`)."""
    memory = plan.memory_plan(plan.every_dim(batch))
    return {b.node: (b.name, b.live, memory.placement(b.name).shares)
            for b in plan.arena_buffers}


def test_unfused_lifetimes_and_elementwise_in_place() -> None:
    graph = _residual_graph()
    plan = _plan(graph, level=0)
    verify_plan(plan.memory_plan(plan.every_dim(2)))
    arena = _arena(plan, 2)
    kernels = [n.id for n in graph.compute_nodes]
    y1, z, add = kernels[1], kernels[4], kernels[5]
    launch_of = {node: index for index, launch in enumerate(plan.launches)
                 for node in launch.nodes}
    assert arena[y1][1] == (launch_of[y1], launch_of[add])  # the residual keeps it alive
    # The add reads both operands elementwise; z dies there and is the larger claim first.
    assert arena[add][2] in (arena[z][0], arena[y1][0])
    assert kernels[-1] not in arena  # the output has a buffer of its own


@pytest.mark.parametrize("skip_one", [True, False])
def test_o2_plan_puts_residual_epilogues_in_place(skip_one: bool) -> None:
    graph = _residual_graph(skip_one)
    plan = _plan(graph)
    memory = plan.memory_plan(plan.every_dim(1))
    verify_plan(memory)
    assert "at N=1" in memory.summary()
    # The third kernel (conv + add + relu + mul + sigmoid) reads its residual elementwise in
    # its epilogue: when that residual is y1, which dies there, the output takes it over. When
    # it is y2, the conv reads it too (whole windows), so it must not be overwritten.
    names = [b.name for b in plan.arena_buffers]
    shares = [memory.placement(b.name).shares for b in plan.arena_buffers]
    assert shares == [None, None, (names[0] if skip_one else None)]
    # Either way two buffers' worth: in place, or in the storage of y1, dead by then.
    assert memory.arena_bytes == 2 * 8 * 8 * 8 * 4 and memory.total_bytes == 3 * 8 * 8 * 8 * 4


def test_views_alias_their_input() -> None:
    builder = GraphBuilder("views")
    x = builder.input("x", "f32", ("N", 4, 2, 2))
    y = builder.op("relu", x)
    flat = builder.op("flatten", y)
    builder.output("out", builder.op("dense", flat, units=3))
    plan = _plan(builder.build(), level=0)
    arena = _arena(plan)
    assert set(arena) == {y}  # no buffer for the view
    assert arena[y][1] == (0, 1)  # read through the view by the dense kernel
    assert plan.memory_plan(plan.every_dim(4)).total_bytes == 4 * 16 * 4
