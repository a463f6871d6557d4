"""Backends: every way netc can run a network, behind one signature.

A backend is prepared once for a graph and its weights (weights are uploaded, kernels compiled)
and then called on inputs any number of times:

    run = prepare("cudasim", graph, weights)
    outputs = run({"image": batch})

The plan backends (cudasim, cuda) take the option `tiles` ({node id: tile}, as
`netc.codegen.emit.generate` takes them); by default they use `netc.codegen.tiling.choose_tiles`.

Imports of optional components (the simulator, PyCUDA, onnxruntime, TensorRT) happen inside
the backend that needs them, so `netc` imports without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from netc.diagnostics import CompileError, Diagnostic
from netc.ir import Graph
from netc.reference import bind_batch, run_reference
from netc.weights import check_weights

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
BACKENDS = ("reference", "cudasim", "cuda", "onnx", "tensorrt")


class BackendUnavailable(Exception):
    """The backend needs something this machine lacks; the message says what to install."""


def _reference(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    return lambda inputs: run_reference(graph, weights, inputs)


def plan_tiles_option(graph: Graph, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tiles a plan backend generates with: `options["tiles"]` (by node id, as `generate`
    takes them), else the tiling heuristic's (and `NETC_TUNING_DB`'s) choice."""
    from netc.codegen.tiling import choose_tiles

    tiles = options.get("tiles")
    return choose_tiles(graph) if tiles is None else tiles


def _plan_runner(graph: Graph, weights: Mapping[str, np.ndarray], device: Any,
                 options: Mapping[str, Any]) -> Runner:
    from netc.codegen.emit import generate
    from netc.runtime.executor import PlanRunner

    runner = PlanRunner(generate(graph, tiles=plan_tiles_option(graph, options)), device,
                        weights)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bind_batch(graph, inputs)
        return runner.run(inputs)

    return run


def _cudasim(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    from netc.runtime.cudasim import CudaSim

    simulator_options = {k: options[k] for k in ("schedule", "seed", "workers", "sanitize",
                                                 "check_races") if k in options}
    return _plan_runner(graph, weights, CudaSim(**simulator_options), options)


def _cuda(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    from netc.runtime.pycuda_device import DeviceUnavailable, PyCudaDevice

    try:
        device = PyCudaDevice()
    except DeviceUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None
    return _plan_runner(graph, weights, device, options)


def _onnx(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("the onnx backend needs onnxruntime: "
                                 "pip install 'netc[onnx]'") from None
    from netc.onnx.export import export_graph

    if any(n.type.dtype == "bf16" for n in graph.inputs):
        raise BackendUnavailable("the onnx backend cannot feed bf16 inputs: NumPy and "
                                 "onnxruntime's Python API have no bfloat16 arrays")
    model = export_graph(graph, weights)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    output_names = [name for name, _ in graph.outputs]
    input_dtypes = {n.id: np.float16 if n.type.dtype == "f16" else np.float32
                    for n in graph.inputs}

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bind_batch(graph, inputs)
        feeds = {name: np.asarray(value, dtype=input_dtypes[name]) for name, value in inputs.items()}
        results = session.run(output_names, feeds)
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(output_names, results)}

    return run


def _tensorrt(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    try:
        from netc.onnx.tensorrt import prepare_tensorrt
    except ImportError:
        raise BackendUnavailable("the tensorrt backend is not available in this build") from None
    return prepare_tensorrt(graph, weights, options)


_FACTORIES: dict[str, Callable[[Graph, Mapping[str, np.ndarray], Mapping[str, Any]], Runner]] = {
    "reference": _reference,
    "cudasim": _cudasim,
    "cuda": _cuda,
    "onnx": _onnx,
    "tensorrt": _tensorrt,
}


def prepare(backend: str, graph: Graph, weights: Mapping[str, np.ndarray],
            **options: Any) -> Runner:
    """A callable running `graph` with `weights` on `backend`; checks the weights first."""
    if backend not in _FACTORIES:
        raise CompileError([Diagnostic("E0420", f"unknown backend `{backend}`; choose one of "
                                       + ", ".join(BACKENDS))])
    check_weights(graph, weights)
    return _FACTORIES[backend](graph, weights, options)


def default_backend() -> tuple[str, str | None]:
    """`cuda` where a GPU and PyCUDA are present, else `cudasim`, with a note saying why."""
    try:
        from netc.runtime.pycuda_device import gpu_available
    except ImportError:
        return "cudasim", "note: PyCUDA runtime not built in; running on the CPU CUDA simulator"
    if gpu_available():
        return "cuda", None
    return "cudasim", ("note: no CUDA GPU with PyCUDA found; running the generated kernels on "
                       "the CPU CUDA simulator (--backend cudasim)")
