"""Mutation testing of netc's core: do the tests catch what they claim?

    python benchmarks/mutation.py --list
    python benchmarks/mutation.py --module ops.windows --module ops.pooling --limit 40
    python benchmarks/mutation.py --module cudasim.h --limit 30 --rev a2f61fd

Each mutant is one small change to one source file (a comparison flipped, a bound shifted by
one, an operator swapped, a condition negated, a check dropped); it is *killed* when the tests
that cover that file fail, *survives* when they pass, and *times out* when they run past the
limit (a timeout counts as caught). A survivor that cannot change any observable result is
*judged equivalent* (the reasons are in `EQUIVALENT` below) and left out of the score:

    score = (killed + timeout) / (killed + timeout + survived)

Python modules are mutated with cosmic-ray's operators (a selection: see `PY_OPERATORS`); the
simulator header and the CUDA templates, which no Python tool mutates, with the small textual
mutator below (`cxx_mutants`). A C++ mutant that does not compile is counted apart
(`incompetent`), not as killed.

Nothing is ever mutated in the checkout: the command exports the chosen revision (default
HEAD; `--working-tree` for uncommitted files too) into a temporary directory and runs there,
importing `netc` from that copy, with each test file of the module run in one pytest process,
`nice`d, one mutant at a time. `--rev` measures an older revision with its own tests (test
files it lacks are skipped), which gives before/after scores. The results go to
`--out` (default `benchmarks/mutation-results/`): `mutation.json` with every mutant and
`mutation.md` with the score per module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    paths: tuple[str, ...]
    """The file mutated, relative to the repository root: the first of these that the
    revision has (a file that moved keeps its history of scores)."""
    tests: tuple[str, ...]
    """The test files that cover it (the per-file mapping): only these run for its mutants."""
    functions: str | None = None
    """Python: mutate only inside functions whose name matches this regex."""
    regions: tuple[tuple[str, str], ...] = ()
    """C++: mutate only between these (start, end) marker lines, found by content."""
    focus: tuple[str, ...] = ()
    """Regexes of lines (issue 13's survivors) whose every mutant runs besides the sample;
    they are scored apart, so the sample's score stays an unbiased estimate."""


UNIT_OPS = ("tests/unit/test_ops_reference.py", "tests/unit/test_blindspots_windows.py")
SIM = "tests/sim/"

TARGETS: dict[str, Target] = {
    # The op registry and shape rules.
    "ops.windows": Target(("compiler/ops/windows.py",), UNIT_OPS, focus=(
        r"if padded\[0\] < effective\[0\] or padded\[1\] < effective\[1\]",)),
    "ops.pooling": Target(("compiler/ops/pooling.py",), UNIT_OPS, focus=(
        r"if max\(top, bottom\) > kernel_h // 2",)),
    "ops.linear": Target(("compiler/ops/linear.py",), UNIT_OPS, focus=(r"if filters % groups",)),
    "ops.registry": Target("compiler/ops/registry.py",
                           (*UNIT_OPS, "tests/unit/test_sema.py")),
    # The memory planner, over the IR and over the launch plan.
    "memory": Target(("compiler/memory.py", "compiler/passes/plan_memory.py"), (
        "tests/unit/test_passes_memory.py", "tests/unit/test_arena_plan.py",
        "tests/unit/test_plan_boundaries.py"), focus=(
        r"if \(first.start <= second.end", r"if placed.offset \+ placed.size > plan.arena_bytes",
        r"and found.end == buffer.start and found.size >= buffer.size",
        r"if \(graph\[used\].type == kernel.type", r"pinned = \{base\[value\]")),
    "codegen.arena": Target(("compiler/codegen/arena.py",), (
        "tests/unit/test_arena_plan.py", "tests/unit/test_plan_boundaries.py",
        SIM + "test_arena.py")),
    # The ONNX importer's window and GEMM handlers.
    "onnx.importer": Target(("compiler/onnx/importer/handlers.py", "compiler/onnx/importer.py"), (
        "tests/unit/test_onnx_import.py", "tests/unit/test_blindspots_onnx_import.py"),
        functions=r"_gemm|_spatial|_conv|_pool|_windowed_input|_require_4d", focus=(
            r"if kernel != tuple\(weight.shape", r"if \(top, left\) != \(bottom, right\)",
            r"if same is None or same.padding", r"and \(top or left\):",
            r"padding=\(top, left\)\)", r"if attrs.get\(\"ceil_mode\"",
            r"if span >= 0 and span % s", r"if len\(kernel\) != 2", r"if alpha != 1.0",
            r"c = c \* np.float32\(beta\)", r"elif top > kernel\[0\] // 2")),
    # The simulator's scheduler, barrier and warp logic, and the kernels.
    "cudasim.h": Target(("simulator/include/cudasim.h",), (
        SIM + "test_cudasim.py", SIM + "test_cudasim_detector.py"),
        regions=(("static bool same_site(", "static void poison_shared("),
                 ("static unsigned shuffled_order_pass(", "// ---- the worker pool"),
                 ("static void warp_complete(", "}  // namespace detail")),
        focus=(r"SCHED_REVERSED \? n - 1 - k", r"SCHED_REVERSED \? job->nblocks - 1 - k",
               r"case BAR_AND:", r"for \(unsigned i = 1; i < n && same")),
    "gemm.cuh": Target(("templates/gemm.cuh",), (
        SIM + "test_codegen_gemm.py", SIM + "test_gemm_exact_tiles.py"),
        focus=(r"m_tiles = static_cast<unsigned>\(netc_ceil_div",)),
    "conv2d.cuh": Target(("templates/conv2d.cuh",), (SIM + "test_codegen_conv.py",)),
    "pool.cuh": Target(("templates/pool.cuh",), (SIM + "test_codegen_pool.py",)),
    "rowwise.cuh": Target(("templates/rowwise.cuh",), (SIM + "test_codegen_rowwise.py",)),
}

PY_OPERATORS = tuple(f"core/{name}" for name in (
    # Comparisons shifted by one, or flipped.
    "ReplaceComparisonOperator_Lt_LtE", "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE", "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Eq_NotEq", "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Is_IsNot", "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceComparisonOperator_In_NotIn", "ReplaceComparisonOperator_NotIn_In",
    # Arithmetic.
    "ReplaceBinaryOperator_Add_Sub", "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_Mul_Div", "ReplaceBinaryOperator_FloorDiv_Mul",
    "ReplaceBinaryOperator_Mod_FloorDiv",
    # Logic and constants; NumberReplacer shifts every number by one (bounds, indices).
    "ReplaceAndWithOr", "ReplaceOrWithAnd", "AddNot", "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue", "NumberReplacer", "ZeroIterationForLoop",
))

EQUIVALENT: dict[tuple[str, str, str], str] = {
    # (target, the original line stripped, the mutated line stripped): why nothing can see it.
    ("memory", "width = max((len(p.name) for p in self.placements), default=0)",
     "width = max((len(p.name) for p in self.placements), default= -1)"):
        "the default is taken only when there are no placements, and then no line is padded",
    ("memory", "last[base[used]] = max(last.get(base[used], -1), index[kernel.id])",
     "last[base[used]] = max(last.get(base[used], - 2), index[kernel.id])"):
        "the default only meets max() with a kernel index >= 0: any negative default is the "
        "same",
    ("onnx.importer", "return None, None, False", "return None, None, True"):
        "reached only after a problem is recorded (no input, or not rank 4); raising _Poisoned "
        "or returning {} both leave the outputs poisoned and the node's problems reported",
    ("onnx.importer", 'return {node.output[0]: importer.apply(problems, "add", product, c)}',
     'return {node.output[ -1]: importer.apply(problems, "add", product, c)}'):
        "an ONNX Gemm has exactly one output, so [0] and [-1] name it alike",
    ("onnx.importer",
     "if span >= 0 and span % s != 0 and -(-span // s) * s < int(size) + before:",
     "if span > 0 and span % s != 0 and -(-span // s) * s < int(size) + before:"):
        "span == 0 makes span % s == 0, so the condition is false either way",
    ("onnx.importer",
     "if span >= 0 and span % s != 0 and -(-span // s) * s < int(size) + before:",
     "if span >= 1 and span % s != 0 and -(-span // s) * s < int(size) + before:"):
        "for integers >= 1 is > 0, and span == 0 fails span % s != 0 anyway",
    ("cudasim.h", "unsigned char* in_set = static_cast<unsigned char*>(calloc(n, 1));",
     "unsigned char* in_set = static_cast<unsigned char*>(calloc(n, 2));"):
        "a larger zeroed scratch buffer of which only the first n bytes are used",
    ("cudasim.h", "w->fail_msg[0] = 0;", "w->fail_msg[1] = 0;"):
        "the message is read only after a failure, and every failure writes it from byte 0",
    ("cudasim.h", "job->failed = 1;", "job->failed = 2;"):
        "job->failed is only ever tested for zero or not",
    ("cudasim.h", "case W_MAX: acc = first ? v : ((int)v > (int)acc ? v : acc); break;",
     "case W_MAX: acc = first ? v : ((int)v >= (int)acc ? v : acc); break;"):
        "on a tie v and acc are the same value",
    ("ops.linear", "return y + bias.reshape(-1, 1, 1) if bias is not None else y",
     "return y + bias.reshape(- 2, 1, 1) if bias is not None else y"):
        "NumPy's reshape takes any negative size as the one unknown dimension",
    ("ops.linear", "a_matrix = a.shape if a.rank > 1 else (1, a.shape[0])",
     "a_matrix = a.shape if a.rank >= 1 else (1, a.shape[0])"):
        "differs only for a vector a, where (k,) and (1, k) agree on everything read: the "
        "last dim and the batch dims before the last two (the rows come from a.rank)",
    ("ops.linear", "a_matrix = a.shape if a.rank > 1 else (1, a.shape[0])",
     "a_matrix = a.shape if a.rank > 0 else (1, a.shape[0])"):
        "as the line above: rank 0 never reaches it (require_rank needs rank >= 1)",
    ("codegen.arena", "if output not in lives or root[output] != output:",
     "if output not in lives and root[output] != output:"):
        "a buffer in `lives` is never a view (root[output] == output), and candidates for an "
        "output outside `lives` are never read (`_region` asks only for arena buffers)",
    ("codegen.arena", "end = max(len(launches) - 1, 0)", "end = max(len(launches) - 1, -1)"):
        "differs only for a plan without launches, which has no arena buffers to give it to",
    ("gemm.cuh", "if (EXTENT % X_LANES != 0 && x >= EXTENT)",
     "if (EXTENT % X_LANES != 1 && x >= EXTENT)"):
        "EXTENT % X_LANES is never 1 for the 11 GEMM tiles netc can choose (tiling.CANDIDATES "
        "and the test catalogue: it is 0, 24 or 48), so the bound check runs exactly when "
        "needed either way; a new tile could tell them apart",
}
"""Survivors judged equivalent, keyed by content so that line numbers may move."""

TEST_PLUGIN = '''
from hypothesis import settings
# Before tests/conftest.py loads its profile: the CI profile, derandomised and without the
# example database, so that every mutant (and every revision) meets the same examples.
settings.register_profile("mutation", deadline=None, max_examples=25, derandomize=True,
                          database=None)
'''


@dataclass
class Mutant:
    target: str
    line: int
    operator: str
    before: str
    after: str
    focus: bool = False
    """On one of the target's focus lines (not part of the sample)."""
    outcome: str = "pending"
    """killed, survived, timeout, equivalent, incompetent"""
    seconds: float = 0.0
    reason: str = ""
    failure: str = ""
    source: str = dataclasses.field(default="", repr=False)
    """The whole mutated file (not written to the results)."""
    build: Callable[[], str] | None = dataclasses.field(default=None, repr=False)
    """Makes `source` when it is empty (parsing is slow: only for the mutants run)."""

    def materialise(self) -> None:
        if not self.source and self.build is not None:
            self.source = self.build()
            mutated = self.source.splitlines()
            self.after = mutated[self.line - 1].strip() if self.line <= len(mutated) else ""


# Python mutants (cosmic-ray) --------------------------------------------------------------------

def python_mutants(name: str, target: Target, text: str) -> Iterator[Mutant]:
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.ast.ast_query import ASTQuery
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    lines = text.splitlines()
    module = get_ast(text)
    wanted = re.compile(target.functions) if target.functions else None
    for operator_name in PY_OPERATORS:
        try:
            operator = get_operator(operator_name)()
        except KeyError:
            continue
        occurrence = 0
        for node in ast_nodes(module):
            for start, _end in operator.mutation_positions(node):
                index, occurrence = occurrence, occurrence + 1
                if _in_docstring(node):
                    continue
                if wanted is not None:
                    definition = ASTQuery(node).get_definition_name() or ""
                    if not wanted.fullmatch(definition.split(".")[0]):
                        continue
                def build(operator: object = operator, index: int = index) -> str:
                    return mutate_code(text, operator, index) or text

                line = start[0]
                yield Mutant(name, line, operator_name.split("/")[1], lines[line - 1].strip(),
                             "", build=build)


def _in_docstring(node: object) -> bool:
    return getattr(node, "type", "") == "string"


# C++ mutants (our own) --------------------------------------------------------------------------

CXX_REPLACEMENTS: tuple[tuple[str, str, str], ...] = (
    # (name, regex, replacement); binary operators are matched with spaces around them, which
    # is how the headers write them (template brackets and `->` have none).
    ("lt_le", r" < ", " <= "), ("le_lt", r" <= ", " < "),
    ("gt_ge", r" > ", " >= "), ("ge_gt", r" >= ", " > "),
    ("eq_ne", r" == ", " != "), ("ne_eq", r" != ", " == "),
    ("add_sub", r" \+ ", " - "), ("sub_add", r" - ", " + "),
    ("and_or", r" && ", " || "), ("or_and", r" \|\| ", " && "),
    ("swap_schedule", r"\bSCHED_REVERSED\b", "SCHED_IN_ORDER"),
    ("swap_vote", r"\bBAR_AND\b", "BAR_OR"),
)
NUMBER = re.compile(r"(?<![\w.])(\d+)(?![\w.'])")


def cxx_mutants(name: str, target: Target, text: str) -> Iterator[Mutant]:
    lines = text.splitlines(keepends=True)
    allowed = _region_lines(lines, target.regions)
    for number, line in enumerate(lines, start=1):
        code = _strip_comment(line)
        stripped = code.strip()
        if number not in allowed or not stripped or stripped.startswith("#"):
            continue
        candidates: list[tuple[str, str]] = []
        for operator, pattern, replacement in CXX_REPLACEMENTS:
            for match in re.finditer(pattern, code):
                if _inside_string(code, match.start()):
                    continue
                candidates.append((operator, code[:match.start()] + replacement
                                   + code[match.end():]))
        for match in NUMBER.finditer(code):
            if _inside_string(code, match.start()):
                continue
            value = int(match.group(1))
            candidates.append(("number_plus_one", code[:match.start()] + str(value + 1)
                               + code[match.end():]))
        # A ceiling division turned into a floor division plus one (equal unless it divides).
        for match in re.finditer(r"\b(\w*ceil_div)\(([^(),]+), ([^(),]+)\)", code):
            candidates.append(("ceil_div_floor_plus_one", code[:match.start()]
                               + f"({match.group(2)} / {match.group(3)} + 1)"
                               + code[match.end():]))
        # A barrier dropped.
        if re.fullmatch(r"__syncthreads\(\);|__syncwarp\([^)]*\);", stripped):
            candidates.append(("drop_barrier", code.replace(stripped, ";")))
        tail = line[len(code):]
        for operator, mutated_code in candidates:
            mutated_line = mutated_code + tail if tail else mutated_code
            if not mutated_line.endswith("\n") and line.endswith("\n"):
                mutated_line += "\n"
            source = "".join(lines[:number - 1]) + mutated_line + "".join(lines[number:])
            yield Mutant(name, number, operator, line.strip(), mutated_line.strip(),
                         source=source)


def _strip_comment(line: str) -> str:
    index = line.find("//")
    while index >= 0 and _inside_string(line, index):
        index = line.find("//", index + 2)
    return line[:index] if index >= 0 else line.rstrip("\n")


def _inside_string(code: str, position: int) -> bool:
    return code[:position].count('"') % 2 == 1


def _region_lines(lines: Sequence[str], regions: Sequence[tuple[str, str]]) -> set[int]:
    if not regions:
        return set(range(1, len(lines) + 1))
    allowed: set[int] = set()
    for start_marker, end_marker in regions:
        start = next((i for i, line in enumerate(lines) if start_marker in line), None)
        if start is None:
            raise SystemExit(f"region marker {start_marker!r} not found")
        end = next((i for i in range(start + 1, len(lines)) if end_marker in lines[i]),
                   len(lines))
        allowed.update(range(start + 1, end + 1))
    return allowed


# Running ----------------------------------------------------------------------------------------

def export_tree(destination: Path, rev: str | None) -> str:
    """Copy the repository at `rev` (None: the working tree, uncommitted files included)."""
    if rev is not None:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                                check=True, capture_output=True, text=True).stdout.strip()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
        return commit
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-c", "-o",
                            "--exclude-standard"], check=True, capture_output=True
                           ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return "working tree"


def prepare(tree: Path) -> dict[str, str]:
    """Make `import netc` load the copy: a `netc` link to compiler/, whose subpackages the
    install maps from sibling folders. The installed (editable) finder runs after PYTHONPATH."""
    for sub, name in (("grammar", "grammar"), ("templates", "templates"),
                      ("runtime", "runtime"), ("simulator", "sim")):
        link = tree / "compiler" / name
        if not link.exists():
            link.symlink_to(Path("..") / sub)
    shim = tree / ".mutation-path"
    shim.mkdir()
    (shim / "netc").symlink_to(tree / "compiler")
    (shim / "mutation_plugin.py").write_text(TEST_PLUGIN)
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{shim}{os.pathsep}{tree}", PYTHONDONTWRITEBYTECODE="1",
               HYPOTHESIS_PROFILE="mutation", NETC_CACHE_DIR=str(tree / ".mutation-cache"))
    return env


def run_tests(tree: Path, tests: Sequence[str], env: dict[str, str],
              timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, the tail of the output)."""
    command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q",
               "-p", "no:cacheprovider", "-p", "mutation_plugin", "-o", "addopts=",
               "-W", "ignore", *tests]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, ""
    output = proc.stdout + proc.stderr
    return ("passed" if proc.returncode == 0 else "failed", time.perf_counter() - started,
            output[-3000:])


COMPILE_FAILED = ("for the simulator failed:", "compiling the simulator runtime failed")


def _source(target: Target, tree: Path) -> str:
    found = next((p for p in target.paths if (tree / p).exists()), None)
    if found is None:
        raise SystemExit(f"none of {', '.join(target.paths)} is in this revision")
    return found


def measure(name: str, target: Target, tree: Path, env: dict[str, str], limit: int | None,
            progress: bool, carried: dict[tuple[str, ...], str] | None = None
            ) -> dict[str, object]:
    source = _source(target, tree)
    path = tree / source
    original = path.read_text()
    tests = [t for t in target.tests if (tree / t).exists()]
    missing = sorted(set(target.tests) - set(tests))
    generate = cxx_mutants if source.endswith((".h", ".cuh")) else python_mutants
    mutants = list(generate(name, target, original))
    total = len(mutants)
    if limit is not None and total > limit:
        # An even spread over the file, the same for the same source.
        sample = [mutants[i * total // limit] for i in range(limit)]
    else:
        sample = list(mutants)
    focus = [re.compile(pattern) for pattern in target.focus]
    chosen = {id(m) for m in sample}
    for mutant in mutants:
        if any(p.search(mutant.before) for p in focus):
            mutant.focus = id(mutant) not in chosen
            if mutant.focus:
                sample.append(mutant)
    mutants = sample
    status, baseline, output = run_tests(tree, tests, env, timeout=1800)
    if status != "passed":
        raise SystemExit(f"{name}: the tests fail before any mutation:\n{output}")
    timeout = 3 * baseline + 30
    if progress:
        print(f"{name}: {len(mutants)} of {total} mutants, tests {baseline:.1f} s "
              f"({', '.join(tests)})", flush=True)
    try:
        for number, mutant in enumerate(mutants, start=1):
            mutant.materialise()
            if mutant.source == original:
                mutant.outcome = "incompetent"
                continue
            earlier = (carried or {}).get(_key(mutant))
            if earlier in ("killed", "timeout", "incompetent"):
                # Caught by a subset of today's tests on the same source: caught today too.
                mutant.outcome, mutant.reason = earlier, "carried over"
                continue
            path.write_text(mutant.source)
            outcome, mutant.seconds, output = run_tests(tree, tests, env, timeout)
            if outcome == "timeout":
                mutant.outcome = "timeout"
            elif outcome == "failed":
                mutant.outcome = ("incompetent" if any(m in output for m in COMPILE_FAILED)
                                  else "killed")
                mutant.failure = _first_failure(output)
            else:
                reason = EQUIVALENT.get((name, mutant.before, mutant.after))
                mutant.outcome = "equivalent" if reason else "survived"
                mutant.reason = reason or ""
            if progress:
                print(f"  [{number}/{len(mutants)}] {mutant.outcome:<11} {name}:{mutant.line} "
                      f"{mutant.operator}: {mutant.after}", flush=True)
    finally:
        path.write_text(original)
    record = {"module": name, "path": source, "tests": tests, "missing_tests": missing,
              "mutants_total": total, "baseline_seconds": baseline,
              "mutants": [{k: v for k, v in dataclasses.asdict(m).items()
                           if k not in ("source", "build")} for m in mutants]}
    return summarise(record)


RENAMED = {"passes.plan_memory": "memory"}
"""Earlier names of targets (the file moved), for results recorded under them."""


def summarise(record: dict[str, object]) -> dict[str, object]:
    """(Re)judge the survivors against `EQUIVALENT` and count the outcomes."""
    name = RENAMED.get(str(record["module"]), str(record["module"]))
    mutants: list[dict[str, object]] = record["mutants"]  # type: ignore[assignment]
    for m in mutants:
        if m["outcome"] in ("survived", "equivalent"):
            reason = EQUIVALENT.get((name, str(m["before"]), str(m["after"])))
            m["outcome"], m["reason"] = ("equivalent", reason) if reason else ("survived", "")
    sample = [m for m in mutants if not m["focus"]]
    counts = {k: sum(m["outcome"] == k for m in sample)
              for k in ("killed", "timeout", "survived", "equivalent", "incompetent")}
    caught = counts["killed"] + counts["timeout"]
    judged = caught + counts["survived"]
    focus = [re.compile(p) for p in TARGETS[name].focus] if name in TARGETS else []
    on_focus = [m for m in mutants if any(p.search(str(m["before"])) for p in focus)]
    record.update(counts, mutants_run=len(sample),
                  score=round(caught / judged, 4) if judged else None,
                  focus_run=len(on_focus),
                  focus_caught=sum(m["outcome"] in ("killed", "timeout") for m in on_focus),
                  focus_survived=sum(m["outcome"] == "survived" for m in on_focus))
    return record


def _key(mutant: Mutant | dict[str, object]) -> tuple[str, ...]:
    fields = ("target", "line", "operator", "before", "after")
    if isinstance(mutant, Mutant):
        values = [str(getattr(mutant, f)) for f in fields]
    else:
        values = [str(mutant[f]) for f in fields]
    values[0] = RENAMED.get(values[0], values[0])
    return tuple(values)


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:200]
    return ""


def markdown(results: Sequence[dict[str, object]], revision: str) -> str:
    lines = [f"Mutation score at {revision}", "",
             "| module | sample (of) | killed | timeout | survived | judged equivalent "
             "| incompetent | score | issue-13 lines: caught / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        score = "n/a" if r["score"] is None else f"{100 * float(r['score']):.0f}%"  # type: ignore[arg-type]
        lines.append(f"| {r['module']} | {r['mutants_run']} ({r['mutants_total']}) | "
                     f"{r['killed']} | {r['timeout']} | {r['survived']} | {r['equivalent']} | "
                     f"{r['incompetent']} | {score} | {r['focus_caught']} / {r['focus_run']} |")
    lines.append("")
    for r in results:
        for m in r["mutants"]:  # type: ignore[attr-defined]
            if m["outcome"] in ("survived", "equivalent"):
                note = f" (equivalent: {m['reason']})" if m["reason"] else ""
                lines.append(f"- {m['outcome']}: `{r['path']}:{m['line']}` {m['operator']}: "
                             f"`{m['before']}` -> `{m['after']}`{note}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modules: " + ", ".join(TARGETS))
    parser.add_argument("--module", action="append", choices=sorted(TARGETS),
                        help="a module to mutate (repeatable; default: every Python module)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many mutants per module, spread evenly over it")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rev", default="HEAD", help="the revision to measure (default HEAD)")
    where.add_argument("--working-tree", action="store_true",
                       help="measure the working tree, uncommitted changes included")
    parser.add_argument(
        "--overlay", action="append", default=[], metavar="FILE",
        help="copy this file (e.g. a new test file) from the working tree over the exported "
             "revision (repeatable): today's tests against an older revision's source")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mutation-results",
                        help="folder for mutation.json and mutation.md")
    parser.add_argument("--list", action="store_true",
                        help="list the modules, their test files and mutant counts, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no per-mutant progress")
    parser.add_argument(
        "--rescore", type=Path, nargs="+", metavar="JSON",
        help="runs nothing: re-judge the survivors of these mutation.json files against "
             "EQUIVALENT and write one mutation.md (and .json) for them all to --out")
    parser.add_argument(
        "--carry", type=Path, default=None,
        help="mutation.json of an earlier run on the same source whose tests are a subset of "
             "today's: mutants it caught count as caught without running again")
    args = parser.parse_args(argv)
    carried: dict[tuple[str, ...], str] = {}
    if args.carry is not None:
        for module in json.loads(args.carry.read_text())["modules"]:
            carried.update({_key(m): str(m["outcome"]) for m in module["mutants"]})
    if args.rescore:
        runs = [json.loads(path.read_text()) for path in args.rescore]
        results = [summarise(module) for run in runs for module in run["modules"]]
        revision = "; ".join(sorted({str(run["revision"]) for run in runs}))
        return write_results(args.out, results, revision, None)
    names = args.module or [n for n, t in TARGETS.items() if t.paths[0].endswith(".py")]
    with tempfile.TemporaryDirectory(prefix="netc-mutation-") as temporary:
        tree = Path(temporary) / "tree"
        tree.mkdir()
        revision = export_tree(tree, None if args.working_tree else args.rev)
        for name in args.overlay:
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
        if args.overlay:
            revision += " + " + ", ".join(args.overlay)
        if args.list:
            for name in names:
                target = TARGETS[name]
                source = _source(target, tree)
                text = (tree / source).read_text()
                generate: Callable[[str, Target, str], Iterator[Mutant]]
                generate = cxx_mutants if source.endswith((".h", ".cuh")) else python_mutants
                print(f"{name:<20} {sum(1 for _ in generate(name, target, text)):>5} mutants  "
                      f"{source}  <- {' '.join(target.tests)}")
            return 0
        env = prepare(tree)
        results = [measure(name, TARGETS[name], tree, env, args.limit, not args.quiet, carried)
                   for name in names]
    return write_results(args.out, results, revision, args.limit)


def write_results(out: Path, results: list[dict[str, object]], revision: str,
                  limit: int | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(
        {"revision": revision, "limit": limit, "modules": results}, indent=1) + "\n")
    text = markdown(results, revision)
    (out / "mutation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
