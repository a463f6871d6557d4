"""The artifact directory: everything `netc build` produces for one network, written atomically.

    out/
      lenet5.cu              the generated CUDA module
      lenet5.sm_80.ptx       PTX per architecture (`.target sm_80`)
      lenet5.sm_80.cubin     the cubin assembled from it
      lenet5.sm_90.ptx
      lenet5.sm_90.cubin
      plan.json              the launch plan (`LaunchPlan.to_json()`), kernel resource usage
                             and an `artifact` record naming netc's version and the files
      report.txt             kernels, launches, grids at batch 1, registers, spills, sources
      ...                    any `extra` files (weights, an ONNX model) the caller adds

The directory is built in a temporary sibling and moved into place with one rename (an atomic
exchange where Linux offers `renameat2`), so a reader sees the old artifact or the new one,
never a mixture, and a failure part-way leaves `out_dir` as it was with no temporary directory
behind. `plan.json` marks a directory as netc's: a non-empty directory without one is never
replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netc.diagnostics import CompileError, Diagnostic
from netc.text import format_table

if TYPE_CHECKING:
    from netc.codegen.device_compile import DeviceBinary, KernelResources
    from netc.codegen.plan import LaunchPlan

ARTIFACT_FORMAT = 1
MARKER = "plan.json"
MARKERS = (MARKER, "netc.json")


class ArtifactError(CompileError):
    """The output directory cannot be written as asked (exit code 1: the user's choice of path)."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__([Diagnostic("E0430", message, help=help)])


# The report ---------------------------------------------------------------------------------


def _bytes(count: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _per_arch(binary: DeviceBinary | None, kernel: str, value: Any) -> str:
    """`value(resources)` for each architecture, joined by `/` in `binary.archs` order, or
    once when every architecture agrees."""
    if binary is None:
        return "-"
    parts = []
    for target in binary.targets:
        usage: KernelResources | None = next(
            (u for u in target.resources if u.kernel == kernel), None)
        parts.append("?" if usage is None else str(value(usage)))
    return parts[0] if len(set(parts)) == 1 else "/".join(parts)


def format_report(plan: LaunchPlan, binary: DeviceBinary | None) -> str:
    """A human-readable account of the module: kernels, their resources, and every launch."""
    lines = [f"network {plan.network}: module {plan.module}, {len(plan.kernels)} kernels, "
             f"{len(plan.launches)} launches"]
    if binary is None:
        lines.append("not compiled to device code (no CUDA compiler was used); resource usage "
                     "unknown")
        archs = ""
    else:
        archs = "/".join(binary.archs)
        options = " ".join(binary.options) or "(none)"
        lines.append(f"compiled by {binary.compiler_version} for {', '.join(binary.archs)}; "
                     f"options: {options}")
    batch_note = (f"grids at batch {plan.batch_dim}=1" if plan.batch_dim
                  else "the network has no batch dimension")
    sizes = plan.sizes(1)
    owned = [b for b in plan.buffers if b.alias_of is None]
    total = sum(b.nbytes(sizes) for b in owned)
    lines.append(f"{len(plan.buffers)} buffers ({len(owned)} with storage, "
                 f"{_bytes(total)} at batch 1); {batch_note}")
    intermediates = plan.intermediate_bytes(1)
    if intermediates:
        in_place = sum(1 for b in plan.arena_buffers if b.in_place_of is not None)
        lines.append(f"arena {_bytes(plan.arena_bytes(1))} at batch 1 for "
                     f"{len(plan.arena_buffers)} intermediates totalling "
                     f"{_bytes(intermediates)} ({plan.arena_bytes(1) / intermediates:.0%}), "
                     f"{in_place} in place; static bytes moved {_bytes(plan.bytes_moved(1))}")

    if binary is not None:
        lines += ["", f"kernels (a/b: the value for {archs} where they differ)"]
        rows: list[tuple[str, ...]] = [("kernel", "regs", "static smem", "stack", "spill st",
                                        "spill ld", "cmem", "barriers")]
        for kernel in plan.kernels or binary.kernels:
            rows.append((
                kernel,
                _per_arch(binary, kernel, lambda u: u.registers),
                _per_arch(binary, kernel, lambda u: u.shared_static_bytes),
                _per_arch(binary, kernel, lambda u: u.stack_frame_bytes),
                _per_arch(binary, kernel, lambda u: u.spill_store_bytes),
                _per_arch(binary, kernel, lambda u: u.spill_load_bytes),
                _per_arch(binary, kernel, lambda u: u.constant_total_bytes),
                _per_arch(binary, kernel, lambda u: u.barriers),
            ))
        lines += format_table(rows, right=set(range(1, 8)), indent="  ")
        spilling = sorted({u.kernel for t in binary.targets for u in t.resources if u.spills})
        if spilling:
            lines.append(f"  warning: {', '.join(spilling)} spill registers to local memory")

    lines += ["", "launches, in order (grid at batch 1; smem = static + dynamic bytes)"]
    rows = [("#", "kernel", "grid", "block", "smem", "regs", "spills", "source")]
    for index, launch in enumerate(plan.launches, 1):
        grid = "x".join(str(d) for d in launch.grid_size(1))
        block = "x".join(str(d) for d in launch.block)
        static = _per_arch(binary, launch.kernel, lambda u: u.shared_static_bytes)
        smem = f"{static}+{launch.shared_bytes}" if binary is not None else str(launch.shared_bytes)
        rows.append((
            str(index), launch.kernel, grid, block, smem,
            _per_arch(binary, launch.kernel, lambda u: u.registers),
            _per_arch(binary, launch.kernel, lambda u: u.spill_store_bytes + u.spill_load_bytes),
            launch.source or "-",
        ))
    lines += format_table(rows, right={0, 4, 5, 6}, indent="  ")
    return "\n".join(lines) + "\n"


def plan_document(plan: LaunchPlan, binary: DeviceBinary | None,
                  files: list[str]) -> dict[str, Any]:
    """`plan.json`: the plan as `to_json` gives it, plus resource usage and the file list."""
    from netc import __version__

    document: dict[str, Any] = json.loads(plan.to_json())
    document["kernel_resources"] = binary.resources_json() if binary is not None else None
    document["artifact"] = {"format": ARTIFACT_FORMAT, "netc_version": __version__,
                            "files": sorted(files)}
    return document


# Writing ------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"artifact file name {name!r} must be a plain file name")
    return name


def _artifact_files(plan: LaunchPlan, binary: DeviceBinary | None, report_text: str,
                    extra: Mapping[str, bytes]) -> dict[str, bytes]:
    files: dict[str, bytes] = {f"{plan.module}.cu": plan.source.encode()}
    if binary is not None:
        for target in binary.targets:
            files[f"{plan.module}.{target.arch}.ptx"] = target.ptx.encode()
            files[f"{plan.module}.{target.arch}.cubin"] = target.cubin
    files["report.txt"] = report_text.encode()
    for name, data in extra.items():
        if _check_name(name) in files or name == MARKER:
            raise ValueError(f"extra artifact file {name!r} would replace one netc writes")
        files[name] = bytes(data)
    document = plan_document(plan, binary, [*files, MARKER])
    files[MARKER] = (json.dumps(document, indent=2) + "\n").encode()
    return files


def _check_destination(out_dir: Path) -> bool:
    """Whether `out_dir` exists (and may be replaced); raises when it must not be touched."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return False
    if out_dir.is_symlink():
        raise ArtifactError(f"output path `{out_dir}` is a symbolic link; netc replaces the "
                            f"directory itself, so it will not follow a link",
                            help=f"give the real path, `{out_dir.resolve()}`")
    if not out_dir.is_dir():
        raise ArtifactError(f"output path `{out_dir}` exists and is not a directory",
                            help="choose another output directory")
    if any(out_dir.iterdir()) and not any((out_dir / marker).is_file() for marker in MARKERS):
        raise ArtifactError(
            f"output directory `{out_dir}` is not empty and is not a netc artifact "
            f"(it has no {MARKER}); refusing to replace it",
            help="choose an empty or new directory, or remove this one yourself")
    return True


_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                       _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this kernel or filesystem can't
        return False
    raise OSError(error, os.strerror(error), str(second))


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_artifacts(plan: LaunchPlan, binary: DeviceBinary | None, out_dir: Path | str,
                    report_text: str, extra: Mapping[str, bytes] | None = None) -> Path:
    """Write the artifact directory for `plan` to `out_dir`, all of it or none of it.

    A previous artifact in `out_dir` is replaced only once the new one is complete; a non-empty
    directory without `plan.json` raises `ArtifactError`. Returns the directory written.
    """
    return write_directory(out_dir, _artifact_files(plan, binary, report_text, extra or {}))


def write_directory(out_dir: Path | str, files: Mapping[str, bytes]) -> Path:
    """Write `files` as the directory `out_dir`, all of them or none (see the module docstring).

    `files` must include a marker (`plan.json`, or `netc.json` for artifacts without a launch
    plan) so that a later run recognises the directory as netc's and may replace it.
    """
    if not any(marker in files for marker in MARKERS):
        raise ValueError("an artifact directory needs one of " + ", ".join(MARKERS))
    out_dir = Path(out_dir).absolute()
    replacing = _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, data in files.items():
            _write_file(staging / _check_name(name), data)
        staging.chmod(0o755)
        _fsync_directory(staging)
        if not replacing:
            os.rename(staging, out_dir)  # fails, changing nothing, if out_dir appeared meanwhile
        elif _exchange(staging, out_dir):
            shutil.rmtree(staging, ignore_errors=True)  # it holds the previous artifact now
        else:
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rmdir(retired)
            os.rename(out_dir, retired)
            try:
                os.rename(staging, out_dir)
            except BaseException:
                os.rename(retired, out_dir)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        _fsync_directory(out_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
