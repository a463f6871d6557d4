"""What the SASS of netc's GEMM kernels promises (issue 11), read statically from the cubins.

No GPU: kernels compile with `compile_module` for sm_80 and sm_90, `netc.toolchain.sass`
disassembles them (`cuobjdump` from the pip package `nvidia-cuda-cuobjdump`, in the dev extra)
and the main loop's instruction mix is checked:

* the tensor-core GEMMs (f16, bf16): HMMA, LDSM (ldmatrix) and LDGSTS (cp.async) in the main
  loop, no spills;
* the f32 GEMM on its large tile (8 x 8 a thread): FFMA at least 80% of the main loop that
  stages with 128-bit loads, which holds 128-bit global and shared loads; the conv2d gather's
  main loop does no integer division;
* a hand-written probe kernel with inline PTX shows the detection itself works, whatever the
  kernels do.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from netc.codegen import kernels, tiles, tiling
from netc.codegen.emit import render_module
from netc.codegen.kernels import KernelSpec
from netc.codegen.tiles import GemmTile
from netc.toolchain import CompilerNotFound, DeviceBinary, compile_module
from netc.toolchain.sass import (
    Instruction,
    ToolNotFound,
    disassemble,
    find_tool,
    format_mix,
    innermost_loops,
    instruction_mix,
    loops,
    main_loop,
    parse_sass,
)

pytestmark = pytest.mark.unit

ARCHS = ("sm_80", "sm_90")
F32_LARGE_TILE = GemmTile(128, 128, 8, 8, 8)
F32_MIN_FFMA_SHARE = 0.80
"""Issue 11's design target. Measured with NVRTC 13.5: 86% (sm_80 and sm_90) in the loop that
stages with 128-bit loads; 78% in its element-by-element twin (52% before warp tiling)."""
F32_MIN_SCALAR_FFMA_SHARE = 0.75
"""The element-by-element twin (unaligned operands, K % 4 != 0) of the same kernel."""
DIVISION = ("I2F", "F2I", "MUFU", "IABS")
"""What a 32-bit integer division by a run-time value compiles to (a float reciprocal and
fix-ups): the conv gather's per-element decomposition of k did this until it carried
its taps (issue 11: 131 IMAD and 70 ISETP for 6 loads a k-step)."""
TENSOR_CORE_LOOP = ("HMMA", "LDSM", "LDGSTS")
Sass = dict[str, dict[str, tuple[Instruction, ...]]]
"""Per architecture, per kernel, the instructions."""

# One warp streams 16 x 16 bf16 tiles through shared memory with cp.async, loads them into
# fragments with ldmatrix and multiplies them with mma.sync: the three instructions a
# tensor-core main loop must contain, written directly, so a failure of the checks below on
# this kernel is a failure of the SASS reading, not of netc's kernels.
PROBE = r"""
extern "C" __global__ void __launch_bounds__(32) sass_probe(const unsigned short* tiles_in,
                                                          float* out, int steps) {
    __shared__ __align__(16) unsigned short tile[16 * 16];
    float accumulator[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    unsigned lane = threadIdx.x;
    unsigned stage = (unsigned)__cvta_generic_to_shared(&tile[lane * 8]);
    unsigned fragment = (unsigned)__cvta_generic_to_shared(&tile[(lane % 16) * 16 + (lane / 16) * 8]);
    for (int step = 0; step < steps; ++step) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
                     :: "r"(stage), "l"(tiles_in + (long long)step * 256 + lane * 8));
        asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        __syncthreads();
        unsigned a0, a1, a2, a3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(fragment));
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]),
                       "+f"(accumulator[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(a0), "r"(a2));
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = accumulator[i];
}
"""


def compile_sass(source: str, name: str) -> tuple[DeviceBinary, Sass]:
    """The module compiled for ARCHS, and per architecture its kernels' SASS; skips the test
    without a CUDA compiler or cuobjdump (the message names what to install)."""
    try:
        find_tool("cuobjdump")
        binary = compile_module(source, name, archs=ARCHS)
    except (CompilerNotFound, ToolNotFound) as missing:
        pytest.skip(str(missing))
    return binary, {arch: disassemble(binary.target(arch).cubin) for arch in ARCHS}


def module_of(name: str, specs: list[KernelSpec]) -> str:
    return render_module(name, name, specs, [])


def loop_mix(sass: Sass, arch: str, kernel: str) -> Counter[str]:
    """The main loop's mix, printed (`pytest -s` shows it)."""
    mix = instruction_mix(main_loop(sass[arch][kernel]))
    print(f"{arch} {kernel} main loop: {sum(mix.values())} instructions: {format_mix(mix)}")
    return mix


def cp_async_loop(sass: Sass, arch: str, kernel: str) -> tuple[Instruction, ...]:
    """The innermost loop issuing cp.async (LDGSTS): a tensor-core kernel's pipelined main
    loop (its element-by-element twin, for unaligned operands, issues none)."""
    pipelined = [body for body in loops(sass[arch][kernel])
                 if any(i.base == "LDGSTS" for i in body)]
    assert pipelined, f"{arch} {kernel}: no loop issues cp.async"
    return min(pipelined, key=len)


def assert_tensor_core_main_loop(mix: Counter[str], where: str) -> None:
    missing = [opcode for opcode in TENSOR_CORE_LOOP if not mix[opcode]]
    assert not missing, f"{where}: no {', '.join(missing)} in the main loop ({format_mix(mix)})"


def assert_f32_main_loop(mix: Counter[str], min_ffma_share: float) -> None:
    """The f32 GEMM's main loop exists and spends at least `min_ffma_share` of its
    instructions on FFMA."""
    total = sum(mix.values())
    assert total, "no main loop (no backward branch) in the kernel"
    share = mix["FFMA"] / total
    assert share >= min_ffma_share, (f"FFMA is {share:.1%} of the main loop, below "
                                     f"{min_ffma_share:.0%}: {format_mix(mix)}")


# The loop finder, on a listing written by hand --------------------------------------------

LISTING = """
        Function : nested
        /*0000*/                   MOV R0, RZ ;
        /*0010*/                   FFMA R1, R2, R3, R1 ;
        /*0020*/               @P0 BRA 0x10 ;
        /*0030*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0040*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0050*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0058*/              @!PT LDS RZ, [RZ] ;
        /*0060*/                   FFMA R1, R2, R3, R1 ;
        /*0070*/              @!P1 BRA 0x40 ;
        /*0080*/                   ISETP.NE.AND P2, PT, R0, 0x4, PT ;
        /*0090*/               @P2 BRA 0x0 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
"""


def test_main_loop_is_the_largest_innermost_loop() -> None:
    instructions = parse_sass(LISTING)["nested"]
    assert [i.base for i in instructions][:3] == ["MOV", "FFMA", "BRA"]
    assert instructions[2].predicate == "@P0" and instructions[2].branch_target == 0x10
    loop = main_loop(instructions)
    # The outer loop (0x0-0x90) holds both others; of the two innermost, 0x40-0x70 is larger.
    assert [i.address for i in loop] == [0x40, 0x50, 0x58, 0x60, 0x70]
    assert loop[1].opcode == "HMMA.16816.F32.BF16"
    assert instruction_mix(loop) == Counter({"LDG": 1, "HMMA": 1, "FFMA": 1, "BRA": 1}), \
        "the LDS predicated on never (@!PT) does not count"
    assert main_loop(instructions[-2:]) == (), "the BRA to itself after EXIT is not a loop"


def test_a_missing_tool_names_its_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    nvidia = pytest.importorskip("nvidia")
    monkeypatch.setattr(nvidia, "__path__", [])
    monkeypatch.setenv("PATH", "")
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ToolNotFound, match="pip install nvidia-cuda-nvdisasm"):
        find_tool("nvdisasm")


# Compiled kernels ---------------------------------------------------------------------------


def test_the_probe_kernel_shows_tensor_core_instructions_in_its_loop() -> None:
    binary, sass = compile_sass(PROBE, "sass_probe")
    for arch in ARCHS:
        instructions = sass[arch]["sass_probe"]
        mix = loop_mix(sass, arch, "sass_probe")
        assert_tensor_core_main_loop(mix, arch)
        opcodes = {i.opcode for i in main_loop(instructions)}
        assert "HMMA.16816.F32.BF16" in opcodes and "LDSM.16.M88.4" in opcodes, opcodes
        assert not binary.kernel_resources(arch)["sass_probe"].spills


def f32_main_loops(sass: Sass, arch: str, kernel: str) -> tuple[Counter[str], Counter[str]]:
    """The mixes of an f32 GEMM's two main loops: the one staging with 128-bit global loads
    (aligned operands, K % 4 == 0) and its element-by-element twin, printed."""
    def wide_loads(body: tuple[Instruction, ...]) -> bool:
        return any(i.base == "LDG" and "128" in i.opcode.split(".") for i in body)

    bodies = [body for body in innermost_loops(sass[arch][kernel])
              if any(i.base == "FFMA" for i in body)]
    vector = [body for body in bodies if wide_loads(body)]
    scalar = [body for body in bodies if not wide_loads(body)]
    assert len(vector) == 1 and len(scalar) == 1, \
        f"{arch} {kernel}: expected one main loop of each staging, found {len(bodies)}"
    for name, body in (("128-bit", vector[0]), ("scalar", scalar[0])):
        mix = instruction_mix(body)
        print(f"{arch} {kernel} {name} main loop: {sum(mix.values())} instructions: "
              f"{format_mix(mix)}")
        opcodes = Counter(i.opcode for i in body if i.base in ("LDS", "LDG", "STS"))
        print(f"    loads and stores: {dict(opcodes)}")
    return instruction_mix(vector[0]), instruction_mix(scalar[0])


def test_f32_gemm_main_loop_is_mostly_ffma_with_128_bit_loads() -> None:
    assert tiling.CANDIDATES["large"] == F32_LARGE_TILE, "the heuristic's large tile changed"
    spec = kernels.gemm_kernel("f32", F32_LARGE_TILE, b_transposed=True, has_bias=False)
    binary, sass = compile_sass(module_of("sass_f32_gemm", [spec]), "sass_f32_gemm")
    for arch in ARCHS:
        assert not binary.kernel_resources(arch)[spec.name].spills
        vector, scalar = f32_main_loops(sass, arch, spec.name)
        assert_f32_main_loop(vector, F32_MIN_FFMA_SHARE)
        assert_f32_main_loop(scalar, F32_MIN_SCALAR_FFMA_SHARE)
        body = next(b for b in innermost_loops(sass[arch][spec.name])
                    if any(i.opcode.startswith("LDG.E.128") for i in b))  # .CONSTANT follows
        shared = Counter(i.opcode for i in body if i.base == "LDS")
        # 8 x 8 a thread: two 4-wide A and two 4-wide B fragments a k-step, 8 k-steps.
        assert shared == Counter({"LDS.128": 32}), f"{arch}: shared loads {dict(shared)}"
        wide = [i.opcode for i in body if i.base == "LDG"]
        assert wide and all(".128" in opcode for opcode in wide), \
            f"{arch}: global loads {wide} (one 128-bit load of A and of B a k-tile)"


def test_conv2d_gather_main_loop_does_no_division() -> None:
    """The im2col gather carries its taps: no division in the conv main loop, on the tile
    ResNet-18's convs take at batch 1 (32 x 32) and on the large one."""
    specs = [kernels.conv2d_kernel("f32", tile, has_bias=True)
             for tile in (tiling.CANDIDATES["small"], F32_LARGE_TILE)]
    binary, sass = compile_sass(module_of("sass_f32_conv", specs), "sass_f32_conv")
    for arch in ARCHS:
        for spec in specs:
            assert not binary.kernel_resources(arch)[spec.name].spills
            bodies = [body for body in innermost_loops(sass[arch][spec.name])
                      if any(i.base == "FFMA" for i in body)]
            assert len(bodies) == 2, "a main loop for each staging of the weight"
            for body in bodies:
                mix = instruction_mix(body)
                print(f"{arch} {spec.name} main loop: {sum(mix.values())} instructions: "
                      f"{format_mix(mix)}")
                found = {opcode: mix[opcode] for opcode in DIVISION if mix[opcode]}
                assert not found, f"{arch} {spec.name}: division in the main loop {found}"


def tensor_core_specs() -> list[KernelSpec]:
    """The tensor-core GEMM variants (`gemm_kernel` with an `MmaTile`), or a skip until the
    tensor-core tiles exist."""
    if not hasattr(tiles, "DEFAULT_MMA"):
        pytest.skip("netc.codegen.tiles.DEFAULT_MMA (the tensor-core GEMM) does not exist yet")
    return [kernels.gemm_kernel(dtype, tiles.DEFAULT_MMA, b_transposed=b_transposed,
                                has_bias=False)
            for dtype in ("f16", "bf16") for b_transposed in (True, False)]


@pytest.fixture(scope="module")
def tensor_core_sass() -> tuple[DeviceBinary, Sass]:
    return compile_sass(module_of("sass_mma_gemm", tensor_core_specs()), "sass_mma_gemm")


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_gemm_main_loops_use_hmma_ldsm_and_cp_async(
        arch: str, tensor_core_sass: tuple[DeviceBinary, Sass]) -> None:
    binary, sass = tensor_core_sass
    for spec in tensor_core_specs():
        assert not binary.kernel_resources(arch)[spec.name].spills, f"{spec.name} spills"
        # Two main loops: cp.async staging (aligned operands, the one that matters) and
        # element-by-element staging (ragged rows); the first must be pure tensor-core work.
        body = cp_async_loop(sass, arch, spec.name)
        mix = instruction_mix(body)
        print(f"{arch} {spec.name} cp.async main loop: {sum(mix.values())} instructions: "
              f"{format_mix(mix)}")
        assert_tensor_core_main_loop(mix, f"{arch} {spec.name}")
        assert not mix["LDG"] and not mix["STS"], "element-by-element staging in the cp.async loop"
        # Address arithmetic is hoisted out of the loop (NetcMmaCopies): HMMA was 21% of it
        # when every k-tile recomputed its copies' addresses, 22-28% since.
        assert mix["HMMA"] >= 0.2 * sum(mix.values()), format_mix(mix)
        assert all(i.opcode.endswith(".128") for i in body if i.base == "LDGSTS"), \
            "cp.async of less than 16 bytes"


def test_the_static_benchmark_shows_tensor_cores_replacing_ffma(
        capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/static_kernels.py on the 4096³ bf16 GEMM before (SIMT) and after (tensor
    cores): the hot loop's math instruction and the predicted time."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "static_kernels.py"
    spec = importlib.util.spec_from_file_location("static_kernels", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        assert script.main(["--cases", "gemm_bf16_before,gemm_bf16"]) == 0
    except (CompilerNotFound, ToolNotFound) as missing:
        pytest.skip(str(missing))
    before, after = (section for section in capsys.readouterr().out.split("## ")[1:])
    assert "FFMA 256" in before and "HMMA" not in before
    assert "HMMA 32" in after and "FFMA" not in after.split("\n")[-3]

    def predicted(section: str) -> float:
        return float(section.split("predicted ")[1].split(" us")[0])

    assert predicted(after) < predicted(before) / 10
