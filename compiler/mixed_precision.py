"""Mixed-precision training (`netc train --precision bf16-mixed|f16-mixed`): the forward and
backward graph stored in 16 bits, f32 master weights, and for f16 dynamic loss scaling.

    step = backward(*mixed_forward(spec.graph, "f16-mixed"))  # netc.autodiff.backward
    scaler = LossScaler()                                      # torch.amp.GradScaler's defaults

What runs in 16 bits. The forward graph is converted *before* autodiff: the network (every node
one of the network's outputs depends on) goes through `netc.precision.with_precision`, so its
inputs, parameters and activations are stored in bf16/f16 (every kernel computes and accumulates
in f32 whatever it stores, GEMMs on tensor cores); the loss part (the nodes only the `loss`
output needs: the loss ops of the train section; and the running-statistic updates of
training-mode batchnorm, so the buffers keep f32) stays f32, the 16-bit network values it reads
cast to f32 first (as is a loss that is itself a network output). Autodiff then builds each
backward op in its forward op's dtype, as PyTorch's autograd does under `torch.autocast`: the
loss's gradient is f32, cast to 16 bits where it enters the network, and every activation and
parameter gradient is stored in 16 bits. Converting the finished training graph instead would
put the loss and its scaled gradient in 16 bits: bf16 would round the reported loss to 3 digits,
and f16 would overflow on `loss * 2**16` for any loss above 1 (65504 is f16's largest). This is
autocast's split for a CNN or an MLP: convolutions and GEMMs in 16 bits, the losses (its fp32
list) in f32. Unlike autocast, netc also *stores* softmax, layernorm and other fp32-list ops of
the network in 16 bits (they compute in f32; only the stored result is rounded).

Master weights: `Trainer.weights` stays f32; the step's weights are rounded to the storage dtype
when they are read (uploaded to the device, or read by the reference interpreter), once a step.
The gradients come back as f32 arrays (of 16-bit values), so clipping and the optimizer run in
f32 as in an f32 run.

Loss scaling (f16-mixed only; bf16 has f32's range): the graph multiplies the loss by a scalar
input (`LOSS_SCALE_INPUT`) and differentiates that product, so one compiled plan serves every
scale. `LossScaler` is `torch.amp.GradScaler`: the gradients are unscaled in f32 (times the f32
reciprocal of the scale, exact for a power of two); a step with any inf or NaN gradient is
skipped and the scale halves; after `growth_interval` clean steps in a row it doubles.

A skipped step changes no parameter and no optimizer buffer, and Adam's step count (its bias
correction) does not advance, as `GradScaler.step` skips `optimizer.step()`; the batch is
consumed and the learning-rate schedule moves on, as in PyTorch's usual loop
(`scaler.step(opt); scaler.update(); scheduler.step()` each iteration). So
`OptimizerState.steps` counts iterations and the optimizer's count (`Trainer.updates`) is
`steps - scaler.skipped`.

Reference backend: the NumPy interpreter on the mixed graph, which rounds every op's result to
its value's dtype (`netc.reference`): the meaning of 16-bit storage with f32 arithmetic, which
the kernels match up to where they round (a fused kernel rounds only what it stores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping

import numpy as np

from netc.ir import Attrs, Graph, Node, TensorType, split_value
from netc.ops.apply import bind_attrs
from netc.ops.registry import REGISTRY
from netc.ops.verify import verify
from netc.precision import with_precision

PRECISIONS = ("f32", "bf16-mixed", "f16-mixed")
"""What `netc train --precision` takes; the first is the default."""
STORAGE = {"bf16-mixed": "bf16", "f16-mixed": "f16"}
"""The dtype the network's tensors are stored in, by mixed precision."""
SCALED = ("f16-mixed",)
"""The precisions with dynamic loss scaling."""
LOSS_SCALE_INPUT = "amp.loss_scale"
"""The scalar f32 input the loss is multiplied by before it is differentiated (no `.net` input
can be named so: a name has no dot)."""
SCALED_LOSS = "amp.scaled_loss"
"""The output holding `loss * LOSS_SCALE_INPUT`, the value autodiff differentiates."""


def mixed_forward(graph: Graph, precision: str, loss: str = "loss") -> tuple[Graph, str]:
    """The training graph `graph` as `precision` runs it, and the name of the output to
    differentiate: the network in 16 bits, the loss part in f32 (module docstring), for
    f16-mixed `loss * LOSS_SCALE_INPUT`. f32 gives `graph` and `loss` unchanged."""
    if precision == "f32":
        return graph, loss
    storage = STORAGE[precision]
    loss_ref = dict(graph.outputs)[loss]
    # The network's own outputs: not the loss, nor those netc adds (`buffer:<id>`, the new
    # running statistics of training-mode batchnorm, are computed in f32 like the loss).
    network = _ancestors(graph, [ref for name, ref in graph.outputs
                                 if name != loss and ":" not in name])
    converted = with_precision(graph, storage)
    nodes: list[Node] = []
    casts: dict[str, str] = {}
    for node in graph.nodes:
        if node.id in network:
            nodes.append(converted[node.id])
            continue
        inputs = []
        for ref in node.inputs:
            kind = converted.value_type(ref) if split_value(ref)[0] in network else None
            if kind is None or kind.dtype == graph.value_type(ref).dtype:
                inputs.append(ref)
                continue
            if ref not in casts:  # once per value read by the loss
                casts[ref] = _cast_to_f32(graph, ref, kind, node, nodes)
            inputs.append(casts[ref])
        nodes.append(node if tuple(inputs) == node.inputs else
                     Node(node.id, node.op, tuple(inputs), node.attrs, node.type, node.span,
                          node.layer, node.extra_types))
    outputs = list(graph.outputs)
    span = graph.producer(loss_ref).span
    if split_value(loss_ref)[0] in network:  # the loss is a network output: f32 all the same
        loss_ref = _cast_to_f32(graph, loss_ref, converted.value_type(loss_ref),
                                graph.producer(loss_ref), nodes)
        outputs = [(name, loss_ref if name == loss else ref) for name, ref in outputs]
    differentiated = loss
    if precision in SCALED:
        product = _unique(graph, "loss.scaled")
        nodes.append(Node(LOSS_SCALE_INPUT, "input", (), Attrs(), TensorType("f32", ()), span))
        nodes.append(Node(product, "mul", (loss_ref, LOSS_SCALE_INPUT),
                          bind_attrs(REGISTRY["mul"], {}), TensorType("f32", ()), span))
        outputs.append((SCALED_LOSS, product))
        differentiated = SCALED_LOSS
    mixed = Graph(graph.name, tuple(nodes), tuple(outputs))
    verify(mixed)
    return mixed, differentiated


def _ancestors(graph: Graph, refs: list[str]) -> set[str]:
    """The ids of the nodes the values `refs` are computed from, theirs included."""
    seen: set[str] = set()
    pending = list(refs)
    while pending:
        node = graph.producer(pending.pop())
        if node.id not in seen:
            seen.add(node.id)
            pending.extend(node.inputs)
    return seen


def _cast_to_f32(graph: Graph, ref: str, kind: TensorType, reader: Node,
                 nodes: list[Node]) -> str:
    """Append to `nodes` a cast of the 16-bit value `ref` (of type `kind`) to f32, with the
    span of the node that reads it; its id."""
    cast = _unique(graph, ref.replace(":", "_") + ".f32")
    nodes.append(Node(cast, "cast", (ref,), bind_attrs(REGISTRY["cast"], {"dtype": "f32"}),
                      TensorType("f32", kind.shape), reader.span))
    return cast


def _unique(graph: Graph, wanted: str) -> str:
    """`wanted`, or `wanted1`, `wanted2`, ... if `graph` has a node of that id."""
    name, k = wanted, 0
    while name in graph:
        k += 1
        name = f"{wanted}{k}"
    return name


class LossScaler:
    """`torch.amp.GradScaler`'s dynamic loss scale, on the host.

    Each step: the loss is multiplied by `scale` before the backward pass; `unscale(grads)`
    multiplies the gradients by the f32 reciprocal of the scale and notes whether any is inf
    or NaN; `should_skip()` says whether the step must be skipped; `update()` then halves the
    scale after such a step (`backoff_factor`), or doubles it (`growth_factor`) after
    `growth_interval` clean steps in a row, as `GradScaler.update` (a doubled scale that is
    not finite is not taken). The scale is f32, as PyTorch's."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        self.scale = np.float32(init_scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.growth_tracker = 0
        """Clean steps in a row since the last skip or growth."""
        self.skipped = 0
        """Steps skipped so far (the optimizer's own step count is the run's minus these)."""
        self.found_inf = False
        """Whether the gradients last unscaled held an inf or a NaN."""

    def unscale(self, grads: MutableMapping[str, np.ndarray]) -> bool:
        """Unscale `grads` in place: times the f32 reciprocal of the scale (exact, for a
        power of two), in f32; returns whether any is inf or NaN."""
        inverse = np.float32(1.0 / float(self.scale))  # PyTorch: scale.double().reciprocal()
        for name, grad in grads.items():
            grads[name] = (grad.astype(np.float32) * inverse).astype(np.float32)
        self.found_inf = not all(np.isfinite(g).all() for g in grads.values())
        return self.found_inf

    def should_skip(self) -> bool:
        """Whether the step whose gradients were last unscaled must change nothing."""
        return self.found_inf

    def update(self, found_inf: bool | None = None) -> None:
        """After a step: the next step's scale (`GradScaler.update`, `_amp_update_scale_`);
        `found_inf` defaults to what the last `unscale` found."""
        found = self.found_inf if found_inf is None else found_inf
        if found:
            self.scale = np.float32(self.scale * np.float32(self.backoff_factor))
            self.growth_tracker = 0
            self.skipped += 1
        elif self.growth_tracker + 1 == self.growth_interval:
            with np.errstate(over="ignore"):  # an inf is not taken
                grown = np.float32(self.scale * np.float32(self.growth_factor))
            if math.isfinite(grown):
                self.scale = grown
            self.growth_tracker = 0
        else:
            self.growth_tracker += 1

    def metadata(self) -> dict[str, str]:
        """The state a checkpoint keeps (safetensors metadata): the scale's exact f32 value."""
        return {"loss_scale": float(self.scale).hex(), "loss_scale_growth_tracker":
                str(self.growth_tracker), "loss_scale_skipped": str(self.skipped)}

    def load(self, metadata: Mapping[str, str]) -> None:
        """Restore what `metadata()` wrote."""
        self.scale = np.float32(float.fromhex(metadata["loss_scale"]))
        self.growth_tracker = int(metadata["loss_scale_growth_tracker"])
        self.skipped = int(metadata["loss_scale_skipped"])
