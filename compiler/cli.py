"""The `netc` command line.

Exit codes: 0 success, 1 an error in the user's input (diagnostics on stderr), 2 a fault inside
netc (a bug: one line says so; NETC_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netc.diagnostics import CompileError, Diagnostic
from netc.ir import Graph, format_shape


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> Graph:
    from netc.frontend import load_file

    return load_file(args.model, getattr(args, "network", None))


def _human(count: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count:.0f}"


# netc check -----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from netc.api import Model
    from netc.ir import print_graph

    started = time.perf_counter()
    graph = _load(args)
    elapsed = time.perf_counter() - started
    if args.print_ir:
        print(print_graph(graph))
        return 0
    model = Model(graph)
    rows = [("layer", "op", "output", "params", "FLOPs", "source")]
    for layer in model.layers:
        where = f"{Path(layer.span.file).name}:{layer.span.line}" if layer.span else ""
        rows.append((layer.name, layer.op, f"{layer.dtype}{format_shape(layer.shape)}",
                     f"{layer.params:,}" if layer.params else "-", _human(layer.flops), where))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"network {graph.name}")
    for name, (dtype, shape) in model.inputs.items():
        print(f"  input  {name}: {dtype}{format_shape(shape)}")
    for name, node_id in graph.outputs:
        print(f"  output {name}: {graph[node_id].type}")
    print()
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) if i < 3 or i == 5 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    layers = model.layers
    total_flops = sum(layer.flops for layer in layers)
    trainable = model.parameter_count(trainable_only=True)
    buffers = model.parameter_count() - trainable
    extra = f" (+ {buffers:,} in running statistics)" if buffers else ""
    print()
    print(f"{len(layers)} ops, {trainable:,} parameters{extra}, {_human(total_flops)}FLOPs per "
          f"batch item; checked in {elapsed * 1000:.0f} ms")
    return 0


# netc init ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from netc.weights import init_weights, save_weights

    graph = _load(args)
    weights = init_weights(graph, args.seed)
    save_weights(weights, args.output)
    count = sum(int(np.prod(w.shape)) for w in weights.values())
    print(f"wrote {len(weights)} tensors ({count:,} parameters) to {args.output} "
          f"(seed {args.seed})")
    return 0


# netc run -------------------------------------------------------------------------------


def _read_inputs(graph: Graph, specs: Sequence[str]) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    problems: list[Diagnostic] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            problems.append(Diagnostic("E0404", f"--input `{spec}` is not of the form NAME=FILE.npy"))
            continue
        try:
            inputs[name] = np.asarray(np.load(file, allow_pickle=False), dtype=np.float32)
        except FileNotFoundError:
            problems.append(Diagnostic("E0405", f"input file `{file}` does not exist"))
        except (ValueError, OSError) as exc:
            problems.append(Diagnostic("E0405", f"cannot read input file `{file}` as a .npy "
                                       f"array: {exc}"))
    if problems:
        raise CompileError(problems)
    return inputs


def random_inputs(graph: Graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = dict.fromkeys(graph.batch_dims(), batch)
    return {n.id: rng.standard_normal(n.type.concrete(sizes)).astype(np.float32)
            for n in graph.inputs}


def _weights_for(graph: Graph, args: argparse.Namespace) -> dict[str, np.ndarray]:
    from netc.weights import init_weights, load_weights

    if args.weights:
        return load_weights(args.weights)
    _progress(f"note: no --weights given; using fresh weights initialised with seed {args.seed}")
    return init_weights(graph, args.seed)


def _inputs_for(graph: Graph, args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.random_input:
        if args.input:
            raise CompileError([Diagnostic("E0406", "give either --input or --random-input, "
                                           "not both")])
        return random_inputs(graph, args.batch, args.seed)
    if not args.input:
        names = ", ".join(f"{n.id}: {n.type}" for n in graph.inputs)
        raise CompileError([Diagnostic(
            "E0401", f"no inputs given; the network takes {names}",
            help="pass --input NAME=FILE.npy for each input, or --random-input [--batch B]")])
    return _read_inputs(graph, args.input)


def _summary(name: str, value: np.ndarray) -> str:
    finite = value[np.isfinite(value)]
    stats = (f"min {finite.min():.4g}  mean {finite.mean():.4g}  max {finite.max():.4g}"
             if finite.size else "no finite values")
    bad = value.size - finite.size
    return f"  {name}: {format_shape(value.shape)}  {stats}" + (f"  ({bad} non-finite)" if bad else "")


def cmd_run(args: argparse.Namespace) -> int:
    from netc.backends import default_backend, prepare
    from netc.weights import write_npz

    graph = _load(args)
    weights = _weights_for(graph, args)
    inputs = _inputs_for(graph, args)
    backend = args.backend
    if backend is None:
        backend, note = default_backend()
        if note:
            _progress(note)
    started = time.perf_counter()
    run = prepare(backend, graph, weights)
    outputs = run(inputs)
    elapsed = time.perf_counter() - started
    print(f"{graph.name} on {backend} ({elapsed:.2f} s):")
    for name, value in outputs.items():
        print(_summary(name, value))
    if args.output:
        if not args.output.endswith(".npz"):
            raise CompileError([Diagnostic("E0407", f"output file `{args.output}` must end in .npz")])
        write_npz(outputs, args.output)
        print(f"wrote {', '.join(outputs)} to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netc", formatter_class=_formatter,
        description="netc compiles neural networks written in the .net language into checked "
                    "CUDA kernels, ONNX and TensorRT engines.",
        epilog="examples:\n  netc check examples/lenet5.net\n"
               "  netc run examples/lenet5.net --random-input --backend reference\n\n"
               "Run `netc COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"netc {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def sub(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=summary, description=summary,
                                      epilog="example:\n  " + example, formatter_class=_formatter)
        command.add_argument("model", metavar="MODEL", help="the .net file")
        command.add_argument("--network", metavar="NAME",
                             help="which network of the file (default: the only or the last one)")
        return command

    check = sub("check", "Parse and type-check a model; print its layers with output shapes, "
                "parameter counts and FLOPs.", "netc check examples/resnet18.net")
    check.add_argument("--print-ir", action="store_true", help="print the graph IR instead")
    check.set_defaults(handler=cmd_check)

    init = sub("init", "Write freshly initialised weights (PyTorch's default initialisation).",
               "netc init examples/lenet5.net -o lenet5.safetensors --seed 0")
    init.add_argument("-o", "--output", required=True, metavar="WEIGHTS",
                      help="the weights file to write (.safetensors or .npz)")
    init.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    init.set_defaults(handler=cmd_init)

    run = sub("run", "Run a model on inputs and write every output to an .npz file.",
              "netc run examples/lenet5.net --weights lenet5.safetensors "
              "--input image=digits.npy -o out.npz\n"
              "  netc run examples/lenet5.net --random-input --batch 4 --backend reference")
    run.add_argument("--weights", metavar="WEIGHTS",
                     help="weights file (.safetensors or .npz); default: fresh weights from --seed")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="an input array (repeat for several inputs)")
    run.add_argument("--random-input", action="store_true",
                     help="draw standard-normal inputs instead of reading files")
    run.add_argument("--batch", type=_positive, default=1, help="batch size for --random-input")
    run.add_argument("--seed", type=int, default=0, help="seed for random inputs and weights")
    run.add_argument("--backend", choices=("reference", "cudasim", "cuda", "onnx", "tensorrt"),
                     help="reference (NumPy), cudasim (the generated CUDA on the CPU simulator), "
                          "cuda (PyCUDA on a GPU), onnx (onnxruntime), tensorrt; default: cuda "
                          "when a GPU is present, else cudasim")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="write every output here")
    run.set_defaults(handler=cmd_run)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _version() -> str:
    from netc import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args))
    except CompileError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from netc.backends import BackendUnavailable

        if isinstance(exc, BackendUnavailable):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in netc, not in your model; please report it "
              "(set NETC_DEBUG=1 to see the traceback).", file=sys.stderr)
        if os.environ.get("NETC_DEBUG"):
            traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
