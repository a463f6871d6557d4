"""The artifact directory: everything `netc compile` produces for one network, written
atomically, and read back to run later without the `.net` file and without compiling.

    out/
      netc.json              the manifest: netc's version, target, network, the source's
                             SHA-256, the compile options, and every file with its SHA-256
      lenet5.cu              the generated CUDA module
      lenet5.sm_80.ptx       PTX per architecture (`.target sm_80`)
      lenet5.sm_80.cubin     the cubin assembled from it
      lenet5.sm_90.ptx
      lenet5.sm_90.cubin
      lenet5.cudasim.so      the CPU simulator's build of the same source (for the machine
                             that compiled it; the manifest names that machine)
      plan.json              the launch plan (`LaunchPlan.to_json()`) and kernel resource usage
      optimization.json      -O level, tiles, and how folded parameters derive from the source's
      weights.safetensors    the parameters as the kernels take them (after folding), when the
                             compile was given `--weights`
      report.txt             kernels, launches, grids at batch 1, registers, spills, sources

**Writing.** The directory is built in a temporary sibling and moved into place with one
rename (an atomic exchange where Linux offers `renameat2`), so a reader sees the old artifact
or the new one, never a mixture, and a failure part-way leaves `out_dir` as it was with no
temporary directory behind. Writers to one parent directory take turns (an exclusive `flock`
on the parent), so concurrent compiles to one output serialise instead of failing. A
directory is replaced only when its manifest proves that netc wrote all of it: every file it
holds is listed in `netc.json` with the SHA-256 it still has. Anything else in the way (a
foreign or non-empty directory, a netc artifact with a file added or edited since, a file, a
link) is refused with E0430 before any work is done (`check_destination`).

**Loading** (`load_artifact`) verifies the manifest first: the format and netc version must be
this netc's, every listed file must be there with its size and SHA-256, and nothing else may
be there. A tampered, truncated or version-mismatched artifact is refused with E0431, never
half-loaded. The hashes catch damage and edits, not an attacker who can also rewrite
`netc.json`: an artifact is as trustworthy as the directory it sits in (the simulator's
library is code that runs in the process, like any shared library you load).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netc.diagnostics import CompileError, Diagnostic
from netc.ir import Attrs
from netc.text import format_table

if TYPE_CHECKING:
    from netc.passes.weight_transforms import WeightTransform
    from netc.plan import LaunchPlan
    from netc.sim import SimBinary
    from netc.toolchain import DeviceBinary, KernelResources

ARTIFACT_FORMAT = 2
MANIFEST = "netc.json"
PLAN = "plan.json"
OPTIMIZATION = "optimization.json"
WEIGHTS = "weights.safetensors"
KIND = "netc-artifact"


class ArtifactError(CompileError):
    """The output directory cannot be written as asked (exit code 1: the user's choice of path)."""

    def __init__(self, message: str, help: str | None = None, code: str = "E0430"):
        super().__init__([Diagnostic(code, message, help=help)])


class ArtifactLoadError(ArtifactError):
    """An artifact directory that cannot be loaded as it is (E0431)."""

    def __init__(self, path: Path | str, problem: str, help: str | None = None):
        super().__init__(f"cannot load the artifact `{path}`: {problem}",
                         help or "compile it again with `netc compile MODEL -o DIR`", "E0431")


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
    sizes = plan.every_dim(1)
    at = ", ".join(f"{d}=1" for d in plan.dims)
    batch_note = (f"grids at {at}" if plan.dims else "the network has no named dimension")
    owned = [b for b in plan.buffers if b.alias_of is None]
    total = sum(b.nbytes(sizes) for b in owned)
    lines.append(f"{len(plan.buffers)} buffers ({len(owned)} with storage, "
                 f"{_bytes(total)} at {at or 'its sizes'}); {batch_note}")
    intermediates = plan.intermediate_bytes(sizes)
    if intermediates:
        memory = plan.memory_plan(sizes)
        lines.append(f"arena {_bytes(memory.arena_bytes)} at {at or 'its sizes'} for "
                     f"{len(plan.arena_buffers)} intermediates totalling "
                     f"{_bytes(intermediates)} ({memory.arena_bytes / intermediates:.0%}), "
                     f"{memory.inplace_count} in place; static bytes moved "
                     f"{_bytes(plan.bytes_moved(sizes))}")

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

    lines += ["", f"launches, in order (grid at {at or 'its sizes'}; smem = static + dynamic "
              "bytes)"]
    rows = [("#", "kernel", "grid", "block", "smem", "regs", "spills", "source")]
    for index, launch in enumerate(plan.launches, 1):
        grid = "x".join(str(d) for d in launch.grid_size(sizes))
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


def plan_document(plan: LaunchPlan, binary: DeviceBinary | None) -> dict[str, Any]:
    """`plan.json`: the plan as `to_json` gives it, plus resource usage."""
    document: dict[str, Any] = json.loads(plan.to_json())
    document["kernel_resources"] = binary.resources_json() if binary is not None else None
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
    files[PLAN] = (json.dumps(plan_document(plan, binary), indent=2) + "\n").encode()
    for name, data in extra.items():
        if _check_name(name) in files or name == MANIFEST:
            raise ValueError(f"extra artifact file {name!r} would replace one netc writes")
        files[name] = bytes(data)
    return files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_document(files: Mapping[str, bytes], info: Mapping[str, Any]) -> dict[str, Any]:
    """`netc.json`: what wrote the directory, `info` (target, network, options...), and every
    other file with its size and SHA-256."""
    from netc._version import __version__

    return {"format": ARTIFACT_FORMAT, "kind": KIND, "netc_version": __version__, **info,
            "files": {name: {"bytes": len(data), "sha256": _sha256(data)}
                      for name, data in sorted(files.items())}}


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of `directory`, or None when it has none that netc could have written."""
    path = directory / MANIFEST
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (16 << 20):
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = document.get("files") if isinstance(document, dict) else None
    if document.get("kind") != KIND or not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int) for entry in files.values()):
        return None
    return document


def _mismatches(directory: Path, manifest: Mapping[str, Any]) -> tuple[list[str], list[str],
                                                                         list[str]]:
    """Files of `directory` the manifest does not list, listed files missing, and listed files
    whose size or SHA-256 differs."""
    listed: Mapping[str, Any] = manifest["files"]
    present = {entry.name for entry in directory.iterdir()} - {MANIFEST}
    unlisted = sorted(present - set(listed))
    missing = sorted(set(listed) - present)
    changed = []
    for name in sorted(set(listed) & present):
        path = directory / name
        if path.is_symlink() or not path.is_file():
            changed.append(name)
            continue
        entry = listed[name]
        if path.stat().st_size != entry["bytes"] or _sha256(path.read_bytes()) != entry["sha256"]:
            changed.append(name)
    return unlisted, missing, changed


def check_destination(out_dir: Path | str) -> bool:
    """Whether `out_dir` exists (and may be replaced: a netc artifact, intact, or an empty
    directory); raises `ArtifactError` (E0430) when it must not be touched."""
    out_dir = Path(out_dir).absolute()
    if not out_dir.exists() and not out_dir.is_symlink():
        for parent in out_dir.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ArtifactError(f"cannot create `{out_dir}`: `{parent}` is a file")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise ArtifactError(f"cannot create `{out_dir}`: no permission to write "
                                        f"in `{parent}`",
                                        help="choose a directory you can write to")
                break
        return False
    if out_dir.is_symlink():
        raise ArtifactError(f"output path `{out_dir}` is a symbolic link; netc replaces the "
                            f"directory itself, so it will not follow a link",
                            help=f"give the real path, `{out_dir.resolve()}`")
    if not out_dir.is_dir():
        raise ArtifactError(f"output path `{out_dir}` exists and is not a directory",
                            help="choose another output directory")
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot replace `{out_dir}`: no permission to write in "
                            f"`{out_dir.parent}`", help="choose a directory you can write to")
    if not any(out_dir.iterdir()):
        return True
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise ArtifactError(
            f"output directory `{out_dir}` is not empty and is not a netc artifact "
            f"(it has no valid {MANIFEST}); refusing to replace it",
            help="choose an empty or new directory, or remove this one yourself")
    unlisted, _, changed = _mismatches(out_dir, manifest)
    if unlisted or changed:
        shown = ", ".join([*(f"`{n}` (not netc's)" for n in unlisted[:5]),
                           *(f"`{n}` (changed since netc wrote it)" for n in changed[:5])])
        raise ArtifactError(
            f"output directory `{out_dir}` holds files netc did not write as they are: "
            f"{shown}; refusing to replace it",
            help="move those files elsewhere, or choose another output directory")
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
                    report_text: str, extra: Mapping[str, bytes] | None = None,
                    info: Mapping[str, Any] | None = None) -> Path:
    """Write the artifact directory for `plan` to `out_dir`, all of it or none of it, with
    `info` (target, network, source hash, options) in its manifest.

    A previous artifact in `out_dir` is replaced only once the new one is complete, and only
    when it is intact (see the module docstring); otherwise `ArtifactError`. Returns the
    directory written.
    """
    record = {"target": "cuda", "network": plan.network, "module": plan.module, **(info or {})}
    return write_directory(out_dir, _artifact_files(plan, binary, report_text, extra or {}),
                           record)


@contextlib.contextmanager
def _writers_take_turns(parent: Path) -> Iterator[None]:
    """An exclusive lock on `parent` for the time of one write: concurrent writers of the
    same output wait for each other instead of racing for the final rename."""
    descriptor = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def write_directory(out_dir: Path | str, files: Mapping[str, bytes],
                    info: Mapping[str, Any] | None = None) -> Path:
    """Write `files` and their manifest (`netc.json`, with `info`) as the directory `out_dir`,
    all of them or none (see the module docstring)."""
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST} is written by write_directory itself")
    out_dir = Path(out_dir).absolute()
    check_destination(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create `{out_dir.parent}`: {exc.strerror or exc}") from None
    manifest = manifest_document(files, info or {})
    with _writers_take_turns(out_dir.parent):
        replacing = check_destination(out_dir)  # again: another writer may have been first
        _write_staged(out_dir, {**files, MANIFEST: (json.dumps(manifest, indent=2) + "\n")
                                .encode()}, replacing)
    return out_dir


def _write_staged(out_dir: Path, files: Mapping[str, bytes], replacing: bool) -> None:
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


# Loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory: its plan, binaries, and weights, ready to run."""

    path: Path
    manifest: Mapping[str, Any]
    plan: LaunchPlan
    binary: DeviceBinary | None
    """Cubins and PTX per architecture; None if it was compiled without them."""
    weights: dict[str, np.ndarray] | None
    """The plan's parameters, if the compile was given weights."""
    transforms: tuple[WeightTransform, ...]
    """How the plan's folded parameters derive from the source network's weights."""

    @property
    def network(self) -> str:
        return self.plan.network

    def weights_for(self, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The plan's parameters: its own, or derived from the source network's `weights`
        (as `netc run MODEL.net --weights` takes them) by the recorded transforms."""
        if weights is None:
            if self.weights is None:
                raise ArtifactLoadError(self.path, "it holds no weights",
                                        help="pass --weights (the source network's), or "
                                             "compile with --weights so that it keeps them")
            return self.weights
        from netc.passes.weight_transforms import apply_weight_transforms

        try:
            derived = apply_weight_transforms(self.transforms, weights)
        except KeyError as exc:
            raise CompileError([Diagnostic(
                "E0410", f"the weights lack {exc.args[0]}, which the artifact's folded "
                "parameters are computed from")]) from None
        params = [b.node for b in self.plan.buffers if b.role == "param"]
        missing = [name for name in params if name not in derived]
        if missing:
            raise CompileError([Diagnostic("E0410", "the weights lack "
                                           + ", ".join(missing[:10]))])
        return {name: derived[name] for name in params}

    def simulator_binary(self, directory: Path) -> SimBinary:
        """The simulator's library, copied into `directory` (private to this process) and
        checked again there, so that what is loaded is what was verified."""
        from netc.sim import SimBinary, driver_id

        record = self.manifest.get("simulator")
        if not isinstance(record, dict):
            raise ArtifactLoadError(self.path, "it holds no build for the CPU simulator (no "
                                    "C++ compiler was found when it was compiled)",
                                    help="compile it again on a machine with g++")
        here = {"machine": platform.machine(), "system": platform.system()}
        there = {key: record.get(key) for key in here}
        if there != here:
            raise ArtifactLoadError(self.path, f"its simulator build is for {there['system']} "
                                    f"{there['machine']}, this is {here['system']} "
                                    f"{here['machine']}")
        if record.get("driver") != driver_id():
            raise ArtifactLoadError(self.path, f"its simulator build is for simulator "
                                    f"{record.get('driver')}, this netc has {driver_id()}")
        name = str(record["file"])
        data = (self.path / name).read_bytes()
        if _sha256(data) != self.manifest["files"][name]["sha256"]:
            raise ArtifactLoadError(self.path, f"`{name}` changed while it was being loaded")
        copy = directory / name
        _write_file(copy, data)
        return SimBinary.from_json(record, str(copy))


def _device_binary(path: Path, plan: LaunchPlan, resources: Any) -> DeviceBinary | None:
    from netc.toolchain import ArchBinary, DeviceBinary, KernelResources

    if not isinstance(resources, dict):
        return None
    targets = []
    for arch in resources["archs"]:
        usage = []
        for kernel, per_arch in resources["kernels"].items():
            if arch in per_arch:
                record = dict(per_arch[arch])
                record["constant_bytes"] = tuple(
                    (int(bank), int(size)) for bank, size in record["constant_bytes"].items())
                usage.append(KernelResources(**record))
                assert usage[-1].kernel == kernel
        targets.append(ArchBinary(arch, (path / f"{plan.module}.{arch}.cubin").read_bytes(),
                                  (path / f"{plan.module}.{arch}.ptx").read_text("utf-8"), "",
                                  tuple(usage), from_cache=True))
    return DeviceBinary(plan.module, plan.source, str(resources["compiler"]),
                        str(resources["compiler_version"]),
                        tuple(str(o) for o in resources["options"]), tuple(targets))


def load_artifact(path: Path | str) -> Artifact:
    """Read and verify the artifact directory `path` (see the module docstring); raises
    `ArtifactLoadError` (E0431) for anything short of an intact artifact of this netc."""
    from netc._version import __version__
    from netc.passes.weight_transforms import WeightTransform
    from netc.plan import LaunchPlan
    from netc.weights import load_weights

    directory = Path(path)
    if not directory.is_dir():
        raise ArtifactLoadError(directory, "it is not a directory")
    manifest = read_manifest(directory)
    if manifest is None:
        raise ArtifactLoadError(directory, f"it has no valid {MANIFEST}, so it is no netc "
                                "artifact (or one written before artifacts could be loaded)")
    if manifest.get("format") != ARTIFACT_FORMAT or manifest.get("netc_version") != __version__:
        raise ArtifactLoadError(directory, f"it was written by netc "
                                f"{manifest.get('netc_version')} (artifact format "
                                f"{manifest.get('format')}); this is netc {__version__} "
                                f"(format {ARTIFACT_FORMAT})")
    if manifest.get("target") != "cuda":
        raise ArtifactLoadError(directory, f"it is a `{manifest.get('target')}` artifact; "
                                "netc runs `cuda` artifacts (compiled with --target cuda)")
    unlisted, missing, changed = _mismatches(directory, manifest)
    for problem, names in (("missing", missing), ("changed or truncated", changed),
                           ("not listed in its manifest", unlisted)):
        if names:
            raise ArtifactLoadError(directory, f"{problem}: " + ", ".join(names[:10]))
    try:
        document = json.loads((directory / PLAN).read_text("utf-8"))
        module = str(document["module"])
        plan = LaunchPlan.from_json(document, (directory / f"{module}.cu").read_text("utf-8"))
        binary = _device_binary(directory, plan, document.get("kernel_resources"))
        optimization = json.loads((directory / OPTIMIZATION).read_text("utf-8"))
        transforms = tuple(
            WeightTransform(str(t["output"]), str(t["rule"]), tuple(t["inputs"]),
                            Attrs({key: tuple(value) if isinstance(value, list) else value
                                   for key, value in t.get("attrs", {}).items()}))
            for t in optimization["weight_transforms"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactLoadError(directory, f"its plan is malformed: {exc}") from None
    weights = load_weights(directory / WEIGHTS) if WEIGHTS in manifest["files"] else None
    return Artifact(directory, manifest, plan, binary, weights, transforms)
