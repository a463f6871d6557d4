"""What the optimisation levels buy on ResNet-18 and ResNet-50, and the -O2 targets.

    .venv/bin/python benchmarks/passes_targets.py [--repeat 5] [--device-repeat 1] [--write]

For each network at -O0, -O1 and -O2 it prints, from the launch plan the compile driver makes:
  launches        kernel launches per forward pass (+ the split-K reduce launches that the
                  tiling adds to fill the GPU, counted apart: the target is about fusion)
  bytes moved     `LaunchPlan.bytes_moved`: per launch, every buffer argument (inputs,
                  parameters, intermediates, outputs) read or written once, at batches 1 and 8
  arena           `LaunchPlan.arena_bytes`: the one allocation holding every intermediate
  intermediates   `LaunchPlan.intermediate_bytes`: their sum, what separate buffers take
  compile ms      front end + passes + code generation, median of --repeat runs in this
                  process (device compile excluded)
  nvrtc ms        device compile of the module to PTX and cubin for sm_90 with NVRTC, each
                  run with an empty cache (a fresh NETC_CACHE_DIR), median of --device-repeat

and checks the targets for ResNet-18 at -O2 (PASS/FAIL each; the exit status is 1 if any
fails): at most 24 launches, static bytes moved at most half of -O0's, arena at most half the
sum of its intermediates. Weights are read once per forward pass whatever the level, so the
bytes ratio depends on the batch; it is checked at batch 1 and at batch 8.

--write appends the output to benchmarks/RESULTS.md under a heading naming the date, the
machine (nproc, CPU model) and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from netc.driver import CompileOptions, compile_graph
from netc.frontend import load_file
from netc.plan import LaunchPlan

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"ResNet-18": ROOT / "examples" / "resnet18.net",
            "ResNet-50": ROOT / "examples" / "resnet50.net"}
LEVELS = (0, 1, 2)
BIG_BATCH = 8
MAX_LAUNCHES = 24


@dataclass(frozen=True)
class Row:
    network: str
    level: int
    plan: LaunchPlan
    compile_seconds: float
    device_seconds: float | None
    device_note: str


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.2f}"


def _compile_once(path: Path, level: int) -> tuple[LaunchPlan, float]:
    started = time.perf_counter()
    plan = compile_graph(load_file(path), CompileOptions(level=level)).plan
    return plan, time.perf_counter() - started


@contextlib.contextmanager
def _empty_cache() -> Iterator[None]:
    saved = os.environ.get("NETC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="netc-passes-targets-") as directory:
        os.environ["NETC_CACHE_DIR"] = directory
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("NETC_CACHE_DIR", None)
            else:
                os.environ["NETC_CACHE_DIR"] = saved


def _device_compile(plan: LaunchPlan, repeat: int) -> tuple[float | None, str]:
    from netc.toolchain import compile_module, nvrtc_status

    version, why = nvrtc_status()
    if version is None:
        return None, f"NVRTC unavailable: {why}"
    times = []
    for _ in range(repeat):
        with _empty_cache():
            started = time.perf_counter()
            compile_module(plan.source, plan.module, archs=("sm_90",), compiler="nvrtc")
            times.append(time.perf_counter() - started)
    return statistics.median(times), version


def measure(repeat: int, device_repeat: int, progress: Callable[[str], None]) -> list[Row]:
    rows = []
    for network, path in NETWORKS.items():
        for level in LEVELS:
            progress(f"{network} -O{level}")
            runs = [_compile_once(path, level) for _ in range(repeat)]
            plan = runs[-1][0]
            device_seconds, note = _device_compile(plan, device_repeat)
            rows.append(Row(network, level, plan, statistics.median(t for _, t in runs),
                            device_seconds, note))
    return rows


def table(rows: list[Row]) -> list[str]:
    header = ("network", "level", "launches", "bytes moved b=1 MiB",
              f"bytes moved b={BIG_BATCH} MiB", "arena b=1 MiB", "intermediates b=1 MiB",
              "arena/sum", "compile ms", "nvrtc sm_90 cold ms")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        plan = row.plan
        reduces = len(plan.launches) - computing_launches(plan)
        cells = (row.network, f"-O{row.level}",
                 f"{computing_launches(plan)}" + (f" + {reduces}" if reduces else ""),
                 _mib(plan.bytes_moved(_at(plan, 1))), _mib(plan.bytes_moved(_at(plan, BIG_BATCH))),
                 _mib(plan.arena_bytes(_at(plan, 1))), _mib(plan.intermediate_bytes(_at(plan, 1))),
                 f"{plan.arena_bytes(_at(plan, 1)) / plan.intermediate_bytes(_at(plan, 1)):.0%}",
                 f"{row.compile_seconds * 1000:.0f}",
                 "n/a" if row.device_seconds is None else f"{row.device_seconds * 1000:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def computing_launches(plan: LaunchPlan) -> int:
    """The launches that compute the network's nodes: all but the split-K reduces (the
    tiling's choice for a layer that would leave SMs idle, docs/kernels.md)."""
    return sum(1 for launch in plan.launches if not launch.kernel.startswith("netc_splitk_reduce"))


def _at(plan: LaunchPlan, batch: int) -> dict[str, int]:
    """Every named dimension (the batch, in these networks) at `batch`."""
    return plan.every_dim(batch)


def targets(rows: list[Row]) -> tuple[list[str], bool]:
    by_level = {row.level: row.plan for row in rows if row.network == "ResNet-18"}
    unoptimised, optimised = by_level[0], by_level[2]
    checks: list[tuple[bool, str]] = [(
        computing_launches(optimised) <= MAX_LAUNCHES,
        f"launches at -O2: {computing_launches(optimised)} (target <= {MAX_LAUNCHES}; "
        "split-K reduces not counted)")]
    for batch in (1, BIG_BATCH):
        moved = optimised.bytes_moved(_at(optimised, batch))
        baseline = unoptimised.bytes_moved(_at(unoptimised, batch))
        checks.append((2 * moved <= baseline,
                       f"static bytes moved at batch {batch}: {_mib(moved)} MiB = "
                       f"{moved / baseline:.0%} of -O0's {_mib(baseline)} MiB (target <= 50%)"))
    arena = optimised.arena_bytes(_at(optimised, 1))
    total = optimised.intermediate_bytes(_at(optimised, 1))
    checks.append((2 * arena <= total,
                   f"arena at batch 1: {_mib(arena)} MiB = {arena / total:.0%} of the "
                   f"{_mib(total)} MiB of intermediates (target <= 50%)"))
    lines = ["ResNet-18 targets:"] + [f"  {'PASS' if ok else 'FAIL'}  {text}"
                                      for ok, text in checks]
    weights = (_parameter_bytes(unoptimised), _parameter_bytes(optimised))
    activations = [plan.bytes_moved(_at(plan, 1)) - read
                   for plan, read in zip((unoptimised, optimised), weights)]
    lines.append(f"  (at batch 1, parameter reads are {_mib(weights[0])} MiB at -O0 and "
                 f"{_mib(weights[1])} MiB at -O2, whatever the batch; the rest, "
                 f"{_mib(activations[1])} MiB at -O2, is {activations[1] / activations[0]:.0%} "
                 f"of -O0's {_mib(activations[0])} MiB)")
    return lines, all(ok for ok, _ in checks)


def _parameter_bytes(plan: LaunchPlan) -> int:
    """Bytes of parameters the launches read, each once per launch (part of `bytes_moved`)."""
    params = {b.name: b for b in plan.buffers if b.role == "param"}
    return sum(params[name].nbytes({}) for launch in plan.launches
               for name in dict.fromkeys(arg.buffer for arg in launch.args)
               if name in params)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5,
                        help="compile runs per network and level (median reported)")
    parser.add_argument("--device-repeat", type=int, default=1,
                        help="cold NVRTC compiles per network and level (median reported)")
    parser.add_argument("--write", action="store_true",
                        help="append the output to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    rows = measure(args.repeat, args.device_repeat,
                   lambda what: print(f"measuring {what} ...", file=sys.stderr, flush=True))
    target_lines, passed = targets(rows)
    notes = sorted({row.device_note for row in rows})
    output = io.StringIO()
    print("\n".join(table(rows)), file=output)
    print(f"\ncompile ms: front end + passes + code generation, median of {args.repeat}; "
          f"nvrtc: {', '.join(notes)}, median of {args.device_repeat} cold compile(s), each "
          f"with an empty NETC_CACHE_DIR.\n", file=output)
    print("```\n" + "\n".join(target_lines) + "\n```", file=output)
    text = output.getvalue()
    print(text, end="")
    if args.write:
        command = "python benchmarks/passes_targets.py " + shlex.join(argv or sys.argv[1:])
        heading = (f"## passes_targets: {datetime.date.today().isoformat()}, "
                   f"nproc {len(os.sched_getaffinity(0))}, {_cpu_model()}\n\n"
                   f"Command: `{command.strip()}`\n\n")
        results = ROOT / "benchmarks" / "RESULTS.md"
        existing = results.read_text() if results.exists() else "# Benchmark results\n"
        results.write_text(existing.rstrip("\n") + "\n\n" + heading + text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
