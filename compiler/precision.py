"""Precision: a network written in f32 run with 16-bit storage (`--precision f16|bf16`), or with
TF32 tensor cores (`--precision tf32`).

    graph16 = with_precision(graph, "bf16")

Every f32 tensor of the network becomes the given 16-bit dtype: inputs, parameters and
buffers, constants, and what ops compute from them (each node's type is inferred again from its
inputs by the op's own rule), with `cast(..., dtype=f32)` and other `dtype=f32` attributes
following; f16, bf16 and integer tensors stay as they are. Node ids, names and layers do not
change, so weights, `--layers` comparisons and diagnostics apply to both graphs alike.

What this means on the device: weights and inputs are converted once, when uploaded (the runtime
holds every float tensor as float32 on the host and stores it in the buffer's dtype); GEMMs run
on tensor cores (`netc.codegen.kernels.TENSOR_CORE_DTYPES`); every kernel computes and
accumulates in float whatever it stores (softmax, norms, reductions included: see
docs/kernels.md). `netc compare --precision bf16` reports the difference from the f32
reference. `f32` is the network as written.

`tf32` keeps every tensor f32 (`with_precision` returns the graph as it is): only the f32
`dense` and `matmul` kernels change, to TF32 tensor cores (`templates/gemm_tf32.cuh`: operands
rounded to TF32, 10 mantissa bits, as they are read; fp32 accumulation). It reaches the code
generator the one way a plan backend's precision does, through `CompileOptions.precision`:
`plan_tiles(..., precision="tf32")` gives those kernels a `Tf32Tile`. Convolutions, the GEMV
kernel (M <= 8) and every other kernel stay f32; the reference interpreter and the ONNX
export compute the f32 network, so `netc compare --precision tf32` reports the TF32 error.
"""

from __future__ import annotations

import dataclasses

from netc.ir import SOURCE_OPS, Graph, TensorType, split_value
from netc.ops.verify import node_types, verify

PRECISIONS = ("f32", "tf32", "f16", "bf16")
"""What `--precision` takes; the first is the default."""
TOLERANCES = {"f32": (1e-3, 1e-4), "tf32": (1e-2, 1e-2), "f16": (1e-2, 1e-2),
              "bf16": (5e-2, 5e-2)}
"""`netc compare`'s default (rtol, atol) against the f32 reference, by precision: a few units
in the last place of the reduced formats (11 significant bits for TF32 and f16, 8 for bf16;
TF32 has f32's range, so only its rounding of GEMM operands counts)."""
STORAGE = {"tf32": "f32"}
"""The dtype a precision stores f32 tensors in, where it is not the precision itself."""


class PrecisionError(ValueError):
    """A precision netc does not run networks in."""


def with_precision(graph: Graph, precision: str) -> Graph:
    """`graph` with every f32 tensor stored in `precision` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision `{precision}` is not one of {', '.join(PRECISIONS)}")
    if STORAGE.get(precision, precision) == "f32":
        return graph
    types: dict[str, tuple[TensorType, ...]] = {}
    nodes = []
    for node in graph.nodes:
        attrs = node.attrs
        if attrs.get("dtype") == "f32":
            attrs = attrs.replace(dtype=precision)
        if node.op in SOURCE_OPS:
            found: tuple[TensorType, ...] | None = tuple(
                TensorType(precision, t.shape) if t.dtype == "f32" else t
                for t in (node.type, *node.extra_types))
        else:
            inputs = [types[node_id][output]
                      for node_id, output in map(split_value, node.inputs)]
            found = node_types(dataclasses.replace(node, attrs=attrs), inputs)
        assert found is not None, f"{node.id}: `{node.op}` has no type rule"
        types[node.id] = found
        nodes.append(dataclasses.replace(node, attrs=attrs, type=found[0],
                                         extra_types=found[1:]))
    converted = Graph(graph.name, tuple(nodes), graph.outputs)
    verify(converted)
    return converted
