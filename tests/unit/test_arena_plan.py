"""The launch plan's arena (netc.codegen.arena): lifetimes over launches, in place only where an
elementwise kernel allows it, an arena planned for each set of sizes of the named dimensions,
and the plan's byte counts.

The property test checks generated plans of random networks with its own overlap check and its
own liveness walk, not only with the planner's `verify_plan`."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from netc.codegen.arena import plan_launch_arena
from netc.codegen.emit import generate
from netc.codegen.kernels import KernelLaunch, KernelSpec
from netc.frontend import load_string
from netc.ir import Graph
from netc.memory import ALIGNMENT, verify_plan
from netc.ops.builder import GraphBuilder
from netc.passes import run_pipeline
from netc.plan import Arg, Buffer, GridDim, LaunchPlan
from tests.unit.netgen import networks

pytestmark = pytest.mark.unit


def _chain(*ops: str, shape: tuple[str | int, ...] = ("N", 3, 5)) -> Graph:
    builder = GraphBuilder("chain")
    value = builder.input("x", "f32", shape)
    for op in ops:
        value = builder.op(op, value)
    builder.output("y", value)
    return builder.build()


def _arena(plan: LaunchPlan) -> dict[str, Buffer]:
    return {b.node: b for b in plan.arena_buffers}


def test_an_elementwise_chain_runs_in_place_in_one_slot() -> None:
    plan = generate(_chain("relu", "sigmoid", "tanh", "gelu"))
    relu, sigmoid, tanh = plan.arena_buffers  # gelu's result is the output
    assert (relu.live, sigmoid.live, tanh.live) == ((0, 1), (1, 2), (2, 3))
    assert sigmoid.in_place == (relu.name,) and tanh.in_place == (sigmoid.name,)
    memory = plan.memory_plan({"N": 5})
    assert [memory.placement(b.name).shares for b in (relu, sigmoid, tanh)] == \
        [None, relu.name, sigmoid.name]
    assert {memory.placement(b.name).offset for b in (relu, sigmoid, tanh)} == {0}
    # 5 items of 15 floats, rounded up to the alignment once.
    assert plan.arena_bytes({"N": 5}) == ALIGNMENT * 2
    assert plan.intermediate_bytes({"N": 5}) == 3 * 5 * 15 * 4


def test_kernels_that_read_other_elements_never_write_in_place() -> None:
    source = """
network mixed {
    input x: f32[N, 4, 8, 8]
    a = conv2d(x, 4, kernel=3, padding=1)
    b = maxpool2d(a, 3, stride=1, padding=1)
    c = softmax(b, axis=-1)
    d = transpose(c, [0, 1, 3, 2])
    e = concat(d, d, axis=1)
    f = global_avgpool(e) |> flatten
    output y = dense(f, 8)
}
"""
    plan = generate(load_string(source, filename="mixed.net"))
    assert len(plan.arena_buffers) == 6
    assert all(b.in_place == () for b in plan.arena_buffers)
    assert plan.memory_plan({"N": 3}).inplace_count == 0


def test_an_input_that_lives_on_is_not_overwritten() -> None:
    source = """
network fork {
    input x: f32[N, 6]
    a = relu(x)
    b = sigmoid(a)
    output y = b + a
}
"""
    plan = generate(load_string(source, filename="fork.net"))
    arena = _arena(plan)
    memory = plan.memory_plan({"N": 2})
    # Offered a's storage, b may not take it: a is read again by the add.
    assert memory.placement(arena["sigmoid#0"].name).shares is None
    assert memory.placement(arena["sigmoid#0"].name).offset != \
        memory.placement(arena["relu#0"].name).offset


def test_an_output_viewed_from_an_intermediate_lives_to_the_end() -> None:
    source = """
network viewed {
    input x: f32[N, 2, 3]
    h = dense(x, 4)
    output flat = flatten(h)
    g = relu(h) * 2.0
    output act = sigmoid(g) + 1.0
}
"""
    plan = generate(load_string(source, filename="viewed.net"))
    dense = _arena(plan)["dense_0"]
    assert dense.live == (0, len(plan.launches) - 1)
    memory = plan.memory_plan({"N": 3})
    assert all(p.shares != dense.name for p in memory.placements)
    flat = plan.buffer(dict(plan.outputs)["flat"])
    assert flat.alias_of == dense.name and not flat.in_arena


def test_in_place_through_a_view() -> None:
    # The relu reads the conv's output through a flatten: same elements, same order.
    source = """
network through {
    input x: f32[N, 2, 4, 4]
    c = conv2d(x, 3, kernel=3, padding=1)
    output y = dense(relu(flatten(c)), 5)
}
"""
    plan = generate(run_pipeline(load_string(source, filename="through.net"), 2).graph)
    arena = {b.name: b for b in plan.arena_buffers}
    memory = plan.memory_plan({"N": 2})
    taken = [p for p in memory.placements if p.shares is not None]
    assert len(taken) == 1 and arena[str(taken[0].shares)].node.startswith("conv2d")


def _spec(name: str) -> KernelSpec:
    return KernelSpec(name, "elementwise.jinja", (), "f32", 256)


def _launch(*buffers: str, in_place: tuple[tuple[str, str], ...] = ()) -> KernelLaunch:
    one = GridDim()
    return KernelLaunch(_spec("k"), (one, one, one), 256, 0,
                        tuple(Arg("buffer", buffer=b) for b in buffers), in_place)


def test_an_input_also_read_through_another_view_is_not_taken_over() -> None:
    buffers = (
        Buffer("x", "input", "f32", ("N", 8), "x"),
        Buffer("a", "intermediate", "f32", ("N", 8), "a"),
        Buffer("v", "intermediate", "f32", ("N", 2, 4), "v", alias_of="a"),
        Buffer("b", "intermediate", "f32", ("N", 8), "b"),
        Buffer("y", "output", "f32", ("N", 8), "y"),
    )
    offered = (("b", "a"),)
    # b = f(a, v): the launch reads a in place but v (the same storage) some other way.
    placed = plan_launch_arena(buffers, [_launch("a", "x"), _launch("b", "a", "v",
                               in_place=offered), _launch("y", "b")], ["y"])
    assert {b.name: b.in_place for b in placed}["b"] == ()
    # Offered for both, the storage may be taken over.
    placed = plan_launch_arena(buffers, [_launch("a", "x"), _launch(
        "b", "a", "v", in_place=(("b", "a"), ("b", "v"))), _launch("y", "b")], ["y"])
    assert {b.name: b.in_place for b in placed}["b"] == ("a",)


def _two_dim_plan() -> LaunchPlan:
    """A [N, T, 8] buffer and a [N, 8, T, T] one, both live at launch 1."""
    buffers = (
        Buffer("x", "input", "f32", ("N", "T", 8), "x"),
        Buffer("a", "intermediate", "f32", ("N", "T", 8), "a"),
        Buffer("s", "intermediate", "f32", ("N", 8, "T", "T"), "s"),
        Buffer("c", "intermediate", "f32", (10,), "c"),
        Buffer("y", "output", "f32", ("N", "T", 8), "y"),
    )
    launches = [_launch("a", "x"), _launch("s", "a", "c"), _launch("y", "s", "a")]
    placed = plan_launch_arena(buffers, launches, ["y"])
    return LaunchPlan("two", "two", "", ("N", "T"), placed, (), (("y", "y"),))


@pytest.mark.parametrize("sizes", [{"N": 1, "T": 1}, {"N": 2, "T": 7}, {"N": 3, "T": 129}])
def test_the_arena_is_planned_for_each_set_of_sizes(sizes: dict[str, int]) -> None:
    plan = _two_dim_plan()
    memory = plan.memory_plan(sizes)
    records = {b.name: b for b in plan.arena_buffers}
    verify_plan(memory)
    assert memory.sizes == tuple(sizes.items())
    n, t = sizes["N"], sizes["T"]
    # All three live together at launch 1: the arena holds them side by side, aligned.
    expected = sum(-(-b.nbytes(sizes) // ALIGNMENT) * ALIGNMENT for b in records.values())
    assert memory.arena_bytes == expected
    assert records["s"].nbytes(sizes) == n * 8 * t * t * 4


def test_a_network_without_a_named_dimension_plans_at_its_sizes() -> None:
    plan = generate(_chain("relu", "relu", shape=(4, 4)))
    assert plan.dims == () and plan.every_dim() == {}
    memory = plan.memory_plan({})
    assert memory.sizes == () and memory.arena_bytes == ALIGNMENT
    assert "no named dimension" in memory.summary()


def test_bytes_moved_counts_each_buffer_argument_once_per_launch() -> None:
    plan = generate(_chain("relu", "sigmoid"))
    # relu reads x and writes its result; sigmoid reads that and writes y: 4 tensors.
    assert plan.bytes_moved({"N": 2}) == 4 * 2 * 15 * 4
    assert plan.launch_bytes(0, {"N": 1}) == 2 * 15 * 4


def test_plan_json_carries_lifetimes_and_round_trips() -> None:
    plan = generate(_chain("relu", "sigmoid", "tanh"))
    document = json.loads(plan.to_json())
    arena = [b for b in document["buffers"] if b["live"] is not None]
    assert arena and all(b["role"] == "intermediate" for b in arena)
    assert arena[1]["in_place"] == [arena[0]["name"]]
    assert LaunchPlan.from_json(document, plan.source) == plan


def test_resnet18_meets_the_launch_and_arena_targets() -> None:
    from pathlib import Path

    from netc.frontend import load_file

    graph = load_file(Path(__file__).resolve().parents[2] / "examples" / "resnet18.net")
    plan = generate(run_pipeline(graph, 2).graph)
    assert len(plan.launches) <= 24
    sizes = plan.every_dim(1)
    assert plan.arena_bytes(sizes) <= plan.intermediate_bytes(sizes) / 2
    verify_plan(plan.memory_plan(sizes))


# The property ----------------------------------------------------------------------------------


def _expected_lifetimes(plan: LaunchPlan) -> dict[str, tuple[int, int]]:
    """First and last use of each storage, walked here independently of netc.codegen.arena."""
    root = {b.name: b.alias_of or b.name for b in plan.buffers}
    uses: dict[str, list[int]] = {}
    for index, launch in enumerate(plan.launches):
        for arg in launch.args:
            if arg.buffer is not None:
                uses.setdefault(root[arg.buffer], []).append(index)
    for _, name in plan.outputs:
        uses.setdefault(root[name], []).append(len(plan.launches) - 1)
    return {name: (min(found), max(found)) for name, found in uses.items()}


def _check_arena(plan: LaunchPlan, batch: int) -> None:
    sizes = plan.every_dim(batch)
    arena = plan.arena_buffers
    expected = _expected_lifetimes(plan)
    assert {b.name for b in arena} == {
        b.name for b in plan.buffers if b.role == "intermediate" and b.alias_of is None}
    for buffer in arena:
        assert buffer.live == expected[buffer.name], buffer
    memory = plan.memory_plan(sizes)
    shares = {p.name: p.shares for p in memory.placements}
    placed = []
    for buffer in arena:
        assert buffer.live is not None
        start = memory.placement(buffer.name).offset
        assert start % ALIGNMENT == 0
        assert start + buffer.nbytes(sizes) <= memory.arena_bytes
        placed.append((buffer, start, start + buffer.nbytes(sizes)))
    for index, (first, first_low, first_high) in enumerate(placed):
        for second, second_low, second_high in placed[index + 1:]:
            assert first.live is not None and second.live is not None
            both_live = first.live[0] <= second.live[1] and second.live[0] <= first.live[1]
            bytes_shared = first_low < second_high and second_low < first_high
            handover = (shares[second.name] == first.name and first.live[1] == second.live[0]) \
                or (shares[first.name] == second.name and second.live[1] == first.live[0])
            assert not (both_live and bytes_shared and not handover), (
                f"{first.name} {first.live} [{first_low}, {first_high}) and {second.name} "
                f"{second.live} [{second_low}, {second_high}) overlap at batch {batch}")
    by_name = {b.name: b for b in plan.buffers}
    for buffer in arena:
        shared = shares[buffer.name]
        if shared is None:
            continue
        assert buffer.live is not None and shared in buffer.in_place
        taken = by_name[shared]
        launch = plan.launches[buffer.live[0]]
        # Only the launch writing this buffer, over an input dying right there: an
        # elementwise kernel (its output comes first), or a kernel whose fused epilogue reads
        # the input, and which takes it nowhere else (the kernel's own operands are read at
        # other elements).
        passed = [arg.buffer for arg in launch.args if arg.kind == "buffer"]
        if launch.kernel.startswith("netc_ew_"):
            assert buffer.name == passed[0]
        else:
            assert "_ep_" in launch.kernel, launch.kernel
            assert buffer.name in passed and passed.count(taken.name) == 1, launch
        assert taken.live is not None and taken.live[1] == buffer.live[0] > taken.live[0]
        assert taken.dtype == buffer.dtype and taken.nbytes(sizes) >= buffer.nbytes(sizes)
        assert memory.placement(taken.name).offset == memory.placement(buffer.name).offset
    verify_plan(memory)


@settings(max_examples=max(100, settings().max_examples))
@given(text=networks())
def test_live_intermediates_never_share_arena_bytes(text: str) -> None:
    graph = load_string(text, filename="random.net")
    for level in (0, 2):
        plan = generate(run_pipeline(graph, level).graph)
        for batch in (1, 5):
            _check_arena(plan, batch)


# PyCUDA views: pointer arithmetic, checked without a GPU --------------------------------------


class _Allocation:
    """Like pycuda.driver.DeviceAllocation: converts to its device address."""

    def __init__(self, address: int):
        self.address = address

    def __int__(self) -> int:
        return self.address


class _Driver:
    def __init__(self) -> None:
        self.copies: list[tuple[str, object]] = []

    def memcpy_htod(self, destination: object, array: object) -> None:
        self.copies.append(("htod", destination))

    def memcpy_dtoh(self, array: object, source: object) -> None:
        self.copies.append(("dtoh", source))


def test_a_pycuda_view_is_an_address_inside_its_allocation() -> None:
    import numpy as np

    from netc.runtime.pycuda_device import DeviceView, PyCudaDevice, _signature_from_values

    device = PyCudaDevice.__new__(PyCudaDevice)  # no GPU: only the memory methods
    driver = _Driver()
    device._driver = driver
    arena = _Allocation(0x7F0000000000)
    part = device.view(arena, 512, 256)
    assert part == DeviceView(0x7F0000000200, 256) and int(part) == 0x7F0000000200
    assert int(device.view(part, 256, 0)) == 0x7F0000000300
    with pytest.raises(ValueError, match="outside"):
        device.view(part, 128, 256)
    device.upload(part, np.zeros(4, np.float32))
    device.download(part, np.float32, (4,))
    device.upload(arena, np.zeros(4, np.float32))
    assert driver.copies == [("htod", 0x7F0000000200), ("dtoh", 0x7F0000000200),
                             ("htod", arena)]
    with pytest.raises(ValueError, match="not a view"):
        device.free(part)
    # Without a plan's signatures, a view is a pointer argument ("P"), not an integer.
    assert _signature_from_values("k", ["u64", "u64"], [part, 3]) == "Pq"
