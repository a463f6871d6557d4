"""mma.sync, ldmatrix and cp.async on a real GPU (sm_80 or later), through the same wrappers
(templates/mma.cuh) and the same checks as the simulator's emulation
(tests/sim/test_mma_emulation.py): where the emulation's fragment tables were wrong, the GPU
and the simulator would disagree here. Skipped (by conftest.py, saying why) without a GPU; not
run on the machine this was written on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from netc.runtime.pycuda_device import PyCudaDevice
from netc.toolchain import compile_module
from tests.sim.test_mma_emulation import (
    NAMES,
    SOURCE,
    check_cp_async,
    check_ldmatrix,
    check_mma,
    check_two_groups,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def module() -> Iterator[tuple[PyCudaDevice, Any]]:
    with PyCudaDevice() as gpu:
        if gpu.capability < (8, 0):
            pytest.skip(f"{gpu.name} ({gpu.arch}) has no mma.sync m16n8k16 or cp.async")
        binary = compile_module(SOURCE, "mma_emulation", (gpu.arch,), generated=False)
        yield gpu, gpu.load_binary(binary, [n for n in NAMES if n != "misaligned"])


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_mma_matches_the_isa_tables_the_simulator_uses(module, dtype: str) -> None:
    check_mma(*module, dtype)


@pytest.mark.parametrize("pad", [0, 8])
def test_ldmatrix_matches_the_simulator(module, pad: int) -> None:
    check_ldmatrix(*module, pad)


def test_cp_async_copies_and_zero_fills(module) -> None:
    check_cp_async(*module)
    check_two_groups(*module)
