"""The GPU device: netc's device interface over PyCUDA (`pycuda.driver`).

    device = PyCudaDevice()                            # device 0, its primary context
    module = device.load_binary(binary, plan.kernels, signatures_from_plan(plan))
    buffer = device.alloc(nbytes); device.upload(buffer, array)
    part = device.view(buffer, offset, nbytes)      # bytes of it, e.g. a buffer in the arena
    module.launch("dense_0", grid, block, shared_bytes, [buffer, ..., batch, 0.5])
    result = device.download(buffer, np.float32, shape)

The executor (`netc.runtime.executor`) drives any device with this interface; this one runs the
kernels on a real GPU. It compiles nothing: the compile driver (`netc.driver.build_binary`) or
an artifact directory gives it the module's binary. Which image a module runs from, for a device of compute capability X.Y:

1. the cubin for sm_XY (or sm_XYa), if the binary has one;
2. else a cubin of the same major version and a lower minor one (sm_80 code runs on an sm_86),
   never an arch-specific one (`sm_90a`);
3. else the PTX of the highest architecture not above X.Y, JIT-compiled by the driver. The driver
   must be at least as new as the compiler that wrote the PTX (NVRTC 13.5 writes PTX ISA 9.5).

Launches are prepared (`Function.prepare` / `prepared_call`). Each kernel's argument format is
derived from the launch plan's `Arg` kinds (`signatures_from_plan`: buffer -> "P", size and
int -> "q" (int64), float -> "f") and checked against the kernel's parameter list in the PTX, so a
plan that does not match its kernel fails loudly instead of passing misaligned arguments. Given
no signatures, the format is the PTX's parameter list, each
8-byte parameter taking "q" for a Python integer and "P" for a device allocation. A launch asking for more
than 48 KiB of dynamic shared memory first raises the kernel's limit
(`MAX_DYNAMIC_SHARED_SIZE_BYTES`, through `Function.set_attribute` where PyCUDA has it).

PyCUDA is imported only when a device is constructed: importing this module never fails, and
`gpu_available()` says whether a device could be made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from netc.plan import Arg, LaunchPlan
    from netc.toolchain import ArchBinary, DeviceBinary

INSTALL_HELP = ("install PyCUDA with `pip install 'netc[cuda]'` (it builds against an installed "
                "CUDA toolkit and needs an NVIDIA driver), or run on the CPU simulator with "
                "`--backend cudasim`")

DEFAULT_DYNAMIC_SHARED_LIMIT = 48 * 1024
"""Dynamic shared memory a launch may use before the kernel must opt in to more."""


class DeviceUnavailable(Exception):
    """No GPU can be used here; the message says why and what to install."""


class LaunchError(Exception):
    """A launch does not match its kernel (a bug in the plan that asked for it)."""


def _driver() -> Any:
    try:
        import pycuda.driver as driver
    except ImportError as exc:
        raise DeviceUnavailable(f"the cuda backend needs PyCUDA, which is not installed ({exc}); "
                                f"{INSTALL_HELP}") from None
    return driver


@lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    try:
        driver = _driver()
    except DeviceUnavailable as exc:
        return False, str(exc)
    try:
        driver.init()
        count = driver.Device.count()
    except Exception as exc:  # pycuda raises its own RuntimeError/LogicError types
        return False, (f"PyCUDA could not initialise the CUDA driver ({exc}); this machine has no "
                       f"usable NVIDIA driver or GPU; use `--backend cudasim`")
    if count == 0:
        return False, "the CUDA driver found no GPU; use `--backend cudasim`"
    return True, ""


def gpu_available() -> bool:
    """PyCUDA imports and the CUDA driver sees at least one device."""
    return _probe()[0]


def unavailable_reason() -> str:
    """Why `gpu_available()` is False ("" when it is True)."""
    return _probe()[1]


# Argument formats ---------------------------------------------------------------------------

_KIND_CODES = {"buffer": "P", "size": "q", "int": "q", "float": "f"}
# What each PTX parameter type may receive from the plan; both 8-byte codes pack the same way.
_PTX_CODES = {
    "u64": "Pq", "s64": "Pq", "b64": "Pq",
    "f32": "f", "u32": "i", "s32": "i", "b32": "i", "f64": "d",
}


def launch_signature(args: Sequence[Arg]) -> str:
    """The `Function.prepare` format of a launch: buffer -> P, size/int -> q, float -> f."""
    try:
        return "".join(_KIND_CODES[arg.kind] for arg in args)
    except KeyError as exc:
        raise LaunchError(f"unknown argument kind {exc.args[0]!r}") from None


def signatures_from_plan(plan: LaunchPlan) -> dict[str, str]:
    """Each kernel's argument format; every launch of a kernel must agree."""
    signatures: dict[str, str] = {}
    for launch in plan.launches:
        signature = launch_signature(launch.args)
        previous = signatures.setdefault(launch.kernel, signature)
        if previous != signature:
            raise LaunchError(f"kernel `{launch.kernel}` is launched with arguments {previous!r} "
                              f"and {signature!r}; one kernel has one parameter list")
    return signatures


def ptx_parameters(ptx: str, kernel: str) -> list[str]:
    """The PTX types of an entry's parameters (`u64`, `f32`, ...); `b8[N]` for a byte array."""
    match = re.search(r"\.entry\s+" + re.escape(kernel) + r"\s*\(([^)]*)\)", ptx)
    if match is None:
        raise LaunchError(f"kernel `{kernel}` is not an entry in the module's PTX")
    types = []
    for declaration in match.group(1).split(","):
        declaration = declaration.strip()
        if not declaration:
            continue
        array = re.search(r"\.b8\s+\S+\[(\d+)\]", declaration)
        if array:
            types.append(f"b8[{array.group(1)}]")
            continue
        kind = re.search(r"\.param\s+\.(\w+)", declaration)
        if kind is None:
            raise LaunchError(f"cannot read parameter `{declaration}` of `{kernel}`")
        types.append(kind.group(1))
    return types


def check_signature(kernel: str, signature: str, parameters: Sequence[str]) -> None:
    if len(signature) != len(parameters):
        raise LaunchError(f"kernel `{kernel}` takes {len(parameters)} parameters "
                          f"({', '.join(parameters)}) but the plan passes {len(signature)} "
                          f"({signature})")
    for index, (code, parameter) in enumerate(zip(signature, parameters)):
        if code not in _PTX_CODES.get(parameter, ""):
            raise LaunchError(f"kernel `{kernel}` parameter {index} is .{parameter} but the plan "
                              f"passes {code!r}")


def _signature_from_values(kernel: str, parameters: Sequence[str], values: Sequence[Any]) -> str:
    """With no plan at hand: the PTX types, with each 8-byte slot read off its value."""
    if len(values) != len(parameters):
        raise LaunchError(f"kernel `{kernel}` takes {len(parameters)} parameters, "
                          f"got {len(values)} arguments")
    codes = []
    for parameter, value in zip(parameters, values):
        allowed = _PTX_CODES.get(parameter)
        if allowed is None:
            raise LaunchError(f"kernel `{kernel}` has a .{parameter} parameter, which netc "
                              f"launches do not pass")
        if allowed == "Pq":
            is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            codes.append("q" if is_integer else "P")
        else:
            codes.append(allowed)
    return "".join(codes)


def _coerce(code: str, value: Any) -> int | float:
    if code == "P":
        return int(value)  # a DeviceAllocation converts to its device address
    if code in "qi":
        return int(value)
    return float(value)


@dataclass(frozen=True)
class DeviceView:
    """Bytes [offset, offset + nbytes) of a device allocation, by address: the executor's
    arena buffers. It converts to its device address like a `DeviceAllocation`, so it goes
    wherever one goes (a kernel's pointer argument, a copy); it owns nothing and is never
    freed (the allocation it points into is)."""

    address: int
    nbytes: int

    def __int__(self) -> int:
        return self.address


# Choosing an image --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChoice:
    kind: Literal["cubin", "ptx"]
    target: ArchBinary

    def describe(self) -> str:
        return f"{self.target.arch} {self.kind}"


def select_image(binary: DeviceBinary, capability: tuple[int, int]) -> ImageChoice | None:
    """The image to load on a device of `capability` (see the module docstring), or None."""
    from netc.toolchain import arch_number

    major, minor = capability
    device_number = major * 10 + minor
    exact = [t for t in binary.targets if arch_number(t.arch) == device_number]
    if exact:  # a plain sm_90 before an arch-specific sm_90a; both run on a 9.0 device
        return ImageChoice("cubin", min(exact, key=lambda t: len(t.arch)))
    compatible = [t for t in binary.targets
                  if t.arch[-1].isdigit() and arch_number(t.arch) // 10 == major
                  and arch_number(t.arch) <= device_number]
    if compatible:
        return ImageChoice("cubin", max(compatible, key=lambda t: arch_number(t.arch)))
    jittable = [t for t in binary.targets
                if t.arch[-1].isdigit() and arch_number(t.arch) <= device_number]
    if jittable:
        return ImageChoice("ptx", max(jittable, key=lambda t: arch_number(t.arch)))
    return None


# The device ---------------------------------------------------------------------------------


class PyCudaModule:
    """A loaded module: `launch(name, grid, block, shared_bytes, args)` runs one of its kernels."""

    def __init__(self, driver: Any, module: Any, image: ImageChoice, kernels: Iterable[str],
                 signatures: Mapping[str, str] | None):
        self._driver = driver
        self._module = module
        self.image = image
        self._signatures = dict(signatures or {})
        self._prepared: dict[tuple[str, str], Any] = {}
        self._parameters: dict[str, list[str]] = {}
        self._shared_opt_in: dict[str, int] = {}
        for kernel in kernels:
            self._parameters_of(kernel)
            if kernel in self._signatures:
                check_signature(kernel, self._signatures[kernel], self._parameters[kernel])

    def _parameters_of(self, kernel: str) -> list[str]:
        if kernel not in self._parameters:
            self._parameters[kernel] = ptx_parameters(self.image.target.ptx, kernel)
        return self._parameters[kernel]

    def _function(self, kernel: str, signature: str) -> Any:
        key = (kernel, signature)
        if key not in self._prepared:
            function = self._module.get_function(kernel)
            function.prepare(signature)
            self._prepared[key] = function
        return self._prepared[key]

    def _opt_in_shared(self, name: str, function: Any, nbytes: int) -> None:
        """Raise the kernel's dynamic shared memory ceiling above the 48 KiB default."""
        if self._shared_opt_in.get(name, 0) >= nbytes:
            return
        set_attribute = getattr(function, "set_attribute", None)
        attributes = getattr(self._driver, "function_attribute", None)
        attribute = getattr(attributes, "MAX_DYNAMIC_SHARED_SIZE_BYTES", None)
        if set_attribute is None or attribute is None:
            raise LaunchError(f"kernel `{name}` needs {nbytes} bytes of dynamic shared memory, "
                              f"more than the {DEFAULT_DYNAMIC_SHARED_LIMIT} a launch gets by "
                              f"default, and this PyCUDA cannot raise the limit "
                              f"(no Function.set_attribute); upgrade PyCUDA")
        set_attribute(attribute, nbytes)
        self._shared_opt_in[name] = nbytes

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], shared_bytes: int,
               args: Sequence[Any], stream: Any = None) -> None:
        """Launch `name`; on the legacy default stream, or on `stream` (a PyCUDA `Stream`,
        which is how a CUDA graph capture records the launch)."""
        parameters = self._parameters_of(name)
        signature = self._signatures.get(name) or _signature_from_values(name, parameters, args)
        if len(args) != len(signature):
            raise LaunchError(f"kernel `{name}` takes {len(signature)} arguments, "
                              f"got {len(args)}")
        function = self._function(name, signature)
        if shared_bytes > DEFAULT_DYNAMIC_SHARED_LIMIT:
            self._opt_in_shared(name, function, int(shared_bytes))
        values = [_coerce(code, value) for code, value in zip(signature, args)]
        grid_size, block_size = tuple(int(g) for g in grid), tuple(int(b) for b in block)
        if stream is None:
            function.prepared_call(grid_size, block_size, *values, shared_size=int(shared_bytes))
        else:
            function.prepared_async_call(grid_size, block_size, stream, *values,
                                         shared_size=int(shared_bytes))


@dataclass
class CapturedGraph:
    """A plan's launches captured on `stream`: `launch()` replays them there."""

    graph: Any
    stream: Any

    def launch(self) -> None:
        self.graph.launch(self.stream.handle)

    def close(self) -> None:
        self.graph.close()


def _pointer(buf: Any) -> Any:
    """What PyCUDA's copies take: an allocation as it is, a view as its address."""
    return int(buf) if isinstance(buf, DeviceView) else buf


class PyCudaDevice:
    """A CUDA GPU through PyCUDA, in device `index`'s primary context."""

    def __init__(self, index: int = 0, compiler: str = "auto", options: Sequence[str] = ()):
        ok, why = _probe()
        if not ok:
            raise DeviceUnavailable(why)
        driver = _driver()
        count = driver.Device.count()
        if not 0 <= index < count:
            raise DeviceUnavailable(f"there is no CUDA device {index}; this machine has {count}")
        self._driver = driver
        self._device = driver.Device(index)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._active = True
        major, minor = self._device.compute_capability()
        self.capability: tuple[int, int] = (int(major), int(minor))
        self.arch = f"sm_{major}{minor}"
        self.name = str(self._device.name())
        self.compiler = compiler
        self.options = tuple(options)
        self.last_image: ImageChoice | None = None
        self._stream: Any = None
        """The stream CUDA graphs are captured on and replayed on (made at first capture)."""

    def __repr__(self) -> str:
        return f"<PyCudaDevice {self.name} ({self.arch})>"

    # memory

    def alloc(self, nbytes: int) -> Any:
        return self._driver.mem_alloc(max(int(nbytes), 1))

    def view(self, buf: Any, offset: int, nbytes: int) -> DeviceView:
        """Bytes [offset, offset + nbytes) of allocation (or view) `buf`: pointer arithmetic,
        since PyCUDA has no sub-allocation object. The caller keeps `buf` alive."""
        size = buf.nbytes if isinstance(buf, DeviceView) else None
        if offset < 0 or nbytes < 0 or (size is not None and offset + nbytes > size):
            raise ValueError(f"view [{offset}, {offset + nbytes}) outside a {size}-byte buffer")
        return DeviceView(int(buf) + int(offset), int(nbytes))

    def upload(self, buf: Any, array: np.ndarray) -> None:
        self._driver.memcpy_htod(_pointer(buf), np.ascontiguousarray(array))

    def download(self, buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        result = np.empty(tuple(shape), dtype=dtype)
        if result.size:
            self._driver.memcpy_dtoh(result, _pointer(buf))
        return result

    def free(self, buf: Any) -> None:
        if isinstance(buf, DeviceView):
            raise ValueError("free: pass the allocation from alloc(), not a view of it")
        buf.free()

    def synchronize(self) -> None:
        self._driver.Context.synchronize()

    def copy(self, destination: Any, source: Any, nbytes: int, stream: Any = None) -> None:
        """Copy `nbytes` between device buffers (asynchronously on `stream` when given)."""
        if stream is None:
            self._driver.memcpy_dtod(_pointer(destination), _pointer(source), int(nbytes))
        else:
            self._driver.memcpy_dtod_async(_pointer(destination), _pointer(source), int(nbytes),
                                           stream)

    # CUDA graphs (netc.runtime.cuda_graph)

    def supports_graphs(self) -> bool:
        from netc.runtime import cuda_graph

        return cuda_graph.available()

    def capture(self, record: Callable[[Any], None]) -> CapturedGraph:
        """A CUDA graph of what `record(stream)` launches and copies on `stream`, replayed by
        the result's `launch()` on the same stream. The legacy default stream, which uploads
        and downloads use, waits for the replay (the stream is a blocking one)."""
        from netc.runtime import cuda_graph

        if self._stream is None:
            self._stream = self._driver.Stream()
        stream = self._stream
        return CapturedGraph(cuda_graph.capture(stream.handle, lambda: record(stream)), stream)

    # modules

    def load_binary(self, binary: DeviceBinary, kernels: Iterable[str],
                    signatures: Mapping[str, str] | None = None) -> PyCudaModule:
        """Load the image of `binary` that suits this device (see the module docstring)."""
        choice = select_image(binary, self.capability)
        if choice is None:
            raise DeviceUnavailable(f"module `{binary.name}` has images for "
                                    f"{', '.join(binary.archs)}, none of which runs on this "
                                    f"{self.name} ({self.arch}); compile it for {self.arch}")
        if choice.kind == "cubin":
            module = self._driver.module_from_buffer(choice.target.cubin)
        else:
            module = self._driver.module_from_buffer(choice.target.ptx.encode() + b"\0")
        self.last_image = choice
        return PyCudaModule(self._driver, module, choice, kernels, signatures)

    # lifetime

    def close(self) -> None:
        """Make the context no longer current (the primary context stays for other users)."""
        if self._active:
            self._active = False
            self._context.pop()

    def __enter__(self) -> PyCudaDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
