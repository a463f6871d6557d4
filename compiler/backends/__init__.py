"""Backends: every way netc can run a network, behind one signature.

A backend is prepared once for a graph and its weights (weights are uploaded, kernels compiled)
and then called on inputs any number of times:

    run = prepare("cudasim", graph, weights)
    outputs = run({"image": batch})

The plan backends (cudasim, cuda) compile `graph` through the compile driver
(`netc.driver.compile_graph`): at `-O2` by default, as `netc run` does; the options `level`,
`tiles` (overrides by layer name) or a whole `compile_options` change that, and `compiled`
passes a plan compiled already. Their weights are the source network's; the folded ones are
derived from them. `cuda_graph` (cuda only; default on where the driver has graphs) replays
the launches from a CUDA graph from the second call at the same sizes on.

Imports of optional components (the simulator, PyCUDA, onnxruntime, TensorRT) happen inside
the backend that needs them, so `netc` imports without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from netc.diagnostics import CompileError, Diagnostic, MissingDependency
from netc.dtypes import round_to
from netc.ir import INTEGER_DTYPES, Graph
from netc.reference import bind_batch, run_reference
from netc.weights import check_weights

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
BACKENDS = ("reference", "cudasim", "cuda", "onnx", "tensorrt")
PLAN_BACKENDS = ("cudasim", "cuda")
"""The backends that run netc's own launch plan (compiled by the driver)."""


class BackendUnavailable(MissingDependency):
    """The backend needs something this machine lacks; the message says what to install."""


def _reference(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    return lambda inputs: run_reference(graph, weights, inputs)


SIMULATOR_OPTIONS = ("schedule", "seed", "workers", "sanitize", "check_races")
"""The backend options that configure the CPU simulator (`netc.sim.cudasim.CudaSim`)."""


def compile_options(options: Mapping[str, Any]) -> Any:
    """The driver's `CompileOptions` from a plan backend's options: `compile_options` itself,
    or `level` (default 2, as `netc run`), `tiles` (tile overrides by layer name, node id
    or `all`) and `precision`."""
    from netc.driver import CompileOptions

    given = options.get("compile_options")
    if given is not None:
        return given
    return CompileOptions(level=options.get("level", 2),
                          tile_overrides=dict(options.get("tiles") or {}),
                          precision=options.get("precision", "f32"))


def simulator(options: Mapping[str, Any]) -> Any:
    from netc.sim import CudaSim

    return CudaSim(**{k: options[k] for k in SIMULATOR_OPTIONS if k in options})


def gpu(options: Mapping[str, Any]) -> Any:
    from netc.runtime.pycuda_device import DeviceUnavailable, PyCudaDevice

    try:
        return PyCudaDevice()
    except DeviceUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None


def graph_option(device: Any, options: Mapping[str, Any]) -> bool | None:
    """The executor's `cuda_graph` from the option of the same name (None: where the device
    can; see `netc.runtime.executor`), refused for a device that cannot."""
    from netc.runtime.executor import graphs_supported

    wanted = options.get("cuda_graph")
    if wanted and not graphs_supported(device):
        raise BackendUnavailable("CUDA graphs (cuda_graph=True, --cuda-graph) need the cuda "
                                 "backend: a GPU, PyCUDA and a CUDA 11.4+ driver")
    return wanted


class PlanBackend:
    """A network compiled by the driver and loaded on a device (the simulator or a GPU): call
    it on inputs. `runner` is the loaded plan (for reading intermediates after a run when
    prepared with `reuse_memory=False`), `compiled` how it was compiled."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], device: Any,
                 options: Mapping[str, Any]):
        from netc.driver import build_binary, compile_graph
        from netc.runtime.executor import PlanRunner

        self.compiled = options.get("compiled") or compile_graph(graph, compile_options(options))
        # `prepare` checked the weights against the source network already.
        self.runner = PlanRunner(self.compiled.plan, device,
                                 self.compiled.optimized.derive_weights(weights),
                                 build_binary(self.compiled.plan, device),
                                 reuse_memory=options.get("reuse_memory", True),
                                 cuda_graph=graph_option(device, options))
        self.progress = options.get("progress")
        """`progress(index, count, launch)` before each launch (the CLI's progress line)."""

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from netc.runtime.executor import PlanInputError

        bind_batch(self.compiled.source, inputs)
        try:
            return self.runner.run(inputs, progress=self.progress)
        except PlanInputError as exc:  # the inputs fit the network: a size beyond a slice
            raise CompileError([Diagnostic(
                "E0237", f"{exc}: the inputs' named dimensions are larger than the network "
                "can take")]) from None


def _cudasim(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    return PlanBackend(graph, weights, simulator(options), options)


def _cuda(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    return PlanBackend(graph, weights, gpu(options), options)


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

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bind_batch(graph, inputs)
        results = session.run(output_names, onnx_feeds(graph, inputs))
        return {name: _host_array(graph.value_type(node_id).dtype, value)
                for (name, node_id), value in zip(graph.outputs, results)}

    return run


def onnx_feeds(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`inputs` as onnxruntime takes them: each in its input's dtype (f16 as float16; the onnx
    backend refuses a network with bf16 inputs when it is prepared)."""
    return {n.id: np.asarray(inputs[n.id], dtype=np.float16) if n.type.dtype == "f16"
            else _host_array(n.type.dtype, inputs[n.id]) for n in graph.inputs}


def _host_array(dtype: str, value: Any) -> np.ndarray:
    """`value` as netc's host arrays hold `dtype`: float32, or int32/int64/bool exactly."""
    return round_to(dtype, value) if dtype in INTEGER_DTYPES or dtype == "bool" else \
        np.asarray(value, dtype=np.float32)


def _tensorrt(graph: Graph, weights: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> Runner:
    try:
        from netc.backends.tensorrt import prepare_tensorrt
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
    """A callable running `graph` with `weights` on `backend`; checks the weights first.
    `precision="f16"` or `"bf16"` runs an f32 network with 16-bit storage (`netc.precision`):
    the plan backends compile with it (`compile_options`), the others run the rewritten
    graph; `"tf32"` puts the plan backends' f32 dense and matmul on TF32 tensor cores (the
    others run the f32 network)."""
    from netc.precision import with_precision

    if backend not in _FACTORIES:
        raise CompileError([Diagnostic("E0420", f"unknown backend `{backend}`; choose one of "
                                       + ", ".join(BACKENDS))])
    check_weights(graph, weights)
    if backend not in PLAN_BACKENDS:
        graph = with_precision(graph, options.pop("precision", "f32"))
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


def prepare_artifact(artifact: Any, backend: str, weights: Mapping[str, np.ndarray] | None = None,
                     **options: Any) -> Runner:
    """A callable running a compiled artifact (`netc.artifacts.load_artifact`) on `cudasim` or
    `cuda`: its own binaries, nothing compiled. `weights`: the source network's, to derive the
    plan's parameters from (default: the weights the artifact holds)."""
    import tempfile
    from pathlib import Path

    from netc.runtime.executor import PlanInputError, PlanRunner, bind_sizes

    if backend not in PLAN_BACKENDS:
        raise CompileError([Diagnostic("E0420", f"an artifact runs on the `cudasim` or `cuda` "
                                       f"backend, not `{backend}`",
                                       help="run the .net file for the other backends")])
    params = artifact.weights_for(weights)
    if backend == "cudasim":
        device = simulator(options)
        graph_option(device, options)
        with tempfile.TemporaryDirectory(prefix="netc-artifact-") as private:
            binary = artifact.simulator_binary(Path(private))
            runner = PlanRunner(artifact.plan, device, params, binary)
    else:
        if artifact.binary is None:
            raise BackendUnavailable(f"the artifact `{artifact.path}` holds no cubins")
        device = gpu(options)
        runner = PlanRunner(artifact.plan, device, params, artifact.binary,
                            cuda_graph=graph_option(device, options))

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            bind_sizes(artifact.plan, inputs)
        except PlanInputError as exc:
            raise CompileError([Diagnostic("E0402", str(exc))]) from None
        return runner.run(inputs, progress=options.get("progress"))

    return run
