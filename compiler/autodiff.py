"""Reverse-mode autodiff on the graph IR: `backward(graph, loss)` is a graph in the same IR
that computes the forward graph's outputs and the gradient of a scalar loss with respect to
every trainable parameter, as the outputs `grad:<param id>`.

It walks the nodes in reverse topological order and calls each op's vector-Jacobian product
(`OpDef.vjp`, beside the op; convention in `netc.ops.registry`), which builds the backward
nodes with ordinary ops. The cotangents of a value read several times are summed. The result
is checked by the verifier, so passes and backends take it like any graph.

Which values are differentiated: a value is *active* when it is a float value computed from a
parameter differentiated (`wrt`). Integers and booleans carry no gradient, so a comparison,
`argmax`, a cast to an integer, `arange` or an integer input stops it: their VJPs give none to
integer or boolean inputs, and nothing is asked of an op whose outputs are not float. An
active node on the way to the loss whose op has no VJP is differentiated through its
decomposition when it has one (recomputing the pieces in the backward part: gelu, silu, mish,
attention, l1_loss, bce_with_logits, ...); otherwise `backward` raises `AutodiffError`
naming the op and its line in the `.net` file.

Activations are kept, not recomputed: a VJP reads the forward values it needs (the input,
the output) from the forward part of the graph. Backward nodes carry the span of the forward
node they differentiate and are named `<that node's id>.grad.<op><k>`. A parameter the loss
does not depend on gets a zero gradient (PyTorch leaves its `.grad` unset).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from netc.ir import FLOAT_DTYPES, SOURCE_OPS, Attrs, Graph, Node, TensorType, split_value
from netc.ops.apply import apply_op, bind_attrs
from netc.ops.gradients import zeros
from netc.ops.registry import REGISTRY, ShapeError
from netc.ops.verify import verify
from netc.weights import param_specs

GRADIENT_PREFIX = "grad:"
"""The output holding the gradient of parameter `p` is named `grad:p`."""


class AutodiffError(ValueError):
    """The loss cannot be differentiated: an op on the way has no gradient yet, or the loss
    is not a scalar. The message names the op and its place in the source."""


def trainable_params(graph: Graph) -> tuple[str, ...]:
    """The ids of `graph`'s trainable parameters, in graph order: every `param` node but the
    buffers (`ParamSpec.trainable` False: batchnorm's running statistics)."""
    specs = param_specs(graph)
    return tuple(node.id for node in graph.params
                 if node.id not in specs or specs[node.id].trainable)


def backward(graph: Graph, loss: str, wrt: Iterable[str] | None = None) -> Graph:
    """`graph` plus the gradient of the scalar value `loss` (an output's name or a value
    reference) with respect to each parameter in `wrt` (default: `trainable_params`), as the
    outputs `grad:<param id>`."""
    loss_ref = dict(graph.outputs).get(loss, loss)
    wanted = tuple(trainable_params(graph) if wrt is None else wrt)
    for param in wanted:
        if param not in graph or graph[param].op != "param":
            raise AutodiffError(f"`{param}` is no parameter of the graph `{graph.name}`")
    try:
        loss_type = graph.value_type(loss_ref)
    except KeyError:
        raise AutodiffError(f"`{loss}` is neither an output nor a value of the graph "
                            f"`{graph.name}`") from None
    if loss_type.shape != () or loss_type.dtype not in FLOAT_DTYPES:
        raise AutodiffError(f"the loss `{loss}` must be a float scalar, got {loss_type}")
    tape = _Tape(graph)
    active = tape.active_values(graph.nodes, set(wanted))
    tape.owner = graph.producer(loss_ref)
    seed = tape.constant(1.0, loss_type.dtype) if loss_ref in active else None
    gradients = tape.reverse(graph.nodes, {loss_ref: [seed]} if seed else {}, active)
    outputs = list(graph.outputs)
    for param in wanted:
        param_type = graph[param].type
        tape.owner = graph[param]
        gradient = gradients.get(param) or zeros(tape, param_type.shape, param_type.dtype)
        outputs.append((GRADIENT_PREFIX + param, gradient))
    result = Graph(graph.name, graph.nodes + tape.needed(outputs), tuple(outputs))
    verify(result)
    return result


class _Tape:
    """Builds the backward nodes after the forward graph: a `netc.ops.registry.Composer`
    whose `op` also takes a layer's parameters, given after its tensor inputs (conv2d's
    data gradient is a conv_transpose2d by the same weight)."""

    def __init__(self, graph: Graph) -> None:
        self.types: dict[str, TensorType] = {
            ref: kind for node in graph.nodes for ref, kind in zip(node.values, node.types)}
        self.nodes: list[Node] = []
        self.owner: Node | None = None
        self.count = 0
        self.active: set[str] = set()

    # The Composer interface ------------------------------------------------------------

    def type_of(self, value: str) -> TensorType:
        return self.types[value]

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        opdef = REGISTRY[op]
        bound = bind_attrs(opdef, attrs)
        params = len(opdef.param_names(bound)) if opdef.has_params else 0
        tensors = inputs[:len(inputs) - params]
        applied = apply_op(opdef, bound, [self.types[value] for value in tensors])
        operands = [spec for spec in applied.params if spec.operand]
        given = [self.types[value].shape for value in inputs[len(tensors):]]
        if given != [spec.shape for spec in operands]:
            raise ShapeError(f"`{op}` takes parameters of shapes "
                             f"{[spec.shape for spec in operands]}, got {given}")
        return self._add(Node(self._id(op), op, tuple(inputs), applied.attrs, applied.type,
                              extra_types=applied.extra_types))

    def constant(self, value: float, dtype: str = "f32") -> str:
        return self._add(Node(self._id("constant"), "constant", (), Attrs(value=float(value)),
                              TensorType(dtype, ())))

    def _id(self, op: str) -> str:
        owner = self.owner.id if self.owner is not None else "loss"
        node_id = ""
        while not node_id or node_id in self.types:  # never a forward node's id
            self.count += 1
            node_id = f"{owner}.grad.{op}{self.count}"
        return node_id

    def _add(self, node: Node) -> str:
        if self.owner is not None:
            node = dataclasses.replace(node, span=self.owner.span)
        self.nodes.append(node)
        self.types.update(zip(node.values, node.types))
        return node.id

    # Reverse mode ------------------------------------------------------------------------

    def active_values(self, nodes: Sequence[Node], active: set[str]) -> set[str]:
        """`active` (values already known to depend on what is differentiated) plus every
        float value of `nodes` computed from one of them; remembered as `self.active`."""
        active = set(active)
        for node in nodes:
            if node.op in SOURCE_OPS or not any(i in active for i in node.inputs):
                continue
            active.update(ref for ref, kind in zip(node.values, node.types)
                          if kind.dtype in FLOAT_DTYPES)
        self.active = active
        return active

    def reverse(self, nodes: Sequence[Node], seeds: dict[str, list[str]],
                active: set[str]) -> dict[str, str]:
        """Runs `nodes` backwards from the cotangents `seeds` (value -> its cotangents, to
        be summed); returns the summed cotangent of every value read by `nodes` but not
        computed there (parameters, inputs, the operands of a decomposed op)."""
        pending = {ref: list(cotangents) for ref, cotangents in seeds.items()}
        for node in reversed(nodes):
            if node.op in SOURCE_OPS or node.id not in active or node.id not in pending:
                continue
            if node.extra_types:
                raise self._error(node, "has several outputs, which autodiff does not take "
                                        "yet")
            cotangent = self._sum(pending.pop(node.id), node)
            for ref, gradient in zip(node.inputs, self._vjp(node, cotangent)):
                if gradient is not None and ref in active:
                    pending.setdefault(ref, []).append(gradient)
        return {ref: self._sum(cotangents, None) for ref, cotangents in pending.items()}

    def _sum(self, cotangents: list[str], owner: Node | None) -> str:
        total = cotangents[0]
        self.owner = owner
        for other in cotangents[1:]:
            total = self.op("add", total, other)
        return total

    def _vjp(self, node: Node, cotangent: str) -> tuple[str | None, ...]:
        opdef = REGISTRY[node.op]
        self.owner = node
        try:
            if opdef.vjp is not None:
                gradients = tuple(opdef.vjp(self, node.attrs, node.inputs, node.id, cotangent))
            elif opdef.decompose is not None:
                gradients = self._through_decomposition(node, cotangent)
            else:
                raise self._error(node, "has no gradient yet (no vector-Jacobian product "
                                        "in its registry entry), but the loss depends on a "
                                        "parameter through it")
        except ShapeError as problem:
            raise self._error(node, f"cannot be differentiated here: {problem}") from None
        if len(gradients) != len(node.inputs):
            raise AssertionError(f"`{node.op}`'s VJP gives {len(gradients)} gradients for "
                                 f"{len(node.inputs)} inputs")
        for ref, gradient in zip(node.inputs, gradients):
            if gradient is not None and self.types[gradient] != self.types[ref]:
                raise AssertionError(f"`{node.op}`'s VJP gives {self.types[gradient]} for "
                                     f"its input {ref} of type {self.types[ref]}")
        return gradients

    def _through_decomposition(self, node: Node, cotangent: str) -> tuple[str | None, ...]:
        """The gradients of `node` from its decomposition, whose pieces are computed again
        after the forward graph and differentiated one by one."""
        decompose = REGISTRY[node.op].decompose
        assert decompose is not None
        start = len(self.nodes)
        result = decompose(self, node.attrs, *node.inputs)
        pieces = self.nodes[start:]
        active = self.active_values(pieces, self.active)
        gradients = self.reverse(pieces, {result: [cotangent]}, active)
        # The total for a value the op reads twice (`stack(x, x)`) is given once.
        return tuple(gradients.get(ref) if ref not in node.inputs[:position] else None
                     for position, ref in enumerate(node.inputs))

    def _error(self, node: Node, message: str) -> AutodiffError:
        where = f"{node.span}: " if node.span else ""
        layer = f", layer {node.layer}" if node.layer else ""
        return AutodiffError(f"{where}`{node.op}` ({node.id}{layer}) {message}")

    def needed(self, outputs: Sequence[tuple[str, str]]) -> tuple[Node, ...]:
        """The backward nodes some output reads, directly or not, in order."""
        wanted = {split_value(ref)[0] for _, ref in outputs}
        for node in reversed(self.nodes):
            if node.id in wanted:
                wanted.update(split_value(ref)[0] for ref in node.inputs)
        return tuple(node for node in self.nodes if node.id in wanted)
