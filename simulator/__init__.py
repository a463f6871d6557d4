"""The CPU CUDA simulator: it runs the exact CUDA source netc generates, on the CPU.

    from netc.sim import CudaSim
    with CudaSim() as sim:
        module = sim.load(source, ["my_kernel"])      # = sim.load_binary(sim.build(...))
        buffer = sim.alloc(nbytes); sim.upload(buffer, array)
        module.launch("my_kernel", grid, block, shared_bytes, [buffer, 42, 0.5])

`docs/simulator.md` explains how it works (fibers for threads, barriers and warp operations
with misuse diagnostics, race detection by schedules, AddressSanitizer mode, time and stack
limits). It is a device for `netc.runtime.executor` like a GPU, and a tool of its own.
"""

from netc.sim.cudasim import (
    SCHEDULES,
    CompilerMissing,
    CudaModule,
    CudaSim,
    DeviceBuffer,
    SimBinary,
    SimulatorError,
    driver_id,
)

__all__ = ["SCHEDULES", "CompilerMissing", "CudaModule", "CudaSim", "DeviceBuffer", "SimBinary",
           "SimulatorError", "driver_id"]
