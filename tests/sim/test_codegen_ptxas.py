"""Every kernel variant the tests run compiles with nvcc for sm_80 and sm_90 without spilling,
and modules compile with NVRTC as they are.

One module holds the whole catalog (tests/sim/variants.py; the sim tests refuse kernels
outside it), compiled once per architecture, both at the same time. `ptxas -v` reports each
kernel's stack frame and spill traffic; spills mean the register estimate of a tile
configuration is wrong or a kernel does per-element work it should hoist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from netc.codegen.emit import generate, render_module
from tests.sim.networks import RESNET, network
from tests.sim.variants import catalog

pytestmark = [pytest.mark.sim, pytest.mark.skipif(shutil.which("nvcc") is None,
                                                   reason="needs the CUDA toolkit's nvcc")]

ARCHS = ("sm_80", "sm_90")
_PROPERTIES = re.compile(r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, "
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("ptxas")
    source = folder / "catalog.cu"
    source.write_text(render_module("catalog", "catalog", catalog().values(), []))
    running = {}
    for arch in ARCHS:
        command = ["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o",
                   str(folder / f"catalog.{arch}.cubin"), str(source)]
        running[arch] = (command, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True))
    reports = {}
    for arch, (command, process) in running.items():
        output, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, f"{' '.join(command)} failed:\n{output[-8000:]}"
        reports[arch] = output
    return reports


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_variant_compiles_without_spills(arch: str,
                                                      ptxas_reports: dict[str, str]) -> None:
    found = {name: (int(stores), int(loads))
             for name, _, stores, loads in _PROPERTIES.findall(ptxas_reports[arch])}
    missing = sorted(set(catalog()) - set(found))
    assert not missing, f"ptxas reported nothing for {missing}"
    spilling = {name: spill for name, spill in found.items() if spill != (0, 0)}
    assert not spilling, f"{arch}: kernels spill (bytes stored, loaded): {spilling}"


def test_the_catalog_covers_every_family() -> None:
    families = {Path(spec.template).stem for spec in catalog().values()}
    assert families == {"gemm", "gemv", "conv2d", "pool", "rowwise", "concat", "elementwise",
                        "reduce", "gather", "pad", "interpolate", "embedding", "triangle",
                        "conv_transpose2d", "depthwise_conv2d", "attention", "conv2d_wgrad",
                        "pool_grad", "split_k_reduce", "interpolate_grad"}


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_modules_compile_with_nvrtc_and_no_include_path(dtype: str) -> None:
    """A module is self-contained: NVRTC, which has no include path by default, builds it."""
    from netc.toolchain import compile_module, nvrtc_status

    if nvrtc_status()[0] is None:
        pytest.skip(f"NVRTC is not available: {nvrtc_status()[1]}")
    plan = generate(network(RESNET, dtype, 2))
    binary = compile_module(plan.source, plan.module, archs=ARCHS, compiler="nvrtc")
    assert sorted(target.arch for target in binary.targets) == list(ARCHS)
