"""Graphs and data for code-generation tests, built straight from the op registry.

Graphs come from `netc.ops.builder.GraphBuilder` (attributes go through the registry exactly
as the front end sends them). This module adds what the kernel tests need on top:

* `parallel(op, ...)`: one graph applying the same op to the same input several times, one
  copy per tile configuration, so a single module (one simulator compile) checks them all;
* random parameters and inputs, never the (often constant) initial values, so a kernel that
  reads the wrong element or parameter gives a wrong answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from netc.codegen.tiles import Tile
from netc.ir import Dim, Graph
from netc.ops.builder import GraphBuilder
from netc.weights import param_specs

__all__ = ["GraphBuilder", "parallel", "random_inputs", "random_weights"]


def parallel(op: str, inputs: Mapping[str, tuple[str, Sequence[Dim]]],
             tiles: Sequence[Tile | None], *, name: str = "t",
             **attrs: Any) -> tuple[Graph, dict[str, Tile]]:
    """`op` applied to `inputs` (name -> (dtype, shape)) once per entry of `tiles`, outputs
    `out0`, `out1`, ...; returns the graph and the tile override of each copy (None: the
    default)."""
    builder = GraphBuilder(name)
    values = [builder.input(input_name, dtype, shape)
              for input_name, (dtype, shape) in inputs.items()]
    overrides: dict[str, Tile] = {}
    for index, tile in enumerate(tiles):
        node = builder.op(op, *values, **attrs)
        if tile is not None:
            overrides[node] = tile
        builder.output(f"out{index}", node)
    return builder.build(), overrides


def random_weights(graph: Graph, rng: np.random.Generator, *,
                   shared: bool = False) -> dict[str, np.ndarray]:
    """Random parameters at PyTorch's scales, so activations stay of order one through a deep
    network: U(-b, b) where PyTorch draws from it; around 1 (0.5 to 1.5) where it starts at 1
    (batchnorm's weight and variance); U(-1, 1) where it starts at 0. `shared`: parameters of
    the same name and shape in different layers get the same values (for `parallel`)."""
    weights = {}
    for name, spec in param_specs(graph).items():
        if not spec.operand:  # a buffer no kernel reads (num_batches_tracked): may be left out
            continue
        kind, value = spec.init
        low, high = ((-value, value) if kind == "uniform" else
                     (0.5, 1.5) if value == 1.0 else (-1.0, 1.0))
        weights[name] = rng.uniform(low, high, size=spec.shape).astype(np.float32)
    if not shared:
        return weights
    by_role: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    for name in sorted(weights):
        role = (name.rsplit(".", 1)[-1], weights[name].shape)
        weights[name] = by_role.setdefault(role, weights[name])
    return weights


def random_inputs(graph: Graph, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 inputs in [-2, 2), with every named dimension set to `batch`."""
    inputs = {}
    for node in graph.inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in node.type.shape)
        inputs[node.id] = rng.uniform(-2.0, 2.0, size=shape).astype(np.float32)
    return inputs
