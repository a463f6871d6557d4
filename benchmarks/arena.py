"""The memory plan that runs, per example: launches, arena, sum of intermediates, buffers in place.

    python benchmarks/arena.py [examples/resnet50.net ...] [--batch 1] [-O 2]
    python benchmarks/arena.py --train examples/train_resnet18.net --batch 8

The plan is the one every entry point compiles (`netc.driver.compile_graph`); its arena is the
one the executor allocates (`LaunchPlan.memory_plan`). With `--train`, each file's `train`
section is planned instead: the training step's graph as `netc train` compiles it on cudasim
and cuda (`Trainer.graph`: forward in training mode, loss, backward), whose intermediates
include the activations the backward pass keeps. No GPU is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netc.driver import CompileOptions, compile_graph
from netc.frontend import load_file, load_training
from netc.ir import Graph
from netc.text import format_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ("resnet18.net", "resnet50.net", "transformer.net")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="default: ResNet-18, ResNet-50, transformer")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("-O", dest="level", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--train", action="store_true",
                        help="plan each file's training step (its train section) instead")
    args = parser.parse_args()
    models = args.models or [str(ROOT / "examples" / name) for name in DEFAULT]
    rows = [("network", "launches", "arena", "intermediates", "in place")]
    for model in models:
        graph = training_step(model) if args.train else load_file(model)
        plan = compile_graph(graph, CompileOptions(level=args.level)).plan
        memory = plan.memory_plan(plan.every_dim(args.batch))
        rows.append((Path(model).stem, str(len(plan.launches)),
                     f"{memory.arena_bytes / 1e6:.2f} MB", f"{memory.total_bytes / 1e6:.2f} MB",
                     str(memory.inplace_count)))
    print(f"-O{args.level}, batch {args.batch}")
    print("\n".join(format_table(rows, right={1, 2, 3, 4})))


def training_step(path: str) -> Graph:
    """The graph of one training step of the file's train section, as the Trainer runs it."""
    from netc.training import Trainer

    return Trainer(load_training(path), {}).graph


if __name__ == "__main__":
    main()
