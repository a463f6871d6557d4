"""TensorRT: engines built from netc's ONNX export, and the `tensorrt` backend.

    build = build_engine("lenet5.onnx", "build/", fp16=True, batch=(1, 8, 32))
    print(build.summary())      # says plainly whether an engine was built, and if not, why

`build_engine` uses TensorRT's Python API where `tensorrt` imports and a CUDA GPU is usable:
the ONNX parser, one optimization profile spanning the batch range MIN:OPT:MAX on every input
whose first dimension is dynamic, a timing cache file that persists between builds (loaded if
present, saved after), the FP16/INT8 builder flags, and INT8 calibration from `.npy` files
through an `IInt8EntropyCalibrator2` that feeds batches from PyCUDA buffers. The builder's log
is summarised (warnings, errors, the last lines).

Whatever happens, `out_dir` receives the ONNX model and `trtexec.sh`, the `trtexec` command
line equivalent to the requested build, so the same engine can be built on another machine.
Where TensorRT or a GPU is missing no engine is built, and the result says so and why; it never
pretends.

`prepare_tensorrt` is the `tensorrt` backend of `netc run`/`netc compare`: it exports the
graph, builds (or reuses from the cache) an engine, and runs it with PyCUDA buffers, raising
`MissingDependency` with a clear message where tensorrt, PyCUDA or a GPU is missing.

NOT RUN on the machine this was written on: it has no GPU and TensorRT's builder cannot be
installed there. The fallback path (ONNX + trtexec.sh) is unit-tested; the engine path is
tested by tests/gpu/test_tensorrt.py, which skips without tensorrt and a GPU.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from netc.diagnostics import CompileError, Diagnostic, MissingDependency
from netc.files import write_atomic

E_BUILD_REQUEST = "E0620"
E_CALIBRATION = "E0621"
E_PARSE = "E0622"
E_BUILD = "E0623"

DEFAULT_WORKSPACE = 1 << 30
LOG_TAIL = 12
Log = Callable[[str], None]


@dataclass(frozen=True)
class TensorRTBuild:
    """What `build_engine` did. `built` is False unless an engine file was written."""

    built: bool
    reason: str | None
    """Why no engine was built (None when one was)."""
    out_dir: Path
    onnx_path: Path
    engine_path: Path | None
    """The serialized engine, only when built."""
    script_path: Path
    command: str
    """The equivalent `trtexec` command line (also in `script_path`)."""
    timing_cache: Path
    batch: tuple[int, int, int]
    fp16: bool = False
    int8: bool = False
    calibration_batches: int = 0
    warnings: int = 0
    errors: int = 0
    log_tail: tuple[str, ...] = ()
    seconds: float = 0.0
    tensorrt_version: str | None = None

    def summary(self) -> str:
        precision = "+".join(p for p, on in (("fp16", self.fp16), ("int8", self.int8)) if on)
        lines = []
        if self.built:
            lines.append(f"built TensorRT {self.tensorrt_version} engine {self.engine_path} "
                         f"({precision or 'fp32'}, batch {':'.join(map(str, self.batch))}) "
                         f"in {self.seconds:.1f} s; timing cache {self.timing_cache}")
        else:
            lines.append(f"no TensorRT engine was built: {self.reason}")
            lines.append(f"wrote {self.onnx_path} and {self.script_path}; on a machine with "
                         f"TensorRT and a GPU, run: sh {self.script_path}")
        if self.warnings or self.errors or self.log_tail:
            lines.append(f"builder log: {self.warnings} warnings, {self.errors} errors")
            lines.extend(f"  {line}" for line in self.log_tail)
        return "\n".join(lines)


# The ONNX model's inputs and the trtexec command ----------------------------------------


@dataclass(frozen=True)
class EngineInput:
    name: str
    shape: tuple[int | None, ...]
    """None for the (dynamic) batch dimension."""

    def at(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d is None else d for d in self.shape)


def engine_inputs(model: onnx.ModelProto) -> list[EngineInput]:
    """The graph inputs that are not initializers, with the batch dimension marked None.

    Only the first dimension may be dynamic (as in `.net`); anything else is a CompileError.
    """
    initialized = {t.name for t in model.graph.initializer}
    found = []
    problems = []
    for info in model.graph.input:
        if info.name in initialized:
            continue
        dims = info.type.tensor_type.shape.dim
        shape: list[int | None] = []
        for position, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif position == 0:
                shape.append(None)
            else:
                problems.append(Diagnostic(E_BUILD_REQUEST, f"ONNX input `{info.name}` has a "
                                           f"dynamic dimension at position {position}; only the "
                                           "batch (first) dimension may be dynamic"))
        found.append(EngineInput(info.name, tuple(shape)))
    if problems:
        raise CompileError(problems)
    return found


def _shape_spec(inputs: Sequence[EngineInput], batch: int) -> str:
    def name(text: str) -> str:
        return f"'{text}'" if any(c in text for c in ":,'") else text
    return ",".join(f"{name(i.name)}:{'x'.join(map(str, i.at(batch)))}" for i in inputs
                    if None in i.shape)


def trtexec_command(onnx_file: str, engine_file: str, inputs: Sequence[EngineInput],
                    batch: tuple[int, int, int], *, fp16: bool = False, int8: bool = False,
                    calibration_cache: str | None = None, timing_cache: str | None = None,
                    workspace_bytes: int = DEFAULT_WORKSPACE) -> list[str]:
    """The `trtexec` arguments for the same build (TensorRT 10's trtexec)."""
    command = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    if any(None in i.shape for i in inputs):
        command += [f"--minShapes={_shape_spec(inputs, batch[0])}",
                    f"--optShapes={_shape_spec(inputs, batch[1])}",
                    f"--maxShapes={_shape_spec(inputs, batch[2])}"]
    command.append(f"--memPoolSize=workspace:{max(workspace_bytes >> 20, 1)}")  # MiB
    if fp16:
        command.append("--fp16")
    if int8:
        command.append("--int8")
        if calibration_cache:
            command.append(f"--calib={calibration_cache}")
    if timing_cache:
        command.append(f"--timingCacheFile={timing_cache}")
    return command


def _write_script(path: Path, command: Sequence[str], int8: bool, calibration_cache: str) -> None:
    lines = [
        "#!/bin/sh",
        "# Written by netc: builds the TensorRT engine that `netc compile --target tensorrt`",
        "# asked for, with TensorRT's trtexec (run it on a machine with TensorRT and a GPU).",
        "set -eu",
        'cd "$(dirname "$0")"',
    ]
    if int8:
        lines += [
            "# INT8: trtexec reads a calibration *cache*, not .npy batches. netc's Python build",
            f"# writes {calibration_cache} after calibrating; without that file trtexec builds",
            "# INT8 with placeholder dynamic ranges, whose accuracy means nothing.",
        ]
    lines.append(" \\\n    ".join(shlex.quote(part) for part in command))
    write_atomic(path, "\n".join(lines) + "\n", mode=0o755)


def _external_files(model_path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (relative to its folder)."""
    model = onnx.load(str(model_path), load_external_data=False)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return [model_path.parent / location for location in sorted(locations)]


def _place_onnx(source: onnx.ModelProto | str | os.PathLike[str], out_dir: Path,
                name: str) -> Path:
    """The ONNX model as a file in `out_dir` (with its external data beside it)."""
    if isinstance(source, onnx.ModelProto):
        from netc.onnx.export import save_model

        target = out_dir / f"{name}.onnx"
        save_model(source, target)
        return target
    path = Path(source)
    if not path.is_file():
        raise CompileError([Diagnostic(E_BUILD_REQUEST, f"ONNX file `{path}` does not exist")])
    target = out_dir / path.name
    if target.resolve() != path.resolve():
        shutil.copyfile(path, target)
        for extra in _external_files(path):
            if extra.is_file():
                shutil.copyfile(extra, out_dir / extra.relative_to(path.parent))
    return target


def default_timing_cache() -> Path:
    """A timing cache shared by every build of this user (TensorRT keys it per GPU)."""
    try:
        from netc.cache import cache_root

        root = cache_root()
    except ImportError:
        root = Path.home() / ".cache" / "netc"
    return root / "tensorrt" / "timing.cache"


# INT8 calibration data --------------------------------------------------------------------


def load_calibration_batches(calibration_dir: str | os.PathLike[str],
                             inputs: Sequence[EngineInput],
                             batch_size: int) -> list[dict[str, np.ndarray]]:
    """Calibration batches of `batch_size` items, as float32 arrays by input name.

    One input: every `*.npy` file in `calibration_dir` (sorted by name) holds one item
    (the input's shape without the batch) or a stack of items ([k, ...]). Several inputs: one
    subfolder per input name, holding the same number of items in the same order. Items that
    do not fill a last batch are left out.
    """
    root = Path(calibration_dir)
    if not root.is_dir():
        raise CompileError([Diagnostic(E_CALIBRATION, f"calibration folder `{root}` does not "
                                       "exist")])
    items: dict[str, np.ndarray] = {}
    for engine_input in inputs:
        folder = root if len(inputs) == 1 else root / engine_input.name
        files = sorted(folder.glob("*.npy"))
        if not files:
            raise CompileError([Diagnostic(E_CALIBRATION, f"no .npy files in `{folder}` for "
                                           f"input `{engine_input.name}`")])
        item_shape = engine_input.shape[1:]
        stacks = []
        for file in files:
            try:
                array = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CompileError([Diagnostic(E_CALIBRATION, f"cannot read `{file}`: "
                                               f"{exc}")]) from None
            if tuple(array.shape) == item_shape:
                array = array[None]
            if tuple(array.shape[1:]) != item_shape:
                raise CompileError([Diagnostic(
                    E_CALIBRATION, f"`{file}` has shape {list(array.shape)}; input "
                    f"`{engine_input.name}` takes items of shape {list(item_shape)} (one item, "
                    "or a stack [k, ...])")])
            stacks.append(np.asarray(array, dtype=np.float32))
        items[engine_input.name] = np.concatenate(stacks)
    counts = {name: len(array) for name, array in items.items()}
    if len(set(counts.values())) > 1:
        raise CompileError([Diagnostic(E_CALIBRATION, "the inputs have different numbers of "
                                       f"calibration items: {counts}")])
    total = next(iter(counts.values()))
    if total < batch_size:
        raise CompileError([Diagnostic(E_CALIBRATION, f"{total} calibration items do not fill "
                                       f"one batch of {batch_size}")])
    return [{name: np.ascontiguousarray(array[start:start + batch_size])
             for name, array in items.items()}
            for start in range(0, total - batch_size + 1, batch_size)]


# The TensorRT builder ---------------------------------------------------------------------


def _import_tensorrt() -> tuple[Any, str | None]:
    """(the tensorrt module, None), or (None, why it cannot be used)."""
    try:
        import tensorrt
    except ImportError as exc:
        return None, (f"TensorRT's Python package is not installed here ({exc}); "
                      "pip install 'netc[tensorrt]' on a machine with an NVIDIA GPU")
    except Exception as exc:  # a broken install (missing libnvinfer) raises other errors
        return None, f"TensorRT's Python package does not load here: {exc}"
    return tensorrt, None


@dataclass
class _LogSummary:
    sink: Log | None
    warnings: int = 0
    errors: int = 0
    lines: list[str] = field(default_factory=list)

    def add(self, severity: str, message: str) -> None:
        if severity in ("ERROR", "INTERNAL_ERROR"):
            self.errors += 1
        elif severity == "WARNING":
            self.warnings += 1
        line = f"[{severity}] {message}"
        self.lines.append(line)
        del self.lines[:-LOG_TAIL]
        if self.sink is not None:
            self.sink(line)


def _make_logger(trt: Any, summary: _LogSummary) -> Any:
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, message: str) -> None:
            summary.add(str(severity).rsplit(".", 1)[-1], message)

    return Logger()


def _make_calibrator(trt: Any, batches: list[dict[str, np.ndarray]], batch_size: int,
                     cache_file: Path) -> Any:
    """An entropy calibrator feeding `batches` through device buffers (PyCUDA)."""
    import pycuda.autoprimaryctx  # noqa: F401  (TensorRT works in the primary context)
    import pycuda.driver as cuda

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers = {name: cuda.mem_alloc(array.nbytes)
                            for name, array in batches[0].items()}

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            self.index += 1
            for name in names:
                cuda.memcpy_htod(self.buffers[name], batch[name])
            return [int(self.buffers[name]) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(cache))

    return Calibrator()


def build_engine(onnx_path: onnx.ModelProto | str | os.PathLike[str],
                 out_dir: str | os.PathLike[str], *, fp16: bool = False, int8: bool = False,
                 calibration_dir: str | os.PathLike[str] | None = None,
                 batch: tuple[int, int, int] = (1, 1, 1),
                 timing_cache: str | os.PathLike[str] | None = None,
                 log: Log | None = None, workspace_bytes: int = DEFAULT_WORKSPACE,
                 name: str | None = None) -> TensorRTBuild:
    """Build a TensorRT engine for an ONNX model (a file, or a ModelProto to save there).

    `batch` is the optimization profile (MIN, OPT, MAX) of the batch dimension of every
    input; `timing_cache` defaults to one shared per user (`default_timing_cache()`); `log`
    receives each builder log line. Always writes `<name>.onnx` and `trtexec.sh` into
    `out_dir`; writes `<name>.engine` only when TensorRT and a GPU are usable here.
    """
    started = time.perf_counter()
    low, opt, high = batch
    if not all(isinstance(b, int) and b >= 1 for b in batch) or not low <= opt <= high:
        raise CompileError([Diagnostic(E_BUILD_REQUEST, f"batch range {low}:{opt}:{high} must "
                                       "be positive with MIN <= OPT <= MAX")])
    if calibration_dir is not None and not int8:
        raise CompileError([Diagnostic(E_BUILD_REQUEST, "a calibration folder is only used "
                                       "with int8=True (--int8)")])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or (Path(onnx_path).stem if not isinstance(onnx_path, onnx.ModelProto)
                    else (onnx_path.graph.name or "model"))
    model_file = _place_onnx(onnx_path, out, stem)
    engine_file = out / f"{stem}.engine"
    cache = Path(timing_cache) if timing_cache is not None else default_timing_cache()
    calibration_cache = out / f"{stem}.calibration.cache"
    model = onnx.load(str(model_file), load_external_data=False)
    inputs = engine_inputs(model)
    command = trtexec_command(model_file.name, engine_file.name, inputs, (low, opt, high),
                              fp16=fp16, int8=int8, calibration_cache=calibration_cache.name,
                              timing_cache=str(cache.resolve()),
                              workspace_bytes=workspace_bytes)
    script = out / "trtexec.sh"
    _write_script(script, command, int8, calibration_cache.name)
    batches = load_calibration_batches(calibration_dir, inputs, opt) \
        if calibration_dir is not None else []

    def result(built: bool, reason: str | None, summary: _LogSummary | None = None,
               version: str | None = None) -> TensorRTBuild:
        return TensorRTBuild(
            built, reason, out, model_file, engine_file if built else None, script,
            " ".join(shlex.quote(part) for part in command), cache, (low, opt, high), fp16,
            int8, len(batches), summary.warnings if summary else 0,
            summary.errors if summary else 0, tuple(summary.lines) if summary else (),
            time.perf_counter() - started, version)

    trt, why = _import_tensorrt()
    if trt is None:
        return result(False, why)
    if int8 and not batches:
        return result(False, "int8=True needs calibration data (calibration_dir); without it "
                      "TensorRT has no dynamic ranges for the tensors")
    summary = _LogSummary(log)
    logger = _make_logger(trt, summary)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no driver or no device: the builder cannot start
        return result(False, f"TensorRT {trt.__version__} is installed but cannot create a "
                      f"builder (no usable CUDA GPU?): {exc}", summary, trt.__version__)
    if builder is None:
        return result(False, f"TensorRT {trt.__version__} is installed but cannot create a "
                      "builder (no usable CUDA GPU?)", summary, trt.__version__)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and \
            int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileError([Diagnostic(E_PARSE, f"TensorRT's ONNX parser rejected "
                                       f"`{model_file}`: {error}") for error in errors]
                           or [Diagnostic(E_PARSE, f"TensorRT's ONNX parser rejected "
                                          f"`{model_file}`")])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    dynamic = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        if shape and shape[0] == -1:
            dynamic = True
            profile.set_shape(tensor.name, (low, *shape[1:]), (opt, *shape[1:]),
                              (high, *shape[1:]))
    if dynamic:  # a network of fixed shapes takes no profile
        config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, batches, opt, calibration_cache)
        if dynamic:
            config.set_calibration_profile(profile)
    cache.parent.mkdir(parents=True, exist_ok=True)
    timing = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError([Diagnostic(E_BUILD, "TensorRT could not build an engine for "
                                       f"`{model_file}`; the builder log ends:\n"
                                       + "\n".join(summary.lines))])
    write_atomic(engine_file, bytes(serialized))
    write_atomic(cache, bytes(config.get_timing_cache().serialize()), mode=0o600)
    return result(True, None, summary, trt.__version__)


# The `tensorrt` backend -------------------------------------------------------------------


def _runtime_modules() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver) with a CUDA context, or MissingDependency saying why."""

    trt, why = _import_tensorrt()
    if trt is None:
        raise MissingDependency(f"the tensorrt backend needs TensorRT: {why}")
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise MissingDependency("the tensorrt backend needs PyCUDA for device buffers: "
                                 "pip install 'netc[cuda]'") from None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise MissingDependency("the tensorrt backend needs a CUDA GPU; none was found")
        import pycuda.autoprimaryctx  # noqa: F401
    except MissingDependency:
        raise
    except Exception as exc:
        raise MissingDependency(f"the tensorrt backend needs a usable CUDA GPU: {exc}") \
            from None
    return trt, cuda


def prepare_tensorrt(graph: Any, weights: Mapping[str, np.ndarray],
                     options: Mapping[str, Any]) -> Callable[[Mapping[str, np.ndarray]],
                                                             dict[str, np.ndarray]]:
    """A runner for `graph` on TensorRT. Options: `fp16` (bool), `batch` ((MIN, OPT, MAX),
    default (1, 8, 64); a larger batch at run time builds a wider engine), `cache_dir`
    (default: netc's per-user cache), `log` (a callable for builder log lines)."""
    from netc.onnx.export import export_graph
    from netc.reference import bind_batch

    trt, cuda = _runtime_modules()
    model = export_graph(graph, weights)
    fp16 = bool(options.get("fp16", False))
    low, opt, high = tuple(options.get("batch", (1, 8, 64)))
    device = cuda.Device(0)
    key_source = (model.SerializeToString() + f"|{trt.__version__}|{device.name()}|"
                  f"{device.compute_capability()}|fp16={fp16}".encode())
    key = hashlib.sha256(key_source).hexdigest()[:32]
    root = Path(options["cache_dir"]) if "cache_dir" in options else \
        default_timing_cache().parent
    output_names = [name for name, _ in graph.outputs]
    engines: dict[tuple[int, int, int], Any] = {}
    summary = _LogSummary(options.get("log"))
    runtime = trt.Runtime(_make_logger(trt, summary))

    def engine_for(batch_size: int) -> Any:
        for (first, _, last), engine in engines.items():
            if first <= batch_size <= last:
                return engine
        span = (low, opt, high) if low <= batch_size <= high else \
            (1, batch_size, max(high, batch_size))
        out_dir = root / key / f"batch_{span[0]}_{span[1]}_{span[2]}"
        engine_file = out_dir / f"{graph.name}.engine"
        if not engine_file.is_file():
            build = build_engine(model, out_dir, fp16=fp16, batch=span, name=graph.name,
                                 log=options.get("log"))
            if not build.built:

                raise MissingDependency(build.reason or "no engine was built")
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_file}: "
                               + "; ".join(summary.lines[-3:]))
        engines[span] = engine
        return engine

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = bind_batch(graph, inputs)
        batch_size = max(sizes.values(), default=1)
        engine = engine_for(batch_size)
        context = engine.create_execution_context()
        stream = cuda.Stream()
        keep = []
        for name, value in inputs.items():
            host = np.ascontiguousarray(value, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            context.set_input_shape(name, host.shape)
            device_buffer = cuda.mem_alloc(max(host.nbytes, 1))
            cuda.memcpy_htod_async(device_buffer, host, stream)
            context.set_tensor_address(name, int(device_buffer))
            keep.append((device_buffer, host))
        results: dict[str, tuple[np.ndarray, Any]] = {}
        for name in output_names:
            shape = tuple(context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            device_buffer = cuda.mem_alloc(max(host.nbytes, 1))
            context.set_tensor_address(name, int(device_buffer))
            results[name] = (host, device_buffer)
        if not context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT failed to run the engine: "
                               + "; ".join(summary.lines[-3:]))
        for host, device_buffer in results.values():
            cuda.memcpy_dtoh_async(host, device_buffer, stream)
        stream.synchronize()
        return {name: np.asarray(host, dtype=np.float32) for name, (host, _) in results.items()}

    return run

