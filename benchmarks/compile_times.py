"""Compile and simulate times for an example network, cold and cached.

    python benchmarks/compile_times.py [examples/resnet18.net] [--level 0] [--skip-sim]

Measures, in one process each so that nothing warm leaks between cold runs:
  front end (parse, check, build the IR), code generation (CUDA source and launch plan),
  device compile to PTX and cubin for sm_80 and sm_90 with NVRTC and with nvcc, each with an
  empty cache (cold) and again (cached), and one batch-1 run in the CPU CUDA simulator
  (simulator module compile cold, then the run itself).
Prints a table; the numbers depend on the machine (see benchmarks/RESULTS.md for recorded runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import json, sys, time
from netc.frontend import load_file
from netc.driver import CompileOptions, build_binary, compile_graph
model, step, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = {}
t = time.perf_counter(); graph = load_file(model); times["front end"] = time.perf_counter() - t
compiled = compile_graph(graph, CompileOptions(level=level)); plan = compiled.plan
times["passes"] = compiled.seconds["passes"]
times["codegen"] = compiled.seconds["tiling"] + compiled.seconds["codegen"]
times["launches"] = len(plan.launches)
if step.startswith("device:"):
    from netc.toolchain import compile_module
    compiler = step.split(":")[1]
    for label in ("cold", "cached"):
        t = time.perf_counter()
        compile_module(plan.source, plan.module, archs=("sm_80", "sm_90"), compiler=compiler)
        times[f"{compiler} {label}"] = time.perf_counter() - t
elif step == "sim":
    import numpy as np
    from netc.sim import CudaSim
    from netc.runtime.executor import PlanRunner
    from netc.reference import random_inputs
    from netc.weights import init_weights
    weights = compiled.weights_for(init_weights(graph, 0))
    t = time.perf_counter()
    sim = CudaSim()
    runner = PlanRunner(plan, sim, weights, build_binary(plan, sim))
    runner.run(random_inputs(graph, 1, 0))
    times["sim compile+first run"] = time.perf_counter() - t
    t = time.perf_counter(); runner.run(random_inputs(graph, 1, 1)); times["sim run, batch 1"] = time.perf_counter() - t
print(json.dumps(times))
"""


def run_step(model: str, step: str, level: int, cache: str) -> dict[str, float]:
    env = dict(os.environ, NETC_CACHE_DIR=cache)
    result = subprocess.run([sys.executable, "-c", STEP, model, step, str(level)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"step {step} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(ROOT / "examples" / "resnet18.net"))
    parser.add_argument("--level", type=int, default=0, choices=(0, 1, 2))
    parser.add_argument("--skip-sim", action="store_true")
    args = parser.parse_args()
    rows: dict[str, float] = {}
    steps = ["device:nvrtc", "device:nvcc"] + ([] if args.skip_sim else ["sim"])
    for step in steps:
        with tempfile.TemporaryDirectory() as cache:  # an empty cache: every step starts cold
            rows.update(run_step(args.model, step, args.level, cache))
    print(f"{Path(args.model).name} at -O{args.level}, {int(rows.pop('launches'))} launches "
          f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)")
    for name, seconds in rows.items():
        print(f"  {name:<24} {seconds:8.3f} s")


if __name__ == "__main__":
    main()
