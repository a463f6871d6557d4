"""Cross-checking backends: the same inputs through several backends, compared with the first.

    report = compare(graph, weights, inputs, ["reference", "onnx", "cudasim"], layers=True)
    print(report.format())
    assert report.agree

Each backend is prepared with `netc.backends.prepare`. A backend this machine cannot run
(`BackendUnavailable`, or an optional part of netc missing) is reported as skipped with the
reason; one that raises anything else is reported as failed, and the report then disagrees.
The baseline is the first backend that runs (normally `reference`, the executable meaning of
the IR); every other backend's outputs are compared with it.

Agreement is NumPy's `isclose`: |value - baseline| <= atol + rtol * |baseline| (NaN agrees
only with NaN). The report gives per output the largest absolute difference, the largest
relative difference |value - baseline| / |baseline| over the elements where |baseline| > atol
(near zero a relative difference says nothing), and how many elements are beyond tolerance.

With `layers=True` the report also names the first IR node, in graph order, whose value parts
from the baseline's beyond tolerance, with its layer name and `.net` file:line. The values of
every node are read per backend by a *layer probe*:

* `reference`: `run_reference(..., observe=...)` sees every node's value;
* `onnx`: the model from `netc.onnx.export` gets every node's value as an extra graph output
  (the exporter names each node's value after the node; a node whose value is not in the
  model is reported as not addressable);
* `cudasim` and `cuda`: they run the plan the compile driver makes (`-O2` unless
  `compile_options` says otherwise), once, with every intermediate in a buffer of its own, and
  every buffer is read back after that run. Only nodes that own a buffer are seen: a value
  that a fused kernel keeps in registers is not. `source_values` maps each value back to the
  source node it equals (a fused kernel's value is its last member's, a conv with a folded
  batchnorm holds the batchnorm's), so the first divergence is named in the source's terms;
* any other backend has no per-layer view (the report says so) unless a probe is passed in
  `layer_probes`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from netc.backends import PLAN_BACKENDS, BackendUnavailable, PlanBackend, onnx_feeds, prepare
from netc.diagnostics import CompileError, MissingDependency
from netc.ir import SOURCE_OPS, Graph, Node
from netc.reference import run_reference
from netc.text import format_table

if TYPE_CHECKING:
    from netc.driver import Compiled, CompileOptions
    from netc.passes.pipeline import Optimized

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4

LayerProbe = Callable[[Graph, Mapping[str, np.ndarray], Mapping[str, np.ndarray],
                       Mapping[str, Any]], dict[str, np.ndarray]]
"""(graph, weights, inputs, backend options) -> the value of every IR node it can observe,
by node id. Raises `LayerViewUnavailable` (or `BackendUnavailable`) to say why it cannot."""


class LayerViewUnavailable(Exception):
    """The backend cannot show the values of single layers; the message says why."""


@dataclass(frozen=True)
class Difference:
    """One value of a backend against the baseline's."""

    max_abs: float
    max_rel: float
    mismatched: int
    """Elements beyond tolerance."""
    total: int
    shape_problem: str | None = None

    @property
    def agree(self) -> bool:
        return self.shape_problem is None and self.mismatched == 0


def difference(value: np.ndarray, baseline: np.ndarray, rtol: float = DEFAULT_RTOL,
               atol: float = DEFAULT_ATOL) -> Difference:
    value = np.asarray(value, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if value.shape != baseline.shape:
        return Difference(math.inf, math.inf, max(value.size, baseline.size),
                          max(value.size, baseline.size),
                          f"shape {list(value.shape)}, baseline {list(baseline.shape)}")
    if value.size == 0:
        return Difference(0.0, 0.0, 0, 0)
    close = np.isclose(value, baseline, rtol=rtol, atol=atol, equal_nan=True)
    both_nan = np.isnan(value) & np.isnan(baseline)
    gap = np.where(both_nan, 0.0, np.abs(value - baseline))
    gap = np.where(np.isnan(gap), np.inf, gap)
    significant = np.abs(baseline) > atol
    relative = gap[significant] / np.abs(baseline[significant])
    return Difference(float(gap.max()), float(relative.max()) if relative.size else 0.0,
                      int((~close).sum()), int(value.size))


@dataclass(frozen=True)
class Divergence:
    """The first node (in graph order) whose value parts from the baseline's."""

    node: str
    op: str
    layer: str | None
    location: str | None
    """`file.net:line` of the node in its `.net` source, where known."""
    difference: Difference
    compared_before: int
    """How many earlier nodes were compared and agreed."""

    def describe(self) -> str:
        name = f"layer `{self.layer}` ({self.op}, node `{self.node}`)" if self.layer else \
            f"node `{self.node}` ({self.op})"
        where = f" at {self.location}" if self.location else ""
        d = self.difference
        detail = d.shape_problem or (f"{d.mismatched} of {d.total} elements beyond tolerance, "
                                     f"largest difference {d.max_abs:.3g}")
        return f"{name}{where}: {detail}"


@dataclass
class BackendResult:
    backend: str
    status: str
    """baseline | ran | skipped | failed"""
    reason: str = ""
    outputs: dict[str, Difference] = field(default_factory=dict)
    divergence: Divergence | None = None
    layer_note: str = ""
    """What the per-layer comparison could and could not see."""
    seconds: float = 0.0

    @property
    def agree(self) -> bool:
        return self.status in ("baseline", "skipped") or (
            self.status == "ran" and all(d.agree for d in self.outputs.values()))


@dataclass
class CompareReport:
    network: str
    batch: dict[str, int]
    rtol: float
    atol: float
    results: list[BackendResult]
    layers: bool
    precision: str = "f32"
    """What the plan backends (cudasim, cuda) stored the f32 tensors in (`--precision`)."""

    @property
    def baseline(self) -> str | None:
        return next((r.backend for r in self.results if r.status == "baseline"), None)

    @property
    def agree(self) -> bool:
        """True when a baseline ran, at least one other backend was compared with it, and
        every backend that ran agrees (skipped backends are listed, not counted)."""
        compared = [r for r in self.results if r.status == "ran"]
        return self.baseline is not None and bool(compared) and \
            all(r.agree for r in self.results)

    def result(self, backend: str) -> BackendResult:
        return next(r for r in self.results if r.backend == backend)

    def format(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.batch.items())
        lines = [f"compare {self.network}" + (f" ({sizes})" if sizes else "")
                 + f" against {self.baseline or 'nothing (no backend ran)'}; tolerance "
                 f"rtol {self.rtol:g}, atol {self.atol:g}"
                 + (f"; cudasim and cuda in {self.precision}" if self.precision != "f32"
                    else "")]
        rows = [("backend", "output", "max abs", "max rel", "beyond tol", "result")]
        for result in self.results:
            if result.status in ("skipped", "failed"):
                why = " ".join(result.reason.split()) or "no reason given"
                why = why if len(why) <= 200 else why[:197] + "..."
                rows.append((result.backend, "-", "", "", "", f"{result.status}: {why}"))
                continue
            for output, diff in result.outputs.items():
                if result.status == "baseline":
                    rows.append((result.backend, output, "-", "-", "-", "baseline"))
                    continue
                verdict = "agree" if diff.agree else \
                    f"DIFFER: {diff.shape_problem}" if diff.shape_problem else "DIFFER"
                rows.append((result.backend, output, f"{diff.max_abs:.3g}",
                             f"{diff.max_rel:.3g}", f"{diff.mismatched}/{diff.total}", verdict))
        lines += format_table(rows, right=range(2, len(rows[0]) - 1))
        if self.layers:
            lines.append("")
            lines.append("per layer:")
            for result in self.results:
                if result.status not in ("baseline", "ran"):
                    continue
                if result.divergence is not None:
                    lines.append(f"  {result.backend}: first divergence at "
                                 f"{result.divergence.describe()}")
                if result.layer_note:
                    lines.append(f"  {result.backend}: {result.layer_note}")
        skipped = sum(r.status == "skipped" for r in self.results)
        failed = [r.backend for r in self.results if r.status == "failed"]
        if failed:
            verdict = f"FAILED to run: {', '.join(failed)}"
        elif self.baseline is None:
            verdict = "nothing compared: no backend ran"
        elif not any(r.status == "ran" for r in self.results):
            verdict = "nothing compared: only the baseline ran"
        elif self.agree:
            verdict = "all backends that ran agree"
        else:
            verdict = "DISAGREE: " + ", ".join(r.backend for r in self.results if not r.agree)
        lines.append("")
        lines.append(f"result: {verdict}" + (f" ({skipped} skipped)" if skipped else ""))
        return "\n".join(lines)


# Layer probes ------------------------------------------------------------------------------


def _reference_layers(graph: Graph, weights: Mapping[str, np.ndarray],
                      inputs: Mapping[str, np.ndarray],
                      options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}

    def observe(node: Node, value: np.ndarray) -> None:
        if node.op not in SOURCE_OPS:
            values[node.id] = np.array(value, copy=True)

    run_reference(graph, weights, inputs, observe=observe)
    return values


def onnx_value_names(graph: Graph) -> dict[str, str]:
    """The ONNX name the exporter gives each node's value (its id; an output node's value
    takes the output's name)."""
    from netc.onnx import export

    namer = getattr(export, "value_names", None) or getattr(export, "_value_names", None)
    if namer is not None:
        return dict(namer(graph))
    names = {node.id: node.id for node in graph.nodes}
    names.update({node_id: name for name, node_id in graph.outputs
                  if graph[node_id].op not in SOURCE_OPS})
    return names


def _onnx_layers(graph: Graph, weights: Mapping[str, np.ndarray],
                 inputs: Mapping[str, np.ndarray],
                 options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("the onnx backend needs onnxruntime") from None
    from onnx import helper

    from netc.onnx.export import ONNX_DTYPES, export_graph

    model = export_graph(graph, weights)
    names = onnx_value_names(graph)
    produced = {output for node in model.graph.node for output in node.output}
    declared = {output.name for output in model.graph.output}
    infos = {info.name: info for info in model.graph.value_info}
    wanted: dict[str, str] = {}
    for node in graph.compute_nodes:
        name = names.get(node.id)
        if name is None or name not in produced:
            continue
        wanted[node.id] = name
        if name not in declared:
            info = infos.get(name) or helper.make_tensor_value_info(
                name, ONNX_DTYPES[node.type.dtype], None)
            model.graph.output.append(info)
            declared.add(name)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = onnx_feeds(graph, inputs)
    order = list(dict.fromkeys(wanted.values()))
    results = dict(zip(order, session.run(order, feeds)))
    return {node_id: np.asarray(results[name], dtype=np.float32)
            for node_id, name in wanted.items()}


def plan_values(run: PlanBackend) -> dict[str, np.ndarray]:
    """Every value a plan backend's last run left in a buffer of its own, by node id of the
    optimised graph (it must have been prepared with `reuse_memory=False`)."""
    graph = run.compiled.graph
    values: dict[str, np.ndarray] = {}
    for buffer in run.compiled.plan.buffers:
        if buffer.role == "param" or buffer.node not in graph:
            continue
        if graph[buffer.node].op in SOURCE_OPS or buffer.node in values:
            continue
        # A node's value buffer comes first; those its lowering adds for itself follow
        # (split-K's float partials, a broadcast operand's copy).
        values[buffer.node] = run.runner.buffer_value(buffer.name)
    return values


LAYER_PROBES: dict[str, LayerProbe] = {
    "reference": _reference_layers,
    "onnx": _onnx_layers,
}
"""Per-layer views of the backends that run the source graph. The plan backends (cudasim,
cuda) need no probe: their run itself is read back (`plan_values`)."""


# Comparing ---------------------------------------------------------------------------------


def _location(node: Node) -> str | None:
    if node.span is None:
        return None
    return f"{node.span.file}:{node.span.line}"


def _first_divergence(graph: Graph, values: Mapping[str, np.ndarray],
                      baseline: Mapping[str, np.ndarray], rtol: float,
                      atol: float) -> tuple[Divergence | None, int, int]:
    """The first divergent node, how many nodes were compared, and how many could not be."""
    compared = missing = 0
    for node in graph.compute_nodes:
        if node.id not in values or node.id not in baseline:
            missing += 1
            continue
        diff = difference(values[node.id], baseline[node.id], rtol, atol)
        if not diff.agree:
            return Divergence(node.id, node.op, node.layer, _location(node), diff,
                              compared), compared + 1, missing
        compared += 1
    return None, compared, missing


def _unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` means the backend cannot run here, or None if it is a real failure."""
    if isinstance(exc, MissingDependency):
        return str(exc)
    if isinstance(exc, ImportError):
        missing = getattr(exc, "name", None) or str(exc)
        return f"a component it needs is not installed or not built: {missing}"
    return None




def source_values(optimized: Optimized, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values observed on `optimized.graph` (by its node ids), keyed instead by the source node
    whose value each one is: a fused node's value is its last member's; a node that absorbed
    others (a conv with a folded batchnorm) holds the value of the last of them, in source
    order, of its own type."""
    source = optimized.source
    position = {node.id: index for index, node in enumerate(source.nodes)}
    holders: dict[str, list[str]] = {}
    for node in source.compute_nodes:
        current: str | None = node.id
        for _ in range(len(optimized.lineage) + 1):
            if current is None or current not in optimized.lineage:
                break
            current = optimized.lineage[current]
        if current is not None:
            holders.setdefault(current, []).append(node.id)
    found: dict[str, np.ndarray] = {}
    for node_id, value in values.items():
        if node_id not in optimized.graph:
            continue
        node = optimized.graph[node_id]
        last = node.members[-1].id
        same = [s for s in holders.get(last, []) if source[s].type == node.type]
        if last in source and source[last].type == node.type:
            same.append(last)
        if same:
            found[max(same, key=position.__getitem__)] = value
    return found


def compare(graph: Graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
            backends: Sequence[str] = ("reference", "onnx"), *, layers: bool = False,
            rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
            options: Mapping[str, Mapping[str, Any]] | None = None,
            layer_probes: Mapping[str, LayerProbe] | None = None,
            compile_options: CompileOptions | None = None) -> CompareReport:
    """Run `inputs` through every backend in `backends` and compare each with the first that
    runs. `options[backend]` goes to `netc.backends.prepare`; `layer_probes` adds or replaces
    per-layer views (see the module docstring). The plan backends (cudasim, cuda) run the plan
    the compile driver makes with `compile_options` (default `-O2`, as `netc run`), compiled
    once for all of them; their per-layer values are mapped back to the source nodes they
    equal. Weights and inputs are checked first: a problem there is a `CompileError`, as for
    `netc run`."""
    from netc.reference import bind_batch
    from netc.weights import check_weights

    if not backends:
        raise ValueError("compare needs at least one backend")
    check_weights(graph, weights)
    batch = bind_batch(graph, inputs)
    probes = dict(LAYER_PROBES, **(layer_probes or {}))
    options = options or {}
    compiled: Compiled | None = None
    results: list[BackendResult] = []
    baseline_outputs: dict[str, np.ndarray] | None = None
    baseline_layers: dict[str, np.ndarray] | None = None
    for backend in backends:
        backend_options = dict(options.get(backend, {}))
        started = time.perf_counter()
        try:
            if backend in PLAN_BACKENDS:
                if compiled is None:
                    from netc.driver import compile_graph

                    compiled = compile_graph(graph, compile_options)
                backend_options.setdefault("compiled", compiled)
                backend_options.setdefault("reuse_memory", not layers)
            run = prepare(backend, graph, weights, **backend_options)
            outputs = run(inputs)
        except CompileError as exc:
            if any(d.code == "E0420" for d in exc.diagnostics):
                raise  # an unknown backend name: the user's mistake, not the backend's
            # Weights and inputs were checked above: this is the backend's own refusal.
            results.append(BackendResult(backend, "failed", exc.render(),
                                         seconds=time.perf_counter() - started))
            continue
        except Exception as exc:
            reason = _unavailable_reason(exc)
            status = "skipped" if reason is not None else "failed"
            results.append(BackendResult(backend, status,
                                         reason or f"{type(exc).__name__}: {exc}",
                                         seconds=time.perf_counter() - started))
            continue
        seconds = time.perf_counter() - started
        if baseline_outputs is None:
            baseline_outputs = outputs
            result = BackendResult(backend, "baseline", seconds=seconds, outputs={
                name: difference(value, value, rtol, atol) for name, value in outputs.items()})
            if layers:
                baseline_layers, note = _probe(probes, backend, run, graph, weights, inputs,
                                               backend_options)
                if baseline_layers is None:
                    result.layer_note = (f"per-layer view not available ({note}), "
                                         "so no backend can be compared layer by layer")
                else:
                    result.layer_note = (f"baseline for {len(baseline_layers)} of "
                                         f"{len(graph.compute_nodes)} nodes")
            results.append(result)
            continue
        result = BackendResult(backend, "ran", seconds=seconds)
        for name, value in baseline_outputs.items():
            if name not in outputs:
                result.outputs[name] = Difference(math.inf, math.inf, 0, 0,
                                                  "missing from this backend's outputs")
            else:
                result.outputs[name] = difference(outputs[name], value, rtol, atol)
        if layers and baseline_layers is not None:
            values, note = _probe(probes, backend, run, graph, weights, inputs, backend_options)
            if values is None:
                result.layer_note = f"per-layer view not available: {note}"
            else:
                divergence, compared, missing = _first_divergence(graph, values,
                                                                  baseline_layers, rtol, atol)
                result.divergence = divergence
                unseen = f"; {missing} nodes not observable here" if missing else ""
                if divergence is None:
                    result.layer_note = f"{compared} nodes compared, none diverges{unseen}"
                    if not result.agree:
                        result.layer_note += (" (the outputs differ all the same: the "
                                              "difference arises where no node is observed)")
                else:
                    result.layer_note = f"{divergence.compared_before} nodes agree before it{unseen}"
        results.append(result)
    return CompareReport(graph.name, batch, rtol, atol, results, layers,
                         compile_options.precision if compile_options else "f32")


def _probe(probes: Mapping[str, LayerProbe], backend: str, run: Any, graph: Graph,
           weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
           options: Mapping[str, Any]) -> tuple[dict[str, np.ndarray] | None, str]:
    """The value of every source node `backend` lets us see, by source node id."""
    probe = probes.get(backend)
    try:
        if probe is not None:
            return probe(graph, weights, inputs, options), ""
        if isinstance(run, PlanBackend):
            return source_values(run.compiled.optimized, plan_values(run)), ""
    except (LayerViewUnavailable, MissingDependency, ImportError) as exc:
        return None, str(exc)
    return None, f"netc has no per-layer view for the `{backend}` backend"
