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
and run it on the CPU simulator or a GPU. The optimizer update runs on the host (NumPy) on every
backend for now, not yet as a fused kernel.

What this slice of training covers (docs/training.md): f32, networks without training-mode
ops. Batchnorm in training mode (batch statistics, running statistics updated) and dropout (a
counter-based RNG) are refused with a clear error until the training-mode ops land, as is
mixed precision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netc.autodiff import GRADIENT_PREFIX, backward
from netc.diagnostics import CompileError, Diagnostic
from netc.frontend.train import Schedule, TrainSpec
from netc.ir import Graph
from netc.reference import run_reference

TRAINING_MODE_OPS = {"batchnorm": "batchnorm in training mode (batch statistics, running "
                                  "statistics updated)",
                     "dropout": "dropout in training mode (a counter-based RNG)"}
"""Ops whose training-mode meaning differs from inference and is not built yet."""
BACKENDS = ("reference", "cudasim", "cuda")
"""Where the forward and backward graph runs: NumPy, or netc's kernels (one launch plan) on
the CPU simulator or a GPU; the optimizer update runs on the host in every case."""
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


@dataclass
class OptimizerState:
    """Per parameter: SGD's momentum buffer, or Adam's first and second moments; the count
    of updates taken (Adam's bias correction)."""

    steps: int = 0
    buffers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def update(name: str, hyper: Mapping[str, object], lr: float, param: np.ndarray,
           grad: np.ndarray, state: dict[str, np.ndarray], step: int) -> np.ndarray:
    """The parameter after one update of optimizer `name` (`step`: 1 for the first), in
    float32 as PyTorch's single-tensor implementations compute it; `state` is updated."""
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
    (`clip_grad_norm_`); returns the norm before clipping."""
    norms = np.array([np.linalg.norm(g.ravel()) for g in grads.values()], np.float32)
    total = float(np.linalg.norm(norms))
    coefficient = np.float32(min(max_norm / (total + CLIP_EPSILON), 1.0))
    for name in grads:
        grads[name] = (grads[name] * coefficient).astype(np.float32)
    return total


def refuse_training_mode_ops(graph: Graph) -> None:
    """A located error for the first op whose training-mode meaning is not built yet."""
    for node in graph.compute_nodes:
        if node.op in TRAINING_MODE_OPS:
            raise CompileError([Diagnostic(
                "E0460", f"training `{graph.name}` needs {TRAINING_MODE_OPS[node.op]}, "
                "which netc does not have yet", node.span,
                help="train a network without it for now (docs/training.md says what "
                     "training covers today)")])


class Trainer:
    """A train section's network with its weights and optimizer state: `step(batch)` takes
    one optimizer step on a batch and returns the loss before the update."""

    def __init__(self, spec: TrainSpec, weights: Mapping[str, np.ndarray], *,
                 total_steps: int | None = None, backend: str = "reference"):
        refuse_training_mode_ops(spec.graph)
        if backend not in BACKENDS:
            raise ValueError(f"unknown training backend {backend!r}; one of {BACKENDS}")
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
        """The loss on `batch` and its gradient for every trainable parameter it reads."""
        if self.backend == "reference":
            outputs = run_reference(self.graph, self.weights, batch)
        else:
            compiled, runner = self._runner()
            runner.update_weights(compiled.optimized.derive_weights(self.weights))
            outputs = runner.run(batch)
        grads = {name[len(GRADIENT_PREFIX):]: value.astype(np.float32)
                 for name, value in outputs.items() if name.startswith(GRADIENT_PREFIX)}
        return float(outputs["loss"]), grads

    @property
    def graph(self) -> Graph:
        """The training graph with the gradient outputs (`netc.autodiff`)."""
        from netc.autodiff import AutodiffError

        if self._graph is None:
            try:
                # As PyTorch skips a parameter whose .grad is None, one the loss does not
                # read gets no gradient: it is neither clipped, updated nor decayed.
                self._graph = backward(self.spec.graph, "loss",
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
        loss, grads = self.gradients(batch)
        if self.spec.clip_grad_norm is not None:
            clip_gradients(grads, self.spec.clip_grad_norm)
        lr = self.lr
        self.state.steps += 1
        optimizer = self.spec.optimizer
        for name, grad in grads.items():
            self.weights[name] = update(optimizer.name, optimizer.hyper, lr,
                                        self.weights[name].astype(np.float32), grad,
                                        self.state.buffers.setdefault(name, {}),
                                        self.state.steps)
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

    tensors = {name: np.ascontiguousarray(value) for name, value in trainer.weights.items()}
    for param, buffers in trainer.state.buffers.items():
        for buffer, value in buffers.items():
            tensors[f"{OPTIMIZER_PREFIX}{buffer}.{param}"] = np.ascontiguousarray(value)
    metadata = {"format": CHECKPOINT_FORMAT, "steps": str(trainer.state.steps),
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
