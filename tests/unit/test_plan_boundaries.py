"""The memory planner at its boundaries: lifetimes that touch, buffers that end at the arena's
last byte, and each in-place guard tested alone.

Issue 13's mutation run found that `verify_plan` was never shown two buffers where one dies at
the kernel the other is born at, nor one ending past the arena, and that the planner's size
guard and the graph's type guard on in-place reuse covered for each other, so either could be
deleted. Each test below fails if one of those comparisons is shifted by one or dropped.
"""

from __future__ import annotations

import pytest

from netc.driver import CompileOptions, compile_graph
from netc.ir import Graph
from netc.memory import (
    BufferLife,
    MemoryPlan,
    Placement,
    format_bytes,
    plan_arena,
    verify_plan,
)
from netc.ops.builder import GraphBuilder
from netc.plan import LaunchPlan

pytestmark = pytest.mark.unit


def _plan(*placements: Placement, arena: int = 4096) -> MemoryPlan:
    return MemoryPlan(tuple(placements), arena, sum(p.size for p in placements))


# verify_plan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
def test_a_buffer_born_where_another_dies_may_not_share_its_bytes(reverse: bool) -> None:
    # Both are live at kernel 2 (one's last read, the other's write): without an in-place
    # agreement the write would clobber the read.
    pair = [Placement("a", 0, 512, 0, 2), Placement("b", 0, 512, 2, 4)]
    with pytest.raises(ValueError, match="overlap while both are live"):
        verify_plan(_plan(*(pair[::-1] if reverse else pair)))


@pytest.mark.parametrize("reverse", [False, True])
def test_the_same_pair_in_place_is_allowed(reverse: bool) -> None:
    pair = [Placement("a", 0, 512, 0, 2), Placement("b", 0, 512, 2, 4, shares="a")]
    verify_plan(_plan(*(pair[::-1] if reverse else pair)))
    buffers = [BufferLife("a", 512, 0, 2), BufferLife("b", 512, 2, 4, inplace=("a",))]
    verify_plan(_plan(*pair), buffers)


def test_buffers_one_kernel_apart_may_share_bytes() -> None:
    verify_plan(_plan(Placement("a", 0, 512, 0, 1), Placement("b", 0, 512, 2, 4)))
    verify_plan(_plan(Placement("b", 0, 512, 2, 4), Placement("a", 0, 512, 0, 1)))


def test_adjacent_byte_ranges_do_not_overlap() -> None:
    # Live at the same kernels, but b starts at a's first byte past its end.
    verify_plan(_plan(Placement("a", 0, 512, 0, 4), Placement("b", 512, 512, 0, 4)))
    with pytest.raises(ValueError, match="overlap while both are live"):
        verify_plan(_plan(Placement("a", 0, 513, 0, 4), Placement("b", 512, 512, 0, 4)))


def test_a_buffer_may_end_at_the_arena_end_but_not_past_it() -> None:
    verify_plan(_plan(Placement("a", 0, 256, 0, 1), Placement("b", 256, 768, 0, 1), arena=1024))
    with pytest.raises(ValueError, match="b ends past the arena"):
        verify_plan(_plan(Placement("a", 0, 256, 0, 1), Placement("b", 256, 769, 0, 1),
                          arena=1024))
    with pytest.raises(ValueError, match="ends past the arena"):
        verify_plan(_plan(Placement("a", 0, 1024, 0, 1), arena=1023))


def test_offsets_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="not aligned"):
        verify_plan(_plan(Placement("a", 128, 64, 0, 1)))
    verify_plan(_plan(Placement("a", 256, 64, 0, 1)))


@pytest.mark.parametrize(("earlier", "later"), [
    (Placement("a", 0, 512, 0, 3), Placement("b", 0, 512, 2, 4, shares="a")),  # a lives on
    (Placement("a", 0, 512, 2, 2), Placement("b", 0, 512, 2, 4, shares="a")),  # born together
    (Placement("a", 512, 512, 0, 2), Placement("b", 0, 512, 2, 4, shares="a")),  # elsewhere
])
def test_an_in_place_claim_is_checked(earlier: Placement, later: Placement) -> None:
    with pytest.raises(ValueError, match="took over a in place"):
        verify_plan(_plan(earlier, later))


def test_the_plan_must_match_the_buffers() -> None:
    plan = _plan(Placement("a", 0, 512, 0, 2), Placement("b", 0, 512, 2, 4, shares="a"))
    with pytest.raises(ValueError, match="b took over a in place, which it may not"):
        verify_plan(plan, [BufferLife("a", 512, 0, 2), BufferLife("b", 512, 2, 4)])
    with pytest.raises(ValueError, match="planned as size 512"):
        verify_plan(plan, [BufferLife("a", 512, 0, 2), BufferLife("b", 1024, 2, 4, ("a",))])
    with pytest.raises(ValueError, match="planned as size 512"):
        verify_plan(plan, [BufferLife("a", 512, 0, 3), BufferLife("b", 512, 2, 4, ("a",))])
    with pytest.raises(ValueError, match="name different buffers"):
        verify_plan(plan, [BufferLife("a", 512, 0, 2)])


# plan_arena's in-place guards, each alone ---------------------------------------------------

@pytest.mark.parametrize(("input_size", "output_size", "shared"), [
    (1024, 2048, False),  # the input is too small to hold the output
    (1024, 1025, False),
    (1024, 1024, True),
    (2048, 1024, True),
])
def test_in_place_needs_an_input_at_least_as_large(input_size: int, output_size: int,
                                                   shared: bool) -> None:
    buffers = [BufferLife("a", input_size, 0, 1), BufferLife("b", output_size, 1, 2, ("a",))]
    plan = plan_arena(buffers)
    verify_plan(plan, buffers)
    assert (plan.placement("b").shares == "a") is shared
    if not shared:
        assert plan.placement("a").offset != plan.placement("b").offset


def test_in_place_input_must_die_exactly_where_the_output_is_born() -> None:
    dies_before = [BufferLife("a", 512, 0, 1), BufferLife("b", 512, 2, 3, ("a",))]
    assert plan_arena(dies_before).placement("b").shares is None
    dies_at = [BufferLife("a", 512, 0, 2), BufferLife("b", 512, 2, 3, ("a",))]
    assert plan_arena(dies_at).placement("b").shares == "a"


# The launch plan: the type guard alone, and outputs that are views --------------------------

def _launch_plan(graph: Graph) -> LaunchPlan:
    return compile_graph(graph, CompileOptions(level=0, verify=True)).plan


def _broadcast_graph() -> Graph:
    """y = sigmoid(x + relu(w)) with w a fixed [1, 4] input and x a batched [N, 4] one: at
    batch 1 relu(w) has exactly the bytes of the sum, but not its type."""
    builder = GraphBuilder("broadcast")
    x = builder.input("x", "f32", ("N", 4))
    w = builder.input("w", "f32", (1, 4))
    total = builder.op("add", x, builder.op("relu", w))
    builder.output("y", builder.op("sigmoid", total))
    return builder.build()


def test_in_place_needs_the_same_type_not_only_the_same_bytes() -> None:
    graph = _broadcast_graph()
    relu, add, _ = (n.id for n in graph.compute_nodes)
    plan = _launch_plan(graph)
    arena = {b.node: b for b in plan.arena_buffers}
    sizes = plan.every_dim(1)
    assert arena[relu].nbytes(sizes) == arena[add].nbytes(sizes)  # the size guard would pass
    # [1, 4] is not [N, 4]: it would not scale with N, and the add reads it broadcast.
    assert arena[add].in_place == ()
    memory = plan.memory_plan(sizes)
    verify_plan(memory)
    assert memory.placement(arena[add].name).shares is None


def _viewed_output_graph() -> Graph:
    """a = relu(x) is both an output (through a flatten) and read by the sigmoid, which could
    otherwise take it over in place."""
    builder = GraphBuilder("viewed")
    x = builder.input("x", "f32", ("N", 4, 2, 2))
    a = builder.op("relu", x)
    builder.output("flat", builder.op("flatten", a))
    b = builder.op("sigmoid", a)
    builder.output("y", builder.op("mul", b, builder.constant(2.0)))
    return builder.build()


def test_an_output_that_is_a_view_pins_its_intermediate() -> None:
    graph = _viewed_output_graph()
    relu, sigmoid, _ = (n.id for n in graph.compute_nodes if n.op != "flatten")
    plan = _launch_plan(graph)
    arena = {b.node: b for b in plan.arena_buffers}
    assert set(arena) == {relu, sigmoid}
    # The output is a view of relu's buffer, so that buffer lives to the last launch...
    assert arena[relu].live == (0, len(plan.launches) - 1)
    # ...and the sigmoid may not take it over, though it reads it elementwise.
    memory = plan.memory_plan(plan.every_dim(2))
    assert memory.placement(arena[sigmoid].name).shares is None
    assert memory.total_bytes == 2 * 2 * 16 * 4


# The planner's records and reports ---------------------------------------------------------------

def test_a_zero_byte_buffer_is_planned_and_bad_records_are_refused() -> None:
    plan = plan_arena([BufferLife("empty", 0, 0, 1), BufferLife("a", 512, 0, 1)])
    verify_plan(plan)
    assert plan.placement("empty").size == 0
    with pytest.raises(ValueError, match="buffer bad: size -1"):
        plan_arena([BufferLife("bad", -1, 0, 1)])
    with pytest.raises(ValueError, match=r"kernels 2\.\.1"):
        plan_arena([BufferLife("bad", 4, 2, 1)])
    with pytest.raises(ValueError, match="unique"):
        plan_arena([BufferLife("a", 4, 0, 1), BufferLife("a", 4, 1, 2)])


def test_plan_records_are_frozen() -> None:
    plan = plan_arena([BufferLife("a", 512, 0, 1)])
    for record, field in ((BufferLife("a", 1, 0, 0), "size"), (plan.placements[0], "offset"),
                          (plan, "arena_bytes")):
        with pytest.raises(AttributeError):
            setattr(record, field, 0)
        hash(record if record is not plan else plan.placements)


def test_the_overlap_message_names_both_byte_ranges() -> None:
    with pytest.raises(ValueError) as caught:
        verify_plan(_plan(Placement("a", 0, 512, 0, 2), Placement("b", 256, 768, 1, 3)))
    assert str(caught.value) == ("a (bytes 0..512, kernels 0..2) and b (bytes 256..1024, "
                                 "kernels 1..3) overlap while both are live")


def test_summary_and_description_are_exact() -> None:
    buffers = [BufferLife("a", 1000, 0, 1), BufferLife("b", 1000, 1, 2),
               BufferLife("c", 1000, 2, 3), BufferLife("d", 1000, 3, 4, inplace=("c",))]
    plan = plan_arena(buffers, sizes=(("N", 4), ("T", 9)))
    assert plan.summary() == ("arena 2.00 KiB for 4 intermediates totalling 3.91 KiB at N=4, "
                              "T=9, 49% less; 1 in place")
    assert plan.describe()[0] == f"memory plan: {plan.summary()} (256-byte alignment)"
    assert plan.describe()[4] == "  d  offset          0  size       1000  kernels 3..4  in place of c"


@pytest.mark.parametrize(("count", "text"), [
    (1023, "1023 B"), (1024, "1.00 KiB"), ((1 << 20) - 1, "1024.00 KiB"), (1 << 20, "1.00 MiB"),
    (1 << 30, "1.00 GiB"), (3 << 30, "3.00 GiB"),
])
def test_format_bytes_units(count: int, text: str) -> None:
    assert format_bytes(count) == text
