"""ONNX import: an ONNX model becomes a readable `.net` file and its weights.

    imported = import_onnx("resnet18.onnx")       # or an onnx.ModelProto
    imported.write("resnet18.net", "resnet18.safetensors")
    print(imported.text)

How it works, in three passes over the ONNX graph (which ONNX keeps in topological order):

1. Constants. Initializers and `Constant` nodes are constants, and so is every node whose
   inputs are all constants: it is evaluated now with ONNX's own reference implementation
   (`onnx.reference`), so exporter noise such as `Cast`, `CastLike` or `Sqrt` of a constant
   disappears before translation.
2. Patterns. The Erf spelling of GELU, `0.5 * x * (1 + erf(x / sqrt 2))`, becomes one `gelu`.
3. Translation. Every other node becomes ops of the `.net` language, applied through
   `netc.ops.builder.GraphBuilder`, so each result is typed by the op registry's own shape
   rules as it is built: what the language cannot express is found here, not by the front end
   later. Constant operands that are trained parameters in `.net` (a Conv's W and B, a
   BatchNormalization's statistics, a Gemm's B) become the layer's weights under PyTorch's
   names (`<layer>.weight`); a constant scalar operand of Add/Sub/Mul becomes a number in the
   text; a constant bias added right after a MatMul or a Conv is folded into that layer's bias;
   any other f32 constant tensor (a class token, a positional embedding) becomes a free
   parameter, `param NAME: f32[...]`, named after its initializer, its value in the weights.
   Shape arithmetic (`Shape`, `Gather`, `Concat`, `Mul`, ... of a shape) is followed with named
   dimensions as names (`shapes`), so that a Reshape target keeps them by name.

The IR graph so built is then printed as `.net` text (`render_net`), one statement a value,
named after the ONNX values (sanitised where they are not valid `.net` names). Dimensions: a
size the ONNX model fixes stays fixed; a symbolic one becomes a named dimension, with its
`dim_param` where that is a valid `.net` name, else `N`, `T`, ... (noted in a comment).

Everything that cannot be imported is collected and raised as one `CompileError` with one
diagnostic per problem (codes E06xx, documented in docs/onnx.md); nothing is dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from netc.diagnostics import CompileError, Diagnostic
from netc.onnx.importer import handlers, shapes  # noqa: F401  (they register the handlers)
from netc.onnx.importer.handlers import imported_ops, supported_ops
from netc.onnx.importer.model import (
    E_MODEL,
    HELPER_OPS,
    PARAMETER_OPERANDS,
    PATTERN_OPS,
    ImportedModel,
)
from netc.onnx.importer.translate import _Importer

__all__ = ["HELPER_OPS", "PARAMETER_OPERANDS", "PATTERN_OPS", "ImportedModel", "import_onnx",
           "imported_ops", "load_model", "supported_ops"]


def __getattr__(name: str) -> tuple[str, ...]:
    # `SUPPORTED_OPS` reads the registrations when asked, so an op registered later is in it.
    if name == "SUPPORTED_OPS":
        return supported_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Entry point ------------------------------------------------------------------------------


def load_model(model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    """The model and a name for it; a file that cannot be read is a CompileError."""
    if isinstance(model, onnx.ModelProto):
        return model, "an ONNX model"
    path = Path(model)
    if not path.is_file():
        raise CompileError([Diagnostic(E_MODEL, f"ONNX file `{path}` does not exist")])
    try:
        return onnx.load(str(path)), path.name
    except Exception as exc:  # protobuf decode errors, missing external data
        raise CompileError([Diagnostic(E_MODEL, f"cannot read `{path}` as an ONNX model: "
                                       f"{exc}")]) from None


def import_onnx(model: onnx.ModelProto | str | os.PathLike[str], *,
                network_name: str | None = None) -> ImportedModel:
    """Import an ONNX model (a ModelProto or a path to a `.onnx` file) as a `.net` network.

    Raises `CompileError` listing every node, attribute, dtype or shape that has no `.net`
    form (codes E06xx).
    """
    proto, source = load_model(model)
    return _Importer(proto, source, network_name).run()
