"""The reference interpreter: the executable meaning of the graph IR, in NumPy.

Every op is computed by its registry entry's `reference` function in float32 and the result is
rounded to the value's dtype, so an f16 network behaves as if each tensor were stored in f16.
Integer and boolean values are int32, int64 and bool arrays (`netc.dtypes.round_to`).
Every other backend is checked against this one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from netc.diagnostics import CompileError, Diagnostic
from netc.dtypes import round_to
from netc.ir import INTEGER_DTYPES, Attrs, Graph, IRError, Node, TensorType, format_shape
from netc.ops import REGISTRY


def bind_batch(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size of every named dimension, read off the inputs; checks every input's shape."""
    problems: list[Diagnostic] = []
    sizes: dict[str, int] = {}
    for node in graph.inputs:
        if node.id not in inputs:
            problems.append(Diagnostic("E0401", f"missing input `{node.id}` of type {node.type}",
                                       node.span))
            continue
        shape = np.shape(inputs[node.id])
        if len(shape) != node.type.rank:
            problems.append(Diagnostic(
                "E0402", f"input `{node.id}` must have shape {format_shape(node.type.shape)}, "
                f"got {format_shape(shape)}", node.span))
            continue
        for declared, actual in zip(node.type.shape, shape):
            if isinstance(declared, str):
                bound = sizes.setdefault(declared, actual)
                if bound != actual or actual < 1:
                    problems.append(Diagnostic(
                        "E0402", f"input `{node.id}` has {declared}={actual}, but another input "
                        f"gives {declared}={bound}" if bound != actual else
                        f"input `{node.id}` has an empty dimension {declared}", node.span))
            elif declared != actual:
                problems.append(Diagnostic(
                    "E0402", f"input `{node.id}` must have shape {format_shape(node.type.shape)}, "
                    f"got {format_shape(shape)}", node.span))
                break
    unexpected = sorted(set(inputs) - {n.id for n in graph.inputs})
    for name in unexpected:
        known = ", ".join(f"`{n.id}`" for n in graph.inputs)
        problems.append(Diagnostic("E0403", f"unexpected input `{name}`; the network's inputs are "
                                   f"{known}"))
    if problems:
        raise CompileError(problems)
    return sizes


def run_reference(graph: Graph, weights: Mapping[str, np.ndarray],
                  inputs: Mapping[str, np.ndarray],
                  observe: Callable[[Node, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Run `graph` on float32 NumPy arrays; returns every output by name.

    `weights` must hold every parameter (see `netc.weights.check_weights`); `observe`, if
    given, sees every computed value (used by `netc compare --layers`; a node of several
    outputs is shown its output 0).
    """
    sizes = bind_batch(graph, inputs)
    values: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.op == "input":
            value = round_to(node.type.dtype, inputs[node.id])
        elif node.op == "param":
            value = round_to(node.type.dtype, weights[node.id])
        elif node.op == "constant":
            # float64: exact for the integers of an `i64` constant (to 2^53), the same
            # rounding to a float dtype as from float32.
            value = round_to(node.type.dtype, np.float64(node.attrs["value"]))
        else:
            args = [values[i] for i in node.inputs]
            # NaN and inf in, NaN and inf out, as IEEE says: that is the meaning, not a
            # problem to warn about on the user's stderr (issue 9).
            with np.errstate(all="ignore"):
                result = REGISTRY[node.op].reference(resolve_dims(node, sizes), *args)
            if node.extra_types:  # one array per output
                if not isinstance(result, tuple) or len(result) != len(node.types):
                    raise IRError(f"{node.id}: `{node.op}`'s reference must give "
                                  f"{len(node.types)} arrays, one per output")
                for ref, kind, array in zip(node.values[1:], node.extra_types, result[1:]):
                    values[ref] = round_to(kind.dtype, array)
                result = result[0]
            value = round_to(node.type.dtype, result)
            _check_size(node, value, sizes)
        values[node.id] = value
        if observe is not None:
            observe(node, value)
    return {name: values[node_id] for name, node_id in graph.outputs}


def resolve_dims(node: Node, sizes: Mapping[str, int]) -> Attrs:
    """`node`'s attributes with every dimension name in a `dim_list` or `dim` attribute
    replaced by its size in this run (`pos[:, :T]` ends at the int T): what op references get."""
    def size(dim: object) -> object:
        if not isinstance(dim, str):
            return dim
        if dim not in sizes:
            raise IRError(f"{node.id}: the named dimension {dim} has no size: no input has it")
        return sizes[dim]

    resolved: dict[str, object] = {}
    for spec in REGISTRY[node.op].attrs:
        value = node.attrs.get(spec.name)
        if spec.kind == "dim_list" and isinstance(value, tuple):
            resolved[spec.name] = tuple(size(d) for d in value)
        elif spec.kind == "dim":
            resolved[spec.name] = size(value)
    return node.attrs.replace(**resolved) if resolved else node.attrs


def _check_size(node: Node, value: np.ndarray, sizes: Mapping[str, int]) -> None:
    """E0237 when a value's shape is not its type's at this run's sizes: an input's named
    dimension larger than an op can take (`pos[:, :T]` with T beyond `pos`'s length)."""
    if not node.type.symbolic:
        return
    expected = node.type.concrete(sizes)
    if value.shape != expected:
        named = ", ".join(f"{d}={sizes[d]}" for d in node.type.symbolic)
        raise CompileError([Diagnostic(
            "E0237", f"with {named}, `{node.op}` ({node.id}) gives shape "
            f"{format_shape(value.shape)}, not {format_shape(expected)}: the inputs' named "
            f"dimensions are larger than this op can take", node.span)])


def random_inputs(graph: Graph, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for every input of `graph`, every named dimension `batch`."""
    return random_arrays({n.id: n.type for n in graph.inputs}, batch, seed)


def random_arrays(types: Mapping[str, TensorType], batch: int = 1,
                  seed: int = 0, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random arrays of `types` (in their order), every named dimension `dims[name]` or else
    `batch`: the inputs
    `random_inputs` draws, for anything that declares inputs (a graph, a compiled artifact's
    plan). Float tensors are standard normal (float32), integer ones uniform in
    [0, RANDOM_INTEGERS) (small ids and indices), boolean ones fair coin flips."""
    rng = np.random.default_rng(seed)
    sizes = {d: (dims or {}).get(d, batch) for t in types.values() for d in t.symbolic}
    return {name: _random_array(rng, t.dtype, t.concrete(sizes)) for name, t in types.items()}


RANDOM_INTEGERS = 10
"""Random integer inputs lie in [0, RANDOM_INTEGERS)."""


def _random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype in INTEGER_DTYPES:
        return round_to(dtype, rng.integers(0, RANDOM_INTEGERS, size=shape))
    return rng.standard_normal(shape).astype(np.float32)
