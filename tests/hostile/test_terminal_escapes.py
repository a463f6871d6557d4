"""Issue 9 (smaller cases): escape sequences in file names are shown, never obeyed.

A file name can hold any byte but `/` and NUL: `\\x1b[2J` clears the terminal, `\\x1b[31m`
recolours it, `\\r` returns to the start of the line so that what follows hides what came
before, and `\\u202e` reverses the rest of the line.  netc prints user paths in diagnostics
(the span of an error, a missing file, a weights file) and in its own messages (`wrote ...
to PATH`); each must reach the terminal escaped, and the exit status and diagnostic code must
be those of the same mistake with a plain name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netc.diagnostics import Diagnostic, Span, printable
from tests.hostile.support import Run, changed, netc, tree_state

pytestmark = pytest.mark.unit

HOSTILE = "e\x1b[2J\x1b[31mvil\r\u202eok\bx"
SHOWN = "e\\x1b[2J\\x1b[31mvil\\r\\u202eok\\x08x"
GOOD = """network m {
    input x: f32[N, 4]
    output y = dense(x, 2)
}
"""
BAD = GOOD.replace("dense(", "dense2(")


def _workspace(path: Path) -> Path:
    (path / "home").mkdir()
    (path / "tmp").mkdir()
    (path / "m.net").write_text(GOOD)
    return path


def _assert_escaped(result: Run) -> None:
    for stream in (result.stdout, result.stderr):
        assert not any(char in stream for char in "\x1b\b\u202e"), repr(stream)
        assert "\r" not in stream, repr(stream)
    assert SHOWN in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("args, code, created", [
    # A source file with an error: the path in the error's span.
    (("check", f"{HOSTILE}.net"), "E0201", []),
    # A source file that does not exist: the path in the message.
    (("check", f"missing{HOSTILE}.net"), "E0101", []),
    # A weights file that does not exist, and a directory given as weights.
    (("run", "m.net", "--backend", "reference", "--random-input", "--weights",
      f"{HOSTILE}.npz"), "E0414", []),
    (("run", "m.net", "--backend", "reference", "--random-input", "--weights",
      f"dir{HOSTILE}.safetensors"), "E0414", []),
    # A successful run: the output path in netc's own message on stdout.
    (("run", "m.net", "--backend", "reference", "--random-input", "-o", f"{HOSTILE}.npz"),
     None, [f"{HOSTILE}.npz"]),
], ids=["span", "missing-source", "missing-weights", "directory-weights", "output-message"])
def test_a_hostile_file_name_is_printed_escaped(tmp_path: Path, args: tuple[str, ...],
                                                code: str | None, created: list[str]) -> None:
    work = _workspace(tmp_path)
    (work / f"{HOSTILE}.net").write_text(BAD)
    (work / f"dir{HOSTILE}.safetensors").mkdir()
    before = tree_state(work)
    result = netc(*args, cwd=work)
    assert result.returncode == (1 if code else 0), result.stderr
    assert result.codes() == ([code] if code else []), result.stderr
    assert "bug in netc" not in result.stderr
    _assert_escaped(result)
    assert changed(before, tree_state(work)) == created


def test_the_quoted_source_line_is_escaped_and_the_carets_follow() -> None:
    line = "    output y = \x1b[2Jdense2(x, 2)"
    diagnostic = Diagnostic("E0201", "unknown op", Span("m\x1b.net", 1, 16, 1, 20))
    from netc.diagnostics import SourceMap

    sources = SourceMap({"m\x1b.net": line})
    text = diagnostic.render(sources)
    assert "\x1b" not in text
    first, quoted, carets = text.splitlines()
    assert first.startswith("m\\x1b.net:1:16: error[E0201]")
    assert quoted == "    " + line.replace("\x1b", "\\x1b")
    assert carets.index("^") == quoted.index("\\x1b")
    assert carets.count("^") == len("\\x1b[2J")  # the span covers ESC [ 2 J


def test_printable_keeps_text_and_line_breaks() -> None:
    assert printable("café.net: line 1\n\tline 2") == "café.net: line 1\n\tline 2"
    assert printable("a\nb\tc", one_line=True) == "a\\nb\\tc"
    assert printable(HOSTILE) == SHOWN
