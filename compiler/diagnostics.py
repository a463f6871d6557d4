"""Diagnostics: the one error type users see.

Every error that is the user's fault becomes a `Diagnostic` with a file, a span, a code, a
message and optionally a help line; several are collected into one `CompileError`. Rendering
follows the language spec:

    lenet.net:7:19: error[E0201]: unknown op `conv2`
        x = conv2(x, filters=16, kernel=5)
            ^^^^^
    help: did you mean `conv2d`?

Error codes (documented in docs/errors.md):
    E00xx  lexical and syntax errors
    E01xx  files, imports, definitions
    E02xx  names, ops, calls and attributes
    E03xx  types and shapes
    E04xx  weights, inputs, output paths, backends and tiles given on the command line
    E05xx  limits (sizes, nesting, lengths)
    E06xx  ONNX import and TensorRT builds
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                          "\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_IN_LINE = re.compile(f"[\t\n{_UNPRINTABLE.pattern[1:-1]}]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` safe to show on a terminal: control characters (escape sequences such as
    `\\x1b[2J`, carriage returns, backspaces) and the Unicode line separators and
    bidirectional overrides that hide or reorder what a line says become visible escapes
    (`\\x1b`, `\\u202e`). File names and other user text reach diagnostics this way, so a
    file named to clear the screen or recolour it is shown, not obeyed. Other Unicode stays as
    it is (`café.net`). With `one_line`, newlines and tabs are escaped too (a file name); else
    they are kept (a message's own line breaks)."""
    return (_UNPRINTABLE_IN_LINE if one_line else _UNPRINTABLE).sub(_escape, text)


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, `end_column` is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{printable(self.file, one_line=True)}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    help: str | None = None
    notes: tuple[str, ...] = ()
    severity: str = "error"
    """`error`, or `warning` for something that does not stop the command."""

    def render(self, sources: SourceMap | None = None) -> str:
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.severity}[{self.code}]: {printable(self.message)}"]
        text = sources.line(self.span.file, self.span.line) if (sources and self.span) else None
        if text is not None and self.span is not None:
            lines.extend(_quote(text, self.span))
        lines.extend(f"note: {printable(note)}" for note in self.notes)
        if self.help:
            lines.append(f"help: {printable(self.help)}")
        return "\n".join(lines)


QUOTE_WIDTH = 100
"""Quoted source lines are clipped to about this many characters around the span."""


def _shown(text: str) -> str:
    return printable(text.expandtabs(4), one_line=True)


def _quote(text: str, span: Span) -> list[str]:
    """The source line and a caret line under the span; tabs expanded, control characters
    escaped (the carets follow), long lines clipped."""
    raw = text.rstrip("\r\n")
    start = len(_shown(raw[: max(span.column - 1, 0)]))
    end_column = span.end_column if span.end_line == span.line else len(raw) + 1
    end = len(_shown(raw[: max(end_column - 1, 0)]))
    shown = _shown(raw)
    end = min(max(end, start + 1), max(len(shown), start + 1))
    if len(shown) > QUOTE_WIDTH:
        left = max(0, min(start - QUOTE_WIDTH // 3, len(shown) - QUOTE_WIDTH))
        right = left + QUOTE_WIDTH
        prefix = "..." if left else ""
        suffix = "..." if right < len(shown) else ""
        shown = prefix + shown[left:right] + suffix
        start, end = start - left + len(prefix), min(end, right) - left + len(prefix)
    return [f"    {shown}", "    " + " " * start + "^" * max(end - start, 1)]


@dataclass
class SourceMap:
    """The text of every file read in one compilation, so diagnostics can quote lines."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            return None
        lines = text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None


class CompileError(Exception):
    """One or more diagnostics about the user's input (exit code 1)."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: SourceMap | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = sources
        super().__init__(self.render())

    def render(self) -> str:
        body = "\n\n".join(d.render(self.sources) for d in self.diagnostics)
        count = len(self.diagnostics)
        if count > 1:
            body += f"\n\n{count} errors"
        return body


def error(code: str, message: str, span: Span | None = None, help: str | None = None) -> CompileError:
    """A `CompileError` holding a single diagnostic (a shorthand for raising)."""
    return CompileError([Diagnostic(code, message, span, help)])


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help:` line suggesting the closest known name, if any is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class MissingDependency(Exception):
    """Something this machine lacks (an optional package, a compiler, a GPU, a tool such as
    Graphviz): not a bug in netc and not a mistake in the model. The message says what to
    install or change; the command line reports it with exit status 1."""
