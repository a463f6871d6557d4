"""Runs a `LaunchPlan` on a device: the CPU simulator, or a GPU through PyCUDA.

    outputs = run_plan(plan, CudaSim(), weights, {"image": batch})

    runner = PlanRunner(plan, device, weights)   # compiles the module, uploads weights once
    for batch in batches:
        outputs = runner.run({"image": batch})

A device is anything with the simulator's interface (`Device` below): `alloc`, `upload`,
`download`, `free`, and `load` returning a module whose `launch(name, grid, block,
shared_bytes, args)` runs one kernel. Host arrays are float32 for every dtype; they are stored
on the device in the buffer's dtype (f16 as IEEE half, bf16 as the top 16 bits of a float32,
rounded to nearest even) and converted back to float32 on download.

Before a run, every output and intermediate buffer is filled with NaN (`poison=True`), so an
element a kernel forgets to write shows up in the result instead of passing by luck.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from netc.codegen.plan import Arg, Buffer, LaunchPlan
from netc.dtypes import bf16_bits_to_f32, f32_to_bf16_bits

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
_STORAGE: dict[str, np.dtype[Any]] = {
    "f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}
_NAN_BITS: dict[str, np.generic] = {
    "f32": np.float32(np.nan), "f16": np.float16(np.nan), "bf16": np.uint16(0x7FC0)}


class Module(Protocol):
    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], shared_bytes: int,
               args: Sequence[Any]) -> None: ...


class Device(Protocol):
    def alloc(self, nbytes: int) -> Any: ...

    def upload(self, buf: Any, array: np.ndarray) -> None: ...

    def download(self, buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray: ...

    def free(self, buf: Any) -> None: ...

    def load(self, source: str, kernels: Sequence[str], options: Sequence[str] = (),
             name: str = "module") -> Module: ...


class PlanInputError(ValueError):
    """Inputs or weights that do not fit the plan (missing, unexpected, or of the wrong shape)."""


def to_storage(dtype: str, array: np.ndarray) -> np.ndarray:
    """A float32 host array in the device representation of `dtype`."""
    values = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "bf16":
        return f32_to_bf16_bits(values)
    return np.ascontiguousarray(values.astype(_STORAGE[dtype]))


def from_storage(dtype: str, array: np.ndarray) -> np.ndarray:
    """A device array of `dtype` as float32."""
    if dtype == "bf16":
        return bf16_bits_to_f32(array)
    return np.asarray(array, dtype=np.float32)


def _poison(buffer: Buffer, sizes: Mapping[str, int]) -> np.ndarray:
    return np.full(buffer.numel(sizes), _NAN_BITS[buffer.dtype], dtype=_STORAGE[buffer.dtype])


def _shape(buffer: Buffer, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in buffer.shape)


def bind_batch(plan: LaunchPlan, inputs: Mapping[str, np.ndarray]) -> int:
    """The batch size the inputs give; checks that every input is there with its shape.

    A plan with no run-time dimension runs with batch 1 (no kernel reads it then)."""
    declared = {b.node: b for b in plan.buffers if b.role == "input"}
    problems = [f"missing input `{name}`" for name in declared if name not in inputs]
    problems += [f"unexpected input `{name}` (the inputs are "
                 f"{', '.join(f'`{n}`' for n in declared)})" for name in inputs
                 if name not in declared]
    batch: int | None = None
    for name, buffer in declared.items():
        if name not in inputs:
            continue
        shape = np.shape(inputs[name])
        expected = ", ".join(str(d) for d in buffer.shape)
        if len(shape) != len(buffer.shape):
            problems.append(f"input `{name}` must have shape [{expected}], got {list(shape)}")
            continue
        for declared_dim, actual in zip(buffer.shape, shape):
            if isinstance(declared_dim, str):
                if actual < 1 or (batch is not None and actual != batch):
                    problems.append(f"input `{name}` has {declared_dim}={actual}, but "
                                    + (f"another input gives {batch}" if batch is not None
                                       else "it must be at least 1"))
                batch = actual if batch is None else batch
            elif declared_dim != actual:
                problems.append(f"input `{name}` must have shape [{expected}], got {list(shape)}")
                break
    if problems:
        raise PlanInputError("; ".join(problems))
    return batch if batch is not None else 1


def check_grid(kernel: str, grid: Sequence[int]) -> None:
    x, y, z = grid
    if x > MAX_GRID_X or y > MAX_GRID_YZ or z > MAX_GRID_YZ:
        raise PlanInputError(f"kernel `{kernel}` needs grid {tuple(grid)}, beyond CUDA's limits "
                             f"({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ}); use a smaller batch")


class PlanRunner:
    """A plan loaded on a device with its weights uploaded; `run` executes it on inputs.

    Activation buffers are kept between runs of the same batch size. `close()` (or a `with`
    block) frees everything.
    """

    def __init__(self, plan: LaunchPlan, device: Device, weights: Mapping[str, np.ndarray]):
        self.plan = plan
        self.device = device
        self._buffers = {buffer.name: buffer for buffer in plan.buffers}
        self._module = device.load(plan.source, kernels=list(plan.kernels), name=plan.module)
        self._params: dict[str, Any] = {}
        self._activations: dict[str, Any] = {}
        self._batch: int | None = None
        try:
            self._upload_weights(weights)
        except BaseException:
            self.close()
            raise

    def _upload_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        params = [b for b in self.plan.buffers if b.role == "param"]
        missing = [b.node for b in params if b.node not in weights]
        if missing:
            raise PlanInputError(f"missing weights: {', '.join(missing)}")
        for buffer in params:
            array = np.asarray(weights[buffer.node])
            if tuple(array.shape) != tuple(buffer.shape):
                raise PlanInputError(f"weight `{buffer.node}` must have shape "
                                     f"{list(buffer.shape)}, got {list(array.shape)}")
            handle = self.device.alloc(buffer.nbytes({}))
            self._params[buffer.name] = handle
            self.device.upload(handle, to_storage(buffer.dtype, array))

    def _allocate(self, batch: int) -> None:
        if self._batch == batch:
            return
        self._free_activations()
        sizes = self.plan.sizes(batch)
        for buffer in self.plan.buffers:
            if buffer.role != "param" and buffer.alias_of is None:
                self._activations[buffer.name] = self.device.alloc(max(buffer.nbytes(sizes), 1))
        self._batch = batch

    def _handle(self, name: str) -> Any:
        root = self._buffers[name].alias_of or name
        return self._params[root] if root in self._params else self._activations[root]

    def _arg(self, arg: Arg, batch: int) -> Any:
        if arg.kind == "buffer":
            assert arg.buffer is not None
            return self._handle(arg.buffer)
        if arg.kind == "batch":
            return int(batch)
        if arg.kind == "int":
            return int(arg.value or 0)
        return float(arg.value or 0.0)

    def run(self, inputs: Mapping[str, np.ndarray], *, poison: bool = True) -> dict[str, np.ndarray]:
        """Run the plan; returns every output by name, as float32."""
        batch = bind_batch(self.plan, inputs)
        sizes = self.plan.sizes(batch)
        self._allocate(batch)
        for buffer in self.plan.buffers:
            if buffer.alias_of is not None:
                continue
            if buffer.role == "input":
                self.device.upload(self._activations[buffer.name],
                                   to_storage(buffer.dtype, inputs[buffer.node]))
            elif poison and buffer.role in ("output", "intermediate"):
                self.device.upload(self._activations[buffer.name], _poison(buffer, sizes))
        for launch in self.plan.launches:
            grid = launch.grid_size(batch)
            check_grid(launch.kernel, grid)
            self._module.launch(launch.kernel, grid=grid, block=launch.block,
                                shared_bytes=launch.shared_bytes,
                                args=[self._arg(arg, batch) for arg in launch.args])
        return {name: self.buffer_value(buffer) for name, buffer in self.plan.outputs}

    def buffer_value(self, name: str) -> np.ndarray:
        """What buffer `name` holds after the last run, as float32 (outputs, and intermediates
        for layer-by-layer comparisons)."""
        if self._batch is None:
            raise RuntimeError("the plan has not run yet")
        buffer = self._buffers[name]
        raw = self.device.download(self._handle(name), _STORAGE[buffer.dtype],
                                   _shape(buffer, self.plan.sizes(self._batch)))
        return from_storage(buffer.dtype, raw)

    def _free_activations(self) -> None:
        for handle in self._activations.values():
            self.device.free(handle)
        self._activations.clear()
        self._batch = None

    def close(self) -> None:
        self._free_activations()
        for handle in self._params.values():
            self.device.free(handle)
        self._params.clear()

    def __enter__(self) -> PlanRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_plan(plan: LaunchPlan, device: Device, weights: Mapping[str, np.ndarray],
             inputs: Mapping[str, np.ndarray], *, poison: bool = True) -> dict[str, np.ndarray]:
    """Load `plan` on `device`, upload `weights` and `inputs`, run every launch in order and
    return the outputs by name as float32."""
    with PlanRunner(plan, device, weights) as runner:
        return runner.run(inputs, poison=poison)
