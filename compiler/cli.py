"""The `netc` command line.

Exit codes: 0 success, 1 an error in the user's input (diagnostics on stderr), 2 a fault inside
netc (a bug: one line says so; NETC_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import numpy as np

from netc.codegen.targets import ARCHS, DEFAULT_ARCH
from netc.diagnostics import CompileError, Diagnostic, did_you_mean, printable
from netc.ir import Graph, TensorType, format_shape
from netc.text import format_table

if TYPE_CHECKING:
    from netc.codegen.tiles import MatrixTile
    from netc.driver import CompileOptions
    from netc.passes.pipeline import Optimized
    from netc.plan import Launch, LaunchPlan


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as the user's mistake: exit status 1 (argparse
    exits 2, which netc keeps for its own bugs)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _StatusLine:
    """One line of stderr, redrawn in place and cleared by `done()`; nothing at all when
    stderr is not a terminal (pipes, CI, files)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        text = text[:shutil.get_terminal_size().columns - 1]
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = max(self.width, len(text))

    def done(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


class _LaunchProgress(_StatusLine):
    """`[12/23] netc_conv2d_f32_... (resnet18.net:14)`, redrawn before each kernel launch once
    a run has taken `$NETC_PROGRESS_DELAY` seconds (default 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.delay = float(os.environ.get("NETC_PROGRESS_DELAY", "1"))

    def __call__(self, index: int, count: int, launch: Launch) -> None:
        if not self.enabled or time.perf_counter() - self.started < self.delay:
            return
        where = f" ({Path(launch.source).name})" if launch.source else ""
        self.show(f"[{index + 1}/{count}] {launch.kernel}{where}")


def _load(args: argparse.Namespace) -> Graph:
    from netc.frontend import load_file

    return load_file(args.model, getattr(args, "network", None))


def _optimize(graph: Graph, args: argparse.Namespace, level: int | None = None,
              batch: int = 1) -> Optimized:
    """`graph` through the `-O` pipeline alone, for commands that show the optimised graph
    without generating code (`check -O`, `graph`); one line of progress on stderr."""
    from netc.passes.pipeline import run_pipeline

    optimized = run_pipeline(graph, args.level if level is None else level,
                             dump_dir=getattr(args, "dump_ir", None), batch=batch)
    _progress(optimized.log().splitlines()[0])
    if getattr(args, "dump_ir", None):
        _progress(f"wrote the IR after each pass to {args.dump_ir}")
    return optimized


def _tile_overrides(args: argparse.Namespace) -> dict[str, MatrixTile]:
    from netc.codegen.tiling import parse_tile_overrides

    return parse_tile_overrides(getattr(args, "tile", None) or [])


def _compile_options(args: argparse.Namespace, arch: str = DEFAULT_ARCH) -> CompileOptions:
    """The compile driver's options from the command line (`-O`, `--tile`, `--tuning-db`,
    `--dump-ir`); tiles are chosen for `arch` at batch 1, whatever the inputs' batch."""
    from netc.driver import CompileOptions

    return CompileOptions(level=args.level, arch=arch, tile_overrides=_tile_overrides(args),
                          tuning_db=getattr(args, "tuning_db", None),
                          dump_ir=getattr(args, "dump_ir", None),
                          precision=getattr(args, "precision", "f32"))


def _human(count: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count:.0f}"


# netc check -----------------------------------------------------------------------------


def _check_training(args: argparse.Namespace, network: str) -> None:
    """`netc check` also checks the network's `train` section, if the file has one, and
    summarises it."""
    from netc.frontend import load_training, parse
    from netc.weights import param_specs

    module = parse(Path(args.model).read_text(encoding="utf-8"), args.model)
    if not any(train.network.text == network for train in module.trains):
        return
    spec = load_training(args.model, network)
    hyper = ", ".join(f"{key}={_setting(value)}" for key, value in spec.optimizer.hyper.items())
    specs = param_specs(spec.graph)
    trained = sum(math.prod(specs[p].shape) for p in spec.trainable if p in specs)
    schedule = spec.schedule.kind + (f", warmup {spec.schedule.warmup} steps"
                                     if spec.schedule.warmup else "")
    print()
    print(f"train {network}: loss {spec.graph[dict(spec.graph.outputs)['loss']].op}, "
          f"{spec.optimizer.name}({hyper}), schedule {schedule}")
    print(f"  {trained:,} parameters trained"
          + (f"; frozen: {', '.join(spec.frozen)}" if spec.frozen else "")
          + (f"; gradients clipped to norm {spec.clip_grad_norm:g}"
             if spec.clip_grad_norm is not None else ""))


def _setting(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_train(args: argparse.Namespace) -> int:
    from netc.frontend import load_file, load_training
    from netc.training import Trainer, fit, load_checkpoint, load_dataset
    from netc.weights import WEIGHT_SUFFIXES, save_weights

    if Path(args.output).suffix not in WEIGHT_SUFFIXES:
        raise CompileError([Diagnostic("E0413", f"cannot write weights to `{args.output}`: the "
                                       "file name must end in .safetensors or .npz")])
    spec = load_training(args.model, args.network)
    data = load_dataset(args.data, spec)
    val = load_dataset(args.val, spec) if args.val else None
    count = len(next(iter(data.values())))
    per_epoch = -(-count // args.batch)
    total = args.steps or (args.epochs or 1) * per_epoch
    if args.resume:
        weights, state, meta = load_checkpoint(args.resume)
        given = {"seed": str(args.seed), "batch": str(args.batch),
                 "shuffle": str(not args.no_shuffle), "network": spec.network,
                 "precision": args.precision}
        meta.setdefault("precision", "f32")  # written before mixed precision
        differ = [f"{key} {meta.get(key)} (now {value})" for key, value in given.items()
                  if meta.get(key) != value]
        if differ:
            raise CompileError([Diagnostic(
                "E0462", f"`{args.resume}` was written by a run with " + ", ".join(differ),
                help="resume with the options of the run that wrote it")])
    else:  # as `netc init --seed S` / `netc run --weights` make them for the network
        weights, state = _weights_for(load_file(args.model, spec.network), args), None
    trainer = Trainer(spec, weights, backend=args.backend, seed=args.seed,
                      precision=args.precision)
    if state is not None:
        trainer.state = state
        if trainer.scaler is not None:  # f16-mixed: the loss scale where the run was
            trainer.scaler.load(meta)
    bar = _TrainProgress()
    _progress(f"training {spec.network}: {count:,} examples, batches of {args.batch}, "
              f"{total - trainer.state.steps} steps from step {trainer.state.steps}")
    try:
        ended = fit(trainer, data, batch=args.batch, total_steps=total,
                    shuffle=not args.no_shuffle, seed=args.seed, val=val,
                    checkpoint_dir=args.checkpoint_dir, progress=bar)
    except KeyboardInterrupt:
        bar.done()
        print(f"interrupted after step {trainer.state.steps}; checkpoints already written "
              "are intact", file=sys.stderr)
        return 130
    bar.done()
    for end in ended:
        extra = "" if end.val_loss is None else f", val loss {end.val_loss:.4f}"
        extra += "" if end.val_accuracy is None else f", val accuracy {end.val_accuracy:.2%}"
        extra += f" (checkpoint {end.checkpoint})" if end.checkpoint else ""
        print(f"epoch {end.epoch}: loss {end.loss:.4f}{extra}, {end.seconds:.1f} s")
    # The training graph adds no parameters: its params are the network's.
    save_weights(trainer.weights, args.output)
    print(f"wrote {len(trainer.weights)} tensors to {args.output}")
    return 0


class _TrainProgress(_StatusLine):
    """`epoch 2/5 [#####.....] 23/45 loss 0.4312 1,234 ex/s 0:12 left` after each step (the
    per-epoch lines follow the run)."""

    def __call__(self, at: Any) -> None:
        if not self.enabled:
            return
        filled = 20 * at.batch // at.batches
        left = int(at.seconds_left)
        self.show(f"epoch {at.epoch}/{at.epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                  f"{at.batch}/{at.batches} loss {at.loss:.4f} {at.examples_per_s:,.0f} ex/s "
                  f"{left // 60}:{left % 60:02d} left")


def cmd_check(args: argparse.Namespace) -> int:
    from netc.api import Model
    from netc.ir import print_graph

    started = time.perf_counter()
    graph = _load(args)
    elapsed = time.perf_counter() - started
    # The source graph is what `check` is about; -O (or --dump-ir) runs the pipeline as well.
    optimized = None
    if args.level is not None or args.dump_ir:
        optimized = _optimize(graph, args, 2 if args.level is None else args.level)
    if args.print_ir:
        print(print_graph(optimized.graph if optimized and args.level is not None else graph))
        return 0
    model = Model(graph)
    rows = [("layer", "op", "output", "params", "FLOPs", "source")]
    for layer in model.layers:
        where = f"{Path(layer.span.file).name}:{layer.span.line}" if layer.span else ""
        rows.append((layer.name, layer.op, f"{layer.dtype}{format_shape(layer.shape)}",
                     f"{layer.params:,}" if layer.params else "-", _human(layer.flops), where))
    print(f"network {graph.name}")
    for name, (dtype, shape) in model.inputs.items():
        print(f"  input  {name}: {dtype}{format_shape(shape)}")
    for name, node_id in graph.outputs:
        print(f"  output {name}: {graph[node_id].type}")
    print()
    print("\n".join(format_table(rows, right={3, 4})))
    layers = model.layers
    total_flops = sum(layer.flops for layer in layers)
    trainable = model.parameter_count(trainable_only=True)
    buffers = model.parameter_count() - trainable
    extra = f" (+ {buffers:,} in running statistics)" if buffers else ""
    print()
    print(f"{len(layers)} ops, {trainable:,} parameters{extra}, {_human(total_flops)}FLOPs per "
          f"batch item; checked in {elapsed * 1000:.0f} ms")
    _check_training(args, graph.name)
    if optimized is not None:
        print()
        print(optimized.log())
    _warn_backend_limits(graph)
    return 0


CHECK_COMPILE_LIMIT = 5000
"""`check` tries the CUDA compile for networks up to this many nodes (it costs about as much as
the front end; a larger network is checked without it)."""


def _warn_backend_limits(graph: Graph) -> None:
    """What `check` accepts, `compile` must not refuse by surprise: a valid network beyond a
    limit of the CUDA backend (a grid too large) is said here as a
    warning (E0450), and the other backends still run it."""
    if len(graph.nodes) > CHECK_COMPILE_LIMIT:
        return
    from dataclasses import replace

    from netc.driver import compile_graph

    try:
        compile_graph(graph)
    except CompileError as exc:
        for diagnostic in exc.diagnostics:
            print(replace(diagnostic, severity="warning").render(exc.sources), file=sys.stderr)


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


def _read_inputs(specs: Sequence[str]) -> dict[str, np.ndarray]:
    from netc.weights import load_array

    inputs: dict[str, np.ndarray] = {}
    problems: list[Diagnostic] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            problems.append(Diagnostic("E0404", f"--input `{spec}` is not of the form NAME=FILE.npy"))
            continue
        try:
            inputs[name] = load_array(file, name)
        except CompileError as exc:
            problems.extend(exc.diagnostics)
    if problems:
        raise CompileError(problems)
    return inputs


def _weights_for(graph: Graph, args: argparse.Namespace) -> dict[str, np.ndarray]:
    from netc.weights import init_weights, load_state_dict

    if args.weights:  # a state dict by name: .safetensors, .npz, .pt or .pth
        return load_state_dict(graph, args.weights)
    _progress(f"note: no --weights given; using fresh weights initialised with seed {args.seed}")
    return init_weights(graph, args.seed)


def _inputs_for(declared: Mapping[str, TensorType],
                args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The inputs of `--input` or `--random-input` for a network that takes `declared`."""
    if args.random_input:
        if args.input:
            raise CompileError([Diagnostic("E0406", "give either --input or --random-input, "
                                           "not both")])
        from netc.reference import random_arrays

        return random_arrays(declared, args.batch, args.seed, _dim_sizes(declared, args.dim))
    if args.dim:
        raise CompileError([Diagnostic(
            "E0417", "--dim sets the sizes of --random-input; the --input arrays give theirs",
            help="drop --dim, or use --random-input")])
    if not args.input:
        names = ", ".join(f"{name}: {tensor}" for name, tensor in declared.items())
        raise CompileError([Diagnostic(
            "E0401", f"no inputs given; the network takes {names}",
            help="pass --input NAME=FILE.npy for each input, or --random-input [--batch B]")])
    return _read_inputs(args.input)


def _dim_sizes(declared: Mapping[str, TensorType], given: Sequence[str]) -> dict[str, int]:
    """`--dim T=11 --dim S=4` as sizes by name, each a named dimension of the inputs."""
    names = [d for t in declared.values() for d in t.symbolic]
    sizes: dict[str, int] = {}
    problems: list[Diagnostic] = []
    for text in given:
        name, equals, size = text.partition("=")
        if not equals or not name or not size.isdigit() or int(size) < 1:
            problems.append(Diagnostic("E0416", f"--dim {text!r} is not NAME=SIZE with a "
                                       "positive size", help="for example --dim T=11"))
        elif name not in names:
            known = ", ".join(dict.fromkeys(names)) or "none"
            problems.append(Diagnostic(
                "E0417", f"--dim {name}: the inputs have no named dimension `{name}` (they "
                f"have {known})", help=did_you_mean(name, names)))
        elif name in sizes and sizes[name] != int(size):
            problems.append(Diagnostic("E0416", f"--dim {name} is given twice, as "
                                       f"{sizes[name]} and {int(size)}"))
        else:
            sizes[name] = int(size)
    if problems:
        raise CompileError(problems)
    return sizes


def _summary(name: str, value: np.ndarray) -> str:
    finite = value[np.isfinite(value)]
    stats = (f"min {finite.min():.4g}  mean {finite.mean():.4g}  max {finite.max():.4g}"
             if finite.size else "no finite values")
    bad = value.size - finite.size
    return f"  {name}: {format_shape(value.shape)}  {stats}" + (f"  ({bad} non-finite)" if bad else "")


def _backend(args: argparse.Namespace) -> str:
    from netc.backends import default_backend

    if args.backend is not None:
        return str(args.backend)
    backend, note = default_backend()
    if note:
        _progress(note)
    return backend


def _check_output(args: argparse.Namespace) -> None:
    """`-o` must be an `.npz` file that is none of the command's inputs (checked before any
    work is done)."""
    if not args.output:
        return
    if not args.output.endswith(".npz"):
        raise CompileError([Diagnostic("E0407", f"output file `{args.output}` must end in .npz")])
    output = Path(args.output)
    given = [args.model, args.weights or "", *(spec.partition("=")[2] for spec in args.input)]
    for path in given:
        if path and _same_file(Path(path), output):
            raise CompileError([Diagnostic(
                "E0432", f"output file `{args.output}` is also one of this command's inputs "
                f"(`{path}`); writing it would destroy that input",
                help="choose another output file")])


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from netc.backends import PLAN_BACKENDS, prepare

    _check_output(args)
    if Path(args.model).is_dir():
        return _run_artifact(args)
    graph = _load(args)
    weights = _weights_for(graph, args)
    inputs = _inputs_for({n.id: n.type for n in graph.inputs}, args)
    backend = _backend(args)
    options: dict[str, object] = _graph_option(args, backend)
    if backend in PLAN_BACKENDS:
        from netc.driver import compile_graph

        options["compiled"] = compile_graph(graph, _compile_options(args), progress=_progress)
    else:
        options["precision"] = args.precision  # the plan backends': in `compiled`
        if args.dump_ir:
            _optimize(graph, args)
    started = time.perf_counter()
    progress = _LaunchProgress()
    run = prepare(backend, graph, weights, **options, progress=progress)
    outputs = _repeat(run, inputs, progress, args.repeat)
    _report_outputs(graph.name, backend, time.perf_counter() - started, outputs, args)
    return 0


def _graph_option(args: argparse.Namespace, backend: str) -> dict[str, object]:
    if args.cuda_graph and backend != "cuda":
        raise CompileError([Diagnostic(
            "E0420", f"--cuda-graph needs the cuda backend, not `{backend}`",
            help="drop --cuda-graph, or run on a GPU with --backend cuda")])
    return {} if args.cuda_graph is None else {"cuda_graph": args.cuda_graph}


def _repeat(run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
            inputs: Mapping[str, np.ndarray], progress: _LaunchProgress,
            times: int) -> dict[str, np.ndarray]:
    """Run `times` times; past one, print the first run's time and the median of the rest."""
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        outputs = run(inputs)
        seconds.append(time.perf_counter() - began)
        progress.done()
    if times > 1:
        print(f"{times} runs: first {seconds[0] * 1e3:.3f} ms, then median "
              f"{statistics.median(seconds[1:]) * 1e3:.3f} ms a run (inputs uploaded and "
              f"outputs downloaded each time)")
    return outputs


def _report_outputs(network: str, backend: str, elapsed: float,
                    outputs: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    from netc.weights import write_npz

    print(f"{network} on {backend} ({elapsed:.2f} s):")
    for name, value in outputs.items():
        print(_summary(name, value))
    if args.output:
        write_npz(outputs, args.output)
        print(f"wrote {', '.join(outputs)} to {args.output}")


def _run_artifact(args: argparse.Namespace) -> int:
    """`netc run DIR`: a compiled artifact, on its own binaries and weights."""
    from netc.artifacts import load_artifact
    from netc.backends import prepare_artifact

    artifact = load_artifact(args.model)
    weights = None
    if args.weights:
        from netc.weights import load_weights

        weights = load_weights(args.weights)
    inputs = _inputs_for({b.node: TensorType(b.dtype, b.shape)
                          for b in artifact.plan.buffers if b.role == "input"}, args)
    backend = _backend(args)
    graph_option = _graph_option(args, backend)
    started = time.perf_counter()
    progress = _LaunchProgress()
    run = prepare_artifact(artifact, backend, weights, progress=progress, **graph_option)
    outputs = _repeat(run, inputs, progress, args.repeat)
    _report_outputs(artifact.network, backend, time.perf_counter() - started, outputs, args)
    return 0


# netc compile ---------------------------------------------------------------------------


MIN_ARCH = 80
"""netc's kernels need sm_80 or newer (bf16 arithmetic, cp.async); tiling plans for sm_80+."""


def _archs(text: str) -> tuple[str, ...]:
    archs = tuple(part.strip() for part in text.split(",") if part.strip())
    for arch in archs:
        if not arch.startswith("sm_") or not arch[3:].isdigit():
            raise argparse.ArgumentTypeError(f"`{arch}` is not an architecture like sm_90")
        if int(arch[3:]) < MIN_ARCH:
            raise argparse.ArgumentTypeError(
                f"`{arch}` is older than netc supports: its kernels need sm_{MIN_ARCH} or newer "
                "(e.g. sm_80, sm_86, sm_89, sm_90)")
    if not archs:
        raise argparse.ArgumentTypeError("give at least one architecture, e.g. sm_90")
    return archs


def cmd_compile(args: argparse.Namespace) -> int:
    from netc.artifacts import check_destination

    if args.output:
        check_destination(args.output)  # before any work is done
    if args.target == "cuda":
        _check_compiler_archs(args.arch, args.compiler)
    graph = _load(args)
    out_dir = Path(args.output or Path("build") / graph.name)
    if not args.output:
        check_destination(out_dir)
    # An intact artifact may be replaced, but not when this command reads one of its files.
    for path in (args.model, args.weights):
        if path and Path(path).exists() and Path(out_dir).exists() and \
                Path(out_dir).resolve() in Path(path).resolve().parents:
            raise CompileError([Diagnostic(
                "E0432", f"output directory `{out_dir}` holds `{path}`, an input of this "
                "command; replacing the directory would delete it",
                help="choose another output directory")])
    if args.target == "cuda":
        written = _compile_cuda(graph, args, out_dir)
    else:
        written = _compile_onnx(graph, args, out_dir)
    print(f"wrote {written}")
    return 0


def _newest(archs: Sequence[str]) -> str:
    return max(archs, key=lambda arch: int(arch[3:]))


def _compile_cuda(graph: Graph, args: argparse.Namespace, out_dir: Path) -> Path:
    from netc.artifacts import OPTIMIZATION, WEIGHTS, format_report, write_artifacts
    from netc.codegen.tiling import format_tile_table
    from netc.driver import compile_graph
    from netc.toolchain import compile_module

    weights = None
    if args.weights:
        from netc.weights import load_state_dict

        weights = load_state_dict(graph, args.weights)
    # One module serves every --arch; its tiles are chosen for the newest of them.
    tile_arch = _newest(args.arch)
    options = _compile_options(args, tile_arch)
    compiled = compile_graph(graph, options, progress=_progress)
    plan = compiled.plan
    started = time.perf_counter()
    _progress(f"compiling for {', '.join(args.arch)} ({args.compiler})...")
    binary = compile_module(plan.source, plan.module, archs=args.arch, compiler=args.compiler)
    _progress(f"compiled in {time.perf_counter() - started:.2f} s")
    report = (format_report(plan, binary) + f"\ntiles (chosen for {tile_arch}, batch 1)\n"
              + format_tile_table(compiled.tiles) + "\n")
    optimized = compiled.optimized
    optimization = {
        "level": optimized.level,
        "tile_arch": tile_arch,
        "tiles": [choice.to_json() for choice in compiled.tiles],
        # The plan's parameters that the source network lacks, and how to derive them from
        # the original weights file (netc.passes.weight_transforms.RULES).
        "weight_transforms": [{"output": t.output, "rule": t.rule, "inputs": list(t.inputs),
                               "attrs": dict(t.attrs)} for t in optimized.transforms],
    }
    extra = {OPTIMIZATION: (json.dumps(optimization, indent=2) + "\n").encode()}
    if weights is not None:
        from netc.weights import weights_bytes

        extra[WEIGHTS] = weights_bytes(compiled.optimized.derive_weights(weights))
    simulator, library = _simulator_build(plan)
    if library is not None:
        extra[Path(simulator["file"]).name] = library
    info = {"source": {"file": Path(args.model).name,
                       "sha256": hashlib.sha256(Path(args.model).read_bytes()).hexdigest()},
            "options": {**options.to_json(), "archs": list(args.arch),
                        "compiler": binary.compiler},
            "simulator": simulator if library is not None else None}
    written = write_artifacts(plan, binary, out_dir, report, extra, info)
    print(report)
    return written


def _check_compiler_archs(archs: Sequence[str], compiler: str) -> None:
    """Every `--arch` must be one the CUDA compiler can build for (E0443)."""
    from netc.toolchain import supported_archs

    supported = supported_archs(compiler)
    unknown = [arch for arch in archs if arch not in supported]
    if unknown:
        raise CompileError([Diagnostic(
            "E0443", f"the CUDA compiler cannot build for {', '.join(unknown)}",
            help="it supports " + ", ".join(a for a in supported
                                            if a[3:].isdigit() and int(a[3:]) >= MIN_ARCH))])


def _simulator_build(plan: LaunchPlan) -> tuple[dict[str, Any], bytes | None]:
    """The CPU simulator's build of the plan's module for this machine, for the artifact
    (its record for the manifest, and the library's bytes); none without a C++ compiler."""
    import platform

    from netc.sim import CudaSim, SimulatorError

    if not plan.kernels:
        return {}, None
    try:
        with CudaSim() as simulator:
            binary = simulator.build(plan.source, plan.kernels, name=plan.module)
            library = Path(binary.path).read_bytes()
    except SimulatorError as exc:
        _progress(f"note: the artifact holds no build for the CPU simulator: {exc}")
        return {}, None
    return {**binary.to_json(), "file": f"{plan.module}.cudasim.so",
            "machine": platform.machine(), "system": platform.system()}, library


def _compile_onnx(graph: Graph, args: argparse.Namespace, out_dir: Path) -> Path:
    from netc.artifacts import write_directory
    from netc.onnx.export import export_graph, save_model
    from netc.precision import with_precision
    from netc.weights import check_weights

    if args.dump_ir:
        _optimize(graph, args)  # only for the dump: ONNX and TensorRT get the source graph

    weights = _weights_for(graph, args)
    check_weights(graph, weights, source=args.weights or "weights")
    model = export_graph(with_precision(graph, args.precision), weights)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / f"{graph.name}.onnx"
        save_model(model, onnx_path)
        if args.target == "tensorrt":
            summary = _build_tensorrt(onnx_path, args)
            # The build ran in a scratch folder that becomes out_dir: name the final place.
            print(summary.replace(str(onnx_path.parent), str(out_dir.absolute())))
        files = {path.name: path.read_bytes() for path in sorted(Path(scratch).iterdir())}
    return write_directory(out_dir, files, {"target": args.target, "network": graph.name})


def _build_tensorrt(onnx_path: Path, args: argparse.Namespace) -> str:
    from netc.backends.tensorrt import build_engine
    from netc.cache import cache_root

    build = build_engine(onnx_path, onnx_path.parent, fp16=args.fp16, int8=args.int8,
                         calibration_dir=args.calibration_data, batch=args.batch_range,
                         timing_cache=cache_root() / "tensorrt.timing-cache", log=_progress)
    return build.summary()


def _batch_range(text: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN:OPT:MAX, e.g. 1:8:32") from None
    if not 1 <= low <= opt <= high:
        raise argparse.ArgumentTypeError("need 1 <= MIN <= OPT <= MAX")
    return (low, opt, high)


# netc import / netc compare -------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from netc.onnx.importer import import_onnx

    if not Path(args.onnx).is_file():
        why = "is not a regular file" if Path(args.onnx).exists() else "does not exist"
        raise CompileError([Diagnostic("E0601", f"ONNX file `{args.onnx}` {why}")])
    net = Path(args.output)
    weights = Path(args.weights_out) if args.weights_out else net.with_suffix(".safetensors")
    for output in (net, weights):
        if _same_file(Path(args.onnx), output):
            raise CompileError([Diagnostic(
                "E0432", f"output `{output}` is the ONNX file being imported; writing it would "
                "destroy the input", help="choose another output file")])
    imported = import_onnx(args.onnx)
    net_path, weights_path = imported.write(args.output, args.weights_out)
    for note in imported.notes:
        _progress(f"note: {note}")
    print(f"wrote network `{imported.network}` to {net_path} and its weights to {weights_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from netc.compare import compare
    from netc.precision import TOLERANCES

    graph = _load(args)
    weights = _weights_for(graph, args)
    inputs = _inputs_for({n.id: n.type for n in graph.inputs}, args)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    progress = _LaunchProgress()
    rtol, atol = TOLERANCES[args.precision]
    report = compare(graph, weights, inputs, backends, layers=args.layers,
                     rtol=rtol if args.rtol is None else args.rtol,
                     atol=atol if args.atol is None else args.atol,
                     compile_options=_compile_options(args),
                     options={name: {"progress": progress} for name in ("cudasim", "cuda")})
    progress.done()
    print(report.format())
    return 0 if report.agree else 3


# netc explain ---------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from netc.explain import explain

    graph = _load(args)
    if args.dump_ir:
        _optimize(graph, args, batch=args.batch)
    report = explain(graph, args.level, args.arch, batch=args.batch,
                     overrides=_tile_overrides(args), tuning_db=args.tuning_db,
                     compile=not args.no_compile, precision=args.precision)
    sys.stdout.write(report.to_json() if args.json else report.format())
    return 0


# netc graph -----------------------------------------------------------------------------


def cmd_graph(args: argparse.Namespace) -> int:
    from netc.graphviz import format_for, write_graph
    from netc.passes.pipeline import run_pipeline

    graph = _load(args)
    if args.stage == "optimized":
        graph = run_pipeline(graph, args.level).graph
    written = format_for(args.output, args.format)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_graph(graph, output, written)
    print(f"wrote the {args.stage} graph of {graph.name} ({written}) to {output}")
    return 0


# the parser -----------------------------------------------------------------------------


def _add_optimization(command: argparse.ArgumentParser, default: int | None = 2,
                      what: str = "") -> None:
    default_text = (f"default {default}" if default is not None else
                    "default: show the source graph; with -O, the graph after that level")
    command.add_argument("-O", dest="level", type=int, choices=(0, 1, 2), default=default,
                         help="optimisation level: 0 the unfused plan (every op its own "
                              "kernel), 1 folding and cleanup, 2 also fusion and memory "
                              f"planning ({default_text}){what}")
    command.add_argument("--dump-ir", metavar="DIR",
                         help="write the IR before the first pass and after each pass to "
                              "DIR/NN_<pass>.txt (00_input.txt, 01_remove_dropout.txt, ...)")


def _add_precision(command: argparse.ArgumentParser) -> None:
    from netc.precision import PRECISIONS

    command.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                         help="store every f32 tensor of the network in f16 or bf16 (weights "
                              "converted once; GEMMs on tensor cores; kernels accumulate in "
                              "f32), or keep f32 and run dense and matmul on TF32 tensor cores "
                              "(tf32); default f32, the network as written")


def _add_tiling(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tile", action="append", default=[], metavar="LAYER=TILE",
                         help="override the tile of a dense/matmul/conv2d layer (repeatable), "
                              "e.g. basic_0.conv2d_1=bm32,bn32,bk8,tm4,tn4; `all=...` sets "
                              "every one; unnamed fields keep bm64,bn64,bk8,tm4,tn4")
    command.add_argument("--tuning-db", metavar="FILE",
                         help="a JSON tuning database whose entries (op, M, N, K, arch -> "
                              "tile) override the tiling heuristic (default: $NETC_TUNING_DB)")



def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        command.add_argument("model", metavar="MODEL",
                             help="the .net file" + (", or a directory `netc compile` wrote"
                                                     if name == "run" else ""))
        command.add_argument("--network", metavar="NAME",
                             help="which network of the file (default: the only or the last one)")
        return command

    check = sub("check", "Parse and type-check a model; print its layers with output shapes, "
                "parameter counts and FLOPs.", "netc check examples/resnet18.net\n"
                "  netc check examples/resnet18.net -O2 --print-ir --dump-ir ir/")
    check.add_argument("--print-ir", action="store_true",
                       help="print the graph IR instead (the optimised IR when -O is given)")
    _add_optimization(check, None, "; with -O the pass log follows the table")
    check.set_defaults(handler=cmd_check)

    init = sub("init", "Write freshly initialised weights (PyTorch's default initialisation).",
               "netc init examples/lenet5.net -o lenet5.safetensors --seed 0")
    init.add_argument("-o", "--output", required=True, metavar="WEIGHTS",
                      help="the weights file to write (.safetensors or .npz)")
    init.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    init.set_defaults(handler=cmd_init)

    train = sub("train", "Train a network with the `train` section of its file: forward, loss, "
                "gradients and optimizer step over batches of the data, for epochs or steps.",
                "netc train examples/train_lenet5.net --data digits_train.npz "
                "--val digits_test.npz --epochs 5 --batch 32 -o lenet5_trained.safetensors\n"
                "  netc train model.net --data d.npz --steps 100 --checkpoint-dir ckpt -o w.safetensors\n"
                "  netc train model.net --data d.npz --steps 200 --resume ckpt/step-000100.safetensors "
                "-o w.safetensors")
    train.add_argument("--data", required=True, metavar="TRAIN.npz",
                       help="one array per network input and per train-section input, keyed by "
                            "name, the examples along the first axis")
    train.add_argument("--weights", metavar="INIT",
                       help="initial weights (default: fresh, as `netc init --seed S` makes them)")
    train.add_argument("--val", metavar="VAL.npz",
                       help="validation data, as --data: the loss (and for a classification "
                            "loss the accuracy) after each epoch")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive, metavar="E",
                        help="passes over the data (default 1)")
    length.add_argument("--steps", type=_positive, metavar="K",
                        help="stop after K optimizer steps instead")
    train.add_argument("--batch", type=_positive, default=32, metavar="B",
                       help="examples a step (default 32; the last batch of an epoch may be "
                            "smaller)")
    train.add_argument("--no-shuffle", action="store_true",
                       help="take batches in order ([0:B], [B:2B], ...) instead of a seeded "
                            "shuffle per epoch")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the fresh weights and the shuffle (default 0)")
    train.add_argument("--backend", choices=("reference", "cudasim", "cuda"),
                       default="reference",
                       help="reference (NumPy; default), or the forward and backward kernels "
                            "as one launch plan on cudasim (the CPU simulator) or cuda (a GPU); "
                            "the optimizer update runs on the host")
    from netc.mixed_precision import PRECISIONS as TRAINING_PRECISIONS

    train.add_argument("--precision", choices=TRAINING_PRECISIONS,
                       default=TRAINING_PRECISIONS[0],
                       help="f32 (default), or the forward and backward pass stored in bf16 "
                            "or f16 with f32 master weights (f16-mixed with dynamic loss "
                            "scaling, as torch.amp.GradScaler; docs/training.md)")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="write a checkpoint (weights, optimizer state, step) after each "
                            "epoch and at the end, atomically, as DIR/step-NNNNNN.safetensors")
    train.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue a run from one of its checkpoints, exactly as if it had "
                            "not stopped (same data, --batch, --seed and shuffling)")
    train.add_argument("-o", "--output", required=True, metavar="TRAINED.safetensors",
                       help="the trained parameters and buffers under the network's names "
                            "(.safetensors or .npz), for `netc run --weights`")
    train.set_defaults(handler=cmd_train)

    run = sub("run", "Run a model on inputs and write every output to an .npz file.",
              "netc run examples/lenet5.net --weights lenet5.safetensors "
              "--input image=digits.npy -o out.npz\n"
              "  netc run examples/lenet5.net --random-input --batch 4 --backend reference\n"
              "  netc run examples/resnet18.net --random-input --backend cudasim -O1 "
              "--tile all=bm32,bn32\n"
              "  netc run build/lenet5 --input image=digits.npy   (what `netc compile` wrote; "
              "nothing is compiled)")
    _add_inputs(run, default_batch=1)
    run.add_argument("--backend", choices=("reference", "cudasim", "cuda", "onnx", "tensorrt"),
                     help="reference (NumPy), cudasim (the generated CUDA on the CPU simulator), "
                          "cuda (PyCUDA on a GPU), onnx (onnxruntime), tensorrt; default: cuda "
                          "when a GPU is present, else cudasim")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="write every output here")
    run.add_argument("--repeat", type=_positive, default=1, metavar="N",
                     help="run N times on the same inputs and print the median time of the "
                          "runs after the first (which launches kernel by kernel); default 1")
    run.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                     help="cuda backend: from the second run on (--repeat), replay the whole "
                          "plan from a CUDA graph, one driver call instead of one per kernel "
                          "(default: on where the driver has graphs)")
    _add_optimization(run, 2, "; cudasim and cuda run the optimised plan, the other backends "
                      "the source graph")
    _add_tiling(run)
    _add_precision(run)
    run.set_defaults(handler=cmd_run)

    compile_ = sub("compile", "Compile a model: CUDA kernels (source, PTX and a cubin per GPU "
                   "architecture, launch plan, report), an ONNX model, or a TensorRT engine.",
                   "netc compile examples/lenet5.net -o build/lenet5 --arch sm_80,sm_90\n"
                   "  netc compile examples/resnet18.net -O2 --tile basic_0.conv2d_1="
                   "bm64,bn64,bk8,tm4,tn4 --dump-ir ir/\n"
                   "  netc compile examples/lenet5.net --target onnx --weights w.safetensors "
                   "-o build/lenet5-onnx")
    compile_.add_argument("-o", "--output", metavar="DIR",
                          help="artifact directory, written atomically; an existing one is "
                               "replaced only if netc wrote all of it (default: build/NETWORK)")
    compile_.add_argument("--target", choices=("cuda", "onnx", "tensorrt"), default="cuda",
                          help="what to produce (default: cuda)")
    compile_.add_argument("--arch", type=_archs, default=("sm_80", "sm_90"), metavar="ARCH,...",
                          help="GPU architectures for --target cuda (default: sm_80,sm_90); "
                               "tiles are chosen for the newest")
    compile_.add_argument("--compiler", choices=("auto", "nvrtc", "nvcc"), default="auto",
                          help="device compiler: NVRTC from pip, or the toolkit's nvcc "
                               "(default: auto, NVRTC when it loads)")
    compile_.add_argument("--weights", metavar="WEIGHTS",
                          help="weights: for --target cuda kept in the artifact as the kernels "
                               "take them (folded), so `netc run DIR` needs none; for "
                               "--target onnx/tensorrt the initializers (default: fresh, from "
                               "--seed)")
    compile_.add_argument("--seed", type=int, default=0, help="seed for fresh weights")
    compile_.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    compile_.add_argument("--int8", action="store_true",
                          help="TensorRT: allow int8 kernels (needs --calibration-data)")
    compile_.add_argument("--calibration-data", metavar="DIR",
                          help="TensorRT int8: a folder of .npy sample inputs")
    compile_.add_argument("--batch", dest="batch_range", type=_batch_range, default=(1, 1, 1),
                          metavar="MIN:OPT:MAX", help="TensorRT: batch sizes of the optimization "
                          "profile (default 1:1:1)")
    _add_optimization(compile_, 2, "; for --target cuda (ONNX and TensorRT get the source "
                      "graph)")
    _add_tiling(compile_)
    _add_precision(compile_)
    compile_.set_defaults(handler=cmd_compile)

    graph = sub("graph", "Draw the network before or after optimisation: SVG (needs Graphviz's "
                "`dot`), DOT, or Mermaid (no dependency); fused groups are drawn as clusters.",
                "netc graph examples/resnet18.net --stage optimized -o resnet18.svg")
    graph.add_argument("--stage", choices=("source", "optimized"), default="source",
                       help="the graph as written (default) or after the -O pipeline")
    graph.add_argument("-O", dest="level", type=int, choices=(0, 1, 2), default=2,
                       help="optimisation level for --stage optimized (default 2)")
    graph.add_argument("--format", choices=("svg", "dot", "mermaid"),
                       help="default: from the file name (.svg, .dot/.gv, .mmd/.mermaid)")
    graph.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    graph.set_defaults(handler=cmd_graph)

    import_ = commands.add_parser(
        "import", formatter_class=_formatter,
        help="Turn an ONNX model into a readable .net file and a weights file.",
        description="Turn an ONNX model made of ops netc supports into a readable .net file and "
                    "its weights. Every unsupported op or attribute is listed in one error.",
        epilog="example:\n  netc import resnet18.onnx -o resnet18.net "
               "--weights-out resnet18.safetensors")
    import_.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX model")
    import_.add_argument("-o", "--output", required=True, metavar="MODEL.net",
                         help="the .net file to write")
    import_.add_argument("--weights-out", metavar="WEIGHTS",
                         help="weights file to write (default: MODEL.safetensors)")
    import_.set_defaults(handler=cmd_import)

    compare = sub("compare", "Run the same inputs through several backends and report, per "
                  "output, the largest absolute and relative differences; with --layers, the "
                  "first layer where they part. Exits 3 when they disagree.",
                  "netc compare examples/lenet5.net --weights w.safetensors --random-input "
                  "--backends reference,cudasim,onnx --layers")
    compare.add_argument("--backends", default="reference,cudasim,onnx",
                         help="comma-separated; the first is the baseline "
                              "(default: reference,cudasim,onnx)")
    compare.add_argument("--layers", action="store_true",
                         help="also find the first layer where a backend parts from the baseline")
    _add_inputs(compare, default_batch=2)
    compare.add_argument("--rtol", type=float, help="relative tolerance (default 1e-3; "
                         "1e-2 with --precision tf32 or f16, 5e-2 with bf16)")
    compare.add_argument("--atol", type=float, help="absolute tolerance (default 1e-4; 1e-2 "
                         "with --precision tf32 or f16, 5e-2 with bf16)")
    _add_optimization(compare, 2, "; cudasim and cuda run the optimised plan, the reference "
                      "and onnx the source graph")
    _add_tiling(compare)
    _add_precision(compare)
    compare.set_defaults(handler=cmd_compare)

    explain = sub("explain", "Explain how a model compiles: for every source layer (file:line) "
                  "the kernel it landed in and what it was fused with, or why not; per kernel "
                  "tiles, FLOPs, bytes moved, arithmetic intensity, roofline time, blocks, "
                  "occupancy and a time bound with grid fill on the GPU of --arch; totals for "
                  "launches, bytes, memory and predicted time.",
                  "netc explain examples/resnet18.net\n"
                  "  netc explain examples/resnet18.net -O0 --arch sm_80 --json > o0.json")
    explain.add_argument("--arch", choices=tuple(ARCHS), default=DEFAULT_ARCH,
                         help="the GPU to tile for and predict on: sm_90 an H100 SXM (66.9 "
                              "TFLOP/s fp32, 3.35 TB/s), sm_80 an A100 SXM (19.5 TFLOP/s, "
                              "2.04 TB/s) (default sm_90)")
    explain.add_argument("--json", action="store_true",
                         help="print the same as JSON, totals at the top level")
    explain.add_argument("--batch", type=_positive, default=1,
                         help="batch size for shapes, bytes and times (default 1)")
    explain.add_argument("--no-compile", action="store_true",
                         help="estimate registers from the tiles instead of compiling the "
                              "kernels for ptxas' counts (the default when no CUDA compiler "
                              "is found)")
    _add_optimization(explain, 2)
    _add_tiling(explain)
    _add_precision(explain)
    explain.set_defaults(handler=cmd_explain)
    return parser


def _add_inputs(command: argparse.ArgumentParser, default_batch: int) -> None:
    """The weights and inputs options that `run` and `compare` share."""
    command.add_argument("--weights", metavar="WEIGHTS",
                         help="weights file, a state dict by name (.safetensors, .npz, or "
                              ".pt/.pth with PyTorch installed); default: fresh weights from "
                              "--seed")
    command.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                         help="an input array (repeat for several inputs)")
    command.add_argument("--random-input", action="store_true",
                         help="draw standard-normal inputs instead of reading files")
    command.add_argument("--batch", type=_positive, default=default_batch,
                         help=f"batch size for --random-input: the size of every named "
                              f"dimension --dim does not set (default {default_batch})")
    command.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                         help="the size of a named dimension for --random-input, e.g. T=11 "
                              "(repeat for several)")
    command.add_argument("--seed", type=int, default=0,
                         help="seed for random inputs and weights (default 0)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _version() -> str:
    from netc._version import __version__

    return __version__


OPTIONAL_PACKAGES = {"onnx": "onnx", "onnxruntime": "onnx", "pycuda": "cuda",
                     "tensorrt": "tensorrt", "cuda": "nvrtc", "safetensors": None}
"""Optional packages by import name, with the pip extra of netc that installs each."""


def _environment_fault(exc: BaseException) -> str | None:
    """What the machine lacks or refuses, when `exc` is such a fault rather than a bug in
    netc: a missing tool or package, a file-system error, memory."""
    from netc.diagnostics import MissingDependency

    if isinstance(exc, MissingDependency):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None:
        top = exc.name.split(".")[0]
        if top in OPTIONAL_PACKAGES:
            extra = OPTIONAL_PACKAGES[top]
            how = f"pip install 'netc[{extra}]'" if extra else f"pip install {top}"
            return f"this needs the Python package `{top}`, which is not installed: {how}"
    if isinstance(exc, OSError):
        where = f" `{exc.filename}`" if exc.filename else ""
        return f"cannot access{where}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "out of memory (the inputs, weights or batch are too large for this machine)"
    return None


class _TerminalSafe:
    """A text stream that writes through `printable`: a path in any message (`wrote y to
    DIR`, a warning naming the cache directory, a progress line) reaches the terminal escaped,
    never as an escape sequence it would obey. Carriage returns are kept only at either end
    of one write (the progress line's redraw); everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        start = len(text) - len(text.lstrip("\r"))
        end = max(len(text.rstrip("\r")), start)
        self.stream.write(text[:start] + printable(text[start:end]) + text[end:])
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; what it prints goes through `_TerminalSafe`."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _TerminalSafe(stdout), _TerminalSafe(stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        _tile_overrides(args)  # a malformed --tile fails before any work is done
        return int(args.handler(args))
    except CompileError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from netc.toolchain import DeviceCompileError

        if isinstance(exc, DeviceCompileError):
            print(exc.render(), file=sys.stderr)
            return exc.exit_code
        fault = _environment_fault(exc)
        if fault is not None:
            print(f"error: {fault}", file=sys.stderr)
            return 1
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in netc, not in your model; please report it "
              "(set NETC_DEBUG=1 to see the traceback).", file=sys.stderr)
        if os.environ.get("NETC_DEBUG"):
            traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
