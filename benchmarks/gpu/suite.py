"""netc's generated kernels against their peers on one GPU (issue 11).

Every problem is a small `.net` network compiled by `netc.driver` (-O2) and run through PyCUDA
(`netc.runtime.pycuda_device`); its peer is PyTorch on the same card in the same run. Times are
CUDA-event medians after warm-up; outputs are poisoned before the checked run and compared with
the float64 NumPy reference (NaN fails). Without a GPU, `--dry-run` does everything but the
timing: plans, sm_90 cubins with nvcc, and a tiny size of each problem on cudasim.

    python benchmarks/gpu/suite.py [--quick] [--problems gemm,attention] [--out DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Problem:
    """One benchmark: a network at the sizes of a mode (`full`, `quick`, `tiny`), its work, and
    the PyTorch peer that computes the same outputs."""

    name: str
    group: str
    source: Callable[[str], str]
    """mode -> `.net` text."""
    flops: Callable[[Mapping[str, np.ndarray]], float]
    """Floating-point operations from the inputs."""
    peer: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any] | None
    """(torch, inputs, weights) on the GPU -> the output tensor; None: no peer yet."""
    reference: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray] | None
    """(inputs, weights) -> the output in float64; None: netc's NumPy reference (float32)."""
    tolerance: float = 1e-4
    dtype: str = "f32"
    simulate: bool = True
    """Run the tiny size on cudasim in `--dry-run` (whole networks are too slow there)."""


def _gemm_source(dtype: str, sizes: Mapping[str, tuple[int, int, int]]) -> Callable[[str], str]:
    def source(mode: str) -> str:
        m, k, n = sizes[mode]
        return (f"network gemm {{\n    input a: {dtype}[{m}, {k}]\n    input b: {dtype}[{k}, {n}]\n"
                f"    output c = matmul(a, b)\n}}\n")
    return source


def _attention_source(t: int, causal: bool) -> Callable[[str], str]:
    def source(mode: str) -> str:
        b, h, length, d = {"full": (8, 12, t, 64), "quick": (2, 4, t // 8, 64),
                           "tiny": (1, 2, 33, 16)}[mode]
        shape = f"f32[{b}, {h}, {length}, {d}]"
        return (f"network sdpa {{\n    input q: {shape}\n    input k: {shape}\n"
                f"    input v: {shape}\n    output o = attention(q, k, v, "
                f"causal={'true' if causal else 'false'})\n}}\n")
    return source


def _network_source(example: str, batch: int) -> Callable[[str], str]:
    def source(mode: str) -> str:
        return (EXAMPLES / example).read_text()
    return source


def _matmul_flops(inputs: Mapping[str, np.ndarray]) -> float:
    a, b = inputs["a"], inputs["b"]
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


def _attention_flops(inputs: Mapping[str, np.ndarray]) -> float:
    b, h, t, d = inputs["q"].shape
    return 4.0 * b * h * t * t * d


def _dense_flops(inputs: Mapping[str, np.ndarray]) -> float:
    return 2.0 * inputs["x"].shape[0] * inputs["x"].shape[1] * 4096


def _f64(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in arrays.items()}


def _matmul64(inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> np.ndarray:
    return _f64(inputs)["a"] @ _f64(inputs)["b"]


def _dense64(inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> np.ndarray:
    return _f64(inputs)["x"] @ _f64(weights)["dense_0.weight"].T


def _attention64(causal: bool) -> Callable[[Mapping[str, np.ndarray],
                                             Mapping[str, np.ndarray]], np.ndarray]:
    def reference(inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> np.ndarray:
        q, k, v = (_f64(inputs)[n] for n in "qkv")
        scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
        if causal:
            t = scores.shape[-1]
            scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        return (scores / scores.sum(-1, keepdims=True)) @ v
    return reference


def _torch_matmul(torch: Any, inputs: Mapping[str, Any], weights: Mapping[str, Any]) -> Any:
    return torch.matmul(inputs["a"], inputs["b"])


def _torch_dense(torch: Any, inputs: Mapping[str, Any], weights: Mapping[str, Any]) -> Any:
    return torch.nn.functional.linear(inputs["x"], weights["dense_0.weight"])


def _torch_attention(causal: bool) -> Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]:
    def peer(torch: Any, inputs: Mapping[str, Any], weights: Mapping[str, Any]) -> Any:
        return torch.nn.functional.scaled_dot_product_attention(
            inputs["q"], inputs["k"], inputs["v"], is_causal=causal)
    return peer


def _dense_source(mode: str) -> str:
    k = {"full": 4096, "quick": 1024, "tiny": 33}[mode]
    units = {"full": 4096, "quick": 1024, "tiny": 31}[mode]
    return (f"network gemv {{\n    input x: f32[1, {k}]\n"
            f"    output y = dense(x, {units}, bias=false)\n}}\n")


GEMM_SIZES = {"full": (4096, 4096, 4096), "quick": (1024, 1024, 1024), "tiny": (33, 31, 129)}

PROBLEMS: list[Problem] = [
    Problem("gemm_f32", "gemm", _gemm_source("f32", GEMM_SIZES), _matmul_flops, _torch_matmul,
            _matmul64),
    Problem("dense_m1_f32", "gemm", _dense_source, _dense_flops, _torch_dense, _dense64),
    Problem("gemm_bf16", "lowp", _gemm_source("bf16", GEMM_SIZES), _matmul_flops,
            _torch_matmul, _matmul64, tolerance=2e-2, dtype="bf16"),
    *(Problem(f"attention_t{t}{'_causal' if causal else ''}", "attention",
              _attention_source(t, causal), _attention_flops, _torch_attention(causal),
              _attention64(causal))
      for t in (512, 2048) for causal in (False, True)),
    *(Problem(f"{net}_b{batch}", "network", _network_source(f"{net}.net", batch),
              lambda inputs: float("nan"), None, None, tolerance=1e-3, simulate=False)
      for net in ("resnet18", "resnet50") for batch in (1, 8)),
]


def _batch_of(problem: Problem) -> int:
    return int(problem.name.rsplit("_b", 1)[1]) if problem.group == "network" else 1


def _inputs(graph: Any, batch: int, seed: int) -> Arrays:
    """Random float32 inputs for every input of `graph` (`N` bound to `batch`)."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for node in graph.inputs:
        shape = tuple(batch if not isinstance(d, int) else d for d in node.type.shape)
        out[node.id] = rng.standard_normal(shape).astype(np.float32)
    return out


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    if not np.all(np.isfinite(got)):
        return float("nan")
    diff = np.linalg.norm(got.astype(np.float64) - want)
    return float(diff / max(np.linalg.norm(want), 1e-30))


def _reference64(problem: Problem, model: Any, weights: Mapping[str, np.ndarray],
                 inputs: Arrays) -> np.ndarray:
    """The problem's float64 reference, else netc's NumPy reference of the whole network."""
    from netc.reference import run_reference

    if problem.reference is not None:
        if problem.dtype == "bf16":  # the inputs as the kernel sees them
            inputs = {k: run_reference_round(v) for k, v in inputs.items()}
        return problem.reference(inputs, weights)

    outputs = run_reference(model.graph, weights, inputs)
    (value,) = outputs.values()
    return np.asarray(value, dtype=np.float64)


def prepare(problem: Problem, mode: str) -> tuple[Any, Any, Arrays]:
    """Parse and compile a problem: (model, compiled, weights)."""
    import netc
    from netc.driver import CompileOptions, compile_graph

    if problem.group == "network":
        model = netc.load(EXAMPLES / f"{problem.name.rsplit('_b', 1)[0]}.net")
    else:
        model = netc.loads(problem.source(mode))
    weights = model.init_weights(seed=0)
    compiled = compile_graph(model.graph, CompileOptions(level=2, arch="sm_90",
                                                         batch=_batch_of(problem)))
    return model, compiled, weights


def run_reference_round(array: np.ndarray) -> np.ndarray:
    """`array` rounded to bf16 (as a bf16 input is stored), back in float32."""
    from netc.dtypes import round_to

    return np.asarray(round_to("bf16", array), np.float32)


# Dry run: plans, cubins, cudasim ---------------------------------------------------------


def dry_run(problem: Problem) -> dict[str, Any]:
    from netc.driver import build_for_arch, run_plan
    from netc.sim import CudaSim

    mode = "tiny"
    model, compiled, weights = prepare(problem, mode)
    row: dict[str, Any] = {"problem": problem.name, "mode": mode, "netc_ms": None,
                           "peer_ms": None, "kernels": len(compiled.plan.kernels),
                           "launches": len(compiled.plan.launches)}
    binary = build_for_arch(compiled.plan.source, compiled.plan.module, "sm_90", compiler="nvcc")
    row["cubin_bytes"] = len(binary.target("sm_90").cubin)
    if not problem.simulate:
        row.update(shapes="as the example", rel_error=None, passed=True, note="compiled only")
        return row
    inputs = _inputs(model.graph, 1, seed=1)
    row["shapes"] = {name: list(a.shape) for name, a in inputs.items()}
    got = run_plan(compiled.plan, CudaSim(), compiled.weights_for(weights), inputs)
    (value,) = got.values()
    error = _rel_error(value, _reference64(problem, model, weights, inputs))
    row.update(rel_error=error, passed=bool(error <= problem.tolerance))
    return row


# On a GPU ---------------------------------------------------------------------------------


def _median_ms(run: Callable[[], None], start: Any, stop: Any, sync: Callable[[], None],
               warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.time_till(stop) if hasattr(start, "time_till")
                     else start.elapsed_time(stop))
    return statistics.median(times)


def ceilings(torch: Any) -> dict[str, float]:
    """The card's two ceilings, measured: copy bandwidth (read + write) and cuBLAS rates."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync = torch.cuda.synchronize
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), start, stop, sync, 3, 10)
    out = {"bytes_per_s": 2 * src.numel() * 4 / (copy_ms / 1e3)}
    for dtype, key in ((torch.float32, "f32_flops"), (torch.bfloat16, "bf16_flops")):
        square = torch.randn(8192, 8192, device="cuda", dtype=dtype)

        def product(a: Any = square) -> None:
            torch.matmul(a, a)
        ms = _median_ms(product, start, stop, sync, 3, 10)
        out[key] = 2 * 8192 ** 3 / (ms / 1e3)
    return out


def measure(problem: Problem, mode: str, torch: Any, device: Any, peaks: Mapping[str, float],
            warmup: int, repeats: int) -> dict[str, Any]:
    import pycuda.driver as cuda

    from netc.driver import build_binary
    from netc.runtime.executor import PlanRunner

    model, compiled, weights = prepare(problem, mode)
    inputs = _inputs(model.graph, _batch_of(problem), seed=1)
    plan_weights = compiled.weights_for(weights)
    runner = PlanRunner(compiled.plan, device, plan_weights, build_binary(compiled.plan, device),
                        cuda_graph=True)
    (value,) = runner.run(inputs, poison=True).values()  # poisoned outputs: a skipped write shows
    error = _rel_error(value, _reference64(problem, model, weights, inputs))
    # The launches alone (runner.launch_all), replayed from a CUDA graph (captured during the
    # warm-up) and launched one by one from Python.
    netc_ms = _median_ms(runner.launch_all, cuda.Event(), cuda.Event(),
                         cuda.Context.synchronize, warmup, repeats)
    runner.cuda_graph = False
    eager_ms = _median_ms(runner.launch_all, cuda.Event(), cuda.Event(),
                          cuda.Context.synchronize, warmup, repeats)
    row: dict[str, Any] = {"problem": problem.name, "mode": mode,
                           "shapes": {k: list(v.shape) for k, v in inputs.items()},
                           "netc_ms": netc_ms, "netc_eager_ms": eager_ms, "rel_error": error,
                           "passed": bool(error <= problem.tolerance)}
    nbytes = sum(a.nbytes for a in inputs.values()) + value.nbytes
    nbytes += sum(w.nbytes for w in plan_weights.values())
    flops = problem.flops(inputs)
    rate = peaks["bf16_flops" if problem.dtype == "bf16" else "f32_flops"]
    row.update(flops=flops, bytes=nbytes, tflops=flops / netc_ms / 1e9,
               gbs=nbytes / netc_ms / 1e6,
               floor_ms=max(flops / rate, nbytes / peaks["bytes_per_s"]) * 1e3)
    if problem.peer is not None:
        torch_dtype = torch.bfloat16 if problem.dtype == "bf16" else torch.float32
        t_in = {k: torch.from_numpy(v).cuda().to(torch_dtype) for k, v in inputs.items()}
        t_w = {k: torch.from_numpy(np.asarray(v, np.float32)).cuda().to(torch_dtype)
               for k, v in weights.items()}
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        peer = problem.peer
        peer_ms = _median_ms(lambda: peer(torch, t_in, t_w), start, stop,
                             torch.cuda.synchronize, warmup, repeats)
        row.update(peer_ms=peer_ms, ratio=netc_ms / peer_ms)
    else:
        row.update(peer_ms=None, ratio=None, note="no PyTorch peer in the suite yet")
    runner.close()
    return row


# Output -------------------------------------------------------------------------------------


def _cell(value: Any, digits: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if value != value else format(value, digits)
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["problem", "netc ms", "no graph ms", "peer ms", "ratio", "TFLOP/s", "GB/s",
            "floor ms", "rel err", "ok"]  # ok "built": compiled only, nothing checked
    lines = [" | ".join(head)]
    for row in rows:
        lines.append(" | ".join([
            row["problem"], _cell(row.get("netc_ms")), _cell(row.get("netc_eager_ms")),
            _cell(row.get("peer_ms")),
            _cell(row.get("ratio"), ".2f"), _cell(row.get("tflops"), ".2f"),
            _cell(row.get("gbs"), ".0f"), _cell(row.get("floor_ms")),
            _cell(row.get("rel_error"), ".1e"),
            "built" if row.get("rel_error") is None else "yes" if row["passed"] else "NO"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: plans, sm_90 cubins and a tiny size on cudasim")
    parser.add_argument("--problems", default="",
                        help="comma-separated problem names or groups (default: all)")
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks/gpu/results")),
                        help="JSON folder (default: $OUT, else benchmarks/gpu/results)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    wanted = {w for w in args.problems.split(",") if w}
    problems = [p for p in PROBLEMS if not wanted or p.name in wanted or p.group in wanted]
    if not problems:
        print(f"no problem matches {args.problems!r}; known: "
              f"{', '.join(p.name for p in PROBLEMS)}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "command": " ".join(sys.argv), "dry_run": args.dry_run}
    if args.dry_run:
        for problem in problems:
            print(f"[dry-run] {problem.name}", file=sys.stderr, flush=True)
            rows.append(dry_run(problem))
    else:
        import torch

        from netc.runtime.pycuda_device import PyCudaDevice

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        device = PyCudaDevice()
        peaks = ceilings(torch)
        record.update(card=torch.cuda.get_device_name(), ceilings=peaks)
        mode = "quick" if args.quick else "full"
        for problem in problems:
            print(f"[gpu] {problem.name}", file=sys.stderr, flush=True)
            rows.append(measure(problem, mode, torch, device, peaks, args.warmup, args.repeats))
    record["rows"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(table(rows))
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
