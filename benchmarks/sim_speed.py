"""How fast the CPU simulator runs a network: one inference, and the time per kernel family.

    python benchmarks/sim_speed.py [--model examples/resnet18.net] [--batch 1] [--workers 1]
                                   [--repeat 3] [--baseline REF] [--json FILE]

The network is compiled at -O2 for `--batch` (as `netc run --backend cudasim` does), its module
built for the simulator once (the one-off C++ build, reported on its own line, "cached" when
the compile cache already held it), then run `--repeat` times on the same inputs; the table
gives the fastest and the median run (wall clock and the process's CPU time, which a busy
machine disturbs less), the seconds of each kernel family in the fastest run, its fiber
context switches, and the largest difference of the outputs from the NumPy reference.

`--baseline REF` measures the same network a second time, in the same run, with the simulator
(the `simulator/` folder) as it was at git revision REF and everything else as in the working
tree: both run the same kernels on the same machine, so the speed-up printed is the
simulator's alone. The plan is compiled once, here; each measurement runs in a process of its
own.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"grammar": "grammar", "templates": "templates", "runtime": "runtime",
                "sim": "simulator"}
"""netc's subpackages that live outside compiler/ (pyproject.toml's package-dir)."""


def family(kernel: str) -> str:
    """`netc_conv2d_f32_bm32_...` -> `conv2d`."""
    parts = kernel.split("_")
    return parts[1] if len(parts) > 1 and parts[0] == "netc" else kernel


class TimedDevice:
    """The simulator, with the seconds each kernel's launches take added up by family."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.seconds: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)

    def load_binary(self, binary: Any, kernels: Sequence[str]) -> Any:
        self.module = self.sim.load_binary(binary, kernels)
        return _TimedModule(self, self.module)


class _TimedModule:
    def __init__(self, device: TimedDevice, module: Any) -> None:
        self.device = device
        self.module = module

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], shared_bytes: int,
               args: Sequence[Any]) -> None:
        started = time.perf_counter()
        self.module.launch(name, grid=grid, block=block, shared_bytes=shared_bytes, args=args)
        seconds = self.device.seconds
        seconds[family(name)] = seconds.get(family(name), 0.0) + time.perf_counter() - started


def prepare(model: str, batch: int, path: Path) -> None:
    """Compile `model` once for every variant (so that all run the same kernels, whatever
    changes in the tree meanwhile) and store the plan, its weights, inputs and the NumPy
    reference's outputs in `path`."""
    from netc.driver import CompileOptions, compile_graph
    from netc.frontend import load_file
    from netc.reference import random_inputs, run_reference
    from netc.weights import init_weights

    graph = load_file(model)
    compiled = compile_graph(graph, CompileOptions(level=2, batch=batch))
    weights = init_weights(graph, 0)
    inputs = random_inputs(graph, batch, 0)
    workload = {"plan": compiled.plan, "weights": compiled.weights_for(weights),
                "inputs": inputs, "expected": run_reference(graph, weights, inputs)}
    with path.open("wb") as out:
        pickle.dump(workload, out)


def measure(workload_path: Path, workers: int, repeat: int) -> dict[str, Any]:
    """One variant, in this process: build the module, then `repeat` timed inferences."""
    from netc.driver import build_binary
    from netc.runtime.executor import PlanRunner
    from netc.sim import CudaSim

    with workload_path.open("rb") as data:
        workload = pickle.load(data)
    plan = workload["plan"]
    device = TimedDevice(CudaSim(workers=workers))
    started = time.perf_counter()
    binary = build_binary(plan, device.sim)
    build_s = time.perf_counter() - started
    runs: list[dict[str, Any]] = []
    with PlanRunner(plan, device, workload["weights"], binary) as runner:
        runner.run(workload["inputs"])  # warm-up: every buffer touched once
        for _ in range(repeat):
            device.seconds = {}
            switches = device.module.switch_count()
            wall, cpu = time.perf_counter(), time.process_time()
            outputs = runner.run(workload["inputs"])
            runs.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                         "families": device.seconds,
                         "switches": device.module.switch_count() - switches})
    expected = workload["expected"]
    error = max(float(np.max(np.abs(outputs[name].astype(np.float64) - expected[name])))
                for name in expected)
    fastest = min(runs, key=lambda r: r["wall_s"])
    return {"build_s": build_s, "build_cached": bool(getattr(binary, "cached", False)),
            "launches": len(plan.launches), "kernels": list(plan.kernels),
            "wall_min_s": fastest["wall_s"],
            "wall_median_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_min_s": min(r["cpu_s"] for r in runs),
            "families": fastest["families"], "switches": fastest["switches"],
            "max_abs_error": error,
            "compile_flags": device.sim.compile_flags()}


def overlay_with_simulator_at(revision: str, directory: Path) -> Path:
    """A tree importable as `netc` (PYTHONPATH=directory): the working tree's packages,
    linked, with `netc.sim` extracted from git revision `revision`."""
    package = directory / "netc"
    package.mkdir(parents=True)
    for entry in (ROOT / "compiler").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIRS.items():
        if name != "sim":
            (package / name).symlink_to(ROOT / folder)
    archive = directory / "simulator.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", revision, "simulator"], stdout=out,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    (directory / "simulator").rename(package / "sim")
    return directory


def run_variant(args: argparse.Namespace, workload: Path, pythonpath: Path | None
                ) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    command = [sys.executable, __file__, "--child", str(workload), "--workers",
               str(args.workers), "--repeat", str(args.repeat)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"measurement failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    names = list(results)
    families = sorted({f for r in results.values() for f in r["families"]},
                      key=lambda f: -max(r["families"].get(f, 0.0) for r in results.values()))
    rows: list[tuple[str, list[str]]] = [
        ("build (one-off C++ compile)",
         [f"{r['build_s']:.2f} s" + (" (cached)" if r["build_cached"] else "")
          for r in results.values()]),
        ("inference, fastest (wall)", [f"{r['wall_min_s']:.3f} s" for r in results.values()]),
        ("inference, median (wall)", [f"{r['wall_median_s']:.3f} s" for r in results.values()]),
        ("inference, fastest (CPU)", [f"{r['cpu_min_s']:.3f} s" for r in results.values()]),
    ]
    rows += [(f"  {f}", [f"{r['families'].get(f, 0.0):.3f} s" for r in results.values()])
             for f in families]
    rows.append(("fiber context switches", [f"{r['switches']:,}" for r in results.values()]))
    rows.append(("largest error against the NumPy reference",
                 [f"{r['max_abs_error']:.3g}" for r in results.values()]))
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    if len(names) == 2:
        first, second = (results[n] for n in names)
        lines.append("")
        lines.append(f"speed-up {names[1]} over {names[0]}: "
                     f"{first['wall_min_s'] / second['wall_min_s']:.2f}x (wall, fastest run), "
                     f"{first['cpu_min_s'] / second['cpu_min_s']:.2f}x (CPU)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "examples" / "resnet18.net"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="simulator worker threads (default 1: steadiest on a shared machine)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure the simulator as it was at this git revision")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    parser.add_argument("--child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.workers, args.repeat)))
        return
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="netc-sim-speed-") as scratch:
        workload = Path(scratch) / "workload.pickle"
        prepare(args.model, args.batch, workload)
        if args.baseline:
            overlay = overlay_with_simulator_at(args.baseline, Path(scratch) / "baseline")
            results[f"simulator at {args.baseline}"] = run_variant(args, workload, overlay)
        results["working tree"] = run_variant(args, workload, None)
    print(f"{Path(args.model).name}, batch {args.batch}, {args.workers} worker(s), best of "
          f"{args.repeat} ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)")
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
