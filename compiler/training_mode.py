"""Training mode: `training_mode(graph)` is the forward graph as a training step computes it, in
the same IR with ordinary ops, so autodiff, the passes, the reference and the CUDA backends
take it as any graph. Two ops mean something else in training (PyTorch's `model.train()`):

* `batchnorm` normalises by the batch's statistics over every axis but 1 (the mean and the
  biased variance, as `F.batch_norm(training=True)`, computed by `mean`, `sub`, `mul`,
  `rsqrt`), then scales and shifts: `batchnorm_train(x, mean, inverse, weight, bias)`, whose
  VJP is the closed form of the whole normalisation (netc.ops.normalization), so the
  statistics' reductions are not differentiated. It also computes the
  updated running statistics, PyTorch's rule with the *unbiased* batch variance
  (n / (n - 1), n the elements per channel, a named batch dimension counted at run time):

      new = momentum · batch + (1 - momentum) · old

  as extra graph outputs `buffer:<param id>` (`BUFFER_PREFIX`) for `running_mean` and
  `running_var`, which the Trainer writes back into its weights after each step (frozen
  layers included, as PyTorch). `num_batches_tracked` (an i64 buffer no op reads) is counted
  by the Trainer (`batchnorm_counters`). No batchnorm is left, so nothing can fold one.
* `dropout` becomes `dropout_train(x, seed, step)` (`netc.ops.philox`): a mask from the
  counter-based Philox4x32-10 of (seed, step, stream, element index), the stream numbering
  the graph's dropout layers in order. `seed` and `step` are the i64 scalar inputs
  `SEED_INPUT` and `STEP_INPUT` (added only when the graph has a dropout), so one compiled
  plan runs every step and a resumed run draws the masks it would have drawn.

Every new node carries the span and layer of the node it replaces; the node that gives the
op's result keeps the op's id, so readers and outputs need no renaming. The others are named
`<id>.train.<op><k>`. The result passes the verifier.
"""

from __future__ import annotations

import math
from typing import Any

from netc.ir import Attrs, Graph, Node, TensorType
from netc.ops.apply import apply_op, bind_attrs
from netc.ops.gradients import count
from netc.ops.registry import REGISTRY
from netc.ops.verify import verify
from netc.weights import param_specs

BUFFER_PREFIX = "buffer:"
"""The output holding the updated value of buffer `b` (a running statistic) is `buffer:b`."""
SEED_INPUT = "rng.seed"
"""The i64 scalar input holding the run's seed (`netc train --seed`); no `.net` input can be
named so (a name has no dot)."""
STEP_INPUT = "rng.step"
"""The i64 scalar input holding the step (0 for the first update)."""
TRAINING_OPS = ("batchnorm", "dropout")
"""The ops whose training-mode meaning `training_mode` builds."""


def training_mode(graph: Graph) -> Graph:
    """`graph` with every batchnorm and dropout in training mode, and the running statistics'
    new values as the outputs `buffer:<param id>` (the module doc says how)."""
    if not any(node.op in TRAINING_OPS for node in graph.compute_nodes):
        return graph
    builder = _Builder(graph)
    extra_outputs: list[tuple[str, str]] = []
    streams = 0
    if any(node.op == "dropout" for node in graph.compute_nodes):
        for name in (SEED_INPUT, STEP_INPUT):
            builder.nodes.append(Node(name, "input", (), Attrs(), TensorType("i64", ())))
            builder.types[name] = TensorType("i64", ())
    for node in graph.nodes:
        if node.op == "batchnorm":
            builder.owner = node
            extra_outputs += _batchnorm(builder, node)
        elif node.op == "dropout":
            builder.owner = node
            builder.add(node.id, "dropout_train", (node.inputs[0], SEED_INPUT, STEP_INPUT),
                        p=node.attrs["p"], stream=streams)
            streams += 1
        else:
            builder.nodes.append(node)
    result = Graph(graph.name, tuple(builder.nodes), graph.outputs + tuple(extra_outputs))
    verify(result)
    return result


def batchnorm_counters(graph: Graph) -> tuple[str, ...]:
    """The ids of the `num_batches_tracked` buffers of `graph`'s batchnorm layers, which a
    training step adds 1 to (they are no IR operand: no op reads them)."""
    return tuple(name for name, spec in param_specs(graph).items()
                 if spec.name == "num_batches_tracked" and not spec.operand)


def _batchnorm(builder: _Builder, node: Node) -> list[tuple[str, str]]:
    """`node` on the batch's statistics; returns the running statistics' outputs."""
    x, weight, bias, running_mean, running_var = node.inputs
    x_type = builder.types[x]
    axes = [0, *range(2, x_type.rank)]

    def per_channel(value: str) -> str:
        """A [C] value as [C, 1, ...], to broadcast along dim 1 of x."""
        for _ in range(x_type.rank - 2):
            value = builder.op("unsqueeze", value, axis=-1)
        return value

    mean = builder.op("mean", x, axis=axes)
    centered = builder.op("sub", x, per_channel(mean))
    variance = builder.op("mean", builder.op("mul", centered, centered), axis=axes)
    inverse = builder.op("rsqrt", builder.op("add", variance,
                                             builder.constant(node.attrs["eps"], x_type.dtype)))
    # The normalisation as one op whose VJP is the closed form (the reductions above are not
    # differentiated): netc.ops.normalization's batchnorm_train.
    builder.add(node.id, "batchnorm_train", (x, *(per_channel(value) for value in (
        mean, inverse, weight, bias))))

    momentum, dtype = float(node.attrs["momentum"]), x_type.dtype
    unbiased = builder.op("mul", variance, _bessel(builder, x_type, axes))

    def running(batch: str, old: str) -> str:
        return builder.op("add", builder.op("mul", batch, builder.constant(momentum, dtype)),
                          builder.op("mul", old, builder.constant(1.0 - momentum, dtype)))

    return [(BUFFER_PREFIX + running_mean, running(mean, running_mean)),
            (BUFFER_PREFIX + running_var, running(unbiased, running_var))]


def _bessel(builder: _Builder, x_type: TensorType, axes: list[int]) -> str:
    """n / (n - 1), n the elements per channel: a constant, or with a named dimension (known
    at run time only) computed from `netc.ops.gradients.count`."""
    sizes = [x_type.shape[axis] for axis in axes]
    dtype = x_type.dtype
    if all(isinstance(size, int) for size in sizes):
        known = math.prod(int(size) for size in sizes)
        return builder.constant(known / (known - 1) if known > 1 else math.inf, dtype)
    elements = count(builder, x_type.shape, axes, dtype)
    return builder.op("div", elements, builder.op("sub", elements, builder.constant(1.0, dtype)))


class _Builder:
    """Appends nodes applied from the registry, with the span and layer of `owner`."""

    def __init__(self, graph: Graph) -> None:
        self.types = {ref: kind for node in graph.nodes
                      for ref, kind in zip(node.values, node.types)}
        self.nodes: list[Node] = []
        self.owner: Node | None = None
        self.count = 0

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        return self.add(self._fresh(op), op, inputs, **attrs)

    def add(self, node_id: str, op: str, inputs: tuple[str, ...], **attrs: Any) -> str:
        assert self.owner is not None
        opdef = REGISTRY[op]
        applied = apply_op(opdef, bind_attrs(opdef, attrs), [self.types[i] for i in inputs])
        return self._append(Node(node_id, op, tuple(inputs), applied.attrs, applied.type,
                                 self.owner.span, self.owner.layer))

    def constant(self, value: float, dtype: str = "f32") -> str:
        assert self.owner is not None
        return self._append(Node(self._fresh("constant"), "constant", (),
                                 Attrs(value=float(value)), TensorType(dtype, ()),
                                 self.owner.span))

    def _fresh(self, op: str) -> str:
        assert self.owner is not None
        node_id = ""
        while not node_id or node_id in self.types:  # never an id the graph has
            self.count += 1
            node_id = f"{self.owner.id}.train.{op}{self.count}"
        return node_id

    def _append(self, node: Node) -> str:
        self.nodes.append(node)
        self.types[node.id] = node.type
        return node.id
