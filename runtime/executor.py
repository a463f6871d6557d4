"""Runs a `LaunchPlan` on a device: the CPU simulator, or a GPU through PyCUDA.

    runner = PlanRunner(plan, device, weights, binary)   # loads the module, uploads weights
    for batch in batches:
        outputs = runner.run({"image": batch})   # any sizes of the named dimensions

The executor compiles nothing: `binary` is the plan's module already built for `device` (a
`DeviceBinary` of cubins and PTX for a GPU, a `SimBinary` for the simulator), made by the
compile driver (`netc.driver.build_binary`) or read from an artifact directory.

A device is anything with the simulator's interface (`Device` below): `alloc`, `upload`,
`download`, `free`, and `load_binary` returning a module whose `launch(name, grid, block,
shared_bytes, args)` runs one kernel; and a way to address part of an allocation, either the
device's `view(buffer, offset, nbytes)` (PyCUDA) or the buffer's own `view(offset, nbytes)`
(the simulator). Host arrays are float32 for every float dtype; they are stored on the device in
the buffer's dtype (f16 as IEEE half, bf16 as the top 16 bits of a float32, rounded to nearest
even) and converted back to float32 on download. Integer and boolean tensors are int32, int64
and bool arrays (bool stored as one byte, 0 or 1).

Intermediates live in one arena per set of sizes of the named dimensions, each at the offset
the plan's memory plan for those sizes gives it (`LaunchPlan.memory_plan`), so buffers whose
lifetimes do not overlap share memory (`reuse_memory=False` allocates each on its own instead,
for reading every intermediate after a run).

With `poison=True` (the default) every output and intermediate is filled with NaN (integers
with their lowest value, bools with a byte that is neither 0 nor 1, refused on download), so an
element a kernel forgets to write shows up in the result instead of passing by luck. Outputs
(and separately allocated intermediates) are poisoned before the run; an arena buffer just
before the launch that writes it, since memory it shares held an earlier buffer's good values
during the same run. A buffer written in place over its input is not poisoned: an element the
kernel skipped would still hold the input's value, which only `reuse_memory=False` exposes.

Kernels beside the plan (a training step's optimizer, `netc.optimizer_kernel`) work on the
plan's own device buffers: `param_handle(node)` is a parameter's buffer (written in place, later
runs compute with the new values), `output_handle(name)` an output's after a run, and
`run(..., download=names)` downloads only some outputs, so that the others (the gradients) stay
on the device; `update_weights(weights, partial=True)` uploads some parameters alone.

CUDA graphs: on a device that can capture them (`capture` and `supports_graphs()`, the PyCUDA
device with a CUDA 11.4+ driver), the first run at a set of sizes launches kernel by kernel
(each launch checked, a failure naming its `.net` line); the second captures the same launches
into a graph and every later run at those sizes replays it with one driver call, uploads and
downloads staying outside the graph. With poisoning, the graph also holds the arena poison
fills, as device-to-device copies from a buffer of poison made once per dtype. `cuda_graph=False`
turns graphs off; `True` requires them. New sizes free the graphs (their addresses are stale).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np

from netc.dtypes import INTEGER_RANGES, bf16_bits_to_f32, f32_to_bf16_bits, round_to
from netc.plan import Arg, Buffer, Launch, LaunchPlan, evaluate

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
_STORAGE: dict[str, np.dtype[Any]] = {
    "f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16),
    "i32": np.dtype(np.int32), "i64": np.dtype(np.int64), "bool": np.dtype(np.uint8)}
_NAN_BITS: dict[str, np.generic] = {
    "f32": np.float32(np.nan), "f16": np.float16(np.nan), "bf16": np.uint16(0x7FC0),
    "i32": np.int32(np.iinfo(np.int32).min), "i64": np.int64(np.iinfo(np.int64).min),
    "bool": np.uint8(0xFF)}
"""What an unwritten element holds after poisoning: NaN; the lowest integer; for bool a byte
that is neither 0 nor 1, which `from_storage` refuses."""


class Module(Protocol):
    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], shared_bytes: int,
               args: Sequence[Any]) -> None: ...


class Device(Protocol):
    def alloc(self, nbytes: int) -> Any: ...

    def upload(self, buf: Any, array: np.ndarray) -> None: ...

    def download(self, buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray: ...

    def free(self, buf: Any) -> None: ...

    # Optional: `view(buf, offset, nbytes)`, a handle to bytes [offset, offset + nbytes) of
    # `buf`; without it the executor calls `buf.view(offset, nbytes)`.

    def load_binary(self, binary: Any, kernels: Sequence[str]) -> Module: ...


def graphs_supported(device: Device) -> bool:
    """Whether `device` can capture a plan's launches into a CUDA graph."""
    supports = getattr(device, "supports_graphs", None)
    return callable(supports) and bool(supports())


class GraphDevice(Device, Protocol):
    """A device that captures CUDA graphs (the executor's graph mode)."""

    def supports_graphs(self) -> bool: ...

    def capture(self, record: Callable[[Any], None]) -> Any:
        """A graph of what `record(stream)` enqueues on `stream`; its `launch()` replays it."""

    def copy(self, destination: Any, source: Any, nbytes: int, stream: Any = None) -> None: ...


class PlanInputError(ValueError):
    """Inputs or weights that do not fit the plan (missing, unexpected, or of the wrong shape)."""


def to_storage(dtype: str, array: np.ndarray) -> np.ndarray:
    """A host array in the device representation of `dtype` (converted as the reference
    converts an input: `netc.dtypes.round_to`)."""
    if dtype in INTEGER_RANGES or dtype == "bool":
        return np.ascontiguousarray(round_to(dtype, array).astype(_STORAGE[dtype]))
    values = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "bf16":
        return f32_to_bf16_bits(values)
    return np.ascontiguousarray(values.astype(_STORAGE[dtype]))


class UnwrittenError(RuntimeError):
    """A downloaded bool buffer holds the poison byte: elements no kernel wrote (a bug)."""


def from_storage(dtype: str, array: np.ndarray) -> np.ndarray:
    """A device array of `dtype` as the host holds it: float32 for the float dtypes,
    int32/int64/bool for the others."""
    if dtype == "bf16":
        return bf16_bits_to_f32(array)
    if dtype == "bool":
        raw = np.asarray(array, dtype=np.uint8)
        unwritten = int(np.count_nonzero(raw > 1))
        if unwritten:
            raise UnwrittenError(f"{unwritten} of {raw.size} elements of a bool buffer are "
                                 "neither 0 nor 1: no kernel wrote them")
        return raw.astype(np.bool_)
    if dtype in INTEGER_RANGES:
        return np.asarray(array, dtype=_STORAGE[dtype])
    return np.asarray(array, dtype=np.float32)


def _poison(buffer: Buffer, sizes: Mapping[str, int]) -> np.ndarray:
    return np.full(buffer.numel(sizes), _NAN_BITS[buffer.dtype], dtype=_STORAGE[buffer.dtype])


def _shape(buffer: Buffer, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in buffer.shape)


def bind_sizes(plan: LaunchPlan, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size of every named dimension, read off the inputs; checks that every input is
    there with its shape, that a name means one size everywhere, and the plan's bounds."""
    declared = {b.node: b for b in plan.buffers if b.role == "input"}
    problems = [f"missing input `{name}`" for name in declared if name not in inputs]
    problems += [f"unexpected input `{name}` (the inputs are "
                 f"{', '.join(f'`{n}`' for n in declared)})" for name in inputs
                 if name not in declared]
    sizes: dict[str, int] = {}
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
                known = sizes.get(declared_dim)
                if actual < 1 or (known is not None and actual != known):
                    problems.append(f"input `{name}` has {declared_dim}={actual}, but "
                                    + (f"another input gives {known}" if known is not None
                                       else "it must be at least 1"))
                sizes.setdefault(declared_dim, actual)
            elif declared_dim != actual:
                problems.append(f"input `{name}` must have shape [{expected}], got {list(shape)}")
                break
    for dim, largest, why in plan.bounds:
        if dim in sizes and sizes[dim] > largest:
            problems.append(f"{dim}={sizes[dim]} is larger than {largest}: {why}")
    if problems:
        raise PlanInputError("; ".join(problems))
    return {dim: sizes.get(dim, 1) for dim in plan.dims}


def check_grid(kernel: str, grid: Sequence[int]) -> None:
    x, y, z = grid
    if x > MAX_GRID_X or y > MAX_GRID_YZ or z > MAX_GRID_YZ:
        raise PlanInputError(f"kernel `{kernel}` needs grid {tuple(grid)}, beyond CUDA's limits "
                             f"({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ}); use smaller inputs")


def view(device: Device, buffer: Any, offset: int, nbytes: int) -> Any:
    """A handle to bytes [offset, offset + nbytes) of `buffer` (see the module docstring)."""
    make = getattr(device, "view", None)
    if make is not None:
        return make(buffer, offset, nbytes)
    return buffer.view(offset, nbytes)


class PlanRunner:
    """A plan loaded on a device with its weights uploaded; `run` executes it on inputs.

    Activation buffers (the arena, inputs, outputs) are kept between runs at the same sizes
    of the named dimensions. `reuse_memory=False` gives every intermediate its own allocation instead of a place
    in the arena, so that `buffer_value` can read any of them after a run. `close()` (or a
    `with` block) frees everything.
    """

    def __init__(self, plan: LaunchPlan, device: Device, weights: Mapping[str, np.ndarray],
                 binary: Any = None, *, reuse_memory: bool = True,
                 cuda_graph: bool | None = None):
        if cuda_graph and not graphs_supported(device):
            raise ValueError(f"{device!r} cannot capture CUDA graphs (a GPU with PyCUDA and a "
                             "CUDA 11.4+ driver can); run without cuda_graph=True")
        self.plan = plan
        self.device = device
        self.reuse_memory = reuse_memory
        self.cuda_graph = graphs_supported(device) if cuda_graph is None else cuda_graph
        """Later runs at the same sizes replay a CUDA graph (see the module docstring)."""
        self._graphs: dict[bool, Any] = {}
        """The captured launches at the current sizes, with and without poisoning."""
        self._runs_at_sizes = 0
        self._poison_sources: dict[str, Any] = {}
        """A device buffer of poison per dtype, the source of a graph's poison fills."""
        self._buffers = {buffer.name: buffer for buffer in plan.buffers}
        # A network of views alone (`output y = flatten(x)`) has no kernel to load.
        self._module: Module | None = None
        if plan.kernels:
            if binary is None:
                raise ValueError(f"plan {plan.module!r} has kernels: give its compiled module "
                                 "(netc.driver.build_binary) to run it")
            self._module = device.load_binary(binary, list(plan.kernels))
        self._params: dict[str, Any] = {}
        self._activations: dict[str, Any] = {}
        """Every non-view, non-param buffer's handle: an allocation or a view of the arena."""
        self._owned: list[Any] = []
        """What `_free_activations` frees: the arena and the buffers allocated on their own."""
        self._arena: Any = None
        self._sizes: dict[str, int] | None = None
        self._births: dict[int, list[Buffer]] = {}
        """Arena buffers by the launch that writes them first (in-place ones left out)."""
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

    def update_weights(self, weights: Mapping[str, np.ndarray], *, partial: bool = False) -> None:
        """Upload new values of the plan's parameters (all of them, as at construction) into
        the buffers they already have: a training step's updated weights. `partial=True`
        uploads those in `weights` alone (the others keep what the device holds)."""
        for buffer in self.plan.buffers:
            if buffer.role == "param" and (not partial or buffer.node in weights):
                array = np.asarray(weights[buffer.node])
                if tuple(array.shape) != tuple(buffer.shape):
                    raise PlanInputError(f"weight `{buffer.node}` must have shape "
                                         f"{list(buffer.shape)}, got {list(array.shape)}")
                self.device.upload(self._params[buffer.name], to_storage(buffer.dtype, array))

    # Device buffers, for kernels run beside the plan (the training step's optimizer,
    # netc.optimizer_kernel, updates the parameters in place from the gradient outputs).

    def param_handle(self, node: str) -> tuple[Buffer, Any]:
        """The plan's buffer of parameter `node` (its dtype and shape) and the device handle
        holding it; a kernel that writes it changes what later runs compute with."""
        for buffer in self.plan.buffers:
            if buffer.role == "param" and buffer.node == node:
                return buffer, self._params[buffer.name]
        raise KeyError(f"the plan has no parameter `{node}`")

    def param_value(self, node: str) -> np.ndarray:
        """What the device holds for parameter `node`, as float32 (integers as they are)."""
        buffer, handle = self.param_handle(node)
        return from_storage(buffer.dtype, self.device.download(handle, _STORAGE[buffer.dtype],
                                                               _shape(buffer, {})))

    def output_handle(self, name: str) -> tuple[Buffer, Any]:
        """After a run, output `name`'s buffer and the device handle holding its value, valid
        until the next run (whose poisoning or kernels may overwrite it); raises as
        `buffer_value` does for an arena buffer that a later launch reuses."""
        buffer_name = dict(self.plan.outputs)[name]
        self._check_readable(buffer_name)
        return self._buffers[buffer_name], self._handle(buffer_name)

    def _in_arena(self, buffer: Buffer) -> bool:
        return self.reuse_memory and buffer.in_arena

    def _allocate(self, sizes: dict[str, int]) -> None:
        if self._sizes == sizes:
            return
        self._free_activations()
        offsets: dict[str, int] = {}
        if self.reuse_memory and self.plan.arena_buffers:
            memory = self.plan.memory_plan(sizes)
            self._arena = self.device.alloc(max(memory.arena_bytes, 1))
            self._owned.append(self._arena)
            offsets = {p.name: p.offset for p in memory.placements}
            for p in memory.placements:
                if p.shares is None:
                    self._births.setdefault(p.start, []).append(self._buffers[p.name])
        for buffer in self.plan.buffers:
            if buffer.role == "param" or buffer.alias_of is not None:
                continue
            if self._in_arena(buffer):
                handle = view(self.device, self._arena, offsets[buffer.name],
                              buffer.nbytes(sizes))
            else:
                handle = self.device.alloc(max(buffer.nbytes(sizes), 1))
                self._owned.append(handle)
            self._activations[buffer.name] = handle
        self._sizes = dict(sizes)

    def _handle(self, name: str) -> Any:
        root = self._buffers[name].alias_of or name
        return self._params[root] if root in self._params else self._activations[root]

    def _arg(self, arg: Arg, sizes: Mapping[str, int]) -> Any:
        if arg.kind == "buffer":
            assert arg.buffer is not None
            return self._handle(arg.buffer)
        if arg.kind == "float":
            return float(arg.value or 0.0)
        return evaluate(arg.value or 0, sizes)

    def run(self, inputs: Mapping[str, np.ndarray], *, poison: bool = True,
            progress: Callable[[int, int, Launch], None] | None = None,
            download: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Run the plan; returns every output by name, as float32 (with `download`, only
        those named: the others stay on the device, `output_handle`). The sizes of the named
        dimensions are read off the inputs (`bind_sizes`). `progress(index, count, launch)`
        is called before each launch."""
        sizes = bind_sizes(self.plan, inputs)
        self._allocate(sizes)
        for buffer in self.plan.buffers:
            if buffer.alias_of is not None:
                continue
            if buffer.role == "input":
                self.device.upload(self._activations[buffer.name],
                                   to_storage(buffer.dtype, inputs[buffer.node]))
            elif (poison and buffer.role in ("output", "intermediate")
                  and not self._in_arena(buffer)):
                self.device.upload(self._activations[buffer.name], _poison(buffer, sizes))
        self._launch_all(sizes, poison, progress)
        return {name: self.buffer_value(buffer) for name, buffer in self.plan.outputs
                if download is None or name in download}

    def launch_all(self) -> None:
        """The plan's launches alone, on the buffers as the last `run` left them (no uploads,
        no downloads, no poisoning): what a benchmark times. From a CUDA graph after the
        first run when graphs are on."""
        if self._sizes is None:
            raise RuntimeError("the plan has not run yet")
        self._launch_all(self._sizes, False, None)

    def _launch_all(self, sizes: dict[str, int], poison: bool,
                    progress: Callable[[int, int, Launch], None] | None) -> None:
        self._runs_at_sizes += 1
        if not self.cuda_graph or self._runs_at_sizes == 1 or not self.plan.launches:
            self._record(sizes, poison, progress, None)
            return
        if poison not in self._graphs:
            if poison:  # before the capture: an upload during it would join the stream
                self._make_poison_sources(sizes)
            self._graphs[poison] = cast(GraphDevice, self.device).capture(
                lambda stream: self._record(sizes, poison, progress, stream))
        self._graphs[poison].launch()

    def _record(self, sizes: dict[str, int], poison: bool,
                progress: Callable[[int, int, Launch], None] | None, stream: Any) -> None:
        """Issue the launches (and the arena's poison fills) in order: run now on the default
        stream, or enqueued on `stream` while a CUDA graph captures it."""
        module = self._module
        if module is None:  # a plan of views alone
            return
        on_stream = {} if stream is None else {"stream": stream}
        for index, launch in enumerate(self.plan.launches):
            if progress is not None:
                progress(index, len(self.plan.launches), launch)
            if poison and self._arena is not None:
                for buffer in self._births.get(index, ()):
                    self._poison_buffer(buffer, sizes, stream)
            grid = launch.grid_size(sizes)
            check_grid(launch.kernel, grid)
            try:
                module.launch(launch.kernel, grid=grid, block=launch.block,
                              shared_bytes=launch.shared_bytes,
                              args=[self._arg(arg, sizes) for arg in launch.args], **on_stream)
            except Exception as exc:
                # A device error that can name the `.net` line of the launch (the simulator's
                # time limit and stack overflow) is raised again naming it.
                located = getattr(exc, "located", None)
                if callable(located) and launch.source:
                    raise located(launch.source) from None
                raise

    def _poison_buffer(self, buffer: Buffer, sizes: Mapping[str, int], stream: Any) -> None:
        handle = self._activations[buffer.name]
        if stream is None:
            self.device.upload(handle, _poison(buffer, sizes))
            return
        cast(GraphDevice, self.device).copy(handle, self._poison_sources[buffer.dtype],
                                            buffer.nbytes(sizes), stream)

    def _make_poison_sources(self, sizes: Mapping[str, int]) -> None:
        """Per dtype, a device buffer of poison as large as the largest the arena poisons."""
        largest: dict[str, Buffer] = {}
        for births in self._births.values():
            for buffer in births:
                known = largest.get(buffer.dtype)
                if known is None or buffer.nbytes(sizes) > known.nbytes(sizes):
                    largest[buffer.dtype] = buffer
        for dtype, buffer in largest.items():
            if dtype not in self._poison_sources:
                source = self.device.alloc(max(buffer.nbytes(sizes), 1))
                self.device.upload(source, _poison(buffer, sizes))
                self._owned.append(source)
                self._poison_sources[dtype] = source

    def buffer_value(self, name: str) -> np.ndarray:
        """What buffer `name` holds after the last run, as float32 (outputs, and intermediates
        for layer-by-layer comparisons).

        In the arena an intermediate keeps its value only until a later launch reuses its
        memory, so reading one that dies before the last launch raises: construct the runner
        with `reuse_memory=False` to read intermediates."""
        self._check_readable(name)
        buffer = self._buffers[name]
        assert self._sizes is not None
        raw = self.device.download(self._handle(name), _STORAGE[buffer.dtype],
                                   _shape(buffer, self._sizes))
        return from_storage(buffer.dtype, raw)

    def _check_readable(self, name: str) -> None:
        if self._sizes is None:
            raise RuntimeError("the plan has not run yet")
        buffer = self._buffers[name]
        root = self._buffers[buffer.alias_of or name]
        if (self._in_arena(root) and root.live is not None
                and root.live[1] < len(self.plan.launches) - 1):
            raise RuntimeError(
                f"buffer {name} ({buffer.node}) shares arena memory with later buffers, so its "
                f"value is gone after the run; use PlanRunner(..., reuse_memory=False) to read "
                f"intermediates")

    def _free_activations(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()
        self._runs_at_sizes = 0
        self._poison_sources.clear()
        for handle in self._owned:
            self.device.free(handle)
        self._owned.clear()
        self._activations.clear()
        self._arena = None
        self._births.clear()
        self._sizes = None

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
             inputs: Mapping[str, np.ndarray], binary: Any = None, *, poison: bool = True,
             reuse_memory: bool = True) -> dict[str, np.ndarray]:
    """Load `plan`'s compiled module (`binary`) on `device`, upload `weights` and `inputs`,
    run every launch in order and return the outputs by name as float32."""
    with PlanRunner(plan, device, weights, binary, reuse_memory=reuse_memory) as runner:
        return runner.run(inputs, poison=poison)
