"""The CPU CUDA simulator: it runs the exact CUDA source netc generates, on the CPU.

    from netc.sim import CudaSim
    with CudaSim() as sim:
        module = sim.load(source, ["my_kernel"])      # = sim.load_binary(sim.build(...))
        buffer = sim.alloc(nbytes); sim.upload(buffer, array)
        module.launch("my_kernel", grid, block, shared_bytes, [buffer, 42, 0.5])

`docs/simulator.md` explains how it works (fibers for threads, barriers and warp operations
with misuse diagnostics, race detection by schedules, AddressSanitizer mode, time and stack
limits). It is a device for `netc.runtime.executor` like a GPU, and a tool of its own.

The modules, in the order they build on each other: `protocol` (the contract with the header
`include/cudasim.h`, and the errors), `signatures` (kernel parameter types), `source` (the
`extern __shared__` rewrite), `elf` (static shared variables), `build` (compiling modules),
`backends` (in process, or in a sanitizer child), `cudasim` (`CudaSim` and what it hands out).
"""

from netc.sim.cudasim import CudaModule, CudaSim, DeviceBuffer, SimBinary, driver_id
from netc.sim.protocol import (
    HEADER_PATH,
    SCHEDULES,
    CompilerMissing,
    SimulatorError,
    SimulatorLimitError,
    SimulatorStackOverflow,
    SimulatorTimeout,
)
from netc.sim.signatures import ParamType, parse_signature
from netc.sim.source import rewrite_dynamic_shared

__all__ = ["HEADER_PATH", "SCHEDULES", "CompilerMissing", "CudaModule", "CudaSim",
           "DeviceBuffer", "ParamType", "SimBinary", "SimulatorError", "SimulatorLimitError",
           "SimulatorStackOverflow", "SimulatorTimeout", "driver_id", "parse_signature",
           "rewrite_dynamic_shared"]
