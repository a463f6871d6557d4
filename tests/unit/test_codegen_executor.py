"""The plan executor against a recording fake device: storage formats, aliasing, poisoning,
argument marshalling and grid sizes. Running real kernels is tests/sim's job."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.dtypes import bf16_bits_to_f32, f32_to_bf16_bits
from netc.ir import Graph
from netc.ops.builder import GraphBuilder
from netc.plan import LaunchPlan
from netc.runtime.executor import (
    PlanInputError,
    PlanRunner,
    check_grid,
    from_storage,
    run_plan,
    to_storage,
)

pytestmark = pytest.mark.unit


class FakeModule:
    def __init__(self, device: FakeDevice):
        self.device = device

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], shared_bytes: int,
               args: Sequence[Any]) -> None:
        self.device.launches.append((name, tuple(grid), tuple(block), shared_bytes, list(args)))


@dataclass(frozen=True)
class FakeView:
    handle: int
    offset: int
    nbytes: int


class FakeDevice:
    """Memory is a dict of byte arrays; launches are recorded, not run."""

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...], int, list[Any]]] = []
        self.loaded: list[tuple[Any, list[str]]] = []
        self.next_handle = 1

    def alloc(self, nbytes: int) -> int:
        handle = self.next_handle
        self.next_handle += 1
        self.memory[handle] = bytearray(nbytes)
        return handle

    def view(self, buf: int, offset: int, nbytes: int) -> FakeView:
        assert offset + nbytes <= len(self.memory[buf])
        return FakeView(buf, offset, nbytes)

    def _bytes(self, buf: int | FakeView) -> tuple[bytearray, int, int]:
        if isinstance(buf, FakeView):
            return self.memory[buf.handle], buf.offset, buf.nbytes
        return self.memory[buf], 0, len(self.memory[buf])

    def upload(self, buf: int | FakeView, array: np.ndarray) -> None:
        memory, offset, size = self._bytes(buf)
        data = np.ascontiguousarray(array).tobytes()
        assert len(data) <= size
        memory[offset:offset + len(data)] = data

    def download(self, buf: int | FakeView, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        memory, offset, _ = self._bytes(buf)
        count = int(np.prod(shape))
        return np.frombuffer(bytes(memory), dtype=dtype, count=count,
                             offset=offset).reshape(shape)

    def free(self, buf: int) -> None:
        assert not isinstance(buf, FakeView), "views are never freed"
        del self.memory[buf]

    def load_binary(self, binary: Any, kernels: Sequence[str]) -> FakeModule:
        self.loaded.append((binary, list(kernels)))
        return FakeModule(self)


BINARY = "the module's binary"
"""What the fake device is given to load: the executor passes it through untouched."""


def _plan(dtype: str = "f32") -> tuple[Graph, LaunchPlan, dict[str, np.ndarray]]:
    builder = GraphBuilder("fake")
    x = builder.input("x", dtype, ("N", 2, 3))
    h = builder.op("dense", x, units=4)
    builder.output("flat", builder.op("flatten", h))
    builder.output("act", builder.op("relu", h))
    graph = builder.build()
    weights = {"dense_0.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
               "dense_0.bias": np.ones(4, dtype=np.float32)}
    return graph, generate(graph), weights


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_storage_round_trips_through_the_dtype(dtype: str) -> None:
    values = np.array([1.0, -2.5, 3.140625, 49152.0], dtype=np.float32)  # exact in all three
    stored = to_storage(dtype, values)
    assert stored.dtype == {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[dtype]
    np.testing.assert_array_equal(from_storage(dtype, stored), values)
    if dtype == "bf16":
        np.testing.assert_array_equal(bf16_bits_to_f32(f32_to_bf16_bits(values)), values)


def test_a_run_uploads_poisons_launches_and_downloads() -> None:
    _, plan, weights = _plan()
    device = FakeDevice()
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    outputs = run_plan(plan, device, weights, {"x": x}, BINARY)
    assert device.loaded == [(BINARY, list(plan.kernels))]
    (gemm, relu) = device.launches
    assert gemm[0] == plan.launches[0].kernel and relu[0] == plan.launches[1].kernel
    assert gemm[1] == plan.launches[0].grid_size({"N": 3})
    assert gemm[3] == plan.launches[0].shared_bytes
    # The batch rows (M = N * 2) reach the kernel as a size evaluated at N = 3.
    rows = [arg.kind for arg in plan.launches[0].args].index("size")
    assert gemm[4][rows] == 6
    # Nothing ran, so every output still holds the poison.
    assert outputs["flat"].shape == (3, 8) and np.isnan(outputs["flat"]).all()
    assert np.isnan(outputs["act"]).all()
    assert device.memory == {}, "run_plan frees every buffer"


def test_views_share_their_root_buffer() -> None:
    _, plan, weights = _plan()
    device = FakeDevice()
    with PlanRunner(plan, device, weights, BINARY) as runner:
        runner.run({"x": np.zeros((2, 2, 3), np.float32)})
        flat = plan.buffer(dict(plan.outputs)["flat"])
        assert flat.alias_of is not None
        assert runner._handle(flat.name) == runner._handle(flat.alias_of)
        gemm_output = plan.launches[0].args[3].buffer
        assert gemm_output == flat.alias_of


def test_without_poison_outputs_keep_what_memory_held() -> None:
    _, plan, weights = _plan()
    outputs = run_plan(plan, FakeDevice(), weights, {"x": np.zeros((1, 2, 3), np.float32)},
                       BINARY, poison=False)
    assert not np.isnan(outputs["act"]).any()


def test_weights_are_uploaded_once_in_their_dtype() -> None:
    _, plan, weights = _plan("bf16")
    device = FakeDevice()
    with PlanRunner(plan, device, weights, BINARY) as runner:
        param = next(b for b in plan.buffers if b.node == "dense_0.weight")
        stored = device.download(runner._handle(param.name), np.uint16, (4, 3))
        np.testing.assert_array_equal(bf16_bits_to_f32(stored), weights["dense_0.weight"])
        allocated = len(device.memory)
        for batch in (2, 2, 5):
            runner.run({"x": np.zeros((batch, 2, 3), np.float32)})
        # Activations are reallocated for a new batch size only; weights never.
        assert runner._handle(param.name) in device.memory
    assert device.memory == {} and allocated == 2


def test_inputs_must_agree_on_the_batch() -> None:
    builder = GraphBuilder("two")
    a = builder.input("a", "f32", ("N", 2))
    b = builder.input("b", "f32", ("N", 2))
    builder.output("y", builder.op("add", a, b))
    plan = generate(builder.build())
    with pytest.raises(PlanInputError, match="another input gives 3"):
        run_plan(plan, FakeDevice(), {}, {"a": np.zeros((3, 2), np.float32),
                                          "b": np.zeros((4, 2), np.float32)}, BINARY)


def test_grids_beyond_cuda_limits_are_refused() -> None:
    check_grid("k", (2**31 - 1, 65535, 65535))
    with pytest.raises(PlanInputError, match="smaller inputs"):
        check_grid("k", (2**31, 1, 1))
    with pytest.raises(PlanInputError):
        check_grid("k", (1, 65536, 1))


def test_a_device_error_that_can_name_the_source_line_does() -> None:
    class Stopped(Exception):
        def located(self, source: str) -> Exception:
            return Stopped(f"{source}: {self}")

    class StoppingModule(FakeModule):
        def launch(self, name: str, grid: Sequence[int], block: Sequence[int],
                   shared_bytes: int, args: Sequence[Any]) -> None:
            raise Stopped("kernel ran too long")

    class StoppingDevice(FakeDevice):
        def load_binary(self, binary: Any, kernels: Sequence[str]) -> FakeModule:
            return StoppingModule(self)

    _, plan, weights = _plan()
    plan = dataclasses.replace(plan, launches=tuple(
        dataclasses.replace(launch, source="fake.net:3") for launch in plan.launches))
    with pytest.raises(Stopped, match=r"^fake\.net:3: kernel ran too long$"):
        run_plan(plan, StoppingDevice(), weights, {"x": np.zeros((1, 2, 3), np.float32)}, BINARY)
