"""`netc.codegen.occupancy`: blocks an SM holds, which resource limits them, and grid fill.

The expected values are worked by hand from the sm_90 limits (64 warps, 32 blocks, 65536
registers in units of 256 a warp, 228 KiB of shared memory in units of 128 bytes plus 1 KiB
reserved a block) and 132 SMs.
"""

from __future__ import annotations

import pytest

from netc.codegen.occupancy import grid_fill, occupancy
from netc.codegen.targets import ARCHS

pytestmark = pytest.mark.unit

H100 = ARCHS["sm_90"]
A100 = ARCHS["sm_80"]


@pytest.mark.parametrize(("threads", "registers", "shared", "blocks", "limiter"), [
    # 32 warps a block: 64 // 32 = 2; registers would allow 4 (512 a warp), shared memory 228.
    (1024, 16, 0, 2, "warps"),
    # 88 * 32 = 2816 a warp: 65536 // 2816 = 23 warps, 2 blocks of 8 warps.
    (256, 88, 2112, 2, "registers"),
    # 33 * 32 = 1056 rounds up to 1280 a warp: 51 warps, 6 blocks (7 without the rounding).
    (256, 33, 0, 6, "registers"),
    # 56 KiB + 1 KiB reserved = 58368 bytes: 233472 // 58368 = 4 blocks.
    (128, 32, 56 * 1024, 4, "shared memory"),
    # 57600 + 1024 = 58624 bytes: 3 blocks (4 without the reserved KiB).
    (128, 32, 57600, 3, "shared memory"),
    # 57345 + 1024 rounds up to 58496 bytes: 3 blocks (4 without the rounding).
    (128, 32, 57345, 3, "shared memory"),
    # One warp a block: warps and registers allow 64, the hardware caps blocks at 32.
    (32, 32, 0, 32, "blocks"),
])
def test_occupancy_on_hand_computed_cases(threads: int, registers: int, shared: int,
                                          blocks: int, limiter: str) -> None:
    occ = occupancy(H100, threads, registers, shared)
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)
    assert occ.warps_per_block == -(-threads // 32)
    assert occ.fraction == blocks * occ.warps_per_block / 64


def test_a_tie_reports_the_first_limiter_and_the_arch_sets_shared_memory() -> None:
    # 32 warps and 32 registers: warps and registers both allow 2 blocks.
    assert occupancy(H100, 1024, 32, 0).limiter == "warps"
    # 40 KiB + 1 KiB: 5 blocks in an H100's 228 KiB, 4 in an A100's 164 KiB.
    assert occupancy(H100, 64, 32, 40 * 1024).blocks_per_sm == 5
    assert occupancy(A100, 64, 32, 40 * 1024).blocks_per_sm == 4


def test_a_block_that_does_not_fit_raises() -> None:
    with pytest.raises(ValueError, match="does not fit on an SM of sm_90 \\(registers\\)"):
        occupancy(H100, 1024, 255, 0)  # 8192 registers a warp: 8 warps of the 32 it needs
    with pytest.raises(ValueError, match="shared memory"):
        occupancy(H100, 128, 32, 228 * 1024)


def test_grid_fill_counts_idle_sms_starved_sms_and_the_last_wave() -> None:
    occ = occupancy(H100, 256, 88, 2112)  # 2 blocks of 8 warps an SM
    one = grid_fill(H100, 1, occ)
    assert (one.waves, one.utilisation) == (1, pytest.approx(8 / (132 * 16)))
    full = grid_fill(H100, 132 * 2, occ)
    assert (full.waves, full.warps_per_sm, full.utilisation) == (1, 16, 1.0)
    spill = grid_fill(H100, 132 * 2 + 1, occ)  # one block more: a second, nearly empty wave
    assert spill.waves == 2
    assert spill.utilisation == pytest.approx((132 * 2 + 1) * 8 / (2 * 132 * 16))
    small = grid_fill(H100, 32, occ)  # ResNet-18's layer4 convs at batch 1
    assert small.utilisation == pytest.approx(32 * 8 / (132 * 16))
    with pytest.raises(ValueError):
        grid_fill(H100, 0, occ)


def test_independent_chains_lower_the_warps_an_sm_needs() -> None:
    occ = occupancy(H100, 256, 151, 0)  # one block of 8 warps an SM: the 128x128 SGEMM tile
    assert grid_fill(H100, 132, occ).utilisation == pytest.approx(8 / 16)
    assert grid_fill(H100, 132, occ, chains=2).utilisation == pytest.approx(8 / 8)
    assert grid_fill(H100, 132, occ, chains=64).utilisation == 1.0  # 4 warps an SM would do
    few = occupancy(H100, 64, 40, 0)  # 2 warps a block
    assert grid_fill(H100, 132, few, chains=64).utilisation == pytest.approx(
        grid_fill(H100, 132, few, chains=4).utilisation)  # 4 chains a warp is the most counted
    assert grid_fill(H100, 132, few, chains=64).utilisation == pytest.approx(2 / 4)
    # Idle SMs stay idle: 32 blocks of 8 warps, each SM at full rate with 4 chains, use 32 of
    # the 132 SMs (the warps of a busy SM above those it needs do not make up for them).
    assert grid_fill(H100, 32, occ, chains=4).utilisation == pytest.approx(32 / 132)
