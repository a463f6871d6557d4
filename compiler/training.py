"""Training: a `train` section (`netc.frontend.load_training`) run step by step.

    trainer = Trainer(spec, weights, seed=0)
    loss = trainer.step({"image": x, "label": y})    # forward, loss, gradients, one update
    trainer.weights                                   # the network's parameters and buffers

One step runs the training graph with the gradient of the loss for every trainable parameter
(`netc.autodiff.backward`: the same IR, so the reference interpreter runs it as any graph),
clips the gradients to `clip_grad_norm` (the global L2 norm, as
`torch.nn.utils.clip_grad_norm_`), and applies the optimizer with the step's learning rate
(`learning_rate`). The update rules are PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`, default
options: not foreach-fused, no amsgrad), in float32 as PyTorch computes them; frozen layers
(`freeze`) get no update and no decay, but their gradients still flow to earlier layers.

Backends: `reference` runs the graph with gradients in NumPy; `cudasim` and `cuda` compile it
with the driver (-O2, one launch plan of forward and backward kernels, for every batch size)
and run it on the CPU simulator or a GPU. There the clipping and the update run on the same
device as multi-tensor kernels (`netc.optimizer_kernel`, templates/optimizer.cuh) on the plan's
own parameter buffers and gradient outputs, the optimizer state kept on the device: a step
moves the batch in and the loss and the network's outputs out; `weights` and `state.buffers`
download when read.
The kernels do `update`'s float32 operations in its order, so they give its bits; `update`
and `clip_gradients` (NumPy) are the reference backend's step and the oracle, and the step of
mixed precision (whose unscaling and skipped steps are the host's) on every backend.

The graph is the network in training mode (`netc.training_mode`): batchnorm on batch
statistics, whose updated running statistics come out as the outputs `buffer:<id>` and replace
the weights' after each step (and `num_batches_tracked` counts the step), and dropout with a
Philox mask drawn from (seed, step, layer, element), identical on every backend, so a resumed
run needs no generator state beyond the step and the seed.

Precision: f32, or `bf16-mixed` / `f16-mixed` (`netc.mixed_precision`): the step's graph
stored in 16 bits with the loss in f32, f32 master weights in `weights`, and for f16 a
`LossScaler` (torch.amp.GradScaler's dynamic loss scale); a step whose gradients overflowed
is skipped (`step`), the optimizer's own count (`updates`) not advancing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.autodiff import GRADIENT_PREFIX, backward
from netc.diagnostics import CompileError, Diagnostic
from netc.frontend.train import Schedule, TrainSpec
from netc.ir import Graph
from netc.mixed_precision import LOSS_SCALE_INPUT, PRECISIONS, SCALED, LossScaler, mixed_forward
from netc.reference import run_reference
from netc.training_mode import (
    BUFFER_PREFIX,
    SEED_INPUT,
    STEP_INPUT,
    batchnorm_counters,
    training_mode,
)

BACKENDS = ("reference", "cudasim", "cuda")
"""Where the forward and backward graph runs: NumPy, or netc's kernels (one launch plan) on
the CPU simulator or a GPU, the optimizer update with them (on the host for mixed precision)."""
CLIP_EPSILON = 1e-6
"""`clip_grad_norm_` divides by the norm plus this."""


def learning_rate(base: float, schedule: Schedule, step: int, total: int | None) -> float:
    """The rate of update `step` (0 for the first) of a run of `total` updates.

    Warmup: the first `warmup` updates take `base * (step + 1) / warmup`, rising linearly to
    `base`. Then "constant" keeps `base`; "cosine" decays it to 0 at the last update
    (`torch.optim.lr_scheduler.CosineAnnealingLR` over the steps after warmup, eta_min 0);
    "step" multiplies it by `gamma` every `step_size` updates counted from the first (StepLR
    stepped once per update)."""
    if step < schedule.warmup:
        return base * (step + 1) / schedule.warmup
    if schedule.kind == "cosine":
        if total is None:
            raise ValueError("a cosine schedule needs the run's number of steps")
        span = max(total - schedule.warmup, 1)
        return base * 0.5 * (1 + math.cos(math.pi * min(step - schedule.warmup, span) / span))
    if schedule.kind == "step":
        assert schedule.step_size is not None
        return base * schedule.gamma ** (step // schedule.step_size)
    return base


class OptimizerState:
    """Per parameter: SGD's momentum buffer, or Adam's first and second moments; the count
    of updates taken (Adam's bias correction).

    While a device optimizer steps (`netc.optimizer_kernel`, cudasim and cuda), the buffers
    live on the device and `buffers` downloads them when read after a step. Give new buffers
    by assigning `buffers` (or a new state to `Trainer.state`), not by changing the arrays."""

    def __init__(self, steps: int = 0,
                 buffers: dict[str, dict[str, np.ndarray]] | None = None):
        self.steps = steps
        self._buffers = {} if buffers is None else buffers
        self._download: Callable[[], dict[str, dict[str, np.ndarray]]] | None = None
        self.version = 0
        """Counts assignments to `buffers`: a device optimizer reloads them when it changes."""

    @property
    def buffers(self) -> dict[str, dict[str, np.ndarray]]:
        if self._download is not None:
            self._buffers, self._download = self._download(), None
        return self._buffers

    @buffers.setter
    def buffers(self, value: dict[str, dict[str, np.ndarray]]) -> None:
        self._buffers, self._download = value, None
        self.version += 1

    def on_device(self, download: Callable[[], dict[str, dict[str, np.ndarray]]]) -> None:
        """The buffers were updated on a device: `download()` returns them when read."""
        self._download = download

    def __repr__(self) -> str:
        return f"OptimizerState(steps={self.steps}, buffers={sorted(self.buffers)})"


def update(name: str, hyper: Mapping[str, object], lr: float, param: np.ndarray,
           grad: np.ndarray, state: dict[str, np.ndarray], step: int) -> np.ndarray:
    """The parameter after one update of optimizer `name` (`step`: 1 for the first), in
    float32 as PyTorch's single-tensor implementations compute it; `state` is updated.
    templates/optimizer.cuh does the same operations in the same order on the device (keep
    the two in step: tests/sim/test_optimizer_kernel.py compares their bits)."""
    f32 = np.float32
    lr32 = f32(lr)
    decay = f32(hyper["weight_decay"])  # type: ignore[arg-type]
    if name == "sgd":
        momentum, dampening = f32(hyper["momentum"]), f32(hyper["dampening"])  # type: ignore[arg-type]
        if decay:
            grad = grad + decay * param
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.copy()
            else:
                state["momentum_buffer"] = (momentum * state["momentum_buffer"]
                                            + (f32(1) - dampening) * grad)
            buffer = state["momentum_buffer"]
            grad = grad + momentum * buffer if hyper["nesterov"] else buffer
        return (param - lr32 * grad).astype(f32)
    beta1, beta2 = (f32(b) for b in hyper["betas"])  # type: ignore[attr-defined]
    eps = f32(hyper["eps"])  # type: ignore[arg-type]
    if name == "adamw":
        param = param * (f32(1) - lr32 * decay)
    elif decay:
        grad = grad + decay * param
    exp_avg = state.get("exp_avg", np.zeros_like(param))
    exp_avg_sq = state.get("exp_avg_sq", np.zeros_like(param))
    exp_avg = exp_avg + (grad - exp_avg) * (f32(1) - beta1)  # torch's lerp_
    exp_avg_sq = exp_avg_sq * beta2 + (f32(1) - beta2) * grad * grad
    state["exp_avg"], state["exp_avg_sq"] = exp_avg.astype(f32), exp_avg_sq.astype(f32)
    correction1 = 1 - float(beta1) ** step
    correction2 = 1 - float(beta2) ** step
    step_size = f32(lr / correction1)
    denominator = np.sqrt(exp_avg_sq) / f32(math.sqrt(correction2)) + eps
    return (param - step_size * (exp_avg / denominator)).astype(f32)


def clip_gradients(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale `grads` in place so that their global L2 norm is at most `max_norm`
    (`clip_grad_norm_`); returns the norm before clipping. (On a device:
    `netc_optimizer_clip`, whose double sum gives a coefficient within 1e-6 of this one.)"""
    norms = np.array([np.linalg.norm(g.ravel()) for g in grads.values()], np.float32)
    total = float(np.linalg.norm(norms))
    coefficient = np.float32(min(max_norm / (total + CLIP_EPSILON), 1.0))
    for name in grads:
        grads[name] = (grads[name] * coefficient).astype(np.float32)
    return total


class Trainer:
    """A train section's network with its weights and optimizer state: `step(batch)` takes
    one optimizer step on a batch and returns the loss before the update."""

    def __init__(self, spec: TrainSpec, weights: Mapping[str, np.ndarray], *,
                 total_steps: int | None = None, backend: str = "reference", seed: int = 0,
                 precision: str = "f32"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown training backend {backend!r}; one of {BACKENDS}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown training precision {precision!r}; one of {PRECISIONS}")
        self.precision = precision
        """f32, or bf16-/f16-mixed: the step in 16 bits, f32 weights (netc.mixed_precision)."""
        self.scaler = LossScaler() if precision in SCALED else None
        """f16-mixed's dynamic loss scale (torch.amp.GradScaler's)."""
        self.spec = spec
        self.backend = backend
        self._graph: Graph | None = None
        """The training graph with the gradient outputs, built at the first step."""
        self._plan: tuple[Any, Any] | None = None
        """On cudasim/cuda: that graph compiled (one plan runs at every batch size) and its
        runner."""
        self.weights = {k: np.asarray(v).copy() for k, v in weights.items()}
        self.state = OptimizerState()
        self.total_steps = total_steps
        self.seed = seed
        """Dropout's masks are drawn from (seed, step): `netc train --seed`."""

    @functools.cached_property
    def reached(self) -> frozenset[str]:
        """The parameters the loss depends on."""
        graph = self.spec.graph
        pending, seen = [dict(graph.outputs)["loss"]], set()
        while pending:
            node = graph.producer(pending.pop())
            if node.id not in seen:
                seen.add(node.id)
                pending.extend(node.inputs)
        return frozenset(node.id for node in graph.params if node.id in seen)

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return learning_rate(float(self.spec.optimizer.hyper["lr"]), self.spec.schedule,
                             self.state.steps, self.total_steps)

    def gradients(self, batch: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on `batch` and its gradient (f32) for every trainable parameter it reads.

        Mixed precision (`netc.mixed_precision`): the step's graph stores the network in 16
        bits, the f32 weights rounded as they are read. f16-mixed feeds the loss scale, unscales
        the gradients and updates the scale (`GradScaler.unscale_` and `update`); then
        `scaler.should_skip()` says whether the gradients overflowed, and `step` skips them."""
        if self.scaler is not None:
            batch = {**batch, LOSS_SCALE_INPUT: np.float32(self.scaler.scale)}
        outputs = self._run(batch)
        grads = {name[len(GRADIENT_PREFIX):]: value.astype(np.float32)
                 for name, value in outputs.items() if name.startswith(GRADIENT_PREFIX)}
        if self.scaler is not None:
            self.scaler.unscale(grads)
            self.scaler.update()
        return float(outputs["loss"]), grads

    @property
    def updates(self) -> int:
        """The optimizer updates taken (Adam's step count): the steps less those f16-mixed
        skipped because their gradients overflowed."""
        return self.state.steps - (self.scaler.skipped if self.scaler is not None else 0)

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The training graph's outputs on `batch` at this step; the buffers' new values
        (`buffer:<id>`: running statistics) replace the weights', and every batchnorm's
        `num_batches_tracked` counts the step."""
        inputs = dict(batch)
        if STEP_INPUT in self.graph:
            inputs[SEED_INPUT] = np.int64(self.seed)
            inputs[STEP_INPUT] = np.int64(self.state.steps)
        if self.backend == "reference":
            outputs = run_reference(self.graph, self.weights, inputs)
        else:
            outputs = self._run_plan(inputs)
        # The host's dict, not `weights`: reading that would download the parameters a device
        # optimizer holds. A replaced array is uploaded at the next step.
        host = self._host_weights
        for name, value in outputs.items():
            if name.startswith(BUFFER_PREFIX):
                buffer = name[len(BUFFER_PREFIX):]
                host[buffer] = value.astype(host[buffer].dtype)
        for counter in batchnorm_counters(self.spec.graph):
            host[counter] = np.asarray(host.get(counter, 0), np.int64) + 1
        return outputs

    @property
    def graph(self) -> Graph:
        """The training graph: the network in training mode (`netc.training_mode`) with the
        gradient outputs (`netc.autodiff`)."""
        from netc.autodiff import AutodiffError

        if self._graph is None:
            try:
                # As PyTorch skips a parameter whose .grad is None, one the loss does not
                # read gets no gradient: it is neither clipped, updated nor decayed.
                self._graph = backward(*mixed_forward(training_mode(self.spec.graph),
                                                      self.precision),
                                       wrt=[p for p in self.spec.trainable if p in self.reached])
            except AutodiffError as exc:
                raise CompileError([Diagnostic(
                    "E0460", f"cannot train `{self.spec.network}` yet: {exc}",
                    help="docs/training.md lists the ops with gradients")]) from None
        return self._graph

    def _runner(self) -> tuple[Any, Any]:
        """The training graph compiled by the driver (-O2) and loaded on the backend's device:
        the forward and backward kernels of one step, one launch plan for every batch size."""
        from netc.backends import gpu, simulator
        from netc.driver import CompileOptions, build_binary, compile_graph
        from netc.runtime.executor import PlanRunner

        if self._plan is None:
            compiled = compile_graph(self.graph, CompileOptions(level=2))
            device = simulator({}) if self.backend == "cudasim" else gpu({})
            runner = PlanRunner(compiled.plan, device,
                                compiled.optimized.derive_weights(self.weights),
                                build_binary(compiled.plan, device))
            self._plan = (compiled, runner)
        return self._plan

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """One optimizer step on `batch`; returns the loss before the update. On cudasim and
        cuda the update runs on the device (`_device_step`), elsewhere in NumPy (`update`,
        the oracle)."""
        device_optimizer = self._device_optimizer()
        if device_optimizer is not None:
            return self._device_step(batch, device_optimizer)
        loss, grads = self.gradients(batch)
        if self.scaler is not None and self.scaler.should_skip():
            self.state.steps += 1  # overflowed: the schedule moves on, no weight or state does
            return loss
        if self.spec.clip_grad_norm is not None:
            clip_gradients(grads, self.spec.clip_grad_norm)
        lr = self.lr
        self.state.steps += 1
        optimizer = self.spec.optimizer
        for name, grad in grads.items():
            self.weights[name] = update(optimizer.name, optimizer.hyper, lr,
                                        self.weights[name].astype(np.float32), grad,
                                        self.state.buffers.setdefault(name, {}),
                                        self.updates)
        return loss

    # The optimizer on the device (cudasim, cuda): netc.optimizer_kernel. Class-level
    # defaults, so that __init__ sets none of it.
    _optimizer: Any = None
    """The `DeviceOptimizer` updating the plan's parameters in place, once made."""
    _optimizer_decided = False
    _weights_on_device = False
    """The device holds newer values of the optimizer's parameters than `_host_weights`."""
    _keep_gradients = False
    """While a device step runs the plan: the gradient outputs stay on the device."""

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The network's parameters and buffers, on the host, by name. With a device optimizer
        (cudasim, cuda) the parameters it updates live on the device: reading `weights`
        after a step downloads them, once. Give a parameter a new value by replacing its array
        (`trainer.weights[name] = value`), not by writing into it: a step uploads the arrays
        that were replaced."""
        if self._weights_on_device:
            self._weights_on_device = False
            _, runner = self._runner()
            for name in self._optimizer.names:
                self._host_weights[name] = self._uploaded[name] = runner.param_value(name)
        return self._host_weights

    @weights.setter
    def weights(self, value: dict[str, np.ndarray]) -> None:
        self._host_weights = value
        self._weights_on_device = False
        self._uploaded: dict[str, np.ndarray] = {}
        """By parameter: the host array whose value the plan's buffer holds (uploaded or
        downloaded last)."""

    def _device_optimizer(self) -> Any:
        """The `DeviceOptimizer` (netc.optimizer_kernel) that updates the plan's parameters in
        place from its gradient outputs; None where the update runs on the host: on the
        reference backend, in mixed precision (unscaling and skipped steps are the host's),
        or for a plan whose parameters are not the f32 weights themselves."""
        from netc.optimizer_kernel import OPTIMIZERS, DeviceOptimizer

        if self._optimizer_decided:
            return self._optimizer
        self._optimizer_decided = True
        optimizer = self.spec.optimizer
        if (self.backend == "reference" or self.precision != "f32"
                or optimizer.name not in OPTIMIZERS):
            return None
        compiled, runner = self._runner()
        outputs = dict(compiled.plan.outputs)
        buffers = {buffer.name: buffer for buffer in compiled.plan.buffers}
        shapes = {}
        for name, _ in self.graph.outputs:
            if not name.startswith(GRADIENT_PREFIX):
                continue
            param_name = name[len(GRADIENT_PREFIX):]
            try:
                param, _ = runner.param_handle(param_name)
            except KeyError:
                return None
            grad = buffers[outputs[name]]
            if (compiled.optimized.transforms or param.dtype != "f32" or grad.dtype != "f32"
                    or tuple(grad.shape) != tuple(param.shape)):
                return None
            shapes[param_name] = tuple(param.shape)
        self._optimizer = DeviceOptimizer(runner.device, optimizer.name, optimizer.hyper,
                                          shapes, clip_grad_norm=self.spec.clip_grad_norm)
        return self._optimizer

    def _run_plan(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The plan's outputs on `inputs`, the weights uploaded first: all of them, or with a
        device optimizer those whose arrays changed since (the optimizer's stay on the
        device); during a device step the gradient outputs are not downloaded."""
        compiled, runner = self._runner()
        if self._device_optimizer() is None:
            runner.update_weights(compiled.optimized.derive_weights(self.weights))
            return runner.run(inputs)
        host = self._host_weights
        changed = {buffer.node: host[buffer.node] for buffer in compiled.plan.buffers
                   if buffer.role == "param"
                   and self._uploaded.get(buffer.node) is not host[buffer.node]}
        runner.update_weights(changed, partial=True)
        self._uploaded.update(changed)
        if not self._keep_gradients:
            return runner.run(inputs)
        return runner.run(inputs, download=[name for name, _ in compiled.plan.outputs
                                            if not name.startswith(GRADIENT_PREFIX)])

    def _device_step(self, batch: Mapping[str, np.ndarray], optimizer: Any) -> float:
        """`step` on cudasim/cuda: the plan leaves the gradients on the device, where the
        optimizer kernels clip them and update the parameters and the state in place; nothing
        but the loss (and the network's other outputs) comes back."""
        self._keep_gradients = True
        try:
            loss, _ = self.gradients(batch)
        finally:
            self._keep_gradients = False
        state = self.state
        if optimizer.owner is None or optimizer.owner[0] is not state or \
                optimizer.owner[1] != state.version:
            optimizer.load_state(state.buffers)  # a new run's, or a resumed one's
            optimizer.owner = (state, state.version)
        lr = self.lr
        state.steps += 1
        _, runner = self._runner()
        optimizer.step({name: runner.param_handle(name)[1] for name in optimizer.names},
                       {name: runner.output_handle(GRADIENT_PREFIX + name)[1]
                        for name in optimizer.names}, lr, self.updates)
        state.on_device(optimizer.state)
        self._weights_on_device = True
        return loss

    def evaluate(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The training graph's outputs (the network's and `loss`) on `batch`, no update, on
        the reference interpreter whatever the backend (validation needs no gradients)."""
        return run_reference(self.spec.graph, self.weights, batch)


def batches(count: int, batch: int, *, shuffle: bool, seed: int,
            epoch: int) -> Iterator[np.ndarray]:
    """The example indices of each batch of one epoch: in order ([0:B], [B:2B], ...) or a
    permutation drawn from (seed, epoch) alone, so that a resumed run draws the same; the
    last batch may be smaller (PyTorch's drop_last=False)."""
    order = (np.random.default_rng([seed, epoch]).permutation(count) if shuffle
             else np.arange(count))
    for start in range(0, count, batch):
        yield order[start:start + batch]


# Data and checkpoints ---------------------------------------------------------------------

CHECKPOINT_FORMAT = "netc-checkpoint-1"
OPTIMIZER_PREFIX = "optimizer."
"""A checkpoint holds the weights under their names and the optimizer state as
`optimizer.<buffer>.<param>` (`momentum_buffer`, `exp_avg`, `exp_avg_sq`)."""


def load_dataset(path: str, spec: TrainSpec) -> dict[str, np.ndarray]:
    """One array per network input and per section input, keyed by name, the examples along
    the first axis (E0461 names what is missing, extra or of unequal length)."""
    from netc.weights import read_tensors

    arrays = read_tensors(path)
    wanted = [node.id for node in spec.graph.inputs]
    problems = [f"no array `{name}`" for name in wanted if name not in arrays]
    problems += [f"an array `{name}` that is no input" for name in arrays if name not in wanted]
    lengths = {len(arrays[name]) for name in wanted if name in arrays and arrays[name].ndim}
    if len(lengths) > 1:
        problems.append("arrays of different lengths (" + ", ".join(
            f"`{n}`: {len(arrays[n])}" for n in wanted if n in arrays) + ")")
    if problems:
        raise CompileError([Diagnostic(
            "E0461", f"`{path}` does not fit the train section of `{spec.network}`: "
            + "; ".join(problems),
            help="it must hold one array per input (" + ", ".join(f"`{n}`" for n in wanted)
                 + "), the examples along the first axis")])
    data = {}
    for node in spec.graph.inputs:
        kind = np.int64 if node.type.dtype in ("i32", "i64") else (
            np.bool_ if node.type.dtype == "bool" else np.float32)
        data[node.id] = np.asarray(arrays[node.id]).astype(kind)
    return data


def save_checkpoint(path: str, trainer: Trainer, meta: Mapping[str, object]) -> None:
    """Weights, optimizer state and where the run is, atomically (safetensors with metadata):
    a failure or Ctrl-C leaves the earlier file as it was."""
    from safetensors.numpy import save_file

    from netc.files import atomic_path

    # Not np.ascontiguousarray, which makes a 0-d buffer (num_batches_tracked) 1-d.
    tensors = {name: np.asarray(value).copy(order="C") for name, value in trainer.weights.items()}
    for param, buffers in trainer.state.buffers.items():
        for buffer, value in buffers.items():
            tensors[f"{OPTIMIZER_PREFIX}{buffer}.{param}"] = np.ascontiguousarray(value)
    metadata = {"format": CHECKPOINT_FORMAT, "steps": str(trainer.state.steps),
                "precision": trainer.precision,
                **(trainer.scaler.metadata() if trainer.scaler is not None else {}),
                **{key: str(value) for key, value in meta.items()}}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], OptimizerState, dict[str, str]]:
    """What `save_checkpoint` wrote: the weights, the optimizer state, the metadata."""
    from safetensors import safe_open

    from netc.weights import read_tensors

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # the library raises its own error types
        raise CompileError([Diagnostic("E0462", f"cannot read checkpoint `{path}`: {exc}")]) \
            from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CompileError([Diagnostic(
            "E0462", f"`{path}` is not a checkpoint netc wrote (no `{CHECKPOINT_FORMAT}` "
            "metadata)", help="resume from a file in the --checkpoint-dir of a `netc train` "
                              "run")])
    tensors = read_tensors(path)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    state = OptimizerState(int(metadata["steps"]), {})
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            buffer, param = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.buffers.setdefault(param, {})[buffer] = value.astype(np.float32)
    return weights, state, metadata


# A run: epochs of batches -----------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a run is, after an update (for a progress bar)."""

    epoch: int
    epochs: int
    batch: int
    """Updates done in this epoch."""
    batches: int
    loss: float
    examples_per_s: float
    seconds_left: float


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    loss: float
    """The mean training loss over the epoch's batches (weighted by their examples)."""
    seconds: float = 0.0
    """Wall time of the epoch's updates (validation and checkpoint not included)."""
    val_loss: float | None = None
    val_accuracy: float | None = None
    checkpoint: str | None = None


def classified(spec: TrainSpec) -> tuple[str, str] | None:
    """(network output, label input) of a classification loss whose logits are an output,
    for the validation accuracy; None for other losses."""
    outputs = {value: name for name, value in spec.graph.outputs}
    for node in spec.graph.compute_nodes:
        if node.op in ("cross_entropy", "nll_loss") and node.inputs[0] in outputs and \
                node.inputs[1] in spec.inputs:
            return outputs[node.inputs[0]], node.inputs[1]
    return None


def validate(trainer: Trainer, data: Mapping[str, np.ndarray],
             batch: int) -> tuple[float, float | None]:
    """The mean loss over `data` and, for a classification loss, the accuracy."""
    count = len(next(iter(data.values())))
    target = classified(trainer.spec)
    total, correct = 0.0, 0
    for start in range(0, count, batch):
        part = {name: value[start:start + batch] for name, value in data.items()}
        outputs = trainer.evaluate(part)
        size = len(next(iter(part.values())))
        total += float(outputs["loss"]) * size
        if target is not None:
            correct += int(np.sum(np.argmax(outputs[target[0]], axis=-1) == part[target[1]]))
    return total / count, (correct / count if target is not None else None)


def fit(trainer: Trainer, data: Mapping[str, np.ndarray], *, batch: int, total_steps: int,
        shuffle: bool, seed: int, val: Mapping[str, np.ndarray] | None = None,
        checkpoint_dir: str | None = None,
        progress: Callable[[Progress], None] | None = None) -> list[EpochEnd]:
    """Run updates from `trainer.state.steps` to `total_steps`; after each epoch (and at the
    last update) validate on `val` and write a checkpoint to `checkpoint_dir`
    (`step-NNNNNN.safetensors`). `progress(Progress)` is called after every update. The
    batches depend only on (seed, epoch), so a resumed run takes the ones it would have."""
    import os
    import time

    count = len(next(iter(data.values())))
    per_epoch = -(-count // batch)
    epochs = -(-total_steps // per_epoch)
    trainer.total_steps = total_steps  # what a cosine schedule decays over
    ended: list[EpochEnd] = []
    started, done_examples = time.perf_counter(), 0
    epoch_loss, epoch_examples = 0.0, 0
    epoch_started = time.perf_counter()
    order: list[np.ndarray] = []
    while trainer.state.steps < total_steps:
        step = trainer.state.steps
        epoch, index = divmod(step, per_epoch)
        if index == 0 or not order:
            order = list(batches(count, batch, shuffle=shuffle, seed=seed, epoch=epoch))
        chosen = order[index]
        loss = trainer.step({name: value[chosen] for name, value in data.items()})
        epoch_loss += loss * len(chosen)
        epoch_examples += len(chosen)
        done_examples += len(chosen)
        rate = done_examples / max(time.perf_counter() - started, 1e-9)
        left = (total_steps - trainer.state.steps) * batch / rate
        if progress is not None:
            progress(Progress(epoch + 1, epochs, index + 1, per_epoch, loss, rate, left))
        if index + 1 == per_epoch or trainer.state.steps == total_steps:
            seconds = time.perf_counter() - epoch_started
            val_loss, accuracy = validate(trainer, val, batch) if val is not None else (None,
                                                                                         None)
            saved = None
            if checkpoint_dir is not None:
                os.makedirs(checkpoint_dir, exist_ok=True)
                saved = os.path.join(checkpoint_dir,
                                     f"step-{trainer.state.steps:06d}.safetensors")
                save_checkpoint(saved, trainer, {"seed": seed, "batch": batch,
                                                 "total_steps": total_steps,
                                                 "shuffle": shuffle,
                                                 "network": trainer.spec.network})
            ended.append(EpochEnd(epoch + 1, epoch_loss / epoch_examples, seconds, val_loss,
                                  accuracy, saved))
            epoch_loss, epoch_examples = 0.0, 0
            epoch_started = time.perf_counter()
    return ended
