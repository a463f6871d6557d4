"""What the SASS of the tensor-core conv2d (templates/conv2d_mma.cuh) promises, read statically
from its cubins for sm_80 and sm_90 (tests/unit/test_sass.py's tools; skipped without a CUDA
compiler or cuobjdump): no spills, and a main loop (the one issuing cp.async: the weights are
16-byte aligned rows of whole chunks) that multiplies on tensor cores (HMMA) from ldmatrix
fragments (LDSM), copies the weights by 16-byte cp.async (LDGSTS.128), gathers the input with
ordinary loads (LDG) and stores each thread's gathered run 16 bytes at a time (STS.128).
"""

from __future__ import annotations

import pytest

from netc.codegen import kernels
from netc.codegen.tiles import DEFAULT_MMA
from netc.toolchain.sass import format_mix, instruction_mix
from tests.unit.test_sass import (
    ARCHS,
    Sass,
    assert_tensor_core_main_loop,
    compile_sass,
    cp_async_loop,
    module_of,
)

pytestmark = pytest.mark.unit

SPECS = [kernels.conv2d_kernel(dtype, DEFAULT_MMA, has_bias=True) for dtype in ("f16", "bf16")]
MIN_HMMA_SHARE = 0.05
"""Measured 6.1% (sm_80) and 5.9% (sm_90) on the 128 x 128 tile with NVRTC 13: the im2col
gather (a load, a bounds check and a tap increment per element, 16 elements a thread a k-tile)
costs more instructions than the 32 HMMA a warp issues a k-tile; a floor, so that a gather
growing further (a division per element: 2.5%) fails."""


@pytest.fixture(scope="module")
def conv_sass() -> tuple[object, Sass]:
    return compile_sass(module_of("sass_mma_conv", SPECS), "sass_mma_conv")


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_conv_main_loop(arch: str, conv_sass: tuple[object, Sass]) -> None:
    binary, sass = conv_sass
    for spec in SPECS:
        resources = binary.kernel_resources(arch)[spec.name]  # type: ignore[attr-defined]
        assert not resources.spills, f"{arch} {spec.name} spills"
        body = cp_async_loop(sass, arch, spec.name)
        mix = instruction_mix(body)
        print(f"{arch} {spec.name} main loop: {sum(mix.values())} instructions, "
              f"{resources.registers} registers: {format_mix(mix)}")
        assert_tensor_core_main_loop(mix, f"{arch} {spec.name}")
        assert mix["LDG"], "the input is not gathered in the main loop (no register prefetch)"
        stores = [i.opcode for i in body if i.base == "STS"]
        assert stores and all(op.endswith(".128") for op in stores), \
            f"the gathered runs are not stored 16 bytes at a time: {stores}"
        assert all(i.opcode.endswith(".128") for i in body if i.base == "LDGSTS"), \
            "cp.async of less than 16 bytes"
        assert mix["HMMA"] >= MIN_HMMA_SHARE * sum(mix.values()), format_mix(mix)
