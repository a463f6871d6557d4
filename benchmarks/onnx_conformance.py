"""ONNX's own backend node tests, run through `netc import` and the reference interpreter.

    python benchmarks/onnx_conformance.py             # writes docs/onnx-conformance.md
    python benchmarks/onnx_conformance.py --print     # prints it instead

Attempted: every node test that ONNX ships (`onnx.backend.test.loader.load_model_tests(
kind="node")`) for an op type the importer supports, including the `_expanded` variants, which
spell the op's function body out in primitive ops. Each test is:

1. prepared: graph inputs in the positions that `.net` holds as parameters or attributes
   (`netc.onnx.importer.PARAMETER_OPERANDS`: a Conv's W, a Gemm's B and C, a Reshape's
   shape, ...) become initializers holding the test's data for them;
2. imported with `import_onnx`: a `CompileError` means "rejected", with its diagnostics;
3. the generated `.net` text is loaded with `netc.frontend.load_string` and run on the
   reference backend, and every output is compared with the test's expected output (shape
   exactly, values with the test's own rtol/atol).

Outcomes: `passed`, `rejected` (a clear diagnostic), `wrong` (imported but a different result:
an importer bug unless it is listed in KNOWN_ISSUES), `broken` (the generated text does not
load, or anything other than a CompileError escaped: always a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "onnx-conformance.md"

KNOWN_ISSUES: dict[str, str] = {
    # test name: why its wrong result is accepted for now (none at present).
}


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]
    rtol: float
    atol: float

    @property
    def expanded(self) -> bool:
        return "_expanded" in self.name


@dataclass(frozen=True)
class Outcome:
    case: str
    op: str
    expanded: bool
    status: str
    """passed | rejected | wrong | broken"""
    reason: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    onnx_version: str = onnx.__version__

    def count(self, status: str, op: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.status == status and op in (None, o.op))

    @property
    def ops(self) -> list[str]:
        return sorted({o.op for o in self.outcomes})

    def unexpected(self) -> list[Outcome]:
        """Wrong results not in KNOWN_ISSUES, and every broken case."""
        return [o for o in self.outcomes if o.status == "broken"
                or (o.status == "wrong" and o.case not in KNOWN_ISSUES)]


def _read_data_dir(directory: Path) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    sets = []
    for data_dir in sorted(directory.glob("test_data_set_*")):
        arrays = {}
        for kind in ("input", "output"):
            found = []
            for file in sorted(data_dir.glob(f"{kind}_*.pb"),
                               key=lambda p: int(p.stem.split("_")[1])):
                tensor = onnx.TensorProto()
                tensor.ParseFromString(file.read_bytes())
                found.append(numpy_helper.to_array(tensor))
            arrays[kind] = found
        sets.append((arrays["input"], arrays["output"]))
    return sets


def load_cases(op_types: Sequence[str] | None = None) -> list[Case]:
    """The node tests of the importer's supported op types (the first data set of each)."""
    from onnx.backend.test.loader import load_model_tests

    from netc.onnx.importer import HELPER_OPS, SUPPORTED_OPS

    wanted = set(op_types or SUPPORTED_OPS) - set(HELPER_OPS)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        tests = load_model_tests(kind="node")
    models: dict[str, onnx.ModelProto] = {}
    for test in tests:
        if test.model is not None:
            models[test.name] = test.model
        elif test.model_dir is not None:
            models[test.name] = onnx.load(str(Path(test.model_dir) / "model.onnx"))
    cases = []
    for test in tests:
        base = re.sub(r"_expanded(_ver\d+)?$", "", test.name)
        if base not in models or test.name not in models:
            continue
        base_ops = [n.op_type for n in models[base].graph.node if n.op_type != "Constant"]
        op = base_ops[-1] if base_ops else "Constant"
        if op not in wanted:
            continue
        data = test.data_sets if test.data_sets is not None else \
            _read_data_dir(Path(test.model_dir)) if test.model_dir else []
        if not data:
            continue
        inputs, outputs = data[0]
        cases.append(Case(test.name, op, models[test.name], tuple(inputs), tuple(outputs),
                          float(test.rtol), float(test.atol)))
    return cases


def freeze_parameters(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with the graph inputs in parameter positions turned into initializers,
    and the feeds for the remaining inputs (by ONNX name)."""
    from netc.onnx.importer import PARAMETER_OPERANDS

    model = copy.deepcopy(case.model)
    graph = model.graph
    initialized = {t.name for t in graph.initializer}
    runtime_inputs = [i.name for i in graph.input if i.name not in initialized]
    data = dict(zip(runtime_inputs, case.inputs))
    frozen: set[str] = set()
    for node in graph.node:
        for position in PARAMETER_OPERANDS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in data:
                frozen.add(node.input[position])
    for name in sorted(frozen):
        graph.initializer.append(numpy_helper.from_array(np.asarray(data[name]), name))
    kept = [i for i in graph.input if i.name not in frozen]
    del graph.input[:]
    graph.input.extend(kept)
    feeds = {name: value for name, value in data.items() if name not in frozen}
    return model, feeds


def _reason(error: Exception) -> str:
    from netc.diagnostics import CompileError

    if isinstance(error, CompileError):
        return "; ".join(f"[{d.code}] {d.message}" for d in error.diagnostics)
    return f"{type(error).__name__}: {error}"


def run_case(case: Case) -> Outcome:
    from netc.diagnostics import CompileError
    from netc.frontend import load_string
    from netc.onnx.importer import import_onnx
    from netc.reference import run_reference

    def outcome(status: str, reason: str = "") -> Outcome:
        return Outcome(case.name, case.op, case.expanded, status, reason)

    try:
        model, feeds = freeze_parameters(case)
        try:
            imported = import_onnx(model)
        except CompileError as error:
            return outcome("rejected", _reason(error))
        try:
            graph = load_string(imported.text, filename=f"{case.name}.net")
        except CompileError as error:
            return outcome("broken", "the generated text does not load: " + _reason(error))
        inputs = {imported.inputs[name]: np.asarray(value, dtype=np.float32)
                  for name, value in feeds.items()}
        results = run_reference(graph, imported.weights, inputs)
    except Exception as error:  # anything else is a bug, reported with the case
        return outcome("broken", _reason(error))
    problems = []
    for info, expected in zip(case.model.graph.output, case.outputs):
        actual = results[imported.outputs[info.name]]
        if actual.shape != expected.shape:
            problems.append(f"`{info.name}` has shape {list(actual.shape)}, expected "
                            f"{list(expected.shape)}")
            continue
        bad = ~np.isclose(actual, expected, rtol=case.rtol, atol=case.atol, equal_nan=True)
        if bad.any():
            largest = float(np.max(np.abs(actual.astype(np.float64) - expected)))
            problems.append(f"`{info.name}`: {int(bad.sum())} of {bad.size} elements differ "
                            f"(largest difference {largest:.3g}; rtol {case.rtol}, "
                            f"atol {case.atol})")
    if problems:
        return outcome("wrong", "; ".join(problems))
    return outcome("passed")


def run_conformance(op_types: Sequence[str] | None = None) -> Report:
    report = Report()
    for case in load_cases(op_types):
        report.outcomes.append(run_case(case))
    return report


def _short(reason: str, limit: int = 240) -> str:
    reason = reason.replace("|", "\\|").replace("\n", " ")
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def _gist(reason: str) -> str:
    """A diagnostic without what varies between tests (node names, shapes, values)."""
    reason = re.sub(r"^(\[E\d+\]) [A-Za-z]+ node (`[^`]*`|#\d+ \(unnamed\)): ", r"\1 ", reason)
    reason = re.sub(r"graph input `[^`]*`", "graph input", reason)
    reason = re.sub(r"\[[-\d, N]*\]", "[...]", reason)
    reason = re.sub(r"\(top, left, bottom, right\) = \([\d, ]*\)", "(...)", reason)
    reason = re.sub(r"element type [A-Z0-9]+", "an integer or bool element type", reason)
    reason = re.sub(r"(axis|perm|approximate)=\S+", r"\1=...", reason)
    reason = re.sub(r"f32\[[^\]]*\]", "f32[...]", reason)
    return reason


def render_markdown(report: Report) -> str:
    lines = [
        "# ONNX conformance of `netc import`",
        "",
        "Generated by `python benchmarks/onnx_conformance.py` (rerun it to refresh this page) "
        f"with onnx {report.onnx_version}. Every ONNX backend node test of an op type that the "
        "importer supports is attempted, the `_expanded` variants included (they spell the "
        "op's function body out in primitive ops such as Shape, Cast or ReduceMean, most of "
        "which `.net` does not have). Graph inputs in parameter positions (a Conv's W, a "
        "Gemm's B and C, a BatchNormalization's statistics, a Reshape's shape, ...) are given "
        "to the importer as initializers holding the test's data; the imported `.net` text is "
        "loaded by the front end and run on the reference backend against the test's expected "
        "outputs, with the test's own tolerances.",
        "",
        "* **passed**: imported, and the same result.",
        "* **rejected**: `netc import` refused the model with a diagnostic (E06xx) naming the "
        "node and the reason; usually the test is outside the language (integer dtypes, "
        "no batch dimension to keep, 1-D or 3-D windows, training mode).",
        "* **wrong**: imported but a different result. Each one is a bug unless listed under "
        "known issues.",
        "* **broken**: the generated text did not load, or the importer crashed. Always a bug.",
        "",
        "| op | attempted | of which expanded | passed | rejected | wrong | broken |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op in report.ops:
        expanded = sum(1 for o in report.outcomes if o.op == op and o.expanded)
        attempted = sum(1 for o in report.outcomes if o.op == op)
        lines.append(f"| {op} | {attempted} | {expanded} | {report.count('passed', op)} | "
                     f"{report.count('rejected', op)} | {report.count('wrong', op)} | "
                     f"{report.count('broken', op)} |")
    total = len(report.outcomes)
    lines.append(f"| **all** | **{total}** | **{sum(o.expanded for o in report.outcomes)}** | "
                 f"**{report.count('passed')}** | **{report.count('rejected')}** | "
                 f"**{report.count('wrong')}** | **{report.count('broken')}** |")
    direct = [o for o in report.outcomes if not o.expanded]
    lines += ["", f"Without the expanded variants: {len(direct)} attempted, "
              f"{sum(o.status == 'passed' for o in direct)} passed, "
              f"{sum(o.status == 'rejected' for o in direct)} rejected, "
              f"{sum(o.status == 'wrong' for o in direct)} wrong, "
              f"{sum(o.status == 'broken' for o in direct)} broken."]
    failures = [o for o in report.outcomes if o.status in ("wrong", "broken")]
    lines += ["", "## Wrong results and breakage", ""]
    if not failures:
        lines.append("None.")
    for o in failures:
        known = f" (known issue: {KNOWN_ISSUES[o.case]})" if o.case in KNOWN_ISSUES else ""
        lines.append(f"* `{o.case}` ({o.status}){known}: {_short(o.reason, 400)}")
    lines += ["", "## Why tests were rejected, by op", "",
              "The first diagnostic of each rejected test, grouped (node names and shapes "
              "left out).", "", "| op | tests | first diagnostic |", "| --- | ---: | --- |"]
    groups: Counter[tuple[str, str]] = Counter()
    for o in report.outcomes:
        if o.status == "rejected":
            groups[(o.op, _gist(o.reason.split("; [")[0]))] += 1
    for (op, gist), count in sorted(groups.items(), key=lambda item: (item[0][0], -item[1])):
        lines.append(f"| {op} | {count} | {_short(gist)} |")
    lines += ["", "## Rejected tests and why", "",
              "The first diagnostic of each (a rejected model lists every problem at once).", "",
              "| test | op | reason |", "| --- | --- | --- |"]
    for o in report.outcomes:
        if o.status == "rejected":
            lines.append(f"| `{o.case}` | {o.op} | {_short(o.reason.split('; [')[0])} |")
    codes = Counter(re.findall(r"\[(E06\d\d)\]", " ".join(o.reason for o in report.outcomes
                                                         if o.status == "rejected")))
    lines += ["", "Diagnostic codes over all rejected tests: "
              + ", ".join(f"{code} x{count}" for code, count in sorted(codes.items())) + "."]
    lines += ["", "## Passed tests", "",
              ", ".join(f"`{o.case}`" for o in report.outcomes if o.status == "passed"), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print instead of writing the page")
    parser.add_argument("-o", "--output", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    report = run_conformance()
    text = render_markdown(report)
    if args.print:
        print(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {len(report.outcomes)} tests, "
              f"{report.count('passed')} passed, {report.count('rejected')} rejected, "
              f"{report.count('wrong')} wrong, {report.count('broken')} broken")
    return 1 if report.unexpected() else 0


if __name__ == "__main__":
    sys.exit(main())
