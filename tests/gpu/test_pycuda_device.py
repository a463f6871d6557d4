"""Kernels run on a real GPU through PyCUDA, checked against NumPy.

Skipped by conftest.py, with the reason, where PyCUDA or a CUDA device is missing. Not run on
the machine this was written on (no GPU there).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from netc.runtime.pycuda_device import PyCudaDevice
from netc.toolchain import compile_module, find_nvcc, nvrtc_status

pytestmark = pytest.mark.gpu

# The unit tests' module (vector_add, block_sum; see its design note) plus an in-place scale.
MODULE = (Path(__file__).resolve().parents[1] / "unit" / "data" / "vectors.cu").read_text() + r"""
extern "C" __global__ void scale(float* x, float factor, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}
"""
KERNELS = ("vector_add", "block_sum", "scale")
SIGNATURES = {"vector_add": "PPPq", "block_sum": "PPq", "scale": "Pfq"}


@pytest.fixture(scope="module")
def device() -> Iterator[PyCudaDevice]:
    with PyCudaDevice() as gpu:
        yield gpu


def _mismatch(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> str:
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    worst = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    return f"{int(bad.sum())} of {actual.size} elements differ; largest difference {worst:.3g}"


def _run_module(device: PyCudaDevice, module, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    blocks = -(-n // 256)
    buffers = [device.alloc(size * 4) for size in (n, n, n, blocks)]
    try:
        device.upload(buffers[0], a)
        device.upload(buffers[1], b)
        device.upload(buffers[2], np.full(n, np.nan, np.float32))  # poison: unwritten fails
        device.upload(buffers[3], np.full(blocks, np.nan, np.float32))
        module.launch("vector_add", (blocks, 1, 1), (256, 1, 1), 0,
                      [buffers[0], buffers[1], buffers[2], n])
        module.launch("scale", (blocks, 1, 1), (256, 1, 1), 0, [buffers[2], 0.5, n])
        module.launch("block_sum", (blocks, 1, 1), (256, 1, 1), 0, [buffers[2], buffers[3], n])
        device.synchronize()
        total = device.download(buffers[2], np.float32, (n,))
        partial = device.download(buffers[3], np.float32, (blocks,))
    finally:
        for buffer in buffers:
            device.free(buffer)
    expected = (a + b) * np.float32(0.5)
    assert np.array_equal(total, expected), _mismatch(total, expected, 0, 0)
    padded = np.zeros(blocks * 256, np.float64)
    padded[:n] = expected
    expected_partial = padded.reshape(blocks, 256).sum(axis=1)
    assert np.allclose(partial, expected_partial, rtol=1e-5, atol=1e-4), \
        _mismatch(partial, expected_partial, 1e-5, 1e-4)


@pytest.mark.parametrize("n", [1, 1000, 1 << 20])
def test_a_binary_for_the_device_arch_runs(device: PyCudaDevice, n: int) -> None:
    binary = compile_module(MODULE, "vectors", (device.arch,), generated=False)
    module = device.load_binary(binary, KERNELS)
    _run_module(device, module, n, seed=n)


def test_load_binary_picks_the_cubin_and_checks_signatures(device: PyCudaDevice) -> None:
    binary = compile_module(MODULE, "vectors", ("sm_80", "sm_90", device.arch), generated=False)
    module = device.load_binary(binary, KERNELS, SIGNATURES)
    assert module.image.kind == "cubin"
    assert module.image.target.arch == device.arch
    _run_module(device, module, 4097, seed=1)


def test_ptx_jit_fallback(device: PyCudaDevice) -> None:
    import pycuda.driver as driver

    compiler = "nvcc" if find_nvcc() else "nvrtc"
    binary = compile_module(MODULE, "vectors", ("sm_75",), compiler, generated=False)
    if device.capability[0] == 7:
        pytest.skip("the sm_75 cubin runs natively on this device; no JIT to test")
    version = nvrtc_status()[0] if compiler == "nvrtc" else binary.compiler_version
    major_minor = [int(x) for x in re.findall(r"(\d+)\.(\d+)", version or "")[0]]
    driver_version = driver.get_driver_version()  # e.g. 13000 for CUDA 13.0
    if driver_version < major_minor[0] * 1000 + major_minor[1] * 10:
        pytest.skip(f"the driver (CUDA {driver_version}) is older than the compiler that wrote "
                    f"the PTX ({version}); it cannot JIT it")
    module = device.load_binary(binary, KERNELS, SIGNATURES)
    assert module.image.kind == "ptx"
    _run_module(device, module, 3000, seed=2)


def test_a_small_dense_network_matches_the_reference() -> None:
    pytest.importorskip("netc.codegen.emit", reason="code generation is not built yet")
    pytest.importorskip("netc.runtime.executor", reason="the plan executor is not built yet")
    from netc.backends import prepare
    from netc.frontend import load_string

    graph = load_string("""
network mlp {
    input x: f32[N, 12]
    h = dense(x, 8, name="hidden") |> relu
    output y = dense(h, 4)
}
""", filename="mlp.net")
    from netc.weights import init_weights

    weights = init_weights(graph, 0)
    inputs = {"x": np.random.default_rng(3).standard_normal((5, 12)).astype(np.float32)}
    expected = prepare("reference", graph, weights)(inputs)
    actual = prepare("cuda", graph, weights)(inputs)
    for name, value in expected.items():
        assert actual[name].shape == value.shape
        assert np.allclose(actual[name], value, rtol=1e-4, atol=1e-5), \
            _mismatch(actual[name], value, 1e-4, 1e-5)
