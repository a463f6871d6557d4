"""The error corpus: malformed `.net` files, each naming the diagnostic it must produce.

Every file in tests/corpus/errors/ starts with `# expect: CODE LINE:COL` (or
`# expect: CODE FILE:LINE:COL` when the first diagnostic is in an imported file, FILE relative
to the corpus folder). Each file goes through the front end in-process (its network, then its
train section if it has one, as `netc check` does), and a sample (all of
them with NETC_CORPUS_CLI=all) through the real command line, `netc check FILE`, which must
exit 1 with the diagnostic first on stderr and no traceback.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from netc.diagnostics import CompileError
from netc.frontend import load_file, load_training, parse

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "errors"
FILES = sorted(CORPUS.glob("*.net"))
EXPECT = re.compile(rb"# expect: (E\d{4}) (?:(\S+):)?(\d+):(\d+)\s*$")

# Codes the corpus cannot show: they need a command-line option, a missing main file or a
# file too large to keep in the repository. test_sema.py covers each of them.
NOT_IN_CORPUS = {"E0107", "E0508"}


@dataclass(frozen=True)
class Expectation:
    code: str
    file: str
    """Relative to the corpus folder."""
    line: int
    column: int


def expectation(path: Path) -> Expectation:
    first_line = path.read_bytes().split(b"\n", 1)[0]
    match = EXPECT.match(first_line)
    assert match, f"{path.name}: the first line must be `# expect: CODE LINE:COL`"
    code, file, line, column = match.groups()
    return Expectation(code.decode(), file.decode() if file else path.name, int(line),
                       int(column))


def frontend_codes() -> set[str]:
    found: set[str] = set()
    for source in (ROOT / "compiler" / "frontend").glob("*.py"):
        found.update(re.findall(r'"(E0\d{3})"', source.read_text("utf-8")))
    return found


def test_the_corpus_is_large_and_well_formed() -> None:
    assert len(FILES) >= 110
    for path in FILES:
        expectation(path)


def test_the_corpus_covers_every_error_code() -> None:
    covered = {expectation(path).code for path in FILES}
    assert frontend_codes() - covered == NOT_IN_CORPUS


def test_every_code_is_documented() -> None:
    text = (ROOT / "docs" / "errors.md").read_text("utf-8")
    documented = set(re.findall(r"^## (E0\d{3})", text, re.MULTILINE))
    assert frontend_codes() <= documented, sorted(frontend_codes() - documented)


def test_every_code_netc_raises_is_in_the_error_list() -> None:
    """Front end, passes, code generator, CLI and training alike: every code in the source is
    listed in docs/errors.md (a heading or a table row)."""
    raised = {code for path in (ROOT / "compiler").rglob("*.py")
              for code in re.findall(r"[\"'](E0\d{3})[\"']", path.read_text("utf-8"))}
    listed = set(re.findall(r"E0\d{3}", (ROOT / "docs" / "errors.md").read_text("utf-8")))
    assert raised and raised <= listed, sorted(raised - listed)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_file_in_process(path: Path) -> None:
    expected = expectation(path)
    # CPU time of this thread: other jobs on a busy machine do not count against the front end.
    started = time.thread_time()
    with pytest.raises(CompileError) as caught:
        load_file(path)
        if parse(path.read_text("utf-8", errors="replace"), path.name).trains:
            load_training(path)  # what `netc check` also checks
    elapsed = time.thread_time() - started
    first = caught.value.diagnostics[0]
    assert first.span is not None
    got = (first.code, os.path.relpath(first.span.file, CORPUS), first.span.line,
           first.span.column)
    assert got == (expected.code, expected.file, expected.line, expected.column), \
        caught.value.render()
    # The budget catches blow-ups (a limit found only after exponential work), not speed:
    # limit_too_many_nodes_blocks legitimately expands 10,000 nodes first (0.85-1.1 s of CPU
    # on a 2-core CI machine, more when the other core is busy).
    assert elapsed < 2.0, f"{path.name} took {elapsed:.2f} s of CPU time"
    rendered = caught.value.render()
    assert f"error[{expected.code}]" in rendered


def _cli_sample() -> list[Path]:
    if os.environ.get("NETC_CORPUS_CLI") == "all":
        return FILES
    # Every tenth file, plus the hostile ones, keeps the default run short.
    hostile = {"lex_not_utf8_garbage", "lex_nul_byte", "limit_deep_parens", "limit_huge_integer",
               "limit_deep_evaluation", "limit_nested_repeats", "limit_huge_input",
               "file_import_cycle", "shape_in_imported_block"}
    return [p for i, p in enumerate(FILES) if i % 10 == 0 or p.stem in hostile]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def startup_seconds() -> float:
    """The CPU time the interpreter takes to start netc at all; the check gets 1 s on top.
    CPU time, not wall time: the suite runs in parallel on a busy machine, and a slow check
    is one that computes too much, not one that waited for a core."""
    started = _children_cpu_seconds()
    subprocess.run([sys.executable, "-m", "netc", "--version"], capture_output=True, check=False)
    return _children_cpu_seconds() - started


@pytest.mark.parametrize("path", _cli_sample(), ids=[p.stem for p in _cli_sample()])
def test_corpus_file_through_the_cli(path: Path, startup_seconds: float) -> None:
    expected = expectation(path)
    started = _children_cpu_seconds()
    result = subprocess.run([sys.executable, "-m", "netc", "check", path.name], cwd=CORPUS,
                            capture_output=True, text=True, errors="replace")
    elapsed = _children_cpu_seconds() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith(
        f"{expected.file}:{expected.line}:{expected.column}: error[{expected.code}]: "), output
    assert elapsed < startup_seconds + 1.0, f"{path.name} took {elapsed:.2f} s of CPU time"
