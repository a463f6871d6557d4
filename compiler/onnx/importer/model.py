"""What an ONNX import produces (`ImportedModel`), and the codes and constants every part of
the importer shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto

from netc.diagnostics import CompileError, Diagnostic
from netc.files import write_atomic
from netc.ir import Graph

# Error codes (docs/onnx.md lists them with examples).
E_UNSUPPORTED_OP = "E0601"
E_UNSUPPORTED_ATTRIBUTE = "E0602"
E_NOT_CONSTANT = "E0603"
E_DTYPE = "E0604"
E_SHAPE = "E0605"
E_CONSTANT_TENSOR = "E0606"
E_NOT_EXPRESSIBLE = "E0607"
E_EXTRA_OUTPUT = "E0608"
E_MODEL = "E0609"
E_OPSET = "E0610"
E_LIMIT = "E0611"

# Which ONNX op types import, and as which `.net` ops, is found through the registrations
# below: a handler registers with `@_handles(op types, ops=the .net ops it builds)`, and an op
# whose registry entry has a one-node ONNX form (`OpDef.onnx`) imports by that form without a
# handler of its own. `supported_ops()` (also `SUPPORTED_OPS`) and `imported_ops()` list them.
# Beyond the handlers: decomposed forms of ops (layer norm, GELU, attention, ...) are
# recognised as one op (`patterns`), and Shape (with Gather, Slice, Concat, Mul, ... of its
# result) only on shapes, a Reshape target that keeps its named dimensions (`shapes`). Any op
# whose inputs are all constants is evaluated at import time, whatever its type.

PATTERN_OPS = ("Constant",)
"""Op types read by the constant pass rather than by a handler."""

HELPER_OPS = ("Shape",)
"""Supported only in the roles above (shapes), not as tensor ops."""

PARAMETER_OPERANDS: dict[str, tuple[int, ...]] = {}
"""Operand positions that `.net` holds as trained parameters or attributes, so the ONNX model
must give them as constants (initializers), by op type (each handler registers its own). A
Gemm's B may also be a tensor (it then imports as `matmul`), but a constant B is what makes it
a `dense` layer."""

_DTYPES: dict[int, str] = {TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16", TensorProto.BFLOAT16: "bf16",
                           TensorProto.INT32: "i32", TensorProto.INT64: "i64", TensorProto.BOOL: "bool"}
_NUMPY_DTYPES = {"float32": "f32", "float16": "f16", "int32": "i32", "int64": "i64", "bool": "bool"}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"}
_FOLD_LIMIT = 1 << 26
"""Elements: a constant-folded result larger than this is left to translation (and fails)."""


class ImportFailure(CompileError):
    """Everything that keeps a model from importing, one diagnostic per problem in model
    order, and a last line that counts the nodes that failed by op type (`3 of 240 nodes are
    not supported: Resize (2), Exp (1)`)."""

    def __init__(self, diagnostics: Sequence[Diagnostic], summary: str = "") -> None:
        self.summary = summary
        super().__init__(diagnostics)

    def render(self) -> str:
        text = super().render()
        return f"{text}\n{self.summary}" if self.summary else text


# The imported model -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedModel:
    """An ONNX model as a `.net` network: its text, its weights and the IR graph built."""

    text: str
    weights: dict[str, np.ndarray]
    """float32 arrays by `.net` parameter name (`conv1.weight`)."""
    graph: Graph
    """The IR the importer built; `netc.frontend.load_string(text)` gives the same network."""
    network: str
    inputs: dict[str, str]
    """ONNX input name -> `.net` input name."""
    outputs: dict[str, str]
    """ONNX output name -> `.net` output name."""
    notes: tuple[str, ...] = ()
    """What the import assumed (also written as comments into the text)."""

    def write(self, net_path: str | os.PathLike[str],
              weights_path: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
        """Write the `.net` file and the weights (default: beside it, `.safetensors`); each
        file is replaced atomically, so a failure leaves any earlier file untouched."""
        from netc.weights import save_weights

        net = Path(net_path)
        weights = Path(weights_path) if weights_path is not None else net.with_suffix(".safetensors")
        # Both destinations are checked before either is written: a failure must not leave
        # one file of the pair behind.
        for path in (net, weights):
            if path.is_dir() or (path.exists() and not path.is_file()):
                raise CompileError([Diagnostic(E_MODEL, f"cannot write `{path}`: it exists and "
                                               "is not a regular file")])
        save_weights(self.weights, weights)
        try:
            write_atomic(net, self.text)
        except BaseException:
            weights.unlink(missing_ok=True)
            raise
        return net, weights
