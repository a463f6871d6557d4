"""Device compilation: one CUDA module to PTX and a cubin per GPU architecture.

    binary = compile_module(plan.source, plan.module, archs=("sm_80", "sm_90"))
    binary.target("sm_90").cubin          # an ELF image for sm_90
    binary.target("sm_90").ptx            # the PTX it was assembled from (`.target sm_90`)
    binary.kernel_resources("sm_90")      # registers, shared memory, spills... per kernel

Two compilers, one result:

* `nvrtc`: NVIDIA's runtime compiler as a library, through `cuda.bindings.nvrtc`, which finds
  `libnvrtc` from the `nvidia-cuda-nvrtc` wheel (via `cuda.pathfinder`), so a machine with no
  CUDA toolkit can build cubins: `pip install 'netc[nvrtc]'`.
* `nvcc`: the toolkit's driver, found on PATH, under `$CUDA_HOME`/`$CUDA_PATH`, or by
  `cuda.pathfinder`.
* `auto` (the default) takes NVRTC when it loads, else nvcc, else raises `CompilerNotFound`
  saying what to install.

One compiler run per architecture gives both images: NVRTC with `-arch=sm_XY` returns PTX (from
`nvrtcGetPTX`, `.target sm_XY`) and the cubin assembled from it (`nvrtcGetCUBIN`); nvcc runs
as `nvcc -cubin -arch=sm_XY --keep` and the PTX is the intermediate file it keeps. So there is
one PTX per architecture; a GPU newer than every cubin JIT-compiles the PTX of the newest
architecture not above it. Architectures compile in parallel threads (NVRTC releases the GIL).

Resource usage comes from ptxas' verbose report (`-Xptxas=-v` for NVRTC, read back from the
program log; `-Xptxas -v` for nvcc, read from its stderr), one `KernelResources` per entry
function and architecture: registers, static shared memory, stack frame, spill stores/loads,
constant memory per bank, barriers. Dynamic shared memory is a launch parameter: it is in the
launch plan, not here.

Every architecture's result is one entry in the per-user compile cache (`netc.cache`),
keyed by a hash of the source, the options, the headers under each `-I` directory, the
architecture and the compiler's exact version; a hit runs no compiler (`COMPILE_STATS` counts
both). An entry that does not read back as a well-formed record with a matching cubin (ELF
magic, architecture and SHA-256 checked) is compiled again.

A failed compile raises `DeviceCompileError`: the compiler's log, the source written to a file,
and commands that reproduce the failure (`nvcc -cubin -arch=sm_90 ... file.cu`, and for NVRTC
`python -m netc.toolchain --compiler nvrtc --arch sm_90 file.cu`, which is also a
small command line: run it with `--help`).
"""

from __future__ import annotations

from netc.toolchain.binary import (
    COMPILE_STATS,
    COMPILERS,
    DEFAULT_ARCHS,
    ArchBinary,
    Compiler,
    CompilerNotFound,
    CompileStats,
    DeviceBinary,
    DeviceCompileError,
    KernelResources,
    arch_number,
    check_arch,
    cubin_arch,
    format_resources,
    parse_ptxas_report,
)
from netc.toolchain.compile import (
    compile_module,
    nvcc_command,
    reproduce_commands,
)
from netc.toolchain.discovery import (
    find_nvcc,
    nvcc_version,
    nvrtc_status,
    resolve_compiler,
    supported_archs,
)

__all__ = [
    "COMPILERS",
    "COMPILE_STATS",
    "DEFAULT_ARCHS",
    "ArchBinary",
    "CompileStats",
    "Compiler",
    "CompilerNotFound",
    "DeviceBinary",
    "DeviceCompileError",
    "KernelResources",
    "arch_number",
    "check_arch",
    "compile_module",
    "cubin_arch",
    "find_nvcc",
    "format_resources",
    "nvcc_command",
    "nvcc_version",
    "nvrtc_status",
    "parse_ptxas_report",
    "reproduce_commands",
    "resolve_compiler",
    "supported_archs",
]
