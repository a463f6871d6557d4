"""The PyCUDA device's logic that needs no GPU: lazy import, clear errors without PyCUDA or a
device, argument formats from the plan checked against the PTX, and which image a device loads.

`PyCudaModule.launch` is driven here through a stand-in for PyCUDA's `Function` that records the
calls and packs the arguments with `struct` (PyCUDA packs with a copy of it); the real PyCUDA
path runs only in tests/gpu.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from netc.plan import Arg, Buffer, GridDim, Launch, LaunchPlan, size_arg, size_of
from netc.runtime import pycuda_device
from netc.runtime.pycuda_device import (
    DeviceUnavailable,
    ImageChoice,
    LaunchError,
    PyCudaDevice,
    PyCudaModule,
    check_signature,
    gpu_available,
    launch_signature,
    ptx_parameters,
    select_image,
    signatures_from_plan,
)
from netc.toolchain import ArchBinary, DeviceBinary, compile_module, nvrtc_status

pytestmark = pytest.mark.unit

KERNELS = r"""
extern "C" __global__ void axpy(const float* x, float* y, float alpha, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}
extern "C" __global__ void fill(float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 1.0f;
}
"""

PTX = """
.visible .entry axpy(
	.param .u64 .ptr .align 1 axpy_param_0,
	.param .u64 axpy_param_1,
	.param .f32 axpy_param_2,
	.param .u64 axpy_param_3
)
{ ret; }
.visible .entry fill(
	.param .u64 fill_param_0,
	.param .u64 fill_param_1
)
{ ret; }
.visible .entry odd(
	.param .u32 odd_param_0,
	.param .align 8 .b8 odd_param_1[16]
)
{ ret; }
"""


def test_importing_needs_no_pycuda() -> None:
    code = ("import sys; sys.modules['pycuda'] = None; sys.modules['pycuda.driver'] = None\n"
            "import netc.runtime.pycuda_device as d\n"
            "assert d.gpu_available() is False\n"
            "try:\n    d.PyCudaDevice()\nexcept d.DeviceUnavailable as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "pip install 'netc[cuda]'" in result.stdout
    assert "--backend cudasim" in result.stdout


def test_without_a_gpu_the_device_says_why() -> None:
    if gpu_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailable) as caught:
        PyCudaDevice()
    assert str(caught.value) == pycuda_device.unavailable_reason()
    assert "cudasim" in str(caught.value)


def test_default_backend_falls_back_to_the_simulator() -> None:
    if gpu_available():
        pytest.skip("this machine has a GPU")
    from netc.backends import default_backend

    backend, note = default_backend()
    assert backend == "cudasim" and note


# Argument formats ---------------------------------------------------------------------------


def _plan() -> LaunchPlan:
    buffers = (Buffer("buf0", "input", "f32", ("N", 4), "x"),
               Buffer("buf1", "output", "f32", ("N", 4), "y"))
    grid = (GridDim(size_of(("N", 4)), 256), GridDim(), GridDim())
    axpy = Launch("axpy", grid, (256, 1, 1), 0,
                  (Arg("buffer", "buf0"), Arg("buffer", "buf1"), Arg("float", value=2),
                   size_arg("N")), ("y",), "t.net:2")
    fill = Launch("fill", grid, (256, 1, 1), 0, (Arg("buffer", "buf1"), Arg("int", value=4)),
                  ("y",), "t.net:3")
    return LaunchPlan("t", "t", KERNELS, ("N",), buffers, (fill, axpy), (("y", "buf1"),),
                      ("axpy", "fill"))


def test_signatures_come_from_the_arg_kinds() -> None:
    assert launch_signature(_plan().launches[1].args) == "PPfq"
    assert signatures_from_plan(_plan()) == {"fill": "Pq", "axpy": "PPfq"}


def test_one_kernel_has_one_signature() -> None:
    plan = _plan()
    clash = Launch("fill", plan.launches[0].grid, (256, 1, 1), 0,
                   (Arg("buffer", "buf1"), Arg("float", value=1.0)), ("y",))
    bad = LaunchPlan("t", "t", KERNELS, "N", plan.buffers, (*plan.launches, clash),
                     plan.outputs, plan.kernels)
    with pytest.raises(LaunchError, match="one parameter list"):
        signatures_from_plan(bad)


def test_ptx_parameters() -> None:
    assert ptx_parameters(PTX, "axpy") == ["u64", "u64", "f32", "u64"]
    assert ptx_parameters(PTX, "fill") == ["u64", "u64"]
    assert ptx_parameters(PTX, "odd") == ["u32", "b8[16]"]
    with pytest.raises(LaunchError, match="not an entry"):
        ptx_parameters(PTX, "missing")


@pytest.mark.skipif(nvrtc_status()[0] is None, reason="NVRTC not loadable")
def test_ptx_parameters_of_compiled_kernels(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path))
    ptx = compile_module(KERNELS, "t", ("sm_80",), "nvrtc", generated=False).targets[0].ptx
    assert ptx_parameters(ptx, "axpy") == ["u64", "u64", "f32", "u64"]
    check_signature("axpy", signatures_from_plan(_plan())["axpy"], ptx_parameters(ptx, "axpy"))


def test_a_plan_that_does_not_match_its_kernel_fails_loudly() -> None:
    with pytest.raises(LaunchError, match="takes 4 parameters"):
        check_signature("axpy", "PPf", ["u64", "u64", "f32", "u64"])
    with pytest.raises(LaunchError, match=r"parameter 2 is \.f32"):
        check_signature("axpy", "PPqq", ["u64", "u64", "f32", "u64"])
    with pytest.raises(LaunchError, match=r"parameter 0 is \.u32"):
        check_signature("odd", "Pq", ["u32", "b8[16]"])


# Launching, through a stand-in for PyCUDA's Function ----------------------------------------


class Allocation:
    """Like pycuda.driver.DeviceAllocation: converts to its device address."""

    def __init__(self, address: int):
        self.address = address

    def __int__(self) -> int:
        return self.address


class Function:
    def __init__(self, name: str, log: list[tuple[Any, ...]]):
        self.name, self.log, self.format = name, log, ""

    def prepare(self, signature: str) -> Function:
        self.format = signature
        self.log.append(("prepare", self.name, signature))
        return self

    def prepared_call(self, grid: Any, block: Any, *args: Any, shared_size: int = 0) -> None:
        packed = struct.pack(self.format, *args)  # native layout; raises on a wrong type
        self.log.append(("call", self.name, grid, block, args, shared_size, len(packed)))


class OptInFunction(Function):
    def set_attribute(self, attribute: Any, value: int) -> None:
        self.log.append(("set_attribute", self.name, attribute, value))


class Module:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def get_function(self, name: str) -> Function:
        return Function(name, self.log)


def _module(signatures: dict[str, str] | None) -> tuple[PyCudaModule, Module]:
    target = ArchBinary("sm_90", b"\x7fELF", PTX, "", ())
    stand_in = Module()
    return PyCudaModule(None, stand_in, ImageChoice("cubin", target), ("axpy", "fill"),
                        signatures), stand_in


def test_launch_with_plan_signatures_prepares_once_and_coerces() -> None:
    module, stand_in = _module(signatures_from_plan(_plan()))
    x, y = Allocation(0x7F0000001000), Allocation(0x7F0000002000)
    for _ in range(2):
        module.launch("axpy", (3, 1, 1), (256, 1, 1), 0, [x, y, 2, 5])  # int 2 for a float
    prepares = [entry for entry in stand_in.log if entry[0] == "prepare"]
    calls = [entry for entry in stand_in.log if entry[0] == "call"]
    assert prepares == [("prepare", "axpy", "PPfq")]
    assert len(calls) == 2
    _, _, grid, block, args, shared, size = calls[0]
    # native alignment pads the float to 8 bytes before the int64, as CUDA lays parameters out
    assert (grid, block, shared, size) == ((3, 1, 1), (256, 1, 1), 0, 32)
    assert args == (0x7F0000001000, 0x7F0000002000, 2.0, 5)
    assert isinstance(args[2], float) and isinstance(args[3], int)


def test_launch_without_signatures_reads_the_ptx() -> None:
    module, stand_in = _module(None)
    module.launch("axpy", (1, 1, 1), (32, 1, 1), 128, [Allocation(16), Allocation(32), 0.5, 7])
    assert ("prepare", "axpy", "PPfq") in stand_in.log
    assert stand_in.log[-1][5] == 128
    with pytest.raises(LaunchError, match="takes 2 parameters"):
        module.launch("fill", (1, 1, 1), (32, 1, 1), 0, [Allocation(16)])


def test_module_checks_plan_signatures_when_loaded() -> None:
    with pytest.raises(LaunchError, match=r"parameter 2 is \.f32"):
        _module({"axpy": "PPqq"})


# Choosing an image --------------------------------------------------------------------------


def _binary(*archs: str) -> DeviceBinary:
    targets = tuple(ArchBinary(arch, b"\x7fELF", f".target {arch}", "", ()) for arch in archs)
    return DeviceBinary("m", "", "nvrtc", "nvrtc 13.5", (), targets)


@pytest.mark.parametrize(("capability", "expected"), [
    ((8, 0), "sm_80 cubin"),
    ((8, 6), "sm_80 cubin"),   # same major, newer minor: the sm_80 code runs
    ((8, 9), "sm_80 cubin"),
    ((9, 0), "sm_90 cubin"),
    ((10, 0), "sm_90 ptx"),    # a newer major: JIT the newest PTX not above it
    ((12, 0), "sm_90 ptx"),
    ((7, 5), None),            # older than every image
])
def test_select_image(capability: tuple[int, int], expected: str | None) -> None:
    choice = select_image(_binary("sm_80", "sm_90"), capability)
    assert (choice.describe() if choice else None) == expected


def test_select_image_with_arch_specific_cubins() -> None:
    binary = _binary("sm_80", "sm_90a")
    on_hopper, on_blackwell = select_image(binary, (9, 0)), select_image(binary, (10, 0))
    assert on_hopper is not None and on_hopper.describe() == "sm_90a cubin"
    assert on_blackwell is not None and on_blackwell.describe() == "sm_80 ptx"
    assert select_image(_binary("sm_86"), (8, 0)) is None


# Generated plans against their compiled kernels ---------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(nvrtc_status()[0] is None, reason="NVRTC not loadable")
@pytest.mark.parametrize("example", ["lenet5.net", "transformer.net"])
def test_generated_plans_match_their_kernels(example: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every launch's Arg kinds fit its kernel's PTX parameters: what the GPU would be passed."""
    pytest.importorskip("netc.codegen.emit", reason="code generation is not built yet")
    from netc.codegen.emit import generate
    from netc.frontend import load_file

    if not (EXAMPLES / example).is_file():
        pytest.skip(f"examples/{example} is gone")
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path))
    plan = generate(load_file(EXAMPLES / example))
    ptx = compile_module(plan.source, plan.module, ("sm_80",), "nvrtc").targets[0].ptx
    signatures = signatures_from_plan(plan)
    assert set(signatures) == set(plan.kernels)
    for kernel, signature in signatures.items():
        check_signature(kernel, signature, ptx_parameters(ptx, kernel))


def test_big_dynamic_shared_memory_opts_in_once() -> None:
    class Driver:
        class function_attribute:  # PyCUDA spells it so
            MAX_DYNAMIC_SHARED_SIZE_BYTES = "max-dynamic-shared"

    class OptInModule(Module):
        def get_function(self, name: str) -> Function:
            return OptInFunction(name, self.log)

    stand_in = OptInModule()
    target = ArchBinary("sm_90", b"\x7fELF", PTX, "", ())
    module = PyCudaModule(Driver, stand_in, ImageChoice("cubin", target), ("fill",), None)
    for shared in (1024, 100 * 1024, 100 * 1024, 64 * 1024):
        module.launch("fill", (1, 1, 1), (32, 1, 1), shared, [Allocation(16), 4])
    assert [e for e in stand_in.log if e[0] == "set_attribute"] == [
        ("set_attribute", "fill", "max-dynamic-shared", 100 * 1024)]
    plain, _ = _module(None)
    with pytest.raises(LaunchError, match="cannot raise the limit"):
        plain.launch("fill", (1, 1, 1), (32, 1, 1), 64 * 1024, [Allocation(16), 4])
