"""The GPUs netc plans for: the limits tiling respects and the peaks `netc explain` predicts with.

One record per architecture (`ARCHS`), keyed by the name `--arch` takes. The limits are those
every kernel netc generates lives within (no opt-in to more shared memory, so 48 KiB a block);
the peaks are the datasheet numbers of the SXM parts: dense fp32 on the CUDA cores (netc's SIMT
GEMMs are FMA loops), dense f16/bf16 on the tensor cores with fp32 accumulation (the `mma.sync`
GEMMs, kernels named `..._mma_...`), and HBM bandwidth:

| arch | GPU | SMs | fp32 peak | f16/bf16 tensor peak | memory bandwidth |
| --- | --- | --- | --- | --- | --- |
| sm_80 | A100 SXM | 108 | 19.5 TFLOP/s | 312 TFLOP/s | 2.04 TB/s |
| sm_90 | H100 SXM | 132 | 66.9 TFLOP/s | 989.4 TFLOP/s | 3.35 TB/s |

The per-SM limits that decide occupancy (`netc.codegen.occupancy`) are the same on sm_80 and
sm_90 but for shared memory: 64 resident warps (2048 threads) and 32 resident blocks an SM,
65536 registers an SM allocated per warp in units of 256, shared memory allocated per block in
units of 128 bytes plus 1 KiB the CUDA runtime reserves for every block (compute capability 8.0
and later), 164 KiB (A100) or 228 KiB (H100) of shared memory an SM. Sources: the CUDA C++
Programming Guide, "Technical Specifications per Compute Capability"; the CUDA Occupancy
Calculator (docs.nvidia.com/cuda/cuda-occupancy-calculator, now Nsight Compute's occupancy
calculator) for the allocation units; the NVIDIA Ampere and Hopper Tuning Guides for the
shared memory an SM and the 1 KiB reserved per block.

An architecture netc has no record for (`sm_86`, `sm_89`) is planned as the newest known one not
newer than it, and an older one (`sm_75`) as sm_80 (`planning_arch`): the limits that matter
here (1024 threads, 64K registers, 48 KiB of shared memory a block) are the same on all of them.
Only tiling uses such a stand-in; `netc explain --arch` takes the known names alone, since its
peaks would be another GPU's.
"""

from __future__ import annotations

from dataclasses import dataclass

from netc.diagnostics import CompileError, Diagnostic


@dataclass(frozen=True)
class Peaks:
    """A GPU's peak rates: what a kernel cannot beat, the roofline's two ceilings."""

    gpu: str
    flops_per_second: float
    """Dense fp32 FLOP/s without tensor cores."""
    bytes_per_second: float
    """Device-memory bandwidth."""
    tensor_flops_per_second: float
    """Dense f16/bf16 FLOP/s on the tensor cores (fp32 accumulation)."""

    def roofline_seconds(self, flops: float, bytes_moved: float, *,
                         tensor_cores: bool = False, tf32: bool = False) -> float:
        """The time a kernel needs at best: bound by arithmetic or by memory traffic."""
        return max(flops / self.compute_rate(tensor_cores, tf32),
                   bytes_moved / self.bytes_per_second)

    def compute_rate(self, tensor_cores: bool = False, tf32: bool = False) -> float:
        """Peak FLOP/s of the tensor cores (TF32: half the 16-bit rate, on A100 and H100
        alike) or of the fp32 CUDA cores."""
        if not tensor_cores:
            return self.flops_per_second
        return self.tensor_flops_per_second / (2 if tf32 else 1)

    @property
    def ridge_intensity(self) -> float:
        """FLOPs a byte above which a kernel is compute-bound."""
        return self.flops_per_second / self.bytes_per_second


H100 = Peaks("H100 SXM", 66.9e12, 3.35e12, 989.4e12)
A100 = Peaks("A100 SXM", 19.5e12, 2.04e12, 312e12)


@dataclass(frozen=True)
class GpuArch:
    """What tiling needs to know about one compute capability."""

    name: str
    peaks: Peaks
    sms: int
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    shared_bytes_per_block: int = 48 * 1024
    """Without opting in (cudaFuncSetAttribute), which netc's launches never do."""
    shared_bytes_per_sm: int = 164 * 1024
    max_blocks_per_sm: int = 32
    max_warps_per_sm: int = 64
    register_allocation_unit: int = 256
    """Registers are allocated per warp in multiples of this."""
    shared_allocation_unit: int = 128
    """Shared memory is allocated per block in multiples of this many bytes."""
    shared_reserved_bytes_per_block: int = 1024
    """Shared memory the CUDA runtime keeps for itself in every resident block (sm_80+)."""
    warps_for_peak: int = 16
    """Resident warps an SM needs to run at its peak rate in `netc explain`'s time model: four
    for each of its four warp schedulers, enough to cover a dependent FMA's ~4-cycle latency
    without relying on a kernel's instruction-level parallelism; fewer for warps with
    independent chains (`netc.codegen.occupancy.grid_fill`)."""


ARCHS: dict[str, GpuArch] = {
    "sm_80": GpuArch("sm_80", A100, sms=108, shared_bytes_per_sm=164 * 1024),
    "sm_90": GpuArch("sm_90", H100, sms=132, shared_bytes_per_sm=228 * 1024),
}
DEFAULT_ARCH = "sm_90"


def _number(arch: str) -> int | None:
    return int(arch[3:]) if arch.startswith("sm_") and arch[3:].isdigit() else None


def planning_arch(arch: str) -> GpuArch:
    """The record to plan `arch` with: its own, else the newest known one not newer than it,
    else (an older GPU, whose per-block limits are the same) the oldest known one. Raises a
    `CompileError` (E0443) for a name that is no architecture."""
    if arch in ARCHS:
        return ARCHS[arch]
    number = _number(arch)
    if number is None:
        raise CompileError([Diagnostic(
            "E0443", f"`{arch}` is not a GPU architecture like sm_90",
            help="known architectures: " + ", ".join(ARCHS))])
    known = sorted((n, name) for name in ARCHS if (n := _number(name)) is not None)
    older = [name for n, name in known if n <= number]
    return ARCHS[older[-1] if older else known[0][1]]
