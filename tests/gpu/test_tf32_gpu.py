"""cvt.rna.tf32.f32 and mma.sync m16n8k8 .tf32 on a real GPU (sm_80 or later), through the same
wrappers (templates/mma.cuh) and the same checks as the simulator's emulation
(tests/sim/test_gemm_tf32.py): where the emulation's fragment tables or rounding were wrong, the
GPU and the simulator would disagree here. Skipped (by conftest.py, saying why) without a GPU;
not run on the machine this was written on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from netc.runtime.pycuda_device import PyCudaDevice
from netc.toolchain import compile_module
from tests.sim.test_gemm_tf32 import NAMES, SOURCE, check_cvt_tf32, check_mma_tf32

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def module() -> Iterator[tuple[PyCudaDevice, Any]]:
    with PyCudaDevice() as gpu:
        if gpu.capability < (8, 0):
            pytest.skip(f"{gpu.name} ({gpu.arch}) has no TF32 mma.sync")
        binary = compile_module(SOURCE, "tf32_emulation", (gpu.arch,), generated=False)
        yield gpu, gpu.load_binary(binary, NAMES)


def test_tf32_mma_matches_the_isa_tables_the_simulator_uses(module) -> None:
    check_mma_tf32(*module)


def test_cvt_tf32_rounds_as_the_simulator_does(module) -> None:
    check_cvt_tf32(*module)
