"""Device compilation (NVRTC and nvcc), resource usage, the compile cache, compile errors with
their reproduce commands, and the artifact writer.

Needs no GPU: cubins are built and inspected, never run. Compiler-specific tests skip, saying
why, where NVRTC or nvcc is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netc import toolchain as device_compile
from netc.artifacts import ArtifactError, format_report, write_artifacts
from netc.plan import Arg, Buffer, GridDim, Launch, LaunchPlan, size_arg, size_of
from netc.toolchain import (
    COMPILE_STATS,
    CompilerNotFound,
    DeviceBinary,
    DeviceCompileError,
    KernelResources,
    compile_module,
    cubin_arch,
    find_nvcc,
    nvrtc_status,
    parse_ptxas_report,
)

pytestmark = pytest.mark.unit

ARCHS = ("sm_80", "sm_90")

# vector_add and block_sum (a shared-memory reduction), 64-bit indices; the design note is in
# the file, which is also the input of the compile-time benchmark in docs/device.md.
MODULE = (Path(__file__).parent / "data" / "vectors.cu").read_text()

# 64 live floats indexed at run time cannot stay in the 32 registers that 1024 threads x 2
# blocks per SM leave each thread, so ptxas must spill.
SPILLING = r"""
extern "C" __global__ void __launch_bounds__(1024, 2) spilling(const float* x, const int* index,
                                                               float* out, long long n) {
    float values[64];
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 64; ++k) values[k] = x[(i * 64 + k) % n];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < 64; ++k) sum += values[k] * values[(k * 7) % 64] + values[index[k] & 63];
    if (i < n) out[i] = sum;
}
"""

BROKEN = r"""
extern "C" __global__ void broken(float* x) {
    x[0] = 1.0f +;
}
"""

HAVE_NVRTC = nvrtc_status()[0] is not None
HAVE_NVCC = find_nvcc() is not None
needs_nvrtc = pytest.mark.skipif(not HAVE_NVRTC, reason="NVRTC not loadable: "
                                 + nvrtc_status()[1] + "; pip install 'netc[nvrtc]'")
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found (no CUDA toolkit)")
COMPILERS = [pytest.param("nvrtc", marks=needs_nvrtc), pytest.param("nvcc", marks=needs_nvcc)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test compiles into its own cache, so hits and misses are the test's own."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("NETC_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DeviceBinary]]:
    """MODULE built once per available compiler for both architectures, in a module cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETC_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))
        binaries = {}
        if HAVE_NVRTC:
            binaries["nvrtc"] = compile_module(MODULE, "vectors", ARCHS, "nvrtc", generated=False)
        if HAVE_NVCC:
            binaries["nvcc"] = compile_module(MODULE, "vectors", ARCHS, "nvcc", generated=False)
        yield binaries


# Images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("compiler", COMPILERS)
def test_cubin_is_an_elf_for_its_arch(compiled: dict[str, DeviceBinary], compiler: str,
                                      arch: str) -> None:
    target = compiled[compiler].target(arch)
    assert target.cubin[:4] == b"\x7fELF"
    assert cubin_arch(target.cubin) == arch
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # a second opinion where the toolkit ships it (it is absent on some installs)
        listing = subprocess.run([cuobjdump, "--list-elf", "-"], input=target.cubin,
                                 capture_output=True, check=False)
        if listing.returncode == 0:
            assert arch.encode() in listing.stdout


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("compiler", COMPILERS)
def test_ptx_targets_the_arch(compiled: dict[str, DeviceBinary], compiler: str, arch: str) -> None:
    ptx = compiled[compiler].target(arch).ptx
    assert f".target {arch}" in ptx
    assert ".address_size 64" in ptx
    assert ".entry vector_add(" in ptx and ".entry block_sum(" in ptx


def test_cubin_arch_rejects_what_is_not_a_cuda_elf() -> None:
    with pytest.raises(ValueError, match="not an ELF"):
        cubin_arch(b"garbage" * 20)
    x86_elf = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    x86_elf[18:20] = (62).to_bytes(2, "little")
    with pytest.raises(ValueError, match="not CUDA"):
        cubin_arch(bytes(x86_elf))


def test_cubin_arch_reads_both_elf_abi_versions() -> None:
    header = bytearray(b"\x7fELF\x02\x01\x01\x41" + bytes(56))
    header[18:20] = (190).to_bytes(2, "little")
    header[8] = 8  # CUDA 13: SM number in bits 8-15
    header[48:52] = (0x06005A04).to_bytes(4, "little")
    assert cubin_arch(bytes(header)) == "sm_90"
    header[8] = 7  # CUDA 12 and older: bits 0-7
    header[48:52] = (0x00500550).to_bytes(4, "little")
    assert cubin_arch(bytes(header)) == "sm_80"


# Resource usage -----------------------------------------------------------------------------


@pytest.mark.parametrize("compiler", COMPILERS)
def test_resources_of_simple_kernels(compiled: dict[str, DeviceBinary], compiler: str) -> None:
    binary = compiled[compiler]
    assert set(binary.kernels) == {"vector_add", "block_sum"}
    for arch in ARCHS:
        usage = binary.kernel_resources(arch)
        add, reduce = usage["vector_add"], usage["block_sum"]
        assert add.registers > 0 and reduce.registers > 0
        assert (add.spill_store_bytes, add.spill_load_bytes, add.stack_frame_bytes) == (0, 0, 0)
        assert not add.spills and not reduce.spills
        assert add.shared_static_bytes == 0
        assert reduce.shared_static_bytes == 256 * 4
        assert reduce.barriers >= 1
        assert add.arch == arch


@pytest.mark.parametrize("compiler", COMPILERS)
def test_a_kernel_that_must_spill_reports_spills(compiler: str) -> None:
    binary = compile_module(SPILLING, "spills", ("sm_90",), compiler, generated=False)
    usage = binary.kernel_resources("sm_90")["spilling"]
    assert usage.spills, usage
    assert usage.spill_store_bytes > 0 and usage.spill_load_bytes > 0
    assert usage.stack_frame_bytes > 0
    assert usage.registers <= 32


NVCC_REPORT = """\
ptxas info    : 0 bytes gmem, 16 bytes cmem[3]
ptxas info    : Function properties for helper
    24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function 'outer' for 'sm_80'
ptxas info    : Function properties for outer
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 380 bytes cmem[0], 16 bytes cmem[2]
ptxas info    : Compiling entry function 'inner' for 'sm_80'
ptxas info    : Function properties for inner
ptxas         .     96 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 96 bytes cumulative stack size, 8 bytes lmem
"""


def test_parse_ptxas_report_attributes_each_block_to_its_entry() -> None:
    outer, inner = parse_ptxas_report(NVCC_REPORT)
    assert outer == KernelResources(
        kernel="outer", arch="sm_80", registers=40, shared_static_bytes=2048,
        stack_frame_bytes=0, spill_store_bytes=0, spill_load_bytes=0,
        constant_bytes=((0, 380), (2, 16)), barriers=1)
    assert outer.constant_total_bytes == 396
    assert (inner.registers, inner.stack_frame_bytes, inner.spill_store_bytes,
            inner.spill_load_bytes, inner.local_bytes) == (255, 96, 12, 20, 8)
    assert inner.to_dict()["constant_bytes"] == {}


# The cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compiler", COMPILERS)
def test_second_compile_is_a_cache_hit(compiler: str) -> None:
    started = time.perf_counter()
    first = compile_module(MODULE, "vectors", ARCHS, compiler, generated=False)
    cold = time.perf_counter() - started
    compiles = COMPILE_STATS.compiles
    started = time.perf_counter()
    second = compile_module(MODULE, "vectors", ARCHS, compiler, generated=False)
    warm = time.perf_counter() - started
    assert COMPILE_STATS.compiles == compiles, "a cached module ran the compiler again"
    assert not any(t.from_cache for t in first.targets)
    assert all(t.from_cache for t in second.targets)
    assert [t.cubin for t in first.targets] == [t.cubin for t in second.targets]
    assert [t.resources for t in first.targets] == [t.resources for t in second.targets]
    assert warm < cold


@needs_nvrtc
def test_source_options_and_arch_are_in_the_key() -> None:
    compile_module(MODULE, "vectors", ("sm_80",), "nvrtc", generated=False)
    for source, options, arch in [(MODULE + "\n// changed\n", (), "sm_80"),
                                  (MODULE, ("-DNETC_TEST=1",), "sm_80"),
                                  (MODULE, (), "sm_90")]:
        binary = compile_module(source, "vectors", (arch,), "nvrtc", options, generated=False)
        assert not binary.targets[0].from_cache, (options, arch)


@needs_nvrtc
def test_headers_under_include_dirs_are_in_the_key(tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    (include / "scale.cuh").write_text("#define NETC_SCALE 2.0f\n")
    source = ('#include "scale.cuh"\nextern "C" __global__ void scale(float* x) '
              "{ x[threadIdx.x] *= NETC_SCALE; }\n")
    options = (f"-I{include}",)
    assert not compile_module(source, "scaled", ("sm_80",), "nvrtc", options,
                              generated=False).targets[0].from_cache
    assert compile_module(source, "scaled", ("sm_80",), "nvrtc", options,
                          generated=False).targets[0].from_cache
    (include / "scale.cuh").write_text("#define NETC_SCALE 3.0f\n")
    assert not compile_module(source, "scaled", ("sm_80",), "nvrtc", options,
                              generated=False).targets[0].from_cache


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "resealed"])
@needs_nvrtc
def test_a_corrupt_entry_is_recompiled(damage: str) -> None:
    from netc import cache

    first = compile_module(MODULE, "vectors", ("sm_90",), "nvrtc", generated=False)
    entry = first.targets[0].cache_entry
    assert entry is not None and entry.is_file()
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one bit of the cubin, inside well-formed JSON
        record = json.loads(data)
        cubin = bytearray(base64.b64decode(record["cubin"]))
        cubin[len(cubin) // 2] ^= 0x01
        record["cubin"] = base64.b64encode(bytes(cubin)).decode()
        entry.write_text(json.dumps(record))
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a record the cache's checksum vouches for, but not one this netc wrote
        bogus = b'{"format": 1, "arch": "sm_90"}'
        entry.write_bytes(bogus)
        sidecar = entry.with_name(entry.name + ".sha256")
        sidecar.write_text(f"{len(bogus)} {hashlib.sha256(bogus).hexdigest()}\n")
    compiles = COMPILE_STATS.compiles
    again = compile_module(MODULE, "vectors", ("sm_90",), "nvrtc", generated=False)
    assert COMPILE_STATS.compiles == compiles + 1
    assert not again.targets[0].from_cache
    assert again.targets[0].cubin == first.targets[0].cubin
    hits = cache.stats().hits
    third = compile_module(MODULE, "vectors", ("sm_90",), "nvrtc", generated=False)
    assert third.targets[0].from_cache, "the rebuilt entry was not stored"
    assert cache.stats().hits == hits + 1


def test_use_cache_false_always_compiles() -> None:
    if not (HAVE_NVRTC or HAVE_NVCC):
        pytest.skip("no CUDA compiler")
    compile_module(MODULE, "vectors", ("sm_80",), generated=False)
    compiles = COMPILE_STATS.compiles
    binary = compile_module(MODULE, "vectors", ("sm_80",), use_cache=False, generated=False)
    assert COMPILE_STATS.compiles == compiles + 1 and not binary.targets[0].from_cache


# Compile errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("compiler", COMPILERS)
def test_a_syntax_error_raises_with_log_and_a_working_reproduce_command(compiler: str) -> None:
    with pytest.raises(DeviceCompileError) as caught:
        compile_module(BROKEN, "broken", ("sm_90",), compiler, generated=False)
    error = caught.value
    message = error.render()
    assert "expected an expression" in message
    assert "sm_90" in message and "broken" in message
    assert error.exit_code == 1 and "bug in netc" not in message
    assert error.source_path is not None and error.source_path.read_text() == BROKEN
    assert str(error.source_path) in message
    assert error.reproduce and all(command in message for command in error.reproduce)
    assert any(command.split()[0].endswith("nvcc") and "-cubin" in command
               and "-arch=sm_90" in command for command in error.reproduce)
    for command in error.reproduce:
        if command.split()[0].endswith("nvcc") and not HAVE_NVCC:
            continue
        result = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                check=False, timeout=120)
        assert result.returncode != 0, command
        assert "expected an expression" in result.stdout + result.stderr, command


@needs_nvrtc
def test_generated_code_failing_is_a_netc_bug() -> None:
    with pytest.raises(DeviceCompileError) as caught:
        compile_module(BROKEN, "broken", ("sm_80",), "nvrtc")
    assert caught.value.exit_code == 2
    assert "bug in netc" in caught.value.render()


def test_no_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_compile.discovery, "nvrtc_status",
                        lambda: (None, "cuda-python is missing"))
    monkeypatch.setattr(device_compile.discovery, "find_nvcc", lambda: None)
    with pytest.raises(CompilerNotFound) as caught:
        compile_module(MODULE, "vectors")
    assert "pip install 'netc[nvrtc]'" in str(caught.value)
    assert caught.value.exit_code == 1
    with pytest.raises(CompilerNotFound, match="nvcc was not found"):
        compile_module(MODULE, "vectors", compiler="nvcc")
    with pytest.raises(CompilerNotFound, match="cuda-python is missing"):
        compile_module(MODULE, "vectors", compiler="nvrtc")


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="architecture"):
        compile_module(MODULE, "vectors", ("compute_80",))
    with pytest.raises(ValueError, match="C identifier"):
        compile_module(MODULE, "my module")
    with pytest.raises(ValueError, match="unknown compiler"):
        compile_module(MODULE, "vectors", compiler="clang")


def test_command_line_prints_resources(tmp_path: Path) -> None:
    if not (HAVE_NVRTC or HAVE_NVCC):
        pytest.skip("no CUDA compiler")
    source = tmp_path / "vectors.cu"
    source.write_text(MODULE)
    result = subprocess.run(
        [sys.executable, "-m", "netc.toolchain", "--arch", "sm_80",
         "--output-dir", str(tmp_path / "out"), str(source)],
        capture_output=True, text=True, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert "vector_add" in result.stdout and "block_sum" in result.stdout
    assert (tmp_path / "out" / "vectors.sm_80.cubin").read_bytes()[:4] == b"\x7fELF"


# Artifacts ----------------------------------------------------------------------------------


def _plan(source: str = MODULE) -> LaunchPlan:
    n = "N"
    buffers = (
        Buffer("buf0", "input", "f32", (n, 256), "x"),
        Buffer("buf1", "param", "f32", (n, 256), "w"),
        Buffer("buf2", "intermediate", "f32", (n, 256), "add_0"),
        Buffer("buf3", "output", "f32", (n,), "sum_0"),
    )
    elementwise = GridDim(size_of((n, 256)), 256)
    return LaunchPlan(
        network="tiny", module="tiny", source=source, dims=(n,), buffers=buffers,
        launches=(
            Launch("vector_add", (elementwise, GridDim(), GridDim()), (256, 1, 1), 0,
                   (Arg("buffer", "buf0"), Arg("buffer", "buf1"), Arg("buffer", "buf2"),
                    size_arg("N")), ("add_0",), "tiny.net:3"),
            Launch("block_sum", (elementwise, GridDim(), GridDim()), (256, 1, 1), 0,
                   (Arg("buffer", "buf2"), Arg("buffer", "buf3"), size_arg("N")),
                   ("sum_0",), "tiny.net:4"),
        ),
        outputs=(("y", "buf3"),), kernels=("vector_add", "block_sum"))


@pytest.fixture()
def binary(compiled: dict[str, DeviceBinary]) -> DeviceBinary:
    if not compiled:
        pytest.skip("no CUDA compiler")
    return next(iter(compiled.values()))


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_artifacts_are_written(tmp_path: Path, binary: DeviceBinary) -> None:
    plan = _plan()
    out = tmp_path / "out"
    report = format_report(plan, binary)
    assert write_artifacts(plan, binary, out, report, {"weights.npz": b"npz"}) == out
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "tiny.cu", "tiny.sm_80.ptx", "tiny.sm_80.cubin", "tiny.sm_90.ptx", "tiny.sm_90.cubin",
        "netc.json", "plan.json", "report.txt", "weights.npz"])
    assert (out / "tiny.cu").read_text() == MODULE
    for arch in ARCHS:
        assert cubin_arch((out / f"tiny.{arch}.cubin").read_bytes()) == arch
        assert f".target {arch}" in (out / f"tiny.{arch}.ptx").read_text()
    document = json.loads((out / "plan.json").read_text())
    assert document["module"] == "tiny" and "source" not in document
    assert len(document["launches"]) == 2
    usage = document["kernel_resources"]["kernels"]["block_sum"]["sm_90"]
    assert usage["shared_static_bytes"] == 1024 and usage["registers"] > 0
    manifest = json.loads((out / "netc.json").read_text())
    assert manifest["kind"] == "netc-artifact" and manifest["network"] == plan.network
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir()
                                               if p.name != "netc.json")
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (out / "report.txt").read_text() == report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_lists_kernels_launches_and_sources(binary: DeviceBinary) -> None:
    report = format_report(_plan(), binary)
    assert "vector_add" in report and "block_sum" in report
    assert "tiny.net:3" in report and "tiny.net:4" in report
    assert "256x1x1" in report  # the block
    launch_lines = [line for line in report.splitlines() if "tiny.net:" in line]
    assert all(" 1x1x1 " in line for line in launch_lines)  # grid at batch 1
    registers = [binary.kernel_resources(arch)["vector_add"].registers for arch in ARCHS]
    shown = str(registers[0]) if len(set(registers)) == 1 else "/".join(map(str, registers))
    assert any(line.split()[1] == "vector_add" and shown in line.split()
               for line in launch_lines)
    assert " 1024+0 " in report  # block_sum: static + dynamic shared memory
    constant = [binary.kernel_resources(arch)["vector_add"].constant_total_bytes
                for arch in ARCHS]
    if len(set(constant)) > 1:  # ptxas reports cmem for sm_80, not for sm_90
        assert "/".join(map(str, constant)) in report


def test_report_without_a_binary() -> None:
    report = format_report(_plan(), None)
    assert "not compiled" in report and "tiny.net:3" in report


def test_artifacts_without_a_binary(tmp_path: Path) -> None:
    out = write_artifacts(_plan(), None, tmp_path / "out", format_report(_plan(), None))
    assert sorted(p.name for p in out.iterdir()) == ["netc.json", "plan.json", "report.txt",
                                                      "tiny.cu"]
    assert json.loads((out / "plan.json").read_text())["kernel_resources"] is None


def test_a_previous_artifact_is_replaced_whole(tmp_path: Path, binary: DeviceBinary) -> None:
    out = tmp_path / "out"
    write_artifacts(_plan(), binary, out, "old report", {"stale.bin": b"old"})
    write_artifacts(_plan(MODULE + "// new\n"), binary, out, "new report")
    assert (out / "report.txt").read_text() == "new report"
    assert not (out / "stale.bin").exists()
    assert (out / "tiny.cu").read_text().endswith("// new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("fail_at", [1, 4, 7])
def test_a_failure_mid_write_changes_nothing(tmp_path: Path, binary: DeviceBinary,
                                             monkeypatch: pytest.MonkeyPatch,
                                             fail_at: int) -> None:
    from netc import artifacts

    out = tmp_path / "out"
    write_artifacts(_plan(), binary, out, "old report")
    before = _listing(out)
    real_write = artifacts._write_file
    written: list[Path] = []

    def failing_write(path: Path, data: bytes) -> None:
        written.append(path)
        if len(written) == fail_at:
            real_write(path, data[: len(data) // 2])  # a half-written file, then the crash
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(artifacts, "_write_file", failing_write)
    with pytest.raises(OSError, match="No space left"):
        write_artifacts(_plan(MODULE + "// new\n"), binary, out, "new report")
    assert _listing(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "a temporary directory was left"
    written.clear()
    with pytest.raises(OSError):
        write_artifacts(_plan(), binary, tmp_path / "fresh", "report")
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_swap_keeps_the_old_artifact(tmp_path: Path, binary: DeviceBinary,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from netc import artifacts

    out = tmp_path / "out"
    write_artifacts(_plan(), binary, out, "old report")
    before = _listing(out)
    monkeypatch.setattr(artifacts, "_exchange", lambda first, second: False)
    real_rename = os.rename
    renames: list[tuple[str, str]] = []

    def failing_rename(source: str | Path, target: str | Path) -> None:
        renames.append((str(source), str(target)))
        if len(renames) == 2:  # the new directory moving into place
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(artifacts.os, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output"):
        write_artifacts(_plan(MODULE + "// new\n"), binary, out, "new report")
    monkeypatch.setattr(artifacts.os, "rename", real_rename)
    assert _listing(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_fallback_swap_replaces_the_artifact(tmp_path: Path, binary: DeviceBinary,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from netc import artifacts

    out = tmp_path / "out"
    write_artifacts(_plan(), binary, out, "old report")
    monkeypatch.setattr(artifacts, "_exchange", lambda first, second: False)
    write_artifacts(_plan(), binary, out, "new report")
    assert (out / "report.txt").read_text() == "new report"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_foreign_directory_is_never_replaced(tmp_path: Path, binary: DeviceBinary) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ArtifactError, match="not a netc artifact") as caught:
        write_artifacts(_plan(), binary, out, "report")
    assert "E0430" in caught.value.render()
    assert _listing(out) == {"holiday.jpg": b"precious"}
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        write_artifacts(_plan(), binary, file, "report")
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(ArtifactError, match="symbolic link"):
        write_artifacts(_plan(), binary, link, "report")
    assert _listing(out) == {"holiday.jpg": b"precious"}


def test_an_empty_directory_is_used(tmp_path: Path, binary: DeviceBinary) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_artifacts(_plan(), binary, out, "report")
    assert (out / "plan.json").is_file()


def test_extra_files_may_not_replace_netc_files(tmp_path: Path, binary: DeviceBinary) -> None:
    with pytest.raises(ValueError, match="replace"):
        write_artifacts(_plan(), binary, tmp_path / "out", "r", {"plan.json": b"{}"})
    with pytest.raises(ValueError, match="plain file name"):
        write_artifacts(_plan(), binary, tmp_path / "out", "r", {"../escape": b""})
    assert not (tmp_path / "out").exists()
