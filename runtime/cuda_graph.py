"""CUDA Graphs for the PyCUDA device: capture a stream's work once, replay it with one call.

    graph = capture(stream_handle, lambda: record(stream))   # the launches, not run
    graph.launch(stream_handle)                               # all of them, one driver call
    graph.close()

A plan's launches replayed from a graph cost the CPU one `cuGraphLaunch` instead of one
`cuLaunchKernel` (and its argument packing in Python) each: ResNet-50's 50-odd launches at
batch 1 are then bound by the GPU, not by the interpreter.

PyCUDA 2026.1 wraps no graph API, so this module calls the CUDA driver (`libcuda`, the library
PyCUDA itself runs on) through ctypes: six entry points, in the same context PyCUDA made
current. The capture mode is `CU_STREAM_CAPTURE_MODE_RELAXED`: PyCUDA may call non-capturable
driver functions (a function attribute, a context query) while the launches are recorded, and
those are legal in relaxed mode only. `available()` says whether the driver has the entry
points (CUDA 11.4 or newer); otherwise the executor launches one kernel at a time.

Nothing here can run on a machine without an NVIDIA driver; the `gpu` test tier checks it
(tests/gpu/test_cuda_graph.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import lru_cache
from typing import Any

CAPTURE_MODE_RELAXED = 2
"""CU_STREAM_CAPTURE_MODE_RELAXED (cuda.h)."""
LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
ENTRY_POINTS = ("cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags",
                "cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy")


class GraphError(RuntimeError):
    """A driver call of the capture or replay failed; the message names the call and error."""


@lru_cache(maxsize=1)
def _driver() -> Any | None:
    for name in LIBRARIES:
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        if all(hasattr(library, entry) for entry in ENTRY_POINTS):
            return library
    return None


def available() -> bool:
    """The CUDA driver is loadable and has the graph entry points netc calls."""
    return _driver() is not None


def _check(result: int, call: str) -> None:
    if result == 0:
        return
    text = ctypes.c_char_p()
    driver = _driver()
    if driver is not None and hasattr(driver, "cuGetErrorString"):
        driver.cuGetErrorString(result, ctypes.byref(text))
    reason = text.value.decode() if text.value else f"CUresult {result}"
    raise GraphError(f"{call} failed: {reason}")


class CudaGraph:
    """An instantiated graph (`CUgraphExec`) and the graph it was made from."""

    def __init__(self, graph: ctypes.c_void_p, executable: ctypes.c_void_p):
        self._graph = graph
        self._executable: ctypes.c_void_p | None = executable

    def launch(self, stream: int) -> None:
        """Enqueue every captured operation on `stream` (a `CUstream` handle, as an int)."""
        if self._executable is None:
            raise GraphError("the graph was closed")
        _check(_library().cuGraphLaunch(self._executable, ctypes.c_void_p(stream)),
               "cuGraphLaunch")

    def close(self) -> None:
        if self._executable is not None:
            _library().cuGraphExecDestroy(self._executable)
            _library().cuGraphDestroy(self._graph)
            self._executable = None


def _library() -> Any:
    driver = _driver()
    if driver is None:
        raise GraphError("the CUDA driver library (libcuda) with graph support (CUDA 11.4 or "
                         "newer) is not loadable here")
    return driver


def capture(stream: int, record: Callable[[], None]) -> CudaGraph:
    """Record what `record()` enqueues on `stream` (a `CUstream` handle, not the legacy default
    stream) into a graph and instantiate it. Nothing runs during the capture. If `record`
    raises, the capture is ended and its partial graph destroyed before the error goes on."""
    driver = _library()
    handle = ctypes.c_void_p(stream)
    _check(driver.cuStreamBeginCapture_v2(handle, CAPTURE_MODE_RELAXED), "cuStreamBeginCapture")
    graph = ctypes.c_void_p()
    try:
        record()
    except BaseException:
        driver.cuStreamEndCapture(handle, ctypes.byref(graph))
        if graph.value:
            driver.cuGraphDestroy(graph)
        raise
    _check(driver.cuStreamEndCapture(handle, ctypes.byref(graph)), "cuStreamEndCapture")
    executable = ctypes.c_void_p()
    try:
        _check(driver.cuGraphInstantiateWithFlags(ctypes.byref(executable), graph,
                                                  ctypes.c_ulonglong(0)),
               "cuGraphInstantiate")
    except GraphError:
        driver.cuGraphDestroy(graph)
        raise
    return CudaGraph(graph, executable)
