"""netc: a compiler for neural networks written in the `.net` language."""

from netc.api import Layer, Model, load, loads
from netc.diagnostics import CompileError, Diagnostic
from netc.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = ["CompileError", "Diagnostic", "Layer", "Model", "load", "load_weights", "loads",
           "save_weights"]
