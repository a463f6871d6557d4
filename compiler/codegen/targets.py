"""The GPUs netc plans for: the limits tiling respects and the peaks `netc explain` predicts with.

One record per architecture (`ARCHS`), keyed by the name `--arch` takes. The limits are those
every kernel netc generates lives within (no opt-in to more shared memory, so 48 KiB a block);
the peaks are the datasheet numbers of the SXM parts, dense fp32 without tensor cores (netc's
GEMMs are FMA loops), and HBM bandwidth:

| arch | GPU | SMs | fp32 peak | memory bandwidth |
| --- | --- | --- | --- | --- |
| sm_80 | A100 SXM | 108 | 19.5 TFLOP/s | 2.04 TB/s |
| sm_90 | H100 SXM | 132 | 66.9 TFLOP/s | 3.35 TB/s |

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

    def roofline_seconds(self, flops: float, bytes_moved: float) -> float:
        """The time a kernel needs at best: bound by arithmetic or by memory traffic."""
        return max(flops / self.flops_per_second, bytes_moved / self.bytes_per_second)

    @property
    def ridge_intensity(self) -> float:
        """FLOPs a byte above which a kernel is compute-bound."""
        return self.flops_per_second / self.bytes_per_second


H100 = Peaks("H100 SXM", 66.9e12, 3.35e12)
A100 = Peaks("A100 SXM", 19.5e12, 2.04e12)


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
