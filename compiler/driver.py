"""The compile driver: the one place where netc's stages are chained.

    source (.net) ─ frontend ─> Graph ─ passes ─> Optimized ─ tiling ─> tiles
        ─ codegen ─> LaunchPlan (CUDA source, launches, arena) ─ toolchain ─> binaries

    compiled = compile_graph(load_file("lenet5.net"), CompileOptions(level=2))
    binary = build_binary(compiled.plan, CudaSim())          # or a PyCudaDevice
    runner = PlanRunner(compiled.plan, device, compiled.weights_for(weights), binary)

Every entry point (the command line, the Python API, the backends, `compare`, `explain`, the
benchmarks) compiles through `compile_graph`, so one network gives one plan wherever it is
compiled: the same passes at the same level, the same tiles, the same arena. Each stage reads
only what the stage before produced.

**The tile policy** is one: `netc.codegen.tiling.plan_tiles` for `CompileOptions.arch` (the
newest of `netc compile --arch`) at `CompileOptions.batch` (default 1), with `--tile`
overrides, then the tuning database, then the heuristic. A plan serves every batch size; the
batch only steers which tile the heuristic prefers, so it is a compile option, never taken
from the inputs of a run.

**Binaries.** The toolchain step is separate from code generation, since it depends on where
the plan runs: `build_binary` compiles the plan's module for one device (the simulator's shared
library, or cubins and PTX for a GPU's architecture); `netc compile` builds cubins for every
`--arch` and the simulator's library for the machine it runs on, and writes them all into the
artifact directory. The runtime only loads binaries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netc.codegen.emit import generate, several_outputs_error
from netc.codegen.targets import DEFAULT_ARCH
from netc.codegen.tiling import TileChoice, plan_tiles
from netc.ir import Graph
from netc.passes.pipeline import Optimized, run_pipeline
from netc.plan import LaunchPlan

if TYPE_CHECKING:
    from netc.codegen.tiles import MatrixTile
    from netc.codegen.tiling import TuningDb
    from netc.toolchain import DeviceBinary

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class CompileOptions:
    """Everything that decides the plan a network compiles to."""

    level: int = 2
    """The `-O` level: 0 every op its own kernel, 1 folding and cleanup, 2 fusion too."""
    arch: str = DEFAULT_ARCH
    """The GPU architecture tiles are chosen for."""
    batch: int = 1
    """The batch size tiles are chosen for (the plan runs at any batch)."""
    tile_overrides: Mapping[str, MatrixTile] = field(default_factory=dict)
    """`--tile`: by layer name, node id or `all`."""
    tuning_db: TuningDb | str | Path | None = None
    """A tuning database or its file (default: the file `$NETC_TUNING_DB` names)."""
    dump_ir: str | None = None
    """Write the IR after each pass here (`--dump-ir DIR`)."""
    verify: bool = False
    """Run the IR verifier before and after every pass."""
    precision: str = "f32"
    """`--precision`: f16 or bf16 stores every f32 tensor in 16 bits; tf32 keeps f32 storage and
    runs f32 dense and matmul on TF32 tensor cores (`netc.precision`)."""

    def to_json(self) -> dict[str, Any]:
        """The options as an artifact's manifest records them."""
        from netc.codegen.tiling import tile_text

        return {"level": self.level, "arch": self.arch, "batch": self.batch,
                "precision": self.precision,
                "tile_overrides": {name: tile_text(tile)
                                   for name, tile in sorted(self.tile_overrides.items())},
                "tuning_db": None if self.tuning_db is None else str(
                    getattr(self.tuning_db, "path", self.tuning_db))}


@dataclass(frozen=True)
class Compiled:
    """A network compiled to a launch plan, with the record of how it got there."""

    optimized: Optimized
    tiles: tuple[TileChoice, ...]
    plan: LaunchPlan
    options: CompileOptions
    seconds: Mapping[str, float]
    """Wall time of each stage: `passes`, `tiling`, `codegen`."""

    @property
    def source(self) -> Graph:
        return self.optimized.source

    @property
    def graph(self) -> Graph:
        """The optimised graph the plan was generated from."""
        return self.optimized.graph

    def weights_for(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The plan's parameters from the source network's weights (checked against the source
        first; folded parameters derived by the recorded transforms)."""
        return self.optimized.weights_for(weights)


def compile_graph(graph: Graph, options: CompileOptions | None = None, *,
                  progress: Progress = _quiet) -> Compiled:
    """`graph` through the passes, tiling and code generation: its launch plan."""
    from netc.precision import with_precision

    options = options or CompileOptions()
    graph = with_precision(graph, options.precision)
    problem = several_outputs_error(graph)  # before the passes, which do not take them either
    if problem is not None:
        raise problem
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    optimized = run_pipeline(graph, options.level, dump_dir=options.dump_ir,
                             verify=options.verify, batch=options.batch)
    seconds["passes"] = time.perf_counter() - started
    progress(optimized.log().splitlines()[0])
    if options.dump_ir:
        progress(f"wrote the IR after each pass to {options.dump_ir}")
    started = time.perf_counter()
    choices = tuple(plan_tiles(optimized.graph, options.arch, options.tile_overrides,
                               batch=options.batch, tuning_db=options.tuning_db,
                               precision=options.precision))
    seconds["tiling"] = time.perf_counter() - started
    started = time.perf_counter()
    plan = generate(optimized.graph, tiles={choice.node: choice.tile for choice in choices})
    seconds["codegen"] = time.perf_counter() - started
    progress(f"generated {len(plan.kernels)} kernels, {len(plan.launches)} launches "
             f"({seconds['codegen'] * 1000:.0f} ms)")
    if options.dump_ir:
        _dump_memory_plan(plan, options)
    return Compiled(optimized, choices, plan, options, seconds)


def _dump_memory_plan(plan: LaunchPlan, options: CompileOptions) -> None:
    """The arena the plan runs with, beside the passes' IR dumps (`NN_memory_plan.txt`)."""
    from netc.passes.pass_manager import write_dump

    assert options.dump_ir is not None
    directory = Path(options.dump_ir)
    number = len(list(directory.glob("[0-9][0-9]_*.txt")))
    text = "\n".join(plan.memory_plan(plan.every_dim(options.batch)).describe()) + "\n"
    write_dump(directory, f"{number:02d}_memory_plan.txt", text)


# The toolchain step ----------------------------------------------------------------------


def build_binary(plan: LaunchPlan, device: Any, *, compiler: str = "auto") -> Any:
    """The plan's module compiled for `device`: a `SimBinary` for the simulator, a
    `DeviceBinary` for a GPU (its own architecture, or the PTX of the newest one the compiler
    supports below it, which the driver JIT-compiles). None for a plan without kernels."""
    if not plan.kernels:
        return None
    build = getattr(device, "build", None)
    if build is not None:  # the simulator builds its own shared libraries
        return build(plan.source, plan.kernels, name=plan.module)
    arch = getattr(device, "arch", None)
    if arch is None:
        raise TypeError(f"no toolchain for device {device!r}")
    return build_for_arch(plan.source, plan.module, arch,
                          compiler=getattr(device, "compiler", compiler),
                          options=tuple(getattr(device, "options", ())))


def build_for_arch(source: str, name: str, arch: str, *, compiler: str = "auto",
                   options: tuple[str, ...] = ()) -> DeviceBinary:
    """Cubin and PTX of a module for a GPU of architecture `arch`, or, when the compiler does
    not know it, for the newest architecture below it that the compiler supports."""
    from netc.runtime.pycuda_device import DeviceUnavailable
    from netc.toolchain import arch_number, compile_module, supported_archs

    supported = supported_archs(compiler)
    if arch not in supported:
        older = [a for a in supported if a[-1].isdigit() and arch_number(a) < arch_number(arch)]
        if not older:
            raise DeviceUnavailable(f"the CUDA compiler cannot build for {arch} or any older "
                                    f"architecture (it supports {', '.join(supported)})")
        arch = max(older, key=arch_number)
    return compile_module(source, name, archs=(arch,), compiler=compiler, options=options)


def run_plan(plan: LaunchPlan, device: Any, weights: Mapping[str, np.ndarray],
             inputs: Mapping[str, np.ndarray], *, poison: bool = True,
             reuse_memory: bool = True) -> dict[str, np.ndarray]:
    """Build `plan` for `device` and run it once on `inputs` (tests and one-off runs)."""
    from netc.runtime.executor import run_plan as execute

    return execute(plan, device, weights, inputs, build_binary(plan, device), poison=poison,
                   reuse_memory=reuse_memory)
