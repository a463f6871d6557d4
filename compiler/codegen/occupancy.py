"""How many blocks of a kernel an SM holds, and how much of the GPU a launch can keep busy.

    occ = occupancy(ARCHS["sm_90"], threads=256, registers=88, shared_bytes=2112)
    occ.blocks_per_sm, occ.fraction, occ.limiter    # 2, 0.25, "registers"
    fill = grid_fill(ARCHS["sm_90"], blocks=32, occ=occ)
    fill.waves, fill.utilisation                     # 1, 0.12

**Occupancy** follows the CUDA Occupancy Calculator: the blocks an SM holds at once are the
fewest that any one resource allows,

    warps       max_warps_per_sm // ceil(threads / 32)
    registers   (registers_per_sm // roundup(registers * 32, 256)) // warps per block
    shared      shared_bytes_per_sm // roundup(shared bytes + 1 KiB reserved, 128)
    blocks      max_blocks_per_sm

and that resource is the `limiter` (the first of the order above on a tie). Occupancy as a
fraction is the resident warps over `max_warps_per_sm`. The limits are `GpuArch`'s.

**Grid fill** turns a launch's blocks into the share of the GPU's peak it can use. The blocks
run in `waves = ceil(blocks / (SMs * blocks_per_sm))`. An SM holding b blocks runs at
`rate(b) = min(1, b * warps per block / needed)` of its peak, where `needed` is
`warps_for_peak` (16: four per warp scheduler, each warp issuing one dependent chain) or fewer
when each warp has independent chains to issue (`chains`: a GEMM thread's tm x tn
accumulators, a warp's tensor-core tiles), down to one warp per scheduler at four chains:
`needed = warps_for_peak / min(chains, 4)`. A full wave takes `blocks_per_sm / rate(...)` block
times, the last one (r blocks left, at most `ceil(r / SMs)` on an SM) `ceil(r / SMs) /
rate(ceil(r / SMs))`; the utilisation is the ideal time, `blocks / SMs` block times at peak,
over their sum:

    utilisation = (blocks / SMs) / ((waves - 1) * bps / rate(bps) + last / rate(last))

It counts the SMs a small grid leaves idle, the warps too few to hide latency on the busy ones,
and a last wave that fills only part of the GPU. A kernel's predicted time is its roofline time
divided by it (`netc.explain`): a bound, since it credits every resident warp with issuing at
full rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from netc.codegen.targets import GpuArch

WARP = 32
LIMITERS = ("warps", "registers", "shared memory", "blocks")
"""The resources that can limit occupancy, in the order a tie is reported."""


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(frozen=True)
class Occupancy:
    """The blocks of one kernel an SM holds at once, and what stops it holding more."""

    blocks_per_sm: int
    warps_per_block: int
    limiter: str
    """One of `LIMITERS`."""
    max_warps_per_sm: int

    @property
    def warps_per_sm(self) -> int:
        return self.blocks_per_sm * self.warps_per_block

    @property
    def fraction(self) -> float:
        """Resident warps over the most an SM can hold (theoretical occupancy)."""
        return self.warps_per_sm / self.max_warps_per_sm


def occupancy(arch: GpuArch, threads: int, registers: int, shared_bytes: int) -> Occupancy:
    """The occupancy of a kernel with `threads` a block, `registers` a thread and
    `shared_bytes` of shared memory a block (static and dynamic) on `arch`. Raises
    `ValueError` when one block does not fit on an SM (the launch would fail)."""
    if threads < 1 or registers < 1 or shared_bytes < 0:
        raise ValueError(f"no occupancy for {threads} threads, {registers} registers, "
                         f"{shared_bytes} bytes of shared memory")
    warps = -(-threads // WARP)
    registers_per_warp = _round_up(registers * WARP, arch.register_allocation_unit)
    shared = _round_up(shared_bytes + arch.shared_reserved_bytes_per_block,
                       arch.shared_allocation_unit)
    limits = {
        "warps": arch.max_warps_per_sm // warps,
        "registers": (arch.registers_per_sm // registers_per_warp) // warps,
        "shared memory": arch.shared_bytes_per_sm // shared,
        "blocks": arch.max_blocks_per_sm,
    }
    limiter = min(LIMITERS, key=lambda name: limits[name])
    if limits[limiter] < 1:
        raise ValueError(f"a block of {threads} threads, {registers} registers a thread and "
                         f"{shared_bytes} bytes of shared memory does not fit on an SM of "
                         f"{arch.name} ({limiter})")
    return Occupancy(limits[limiter], warps, limiter, arch.max_warps_per_sm)


@dataclass(frozen=True)
class GridFill:
    """How a launch's blocks spread over the GPU."""

    blocks: int
    waves: int
    warps_per_sm: float
    """Resident warps an SM holds, averaged over the waves and every SM."""
    utilisation: float
    """The share of the GPU's peak rate the launch can use, in (0, 1]."""


MAX_CHAINS = 4
"""Independent chains a warp needs to keep its scheduler's pipe full on its own (a dependent
FMA's ~4-cycle latency)."""


def grid_fill(arch: GpuArch, blocks: int, occ: Occupancy, chains: int = 1) -> GridFill:
    """The waves and utilisation of `blocks` blocks of a kernel with occupancy `occ` whose
    warps each issue `chains` independent chains (see the module docstring)."""
    if blocks < 1:
        raise ValueError(f"a launch has at least one block, not {blocks}")
    per_wave = arch.sms * occ.blocks_per_sm
    waves = -(-blocks // per_wave)
    warps_per_sm = blocks * occ.warps_per_block / (waves * arch.sms)
    needed = arch.warps_for_peak / min(max(chains, 1), MAX_CHAINS)

    def block_times(held: int) -> float:  # a wave whose busiest SM holds `held` blocks
        return held / min(1.0, held * occ.warps_per_block / needed)

    last = -(-(blocks - (waves - 1) * per_wave) // arch.sms)
    spent = (waves - 1) * block_times(occ.blocks_per_sm) + block_times(last)
    return GridFill(blocks, waves, warps_per_sm, min(1.0, blocks / arch.sms / spent))
