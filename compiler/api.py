"""The Python API.

    import netc
    model = netc.load("examples/lenet5.net")          # or netc.loads(text)
    for layer in model.layers:
        print(layer.name, layer.op, layer.shape, layer.params, layer.flops)
    weights = model.init_weights(seed=0)              # or model.load_weights("resnet18.pth")
    outputs = model.run({"image": x}, weights)        # reference backend, NumPy in and out
    run = model.compile("cudasim", weights)           # generated CUDA kernels on the CPU
    outputs = run({"image": x})

    compiled = netc.load_artifact("build/lenet5")     # what `netc compile` wrote
    outputs = compiled.run({"image": x})              # nothing is compiled; no .net needed

`Model.compile` compiles through the compile driver (`netc.driver`) at `-O2`, as `netc run`
does; `compile("cudasim", weights, level=0)` asks for the unfused plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netc.backends import Runner, prepare
from netc.diagnostics import Span
from netc.ir import Dim, Graph, Node, print_graph
from netc.ops import REGISTRY, node_flops
from netc.weights import init_weights, load_state_dict, param_specs

if TYPE_CHECKING:
    from netc.artifacts import Artifact


@dataclass(frozen=True)
class Layer:
    """One computation of the network, as `netc check` lists it."""

    name: str
    op: str
    shape: tuple[Dim, ...]
    dtype: str
    params: int
    flops: int
    """Per batch item (every named dimension taken as 1)."""
    span: Span | None


def describe_node(graph: Graph, node: Node) -> Layer:
    names = REGISTRY[node.op].param_names(node.attrs)
    params = sum(graph[i].type.numel() for i in node.inputs[len(node.inputs) - len(names):]) \
        if names else 0
    sizes = dict.fromkeys(graph.batch_dims(), 1)
    flops = node_flops(node, [graph[i].type for i in node.inputs], sizes)
    return Layer(node.layer or node.id, node.op, node.type.shape, node.type.dtype, params, flops,
                 node.span)


class Model:
    """A checked network: its graph IR and what can be done with it."""

    def __init__(self, graph: Graph):
        self.graph = graph

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def layers(self) -> list[Layer]:
        return [describe_node(self.graph, node) for node in self.graph.compute_nodes]

    @property
    def inputs(self) -> dict[str, tuple[str, tuple[Dim, ...]]]:
        return {n.id: (n.type.dtype, n.type.shape) for n in self.graph.inputs}

    @property
    def outputs(self) -> list[str]:
        return [name for name, _ in self.graph.outputs]

    def parameter_count(self, trainable_only: bool = False) -> int:
        """Elements in the weights; PyTorch's count (`trainable_only`) leaves out buffers such
        as batchnorm's running statistics."""
        return sum(math.prod(spec.shape) for spec in param_specs(self.graph).values()
                   if spec.trainable or not trainable_only)

    def ir(self) -> str:
        return print_graph(self.graph)

    def init_weights(self, seed: int = 0) -> dict[str, np.ndarray]:
        return init_weights(self.graph, seed)

    def load_weights(self, source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """This network's weights from a PyTorch state dict, matched by name: a `.safetensors`,
        `.npz`, `.pt` or `.pth` file, or a mapping such as `module.state_dict()` (see
        `netc.weights.load_state_dict`)."""
        return load_state_dict(self.graph, source)

    def compile(self, backend: str = "reference", weights: Mapping[str, np.ndarray] | None = None,
                **options: Any) -> Runner:
        """A callable that runs the network on `backend`; weights default to fresh ones."""
        return prepare(backend, self.graph, weights if weights is not None else self.init_weights(),
                       **options)

    def run(self, inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
            backend: str = "reference", **options: Any) -> dict[str, np.ndarray]:
        return self.compile(backend, weights, **options)(inputs)

    def __repr__(self) -> str:
        return f"<netc.Model {self.name}: {len(self.graph.compute_nodes)} ops>"


def load(path: str | Path, network: str | None = None) -> Model:
    """Parse and check a `.net` file; raises `netc.CompileError` with every diagnostic."""
    from netc.frontend import load_file

    return Model(load_file(path, network))


def loads(text: str, network: str | None = None, filename: str = "<string>",
          base_dir: str | Path | None = None) -> Model:
    """Like `load`, from a string; imports are resolved against `base_dir` (default: cwd)."""
    from netc.frontend import load_string

    return Model(load_string(text, filename=filename, network=network,
                             base_dir=Path(base_dir) if base_dir is not None else None))


class CompiledModel:
    """A compiled artifact directory (`netc compile MODEL -o DIR`), loaded and verified: it runs
    on `cudasim` or `cuda` from its own binaries, without the `.net` file."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    @property
    def name(self) -> str:
        return self.artifact.network

    @property
    def inputs(self) -> dict[str, tuple[str, tuple[Dim, ...]]]:
        return {b.node: (b.dtype, b.shape) for b in self.artifact.plan.buffers
                if b.role == "input"}

    @property
    def outputs(self) -> list[str]:
        return [name for name, _ in self.artifact.plan.outputs]

    def compile(self, backend: str = "cudasim",
                weights: Mapping[str, np.ndarray] | None = None, **options: Any) -> Runner:
        """A callable running the artifact; `weights` (the source network's) default to the
        weights the artifact holds."""
        from netc.backends import prepare_artifact

        return prepare_artifact(self.artifact, backend, weights, **options)

    def run(self, inputs: Mapping[str, np.ndarray], backend: str = "cudasim",
            weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return self.compile(backend, weights)(inputs)

    def __repr__(self) -> str:
        return f"<netc.CompiledModel {self.name}: {len(self.artifact.plan.launches)} launches>"


def load_artifact(path: str | Path) -> CompiledModel:
    """Read and verify an artifact directory; raises `netc.CompileError` (E0431) unless it is
    intact and was written by this version of netc."""
    from netc.artifacts import load_artifact as read

    return CompiledModel(read(path))
