"""Static figures of netc's kernels, no GPU needed (issue 11): for each case, per kernel, its
main loop's instruction mix from the sm_90 SASS (cuobjdump, `netc.toolchain.sass`), registers,
occupancy and blocks per SM (ptxas counts, `netc.codegen.occupancy`), blocks launched, and the
time `netc explain` predicts (roofline over grid fill) next to the bare roofline.

Cases: ResNet-18 and ResNet-50 at batch 1 and 8 (f32, as written), and a 4096³ GEMM in f32 and
bf16; "before" for the bf16 GEMM is the SIMT kernel netc ran it on until tensor cores
(`--tile all=bm128,bn64,bk8,tm8,tn4`), "after" the tensor-core kernel the heuristic now picks.

    python benchmarks/static_kernels.py [--arch sm_90] [--cases resnet18_b1,gemm_bf16] [--top 4]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GEMM = """network gemm {{
    input a: {dtype}[4096, 4096]
    input b: {dtype}[4096, 4096]
    output c = matmul(a, b)
}}
"""
SIMT = "bm128,bn64,bk8,tm8,tn4"


def cases() -> dict[str, tuple[str, int, dict[str, str]]]:
    """name -> (.net text, batch, --tile overrides)."""
    found: dict[str, tuple[str, int, dict[str, str]]] = {}
    for model in ("resnet18", "resnet50"):
        for batch in (1, 8):
            found[f"{model}_b{batch}"] = ((EXAMPLES / f"{model}.net").read_text(), batch, {})
    found["gemm_f32"] = (GEMM.format(dtype="f32"), 1, {})
    found["gemm_bf16_before"] = (GEMM.format(dtype="bf16"), 1, {"all": SIMT})
    found["gemm_bf16"] = (GEMM.format(dtype="bf16"), 1, {})
    return found


def hot_loop_mix(bodies: list[tuple[Any, ...]],
                 instruction_mix: Callable[[Any], Counter[str]]) -> Counter[str]:
    """The mix of the loop that does the math: the innermost loop with the most FFMA and HMMA,
    then with cp.async (the pipelined one of the tensor-core GEMM's two main loops), then the
    shortest."""
    mixes = [instruction_mix(body) for body in bodies]
    return max(mixes, key=lambda m: (m["FFMA"] + m["HMMA"], m["LDGSTS"], -sum(m.values())),
               default=Counter())


def report(name: str, text: str, batch: int, tiles: Mapping[str, str], arch: str,
           top: int) -> list[str]:
    from netc.codegen.tiling import parse_tile
    from netc.driver import CompileOptions, compile_graph
    from netc.explain import explain
    from netc.frontend import load_string
    from netc.toolchain import compile_module
    from netc.toolchain.sass import disassemble, innermost_loops, instruction_mix

    graph = load_string(text, f"{name}.net", base_dir=EXAMPLES)
    overrides = {layer: parse_tile(tile) for layer, tile in tiles.items()}
    report = explain(graph, 2, arch, batch=batch, overrides=overrides)
    plan = compile_graph(graph, CompileOptions(arch=arch, batch=batch,
                                               tile_overrides=overrides)).plan
    sass = disassemble(compile_module(plan.source, plan.module, archs=(arch,)).target(arch).cubin)
    lines = [f"## {name} ({arch}, batch {batch}): {len(report.kernels)} kernels, roofline "
             f"{report.roofline_time_s * 1e6:.1f} us, predicted {report.predicted_time_s * 1e6:.1f} us",
             "", "| kernel | tile | blocks | regs | per SM | fill | roofline us | predicted us | "
             "hot loop: instructions, top opcodes |", "| --- | --- | --- | --- | --- | --- | --- "
             "| --- | --- |"]
    for k in report.kernels:
        c = k.cost
        mix = hot_loop_mix(innermost_loops(sass.get(k.functions[-1], ())), instruction_mix)
        total = sum(mix.values())
        shown = ", ".join(f"{op} {n} ({n / total:.0%})" for op, n in mix.most_common(top)) \
            if total else "no loop"
        lines.append(f"| {k.node} {k.what} | {k.tile} | {c.blocks} | {c.registers} | "
                     f"{c.blocks_per_sm} ({c.occupancy:.0%} {c.limiter}) | {c.utilisation:.0%} | "
                     f"{k.seconds * 1e6:.2f} | {c.predicted_time_s * 1e6:.2f} | "
                     f"{sum(mix.values())}: {shown} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--cases", help="comma-separated names (default: all): "
                        + ", ".join(cases()))
    parser.add_argument("--top", type=int, default=4, help="opcodes shown per main loop")
    args = parser.parse_args(argv)
    chosen = cases()
    names = args.cases.split(",") if args.cases else list(chosen)
    unknown = [n for n in names if n not in chosen]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(chosen)}")
    for name in names:
        text, batch, tiles = chosen[name]
        print("\n".join(report(name, text, batch, tiles, args.arch, args.top)) + "\n",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
