"""The optimizer step on the device: SGD, Adam and AdamW as multi-tensor kernels
(templates/optimizer.cuh), with gradient clipping, on the CPU simulator or a GPU.

    optimizer = DeviceOptimizer(device, "adam", hyper, {"fc.weight": (5, 6), ...},
                                clip_grad_norm=1.0)
    optimizer.load_state(state.buffers)                     # a resumed run's, or nothing
    optimizer.step(params, grads, lr=1e-3, step=1)          # device handles by name
    optimizer.state()                                       # downloaded: {param: {buffer: array}}

`params` and `grads` are device buffers of float32 (a `PlanRunner`'s parameter buffers and
gradient outputs: `param_handle`, `output_handle`); the parameters are updated in place and the
optimizer state (`momentum_buffer`, `exp_avg`, `exp_avg_sq`) lives on the device between steps,
so a step moves no tensor between host and device. The update of each element is the float32
arithmetic of `netc.training.update`, operation by operation, so the results are the same bits;
the clip coefficient comes from a double-precision sum of squares on the device, within 1e-6 of
`clip_gradients`' float32 one (the design note in templates/optimizer.cuh says why).

A step is at most: one `netc_optimizer_sum_squares` launch and one `netc_optimizer_clip` when
clipping, and one update launch, per `SLOTS` tensors (24; more tensors take more launches of
each, as PyTorch's `multi_tensor_apply` splits its lists).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from netc.codegen.render import header

OPTIMIZERS = ("sgd", "adam", "adamw")
KERNELS = ("netc_optimizer_sgd", "netc_optimizer_adam", "netc_optimizer_sum_squares",
           "netc_optimizer_clip")
MODULE = "netc_optimizer"


def _constant(name: str) -> int:
    """A `#define` of optimizer.cuh: the header is the one home of the kernel's constants."""
    match = re.search(rf"#define {name} (\d+)", header("optimizer.cuh"))
    assert match is not None, name
    return int(match.group(1))


SLOTS = _constant("NETC_OPTIMIZER_SLOTS")
"""Tensors per launch."""
THREADS = _constant("NETC_OPTIMIZER_THREADS")
CHUNK = _constant("NETC_OPTIMIZER_CHUNK")
"""Elements per block."""


def source() -> str:
    """The module: common.cuh and optimizer.cuh (NVRTC has no include path)."""
    return header("common.cuh") + "\n" + header("optimizer.cuh")


def build(device: Any) -> Any:
    """The module compiled for `device` (a `SimBinary` or a `DeviceBinary`; both cached), as
    `netc.driver.build_binary` compiles a plan's."""
    make = getattr(device, "build", None)
    if make is not None:  # the simulator builds its own shared libraries
        return make(source(), list(KERNELS), name=MODULE)
    from netc.driver import build_for_arch

    return build_for_arch(source(), MODULE, device.arch,
                          compiler=getattr(device, "compiler", "auto"),
                          options=tuple(getattr(device, "options", ())))


def buffer_names(name: str, hyper: Mapping[str, object]) -> tuple[str, ...]:
    """The state tensors optimizer `name` keeps per parameter (PyTorch's names)."""
    if name == "sgd":
        return ("momentum_buffer",) if float(hyper["momentum"]) else ()  # type: ignore[arg-type]
    return ("exp_avg", "exp_avg_sq")


def chunk_table(numels: Sequence[int]) -> list[np.ndarray]:
    """Per launch (`SLOTS` tensors each), one (slot, chunk, length) int32 triple per block:
    elements [chunk * CHUNK, chunk * CHUNK + length) of the slot's tensor."""
    tables = []
    for first in range(0, len(numels), SLOTS):
        rows = [(slot, chunk, min(CHUNK, numel - chunk * CHUNK))
                for slot, numel in enumerate(numels[first:first + SLOTS])
                for chunk in range(-(-numel // CHUNK))]
        tables.append(np.array(rows, np.int32).reshape(-1, 3))
    return tables


class DeviceOptimizer:
    """Optimizer `name` (sgd, adam, adamw) with hyper-parameters `hyper` (a train section's,
    PyTorch's names and defaults) over the float32 tensors `shapes` (by name; the order of
    the launches), its state on `device`; `clip_grad_norm` clips the global L2 norm first."""

    def __init__(self, device: Any, name: str, hyper: Mapping[str, object],
                 shapes: Mapping[str, Sequence[int]], *, clip_grad_norm: float | None = None):
        from netc.runtime.executor import view

        if name not in OPTIMIZERS:
            raise ValueError(f"no optimizer kernel for {name!r}; one of {OPTIMIZERS}")
        self.device = device
        self.name = name
        self.hyper = dict(hyper)
        self.clip_grad_norm = clip_grad_norm
        self.names = tuple(shapes)
        self.shapes = {n: tuple(int(d) for d in shape) for n, shape in shapes.items()}
        self.buffer_names = buffer_names(name, hyper)
        self._module = device.load_binary(build(device), list(KERNELS))
        self._owned: list[Any] = []
        self._spare = self._alloc(16)
        """Stands for a slot's unused pointers (never read or written)."""
        self._state = {n: [self._alloc(4 * self._numel(n)) for _ in self.buffer_names]
                       for n in self.names}
        self.started: set[str] = set()
        """Parameters whose state exists (a step or `load_state` made it): PyTorch's state."""
        self.owner: tuple[Any, int] | None = None
        """Whose state the device holds: (the caller's state object, its version)."""
        tables = chunk_table([self._numel(n) for n in self.names])
        offsets = np.cumsum([0] + [len(t) for t in tables])
        everything = np.concatenate(tables) if tables else np.zeros((0, 3), np.int32)
        table = self._upload(everything)
        self._launches = [(self.names[i * SLOTS:(i + 1) * SLOTS],
                           view(device, table, int(offsets[i]) * 12, len(t) * 12),
                           int(offsets[i]), len(t)) for i, t in enumerate(tables)]
        """Per launch: its tensors, its part of the chunk table, its first block, blocks."""
        self._partials = self._alloc(8 * int(offsets[-1]))
        self._clip = self._upload(np.ones(2, np.float32))
        """[coefficient, norm] of the last step's clipping."""
        self.load_state({})

    def _numel(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def _alloc(self, nbytes: int) -> Any:
        handle = self.device.alloc(max(nbytes, 16))
        self._owned.append(handle)
        return handle

    def _upload(self, array: np.ndarray) -> Any:
        handle = self._alloc(array.nbytes)
        self.device.upload(handle, np.ascontiguousarray(array))
        return handle

    def load_state(self, buffers: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Start from `buffers` (`OptimizerState.buffers`: {param: {buffer: array}}); a
        parameter without them starts afresh (Adam's moments at zero, SGD's momentum buffer
        the first gradient), as `netc.training.update` does."""
        self.started = set()
        for name in self.names:
            given = buffers.get(name, {})
            if all(b in given for b in self.buffer_names) and name in buffers:
                self.started.add(name)
            for buffer, handle in zip(self.buffer_names, self._state[name]):
                value = given.get(buffer)
                array = (np.zeros(self.shapes[name], np.float32) if value is None
                         else np.asarray(value, np.float32))
                if array.shape != self.shapes[name]:
                    raise ValueError(f"optimizer state {buffer} of `{name}` has shape "
                                     f"{list(array.shape)}, the parameter {list(self.shapes[name])}")
                self.device.upload(handle, np.ascontiguousarray(array))

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """The optimizer state, downloaded: per started parameter its buffers (an empty dict
        for SGD without momentum), as `netc.training.update` keeps it."""
        return {name: {buffer: self.device.download(handle, np.float32, self.shapes[name])
                       for buffer, handle in zip(self.buffer_names, self._state[name])}
                for name in self.names if name in self.started}

    def clipping(self) -> tuple[float, float]:
        """The last step's (clip coefficient, gradient norm before clipping), downloaded."""
        coefficient, norm = self.device.download(self._clip, np.float32, (2,))
        return float(coefficient), float(norm)

    def _slots(self, names: Sequence[str], params: Mapping[str, Any],
               grads: Mapping[str, Any]) -> list[Any]:
        args: list[Any] = []
        for name in names:
            state = self._state[name] + [self._spare] * (2 - len(self._state[name]))
            args += [params[name], grads[name], *state]
        args += [self._spare] * (4 * (SLOTS - len(names)))
        return args

    def step(self, params: Mapping[str, Any], grads: Mapping[str, Any], lr: float,
             step: int) -> None:
        """One update of every tensor at learning rate `lr`, `step` counting from 1 (Adam's
        bias corrections): `params` updated in place from `grads`, clipped first."""
        from netc.runtime.executor import view

        launch = self._module.launch
        block = (THREADS, 1, 1)
        clipping = self.clip_grad_norm is not None
        if clipping:
            for names, chunks, first, blocks in self._launches:
                launch("netc_optimizer_sum_squares", (blocks, 1, 1), block, 8 * THREADS,
                       [chunks, view(self.device, self._partials, 8 * first, 8 * blocks),
                        *self._slots(names, params, grads)])
            total = sum(blocks for *_, blocks in self._launches)
            launch("netc_optimizer_clip", (1, 1, 1), block, 8 * THREADS,
                   [self._partials, total, float(self.clip_grad_norm or 0.0), self._clip])
        f32 = np.float32
        hyper = self.hyper
        for names, chunks, _, blocks in self._launches:
            fixed = [chunks, self._clip, int(clipping), float(f32(lr)),
                     float(f32(hyper["weight_decay"]))]  # type: ignore[arg-type]
            if self.name == "sgd":
                fresh = sum(1 << slot for slot, name in enumerate(names)
                            if name not in self.started)
                launch("netc_optimizer_sgd", (blocks, 1, 1), block, 0,
                       [*fixed, float(f32(hyper["momentum"])),  # type: ignore[arg-type]
                        float(f32(hyper["dampening"])),  # type: ignore[arg-type]
                        int(bool(hyper["nesterov"])), fresh,
                        *self._slots(names, params, grads)])
                continue
            beta1, beta2 = (float(f32(b)) for b in hyper["betas"])  # type: ignore[attr-defined]
            # As netc.training.update: the corrections in double, from the float32 betas.
            step_size = float(f32(lr / (1 - beta1 ** step)))
            correction2_sqrt = float(f32(math.sqrt(1 - beta2 ** step)))
            launch("netc_optimizer_adam", (blocks, 1, 1), block, 0,
                   [*fixed, int(self.name == "adamw"), beta1, beta2,
                    float(f32(hyper["eps"])), step_size,  # type: ignore[arg-type]
                    correction2_sqrt, *self._slots(names, params, grads)])
        self.started = set(self.names)

    def close(self) -> None:
        for handle in self._owned:
            self.device.free(handle)
        self._owned.clear()

