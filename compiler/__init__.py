"""netc: a compiler for neural networks written in the `.net` language."""

from netc._version import __version__
from netc.api import CompiledModel, Layer, Model, load, load_artifact, loads
from netc.diagnostics import CompileError, Diagnostic
from netc.weights import load_weights, save_weights

__all__ = ["CompileError", "CompiledModel", "Diagnostic", "Layer", "Model", "__version__",
           "load", "load_artifact", "load_weights", "loads", "save_weights"]
